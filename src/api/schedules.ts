/**
 * Schedules (SPEC §7): recurring runs of a task from a cron expression. setSchedule, listSchedules
 * and removeSchedule are what schedules:set|list|remove call; a service manifest's `schedules` are
 * owned by that service and replaced whenever it registers (replaceServiceSchedules, inside
 * registerService's transaction). Every change is a control_events row (kind 'schedule') in the
 * same transaction, and a notification that wakes every orchestrator's schedule loop at commit.
 *
 * Names are one namespace. A name set with schedules:set cannot be taken by a manifest (the
 * registration is refused, exit 2, naming it), and a service's schedule cannot be changed or
 * removed with schedules:set|remove (exit 4): each has one owner, so a register never undoes an
 * operator's schedule, nor an operator a deploy's.
 */
import type { Database, Queryable, TransactionClient } from '../db/database'
import { RefusedError, UsageError } from '../errors'
import { defaultActor } from '../maintenance/maintenance'
import * as sql from '../sql/schedules'
import { type CronSchedule, compileSchedule } from './cron'

export type Overlap = 'skip' | 'allow'
export const OVERLAPS: readonly Overlap[] = ['skip', 'allow']

/** The longest backfill: a year (a schedule's ticks missed for longer are history, not work). */
export const MAX_BACKFILL_MS = 366 * 86_400_000

const NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$/
const NAME_RULE = 'a schedule name is letters, digits, ".", "_", ":" or "-" (at most 200, starting with a letter or digit)'

export interface SetScheduleOptions {
  name: string
  /** Five fields, or six with seconds first; or a nickname (@daily, @hourly, …). */
  cron: string
  taskId: string
  /** The input of every run it enqueues (JSON). */
  input?: unknown
  /** IANA time zone (default UTC). */
  timezone?: string
  /** Ticks missed while no orchestrator ran are enqueued late within this: a duration (`10m`, `1h30m`) or milliseconds; default none. */
  backfill?: string | number
  /** `skip` (default): no run while the previous tick's run is pending or running. */
  overlap?: Overlap
  /** Recorded in control_events (default `user@host pid`). */
  actor?: string
  reason?: string
}

/** A schedule as the API, `schedules:list --json` and the dashboard show it. */
export interface ScheduleInfo {
  name: string
  taskId: string
  cron: string
  timezone: string
  input: unknown
  overlap: Overlap
  /** `10m`, or null for none. */
  backfill: string | null
  backfillMs: number
  /** The service whose manifest owns it; null for a schedule set with schedules:set. */
  service: string | null
  /** The last tick decided (enqueued, skipped or missed); at first, when the schedule was set. */
  lastTick: string | null
  /** The next tick the fleet will decide (in the past: overdue, no orchestrator has taken it yet). */
  nextTick: string | null
  /** The run the last enqueued tick created. */
  lastRunId: string | null
  createdAt: string
  updatedAt: string
}

export interface SetScheduleResult {
  schedule: ScheduleInfo
  created: boolean
  /** False when the schedule already had exactly this definition (nothing was written). */
  changed: boolean
}

/** A schedule as checked, before any SQL. */
export interface ScheduleDefinition {
  name: string
  cron: string
  timezone: string
  taskId: string
  input: unknown
  backfillMs: number
  overlap: Overlap
}

// ---------------------------------------------------------------------------------------------
// Checks (exit 2), before anything connects

/**
 * A duration: `90s`, `10m`, `1h30m`, `2d`, `500ms`, a number of milliseconds, or `0`/`none`.
 * Throws INVALID_DURATION naming `what`.
 */
export function parseDuration(value: string | number, what = '--backfill'): number {
  const bad = () => new UsageError('INVALID_DURATION', `${what} must be a duration such as 30s, 10m, 1h30m or 2d (or none), not "${value}"`, {
    hint: `at most ${formatDuration(MAX_BACKFILL_MS)}`,
  })
  let ms: number
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 0) throw bad()
    ms = value
  } else {
    const text = String(value).trim().toLowerCase()
    if (text === 'none' || text === '0') return 0
    if (/^\d+$/.test(text)) {
      ms = Number(text)
    } else {
      const parts = [...text.matchAll(/(\d+)(ms|s|m|h|d)/g)]
      if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) throw bad()
      const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }
      ms = parts.reduce((sum, p) => sum + Number(p[1]) * unit[p[2]], 0)
    }
  }
  if (!Number.isSafeInteger(ms) || ms > MAX_BACKFILL_MS) throw bad()
  return ms
}

