/**
 * services:register / services:list (SPEC §5). The manifest is validated whole before any SQL
 * (like pg-boss's attorney.ts): a bad one exits 2 naming the field and writes nothing.
 */
import type { Database, Queryable } from '../db/database'
import { SQLSTATE } from '../db/errors'
import { UsageError } from '../errors'
import { defaultActor } from '../maintenance/maintenance'
import { MASK } from '../redact'
import * as events from '../sql/control-events'
import * as sql from '../sql/services'
import { manifestScheduleProblems, replaceServiceSchedules, type RegisteredSchedule, type ScheduleManifest } from './schedules'
import { type Breaker, type Pause, type RateLimit, type RawBreakerColumns, rateLimitProblems, toBreaker, toPause } from './flow-control'

export interface TaskManifest {
  id: string
  codeHash?: string
  /** Seconds. */
  timeout?: number
  retries?: number
  retryBackoff?: 'fixed' | 'exponential'
  retryDelayMs?: number
  maxRetryDelayMs?: number
  heartbeatIntervalMs?: number
  concurrency?: number
  priority?: number
  /** Seconds. */
  idempotencyTTL?: number
  allowedNext?: string[]
  description?: string
  /** At most `limit` starts within any `periodMs` (SPEC §7); `tasks:limit` overrides it at runtime. */
  rateLimit?: RateLimit | null
}

export interface ServiceManifest {
  id: string
  version: string
  baseUrl: string
  /** The service breaker (SPEC §7), on unless false: it holds the service's runs while its worker refuses connections. */
  breaker?: boolean
  tasks: TaskManifest[]
  /** Owned by this service: replaced by every registration (SPEC §7). */
  schedules?: ScheduleManifest[]
}

/** The defaults a task gets for what its manifest leaves out (the columns' defaults, migration 001). */
export const TASK_DEFAULTS = {
  timeout: 300,
  retries: 3,
  retryBackoff: 'exponential',
  retryDelayMs: 1000,
  maxRetryDelayMs: 300_000,
  concurrency: 0,
  priority: 100,
} as const

const ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$/
const INT32_MAX = 2_147_483_647

type Check = (value: unknown) => string | undefined
const integer = (min: number, max = INT32_MAX): Check => (v) =>
  (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max) ? undefined : `must be a whole number from ${min} to ${max}`
const text: Check = (v) => (typeof v === 'string' ? undefined : 'must be a string')
const identifier: Check = (v) => (typeof v === 'string' && ID.test(v) ? undefined : 'must be an id of letters, digits, ".", "_", ":" or "-" (at most 200)')

const TASK_FIELDS: Record<keyof TaskManifest, Check> = {
  id: identifier,
  codeHash: text,
  timeout: integer(1, 86_400 * 7),
  retries: integer(0, 1000),
  retryBackoff: (v) => (v === 'fixed' || v === 'exponential' ? undefined : 'must be "fixed" or "exponential"'),
  retryDelayMs: integer(0),
  maxRetryDelayMs: integer(0),
  heartbeatIntervalMs: integer(1),
  concurrency: integer(0),
  priority: integer(-INT32_MAX),
  idempotencyTTL: integer(0),
  allowedNext: (v) => (Array.isArray(v) && v.every((n) => typeof n === 'string' && ID.test(n)) ? undefined : 'must be an array of task ids'),
  description: text,
  // Checked field by field below (rateLimitProblems): every problem of it is named.
  rateLimit: () => undefined,
}

/** The manifest's own fields (the service's); `breaker` is the service's, not a task's (one worker, one breaker). */
const MANIFEST_FIELDS = ['id', 'version', 'baseUrl', 'breaker', 'tasks', 'schedules']

/** At most this many problems are named in the one-line message; the rest are counted. */
const MAX_PROBLEMS_SHOWN = 20

function invalid(problems: string[]): UsageError {
  const shown = problems.slice(0, MAX_PROBLEMS_SHOWN)
  const more = problems.length - shown.length
  return new UsageError('INVALID_MANIFEST', `invalid service manifest: ${shown.join('; ')}${more > 0 ? `; and ${more} more problem(s)` : ''}`, {
    hint: 'fix the manifest (see the README for its fields); nothing was written',
  })
}

/**
 * A service's baseUrl is an http(s) origin with an optional path (SPEC §5): the dispatcher appends
 * `/tasks/<id>`, so a query or a fragment would swallow the task path, and credentials would be
 * stored and shown in clear (services:list, dashboards). The message masks the password.
 */
