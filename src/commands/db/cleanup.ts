import { CLEANUP_DEFAULTS, runCleanup, type CleanupResult } from '../../api/cleanup'
import { BaseCommand, Flags } from '../../base-command'

export default class DbCleanup extends BaseCommand<typeof DbCleanup, CleanupResult> {
  static summary = 'Delete expired idempotency entries, old DLQ entries and (if asked) old finished runs, in batches.'
  static description = `Never touches pending, running or waiting runs; a finished run that a DLQ entry points to is kept
until that entry goes. Two cleanups never run at once: the second says so and exits 0. Cron-friendly: prints only the counts.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Expired cache entries and DLQ entries older than 30 days.' },
    { command: '<%= config.bin %> <%= command.id %> --runs-retention-days 14 --dry-run', description: 'Count what would go, finished runs older than 14 days included.' },
    { command: '0 3 * * * <%= config.bin %> <%= command.id %> --runs-retention-days 30', description: 'A crontab line.' },
  ]
  static flags = {
    'dlq-retention-days': Flags.integer({ summary: 'Delete DLQ entries that failed more than this many days ago.', default: CLEANUP_DEFAULTS.dlqRetentionDays, min: 0, max: 36_500 }),
    'runs-retention-days': Flags.integer({ summary: 'Also delete finished runs completed more than this many days ago.', min: 0, max: 36_500 }),
    'dry-run': Flags.boolean({ summary: 'Count what would be deleted; delete nothing.' }),
    'batch-size': Flags.integer({ summary: 'Rows per delete statement.', default: CLEANUP_DEFAULTS.batchSize, min: 1, max: 1_000_000 }),
  }

  protected async execute(): Promise<CleanupResult> {
    const result = await runCleanup(await this.migratedDatabase(), {
      dlqRetentionDays: this.flags['dlq-retention-days'],
      runsRetentionDays: this.flags['runs-retention-days'],
      dryRun: this.flags['dry-run'],
      batchSize: this.flags['batch-size'],
    })
    if (result.skipped) this.logger.info('another db:cleanup is running; this one did nothing')
    return result
  }

  protected render(result: CleanupResult): void {
    if (result.skipped) return
    const verb = result.dryRun ? 'would delete' : 'deleted'
    this.out.line(`${verb}: idempotency cache ${result.idempotencyCache}, dlq ${result.dlq}, task runs ${result.taskRuns}`)
  }
}
