/**
 * Maintenance mode (SPEC §4): status, request, enter, exit, and the drain check. The locking that
 * makes the gate atomic lives in migration 002; these functions call it and shape the results.
 */
import * as os from 'node:os'
import type { Queryable } from '../db/database'
import { RefusedError } from '../errors'
import * as sql from '../sql/orchestrator-state'
import { orchestratorStaleMs } from '../api/settings'

export type Mode = 'running' | 'waiting_for_maintenance' | 'maintenance'
export const MODES: readonly Mode[] = ['running', 'waiting_for_maintenance', 'maintenance']

export interface MaintenanceEvent {
  fromMode: Mode
  toMode: Mode
  at: string
  actor: string
  reason: string | null
}

export interface MaintenanceStatus {
  mode: Mode
  pendingTasks: number
  runningTasks: number
  scheduledTasks: number
  liveOrchestrators: number
  canEnterMaintenance: boolean
  modeChangedAt: string
  reason: string | null
  message: string
  history?: MaintenanceEvent[]
}

export interface MaintenanceOptions {
  /** Who is asking, recorded in maintenance_events (default `user@host pid`). */
  actor?: string
  reason?: string
  /** ORCHESTRATOR_STALE_MS: a heartbeat older than this marks an orchestrator dead. */
  staleMs?: number
}

/** `user@host pid`, the actor of changes made by this process. */
export function defaultActor(): string {
  let user = 'unknown'
  try {
    user = os.userInfo().username
  } catch { /* no passwd entry */ }
  return `${user}@${os.hostname()} ${process.pid}`
}

export interface DrainCheckResult {
  mode: Mode
  /** The check moved the mode to `maintenance`. */
  changed: boolean
  /** Runs of dead orchestrators handed back (or dead-lettered). */
  lostRuns: number
  /** Those runs, each with what became of it: `retried` (pending again), `failed` or `timeout`. */
  lost: LostRun[]
}

export interface LostRun {
  id: string
  taskId: string
  /** The attempt its orchestrator held. */
  attempt: number
  outcome: 'retried' | 'failed' | 'timeout'
}

/** Hand back runs of dead orchestrators; finish a drain when nothing due or running is left. */
export async function drainCheck(db: Queryable, options: MaintenanceOptions = {}): Promise<DrainCheckResult> {
  const { rows: [row] } = await db.query<{ mode: Mode; changed: boolean; lost_runs: number; lost: LostRun[] }>(
    sql.drainCheck, [options.staleMs ?? orchestratorStaleMs(), options.actor ?? defaultActor()])
  return { mode: row.mode, changed: row.changed, lostRuns: row.lost_runs, lost: row.lost }
}

/** The status of SPEC §4, after a drain check (every maintenance:* command checks the drain). */
export async function getMaintenanceStatus(db: Queryable, options: MaintenanceOptions & { history?: number; check?: boolean } = {}): Promise<MaintenanceStatus> {
  const staleMs = options.staleMs ?? orchestratorStaleMs()
  if (options.check !== false) await drainCheck(db, { ...options, staleMs })
  const { rows: [row] } = await db.query<{
    mode: Mode; mode_changed_at: Date; reason: string | null; pending: number; running: number; scheduled: number; live: number
  }>(sql.status, [staleMs])
  const status: MaintenanceStatus = {
    mode: row.mode,
    pendingTasks: row.pending,
    runningTasks: row.running,
    scheduledTasks: row.scheduled,
    liveOrchestrators: row.live,
    canEnterMaintenance: row.running === 0,
    modeChangedAt: row.mode_changed_at.toISOString(),
    reason: row.reason,
    message: '',
  }
  status.message = describe(status)
  if (options.history !== undefined && options.history > 0) {
    const { rows } = await db.query<{ from_mode: Mode; to_mode: Mode; at: Date; actor: string; reason: string | null }>(sql.history, [options.history])
    status.history = rows.map((e) => ({ fromMode: e.from_mode, toMode: e.to_mode, at: e.at.toISOString(), actor: e.actor, reason: e.reason }))
  }
  return status
}

/** The `Status:` sentence. */
function describe(s: MaintenanceStatus): string {
  const scheduled = s.scheduledTasks > 0 ? ` ${s.scheduledTasks} scheduled task(s) will run after maintenance.` : ''
  switch (s.mode) {
    case 'running':
      return s.liveOrchestrators === 0 && s.pendingTasks > 0
        ? `Accepting tasks, but no orchestrator is alive to run the ${s.pendingTasks} pending task(s): start \`pipeweave run\`.`
        : 'Accepting and dispatching tasks.'
    case 'waiting_for_maintenance': {
      if (s.liveOrchestrators === 0 && s.pendingTasks > 0) {
        return `Draining, but no orchestrator is alive, so nothing will run the ${s.pendingTasks} pending task(s); ` +
          '`pipeweave maintenance:enter` keeps them for after the maintenance.' + scheduled
      }
      return `Draining: new tasks are refused; waiting for ${s.runningTasks} running and ${s.pendingTasks} pending task(s) to finish.` + scheduled
    }
    case 'maintenance':
      return 'In maintenance: nothing is dispatched. `pipeweave maintenance:exit` resumes.' + scheduled
  }
}

export interface TransitionResult extends MaintenanceStatus {
  /** Whether this call changed the mode (a no-op changes nothing and records nothing). */
  changed: boolean
}

/** running → waiting_for_maintenance (or straight to maintenance when already drained). Idempotent. */
export async function requestMaintenance(db: Queryable, options: MaintenanceOptions = {}): Promise<TransitionResult> {
  const staleMs = options.staleMs ?? orchestratorStaleMs()
  const { rows: [row] } = await db.query<{ mode: Mode; changed: boolean }>(sql.requestMaintenance,
    [options.actor ?? defaultActor(), options.reason ?? null, staleMs])
  return { ...(await getMaintenanceStatus(db, { ...options, staleMs, check: false })), changed: row.changed }
}

/** Straight to maintenance, refused (exit 4) while any run is running. */
export async function enterMaintenance(db: Queryable, options: MaintenanceOptions = {}): Promise<TransitionResult> {
  const staleMs = options.staleMs ?? orchestratorStaleMs()
  const { rows: [row] } = await db.query<{ mode: Mode; changed: boolean; running_runs: number }>(sql.enterMaintenance,
    [options.actor ?? defaultActor(), options.reason ?? null, staleMs])
  if (row.running_runs > 0) {
    throw new RefusedError('TASKS_RUNNING', `cannot enter maintenance: ${row.running_runs} task run(s) are running`, {
      hint: 'use `pipeweave maintenance:request --wait` to let them finish first',
    })
  }
  return { ...(await getMaintenanceStatus(db, { ...options, staleMs, check: false })), changed: row.changed }
}

/** Back to running from any mode. Idempotent. */
export async function exitMaintenance(db: Queryable, options: MaintenanceOptions = {}): Promise<TransitionResult> {
  const { rows: [row] } = await db.query<{ mode: Mode; changed: boolean }>(sql.exitMaintenance,
    [options.actor ?? defaultActor(), options.reason ?? null])
  return { ...(await getMaintenanceStatus(db, { ...options, check: false })), changed: row.changed }
}

/** Whether new task runs are accepted now (the mode is `running`). */
export async function canAcceptTasks(db: Queryable): Promise<boolean> {
  const { rows: [row] } = await db.query<{ mode: Mode }>(sql.currentMode)
  return row.mode === 'running'
}
