import { removeSchedule, type ScheduleInfo } from '../../api/schedules'
import { Args, BaseCommand, Flags } from '../../base-command'

export default class SchedulesRemove extends BaseCommand<typeof SchedulesRemove, { removed: ScheduleInfo }> {
  static summary = 'Remove a schedule set with schedules:set (its runs already queued stay).'
  static description = `An unknown name exits 2. A schedule of a service's manifest is refused (exit 4): remove it from
the manifest and register the service again.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> nightly-report', description: 'No more ticks of nightly-report.' },
  ]
  static args = {
    name: Args.string({ description: 'The schedule to remove.', required: true }),
  }
  static flags = {
    reason: Flags.string({ summary: 'Why; recorded with the change (control_events).' }),
  }

  protected async execute(): Promise<{ removed: ScheduleInfo }> {
    return removeSchedule(await this.migratedDatabase(), this.args.name, { reason: this.flags.reason })
  }

  protected render(result: { removed: ScheduleInfo }): void {
    this.out.line(`Removed schedule ${result.removed.name}`)
  }
}
