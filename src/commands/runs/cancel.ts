import { cancelRuns, type CancelResult } from '../../api/runs'
import { Args, BaseCommand } from '../../base-command'

export default class RunsCancel extends BaseCommand<typeof RunsCancel, CancelResult> {
  static summary = 'Cancel pending task runs, all or nothing.'
  static description = `Only a pending run can be cancelled. All or nothing: if any id is unknown (exit 2) or names a run
that is running or finished (exit 4), nothing is cancelled and the message names each such id.`
  static strict = false
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> 3f1c9a4e-… 77b0c2d1-…', description: 'Cancel two queued runs.' },
    { command: '<%= config.bin %> <%= command.id %> $(<%= config.bin %> runs:list --status pending --task send-report --json | jq -r \'.runs[].id\')', description: 'Cancel every queued run of one task.' },
  ]
  static args = {
    runId: Args.string({ description: 'Run ids to cancel.', required: true }),
  }

  protected async execute(): Promise<CancelResult> {
    return cancelRuns(await this.migratedDatabase(), this.positionals)
  }

  protected render(result: CancelResult): void {
    for (const id of result.cancelled) this.out.line(`cancelled ${id}`)
  }
}
