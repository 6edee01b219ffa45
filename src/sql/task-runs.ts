/** SQL on `task_runs`. Every statement names the index that serves it (migrations/). */
import type { Statement } from '../db/database'

export const RunStatus = Object.freeze({
  PENDING: 'pending',
  RUNNING: 'running',
  COMPLETED: 'completed',
  FAILED: 'failed',
  TIMEOUT: 'timeout',
  CANCELLED: 'cancelled',
  WAITING: 'waiting',
} as const)
export type RunStatus = (typeof RunStatus)[keyof typeof RunStatus]

export const FINISHED_STATUSES: readonly RunStatus[] = [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED]

/**
 * db:cleanup: one batch of finished runs that completed before $1, walked in (completed_at, id)
 * order from the cursor ($2, $3) on task_runs_finished_idx. Runs a DLQ entry still points to are
 * stepped over, not deleted, and the cursor moves past them so no batch reads them twice.
 */
export const deleteFinishedBatch: Statement = {
  name: 'delete_finished_runs_batch',
  text: `WITH batch AS (
           SELECT r.id, r.completed_at,
                  EXISTS (SELECT 1 FROM dlq d WHERE d.task_run_id = r.id) AS held
             FROM task_runs r
            WHERE r.status IN ('completed', 'failed', 'timeout', 'cancelled')
              AND r.completed_at < $1::timestamptz
              AND (r.completed_at, r.id) > ($2::timestamptz, $3::text)
            ORDER BY r.completed_at, r.id
            LIMIT $4::int),
         deleted AS (
           DELETE FROM task_runs t USING batch b
            WHERE t.id = b.id AND NOT b.held
              AND t.status IN ('completed', 'failed', 'timeout', 'cancelled')
           RETURNING 1)
         SELECT (SELECT count(*) FROM deleted)::int AS deleted,
                (SELECT count(*) FROM batch)::int AS scanned,
                -- as text: a Date would drop the microseconds and the cursor could stall
                last.completed_at::text AS last_completed_at, last.id AS last_id
           FROM (SELECT NULL) AS one
           LEFT JOIN LATERAL (SELECT completed_at, id FROM batch ORDER BY completed_at DESC, id DESC LIMIT 1) last ON true`,
}

/**
 * db:cleanup --dry-run: the finished runs a real cleanup would delete. The real one deletes the
 * DLQ entries older than the DLQ cutoff ($2) first, so only entries that survive it hold a run.
 */
export const countFinishedDeletable: Statement = {
  name: 'count_finished_deletable',
  text: `SELECT count(*)::int AS n
           FROM task_runs r
          WHERE r.status IN ('completed', 'failed', 'timeout', 'cancelled')
            AND r.completed_at < $1::timestamptz
            AND NOT EXISTS (SELECT 1 FROM dlq d WHERE d.task_run_id = r.id AND d.failed_at >= $2::timestamptz)`,
}