export function baseUrlProblem(text: string): string | undefined {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    return 'must be an http:// or https:// URL'
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return 'must be an http:// or https:// URL'
  if (url.username !== '' || url.password !== '') {
    const shown = `${url.protocol}//${url.username}${url.password ? `:${MASK}` : ''}@${url.host}${url.pathname === '/' ? '' : url.pathname}`
    return `must not carry credentials (${shown}): give the worker its secret with PIPEWEAVE_SECRET_KEY, or put credentials in a proxy`
  }
  if (url.search !== '' || text.includes('?')) return 'must not have a query (?…): the task path /tasks/<id> is appended to it'
  if (url.hash !== '' || text.includes('#')) return 'must not have a fragment (#…): the task path /tasks/<id> is appended to it'
  return undefined
}

/** Validate a parsed manifest; throws one UsageError naming every bad field. */
export function validateManifest(value: unknown): ServiceManifest {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(['the manifest must be a JSON object'])
  const m = value as Record<string, unknown>
  const problems: string[] = []
  const problem = (field: string, what: string) => { problems.push(`${field} ${what}`) }
  for (const key of Object.keys(m)) {
    if (!MANIFEST_FIELDS.includes(key)) problem(`"${key}"`, `is not a manifest field (${MANIFEST_FIELDS.join(', ')})`)
  }
  if (m.breaker !== undefined && m.breaker !== null && typeof m.breaker !== 'boolean') problem('breaker', 'must be true or false')
  for (const [field, check] of [['id', identifier], ['version', text], ['baseUrl', text]] as const) {
    if (m[field] === undefined) problem(field, 'is required')
    else {
      const bad = check(m[field])
      if (bad) problem(field, bad)
      else if (field === 'baseUrl') {
        const urlBad = baseUrlProblem(m.baseUrl as string)
        if (urlBad) problem(field, urlBad)
      }
    }
  }
  if (!Array.isArray(m.tasks)) problem('tasks', 'must be an array')
  else {
    const seen = new Set<string>()
    m.tasks.forEach((task, index) => {
      const where = `tasks[${index}]`
      if (typeof task !== 'object' || task === null || Array.isArray(task)) {
        problem(where, 'must be an object')
        return
      }
      const t = task as Record<string, unknown>
      if (t.id === undefined || t.id === null) problem(`${where}.id`, 'is required')
      for (const [key, v] of Object.entries(t)) {
        // Own fields only: a key such as "hasOwnProperty" or "__proto__" is not a task field.
        if (!Object.hasOwn(TASK_FIELDS, key)) {
          problem(`${where}.${key}`, key === 'breaker'
            ? 'is not a task field: the breaker is the service\'s (one worker, one breaker); set "breaker" at the top of the manifest'
            : `is not a task field (${Object.keys(TASK_FIELDS).join(', ')})`)
          continue
        }
        if (v === null) continue
        if (key === 'rateLimit') {
          for (const p of rateLimitProblems(v)) problem(`${where}.rateLimit${p.field}`, p.problem)
          continue
        }
        const bad = TASK_FIELDS[key as keyof TaskManifest](v)
        if (bad) problem(`${where}.${key}`, bad)
      }
      if (typeof t.id === 'string') {
        if (seen.has(t.id)) problem(`${where}.id`, `repeats the task id "${t.id}"`)
        seen.add(t.id)
      }
    })
  }
  const taskIds = Array.isArray(m.tasks) ? m.tasks.map((t) => (t as { id?: unknown } | null)?.id).filter((id): id is string => typeof id === 'string') : []
  for (const [field, what] of manifestScheduleProblems(m.schedules, taskIds)) problem(field, what)
  if (problems.length > 0) throw invalid(problems)
  return m as unknown as ServiceManifest
}

export interface RegisteredTask {
  id: string
  codeVersion: number
  status: 'created' | 'updated' | 'code changed'
}

export interface RegisterResult {
  service: { id: string; version: string; baseUrl: string; created: boolean }
  tasks: RegisteredTask[]
  /** The manifest's schedules, and those of the service's earlier manifest it no longer names (removed). */
  schedules: RegisteredSchedule[]
}

/**
 * Upsert a service and its tasks in one transaction; a changed codeHash bumps code_version. The
 * manifest's rateLimit and breaker are stored; pauses and runtime limits (tasks:pause,
 * tasks:limit) are left as they are (SPEC §7). `breaker: false` on a service whose breaker holds
 * state closes it, recorded in control_events with `actor` (default `user@host pid`).
 */
