/**
 * Arranging task runs and orchestrators directly in the database, for the maintenance, enqueue and
 * services tests. Runs go through pipeweave's own statements (claim, complete), the way `run`
 * drives them, so the rows look exactly like the ones an orchestrator leaves.
 */
import type { Pool } from 'pg'
import { createRepository } from '../../src/orchestrator/repository'
import { decideFailure, retrySettingsOf } from '../../src/orchestrator/retry-policy'
import type { Database } from '../../src/db/database'
import { ALL_RUNS } from './db'
import { queryable } from './orchestrator'

/** A repository on a test pool: the orchestrator's own statements, for `orchestratorId`. */
function repository(pool: Pool, orchestratorId: string) {
  return createRepository(queryable(pool) as unknown as Database, orchestratorId)
}

/** Claims by fixtures do not test the lease: any registered orchestrator may claim. */
const ANY_LEASE_MS = 2_000_000_000

export type Mode = 'running' | 'waiting_for_maintenance' | 'maintenance'

export interface EventRow {
  id: string
  from_mode: Mode
  to_mode: Mode
  at: Date
  actor: string
  reason: string | null
  /** The transaction that wrote the row: two rows with one xid were written together. */
  xid: string
}

/** A service `svc` with the given tasks (defaults of migration 001 otherwise). */
export async function addTask(pool: Pool, taskId: string, columns: {
  retries?: number; retryDelayMs?: number; retryBackoff?: 'fixed' | 'exponential'; concurrency?: number; serviceId?: string
} = {}): Promise<void> {
  const serviceId = columns.serviceId ?? 'svc'
  await pool.query(`INSERT INTO services (id, version, base_url) VALUES ($1, '1.0.0', 'http://127.0.0.1:9') ON CONFLICT (id) DO NOTHING`, [serviceId])
  await pool.query(
    `INSERT INTO tasks (id, service_id, retries, retry_delay_ms, retry_backoff, concurrency) VALUES ($1, $2, $3, $4, $5, $6)`,
    [taskId, serviceId, columns.retries ?? 3, columns.retryDelayMs ?? 1000, columns.retryBackoff ?? 'exponential', columns.concurrency ?? 0])
}

/** A pending run inserted directly (bypassing the gate, as a run left from before the request would be). */
export async function addPendingRun(pool: Pool, taskId: string, options: { scheduledInMs?: number; attempt?: number } = {}): Promise<string> {
  const { rows: [row] } = await pool.query<{ id: string }>(
    `INSERT INTO task_runs (task_id, attempt, scheduled_for)
     VALUES ($1, $2, CASE WHEN $3::bigint IS NULL THEN NULL ELSE clock_timestamp() + $3::bigint * interval '1 millisecond' END)
     RETURNING id`,
    [taskId, options.attempt ?? 1, options.scheduledInMs ?? null])
  return row.id
}

/** Register (or refresh) an orchestrators row; `ageMs` back-dates its heartbeat. */
export async function heartbeat(pool: Pool, orchestratorId: string, ageMs = 0): Promise<void> {
  await pool.query(
    `INSERT INTO orchestrators (id, host, pid, version, heartbeat_at)
     VALUES ($1, 'test-host', 1, 'test', now() - $2::int * interval '1 millisecond')
     ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at`,
    [orchestratorId, ageMs])
}

/** Claim up to `limit` due runs for `orchestratorId`, as `run` does. Returns the claimed ids. */
export async function claim(pool: Pool, orchestratorId: string, limit = 1): Promise<string[]> {
  const { runs } = await repository(pool, orchestratorId).claim(limit, ANY_LEASE_MS)
  return runs.map((r) => r.id)
}

/** Put one run in `running`: a live orchestrator row, then the claim. */
export async function startRun(pool: Pool, taskId: string, orchestratorId = 'test-orchestrator'): Promise<string> {
  const id = await addPendingRun(pool, taskId)
  await heartbeat(pool, orchestratorId)
  const claimed = await claim(pool, orchestratorId, 1)
  if (!claimed.includes(id)) throw new Error(`expected to claim ${id}, claimed ${JSON.stringify(claimed)}`)
  return id
}

/** Complete a run held by `orchestratorId` with `output`, as its orchestrator would. */
export async function complete(pool: Pool, runId: string, orchestratorId = 'test-orchestrator', output: unknown = { ok: true }): Promise<boolean> {
  const { rows: [run] } = await pool.query<{ attempt: number }>('SELECT attempt FROM task_runs WHERE id = $1', [runId])
  const [result] = await repository(pool, orchestratorId).complete([{ runId, attempt: run?.attempt ?? 1, output, runNext: [], fromCache: false }])
  return result.completed
}

/**
 * Record a failed attempt of a run held by `orchestratorId`, decided by the task's retry policy
 * as its orchestrator would. Returns the outcome and when a retry is due.
 */
