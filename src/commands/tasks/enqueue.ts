import * as fs from 'node:fs'
import { enqueueTask, enqueueTasks, validateEnqueueOptions, INT32_MAX, MAX_DELAY_MS, type BulkEnqueueResult, type EnqueueResult } from '../../api/enqueue'
import { Args, BaseCommand, Flags } from '../../base-command'
import type { Database } from '../../db/database'
import { UsageError } from '../../errors'

type Result = EnqueueResult | BulkEnqueueResult

export default class TasksEnqueue extends BaseCommand<typeof TasksEnqueue, Result> {
  static summary = 'Queue a run of a task (or one per line of a JSON Lines file); prints its run id. Refused (exit 4) unless the mode is running.'
  static description = `With --jsonl FILE (- for standard input) each line is the input of one run; with --envelope each line
is { "input", "idempotencyKey"?, "priority"?, "delayMs"? } (null means not given). Every line is read
and checked before anything connects: at most 1,000,000 inputs and 256 MiB, and one bad line (not
JSON, or a wrong envelope) rejects the whole file naming its line number, exit 2, nothing written.
Blank lines are skipped but counted in line numbers. Then all runs are queued in one transaction,
or none (exit 4 unless the mode is running). --priority and --delay-ms apply to every line (an
envelope's own value wins); --input, --input-file and --idempotency-key do not combine with --jsonl.
Prints "queued N runs, M deduplicated"; --ids prints the run ids instead, one per line in input
order (a deduplicated line gets the id of the run holding its key; an empty line when only a cached
result holds it); --json prints { "runIds": [...], "deduplicated": M }.

A paused task (tasks:pause, or its service's pause) still takes runs: they are queued (exit 0) and
wait for tasks:resume, and a note on stderr says so.`
  static examples = [
    { command: `<%= config.bin %> <%= command.id %> resize-image --input '{"url":"https://example.com/a.png"}'`, description: 'Queue a run with inline JSON input.' },
    { command: '<%= config.bin %> <%= command.id %> send-report --input-file report.json --idempotency-key report-2026-11-23', description: 'At most one run per key (a second enqueue returns the same run id).' },
    { command: '<%= config.bin %> <%= command.id %> nightly-sync --delay-ms 60000 --priority 10', description: 'Not before a minute from now, ahead of priority-100 work.' },
    { command: '<%= config.bin %> <%= command.id %> resize-image --jsonl images.jsonl', description: 'One run per line of images.jsonl (each line an input, e.g. {"url":"https://example.com/a.png"}), all or none.' },
    { command: `jq -c '{input: ., idempotencyKey: .id}' orders.json | <%= config.bin %> <%= command.id %> ship-order --jsonl - --envelope --ids > run-ids.txt`, description: 'Envelopes from standard input, deduplicated by key; the run ids, one per line, in input order.' },
  ]
  static args = {
    taskId: Args.string({ description: 'The task to run (see services:list).', required: true }),
  }
  static flags = {
    input: Flags.string({ summary: 'The input as JSON.', exclusive: ['input-file', 'jsonl'] }),
    'input-file': Flags.string({ summary: 'Read the input JSON from this file (- for standard input).', exclusive: ['input', 'jsonl'] }),
    jsonl: Flags.string({
      summary: 'Queue one run per line of this JSON Lines file (- for standard input), all or none; see the description.',
      exclusive: ['input', 'input-file', 'idempotency-key'],
    }),
    envelope: Flags.boolean({ summary: 'With --jsonl: each line is { "input", "idempotencyKey"?, "priority"?, "delayMs"? }.', dependsOn: ['jsonl'] }),
    ids: Flags.boolean({ summary: 'With --jsonl: print the run ids, one per line in input order, instead of the summary line.', dependsOn: ['jsonl'] }),
    priority: Flags.integer({ summary: 'Lower runs first (default: the task\'s priority, normally 100); with --jsonl, for every line that sets none.', min: -INT32_MAX, max: INT32_MAX }),
    'idempotency-key': Flags.string({ summary: 'Deduplicate: a run with this key pending, running or cached is returned instead.' }),
    'delay-ms': Flags.integer({ summary: 'Do not start before this many milliseconds from now; with --jsonl, for every line that sets none.', min: 0, max: MAX_DELAY_MS }),
  }