/** `1h30m`, `10m`, `500ms`; null for 0. */
export function formatDuration(ms: number): string | null {
  if (!ms) return null
  let rest = ms
  let text = ''
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (rest >= size) {
      text += `${Math.floor(rest / size)}${unit}`
      rest %= size
    }
  }
  if (rest > 0) text += `${rest}ms`
  return text
}

export function validateScheduleName(name: unknown, what = 'schedule name'): string {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new UsageError('INVALID_SCHEDULE_NAME', `invalid ${what} ${JSON.stringify(name)}: ${NAME_RULE}`)
  }
  return name
}

/** Check a schedule's options (exit 2) and compile its expression: what setSchedule stores. */
export function validateScheduleOptions(options: SetScheduleOptions): ScheduleDefinition & { compiled: CronSchedule } {
  if (typeof options !== 'object' || options === null) throw new UsageError('INVALID_SCHEDULE', 'setSchedule takes { name, cron, taskId, … }')
  const name = validateScheduleName(options.name)
  if (typeof options.taskId !== 'string' || options.taskId === '') throw new UsageError('TASK_ID_REQUIRED', 'a task id is required (--task)')
  const compiled = compileSchedule(options.cron, options.timezone ?? 'UTC')
  const overlap = options.overlap ?? 'skip'
  if (!OVERLAPS.includes(overlap)) throw new UsageError('INVALID_OVERLAP', `overlap must be "skip" or "allow", not "${String(overlap)}"`)
  const backfillMs = options.backfill === undefined || options.backfill === null ? 0 : parseDuration(options.backfill)
  if (options.input !== undefined) {
    try {
      JSON.stringify(options.input)
    } catch (error) {
      throw new UsageError('INVALID_INPUT', `the schedule's input cannot be stored as JSON: ${(error as Error).message}`)
    }
  }
  return {
    name, cron: options.cron.trim(), timezone: compiled.timezone, taskId: options.taskId,
    input: options.input === undefined ? null : options.input, backfillMs, overlap, compiled,
  }
}

// ---------------------------------------------------------------------------------------------
// The API

/**
 * Create or change a schedule (schedules:set). Refused: an unknown task (exit 2), a name owned by a
 * service's manifest (exit 4). Setting the same definition again changes nothing.
 */
export async function setSchedule(db: Pick<Database, 'withTransaction'>, options: SetScheduleOptions): Promise<SetScheduleResult> {
  const definition = validateScheduleOptions(options)
  const actor = options.actor ?? defaultActor()
  return db.withTransaction(async (tx) => {
    const { rows: [task] } = await tx.query(sql.lockTask, [definition.taskId])
    if (!task) {
      throw new UsageError('UNKNOWN_TASK', `unknown task "${definition.taskId}"`, { hint: 'register it with `pipeweave services:register FILE` (services:list shows the known tasks)' })
    }
    const existing = await lockedSchedule(tx, definition, null)
    if (typeof existing === 'object' && existing.service_id !== null) throw ownedByService(definition.name, existing.service_id, 'changed')
    const status = await writeSchedule(tx, definition, existing, null, { actor, reason: options.reason ?? null })
    const [schedule] = await listSchedules(tx, { name: definition.name })
    return { schedule, created: status === 'created', changed: status !== 'unchanged' }
  })
}

/** Remove a schedule (schedules:remove): unknown name exit 2, a service's schedule exit 4. */
export async function removeSchedule(db: Pick<Database, 'withTransaction'>, name: string, options: { actor?: string; reason?: string } = {}): Promise<{ removed: ScheduleInfo }> {
  validateScheduleName(name)
  return db.withTransaction(async (tx) => {
    const { rows: [row] } = await tx.query<Row>(sql.lockSchedule, [name])
    if (!row) throw unknownSchedule(name)
    if (row.service_id !== null) throw ownedByService(name, row.service_id, 'removed')
    const [removed] = await listSchedules(tx, { name })
    await tx.query(sql.deleteSchedule, [name])
    await tx.query(sql.recordEvent, [name, 'removed', options.actor ?? defaultActor(), options.reason ?? null, JSON.stringify(detailOf(row))])
    await tx.query(sql.notifySchedules)
    return { removed }
  })
}

