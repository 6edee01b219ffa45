import { openOrCreateDatabase } from '../../api/database'
import { runMigrations } from '../../api/migrations'
import { BaseCommand, Flags } from '../../base-command'
import { currentVersion } from '../../sql/migrations'

interface InitResult {
  database: string
  created: boolean
  applied: Array<{ id: number; name: string; durationMs: number | null }>
  currentVersion: number | null
}

export default class DbInit extends BaseCommand<typeof DbInit, InitResult> {
  static summary = 'Create the database if it does not exist, then apply all migrations. Safe to run again.'
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Set up the embedded database (no DATABASE_URL) or the configured one.' },
    { command: 'DATABASE_URL=postgres://app:secret@localhost:5432/pipeweave <%= config.bin %> <%= command.id %>', description: 'Create and migrate a database on your own server.' },
  ]
  static flags = {
    'lock-timeout': Flags.integer({ summary: 'Seconds to wait for another migrator\'s lock (exit 5 past it).', default: 60, min: 0, max: 86_400 }),
  }

  protected async execute(): Promise<InitResult> {
    const { db, created } = await openOrCreateDatabase(this.databaseConfig())
    this.onRelease(() => db.close())
    const result = await runMigrations(db, { logger: this.logger, lockTimeoutSeconds: this.flags['lock-timeout'] })
    const { rows: [row] } = await db.query<{ version: number | null }>(currentVersion)
    return { database: db.target.database, created, applied: result.applied, currentVersion: row.version }
  }

  protected render(result: InitResult): void {
    if (result.created) this.out.line(`Created database ${result.database}`)
    this.out.line(result.applied.length > 0
      ? `Applied ${result.applied.length} migration(s); the schema is at version ${result.currentVersion}`
      : `Already initialized; the schema is at version ${result.currentVersion}`)
  }
}
