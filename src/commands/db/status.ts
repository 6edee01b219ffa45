import { inspectMigrations, type MigrationStatus } from '../../api/migrations'
import { BaseCommand, Flags } from '../../base-command'
import { ExitCode } from '../../errors'

export default class DbStatus extends BaseCommand<typeof DbStatus, MigrationStatus> {
  static summary = 'Show whether the database is initialized, its version, and applied and pending migrations.'
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Applied and pending migrations as tables.' },
    { command: '<%= config.bin %> <%= command.id %> --exit-code', description: 'In a deploy script: exit 4 while migrations are pending.' },
    { command: '<%= config.bin %> <%= command.id %> --json', description: 'Machine-readable status.' },
  ]
  static flags = {
    'exit-code': Flags.boolean({ summary: 'Exit 4 when migrations are pending.' }),
  }

  protected async execute(): Promise<MigrationStatus> {
    const { status, changed } = await inspectMigrations(await this.database())
    // Beside the answer, never in it (its JSON shape is relied on): db:validate and run refuse these.
    for (const file of changed) {
      this.logger.warn(`${file.fileName} was changed after it was applied (its hash differs from the recorded one): \`${this.config.bin} db:validate\` lists it, and run and db:migrate refuse to start`)
    }
    if (this.flags['exit-code'] && status.pending.length > 0) this.resultExitCode = ExitCode.REFUSED
    return status
  }

  protected render(status: MigrationStatus): void {
    const { style } = this.out
    this.out.line(`Initialized: ${status.initialized ? style.green('yes') : style.yellow('no')}`)
    this.out.line(`Current version: ${status.currentVersion ?? 'none'}`)
    if (status.applied.length > 0) {
      this.out.line('Applied:')
      this.out.table(['ID', 'Name', 'Applied at', 'Duration'],
        status.applied.map((m) => [m.id, m.name, m.appliedAt ?? '', m.durationMs === null ? '' : `${m.durationMs} ms`]))
    }
    if (status.pending.length > 0) {
      this.out.line(style.yellow(`Pending: ${status.pending.length}`))
      this.out.table(['ID', 'Name'], status.pending.map((m) => [m.id, m.name]))
      this.out.line(`Run \`${this.config.bin} db:migrate\` to apply them.`)
    } else {
      this.out.line('Pending: none')
    }
  }
}
