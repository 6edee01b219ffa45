import { ping, type PingResult } from '../../api/ping'
import { BaseCommand } from '../../base-command'

export default class DbPing extends BaseCommand<typeof DbPing, PingResult> {
  static summary = 'Connect to the database and report the server version, round-trip time and TLS.'
  static aliases = ['db:test']
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Check the configured connection.' },
    { command: 'DATABASE_URL=postgres://app@db.internal:5432/app <%= config.bin %> <%= command.id %> --json', description: 'Check a given server; exit 3 when it cannot be reached.' },
  ]

  protected async execute(): Promise<PingResult> {
    return ping(await this.database())
  }

  protected render(result: PingResult): void {
    this.out.line(`Connected to ${result.target}${result.embedded ? ' (embedded)' : ''}`)
    this.out.line(`Server version: PostgreSQL ${result.serverVersion}`)
    this.out.line(`Round trip: ${result.roundTripMs} ms`)
    this.out.line(`TLS: ${result.tls ? 'yes' : 'no'}`)
  }
}
