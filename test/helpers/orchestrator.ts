/**
 * `pipeweave run` as a real process for the orchestrator tests: JSON log lines parsed as they
 * arrive, and waits on log events. Its process is tracked by startCli (helpers/processes.ts): a
 * test that leaves it running fails, so each test stops its runs (`await run.stop()`). Also the arranging helpers those tests share: register a stub worker's tasks, enqueue in bulk,
 * read runs back.
 */
import type { Pool, PoolClient, QueryResultRow } from 'pg'
import { enqueueTask, enqueueTasks } from '../../src/api/enqueue'
import { registerService, type TaskManifest } from '../../src/api/services'
import { type AnyStatement, type Queryable, bind } from '../../src/db/database'
import { schemaOf } from '../../src/sql/schema'
import { ALL_RUNS, TEST_SCHEMA, apiDatabase } from './db'
import { type CliResult, type RunningCli, startCli } from './cli'
import { waitFor } from './wait'

export interface LogLine {
  time: string
  level: 'debug' | 'info' | 'warn' | 'error'
  msg: string
  event?: string
  runId?: string
  taskId?: string
  attempt?: number
  status?: string
  durationMs?: number | null
  [key: string]: unknown
}

export interface RunProcess extends RunningCli {
  /** stderr lines that parsed as JSON. */
  logs(): LogLine[]
  /** stderr lines that did not (there should be none with --log-format json). */
  otherLines(): string[]
  waitForLog(predicate: (line: LogLine) => boolean, options?: { timeoutMs?: number; what?: string }): Promise<LogLine>
  /** Resolves with the orchestrator id once the process logged that it started. */
  started(timeoutMs?: number): Promise<string>
  exited(): boolean
  /** Send a signal and wait for the exit. */
  stop(signal?: NodeJS.Signals): Promise<CliResult>
}

export function startRun(env: Record<string, string | undefined>, args: string[] = [], options: { timeoutMs?: number } = {}): RunProcess {
  const cli = startCli(['run', ...args], { env, timeoutMs: options.timeoutMs ?? 110_000 })
  const lines: LogLine[] = []
  const other: string[] = []
  const waiters = new Set<() => void>()
  let buffer = ''
  let exited = false
  cli.child.stderr!.on('data', (chunk: Buffer) => {
    buffer += chunk.toString('utf8')
    let newline: number
    while ((newline = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, newline)
      buffer = buffer.slice(newline + 1)
      if (!line.trim()) continue
      try {
        lines.push(JSON.parse(line) as LogLine)
      } catch {
        other.push(line)
      }
    }
    for (const wake of [...waiters]) wake()
  })
  void cli.done.then(() => {
    exited = true
    for (const wake of [...waiters]) wake()
  })

  const waitForLog: RunProcess['waitForLog'] = (predicate, opts = {}) => new Promise((resolve, reject) => {
    const check = () => {
      const found = lines.find(predicate)
      if (found) {
        finish()
        resolve(found)
      } else if (exited) {
        finish()
        reject(new Error(`run exited before logging ${opts.what ?? 'the expected line'}; stderr:\n${cli.stderr().slice(-4000)}`))
      }
    }
    const timer = setTimeout(() => {
      finish()
      reject(new Error(`timed out waiting for the run to log ${opts.what ?? 'the expected line'}; stderr:\n${cli.stderr().slice(-4000)}`))
    }, opts.timeoutMs ?? 30_000)
    const finish = () => {
      clearTimeout(timer)
      waiters.delete(check)
    }
    waiters.add(check)
    check()
  })

  const proc: RunProcess = {
    ...cli,
    logs: () => lines,
    otherLines: () => other,
    waitForLog,
    started: async (timeoutMs) => {
      const line = await waitForLog((l) => l.event === 'started', { timeoutMs, what: 'its start' })
      return String(line.orchestratorId)
    },
    exited: () => exited,
    stop: async (signal = 'SIGTERM') => {
      if (!exited) cli.child.kill(signal)
      return cli.done
    },
  }
  return proc
}

/** Settings that keep the tests quick: short polls and drain checks. */
export function quickEnv(extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return { POLL_INTERVAL_MS: '200', MAINTENANCE_CHECK_INTERVAL_MS: '500', ...extra }
}

// ---------------------------------------------------------------------------------------------
// Arranging and reading rows

/** Register one service at `baseUrl` with these tasks, through the programmatic API. */
export async function registerTasks(url: string, baseUrl: string, tasks: TaskManifest[], serviceId = 'stub'): Promise<void> {
  const db = await apiDatabase(url)
  try {
    await registerService(db, { id: serviceId, version: '1.0.0', baseUrl, tasks })
  } finally {
    await db.close()
  }
}

