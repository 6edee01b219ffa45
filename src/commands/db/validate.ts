import { validateMigrations, type ValidationResult } from '../../api/migrations'
import { BaseCommand } from '../../base-command'
import { ConnectionError, ExitCode, UsageError } from '../../errors'

export default class DbValidate extends BaseCommand<typeof DbValidate, ValidationResult> {
  static summary = 'Check the migration files and that every applied migration still matches its file.'
  static description = `Checks names (NNN_snake_case.sql), consecutive ids and duplicates; when the database can be reached,
also that no applied migration was changed or is missing from the files. Exit 4 listing every problem.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Validate files and the applied history.' },
    { command: '<%= config.bin %> <%= command.id %> --json', description: 'In CI: every problem as JSON.' },
  ]

  protected async execute(): Promise<ValidationResult> {
    let result: ValidationResult
    try {
      result = await validateMigrations(await this.database())
    } catch (error) {
      // Unreachable, or none to reach (the embedded database refused in CI or production): the
      // files can still be checked.
      const noDatabase = (error instanceof UsageError && error.code === 'NO_DATABASE_CONFIGURED')
        || (error instanceof ConnectionError && error.code === 'NOTHING_CONFIGURED')
      if (!(error instanceof ConnectionError) && !noDatabase) throw error
      this.logger.warn(`${noDatabase ? 'no database is configured' : `the database could not be reached (${(error as Error).message})`}; checked the files only`)
      result = await validateMigrations()
    }
    if (!result.valid) this.resultExitCode = ExitCode.REFUSED
    return result
  }

  protected render(result: ValidationResult): void {
    if (result.valid) {
      this.out.line('Migrations are valid.')
      return
    }
    this.out.line(this.out.style.red(`${result.problems.length} problem(s):`))
    for (const problem of result.problems) this.out.line(`  ${problem.code}: ${problem.message}`)
  }
}