/**
 * A schedule's next tick as schedules:list shows it (the tick after its last, or after its
 * creation): in the past when no orchestrator has taken it yet. Null when its expression no longer
 * compiles.
 */
export function nextScheduleTick(schedule: { cron: string; timezone: string; lastTick: Date | null; createdAt: Date }): Date | null {
  try {
    const next = compiledOf(schedule.cron, schedule.timezone).nextTick((schedule.lastTick ?? schedule.createdAt).getTime())
    return next === null ? null : new Date(next)
  } catch {
    return null // an expression a runbook wrote that no longer compiles (the loop logs it)
  }
}

/** Every schedule (or the one named), with its last and next tick. */
export async function listSchedules(db: Queryable, options: { name?: string } = {}): Promise<ScheduleInfo[]> {
  const { rows } = await db.query<Row & { last_tick: Date | null; last_run_id: string | null; created_at: Date; updated_at: Date }>(sql.listSchedules, [options.name ?? null])
  return rows.map((r) => {
    const next = nextScheduleTick({ cron: r.cron, timezone: r.timezone, lastTick: r.last_tick, createdAt: r.created_at })
    return {
      name: r.name, taskId: r.task_id, cron: r.cron, timezone: r.timezone, input: r.input, overlap: r.overlap,
      backfill: formatDuration(r.backfill_ms), backfillMs: r.backfill_ms, service: r.service_id,
      lastTick: r.last_tick ? r.last_tick.toISOString() : null, nextTick: next === null ? null : next.toISOString(),
      lastRunId: r.last_run_id, createdAt: r.created_at.toISOString(), updatedAt: r.updated_at.toISOString(),
    }
  })
}

// ---------------------------------------------------------------------------------------------
// A service manifest's schedules (services:register)

/** A schedule in a service manifest: the CLI's flags as fields. */
export interface ScheduleManifest {
  name: string
  cron: string
  /** One of this manifest's tasks. */
  task: string
  input?: unknown
  timezone?: string
  /** A duration (`10m`); default none. */
  backfill?: string
  overlap?: Overlap
}

const SCHEDULE_FIELDS = ['name', 'cron', 'task', 'input', 'timezone', 'backfill', 'overlap']

/** The problems of a manifest's `schedules` (validateManifest): each as [field, what]. */
export function manifestScheduleProblems(value: unknown, taskIds: string[]): Array<[string, string]> {
  const problems: Array<[string, string]> = []
  if (value === undefined) return problems
  if (!Array.isArray(value)) return [['schedules', 'must be an array']]
  const seen = new Set<string>()
  value.forEach((item, index) => {
    const where = `schedules[${index}]`
    if (typeof item !== 'object' || item === null || Array.isArray(item)) {
      problems.push([where, 'must be an object'])
      return
    }
    const s = item as Record<string, unknown>
    for (const key of Object.keys(s)) {
      if (!SCHEDULE_FIELDS.includes(key)) problems.push([`${where}.${key}`, `is not a schedule field (${SCHEDULE_FIELDS.join(', ')})`])
    }
    for (const key of ['name', 'cron', 'task']) {
      if (s[key] === undefined || s[key] === null) problems.push([`${where}.${key}`, 'is required'])
    }
    const check = (field: string, fn: () => unknown) => {
      try {
        fn()
      } catch (error) {
        problems.push([`${where}.${field}`, (error as Error).message])
      }
    }
    if (s.name !== undefined && s.name !== null) {
      check('name', () => validateScheduleName(s.name))
      if (typeof s.name === 'string') {
        if (seen.has(s.name)) problems.push([`${where}.name`, `repeats the schedule name "${s.name}"`])
        seen.add(s.name)
      }
    }
    if (typeof s.task === 'string' && !taskIds.includes(s.task)) {
      problems.push([`${where}.task`, `"${s.task}" is not a task of this manifest (a service schedules its own tasks)`])
    } else if (s.task !== undefined && s.task !== null && typeof s.task !== 'string') {
      problems.push([`${where}.task`, 'must be a task id'])
    }
    if (s.cron !== undefined && s.cron !== null) {
      if (typeof s.cron !== 'string') problems.push([`${where}.cron`, 'must be a string'])
      else check('cron', () => compileSchedule(s.cron as string, 'UTC'))
    }
    if (s.timezone !== undefined && s.timezone !== null) {
      if (typeof s.timezone !== 'string') problems.push([`${where}.timezone`, 'must be a string'])
      else check('timezone', () => compileSchedule('0 0 * * *', s.timezone as string))
    }
    if (s.backfill !== undefined && s.backfill !== null) {
      if (typeof s.backfill !== 'string') problems.push([`${where}.backfill`, 'must be a duration such as "10m"'])
      else check('backfill', () => parseDuration(s.backfill as string, 'backfill'))
    }
    if (s.overlap !== undefined && s.overlap !== null && !OVERLAPS.includes(s.overlap as Overlap)) {
      problems.push([`${where}.overlap`, 'must be "skip" or "allow"'])
    }
  })
  return problems
}

