/**
 * Flow control, the operator's side (SPEC §7): pause and resume tasks or a whole service, set or
 * clear a task's runtime rate limit, and read what holds each task and service back (pauses, the
 * breaker, limits). The state lives in the database, so it holds on every orchestrator at once and
 * survives restarts; the claim reads it (the engine's side). Each change is one transaction, and
 * the trigger of migration 003 records it in control_events with the actor and reason given here
 * (default actor: `user@host pid`, as maintenance commands record theirs). A change that changes
 * nothing (pausing a paused task) records nothing, like a repeated maintenance:request.
 *
 * Runtime state wins over the manifest until cleared: services:register never undoes a pause or a
 * runtime limit (src/sql/services.ts upsertTask).
 */
import type { Database, Queryable } from '../db/database'
import { UsageError } from '../errors'
import { defaultActor } from '../maintenance/maintenance'
import * as events from '../sql/control-events'
import * as sql from '../sql/services'

/** The most starts a rate limit allows per window: the sliding window keeps one row per start it allows. */
export const MAX_RATE_LIMIT = 10_000
/** The longest window of a rate limit: a day. */
export const MAX_RATE_PERIOD_MS = 86_400_000

export interface RateLimit {
  /** At most this many runs of the task start… */
  limit: number
  /** …within any window of this many milliseconds (by the server's clock). */
  periodMs: number
}

/** tasks:limit's setting: a limit, `none` (no limit, whatever the manifest says), or back to the manifest's. */
export type RateLimitSetting = RateLimit | 'none' | 'manifest'

/** Who asked, and why: recorded in control_events (and, for a pause, on the row). */
export interface FlowControlOptions {
  /** Default `user@host pid`; the dashboard passes `dashboard`. */
  actor?: string
  reason?: string
}

/** Pause or resume these tasks, or one service (which covers its tasks, those registered later too). */
export type PauseTarget = { tasks: string[] } | { service: string }

export interface Pause {
  /** ISO time. */
  at: string
  by: string
  reason: string | null
}

export interface PauseChange {
  kind: 'task' | 'service'
  id: string
  /** Whether this call changed it (false: it already was so; nothing recorded). */
  changed: boolean
  /** This level's pause after the call (null: not paused at this level). */
  paused: Pause | null
  /** A task: its service's pause, which holds it whatever its own level says. */
  servicePaused?: Pause | null
  /** A service: its tasks paused on their own, which its resume leaves paused. */
  pausedTasks?: string[]
  /** What happened, for a person: `task send-report paused`, `… resumed; still paused by its service billing`. */
  message: string
}

export interface PauseResult {
  action: 'pause' | 'resume'
  changes: PauseChange[]
}

export interface TaskFlowState {
  id: string
  serviceId: string
  /** The task's own pause. */
  paused: Pause | null
  /** Its service's pause. */
  servicePaused: Pause | null
  /** The limit in force (null: none). */
  rateLimit: RateLimit | null
  /** `runtime` while tasks:limit set one (or `none`), else `manifest`. */
  rateLimitSource: 'runtime' | 'manifest'
  /** The manifest's rateLimit (null: none). */
  manifestRateLimit: RateLimit | null
}

export type BreakerState = 'off' | 'closed' | 'open' | 'half-open' | 'expired'

export interface Breaker {
  /** off: `breaker: false` in the manifest. open: nothing claimed before openUntil; half-open: one probe at a time; expired: open past the maximum, holds nothing. */
  state: BreakerState
  /** Connect failures in a row, all orchestrators together. */
  failures: number
  openUntil: string | null
  openedAt: string | null
  expiresAt: string | null
  cooldownMs: number | null
}

export interface ServiceFlowState {
  id: string
  paused: Pause | null
  breaker: Breaker
  /** Its tasks paused on their own. */
  pausedTasks: string[]
}

export interface FlowControlState {
  tasks: TaskFlowState[]
  services: ServiceFlowState[]
}