  protected async execute(): Promise<Result> {
    if (this.flags.jsonl !== undefined) return this.enqueueLines(this.flags.jsonl)
    const options = {
      taskId: this.args.taskId,
      input: this.readInput(),
      priority: this.flags.priority,
      idempotencyKey: this.flags['idempotency-key'],
      delayMs: this.flags['delay-ms'],
    }
    validateEnqueueOptions(options) // input (2) before the connection (3), SPEC §2
    const db = await this.migratedDatabase()
    const result = await enqueueTask(db, options)
    await this.notePause(db, this.args.taskId, 'the run is')
    if (result.deduplicated && result.runId === null) {
      this.logger.info(`deduplicated: idempotency key "${this.flags['idempotency-key']}" is served from the idempotency cache (its run was cleaned up)`)
    } else if (result.deduplicated) {
      this.logger.info(`deduplicated: run ${result.runId} already holds idempotency key "${this.flags['idempotency-key']}"`)
    }
    return result
  }

  /** --jsonl: every line read and checked (exit 2) before the connection, then one transaction. */
  private async enqueueLines(file: string): Promise<BulkEnqueueResult> {
    // Loaded here: the single enqueue and --help do not pay for the reader.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { readEnqueueJsonl, tooLarge, MAX_JSONL_BYTES } = require('../../api/enqueue-jsonl') as typeof import('../../api/enqueue-jsonl')
    validateEnqueueOptions({ taskId: this.args.taskId })
    const source = file === '-' ? 'standard input' : file
    let stream: NodeJS.ReadableStream
    if (file === '-') {
      if (process.stdin.isTTY) this.logger.info('reading JSON Lines from standard input (end with Ctrl-D)')
      stream = process.stdin
    } else {
      let fd = -1
      try {
        fd = fs.openSync(file, 'r')
        const stat = fs.fstatSync(fd)
        if (stat.isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' })
        // A regular file too large is refused unread; a pipe (<(…)) is counted as it is read.
        if (stat.isFile() && stat.size > MAX_JSONL_BYTES) throw tooLarge(source)
      } catch (error) {
        if (fd >= 0) fs.closeSync(fd)
        if (error instanceof UsageError) throw error
        throw new UsageError('INPUT_FILE_UNREADABLE', `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`)
      }
      stream = fs.createReadStream('', { fd, highWaterMark: 1024 * 1024 })
    }
    let read: Awaited<ReturnType<typeof readEnqueueJsonl>>
    try {
      read = await readEnqueueJsonl(stream as AsyncIterable<Buffer>, {
        envelope: this.flags.envelope, source, defaults: { priority: this.flags.priority, delayMs: this.flags['delay-ms'] },
      })
    } catch (error) {
      if (error instanceof UsageError) throw error
      throw new UsageError('INPUT_FILE_UNREADABLE', `cannot read ${source}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`)
    }
    const { items, lines } = read
    const db = await this.migratedDatabase()
    const result = await enqueueTasks(db, this.args.taskId, items, { describe: (i) => `line ${lines[i]} of ${source}` })
    await this.notePause(db, this.args.taskId, 'the runs are')
    return result
  }

  /** A run queued for a paused task waits (SPEC §7: exit 0, a note on stderr): say so, and what resumes it. */
  private async notePause(db: Database, taskId: string, queued: string): Promise<void> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { getTaskPause } = require('../../api/flow-control') as typeof import('../../api/flow-control')
    const pause = await getTaskPause(db, taskId)
    if (!pause || (!pause.paused && !pause.servicePaused)) return
    const said = (p: NonNullable<typeof pause.paused>) => `since ${p.at} by ${p.by}${p.reason ? `: ${p.reason}` : ''}`
    const held: string[] = []
    const resume: string[] = []
    if (pause.paused) {
      held.push(`task ${taskId} is paused (${said(pause.paused)})`)
      resume.push(`\`${this.config.bin} tasks:resume ${taskId}\``)
    }
    if (pause.servicePaused) {
      held.push(`its service ${pause.serviceId} is paused (${said(pause.servicePaused)})`)
      resume.push(`\`${this.config.bin} tasks:resume --service ${pause.serviceId}\``)
    }
    this.logger.info(`note: ${held.join(' and ')}; ${queued} queued and wait${queued === 'the run is' ? 's' : ''} for ${resume.join(' and ')}`)
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

  protected render(result: Result): void {
    if ('runIds' in result) {
      const created = result.runIds.length - result.deduplicated
      const summary = `queued ${created.toLocaleString('en-US')} run${created === 1 ? '' : 's'}${result.deduplicated > 0 ? `, ${result.deduplicated.toLocaleString('en-US')} deduplicated` : ''}`
      if (this.flags.ids) {
        // One write: a hundred thousand lines are one string, not a hundred thousand writes.
        if (result.runIds.length > 0) this.out.line(result.runIds.map((id) => id ?? '').join('\n'))
        this.out.note(summary)
      } else {
        this.out.line(summary)
      }
    } else if (result.runId !== null) {
      this.out.line(result.runId)
    }
  }
}
