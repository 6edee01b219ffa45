/**
 * services:register / services:list (SPEC §5). The manifest is validated whole before any SQL
 * (like pg-boss's attorney.ts): a bad one exits 2 naming the field and writes nothing.
 */
import type { Database, Queryable } from '../db/database'
import { SQLSTATE } from '../db/errors'
import { UsageError } from '../errors'
import { MASK } from '../redact'
import * as sql from '../sql/services'
import { manifestScheduleProblems, replaceServiceSchedules, type RegisteredSchedule, type ScheduleManifest } from './schedules'

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
}

export interface ServiceManifest {
  id: string
  version: string
  baseUrl: string
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
}

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
    if (!['id', 'version', 'baseUrl', 'tasks', 'schedules'].includes(key)) problem(`"${key}"`, 'is not a manifest field (id, version, baseUrl, tasks, schedules)')
  }
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
          problem(`${where}.${key}`, `is not a task field (${Object.keys(TASK_FIELDS).join(', ')})`)
          continue
        }
        if (v === null) continue
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

/** Upsert a service and its tasks in one transaction; a changed codeHash bumps code_version. */
export async function registerService(db: Database, manifest: unknown): Promise<RegisterResult> {
  const m = validateManifest(manifest)
  const baseUrl = m.baseUrl.replace(/\/+$/, '')
  return retryOnConflict(() => db.withTransaction(async (tx) => {
    const { rows: taken } = await tx.query<{ id: string; service_id: string }>(sql.tasksOwnedElsewhere, [m.id, m.tasks.map((t) => t.id)])
    if (taken.length > 0) {
      const owned = taken.map((t) => `task "${t.id}" belongs to service "${t.service_id}"`).join('; ')
      throw new UsageError('TASK_OWNED_ELSEWHERE', `invalid service manifest: ${owned}`, {
        hint: 'task ids are global: rename the task, or register it from its own service; nothing was written',
      })
    }
    const { rows: [service] } = await tx.query<{ created: boolean }>(sql.upsertService, [m.id, m.version, baseUrl])
    const { rows: existing } = await tx.query<{ id: string; code_hash: string | null; code_version: number }>(sql.lockTasks, [m.tasks.map((t) => t.id)])
    const previous = new Map(existing.map((r) => [r.id, r]))
    const tasks: RegisteredTask[] = []
    for (const t of m.tasks) {
      const { rows: [row] } = await tx.query<{ code_version: number; created: boolean }>(sql.upsertTask, [
        t.id, m.id, t.codeHash ?? null,
        t.timeout ?? TASK_DEFAULTS.timeout, t.retries ?? TASK_DEFAULTS.retries, t.retryBackoff ?? TASK_DEFAULTS.retryBackoff,
        t.retryDelayMs ?? TASK_DEFAULTS.retryDelayMs, t.maxRetryDelayMs ?? TASK_DEFAULTS.maxRetryDelayMs,
        t.heartbeatIntervalMs ?? null, t.concurrency ?? TASK_DEFAULTS.concurrency, t.priority ?? TASK_DEFAULTS.priority,
        t.idempotencyTTL ?? null, t.allowedNext ?? [], t.description ?? null,
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

export interface ServiceInfo {
  id: string
  version: string
  baseUrl: string
  registeredAt: string
  updatedAt: string
  tasks: Array<TaskManifest & { codeVersion: number }>
}

export async function listServices(db: Queryable): Promise<ServiceInfo[]> {
  const { rows } = await db.query<{ id: string; version: string; base_url: string; registered_at: Date; updated_at: Date; tasks: ServiceInfo['tasks'] }>(sql.listServices)
  return rows.map((r) => ({
    id: r.id, version: r.version, baseUrl: r.base_url,
    registeredAt: r.registered_at.toISOString(), updatedAt: r.updated_at.toISOString(), tasks: r.tasks,
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
