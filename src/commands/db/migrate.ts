import { runMigrations, type RunMigrationsResult } from '../../api/migrations'
import { BaseCommand, Flags } from '../../base-command'

export default class DbMigrate extends BaseCommand<typeof DbMigrate, RunMigrationsResult> {
  static summary = 'Apply pending migrations in order, each in its own transaction.'
  static description = `Concurrent migrators serialise on an advisory lock; each migration is applied once.
A failing migration is rolled back whole and named with the SQL error; the ones before it stay applied.
A migration file changed after it was applied refuses everything (exit 4).`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> --dry-run', description: 'List what would be applied; change nothing.' },
    { command: '<%= config.bin %> <%= command.id %> --require-maintenance', description: 'In a deploy script: refuse unless the system is in maintenance.' },
    { command: '<%= config.bin %> <%= command.id %> --lock-timeout 10', description: 'Give up (exit 5) if another migrator holds the lock for 10 s.' },
  ]
  static flags = {
    'dry-run': Flags.boolean({ summary: 'List the pending migrations without applying them.' }),
    'require-maintenance': Flags.boolean({ summary: 'Refuse (exit 4) unless the mode is maintenance.' }),
    'lock-timeout': Flags.integer({ summary: 'Seconds to wait for another migrator\'s lock (exit 5 past it).', default: 60, min: 0, max: 86_400 }),
  }

  protected async execute(): Promise<RunMigrationsResult> {
    return runMigrations(await this.database(), {
      dryRun: this.flags['dry-run'],
      requireMaintenance: this.flags['require-maintenance'],
      lockTimeoutSeconds: this.flags['lock-timeout'],
      logger: this.logger,
    })
  }

  protected render(result: RunMigrationsResult): void {
    if (result.dryRun) {
      if (result.pending.length === 0) this.out.line('Nothing to apply: the schema is up to date.')
      else {
        this.out.line(`Would apply ${result.pending.length} migration(s):`)
        this.out.table(['ID', 'Name'], result.pending.map((m) => [m.id, m.name]))
      }
      return
    }
    if (result.applied.length === 0) this.out.line('Nothing to apply: the schema is up to date.')
    else {
      this.out.line(`Applied ${result.applied.length} migration(s):`)
      this.out.table(['ID', 'Name', 'Duration'], result.applied.map((m) => [m.id, m.name, m.durationMs === null ? '' : `${m.durationMs} ms`]))
    }
  }
}
