/**
 * Maintenance mode (SPEC §4): status, request, enter, exit, and the drain check. Each mode change is
 * a transaction of separate statements (src/sql/orchestrator-state.ts): the state row, then the
 * gate exclusive, then the count it depends on, then the UPDATE (whose trigger records it).
 */
import * as os from 'node:os'
import type { Database, Queryable, TransactionClient } from '../db/database'
import { RefusedError } from '../errors'
import * as sql from '../sql/orchestrator-state'
import * as runs from '../sql/task-runs'
import { orchestratorStaleMs } from '../api/settings'
import { type LostRun, returnLostRuns } from './reaper'

export type Mode = 'running' | 'waiting_for_maintenance' | 'maintenance'
export const MODES: readonly Mode[] = ['running', 'waiting_for_maintenance', 'maintenance']

export interface MaintenanceEvent {
  fromMode: Mode
  toMode: Mode
  at: string
  actor: string
  reason: string | null
}

/** A paused task (its own pause or its service's, SPEC §7) and its pending runs, which the pause holds. */
export interface PausedTask {
  id: string
  pendingRuns: number
}

/** A service breaker holding runs back (SPEC §7): they are due pending work, and hold a drain. */
export interface OpenBreaker {
  service: string
  /** ISO time: no run of the service is claimed before it (then one probe at a time). */
  openUntil: string
  pendingRuns: number
}

