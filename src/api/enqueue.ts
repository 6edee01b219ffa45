/** enqueueTask (SPEC §5, §6): one run through the maintenance gate, deduplicated by idempotency key. */
import type { Queryable } from '../db/database'
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

export interface EnqueueOptions {
  taskId: string
  input?: unknown
  /** Lower runs first; the task's priority when not given. */
  priority?: number
  idempotencyKey?: string
  /** Not before this many milliseconds from now. */
  delayMs?: number
  inputPath?: string
  pipelineRunId?: string
}

export interface EnqueueResult {
  /** Null only when the key was served from the idempotency cache and db:cleanup removed its run. */
  runId: string | null
  /** An existing run (or cached result) holds this idempotency key: nothing was created. */
  deduplicated: boolean
}

/**
 * The argument checks of an enqueue (exit 2), before any SQL. The CLI calls it before it connects:
 * input is validated before the connection is made (SPEC §2).
 */
export function validateEnqueueOptions(options: EnqueueOptions): void {
  if (!options.taskId) throw new UsageError('TASK_ID_REQUIRED', 'a task id is required')
  if (options.priority !== undefined && !(Number.isInteger(options.priority) && Math.abs(options.priority) <= INT32_MAX)) {
    throw new UsageError('INVALID_PRIORITY', `priority must be a whole number from -${INT32_MAX} to ${INT32_MAX}, not ${options.priority}`)
  }
  if (options.delayMs !== undefined && !(Number.isInteger(options.delayMs) && options.delayMs >= 0 && options.delayMs <= MAX_DELAY_MS)) {
    throw new UsageError('INVALID_DELAY', `delay must be a whole number of milliseconds from 0 to ${MAX_DELAY_MS} (a year), not ${options.delayMs}`)
  }
  if (options.idempotencyKey !== undefined && Buffer.byteLength(options.idempotencyKey, 'utf8') > MAX_IDEMPOTENCY_KEY_BYTES) {
    throw new UsageError('IDEMPOTENCY_KEY_TOO_LONG', `the idempotency key is ${Buffer.byteLength(options.idempotencyKey, 'utf8')} bytes long; it may be at most ${MAX_IDEMPOTENCY_KEY_BYTES} bytes (UTF-8)`, {
      hint: 'use a shorter key, e.g. a hash of what identifies the work',
    })
  }
}

export async function enqueueTask(db: Queryable, options: EnqueueOptions): Promise<EnqueueResult> {
  validateEnqueueOptions(options)
  try {
    const { rows: [row] } = await db.query<{ run_id: string | null; deduplicated: boolean }>(runs.enqueue, [
      options.taskId,
      options.input === undefined ? null : JSON.stringify(options.input),
      options.priority ?? null,
      options.idempotencyKey ?? null,
      options.delayMs ?? 0,
      options.inputPath ?? null,
      options.pipelineRunId ?? null,
    ])
    return { runId: row.run_id, deduplicated: row.deduplicated }
  } catch (error) {
    throw mapEnqueueError(error, options.taskId)
  }
}

/** The SQLSTATEs raised by pipeweave_enqueue (migration 002). */
export function mapEnqueueError(error: unknown, taskId: string): unknown {
  const e = error as { code?: string; detail?: string }
  if (e?.code === 'PWMNT') return new MaintenanceModeError(e.detail ?? 'not running')
  if (e?.code === 'PWTSK') {
    return new UsageError('UNKNOWN_TASK', `unknown task "${taskId}"`, { hint: 'register it with `pipeweave services:register FILE` (services:list shows the known tasks)' })
  }
  return error
}
