import { BaseCommand, Flags } from '../../base-command'
import { exitMaintenance, type TransitionResult } from '../../maintenance/maintenance'
import { renderStatus } from '../../maintenance/render'

export default class MaintenanceExit extends BaseCommand<typeof MaintenanceExit, TransitionResult> {
  static summary = 'Leave maintenance (or withdraw a request): back to running, from any mode.'
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Resume; live orchestrators start dispatching again at once.' },
  ]
  static flags = {
    reason: Flags.string({ summary: 'Why; recorded in the history.' }),
  }

  protected async execute(): Promise<TransitionResult> {
    return exitMaintenance(await this.migratedDatabase(), { reason: this.flags.reason })
  }

  protected render(result: TransitionResult): void {
    renderStatus(this.out, result)
  }
}
