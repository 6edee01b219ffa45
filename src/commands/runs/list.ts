import { listRuns, RUN_STATUSES, type TaskRun } from '../../api/runs'
import { BaseCommand, Flags } from '../../base-command'

export default class RunsList extends BaseCommand<typeof RunsList, { runs: TaskRun[] }> {
  static summary = 'List task runs, newest first.'
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'The 50 newest runs.' },
    { command: '<%= config.bin %> <%= command.id %> --status failed --task send-report --limit 10', description: 'Recent failures of one task.' },
    { command: '<%= config.bin %> <%= command.id %> --status pending --json', description: '{ "runs": [...] }' },
  ]
  static flags = {
    status: Flags.string({ summary: 'Only runs in this status.', options: [...RUN_STATUSES] }),
    task: Flags.string({ summary: 'Only runs of this task.' }),
    limit: Flags.integer({ summary: 'At most this many runs.', default: 50, min: 1, max: 100_000 }),
  }

  protected async execute(): Promise<{ runs: TaskRun[] }> {
    return { runs: await listRuns(await this.migratedDatabase(), { status: this.flags.status, taskId: this.flags.task, limit: this.flags.limit }) }
  }

  protected render(result: { runs: TaskRun[] }): void {
    if (result.runs.length === 0) {
      this.out.line('No task runs match.')
      return
    }
    this.out.table(['Run', 'Task', 'Status', 'Attempt', 'Created', 'Finished', 'Error'], result.runs.map((r) => [
      r.id, r.taskId, r.status, r.attempt, r.createdAt, r.completedAt ?? (r.scheduledFor ? `scheduled ${r.scheduledFor}` : ''),
      // Not for a completed run: what it holds is the failure of an earlier attempt (runs:show has them).
      r.error && r.status !== 'completed' ? `${r.errorCode ? `${r.errorCode}: ` : ''}${r.error}`.slice(0, 60) : '',
    ]))
  }
}
