import { listDlq, type DlqEntry } from '../../api/dlq'
import { BaseCommand, Flags } from '../../base-command'

export default class DlqList extends BaseCommand<typeof DlqList, { entries: DlqEntry[] }> {
  static summary = 'List dead-lettered runs (failed for good), newest first.'
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'The 50 newest entries.' },
    { command: '<%= config.bin %> <%= command.id %> --pending --json', description: 'Entries not yet retried, as { "entries": [...] }.' },
  ]
  static flags = {
    task: Flags.string({ summary: 'Only entries of this task.' }),
    pending: Flags.boolean({ summary: 'Only entries not yet retried.' }),
    limit: Flags.integer({ summary: 'At most this many entries.', default: 50, min: 1, max: 100_000 }),
  }

  protected async execute(): Promise<{ entries: DlqEntry[] }> {
    return { entries: await listDlq(await this.migratedDatabase(), { taskId: this.flags.task, pending: this.flags.pending, limit: this.flags.limit }) }
  }

  protected render(result: { entries: DlqEntry[] }): void {
    if (result.entries.length === 0) {
      this.out.line('The DLQ is empty.')
      return
    }
    this.out.table(['Entry', 'Task', 'Run', 'Attempts', 'Failed at', 'Error', 'Retried as'], result.entries.map((e) => [
      e.id, e.taskId, e.taskRunId, e.attempts, e.failedAt, `${e.errorCode ? `${e.errorCode}: ` : ''}${e.error ?? ''}`.slice(0, 60), e.retryRunId ?? '',
    ]))
  }
}
