import { type PauseResult, pauseTargetFrom, resumeTasks } from '../../api/flow-control'
import { Args, BaseCommand, Flags } from '../../base-command'

export default class TasksResume extends BaseCommand<typeof TasksResume, PauseResult> {
  static summary = 'Resume paused tasks, or a paused service: their pending runs start again.'
  static description = `Each resume clears its own level: tasks:resume TASK… clears those tasks' own pauses, and a task whose
service is paused stays paused (the message says so); tasks:resume --service S clears the service's
pause, and its tasks paused on their own stay paused. Orchestrators take the runs within one poll
interval, fleet-wide.

All or nothing: an unknown task or service exits 2 naming it, and nothing is resumed. Resuming what is
not paused changes nothing. Each change is recorded in control_events with who (user@host pid) and
--reason.`
  static strict = false
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> send-report', description: 'Let one task\'s runs start again.' },
    { command: '<%= config.bin %> <%= command.id %> --service billing --reason "billing API back"', description: 'Resume a whole service.' },
  ]
  static args = {
    taskId: Args.string({ description: 'Tasks to resume (services:list shows which are paused).' }),
  }
  static flags = {
    service: Flags.string({ summary: 'Resume this service\'s pause instead (tasks paused on their own stay paused).' }),
    reason: Flags.string({ summary: 'Why; recorded in control_events.' }),
  }

  protected async execute(): Promise<PauseResult> {
    const target = pauseTargetFrom(this.positionals, this.flags.service) // input (2) before the connection (3)
    return resumeTasks(await this.migratedDatabase(), target, { reason: this.flags.reason })
  }

  protected render(result: PauseResult): void {
    for (const change of result.changes) this.out.line(change.message)
  }
}
