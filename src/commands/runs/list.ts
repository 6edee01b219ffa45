import { listRuns, RUN_STATUSES, type TaskRun } from '../../api/runs'
import { BaseCommand, Flags, listFlags } from '../../base-command'
import { type Column, relativeTime, shortId } from '../../output'

/** What a run's error says, unless the run completed (its error is then an earlier attempt's: runs:show has them). */
const failure = (r: TaskRun) => (r.error && r.status !== 'completed' ? `${r.errorCode ? `${r.errorCode}: ` : ''}${r.error}` : '')

/** The columns of runs:list; those without `fitted: false` make the default table. */
const RUN_COLUMNS: Array<Column<TaskRun>> = [
  { key: 'id', header: 'Run', full: (r) => r.id, short: (r) => shortId(r.id) },
  { key: 'task', header: 'Task', full: (r) => r.taskId, shrinkTo: 8 },
  { key: 'status', header: 'Status', full: (r) => r.status },
  { key: 'attempt', header: 'Try', full: (r) => r.attempt },
  { key: 'priority', header: 'Priority', full: (r) => r.priority, fitted: false },
  { key: 'created', header: 'Created', full: (r) => r.createdAt, short: (r, now) => relativeTime(r.createdAt, now) },
  { key: 'due', header: 'Due', full: (r) => r.scheduledFor, short: (r, now) => relativeTime(r.scheduledFor, now), fitted: false },
  { key: 'started', header: 'Started', full: (r) => r.startedAt, short: (r, now) => relativeTime(r.startedAt, now), fitted: false },
  {
    key: 'finished', header: 'Finished', full: (r) => r.completedAt,
    // A retry waiting out its backoff says when it is due instead.
    short: (r, now) => (r.completedAt ? relativeTime(r.completedAt, now) : r.scheduledFor ? `due ${relativeTime(r.scheduledFor, now)}` : ''),
  },
  { key: 'orchestrator', header: 'Orchestrator', full: (r) => r.orchestratorId, fitted: false },
  { key: 'pipeline', header: 'Pipeline run', full: (r) => r.pipelineRunId, short: (r) => shortId(r.pipelineRunId), fitted: false },
  { key: 'parent', header: 'Follow-up of', full: (r) => r.parentRunId, short: (r) => shortId(r.parentRunId), fitted: false },
  { key: 'key', header: 'Idempotency key', full: (r) => r.idempotencyKey, fitted: false, shrinkTo: 12 },
  { key: 'error', header: 'Error', full: failure, shrinkTo: 10 },
]

export default class RunsList extends BaseCommand<typeof RunsList, { runs: TaskRun[] }> {
  static summary = 'List task runs, newest first.'
  static description = 'The table fits the terminal: ids longer than 20 characters are cut to 8, times are relative ("5m ago"; "due in 2s" for a retry waiting out its backoff) and errors are cut with "…". --wide shows every column whole; --columns picks columns; --output csv and --json give every value whole.'
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'The 50 newest runs, fitted to the terminal.' },
    { command: '<%= config.bin %> <%= command.id %> --status failed --task send-report --limit 10', description: 'Recent failures of one task.' },
    { command: '<%= config.bin %> <%= command.id %> --columns id,status,error --wide', description: 'Whole ids and errors, nothing else.' },
    { command: '<%= config.bin %> <%= command.id %> --output csv --limit 1000 > runs.csv', description: 'Every column, whole, for a spreadsheet.' },
    { command: '<%= config.bin %> <%= command.id %> --status pending --json', description: '{ "runs": [...] }' },
  ]
  static flags = {
    status: Flags.string({ summary: 'Only runs in this status.', options: [...RUN_STATUSES] }),
    task: Flags.string({ summary: 'Only runs of this task.' }),
    limit: Flags.integer({ summary: 'At most this many runs.', default: 50, min: 1, max: 100_000 }),
    ...listFlags(RUN_COLUMNS.map((c) => c.key)),
  }

  protected async execute(): Promise<{ runs: TaskRun[] }> {
    this.listColumns(RUN_COLUMNS) // a bad --columns is bad input: exit 2 before connecting
    return { runs: await listRuns(await this.migratedDatabase(), { status: this.flags.status, taskId: this.flags.task, limit: this.flags.limit }) }
  }

  protected render(result: { runs: TaskRun[] }): void {
    if (result.runs.length === 0 && this.flags.output !== 'csv') {
      this.out.line('No task runs match.')
      return
    }
    this.printList(RUN_COLUMNS, result.runs)
  }
}
