/**
 * What the orchestrator asks of the database, as plain functions (graphile-worker's getJob,
 * completeJob, failJob): the loop holds no SQL. Handed to createOrchestrator, so that a test can
 * wrap it (a statement that fails on purpose, a claim held back) and drive the real loop against
 * the real database; and built from a statement set, so that a test can run two binaries' claims
 * side by side (a rolling deploy, SPEC §3).
 */
import * as os from 'node:os'
import type { Database, SchemaStatement } from '../db/database'
import { type DrainCheckResult, drainCheck, type Mode } from '../maintenance/maintenance'
import * as dashboard from '../sql/dashboard'
import * as migrations from '../sql/migrations'
import * as orchestrators from '../sql/orchestrators'
import * as services from '../sql/services'
import * as runs from '../sql/task-runs'
import { VERSION } from '../version'
import type { RetrySettings } from './retry-policy'

export interface ClaimedRun {
  id: string
  taskId: string
  pipelineRunId: string | null
  attempt: number
  input: unknown
  inputPath: string | null
  previousAttempts: unknown[]
  idempotencyKey: string | null
  baseUrl: string
  serviceId: string
  /** The service's breaker is on (manifest `breaker`, default true): connect failures are deferred. */
  breaker: boolean
  /**
   * When claimed, the service's breaker counted connect failures or was open: a dispatch that
   * reaches the worker closes it (breakerReached). False for nearly every run: nothing to write.
   */
  breakerDirty: boolean
  codeVersion: number
  codeHash: string | null
  timeoutSeconds: number
  retry: RetrySettings
  /** An unexpired idempotency entry holds this key: its output, and no dispatch. */
  cached: boolean
  cachedOutput: unknown
}

/** What the claim's gate answered: the mode, or that this orchestrator must register again first. */
export type ClaimState = Mode | 'unregistered'

export interface ClaimResult {
  state: ClaimState
  runs: ClaimedRun[]
  /**
   * Work was held back by time (a rate limit's window, an open breaker): in how many ms the
   * earliest of it may be claimable; null when nothing is (SPEC §7: runs held back are taken as
   * soon as the window allows, not at the next poll).
   */
  wakeInMs: number | null
  /** Tasks with due runs that their rate limit held back in this claim (pipeweave_task_rate_limited_total). */
  rateHeld: string[]
}

/** The service breaker's settings (PIPEWEAVE_BREAKER_COOLDOWN_MS, PIPEWEAVE_BREAKER_MAX_OPEN_MS). */
export interface BreakerSettings {
  cooldownMs: number
  maxOpenMs: number
}

/** A run whose dispatch failed before a connection to its worker was made. */
export interface Deferral {
  runId: string
  attempt: number
}

/**
 * What became of a connect failure: `deferred` (pending again, attempt kept, the breaker still
 * closed), `held` (the same, the breaker open), `attempt` (not deferred: record it as an ordinary
 * failure), `fenced` (not ours any more).
 */
export type DeferOutcome = 'deferred' | 'held' | 'attempt' | 'fenced'

/** One run's result as the loop hands it over to be written. */
export interface Completion {
  runId: string
  attempt: number
  output: unknown
  runNext: string[]
  /** Completed from the idempotency cache: do not write the cache again. */
  fromCache: boolean
}

export interface CompleteResult {
  /** False: the run was not ours any more (handed to another orchestrator, or cancelled). */
  completed: boolean
  mode: Mode
  followUps: string[]
  ignoredNext: string[]
}

/** A failed attempt, with what the retry policy decided. */
export interface FailureRecord {
  runId: string
  attempt: number
  error: string
  code: string
  retry: boolean
  delayMs: number
  /** The run's final status when it is not retried. */
  status: 'failed' | 'timeout'
}

export type FailOutcome = 'retried' | 'failed' | 'timeout' | 'fenced'

export interface FailResult {
  outcome: FailOutcome
  scheduledFor: Date | null
  mode: Mode
}

export interface ReleasedRun {
  id: string
  taskId: string
  attempt: number
}

