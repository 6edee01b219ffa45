import * as fs from 'node:fs'
import { enqueueTask, validateEnqueueOptions, INT32_MAX, MAX_DELAY_MS, type EnqueueResult } from '../../api/enqueue'
import { Args, BaseCommand, Flags } from '../../base-command'
import { UsageError } from '../../errors'

export default class TasksEnqueue extends BaseCommand<typeof TasksEnqueue, EnqueueResult> {
  static summary = 'Queue a run of a task; prints its run id. Refused (exit 4) unless the mode is running.'
  static examples = [
    { command: `<%= config.bin %> <%= command.id %> resize-image --input '{"url":"https://example.com/a.png"}'`, description: 'Queue a run with inline JSON input.' },
    { command: '<%= config.bin %> <%= command.id %> send-report --input-file report.json --idempotency-key report-2026-11-23', description: 'At most one run per key (a second enqueue returns the same run id).' },
    { command: '<%= config.bin %> <%= command.id %> nightly-sync --delay-ms 60000 --priority 10', description: 'Not before a minute from now, ahead of priority-100 work.' },
  ]
  static args = {
    taskId: Args.string({ description: 'The task to run (see services:list).', required: true }),
  }
  static flags = {
    input: Flags.string({ summary: 'The input as JSON.', exclusive: ['input-file'] }),
    'input-file': Flags.string({ summary: 'Read the input JSON from this file (- for standard input).', exclusive: ['input'] }),
    priority: Flags.integer({ summary: 'Lower runs first (default: the task\'s priority, normally 100).', min: -INT32_MAX, max: INT32_MAX }),
    'idempotency-key': Flags.string({ summary: 'Deduplicate: a run with this key pending, running or cached is returned instead.' }),
    'delay-ms': Flags.integer({ summary: 'Do not start before this many milliseconds from now.', min: 0, max: MAX_DELAY_MS }),
  }

  protected async execute(): Promise<EnqueueResult> {
    const options = {
      taskId: this.args.taskId,
      input: this.readInput(),
      priority: this.flags.priority,
      idempotencyKey: this.flags['idempotency-key'],
      delayMs: this.flags['delay-ms'],
    }
    validateEnqueueOptions(options) // input (2) before the connection (3), SPEC §2
    const result = await enqueueTask(await this.migratedDatabase(), options)
    if (result.deduplicated && result.runId === null) {
      this.logger.info(`deduplicated: idempotency key "${this.flags['idempotency-key']}" is served from the idempotency cache (its run was cleaned up)`)
    } else if (result.deduplicated) {
      this.logger.info(`deduplicated: run ${result.runId} already holds idempotency key "${this.flags['idempotency-key']}"`)
    }
    return result
  }

  private readInput(): unknown {
    let text = this.flags.input
    const file = this.flags['input-file']
    if (file !== undefined) {
      try {
        text = fs.readFileSync(file === '-' ? 0 : file, 'utf8')
      } catch (error) {
        throw new UsageError('INPUT_FILE_UNREADABLE', `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`)
      }
    }
    if (text === undefined) return undefined
    try {
      return JSON.parse(text)
    } catch (error) {
      throw new UsageError('INVALID_JSON', `the input is not valid JSON: ${(error as Error).message}`, {
        hint: `quote it for the shell, e.g. --input '{"key":"value"}'`,
      })
    }
  }

  protected render(result: EnqueueResult): void {
    if (result.runId !== null) this.out.line(result.runId)
  }
}
