/** dlq:list and dlq:retry (SPEC §5). */
import type { Database, Queryable } from '../db/database'
import { RefusedError, UsageError } from '../errors'
import * as sql from '../sql/dlq'
import { enqueueTask } from './enqueue'
import { normalizeAttempts, type PreviousAttempt } from './runs'

export interface DlqEntry {
  id: string
  taskRunId: string
  taskId: string
  error: string | null
  errorCode: string | null
  attempts: number
  previousAttempts: PreviousAttempt[]
  failedAt: string
  retriedAt: string | null
  retryRunId: string | null
}

export interface ListDlqOptions {
  taskId?: string
  /** Only entries not yet retried. */
  pending?: boolean
  limit?: number
  /** The cursor: only entries older than this id (the last id of the page before). */
  before?: string
}

interface DlqRow {
  id: string; task_run_id: string; task_id: string; error: string | null; error_code: string | null; attempts: number
  previous_attempts: PreviousAttempt[]; failed_at: Date; retried_at: Date | null; retry_run_id: string | null
}

function toEntry(r: DlqRow): DlqEntry {
  return {
    id: r.id, taskRunId: r.task_run_id, taskId: r.task_id, error: r.error, errorCode: r.error_code, attempts: r.attempts,
    previousAttempts: normalizeAttempts(r.previous_attempts), failedAt: r.failed_at.toISOString(), retriedAt: r.retried_at ? r.retried_at.toISOString() : null,
    retryRunId: r.retry_run_id,
  }
}

/** The DLQ entries of one run (a run's page). */
export async function dlqEntriesOfRun(db: Queryable, runId: string): Promise<DlqEntry[]> {
  const { rows } = await db.query<DlqRow>(sql.ofRun, [runId])
  return rows.map(toEntry)
}

export async function listDlq(db: Queryable, options: ListDlqOptions = {}): Promise<DlqEntry[]> {
  const { rows } = await db.query<DlqRow>(sql.list, [options.taskId ?? null, Boolean(options.pending), options.limit ?? 50, options.before ?? null])
  return rows.map(toEntry)
}

export interface RetryResult {
  /** runId: the fresh run, or the run holding the entry's idempotency key (null: cached, its run cleaned up). */
  retried: Array<{ id: string; runId: string | null }>
  refused: Array<{ id: string; reason: string }>
}

/**
 * Retry DLQ entries: each gets a fresh run of its task with the failed run's input, enqueued
 * through the maintenance gate (refused unless running), and is stamped with retried_at and the
 * new run id in the same transaction. An entry already retried is refused, not retried twice.
 */
export async function retryDlq(db: Database, target: { ids: string[] } | { all: true }): Promise<RetryResult> {
  const ids = 'all' in target
    ? (await db.query<{ id: string }>(sql.notRetriedIds)).rows.map((r) => r.id)
    : target.ids
  if (!('all' in target)) {
    const { rows } = await db.query<{ id: string }>(sql.existingIds, [ids])
    const known = new Set(rows.map((r) => r.id))
    const unknown = ids.filter((id) => !known.has(id))
    if (unknown.length > 0) {
      throw new UsageError('UNKNOWN_DLQ_ENTRY', `no DLQ entry with id ${unknown.map((id) => `"${id}"`).join(', ')}; nothing was retried`, { hint: 'dlq:list shows the entries' })
    }
  }
  const result: RetryResult = { retried: [], refused: [] }
  for (const id of ids) {
    const outcome = await db.withTransaction(async (tx) => {
      const { rows: [entry] } = await tx.query<{
        id: string; task_id: string; retried_at: Date | null; retry_run_id: string | null; run_found: boolean; input: unknown
        input_path: string | null; priority: number; idempotency_key: string | null; pipeline_run_id: string | null
      }>(sql.lockForRetry, [id])
      if (!entry) return { unknown: true as const }
      if (entry.retried_at) return { refused: `already retried as run ${entry.retry_run_id ?? '(deleted)'}` }
      if (!entry.run_found) return { refused: 'its failed run was deleted, so its input is gone' }
      const { runId } = await enqueueTask(tx, {
        taskId: entry.task_id, input: entry.input ?? undefined, priority: entry.priority,
        idempotencyKey: entry.idempotency_key ?? undefined, inputPath: entry.input_path ?? undefined,
        pipelineRunId: entry.pipeline_run_id ?? undefined,
      })
      await tx.query(sql.markRetried, [id, runId])
      return { runId }
    })
    if ('unknown' in outcome) result.refused.push({ id, reason: 'deleted meanwhile' })
    else if ('refused' in outcome) result.refused.push({ id, reason: outcome.refused! })
    else result.retried.push({ id, runId: outcome.runId })
  }
  return result
}

export function assertRetriedAll(result: RetryResult): void {
  if (result.refused.length === 0) return
  // The others were retried: name the runs they became, or the refusal (the only output) would lose them.
  const done = result.retried.length > 0 ? `; ${result.retried.map((r) => `retried ${r.id} as run ${r.runId}`).join(', ')}` : ''
  throw new RefusedError('NOT_RETRIABLE', `not retried: ${result.refused.map((r) => `${r.id} (${r.reason})`).join(', ')}${done}`, {
    hint: 'dlq:list shows each entry with the run it was retried as',
  })
}
