import { formatRateLimit, parseRateLimit, type RateLimitResult, setTaskRateLimit } from '../../api/flow-control'
import { Args, BaseCommand, Flags } from '../../base-command'

export default class TasksLimit extends BaseCommand<typeof TasksLimit, RateLimitResult> {
  static summary = 'Set a task\'s rate limit at runtime: at most N starts in any window of a period, across all orchestrators.'
  static description = `--rate N/PERIOD (20/1s, 100/1m, 5/500ms; units ms, s, m, h, d; a unit alone is one of it: 20/s)
allows at most N runs of the task to start within any window of PERIOD, counted by the server's clock
across every orchestrator (a sliding window; held-back runs stay pending and due, and start as soon as
the window allows). N is 1 to 10000, PERIOD 1 ms to 1 day. --rate none removes any limit, the
manifest's too; --rate manifest returns to the manifest's rateLimit.

A runtime limit wins over the manifest until --rate manifest: services:register and restarts keep it.
Orchestrators apply a change within one poll interval. A malformed --rate exits 2 naming it, and an
unknown task exits 2. Each change is recorded in control_events with who (user@host pid) and --reason.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> call-partner-api --rate 20/1s', description: 'At most 20 starts in any second.' },
    { command: '<%= config.bin %> <%= command.id %> call-partner-api --rate none --reason "quota raised"', description: 'No limit, whatever the manifest says.' },
    { command: '<%= config.bin %> <%= command.id %> call-partner-api --rate manifest', description: 'Back to the manifest\'s rateLimit.' },
  ]
  static args = {
    taskId: Args.string({ description: 'The task (services:list shows it and its limit).', required: true }),
  }
  static flags = {
    rate: Flags.string({ summary: 'N/PERIOD (20/1s, 100/1m, 5/500ms), none, or manifest.', required: true }),
    reason: Flags.string({ summary: 'Why; recorded in control_events.' }),
  }

  protected async execute(): Promise<RateLimitResult> {
    const setting = parseRateLimit(this.flags.rate, '--rate') // input (2) before the connection (3)
    return setTaskRateLimit(await this.migratedDatabase(), this.args.taskId, setting, { reason: this.flags.reason })
  }

  protected render(r: RateLimitResult): void {
    const limit = r.rateLimit ? `at most ${formatRateLimit(r.rateLimit)}` : 'no rate limit'
    const source = r.rateLimitSource === 'runtime'
      ? `set at runtime; the manifest's is ${formatRateLimit(r.manifestRateLimit)} (\`${this.config.bin} tasks:limit ${r.taskId} --rate manifest\` returns to it)`
      : 'from the manifest'
    this.out.line(`task ${r.taskId}: ${limit} (${source})${r.changed ? '' : '; nothing changed'}`)
  }
}
