import { BaseCommand, Flags } from '../../base-command'
import { pausedRuns, requestMaintenance, type TransitionResult } from '../../maintenance/maintenance'
import { renderStatus } from '../../maintenance/render'
import { waitForMaintenance } from '../../maintenance/wait'

export default class MaintenanceRequest extends BaseCommand<typeof MaintenanceRequest, TransitionResult> {
  static summary = 'Ask for maintenance: refuse new tasks, let the work in flight finish, then enter maintenance.'
  static description = `running → waiting_for_maintenance, or straight to maintenance when nothing is due or running.
Safe to repeat in any mode. With --wait, blocks until the mode is maintenance; past --timeout it exits 5 and the
request stands (new tasks stay refused) until \`maintenance:exit\` withdraws it. Ctrl-C exits 130, and the request stands too.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> --reason "deploy 1.4" --wait --timeout 600', description: 'A deploy script: drain, for at most 10 minutes.' },
    { command: '<%= config.bin %> <%= command.id %>', description: 'Start draining and return at once.' },
  ]
  static flags = {
    reason: Flags.string({ summary: 'Why; recorded in the history and shown by maintenance:status.' }),
    wait: Flags.boolean({ summary: 'Block until the mode is maintenance.' }),
    timeout: Flags.integer({ summary: 'With --wait: give up after this many seconds (exit 5).', min: 0, dependsOn: ['wait'] }),
  }

  protected async execute(): Promise<TransitionResult> {
    const db = await this.migratedDatabase()
    const result = await requestMaintenance(db, { reason: this.flags.reason })
    if (!this.flags.wait || result.mode === 'maintenance') return result
    this.leftBehind = {
      message: 'the maintenance request stands (mode waiting_for_maintenance: new tasks are refused)',
      hint: `\`${this.config.bin} maintenance:exit\` withdraws it; \`${this.config.bin} maintenance:status\` shows the drain`,
    }
    const spinner = this.out.spinner('Draining…')
    this.onRelease(async () => spinner.stop())
    let status
    try {
      status = await waitForMaintenance(db, {
        timeoutMs: this.flags.timeout === undefined ? undefined : this.flags.timeout * 1000,
        onProgress: (s) => {
          const paused = pausedRuns(s)
          spinner.update(`Draining: ${s.runningTasks} running, ${s.pendingTasks} pending, ${s.scheduledTasks} scheduled, ` +
            `${paused > 0 ? `${paused} paused (not waited for), ` : ''}${s.liveOrchestrators} orchestrator(s) alive`)
        },
      })
    } finally {
      // Before catch() prints a timeout or a withdrawal: the error must not land on the spinner's line.
      spinner.stop()
    }
    // Changed: this request moved the mode, or the drain it waited for completed meanwhile.
    return { ...status, changed: result.changed || status.mode !== result.mode }
  }

  protected render(result: TransitionResult): void {
    renderStatus(this.out, result)
  }
}
