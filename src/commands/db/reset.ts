import * as readline from 'node:readline/promises'
import type { RunMigrationsResult } from '../../api/migrations'
import { checkResetGuards, resetDatabase } from '../../api/reset'
import { BaseCommand, Flags } from '../../base-command'
import { RefusedError } from '../../errors'

interface ResetResult {
  database: string
  reset: true
  applied: RunMigrationsResult['applied']
}

export default class DbReset extends BaseCommand<typeof DbReset, ResetResult> {
  static summary = 'Drop every pipeweave table and function, then apply the migrations again. Destroys all data.'
  static description = `On a terminal it asks you to type the database name; without one it needs --yes.
Always refused with NODE_ENV=production. Refused for a target that looks like production (host or
database containing "prod", a host ending in .com, an RDS endpoint) unless --force. Refusals exit 4.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Reset the local database after typing its name.' },
    { command: '<%= config.bin %> <%= command.id %> --yes', description: 'In a test script, with no terminal.' },
  ]
  static flags = {
    yes: Flags.boolean({ char: 'y', summary: 'Do not ask for confirmation (required without a terminal).' }),
    force: Flags.boolean({ summary: 'Allow a target that looks like production.' }),
  }

  protected async execute(): Promise<ResetResult> {
    const config = this.databaseConfig()
    // Every guard before any connection: a refused reset leaves the database untouched.
    const { database } = checkResetGuards({ flags: config.flags ?? {}, env: process.env, force: this.flags.force })
    if (!this.flags.yes) {
      if (!process.stdin.isTTY || !process.stderr.isTTY) {
        throw new RefusedError('CONFIRMATION_REQUIRED', 'db:reset destroys every row and needs confirmation, and there is no terminal to ask', {
          hint: 'add --yes to confirm',
        })
      }
      const rl = readline.createInterface({ input: process.stdin, output: process.stderr })
      let answer: string
      try {
        answer = await rl.question(`This drops every pipeweave table in "${database}". Type the database name to confirm: `)
      } catch {
        // Ctrl+D at the prompt rejects the question ("Aborted with Ctrl+D"): an answer of no.
        answer = ''
        process.stderr.write('\n')
      } finally {
        rl.close()
      }
      if (answer.trim() !== database) {
        throw new RefusedError('CONFIRMATION_MISMATCH', 'the name typed does not match; nothing was changed', { hint: `type ${database} exactly, or pass --yes` })
      }
    }
    const db = await this.database()
    const result = await resetDatabase(db, this.logger)
    return { database: db.target.database, reset: true, applied: result.applied }
  }

  protected render(result: ResetResult): void {
    this.out.line(`Reset ${result.database}: dropped every pipeweave object and applied ${result.applied.length} migration(s).`)
  }
}