export async function registerService(db: Database, manifest: unknown, options: { actor?: string } = {}): Promise<RegisterResult> {
  const m = validateManifest(manifest)
  const baseUrl = m.baseUrl.replace(/\/+$/, '')
  const breaker = m.breaker !== false
  return retryOnConflict(() => db.withTransaction(async (tx) => {
    const { rows: taken } = await tx.query<{ id: string; service_id: string }>(sql.tasksOwnedElsewhere, [m.id, m.tasks.map((t) => t.id)])
    if (taken.length > 0) {
      const owned = taken.map((t) => `task "${t.id}" belongs to service "${t.service_id}"`).join('; ')
      throw new UsageError('TASK_OWNED_ELSEWHERE', `invalid service manifest: ${owned}`, {
        hint: 'task ids are global: rename the task, or register it from its own service; nothing was written',
      })
    }
    const { rows: [serviceBefore] } = await tx.query<{ breaker_set: boolean }>(sql.lockService, [m.id])
    const { rows: [service] } = await tx.query<{ created: boolean }>(sql.upsertService, [m.id, m.version, baseUrl, breaker])
    if (serviceBefore?.breaker_set && !breaker) {
      await tx.query(events.insertControlEvent, ['breaker', `service:${m.id}`, 'closed', options.actor ?? defaultActor(), 'breaker: false in the manifest', null])
    }
    const { rows: existing } = await tx.query<{ id: string; code_hash: string | null; code_version: number }>(sql.lockTasks, [m.tasks.map((t) => t.id)])
    const previous = new Map(existing.map((r) => [r.id, r]))
    const tasks: RegisteredTask[] = []
    for (const t of m.tasks) {
      const { rows: [row] } = await tx.query<{ code_version: number; created: boolean }>(sql.upsertTask, [
        t.id, m.id, t.codeHash ?? null,
        t.timeout ?? TASK_DEFAULTS.timeout, t.retries ?? TASK_DEFAULTS.retries, t.retryBackoff ?? TASK_DEFAULTS.retryBackoff,
        t.retryDelayMs ?? TASK_DEFAULTS.retryDelayMs, t.maxRetryDelayMs ?? TASK_DEFAULTS.maxRetryDelayMs,
        t.heartbeatIntervalMs ?? null, t.concurrency ?? TASK_DEFAULTS.concurrency, t.priority ?? TASK_DEFAULTS.priority,
        t.idempotencyTTL ?? null, t.allowedNext ?? [], t.description ?? null, t.rateLimit?.limit ?? null, t.rateLimit?.periodMs ?? null,
      ])
      const before = previous.get(t.id)
      const codeChanged = row.created || before === undefined || before.code_version !== row.code_version
      if (codeChanged) await tx.query(sql.recordCodeVersion, [t.id, row.code_version, t.codeHash ?? null])
      tasks.push({ id: t.id, codeVersion: row.code_version, status: row.created ? 'created' : codeChanged ? 'code changed' : 'updated' })
    }
    const schedules = await replaceServiceSchedules(tx, m.id, m.schedules, { reason: `services:register ${m.id} ${m.version}` })
    return { service: { id: m.id, version: m.version, baseUrl, created: service.created }, tasks, schedules }
  }))
}

/** A registered task: its manifest fields, and its flow-control state (SPEC §7). */
export interface TaskInfo extends TaskManifest {
  codeVersion: number
  /** The manifest's rateLimit (null: none). */
  rateLimit: RateLimit | null
  /** The task's own pause (tasks:pause TASK); its service's is the service's `paused`. */
  paused: Pause | null
  /** The limit in force: the runtime one (tasks:limit) while set, else the manifest's. */
  effectiveRateLimit: RateLimit | null
  rateLimitSource: 'runtime' | 'manifest'
}

export interface ServiceInfo {
  id: string
  version: string
  baseUrl: string
  registeredAt: string
  updatedAt: string
  /** The service's pause (tasks:pause --service), which holds every task of it. */
  paused: Pause | null
  breaker: Breaker
  tasks: TaskInfo[]
}

export async function listServices(db: Queryable): Promise<ServiceInfo[]> {
  const { rows } = await db.query<RawBreakerColumns & {
    id: string; version: string; base_url: string; registered_at: Date; updated_at: Date
    paused: Parameters<typeof toPause>[0]; tasks: Array<Omit<TaskInfo, 'paused'> & { paused: Parameters<typeof toPause>[0] }>
  }>(sql.listServices)
  return rows.map((r) => ({
    id: r.id, version: r.version, baseUrl: r.base_url,
    registeredAt: r.registered_at.toISOString(), updatedAt: r.updated_at.toISOString(),
    paused: toPause(r.paused), breaker: toBreaker(r),
    tasks: r.tasks.map((t) => ({ ...t, paused: toPause(t.paused) })),
  }))
}

/**
 * A registration that changes a task's limit updates that task's live runs, and can meet a run
 * completing with a follow-up in a deadlock; PostgreSQL aborts one side. The registration is the
 * one to try again: it is all-or-nothing and idempotent.
 */
async function retryOnConflict<T>(attempt: () => Promise<T>): Promise<T> {
  for (let tries = 1; ; tries++) {
    try {
      return await attempt()
    } catch (error) {
      const code = (error as { code?: string }).code
      if (tries >= 5 || (code !== SQLSTATE.DEADLOCK_DETECTED && code !== SQLSTATE.SERIALIZATION_FAILURE)) throw error
      await new Promise((resolve) => setTimeout(resolve, 20 * tries))
    }
  }
}