export interface Repository {
  readonly orchestratorId: string
  /** Register, or heartbeat; `inserted` when the row had gone (this orchestrator was reaped). */
  heartbeat(): Promise<{ inserted: boolean }>
  deregister(): Promise<void>
  /** Claim up to `limit` runs, if registered with a heartbeat within `leaseMs`. */
  claim(limit: number, leaseMs: number): Promise<ClaimResult>
  /** Complete several runs in one statement; one result per completion, in order. */
  complete(completions: Completion[]): Promise<CompleteResult[]>
  /** Record several failed attempts in one statement; one result per failure, in order. */
  fail(failures: FailureRecord[]): Promise<FailResult[]>
  /** Connect failures of breaker-enabled services, in one statement; one outcome per run, in order. */
  defer(deferrals: Deferral[], breaker: BreakerSettings): Promise<DeferOutcome[]>
  /** A dispatch reached service `serviceId`'s worker: close its breaker; whether it was open. */
  breakerReached(serviceId: string): Promise<boolean>
  /**
   * Hand back to pending, attempt kept, the runs this orchestrator holds: all except `keep`, or
   * with `only`, those alone.
   */
  release(keep: string[], only?: string[]): Promise<ReleasedRun[]>
  /** Any due pending or running run (--until-idle). */
  workRemains(): Promise<boolean>
  /** Hand back runs of dead orchestrators, finish a drain (SPEC §4). */
  drainCheck(staleMs: number, actor: string): Promise<DrainCheckResult>
  /** The newest applied migration. */
  schemaVersion(): Promise<number>
  /**
   * Move finished runs a runbook left in task_runs to the history; how many. Also prunes the
   * dashboard's old throughput rows (at most every ten minutes).
   */
  sweep(): Promise<number>
  /**
   * VACUUM the live table (its dead claim-index entries). It waits for a vacuum already running
   * rather than skip (an autovacuum in its way is cancelled by the server after deadlock_timeout):
   * a skipped one left the entries of the claims since the other's heap pass for the next claims
   * to read. Nothing of the hot path waits on it (its lock does not conflict with row writes).
   */
  vacuum(): Promise<void>
}

/** The statements a repository runs; a test swaps one (another binary's claim). */
export interface RunStatements {
  claimRuns: SchemaStatement
  completeRuns: SchemaStatement
  failRuns: SchemaStatement
  deferRuns: SchemaStatement
  releaseHeld: SchemaStatement
}

