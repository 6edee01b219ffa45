/**
 * db:cleanup (SPEC §3): delete expired idempotency entries, old DLQ entries and (when asked) old
 * finished runs, in batches that each commit on their own, so no statement holds locks for long.
 * One cleanup at a time: a second one finds the lock taken and reports that it skipped.
 */
import type { Database, Queryable } from '../db/database'
import { RefusedError, UsageError } from '../errors'
import * as cache from '../sql/idempotency-cache'
import * as dlq from '../sql/dlq'
import * as leases from '../sql/leases'
import { transactionClock } from '../sql/server'
import * as runs from '../sql/task-runs'
import { defaultActor } from '../maintenance/maintenance'

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

  // One cleanup at a time: a lease row, renewed by every batch, not a session lock (a transaction
  // pooler gives each transaction another server connection, and would keep a session lock for
  // whoever got that connection next). A crashed cleanup's lease lapses after LEASE_MS.
  const holder = `${defaultActor()} ${process.hrtime.bigint()}`
  const renew = async (q: Queryable) => {
    const { rows } = await q.query(leases.acquireLease, [LEASE_NAME, holder, LEASE_MS])
    if (rows.length === 0) throw new LeaseLost()
  }
  try {
    await renew(db)
  } catch (error) {
    if (error instanceof LeaseLost) return { idempotencyCache: 0, dlq: 0, taskRuns: 0, dryRun, skipped: true }
    throw error
  }
  try {
    const { rows: [clock] } = await db.query<{ now: Date }>(transactionClock)
    const now = clock.now.getTime()
    const day = 86_400_000
    const dlqCutoff = new Date(now - dlqDays * day)
    const runsCutoff = options.runsRetentionDays === undefined ? undefined : new Date(now - options.runsRetentionDays * day)

    if (dryRun) {
      const count = async (statement: typeof cache.countExpired, values: Date[]) => (await db.query<{ n: number }>(statement, values)).rows[0].n
      return {
        idempotencyCache: await count(cache.countExpired, [new Date(now)]),
        dlq: await count(dlq.countOlder, [dlqCutoff]),
        // Runs held only by DLQ entries that this cleanup deletes count as deleted, as they would be.
        taskRuns: runsCutoff ? await count(runs.countFinishedDeletable, [runsCutoff, dlqCutoff]) : 0,
        dryRun,
      }
    }
    // Finished runs a runbook left among the live ones go to the history first.
    while ((await db.query<{ moved: number }>(runs.sweepFinished, [batchSize])).rows[0].moved === batchSize) { /* more */ }
    // Each batch is a transaction of its own: the lease renewed, and no wait for its WAL flush
    // (SET LOCAL: a server crash can only undo the last batches, which the next cleanup deletes
    // again; without the wait a million expired rows go about a third faster, bench/cleanup.js).
    const batch = <T>(work: (tx: Queryable) => Promise<T>) => db.withTransaction(async (tx) => {
      await renew(tx)
      await tx.query(leases.asyncCommit)
      return work(tx)
    })
    // DLQ entries go before runs: a run is kept while an entry points to it.
    const idempotencyCache = await deleteInBatches(batch, cache.deleteExpiredBatch, new Date(now), batchSize, (n, ms) => options.onBatch?.('idempotencyCache', n, ms))
    const dlqDeleted = await deleteInBatches(batch, dlq.deleteOlderBatch, dlqCutoff, batchSize, (n, ms) => options.onBatch?.('dlq', n, ms))
    const taskRuns = runsCutoff ? await deleteFinishedRuns(batch, runsCutoff, batchSize, (n, ms) => options.onBatch?.('taskRuns', n, ms)) : 0
    return { idempotencyCache, dlq: dlqDeleted, taskRuns, dryRun }
  } catch (error) {
    if (error instanceof LeaseLost) {
      throw new RefusedError('CLEANUP_LEASE_LOST', 'another db:cleanup took over while this one was stalled (its lease lapsed)', {
        hint: 'nothing is lost: run db:cleanup again once the other has finished',
      })
    }
    throw error
  } finally {
    await db.query(leases.releaseLease, [LEASE_NAME, holder]).catch(() => undefined)
  }
}

const LEASE_NAME = 'db:cleanup'
/** How long a cleanup's hold lasts without a batch renewing it. */
const LEASE_MS = 60_000

class LeaseLost extends Error {}

type Batch = <T>(work: (tx: Queryable) => Promise<T>) => Promise<T>

async function deleteInBatches(batch: Batch, statement: typeof cache.deleteExpiredBatch, cutoff: Date, batchSize: number, onBatch: (n: number, ms: number) => void): Promise<number> {
  let total = 0
  for (;;) {
    const started = performance.now()
    const { rowCount } = await batch((tx) => tx.query(statement, [cutoff, batchSize]))
    const deleted = rowCount ?? 0
    onBatch(deleted, performance.now() - started)
    total += deleted
    if (deleted < batchSize) return total
  }
}

async function deleteFinishedRuns(batch: Batch, cutoff: Date, batchSize: number, onBatch: (n: number, ms: number) => void): Promise<number> {
  let total = 0
  let cursor = ''
  for (;;) {
    const started = performance.now()
    const { rows: [done] } = await batch((tx) => tx.query<{ deleted: number; scanned: number; last_id: string | null }>(
      runs.deleteFinishedBatch, [cutoff, cursor, batchSize]))
    onBatch(done.deleted, performance.now() - started)
    total += done.deleted
    if (done.scanned < batchSize || done.last_id === null) return total
    cursor = done.last_id
  }
}