export async function fail(pool: Pool, runId: string, orchestratorId: string, failure: { error: string; code: string; retryable: boolean; timedOut?: boolean }): Promise<{ outcome: string; scheduledFor: Date | null }> {
  const { rows: [run] } = await pool.query(
    `SELECT r.attempt, t.retries, t.retry_backoff, t.retry_delay_ms, t.max_retry_delay_ms
       FROM task_runs r JOIN tasks t ON t.id = r.task_id WHERE r.id = $1`, [runId])
  const decision = run ? decideFailure(retrySettingsOf(run), run.attempt, { retryable: failure.retryable, timedOut: Boolean(failure.timedOut) }) : { retry: false as const, status: 'failed' as const }
  const [result] = await repository(pool, orchestratorId).fail([{
    runId, attempt: run?.attempt ?? 1, error: failure.error, code: failure.code,
    retry: decision.retry, delayMs: decision.retry ? decision.delayMs : 0, status: decision.retry ? 'failed' : decision.status,
  }])
  return { outcome: result.outcome, scheduledFor: result.scheduledFor }
}

export async function mode(pool: Pool): Promise<{ mode: Mode; modeChangedAt: Date; reason: string | null }> {
  const { rows: [row] } = await pool.query<{ mode: Mode; mode_changed_at: Date; reason: string | null }>(
    `SELECT mode, mode_changed_at, reason FROM orchestrator_state WHERE id = 'singleton'`)
  return { mode: row.mode, modeChangedAt: row.mode_changed_at, reason: row.reason }
}

/** maintenance_events rows with id greater than `afterId`, oldest first. */
export async function eventsAfter(pool: Pool, afterId: string | number = 0): Promise<EventRow[]> {
  const { rows } = await pool.query<EventRow>(
    `SELECT id::text, from_mode, to_mode, at, actor, reason, xmin::text AS xid
       FROM maintenance_events WHERE id > $1::bigint ORDER BY id`, [String(afterId)])
  return rows
}

export async function lastEventId(pool: Pool): Promise<string> {
  const { rows: [row] } = await pool.query<{ id: string }>(`SELECT COALESCE(max(id), 0)::text AS id FROM maintenance_events`)
  return row.id
}

/**
 * Put the system in `target` through plain SQL (the runbook way; the trigger records it), with no
 * task run left over: tests arrange the runs they need after this.
 */
export async function resetTo(pool: Pool, target: Mode): Promise<void> {
  await pool.query(`DELETE FROM dlq`)
  await pool.query(`DELETE FROM idempotency_cache`)
  await pool.query(`DELETE FROM task_runs`)
  await pool.query(`DELETE FROM task_run_history`)
  await pool.query(`DELETE FROM orchestrators`)
  await pool.query(`UPDATE orchestrator_state SET mode = $1 WHERE id = 'singleton'`, [target])
}

export async function countRuns(pool: Pool, where = 'true', values: unknown[] = []): Promise<number> {
  const { rows: [row] } = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${ALL_RUNS} AS r WHERE ${where}`, values)
  return row.n
}

/** What happened around one departure from `running` (see maintenanceViolations). */
export interface DrainWindow {
  /** Runs created after the mode left `running` and before it was back: must be 0. */
  createdLate: number
  /** Runs started after the mode became `maintenance` and before it was back: must be 0. */
  startedInMaintenance: number
  /** Runs started while draining (left `running`, not yet `maintenance`): allowed. */
  startedWhileDraining: number
}

/**
 * For every time the mode left `running` (at A): when it became `maintenance` (B) and when it was
 * back to `running` (E). Counts the runs created in (A, E), started in (B, E) and started in (A, B).
 */
export async function maintenanceViolations(pool: Pool): Promise<DrainWindow[]> {
  const { rows } = await pool.query<{ created_late: number; started_late: number; started_draining: number }>(`
    WITH w AS (
      SELECT e.id, e.at AS left_running,
             (SELECT m.at FROM maintenance_events m WHERE m.id >= e.id AND m.to_mode = 'maintenance' ORDER BY m.id LIMIT 1) AS maintenance,
             COALESCE((SELECT x.at FROM maintenance_events x WHERE x.id > e.id AND x.to_mode = 'running' ORDER BY x.id LIMIT 1), 'infinity') AS resumed
        FROM maintenance_events e
       WHERE e.from_mode = 'running')
    SELECT (SELECT count(*) FROM ${ALL_RUNS} AS r WHERE r.created_at > w.left_running AND r.created_at < w.resumed)::int AS created_late,
           (SELECT count(*) FROM ${ALL_RUNS} AS r WHERE r.started_at > w.maintenance AND r.started_at < w.resumed)::int AS started_late,
           (SELECT count(*) FROM ${ALL_RUNS} AS r WHERE r.started_at > w.left_running AND r.started_at < w.maintenance)::int AS started_draining
      FROM w ORDER BY w.id`)
  return rows.map((r) => ({ createdLate: r.created_late, startedInMaintenance: r.started_late, startedWhileDraining: r.started_draining }))
}
