/**
 * What the orchestrator loop asks of the database, as plain functions (graphile-worker's
 * getJob/completeJob/failJob): the loop holds no SQL.
 */
import * as os from 'node:os'
import type { Queryable } from '../db/database'
import type { Mode } from '../maintenance/maintenance'
import * as orchestrators from '../sql/orchestrators'
import * as runs from '../sql/task-runs'
import { VERSION } from '../version'

export interface ClaimedRun {
  id: string
  taskId: string
  pipelineRunId: string | null
  attempt: number
  priority: number
  input: unknown
  inputPath: string | null
  previousAttempts: unknown[]
  idempotencyKey: string | null
  createdAt: Date
  startedAt: Date
  serviceId: string
  baseUrl: string
  codeVersion: number
  codeHash: string | null
  timeoutSeconds: number
  cached: boolean
  cachedOutput: unknown
}

/** One run's result as the loop hands it over to be written. */
export interface Completion {
  runId: string
  output: unknown
  runNext: string[]
  /** Completed from the idempotency cache: do not write the cache again. */
  fromCache: boolean
}

export interface CompleteResult {
  completed: boolean
  mode: Mode
  followUps: string[]
  ignoredNext: string[]
}

/** A failed attempt as the loop reports it. */
export interface Failure {
  error: string
  code: string
  retryable: boolean
  timedOut: boolean
}

/** Longest error text stored for one attempt (a worker may answer with megabytes). */
const MAX_ERROR_CHARS = 4000

/**
 * Worker-supplied text on its way into `text` columns: PostgreSQL refuses the NUL character in
 * text (and jsonb), and an error message needs no more than a few kilobytes.
 */
export function storableText(text: string, max = MAX_ERROR_CHARS): string {
  // eslint-disable-next-line no-control-regex
  const clean = text.replace(/\u0000/g, '\uFFFD')
  return clean.length > max ? `${clean.slice(0, max)}…` : clean
}

export type FailOutcome = 'retried' | 'failed' | 'timeout' | 'fenced'

export interface FailResult {
  outcome: FailOutcome
  attempt: number | null
  scheduledFor: Date | null
  mode: Mode
}

export interface Repository {
  heartbeat(): Promise<{ inserted: boolean }>
  deregister(): Promise<void>
  claim(limit: number): Promise<ClaimedRun[]>
  /** Complete several runs in one statement and transaction; one result per completion, in order. */
  completeMany(completions: Completion[]): Promise<CompleteResult[]>
  /** completeMany, then claim up to `limit` runs, in one statement and transaction. */
  completeAndClaim(completions: Completion[], limit: number): Promise<{ results: CompleteResult[]; claimed: ClaimedRun[] }>
  fail(runId: string, failure: Failure): Promise<FailResult>
  /**
   * Hand every run this orchestrator holds, except `keep`, back to pending keeping its attempt
   * (graceful shutdown; a claim whose answer was lost).
   */
  releaseHeld(keep: string[]): Promise<Array<{ id: string; taskId: string; attempt: number }>>
  workRemains(): Promise<boolean>
}

export function createRepository(db: Queryable, orchestratorId: string, concurrency: number): Repository {
  return {
    async heartbeat() {
      const { rows: [row] } = await db.query<{ inserted: boolean }>(orchestrators.heartbeat,
        [orchestratorId, os.hostname(), process.pid, VERSION, concurrency])
      return { inserted: row.inserted }
    },
    async deregister() {
      await db.query(orchestrators.deregister, [orchestratorId])
    },
    async claim(limit) {
      const { rows } = await db.query<ClaimRow>(runs.claim, [orchestratorId, limit])
      return rows.map(toClaimedRun)
    },
    async completeMany(completions) {
      const { rows } = await db.query<CompleteRow>(runs.completeMany, [orchestratorId, completionsJson(completions)])
      if (rows.length !== completions.length) throw new Error(`completing ${completions.length} run(s) returned ${rows.length} row(s)`)
      return rows.map(toCompleteResult)
    },
    async completeAndClaim(completions, limit) {
      const { rows } = await db.query<CompleteRow & ClaimRow & { kind: 'completed' | 'claimed' }>(runs.completeAndClaim,
        [orchestratorId, completionsJson(completions), limit])
      const results: CompleteResult[] = []
      const claimed: ClaimedRun[] = []
      for (const row of rows) {
        if (row.kind === 'completed') results.push(toCompleteResult(row))
        else claimed.push(toClaimedRun({ ...row, id: row.run_id }))
      }
      if (results.length !== completions.length) throw new Error(`completing ${completions.length} run(s) returned ${results.length} row(s)`)
      return { results, claimed }
    },
    async fail(runId, failure) {
      const { rows: [row] } = await db.query<{ outcome: FailOutcome; attempt: number | null; scheduled_for: Date | null; mode: Mode }>(runs.fail,
        [runId, orchestratorId, storableText(failure.error), storableText(failure.code, 200), failure.retryable, failure.timedOut])
      return { outcome: row.outcome, attempt: row.attempt, scheduledFor: row.scheduled_for, mode: row.mode }
    },
    async releaseHeld(keep) {
      const { rows } = await db.query<{ id: string; task_id: string; attempt: number }>(runs.releaseHeld, [orchestratorId, keep])
      return rows.map((r) => ({ id: r.id, taskId: r.task_id, attempt: r.attempt }))
    },
    async workRemains() {
      const { rows: [row] } = await db.query<{ remains: boolean }>(runs.workRemains)
      return row.remains
    },
  }
}

function completionsJson(completions: Completion[]): string {
  return JSON.stringify(completions.map((c) => ({ id: c.runId, output: c.output ?? null, runNext: c.runNext, fromCache: c.fromCache })))
}

interface CompleteRow {
  run_id: string
  completed: boolean
  mode: Mode
  follow_ups: string[]
  ignored_next: string[]
}

function toCompleteResult(row: CompleteRow): CompleteResult {
  return { completed: row.completed, mode: row.mode, followUps: row.follow_ups, ignoredNext: row.ignored_next }
}

interface ClaimRow {
  id: string
  task_id: string
  pipeline_run_id: string | null
  attempt: number
  priority: number
  input: unknown
  input_path: string | null
  previous_attempts: unknown[]
  idempotency_key: string | null
  created_at: Date
  started_at: Date
  service_id: string
  base_url: string
  code_version: number
  code_hash: string | null
  timeout_seconds: number
  cached: boolean
  cached_output: unknown
}

function toClaimedRun(r: ClaimRow): ClaimedRun {
  return {
    id: r.id, taskId: r.task_id, pipelineRunId: r.pipeline_run_id, attempt: r.attempt, priority: r.priority,
    input: r.input, inputPath: r.input_path, previousAttempts: r.previous_attempts, idempotencyKey: r.idempotency_key,
    createdAt: r.created_at, startedAt: r.started_at, serviceId: r.service_id, baseUrl: r.base_url,
    codeVersion: r.code_version, codeHash: r.code_hash, timeoutSeconds: r.timeout_seconds,
    cached: r.cached, cachedOutput: r.cached_output,
  }
}
