/**
 * db:cleanup (SPEC §3): delete expired idempotency entries, old DLQ entries and (when asked) old
 * finished runs, in batches that each commit on their own, so no statement holds locks for long.
 * One cleanup at a time: a second one finds the lock taken and reports that it skipped.
 */
import type { Database, Queryable } from '../db/database'
import { UsageError } from '../errors'
import * as cache from '../sql/idempotency-cache'
import * as dlq from '../sql/dlq'
import * as locks from '../sql/locks'
import { transactionClock } from '../sql/server'
import * as runs from '../sql/task-runs'

export interface CleanupOptions {
  dlqRetentionDays?: number
  /** Finished runs older than this are deleted; left alone when not given. */
  runsRetentionDays?: number
  dryRun?: boolean
  batchSize?: number
  /** Called after each batch statement (progress, and the benchmark's statement timings). */
  onBatch?: (table: 'idempotencyCache' | 'dlq' | 'taskRuns', deleted: number, ms: number) => void
}

export interface CleanupResult {
  idempotencyCache: number
  dlq: number
  taskRuns: number
  dryRun: boolean
  /** Present (true) when another cleanup held the lock and this one did nothing. */
  skipped?: boolean
}

export const CLEANUP_DEFAULTS = { dlqRetentionDays: 30, batchSize: 5000 } as const

export async function runCleanup(db: Database, options: CleanupOptions = {}): Promise<CleanupResult> {
  const dlqDays = options.dlqRetentionDays ?? CLEANUP_DEFAULTS.dlqRetentionDays
  const batchSize = options.batchSize ?? CLEANUP_DEFAULTS.batchSize
  const dryRun = Boolean(options.dryRun)
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError('INVALID_BATCH_SIZE', 'the batch size must be a whole number of at least 1')
  for (const [name, days] of [['--dlq-retention-days', dlqDays], ['--runs-retention-days', options.runsRetentionDays]] as const) {
    if (days !== undefined && !(Number.isFinite(days) && days >= 0)) throw new UsageError('INVALID_RETENTION', `${name} must be a number of days, 0 or more`)
  }

  // A session lock on one pooled connection, held for the whole cleanup.
  return db.withClient(async (session) => {
    const { rows: [lock] } = await session.query<{ acquired: boolean }>(locks.tryCleanupLock)
    if (!lock.acquired) return { idempotencyCache: 0, dlq: 0, taskRuns: 0, dryRun, skipped: true }
    try {
      // Every batch commits on its own, and none needs to wait for its WAL to reach the disk:
      // a server crash can only undo the last batches (the next cleanup deletes those rows again),
      // never leave anything inconsistent. Without the wait, a million expired rows go about a
      // third faster (bench/cleanup.js). Reset below: the connection goes back to the pool.
      if (!dryRun) await session.query(locks.asyncCommit)
      const { rows: [clock] } = await session.query<{ now: Date }>(transactionClock)
      const now = clock.now.getTime()
      const day = 86_400_000
      const dlqCutoff = new Date(now - dlqDays * day)
      const runsCutoff = options.runsRetentionDays === undefined ? undefined : new Date(now - options.runsRetentionDays * day)

      if (dryRun) {
        const count = async (statement: typeof cache.countExpired, values: Date[]) => (await session.query<{ n: number }>(statement, values)).rows[0].n
        return {
          idempotencyCache: await count(cache.countExpired, [new Date(now)]),
          dlq: await count(dlq.countOlder, [dlqCutoff]),
          // Runs held only by DLQ entries that this cleanup deletes count as deleted, as they would be.
          taskRuns: runsCutoff ? await count(runs.countFinishedDeletable, [runsCutoff, dlqCutoff]) : 0,
          dryRun,
        }
      }
      // DLQ entries go before runs: a run is kept while an entry points to it.
      const idempotencyCache = await deleteInBatches(session, cache.deleteExpiredBatch, new Date(now), batchSize, (n, ms) => options.onBatch?.('idempotencyCache', n, ms))
      const dlqDeleted = await deleteInBatches(session, dlq.deleteOlderBatch, dlqCutoff, batchSize, (n, ms) => options.onBatch?.('dlq', n, ms))
      const taskRuns = runsCutoff ? await deleteFinishedRuns(session, runsCutoff, batchSize, (n, ms) => options.onBatch?.('taskRuns', n, ms)) : 0
      return { idempotencyCache, dlq: dlqDeleted, taskRuns, dryRun }
    } finally {
      if (!dryRun) await session.query(locks.resetCommit)
      await session.query(locks.releaseCleanupLock)
    }
  })
}

async function deleteInBatches(db: Queryable, statement: typeof cache.deleteExpiredBatch, cutoff: Date, batchSize: number, onBatch: (n: number, ms: number) => void): Promise<number> {
  let total = 0
  for (;;) {
    const started = performance.now()
    const { rowCount } = await db.query(statement, [cutoff, batchSize])
    const deleted = rowCount ?? 0
    onBatch(deleted, performance.now() - started)
    total += deleted
    if (deleted < batchSize) return total
  }
}

async function deleteFinishedRuns(db: Queryable, cutoff: Date, batchSize: number, onBatch: (n: number, ms: number) => void): Promise<number> {
  let total = 0
  let cursor: [string, string] = ['-infinity', '']
  for (;;) {
    const started = performance.now()
    const { rows: [batch] } = await db.query<{ deleted: number; scanned: number; last_completed_at: string | null; last_id: string | null }>(
      runs.deleteFinishedBatch, [cutoff, cursor[0], cursor[1], batchSize])
    onBatch(batch.deleted, performance.now() - started)
    total += batch.deleted
    if (batch.scanned < batchSize || !batch.last_completed_at || batch.last_id === null) return total
    cursor = [batch.last_completed_at, batch.last_id]
  }
}
