import { assertRetriedAll, retryDlq, type RetryResult } from '../../api/dlq'
import { Args, BaseCommand, Flags } from '../../base-command'
import { UsageError } from '../../errors'

export default class DlqRetry extends BaseCommand<typeof DlqRetry, RetryResult> {
  static summary = 'Retry dead-lettered runs: each gets a fresh run with the same input. Refused (exit 4) unless the mode is running.'
  static strict = false
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> 9d2e…', description: 'Retry one entry.' },
    { command: '<%= config.bin %> <%= command.id %> --all', description: 'Retry every entry not yet retried.' },
  ]
  static args = {
    id: Args.string({ description: 'DLQ entry ids (dlq:list shows them).' }),
  }
  static flags = {
    all: Flags.boolean({ summary: 'Retry every entry not yet retried.' }),
  }

  protected async execute(): Promise<RetryResult> {
    const ids = [...new Set(this.positionals)]
    if (this.flags.all && ids.length > 0) throw new UsageError('BAD_USAGE', 'give entry ids or --all, not both')
    if (!this.flags.all && ids.length === 0) throw new UsageError('BAD_USAGE', 'give at least one DLQ entry id, or --all', { hint: 'dlq:list shows the entries' })
    const result = await retryDlq(await this.migratedDatabase(), this.flags.all ? { all: true } : { ids })
    assertRetriedAll(result)
    return result
  }

  protected render(result: RetryResult): void {
    if (result.retried.length === 0) this.out.line('Nothing to retry.')
    for (const r of result.retried) this.out.line(`retried ${r.id} as run ${r.runId}`)
  }
}
