/** maintenance:request --wait: run the drain check until the mode is `maintenance`, or time out. */
import { delay } from '../orchestrator/wakeup'
import { RefusedError, WaitTimeoutError } from '../errors'
import { getMaintenanceStatus, type MaintenanceDb, type MaintenanceOptions, type MaintenanceStatus } from './maintenance'

export interface WaitOptions extends MaintenanceOptions {
  /** Give up after this long (exit 5); the request stands. Undefined waits for ever. */
  timeoutMs?: number
  pollMs?: number
  onProgress?: (status: MaintenanceStatus) => void
  signal?: AbortSignal
}

export async function waitForMaintenance(db: MaintenanceDb, options: WaitOptions = {}): Promise<MaintenanceStatus> {
  const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs
  const pollMs = options.pollMs ?? 250
  for (;;) {
    const status = await getMaintenanceStatus(db, options)
    options.onProgress?.(status)
    if (status.mode === 'maintenance') return status
    if (status.mode === 'running') {
      throw new RefusedError('REQUEST_WITHDRAWN', 'the maintenance request was withdrawn: the mode is back to running', {
        hint: 'someone ran `pipeweave maintenance:exit`; request again if maintenance is still wanted',
      })
    }
    const left = deadline - Date.now()
    if (left <= 0) {
      throw new WaitTimeoutError('DRAIN_TIMEOUT',
        `timed out waiting for the drain: ${status.runningTasks} running and ${status.pendingTasks} pending task(s) left; ` +
        'the request stands (mode waiting_for_maintenance, new tasks refused)', {
          hint: '`pipeweave maintenance:exit` withdraws it; `pipeweave maintenance:status` shows progress',
        })
    }
    await delay(Math.min(pollMs, left), options.signal)
  }
}

