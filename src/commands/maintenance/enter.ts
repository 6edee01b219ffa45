import { BaseCommand, Flags } from '../../base-command'
import { enterMaintenance, type TransitionResult } from '../../maintenance/maintenance'
import { renderStatus } from '../../maintenance/render'

export default class MaintenanceEnter extends BaseCommand<typeof MaintenanceEnter, TransitionResult> {
  static summary = 'Enter maintenance now; allowed only when no task run is running (pending runs stay queued).'
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> --reason "restore from backup"', description: 'Stop dispatching at once; exit 4 if runs are running.' },
  ]
  static flags = {
    reason: Flags.string({ summary: 'Why; recorded in the history and shown by maintenance:status.' }),
  }

  protected async execute(): Promise<TransitionResult> {
    return enterMaintenance(await this.migratedDatabase(), { reason: this.flags.reason })
  }

  protected render(result: TransitionResult): void {
    renderStatus(this.out, result)
  }
}
