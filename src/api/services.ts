/**
 * services:register / services:list (SPEC §5). The manifest is validated whole before any SQL
 * (like pg-boss's attorney.ts): a bad one exits 2 naming the field and writes nothing.
 */
import type { Database, Queryable } from '../db/database'
import { SQLSTATE } from '../db/errors'
import { UsageError } from '../errors'
import * as sql from '../sql/services'

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

function invalid(field: string, problem: string): UsageError {
  return new UsageError('INVALID_MANIFEST', `invalid service manifest: ${field} ${problem}`, {
    hint: 'fix the manifest (see the README for its fields); nothing was written',
  })
}

/** Validate a parsed manifest; throws UsageError naming the first bad field. */
export function validateManifest(value: unknown): ServiceManifest {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid('the manifest', 'must be a JSON object')
  const m = value as Record<string, unknown>
  for (const key of Object.keys(m)) {
    if (!['id', 'version', 'baseUrl', 'tasks'].includes(key)) throw invalid(`"${key}"`, 'is not a manifest field (id, version, baseUrl, tasks)')
  }
  for (const [field, check] of [['id', identifier], ['version', text], ['baseUrl', text]] as const) {
    if (m[field] === undefined) throw invalid(field, 'is required')
    const problem = check(m[field])
    if (problem) throw invalid(field, problem)
  }
  let url: URL
  try {
    url = new URL(m.baseUrl as string)
  } catch {
    throw invalid('baseUrl', 'must be an http:// or https:// URL')
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw invalid('baseUrl', 'must be an http:// or https:// URL')
  if (!Array.isArray(m.tasks)) throw invalid('tasks', 'must be an array')
  const seen = new Set<string>()
  m.tasks.forEach((task, index) => {
    const where = `tasks[${index}]`
    if (typeof task !== 'object' || task === null || Array.isArray(task)) throw invalid(where, 'must be an object')
    const t = task as Record<string, unknown>
    if (t.id === undefined || t.id === null) throw invalid(`${where}.id`, 'is required')
    for (const [key, v] of Object.entries(t)) {
      // Own properties only: a plain lookup finds Object.prototype's members for keys such as
      // "hasOwnProperty", "valueOf" or "__proto__" and would call them as checks.
      const check = Object.hasOwn(TASK_FIELDS, key) ? TASK_FIELDS[key as keyof TaskManifest] : undefined
      if (!check) throw invalid(`${where}.${key}`, `is not a task field (${Object.keys(TASK_FIELDS).join(', ')})`)
      if (v === null) continue
      const problem = check(v)
      if (problem) throw invalid(`${where}.${key}`, problem)
    }
    if (seen.has(t.id as string)) throw invalid(`${where}.id`, `repeats the task id "${t.id}"`)
    seen.add(t.id as string)
  })
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
}

/** Upsert a service and its tasks in one transaction; a changed codeHash bumps code_version. */
export async function registerService(db: Database, manifest: unknown): Promise<RegisterResult> {
  const m = validateManifest(manifest)
  const baseUrl = m.baseUrl.replace(/\/+$/, '')
  return retryOnConflict(() => db.withTransaction(async (tx) => {
    const { rows: taken } = await tx.query<{ id: string; service_id: string }>(sql.tasksOwnedElsewhere, [m.id, m.tasks.map((t) => t.id)])
    if (taken.length > 0) {
      throw new UsageError('TASK_OWNED_ELSEWHERE', `invalid service manifest: task "${taken[0].id}" belongs to service "${taken[0].service_id}"`, {
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
    return { service: { id: m.id, version: m.version, baseUrl, created: service.created }, tasks }
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