export interface RateLimitResult {
  taskId: string
  /** Whether this call changed it (false: already so; nothing recorded). */
  changed: boolean
  rateLimit: RateLimit | null
  rateLimitSource: 'runtime' | 'manifest'
  manifestRateLimit: RateLimit | null
}

export interface ControlEvent {
  id: string
  kind: 'pause' | 'breaker' | 'rate_limit' | 'schedule'
  target: string
  action: string
  at: string
  actor: string
  reason: string | null
  detail: unknown
}

// ---------------------------------------------------------------------------------------------
// Input

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/**
 * `tasks:limit --rate`: `20/1s`, `100/1m`, `5/500ms`, `20/s` (a unit alone is one of it), `none`
 * or `manifest`. Throws a UsageError naming `what` (the flag) and the accepted forms.
 */
export function parseRateLimit(text: string, what = '--rate'): RateLimitSetting {
  const value = text.trim().toLowerCase()
  if (value === 'none' || value === 'manifest') return value
  const match = /^(\d+)\s*\/\s*(\d*)\s*(ms|s|m|h|d)$/.exec(value)
  const forms = 'N/PERIOD (20/1s, 100/1m, 5/500ms), none or manifest'
  if (!match) throw new UsageError('INVALID_RATE', `${what} must be ${forms}, not "${text}"`, { hint: 'for example --rate 20/1s: at most 20 starts in any second' })
  const limit = Number(match[1])
  const periodMs = (match[2] === '' ? 1 : Number(match[2])) * DURATION_UNITS[match[3]]
  validateRateLimit({ limit, periodMs }, what)
  return { limit, periodMs }
}

/**
 * What is wrong with a rate limit `{ limit, periodMs }` (1…MAX_RATE_LIMIT starts per 1 ms…1 day),
 * one problem per field (`field` empty for the whole value); none when it is good.
 */
export function rateLimitProblems(value: unknown): Array<{ field: string; problem: string }> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return [{ field: '', problem: 'must be { "limit": N, "periodMs": P }' }]
  const v = value as Record<string, unknown>
  const problems: Array<{ field: string; problem: string }> = []
  for (const key of Object.keys(v)) {
    if (key !== 'limit' && key !== 'periodMs') problems.push({ field: `.${key}`, problem: 'is not a rateLimit field (limit, periodMs)' })
  }
  const shown = (x: unknown) => (x === undefined ? '' : `, not ${JSON.stringify(x)}`)
  if (!(typeof v.limit === 'number' && Number.isInteger(v.limit) && v.limit >= 1 && v.limit <= MAX_RATE_LIMIT)) {
    problems.push({ field: '.limit', problem: `must be a whole number from 1 to ${MAX_RATE_LIMIT}${shown(v.limit)}` })
  }
  if (!(typeof v.periodMs === 'number' && Number.isInteger(v.periodMs) && v.periodMs >= 1 && v.periodMs <= MAX_RATE_PERIOD_MS)) {
    problems.push({ field: '.periodMs', problem: `must be a whole number of milliseconds from 1 to ${MAX_RATE_PERIOD_MS} (a day)${shown(v.periodMs)}` })
  }
  return problems
}

function validateRateLimit(value: unknown, what: string): void {
  const problems = rateLimitProblems(value)
  if (problems.length > 0) {
    throw new UsageError('INVALID_RATE', `${what}: ${problems.map((p) => `${p.field.replace(/^\./, '')} ${p.problem}`.trim()).join('; ')}`, {
      hint: 'for example 20/1s: at most 20 starts in any second',
    })
  }
}

/** `20/1s`, `5/500ms`, `100/1m`: a limit as tasks:limit takes it and services:list shows it. */
export function formatRateLimit(rate: RateLimit | null): string {
  if (!rate) return 'none'
  const { periodMs } = rate
  const unit = periodMs % 86_400_000 === 0 ? [86_400_000, 'd'] : periodMs % 3_600_000 === 0 ? [3_600_000, 'h']
    : periodMs % 60_000 === 0 ? [60_000, 'm'] : periodMs % 1000 === 0 ? [1000, 's'] : [1, 'ms']
  return `${rate.limit}/${periodMs / (unit[0] as number)}${unit[1]}`
}

