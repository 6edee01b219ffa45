import { listDlq, type DlqEntry } from '../../api/dlq'
import { BaseCommand, Flags, listFlags } from '../../base-command'
import { type Column, relativeTime, shortId } from '../../output'

/** The columns of dlq:list; those without `fitted: false` make the default table. */
const DLQ_COLUMNS: Array<Column<DlqEntry>> = [
  { key: 'id', header: 'Entry', full: (e) => e.id, short: (e) => shortId(e.id) },
  { key: 'task', header: 'Task', full: (e) => e.taskId, shrinkTo: 8 },
  { key: 'run', header: 'Run', full: (e) => e.taskRunId, short: (e) => shortId(e.taskRunId) },
  { key: 'attempts', header: 'Tries', full: (e) => e.attempts },
  { key: 'failed', header: 'Failed', full: (e) => e.failedAt, short: (e, now) => relativeTime(e.failedAt, now) },
  { key: 'error', header: 'Error', full: (e) => `${e.errorCode ? `${e.errorCode}: ` : ''}${e.error ?? ''}`, shrinkTo: 10 },
  { key: 'retried', header: 'Retried', full: (e) => e.retriedAt, short: (e, now) => relativeTime(e.retriedAt, now), fitted: false },
  { key: 'retry-run', header: 'Retried as', full: (e) => e.retryRunId, short: (e) => shortId(e.retryRunId) },
]

export default class DlqList extends BaseCommand<typeof DlqList, { entries: DlqEntry[] }> {
  static summary = 'List dead-lettered runs (failed for good), newest first.'
  static description = 'The table fits the terminal: ids longer than 20 characters are cut to 8, times are relative ("5m ago") and errors are cut with "…". --wide shows every column whole; --columns picks columns; --output csv and --json give every value whole.'
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'The 50 newest entries, fitted to the terminal.' },
    { command: '<%= config.bin %> <%= command.id %> --pending --json', description: 'Entries not yet retried, as { "entries": [...] }.' },
    { command: '<%= config.bin %> <%= command.id %> --columns id,error --wide', description: 'Whole entry ids and errors.' },
    { command: '<%= config.bin %> <%= command.id %> --output csv > dlq.csv', description: 'Every column, whole, for a spreadsheet.' },
  ]
  static flags = {
    task: Flags.string({ summary: 'Only entries of this task.' }),
    pending: Flags.boolean({ summary: 'Only entries not yet retried.' }),
    limit: Flags.integer({ summary: 'At most this many entries.', default: 50, min: 1, max: 100_000 }),
    ...listFlags(DLQ_COLUMNS.map((c) => c.key)),
  }

  protected async execute(): Promise<{ entries: DlqEntry[] }> {
    this.listColumns(DLQ_COLUMNS) // a bad --columns is bad input: exit 2 before connecting
    return { entries: await listDlq(await this.migratedDatabase(), { taskId: this.flags.task, pending: this.flags.pending, limit: this.flags.limit }) }
  }

  protected render(result: { entries: DlqEntry[] }): void {
    if (result.entries.length === 0 && this.flags.output !== 'csv') {
      this.out.line('The DLQ is empty.')
      return
    }
    this.printList(DLQ_COLUMNS, result.entries)
  }
}
