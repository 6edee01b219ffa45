/**
 * enqueueTask and enqueueTasks (SPEC §3 bulk enqueue, §5, §6): runs through the maintenance gate,
 * deduplicated by idempotency key. Every item is checked before any SQL; then the runs are
 * inserted in batches of one statement each (src/sql/task-runs.ts enqueueRuns), in one
 * transaction for a bulk call: all of them, or (a bad value the database refuses, a mode that is
 * not `running`, an unknown task) none.
 */
import type { Database, Queryable } from '../db/database'
import { MaintenanceModeError, UsageError } from '../errors'
import * as runs from '../sql/task-runs'

export const INT32_MAX = 2_147_483_647
/**
 * The longest idempotency key, in UTF-8 bytes. The key is indexed with its task id (at most 200
 * characters) and a btree entry holds at most 2704 bytes: a longer key fails inside PostgreSQL.
 */
export const MAX_IDEMPOTENCY_KEY_BYTES = 1024
/** The longest delay an enqueue accepts: a year. */
export const MAX_DELAY_MS = 366 * 86_400_000
/** Items per statement: bounds the statement's size and the time its locks are held. */
export const ENQUEUE_BATCH = 5000
/** The most items one bulk call takes (SPEC §3). */
export const MAX_BULK_ITEMS = 1_000_000

/** One run to enqueue (enqueueTasks; each line of `tasks:enqueue --jsonl --envelope`). */
export interface EnqueueItem {
  input?: unknown
  idempotencyKey?: string
  /** Lower runs first; the task's priority when not given. */
  priority?: number
  /** Not before this many milliseconds from now. */
  delayMs?: number
}

export interface EnqueueOptions extends EnqueueItem {
  taskId: string
  inputPath?: string
  pipelineRunId?: string
}

export interface EnqueueResult {
  /** Null only when the key was served from the idempotency cache and db:cleanup removed its run. */
  runId: string | null
  /** An existing run (or cached result) holds this idempotency key: nothing was created. */
  deduplicated: boolean
}

export interface BulkEnqueueResult {
  /** One per item, in order: the new run, or the run that already held the item's key. */
  runIds: Array<string | null>
  /** Items that created nothing (their key was held, by an earlier run or an earlier item). */
  deduplicated: number
}

/**
 * The argument checks of an enqueue (exit 2), before any SQL. The CLI calls it before it connects:
 * input is validated before the connection is made (SPEC §2).
 */
export function validateEnqueueOptions(options: EnqueueOptions): void {
  requireTaskId(options.taskId)
  validateEnqueueItem(options)
}

export async function enqueueTask(db: Queryable, options: EnqueueOptions): Promise<EnqueueResult> {
  validateEnqueueOptions(options)
  const [result] = await insertRuns(db, options.taskId, [options], options)
  return result
}

/**
 * Enqueue many runs of one task in one transaction. An item that fails validation rejects the
 * whole call (UsageError naming it: `item 73412`), before anything is written.
 */
export async function enqueueTasks(
  db: Pick<Database, 'withTransaction'>, taskId: string, items: EnqueueItem[], options: { describe?: (index: number) => string } = {},
): Promise<BulkEnqueueResult> {
  requireTaskId(taskId)
  if (!Array.isArray(items)) throw new UsageError('INVALID_ITEMS', 'enqueueTasks takes an array of items')
  if (items.length > MAX_BULK_ITEMS) {
    throw new UsageError('TOO_MANY_ITEMS', `at most ${MAX_BULK_ITEMS} runs can be enqueued in one call, not ${items.length}`, { hint: 'split the input' })
  }
  const describe = options.describe ?? ((i: number) => `item ${i + 1}`)
  items.forEach((item, i) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new UsageError('INVALID_ITEM', `${describe(i)}: must be an object { input, idempotencyKey?, priority?, delayMs? }`)
    validateEnqueueItem(item, `${describe(i)}: `)
  })
  const results = await db.withTransaction((tx) => insertRuns(tx, taskId, items, {}))
  return { runIds: results.map((r) => r.runId), deduplicated: results.filter((r) => r.deduplicated).length }
}

function requireTaskId(taskId: unknown): void {
  if (typeof taskId !== 'string' || taskId === '') throw new UsageError('TASK_ID_REQUIRED', 'a task id is required')
}

/**
 * The checks of one item's priority, delay and idempotency key (exit 2), each message prefixed by
 * `where` (`line 12 of runs.jsonl: `): `tasks:enqueue --jsonl` runs them line by line as it reads.
 */