function validateIds(ids: unknown, what: string): string[] {
  if (!Array.isArray(ids) || ids.some((id) => typeof id !== 'string' || id === '')) throw new UsageError('INVALID_TARGET', `${what} must be non-empty strings`)
  return [...new Set(ids as string[])]
}

/** The target of a pause or resume, checked (exit 2) before any SQL. */
export function validatePauseTarget(target: PauseTarget): PauseTarget {
  const t = target as { tasks?: unknown; service?: unknown }
  if (typeof t !== 'object' || t === null || (t.tasks !== undefined) === (t.service !== undefined)) {
    throw new UsageError('INVALID_TARGET', 'name the tasks, or one service, not both', { hint: 'tasks:pause TASK… or tasks:pause --service SERVICE' })
  }
  if (t.service !== undefined) {
    if (typeof t.service !== 'string' || t.service === '') throw new UsageError('INVALID_TARGET', 'the service must be a non-empty string')
    return { service: t.service }
  }
  const tasks = validateIds(t.tasks, 'task ids')
  if (tasks.length === 0) throw new UsageError('INVALID_TARGET', 'name at least one task, or a service', { hint: 'tasks:pause TASK… or tasks:pause --service SERVICE' })
  return { tasks }
}

/** The CLI's TASK… or --service S as a target, checked (exit 2) before anything connects. */
export function pauseTargetFrom(tasks: string[], service: string | undefined): PauseTarget {
  if (service !== undefined && tasks.length > 0) throw new UsageError('BAD_USAGE', 'give task ids or --service, not both', { hint: 'see --help' })
  if (service === undefined && tasks.length === 0) throw new UsageError('BAD_USAGE', 'give at least one task id, or --service SERVICE', { hint: 'services:list shows the tasks and services' })
  return validatePauseTarget(service !== undefined ? { service } : { tasks })
}

// ---------------------------------------------------------------------------------------------
// Changes

/** Pause tasks, or a service. Idempotent: a paused one keeps its first pause (who, when, why). */
export function pauseTasks(db: Pick<Database, 'withTransaction'>, target: PauseTarget, options: FlowControlOptions = {}): Promise<PauseResult> {
  return setPaused(db, target, true, options)
}

/**
 * Resume tasks, or a service. Each resume clears its own level: resuming a task leaves its
 * service's pause in force (and says so), resuming a service leaves its tasks' own pauses.
 */
export function resumeTasks(db: Pick<Database, 'withTransaction'>, target: PauseTarget, options: FlowControlOptions = {}): Promise<PauseResult> {
  return setPaused(db, target, false, options)
}

async function setPaused(db: Pick<Database, 'withTransaction'>, target: PauseTarget, pause: boolean, options: FlowControlOptions): Promise<PauseResult> {
  const checked = validatePauseTarget(target)
  const actor = options.actor ?? defaultActor()
  const reason = options.reason ?? null
  const action = pause ? 'pause' : 'resume'
  return db.withTransaction(async (tx) => {
    if ('service' in checked) {
      const { rows: known } = await tx.query<{ id: string }>(sql.lockServiceById, [checked.service])
      if (known.length === 0) throw unknownService(checked.service)
      const { rows: changed } = await tx.query<{ id: string }>(sql.setServicePaused, [checked.service, actor, reason, pause])
      const [state] = await readServices(tx, checked.service)
      const change = { kind: 'service' as const, id: state.id, changed: changed.length > 0, paused: state.paused, pausedTasks: state.pausedTasks }
      return { action, changes: [{ ...change, message: describeChange(action, change) }] }
    }
    const { rows: known } = await tx.query<{ id: string }>(sql.lockTasksByIds, [checked.tasks])
    const found = new Set(known.map((r) => r.id))
    const unknown = checked.tasks.filter((id) => !found.has(id))
    if (unknown.length > 0) throw unknownTasks(unknown, `nothing was ${pause ? 'paused' : 'resumed'}`)
    const { rows: changed } = await tx.query<{ id: string }>(sql.setTasksPaused, [checked.tasks, actor, reason, pause])
    const changedIds = new Set(changed.map((r) => r.id))
    const states = new Map((await readTasks(tx, checked.tasks)).map((t) => [t.id, t]))
    return {
      action,
      changes: checked.tasks.map((id) => {
        const state = states.get(id)!
        const change = { kind: 'task' as const, id, changed: changedIds.has(id), paused: state.paused, servicePaused: state.servicePaused }
        return { ...change, message: describeChange(action, change, state.serviceId) }
      }),
    }
  })
}

