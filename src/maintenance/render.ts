/** The human lines of SPEC §4; deploy scripts grep the `Mode:` line, so keep it exactly so. */
import type { Output } from '../output'
import { type MaintenanceStatus, pausedRuns } from './maintenance'

export function renderStatus(out: Output, status: MaintenanceStatus): void {
  out.line(`Mode: ${status.mode}`)
  out.line(`Pending tasks: ${status.pendingTasks}`)
  out.line(`Running tasks: ${status.runningTasks}`)
  out.line(`Scheduled tasks: ${status.scheduledTasks}`)
  // Pending runs held by pauses (SPEC §7); the tasks are named in the Status line.
  out.line(`Paused tasks: ${pausedRuns(status)}`)
  out.line(`Live orchestrators: ${status.liveOrchestrators}`)
  out.line(`Can enter maintenance: ${status.canEnterMaintenance ? 'Yes' : 'No'}`)
  out.line(`Status: ${status.message}`)
  out.line(`Mode changed at: ${status.modeChangedAt}`)
  if (status.reason) out.line(`Reason: ${status.reason}`)
  if (status.history) {
    out.line('History:')
    out.table(['At', 'From', 'To', 'Actor', 'Reason'], status.history.map((e) => [e.at, e.fromMode, e.toMode, e.actor, e.reason]))
  }
}
