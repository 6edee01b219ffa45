import { BaseCommand, Flags } from '../../base-command'
import { getMaintenanceStatus, type MaintenanceStatus } from '../../maintenance/maintenance'
import { renderStatus } from '../../maintenance/render'

export default class MaintenanceStatusCommand extends BaseCommand<typeof MaintenanceStatusCommand, MaintenanceStatus> {
  static summary = 'Show the maintenance mode, the work that holds a drain, and live orchestrators.'
  static description = `Prints one fact per line; deploy scripts parse the "Mode:" line. Like every maintenance command,
it first runs the drain check, so a drain completes even when no orchestrator is alive.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'The mode and the counts.' },
    { command: '<%= config.bin %> <%= command.id %> --history 10', description: 'With the last 10 mode changes.' },
    { command: `until [ "$(<%= config.bin %> <%= command.id %> | grep 'Mode:' | awk '{print $2}')" = maintenance ]; do sleep 1; done`, description: 'A deploy script waiting for the drain.' },
  ]
  static flags = {
    history: Flags.integer({ summary: 'Also show the last N mode changes.', min: 1, max: 100_000 }),
  }

  protected async execute(): Promise<MaintenanceStatus> {
    return getMaintenanceStatus(await this.migratedDatabase(), { history: this.flags.history })
  }

  protected render(status: MaintenanceStatus): void {
    renderStatus(this.out, status)
  }
}