/**
 * Set task `taskId`'s runtime rate limit: `{ limit, periodMs }`, `'none'` (no limit, whatever the
 * manifest says) or `'manifest'` (back to the manifest's rateLimit). It wins over the manifest,
 * through any number of registrations, until set to `'manifest'`. Orchestrators apply it at their
 * next claim.
 */
export async function setTaskRateLimit(db: Pick<Database, 'withTransaction'>, taskId: string, setting: RateLimitSetting, options: FlowControlOptions = {}): Promise<RateLimitResult> {
  if (typeof taskId !== 'string' || taskId === '') throw new UsageError('TASK_ID_REQUIRED', 'a task id is required')
  if (setting !== 'none' && setting !== 'manifest') validateRateLimit(setting, 'the rate limit')
  const [override, limit, periodMs] = setting === 'manifest' ? [false, null, null]
    : setting === 'none' ? [true, null, null] : [true, setting.limit, setting.periodMs]
  return db.withTransaction(async (tx) => {
    const { rows: known } = await tx.query<{ id: string }>(sql.lockTasksByIds, [[taskId]])
    if (known.length === 0) throw unknownTasks([taskId], 'nothing was changed')
    const { rows: changed } = await tx.query(sql.setTaskRateOverride, [taskId, override, limit, periodMs, options.actor ?? defaultActor(), options.reason ?? null])
    const [state] = await readTasks(tx, [taskId])
    return { taskId, changed: changed.length > 0, rateLimit: state.rateLimit, rateLimitSource: state.rateLimitSource, manifestRateLimit: state.manifestRateLimit }
  })
}

/** The sentence of one pause or resume (PauseChange.message). */
function describeChange(action: 'pause' | 'resume', c: Omit<PauseChange, 'message'>, serviceId?: string): string {
  const what = `${c.kind} ${c.id}`
  const since = (p: Pause) => `since ${p.at} by ${p.by}${p.reason ? `: ${p.reason}` : ''}`
  if (action === 'pause') {
    const done = c.changed ? `${what} paused` : `${what} was already paused (${since(c.paused!)}); nothing changed`
    if (c.kind === 'service') return `${done}: no run of its tasks starts until \`pipeweave tasks:resume --service ${c.id}\``
    return `${done}: its pending runs wait for \`pipeweave tasks:resume ${c.id}\``
  }
  const done = c.changed ? `${what} resumed` : `${what} was not paused; nothing changed`
  if (c.kind === 'task' && c.servicePaused) {
    return `${done}; still paused by its service ${serviceId} (${since(c.servicePaused)}): \`pipeweave tasks:resume --service ${serviceId}\``
  }
  if (c.kind === 'service' && c.pausedTasks && c.pausedTasks.length > 0) {
    return `${done}; still paused on their own: ${c.pausedTasks.join(', ')} (\`pipeweave tasks:resume ${c.pausedTasks.join(' ')}\`)`
  }
  return done
}

// ---------------------------------------------------------------------------------------------
// Reading

/** Every task's and service's flow-control state (the dashboard's and services:list's source). */
export async function getFlowControl(db: Queryable): Promise<FlowControlState> {
  const [tasks, services] = await Promise.all([readTasks(db, null), readServices(db, null)])
  return { tasks, services }
}

/**
 * Whether task `taskId` is held by a pause now (its own or its service's), and by which; null for
 * an unknown task. tasks:enqueue says so when it queues a run that will wait.
 */
