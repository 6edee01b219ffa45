import type { Statement } from '../db/database'

/**
 * Advisory lock keys, in one place so that no two uses collide. (postgres-migrations' own key is in
 * sql/migrations.ts.) Values are arbitrary constants: "pipeweave" in ASCII, then a counter.
 */
/** The maintenance gate (SPEC §4): enqueue and claim take it shared, every mode change exclusive. */
export const MODE_GATE_LOCK = '7020304957001'
/** One db:cleanup at a time. */
export const CLEANUP_LOCK = '7020304957002'

export const tryCleanupLock: Statement = {
  name: 'try_cleanup_lock',
  text: `SELECT pg_try_advisory_lock(${CLEANUP_LOCK}) AS acquired`,
}

export const releaseCleanupLock: Statement = {
  name: 'release_cleanup_lock',
  text: `SELECT pg_advisory_unlock(${CLEANUP_LOCK})`,
}

/** Cleanup batches need not wait for their WAL flush: a batch lost in a crash is deleted again. */
export const asyncCommit: Statement = { name: 'async_commit', text: 'SET synchronous_commit = off' }
export const resetCommit: Statement = { name: 'reset_commit', text: 'RESET synchronous_commit' }