/**
 * A plain pg pool or client of the tests seen as the API's Queryable, its statements bound to the
 * suite's schema: the tests enqueue through pipeweave's own statement, gate and all.
 */
export function queryable(runner: Pick<Pool, 'query'>): Queryable {
  const schema = schemaOf(TEST_SCHEMA)
  return {
    schema,
    query: (<R extends QueryResultRow>(statement: AnyStatement, values?: unknown[]) => {
      const bound = bind(statement, schema)
      return runner.query<R>(typeof bound === 'string' ? bound : bound.text, values)
    }) as Queryable['query'],
  }
}

/**
 * One pg client of the tests as the API's database: its statements bound to the suite's schema,
 * and transactions on that same client (maintenance transitions, bulk enqueue).
 */
export function clientDatabase(client: Pick<PoolClient, 'query'>): Queryable & { withTransaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> } {
  const q = queryable(client)
  return {
    ...q,
    async withTransaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      await client.query('BEGIN')
      try {
        const result = await fn(q)
        await client.query('COMMIT')
        return result
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined)
        throw error
      }
    },
  }
}

/**
 * Enqueue `count` runs of a task in one transaction (created_at in order); input `{ n }`.
 * Returns the run ids in creation order.
 */
export async function enqueueMany(pool: Pool, taskId: string, count: number, options: { priority?: number; delayMs?: number } = {}): Promise<string[]> {
  const client = await pool.connect()
  try {
    const db = clientDatabase(client)
    const items = Array.from({ length: count }, (_, i) => ({ input: { n: i + 1 }, priority: options.priority, delayMs: options.delayMs }))
    const { runIds } = await enqueueTasks(db as never, taskId, items)
    return runIds as string[]
  } finally {
    client.release()
  }
}

export interface RunRow {
  id: string
  task_id: string
  status: string
  attempt: number
  priority: number
  input: unknown
  output: unknown
  error: string | null
  error_code: string | null
  previous_attempts: Array<{ attempt: number; error: string; errorCode: string; at: string }>
  scheduled_for: Date | null
  created_at: Date
  started_at: Date | null
  completed_at: Date | null
  orchestrator_id: string | null
  pipeline_run_id: string | null
  parent_run_id: string | null
  idempotency_key: string | null
}

export async function getRun(pool: Pool, id: string): Promise<RunRow> {
  const { rows: [row] } = await pool.query<RunRow>(`SELECT * FROM ${ALL_RUNS} AS r WHERE id = $1`, [id])
  if (!row) throw new Error(`no task run ${id}`)
  return row
}

export async function statusCounts(pool: Pool): Promise<Record<string, number>> {
  const { rows } = await pool.query<{ status: string; n: number }>(`SELECT status, count(*)::int AS n FROM ${ALL_RUNS} AS r GROUP BY status`)
  return Object.fromEntries(rows.map((r) => [r.status, r.n]))
}

/** Resolve once every listed run (or every run) has one of `statuses`. */
export async function allIn(pool: Pool, statuses: string[], ids?: string[]): Promise<boolean> {
  const { rows: [row] } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${ALL_RUNS} AS r WHERE status <> ALL ($1::text[]) AND ($2::text[] IS NULL OR id = ANY ($2::text[]))`,
    [statuses, ids ?? null])
  return row.n === 0
}

export interface EnqueueArgs {
  input?: unknown
  priority?: number
  idempotencyKey?: string
  delayMs?: number
  inputPath?: string
  pipelineRunId?: string
}

/** Enqueue one run through pipeweave's enqueue statement (the gate of SPEC §4 applies). */
export async function enqueueOne(pool: Pick<Pool, 'query'>, taskId: string, args: EnqueueArgs = {}): Promise<{ runId: string; deduplicated: boolean }> {
  const { runId, deduplicated } = await enqueueTask(queryable(pool), { taskId, ...args })
  return { runId: runId!, deduplicated }
}

export const FINAL = ['completed', 'failed', 'timeout', 'cancelled']

/** Wait until the run is in a final state, and return it. */
export async function finished(pool: Pool, id: string, timeoutMs = 30_000): Promise<RunRow> {
  return waitFor(async () => {
    const run = await getRun(pool, id)
    return FINAL.includes(run.status) ? run : undefined
  }, { timeoutMs, what: `run ${id} to finish` })
}

export interface DlqRow {
  id: string
  task_run_id: string
  task_id: string
  error: string | null
  error_code: string | null
  attempts: number
  previous_attempts: Array<{ attempt: number; error: string; errorCode: string; at: string }>
  failed_at: Date
}

export async function dlqFor(pool: Pool, runId: string): Promise<DlqRow[]> {
  const { rows } = await pool.query<DlqRow>('SELECT * FROM dlq WHERE task_run_id = $1', [runId])
  return rows
}