export async function getTaskPause(db: Queryable, taskId: string): Promise<{ serviceId: string; paused: Pause | null; servicePaused: Pause | null } | null> {
  const { rows: [row] } = await db.query<{ service_id: string; paused: RawPause | null; service_paused: RawPause | null }>(sql.taskPause, [taskId])
  if (!row) return null
  return { serviceId: row.service_id, paused: toPause(row.paused), servicePaused: toPause(row.service_paused) }
}

/** The newest `limit` (default 50) control_events rows, of one target (`task:<id>`, `service:<id>`) or all. */
export async function listControlEvents(db: Queryable, options: { target?: string; limit?: number } = {}): Promise<ControlEvent[]> {
  const limit = options.limit ?? 50
  if (!Number.isInteger(limit) || limit < 1 || limit > 100_000) throw new UsageError('INVALID_LIMIT', 'limit must be a whole number from 1 to 100000')
  const { rows } = await db.query<{ id: string; kind: ControlEvent['kind']; target: string; action: string; at: Date; actor: string; reason: string | null; detail: unknown }>(
    events.listControlEvents, [options.target ?? null, limit])
  return rows.map((r) => ({ id: String(r.id), kind: r.kind, target: r.target, action: r.action, at: r.at.toISOString(), actor: r.actor, reason: r.reason, detail: r.detail }))
}

interface RawPause { at: string; by: string; reason: string | null }

/** A pause read as JSON: its time in the ISO form of every other time pipeweave prints. */
export function toPause(raw: RawPause | null): Pause | null {
  return raw ? { at: new Date(raw.at).toISOString(), by: raw.by, reason: raw.reason } : null
}

const iso = (d: Date | null) => (d ? d.toISOString() : null)

export interface RawBreakerColumns {
  breaker_state: BreakerState
  breaker_failures: number
  breaker_open_until: Date | null
  breaker_opened_at: Date | null
  breaker_expires_at: Date | null
  breaker_cooldown_ms: number | null
}

export function toBreaker(r: RawBreakerColumns): Breaker {
  return {
    state: r.breaker_state, failures: r.breaker_failures, openUntil: iso(r.breaker_open_until),
    openedAt: iso(r.breaker_opened_at), expiresAt: iso(r.breaker_expires_at), cooldownMs: r.breaker_cooldown_ms,
  }
}

async function readTasks(db: Queryable, ids: string[] | null): Promise<TaskFlowState[]> {
  const { rows } = await db.query<{
    id: string; service_id: string; paused: RawPause | null; service_paused: RawPause | null
    manifest_rate_limit: RateLimit | null; rate_limit: RateLimit | null; rate_override: boolean
  }>(sql.readTaskFlow, [ids])
  return rows.map((r) => ({
    id: r.id, serviceId: r.service_id, paused: toPause(r.paused), servicePaused: toPause(r.service_paused),
    rateLimit: r.rate_limit, rateLimitSource: r.rate_override ? 'runtime' : 'manifest', manifestRateLimit: r.manifest_rate_limit,
  }))
}

async function readServices(db: Queryable, id: string | null): Promise<ServiceFlowState[]> {
  const { rows } = await db.query<RawBreakerColumns & { id: string; paused: RawPause | null; paused_tasks: string[] }>(sql.readServiceFlow, [id])
  return rows.map((r) => ({ id: r.id, paused: toPause(r.paused), breaker: toBreaker(r), pausedTasks: r.paused_tasks }))
}

function unknownTasks(ids: string[], what: string): UsageError {
  return new UsageError('UNKNOWN_TASK', `unknown task${ids.length > 1 ? 's' : ''} ${ids.map((id) => `"${id}"`).join(', ')}; ${what}`, {
    hint: 'services:list shows the known tasks',
  })
}

function unknownService(id: string): UsageError {
  return new UsageError('UNKNOWN_SERVICE', `unknown service "${id}"; nothing was changed`, { hint: 'services:list shows the registered services' })
}