export function validateEnqueueItem(item: EnqueueItem, where = ''): void {
  if (item.priority !== undefined && !(Number.isInteger(item.priority) && Math.abs(item.priority) <= INT32_MAX)) {
    throw new UsageError('INVALID_PRIORITY', `${where}priority must be a whole number from -${INT32_MAX} to ${INT32_MAX}, not ${item.priority}`)
  }
  if (item.delayMs !== undefined && !(Number.isInteger(item.delayMs) && item.delayMs >= 0 && item.delayMs <= MAX_DELAY_MS)) {
    throw new UsageError('INVALID_DELAY', `${where}delay must be a whole number of milliseconds from 0 to ${MAX_DELAY_MS} (a year), not ${item.delayMs}`)
  }
  if (item.idempotencyKey !== undefined && typeof item.idempotencyKey !== 'string') {
    throw new UsageError('INVALID_IDEMPOTENCY_KEY', `${where}idempotencyKey must be a string`)
  }
  if (item.idempotencyKey !== undefined && Buffer.byteLength(item.idempotencyKey, 'utf8') > MAX_IDEMPOTENCY_KEY_BYTES) {
    throw new UsageError('IDEMPOTENCY_KEY_TOO_LONG', `${where}the idempotency key is ${Buffer.byteLength(item.idempotencyKey, 'utf8')} bytes long; it may be at most ${MAX_IDEMPOTENCY_KEY_BYTES} bytes (UTF-8)`, {
      hint: 'use a shorter key, e.g. a hash of what identifies the work',
    })
  }
}

/** Input before state (SPEC §2): an unknown task (2), then a mode other than running (4). */
function refuseUnlessEnqueueable(taskId: string, row: { known: boolean; mode: string }): void {
  if (!row.known) {
    throw new UsageError('UNKNOWN_TASK', `unknown task "${taskId}"`, { hint: 'register it with `pipeweave services:register FILE` (services:list shows the known tasks)' })
  }
  if (row.mode !== 'running') throw new MaintenanceModeError(row.mode)
}

interface Row {
  mode: string
  known: boolean
  ord: number
  cached: boolean
  run_id: string | null
}

/**
 * Insert the items (on one connection: a transaction, or one autocommit statement per batch), and
 * find for each the run it became or the run that holds its key. A key held by an active run is
 * looked up after the insert, in a statement of its own (one snapshot cannot see a holder that
 * committed after it began); a holder that finished in between is gone from the live runs, so
 * the item is tried again and meets the cache, or is inserted.
 */
async function insertRuns(db: Queryable, taskId: string, items: EnqueueItem[], options: Pick<EnqueueOptions, 'inputPath' | 'pipelineRunId'>): Promise<EnqueueResult[]> {
  if (items.length === 0) {
    // Nothing to insert, but the same answers: an unknown task is exit 2, a mode other than running exit 4.
    const { rows: [check] } = await db.query<{ known: boolean; mode: string }>(runs.enqueueCheck, [taskId])
    refuseUnlessEnqueueable(taskId, check)
    return []
  }
  const results: EnqueueResult[] = new Array(items.length)
  let todo = items.map((_, i) => i)
  for (let round = 0; todo.length > 0; round++) {
    if (round === 10) throw new Error(`could not settle the idempotency keys of ${todo.length} run(s): their holders kept finishing`)
    const unsettled: number[] = []
    for (let start = 0; start < todo.length; start += ENQUEUE_BATCH) {
      const batch = todo.slice(start, start + ENQUEUE_BATCH)
      const payload = JSON.stringify(batch.map((i) => {
        const item = items[i]
        return { input: item.input === undefined ? null : item.input, priority: item.priority ?? null, key: item.idempotencyKey ?? null, delayMs: item.delayMs ?? 0 }
      }))
      const { rows } = await db.query<Row>(runs.enqueueRuns, [taskId, payload, options.inputPath ?? null, options.pipelineRunId ?? null])
      refuseUnlessEnqueueable(taskId, rows[0])
      for (const row of rows) {
        const index = batch[row.ord - 1]
        if (row.cached) results[index] = { runId: row.run_id, deduplicated: true }
        else if (row.run_id !== null) results[index] = { runId: row.run_id, deduplicated: false }
        else unsettled.push(index)
      }
    }
    if (unsettled.length === 0) break
    const keys = [...new Set(unsettled.map((i) => items[i].idempotencyKey!))]
    const { rows: holders } = await db.query<{ key: string; id: string }>(runs.resolveActiveKeys, [taskId, keys])
    const holderOf = new Map(holders.map((h) => [h.key, h.id]))
    todo = []
    for (const index of unsettled) {
      const holder = holderOf.get(items[index].idempotencyKey!)
      if (holder) results[index] = { runId: holder, deduplicated: true }
      else todo.push(index)
    }
  }
  return results
}
