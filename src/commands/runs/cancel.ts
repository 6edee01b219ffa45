import { assertNothingRefused, cancelRuns, type CancelResult } from '../../api/runs'
import { Args, BaseCommand } from '../../base-command'

export default class RunsCancel extends BaseCommand<typeof RunsCancel, CancelResult> {
  static summary = 'Cancel pending task runs. A run that is running or finished is refused (exit 4).'
  static strict = false
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> 3f1c9a4e-… 77b0c2d1-…', description: 'Cancel two queued runs.' },
  ]
  static args = {
    runId: Args.string({ description: 'Run ids to cancel.', required: true }),
  }

  protected async execute(): Promise<CancelResult> {
    const ids = this.positionals
    const result = await cancelRuns(await this.migratedDatabase(), [...new Set(ids)])
    assertNothingRefused(result)
    return result
  }

  protected render(result: CancelResult): void {
    for (const id of result.cancelled) this.out.line(`cancelled ${id}`)
  }
}