export interface RegisteredSchedule {
  name: string
  status: 'created' | 'updated' | 'unchanged' | 'removed'
}

/**
 * Make service `serviceId`'s schedules exactly the manifest's (inside registerService's
 * transaction, after its tasks are written). A name held by a schedules:set schedule or another
 * service is refused (exit 2) and nothing is written.
 */
export async function replaceServiceSchedules(tx: TransactionClient, serviceId: string, manifest: ScheduleManifest[] | undefined, options: { actor?: string; reason?: string } = {}): Promise<RegisteredSchedule[]> {
  const wanted = (manifest ?? []).map((s) => validateScheduleOptions({
    name: s.name, cron: s.cron, taskId: s.task, input: s.input, timezone: s.timezone ?? undefined, backfill: s.backfill ?? undefined, overlap: s.overlap ?? undefined,
  }))
  const { rows: taken } = await tx.query<{ name: string; service_id: string | null }>(sql.schedulesOwnedElsewhere, [serviceId, wanted.map((s) => s.name)])
  if (taken.length > 0) {
    const owners = taken.map((t) => `schedule "${t.name}" ${t.service_id === null ? 'was set with schedules:set' : `belongs to service "${t.service_id}"`}`).join('; ')
    throw new UsageError('SCHEDULE_NAME_TAKEN', `invalid service manifest: ${owners}`, {
      hint: 'schedule names are global: rename it in the manifest, or remove the other one first (`pipeweave schedules:remove NAME`); nothing was written',
    })
  }
  const actor = options.actor ?? defaultActor()
  const reason = options.reason ?? `services:register ${serviceId}`
  const { rows: current } = await tx.query<Row>(sql.lockServiceSchedules, [serviceId])
  const byName = new Map(current.map((r) => [r.name, r]))
  const results: RegisteredSchedule[] = []
  let changed = false
  for (const old of current) {
    if (wanted.some((w) => w.name === old.name)) continue
    await tx.query(sql.deleteSchedule, [old.name])
    await tx.query(sql.recordEvent, [old.name, 'removed', actor, reason, JSON.stringify({ ...detailOf(old), service: serviceId })])
    results.push({ name: old.name, status: 'removed' })
    changed = true
  }
  for (const definition of wanted) {
    const existing = byName.get(definition.name) ?? await lockedSchedule(tx, definition, serviceId)
    if (typeof existing === 'object' && existing.service_id !== serviceId) {
      // Set with schedules:set (or by another service) after the check above: refused all the same.
      throw new UsageError('SCHEDULE_NAME_TAKEN', `invalid service manifest: schedule "${definition.name}" was set meanwhile by ${existing.service_id === null ? 'schedules:set' : `service "${existing.service_id}"`}`, {
        hint: 'schedule names are global: rename it in the manifest; nothing was written',
      })
    }
    const status = await writeSchedule(tx, definition, existing, serviceId, { actor, reason }, false)
    results.push({ name: definition.name, status })
    if (status !== 'unchanged') changed = true
  }
  if (changed) await tx.query(sql.notifySchedules)
  return results.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
}

// ---------------------------------------------------------------------------------------------