export const STATEMENTS: RunStatements = {
  claimRuns: runs.claimRuns,
  completeRuns: runs.completeRuns,
  failRuns: runs.failRuns,
  deferRuns: runs.deferRuns,
  releaseHeld: runs.releaseHeld,
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

/** Finished rows a sweep moves at most per statement. */
const SWEEP_BATCH = 1000

/**
 * The dashboard's per-minute throughput (migration 004) is kept two hours (it shows one), pruned by
 * each orchestrator's sweep at most every ten minutes.
 */
const THROUGHPUT_KEPT_MS = 2 * 3_600_000
const PRUNE_EVERY_MS = 600_000

export function createRepository(db: Database, orchestratorId: string, options: { concurrency?: number; statements?: Partial<RunStatements> } = {}): Repository {
  const sql = { ...STATEMENTS, ...options.statements }
  let lastPrune = 0
  return {
    orchestratorId,
    async heartbeat() {
      const { rows: [row] } = await db.query<{ inserted: boolean }>(orchestrators.heartbeat,
        [orchestratorId, os.hostname(), process.pid, VERSION, options.concurrency ?? 0])
      return { inserted: row.inserted }
    },
    async deregister() {
      await db.query(orchestrators.deregister, [orchestratorId])
    },
    async claim(limit, leaseMs) {
      const { rows } = await db.query<ClaimRow>(sql.claimRuns, [orchestratorId, limit, Math.max(1, Math.floor(leaseMs))])
      const first = rows[0]
      return {
        state: first.state,
        runs: rows.filter((r) => r.id !== null).map(toClaimedRun),
        // Absent from another binary's claim (a test's statement set): nothing held by time.
        wakeInMs: first.wake_in_ms === undefined || first.wake_in_ms === null ? null : Math.max(0, first.wake_in_ms),
        rateHeld: first.rate_held ?? [],
      }
    },
    async complete(completions) {
      const payload = JSON.stringify(completions.map((c) => ({
        id: c.runId, attempt: c.attempt, output: c.output ?? null, next: c.runNext, cached: c.fromCache,
      })))
      const { rows } = await db.query<{ run_id: string; completed: boolean; mode: Mode; follow_ups: string[]; ignored_next: string[] }>(
        sql.completeRuns, [orchestratorId, payload])
      if (rows.length !== completions.length) throw new Error(`completing ${completions.length} run(s) returned ${rows.length} row(s)`)
      return rows.map((r) => ({ completed: r.completed, mode: r.mode, followUps: r.follow_ups, ignoredNext: r.ignored_next }))
    },
    async fail(failures) {
      const payload = JSON.stringify(failures.map((f) => ({
        id: f.runId, attempt: f.attempt, orchestrator: orchestratorId, error: storableText(f.error), code: storableText(f.code, 200),
        retry: f.retry, delayMs: f.delayMs, status: f.status,
      })))
      const { rows } = await db.query<{ run_id: string; outcome: FailOutcome; scheduled_for: Date | null; mode: Mode }>(sql.failRuns, [payload])
      if (rows.length !== failures.length) throw new Error(`failing ${failures.length} run(s) returned ${rows.length} row(s)`)
      return rows.map((r) => ({ outcome: r.outcome, scheduledFor: r.scheduled_for, mode: r.mode }))
    },
    async defer(deferrals, breaker) {
      const payload = JSON.stringify(deferrals.map((d) => ({ id: d.runId, attempt: d.attempt })))
      const { rows } = await db.query<{ run_id: string; outcome: DeferOutcome }>(sql.deferRuns,
        [orchestratorId, payload, breaker.cooldownMs, breaker.maxOpenMs])
      if (rows.length !== deferrals.length) throw new Error(`deferring ${deferrals.length} run(s) returned ${rows.length} row(s)`)
      return rows.map((r) => r.outcome)
    },
    async breakerReached(serviceId) {
      const { rows: [row] } = await db.query<{ was_open: boolean }>(services.breakerReached, [serviceId, orchestratorId])
      return row.was_open
    },
    async release(keep, only) {
      const { rows } = await db.query<{ id: string; task_id: string; attempt: number }>(sql.releaseHeld, [orchestratorId, keep, only ?? null])
      return rows.map((r) => ({ id: r.id, taskId: r.task_id, attempt: r.attempt }))
    },
    async workRemains() {
      const { rows: [row] } = await db.query<{ remains: boolean }>(runs.workRemains)
      return row.remains
    },
    drainCheck(staleMs, actor) {
      return drainCheck(db, { staleMs, actor })
    },
    async schemaVersion() {
      const { rows: [row] } = await db.query<{ version: number | null }>(migrations.currentVersion)
      return row.version ?? 0
    },
    async sweep() {
      if (Date.now() - lastPrune >= PRUNE_EVERY_MS) {
        lastPrune = Date.now()
        await db.query(dashboard.pruneThroughput, [THROUGHPUT_KEPT_MS])
      }
      let moved = 0
      for (;;) {
        const { rows: [row] } = await db.query<{ moved: number }>(runs.sweepFinished, [SWEEP_BATCH])
        moved += row.moved
        if (row.moved < SWEEP_BATCH) return moved
      }
    },
    async vacuum() {
      await db.query({ name: 'vacuum_task_runs', text: `VACUUM ${db.schema.q}.task_runs` })
    },
  }
}

interface ClaimRow {
  state: ClaimState
  wake_in_ms?: number | null
  rate_held?: string[]
  id: string | null
  task_id: string
  pipeline_run_id: string | null
  attempt: number
  input: unknown
  input_path: string | null
  previous_attempts: unknown[]
  idempotency_key: string | null
  base_url: string
  service_id: string
  breaker_enabled: boolean
  breaker_dirty: boolean
  code_version: number
  code_hash: string | null
  timeout_seconds: number
  retries: number
  retry_backoff: 'fixed' | 'exponential'
  retry_delay_ms: number
  max_retry_delay_ms: number
  cached: boolean
  cached_output: unknown
}

function toClaimedRun(r: ClaimRow): ClaimedRun {
  return {
    id: r.id!, taskId: r.task_id, pipelineRunId: r.pipeline_run_id, attempt: r.attempt,
    input: r.input, inputPath: r.input_path, previousAttempts: r.previous_attempts, idempotencyKey: r.idempotency_key,
    baseUrl: r.base_url, serviceId: r.service_id, breaker: r.breaker_enabled === true, breakerDirty: r.breaker_dirty === true,
    codeVersion: r.code_version, codeHash: r.code_hash, timeoutSeconds: r.timeout_seconds,
    retry: { retries: r.retries, retryBackoff: r.retry_backoff, retryDelayMs: r.retry_delay_ms, maxRetryDelayMs: r.max_retry_delay_ms },
    cached: r.cached, cachedOutput: r.cached_output,
  }
}