export interface MaintenanceStatus {
  mode: Mode
  /** Due pending runs that hold a drain (runs of paused tasks are in pausedTasks instead). */
  pendingTasks: number
  runningTasks: number
  scheduledTasks: number
  /** Every paused task, with its pending runs: they do not hold a drain (`Paused tasks: N` sums them). */
  pausedTasks: PausedTask[]
  /** Services whose breaker holds their runs (open or half-open), with the due runs it holds: part of pendingTasks. */
  openBreakers: OpenBreaker[]
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

export type { LostRun }

/** What a mode change needs of the database: statements, and a transaction of several. */
export type MaintenanceDb = Pick<Database, 'query' | 'schema' | 'withTransaction'>

/**
 * Hand back runs of dead orchestrators; finish a drain when nothing due or running is left. The
 * cheap answer first, without locks (most checks find the drain busy); then, in one transaction,
 * the state row, the gate exclusive (no claim or enqueue in flight), and the count again in a
 * statement of its own: a parent completing concurrently is either still `running` or already
 * committed together with its follow-ups, never neither.
 */
export async function drainCheck(db: MaintenanceDb, options: MaintenanceOptions = {}): Promise<DrainCheckResult> {
  const lost = await returnLostRuns(db, options.staleMs ?? orchestratorStaleMs())
  const { rows: [state] } = await db.query<{ mode: Mode }>(sql.currentMode)
  let mode = state.mode
  let changed = false
  if (mode === 'waiting_for_maintenance' && !(await workRemains(db))) {
    changed = await db.withTransaction((tx) => finishDrain(tx, options.actor ?? defaultActor()))
    if (changed) mode = 'maintenance'
  }
  return { mode, changed, lostRuns: lost.length, lost }
}

async function workRemains(db: Queryable): Promise<boolean> {
  const { rows: [row] } = await db.query<{ remains: boolean }>(runs.workRemains)
  return row.remains
}

/** In a transaction that has locked nothing yet: waiting_for_maintenance → maintenance if drained. */
async function finishDrain(tx: TransactionClient, actor: string): Promise<boolean> {
  const { rows: [state] } = await tx.query<{ mode: Mode; reason: string | null }>(sql.lockState)
  if (state.mode !== 'waiting_for_maintenance') return false
  return finishDrainLocked(tx, actor, state.reason)
}

/** The same, with the state row already locked (and, after a request, the gate already held). */
async function finishDrainLocked(tx: TransactionClient, actor: string, reason: string | null): Promise<boolean> {
  await tx.query(sql.takeGate)
  const { rows: [count] } = await tx.query<{ drained: boolean }>(sql.drained)
  if (!count.drained) return false
  await tx.query(sql.setMode, ['maintenance', actor, reason])
  return true
}

/** The status of SPEC §4, after a drain check (every maintenance:* command checks the drain). */
export async function getMaintenanceStatus(db: MaintenanceDb, options: MaintenanceOptions & { history?: number; check?: boolean } = {}): Promise<MaintenanceStatus> {
  const staleMs = options.staleMs ?? orchestratorStaleMs()
  if (options.check !== false) await drainCheck(db, { ...options, staleMs })
  const { rows: [row] } = await db.query<{
    mode: Mode; mode_changed_at: Date; reason: string | null; pending: number; running: number; scheduled: number; live: number
    paused: Array<{ id: string; pendingRuns: string | number }>
    breakers: Array<{ service: string; openUntil: string; pendingRuns: string | number }>
  }>(sql.status, [staleMs])
  const status: MaintenanceStatus = {
    mode: row.mode,
    pendingTasks: row.pending,
    runningTasks: row.running,
    scheduledTasks: row.scheduled,
    pausedTasks: row.paused.map((p) => ({ id: p.id, pendingRuns: Number(p.pendingRuns) })),
    openBreakers: row.breakers.map((b) => ({ service: b.service, openUntil: new Date(b.openUntil).toISOString(), pendingRuns: Number(b.pendingRuns) })),
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

/** The pending runs held by pauses: what `Paused tasks: N` counts. */
export function pausedRuns(s: Pick<MaintenanceStatus, 'pausedTasks'>): number {
  return s.pausedTasks.reduce((sum, p) => sum + p.pendingRuns, 0)
}

/** The `Status:` sentence. */
function describe(s: MaintenanceStatus): string {
  return describeMode(s) + describeBreakers(s) + describePaused(s)
}

/** How many due runs open breakers hold (SPEC §7: they are due work, and a drain waits for them). */
function describeBreakers(s: MaintenanceStatus): string {
  return s.openBreakers.map((b) => ` The breaker of service ${b.service} is open until ${b.openUntil}` +
    `${b.pendingRuns > 0 ? `: ${b.pendingRuns} of the pending task(s) wait for its worker` : ''}.`).join('')
}

/** What the pauses hold, said after the mode's sentence (SPEC §7: paused work is reported, and holds no drain). */
function describePaused(s: MaintenanceStatus): string {
  if (s.pausedTasks.length === 0) return ''
  const shown = s.pausedTasks.slice(0, 5).map((p) => p.id).join(', ')
  const more = s.pausedTasks.length > 5 ? ` and ${s.pausedTasks.length - 5} more` : ''
  const runs = pausedRuns(s)
  const held = runs > 0 ? `; their ${runs} pending run(s) wait for \`pipeweave tasks:resume\` and do not hold a drain` : ''
  return ` Paused: ${shown}${more}${held}.`
}

function describeMode(s: MaintenanceStatus): string {
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

/**
 * running → waiting_for_maintenance, and straight on to maintenance when already drained: both
 * changes in one transaction (two maintenance_events rows). Idempotent in any mode.
 */
export async function requestMaintenance(db: MaintenanceDb, options: MaintenanceOptions = {}): Promise<TransitionResult> {
  const staleMs = options.staleMs ?? orchestratorStaleMs()
  const actor = options.actor ?? defaultActor()
  await returnLostRuns(db, staleMs)
  const changed = await db.withTransaction(async (tx) => {
    const { rows: [state] } = await tx.query<{ mode: Mode; reason: string | null }>(sql.lockState)
    if (state.mode === 'maintenance') return false
    let requested = false
    if (state.mode === 'running') {
      // The trigger takes the gate exclusive: no enqueue or claim is in flight from here on.
      await tx.query(sql.setMode, ['waiting_for_maintenance', actor, options.reason ?? null])
      requested = true
    }
    const drained = await finishDrainLocked(tx, actor, requested ? options.reason ?? null : state.reason)
    return requested || drained
  })
  return { ...(await getMaintenanceStatus(db, { ...options, staleMs, check: false })), changed }
}

/** Straight to maintenance, refused (exit 4) while any run is running. */
export async function enterMaintenance(db: MaintenanceDb, options: MaintenanceOptions = {}): Promise<TransitionResult> {
  const staleMs = options.staleMs ?? orchestratorStaleMs()
  const actor = options.actor ?? defaultActor()
  // Runs of dead orchestrators first, in transactions of their own: reaping waits for claims in
  // flight, which hold the gate shared (the opposite order to ours below).
  await returnLostRuns(db, staleMs)
  const outcome = await db.withTransaction(async (tx) => {
    const { rows: [state] } = await tx.query<{ mode: Mode }>(sql.lockState)
    await tx.query(sql.takeGate)
    const { rows: [count] } = await tx.query<{ running: number }>(sql.runningCount)
    if (count.running > 0) return { running: count.running, changed: false }
    if (state.mode === 'maintenance') return { running: 0, changed: false }
    await tx.query(sql.setMode, ['maintenance', actor, options.reason ?? null])
    return { running: 0, changed: true }
  })
  if (outcome.running > 0) {
    throw new RefusedError('TASKS_RUNNING', `cannot enter maintenance: ${outcome.running} task run(s) are running`, {
      hint: 'use `pipeweave maintenance:request --wait` to let them finish first',
    })
  }
  return { ...(await getMaintenanceStatus(db, { ...options, staleMs, check: false })), changed: outcome.changed }
}

/** Back to running from any mode. Idempotent. */
export async function exitMaintenance(db: MaintenanceDb, options: MaintenanceOptions = {}): Promise<TransitionResult> {
  const changed = await db.withTransaction(async (tx) => {
    const { rows: [state] } = await tx.query<{ mode: Mode }>(sql.lockState)
    if (state.mode === 'running') return false
    await tx.query(sql.setMode, ['running', options.actor ?? defaultActor(), options.reason ?? null])
    return true
  })
  return { ...(await getMaintenanceStatus(db, { ...options, check: false })), changed }
}

/** Whether new task runs are accepted now (the mode is `running`). */
export async function canAcceptTasks(db: Queryable): Promise<boolean> {
  const { rows: [row] } = await db.query<{ mode: Mode }>(sql.currentMode)
  return row.mode === 'running'
}