interface Row {
  name: string
  task_id: string
  cron: string
  timezone: string
  input: unknown
  overlap: Overlap
  backfill_ms: number
  service_id: string | null
}

/**
 * The schedule's row, locked; a missing one is inserted first (ON CONFLICT: another setter may
 * insert it meanwhile, and then its row is locked and compared like any other).
 */
async function lockedSchedule(tx: TransactionClient, definition: ScheduleDefinition, serviceId: string | null): Promise<Row | 'inserted' | undefined> {
  const { rows: [row] } = await tx.query<Row>(sql.lockSchedule, [definition.name])
  if (row) return row
  const { rows: inserted } = await tx.query(sql.insertSchedule, [
    definition.name, definition.taskId, definition.cron, definition.timezone, JSON.stringify(definition.input),
    definition.overlap, definition.backfillMs, serviceId,
  ])
  if (inserted.length > 0) return 'inserted'
  const { rows: [again] } = await tx.query<Row>(sql.lockSchedule, [definition.name])
  return again
}

async function writeSchedule(
  tx: TransactionClient, definition: ScheduleDefinition, existing: Row | 'inserted' | undefined, serviceId: string | null,
  event: { actor: string; reason: string | null }, notify = true,
): Promise<'created' | 'updated' | 'unchanged'> {
  const detail = { ...detailOf({ ...definition, task_id: definition.taskId, backfill_ms: definition.backfillMs }), ...(serviceId ? { service: serviceId } : {}) }
  if (existing === 'inserted' || existing === undefined) {
    if (existing === undefined) {
      // Deleted between the insert that found it and the lock: insert again.
      await tx.query(sql.insertSchedule, [definition.name, definition.taskId, definition.cron, definition.timezone, JSON.stringify(definition.input), definition.overlap, definition.backfillMs, serviceId])
    }
    await tx.query(sql.recordEvent, [definition.name, 'created', event.actor, event.reason, JSON.stringify(detail)])
    if (notify) await tx.query(sql.notifySchedules)
    return 'created'
  }
  const before = detailOf(existing)
  if (canonical(before) === canonical(detailOf({ ...definition, task_id: definition.taskId, backfill_ms: definition.backfillMs }))) return 'unchanged'
  await tx.query(sql.updateSchedule, [definition.name, definition.taskId, definition.cron, definition.timezone, JSON.stringify(definition.input), definition.overlap, definition.backfillMs])
  await tx.query(sql.recordEvent, [definition.name, 'updated', event.actor, event.reason, JSON.stringify({ ...detail, before })])
  if (notify) await tx.query(sql.notifySchedules)
  return 'updated'
}

/** A definition as recorded in control_events (and compared: same keys, same order). */
function detailOf(r: Pick<Row, 'task_id' | 'cron' | 'timezone' | 'input' | 'overlap' | 'backfill_ms'>): Record<string, unknown> {
  return {
    task: r.task_id, cron: r.cron, timezone: r.timezone, input: r.input ?? null, overlap: r.overlap,
    backfill: formatDuration(Number(r.backfill_ms)),
  }
}

/** JSON with object keys sorted: jsonb reorders keys, so an input read back compares equal to the one given. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (v !== null && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    : v))
}

const compiledCache = new Map<string, CronSchedule>()

/** A stored expression compiled (cached: the loop asks for it on every pass). */
export function compiledOf(cron: string, timezone: string): CronSchedule {
  const key = `${timezone}\n${cron}`
  let compiled = compiledCache.get(key)
  if (!compiled) {
    compiled = compileSchedule(cron, timezone)
    if (compiledCache.size > 1000) compiledCache.clear()
    compiledCache.set(key, compiled)
  }
  return compiled
}

function unknownSchedule(name: string): UsageError {
  return new UsageError('UNKNOWN_SCHEDULE', `no schedule named "${name}"`, { hint: 'schedules:list shows the schedules' })
}

function ownedByService(name: string, serviceId: string, verb: string): RefusedError {
  return new RefusedError('SCHEDULE_OWNED_BY_SERVICE', `schedule "${name}" belongs to service "${serviceId}" (its manifest's schedules) and cannot be ${verb} here`, {
    hint: `change the schedules in ${serviceId}'s manifest and register it again (services:register), or pick another name`,
  })
}
