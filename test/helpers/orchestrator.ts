/**
 * `pipeweave run` as a real process for the orchestrator tests: JSON log lines parsed as they
 * arrive, waits on log events, and a registry so that an afterEach can kill whatever a test left.
 * Also the arranging helpers those tests share: register a stub worker's tasks, enqueue in bulk,
 * read runs back.
 */
import type { Pool } from 'pg'
import { registerService, type TaskManifest } from '../../src/api/services'
import { createDatabase } from '../../src/db/database'
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

const live = new Set<RunProcess>()

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
    live.delete(proc)
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
  live.add(proc)
  return proc
}

/** For afterEach: SIGKILL every run process a test left running. */
export async function killLeftoverRuns(): Promise<number> {
  const left = [...live]
  for (const proc of left) proc.child.kill('SIGKILL')
  await Promise.all(left.map((p) => p.done))
  return left.length
}

/** Settings that keep the tests quick: short polls and drain checks. */
export function quickEnv(extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return { POLL_INTERVAL_MS: '200', MAINTENANCE_CHECK_INTERVAL_MS: '500', ...extra }
}

// ---------------------------------------------------------------------------------------------
// Arranging and reading rows

/** Register one service at `baseUrl` with these tasks, through the programmatic API. */
export async function registerTasks(url: string, baseUrl: string, tasks: TaskManifest[], serviceId = 'stub'): Promise<void> {
  const db = await createDatabase({ flags: { url }, env: {}, command: 'test' })
  try {
    await registerService(db, { id: serviceId, version: '1.0.0', baseUrl, tasks })
  } finally {
    await db.close()
  }
}

/**
 * Enqueue `count` runs of a task through pipeweave_enqueue in one statement (so in one
 * transaction, created_at in order); input `{ n }`. Returns the run ids in creation order.
 */
export async function enqueueMany(pool: Pool, taskId: string, count: number, options: { priority?: number; delayMs?: number } = {}): Promise<string[]> {
  const { rows } = await pool.query<{ run_id: string }>(
    `SELECT e.run_id FROM generate_series(1, $2::int) AS g(n)
       CROSS JOIN LATERAL pipeweave_enqueue($1::text, jsonb_build_object('n', g.n), $3::int, NULL, $4::bigint, NULL, NULL) AS e
      ORDER BY g.n`, [taskId, count, options.priority ?? null, options.delayMs ?? 0])
  return rows.map((r) => r.run_id)
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
  const { rows: [row] } = await pool.query<RunRow>('SELECT * FROM task_runs WHERE id = $1', [id])
  if (!row) throw new Error(`no task run ${id}`)
  return row
}

export async function statusCounts(pool: Pool): Promise<Record<string, number>> {
  const { rows } = await pool.query<{ status: string; n: number }>('SELECT status, count(*)::int AS n FROM task_runs GROUP BY status')
  return Object.fromEntries(rows.map((r) => [r.status, r.n]))
}

/** Resolve once every listed run (or every run) has one of `statuses`. */
export async function allIn(pool: Pool, statuses: string[], ids?: string[]): Promise<boolean> {
  const { rows: [row] } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM task_runs WHERE status <> ALL ($1::text[]) AND ($2::text[] IS NULL OR id = ANY ($2::text[]))`,
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

/** Enqueue one run through pipeweave_enqueue (the gate of SPEC §4 applies). */
export async function enqueueOne(pool: Pick<Pool, 'query'>, taskId: string, args: EnqueueArgs = {}): Promise<{ runId: string; deduplicated: boolean }> {
  const { rows: [row] } = await pool.query<{ run_id: string; deduplicated: boolean }>(
    'SELECT run_id, deduplicated FROM pipeweave_enqueue($1::text, $2::jsonb, $3::int, $4::text, $5::bigint, $6::text, $7::text)',
    [taskId, args.input === undefined ? null : JSON.stringify(args.input), args.priority ?? null, args.idempotencyKey ?? null,
      args.delayMs ?? 0, args.inputPath ?? null, args.pipelineRunId ?? null])
  return { runId: row.run_id, deduplicated: row.deduplicated }
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
