import * as fs from 'node:fs'
import { registerService, validateManifest, type RegisterResult } from '../../api/services'
import { Args, BaseCommand } from '../../base-command'
import { UsageError } from '../../errors'

export default class ServicesRegister extends BaseCommand<typeof ServicesRegister, RegisterResult> {
  static summary = 'Register (or update) a worker service and its tasks from a JSON manifest.'
  static description = `Manifest: { "id", "version", "baseUrl", "tasks": [{ "id", "codeHash", "timeout" (s), "retries", "retryBackoff",
"retryDelayMs", "maxRetryDelayMs", "heartbeatIntervalMs", "concurrency", "priority", "idempotencyTTL" (s), "allowedNext",
"description" }], "schedules": [{ "name", "cron", "task", "input", "timezone", "backfill", "overlap" }] }. baseUrl is an http:// or https:// origin with an optional path; credentials, a query or a
fragment are refused. A changed codeHash increments the task's code version. The manifest's schedules belong to
the service: each registration makes them exactly the manifest's (schedules:set ones are separate). An invalid manifest exits 2 naming
every bad field at once, and nothing is written.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> examples/worker/service.json', description: 'Register the example worker.' },
  ]
  static args = {
    file: Args.string({ description: 'The service manifest (JSON; - for standard input).', required: true }),
  }

  protected async execute(): Promise<RegisterResult> {
    let text: string
    try {
      text = fs.readFileSync(this.args.file === '-' ? 0 : this.args.file, 'utf8')
    } catch (error) {
      throw new UsageError('MANIFEST_UNREADABLE', `cannot read ${this.args.file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`)
    }
    let manifest: unknown
    try {
      manifest = JSON.parse(text)
    } catch (error) {
      throw new UsageError('INVALID_JSON', `${this.args.file} is not valid JSON: ${(error as Error).message}`)
    }
    validateManifest(manifest) // input (2) before the connection (3), SPEC §2
    return registerService(await this.migratedDatabase(), manifest)
  }

  protected render(result: RegisterResult): void {
    const s = result.service
    this.out.line(`${s.created ? 'Registered' : 'Updated'} service ${s.id} ${s.version} at ${s.baseUrl}`)
    this.out.table(['Task', 'Code version', 'Change'], result.tasks.map((t) => [t.id, t.codeVersion, t.status]))
    if (result.schedules.length > 0) this.out.table(['Schedule', 'Change'], result.schedules.map((sc) => [sc.name, sc.status]))
  }
}
