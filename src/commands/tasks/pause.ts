import { type PauseResult, pauseTargetFrom, pauseTasks } from '../../api/flow-control'
import { Args, BaseCommand, Flags } from '../../base-command'

export default class TasksPause extends BaseCommand<typeof TasksPause, PauseResult> {
  static summary = 'Pause tasks, or every task of a service: their pending runs are not started until tasks:resume.'
  static description = `Fleet-wide, within one poll interval: no orchestrator starts a run of a paused task. Runs already
running finish; enqueueing still works (the runs are queued and wait). Paused runs do not hold a drain:
maintenance:status reports them as "Paused tasks". A service pause is state of the service: it covers
every task of it, those registered later too. The pause is kept in the database: restarts and
services:register keep it. Each level is resumed on its own (tasks:resume TASK…, tasks:resume --service S).

All or nothing: an unknown task or service exits 2 naming it, and nothing is paused. Pausing a task
that is already paused changes nothing (its first pause is kept). Each change is recorded in
control_events with who (user@host pid) and --reason.`
  static strict = false
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> send-report --reason "mail provider outage"', description: 'Hold one task\'s runs.' },
    { command: '<%= config.bin %> <%= command.id %> resize-image thumbnail', description: 'Pause two tasks at once.' },
    { command: '<%= config.bin %> <%= command.id %> --service billing --reason "billing API maintenance"', description: 'Pause every task of a service (and any it registers later).' },
  ]
  static args = {
    taskId: Args.string({ description: 'Tasks to pause (services:list shows them).' }),
  }
  static flags = {
    service: Flags.string({ summary: 'Pause this service instead: every task of it, those registered later too.' }),
    reason: Flags.string({ summary: 'Why; recorded in control_events and shown by services:list.' }),
  }

  protected async execute(): Promise<PauseResult> {
    const target = pauseTargetFrom(this.positionals, this.flags.service) // input (2) before the connection (3)
    return pauseTasks(await this.migratedDatabase(), target, { reason: this.flags.reason })
  }

  protected render(result: PauseResult): void {
    for (const change of result.changes) this.out.line(change.message)
  }
}
