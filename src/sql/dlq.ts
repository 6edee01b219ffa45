/** SQL on `dlq`, the dead-letter queue. */
import type { Statement } from '../db/database'

/** db:cleanup: one batch of entries that failed before $1; dlq_failed_at_idx. */
export const deleteOlderBatch: Statement = {
  name: 'delete_old_dlq_batch',
  text: `DELETE FROM dlq
          WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM dlq WHERE failed_at < $1::timestamptz LIMIT $2::int))`,
}

export const countOlder: Statement = {
  name: 'count_old_dlq',
  text: `SELECT count(*)::int AS n FROM dlq WHERE failed_at < $1::timestamptz`,
}

const ENTRY_COLUMNS = `d.id, d.task_run_id, d.task_id, d.error, d.error_code, d.attempts, d.previous_attempts,
  d.failed_at, d.retried_at, d.retry_run_id`

/** dlq:list, newest first ($1 task or null, $2 only not yet retried, $3 limit). */
export const list: Statement = {
  name: 'list_dlq',
  text: `SELECT ${ENTRY_COLUMNS} FROM dlq d
          WHERE ($1::text IS NULL OR d.task_id = $1::text)
            AND (NOT $2::boolean OR d.retried_at IS NULL)
          ORDER BY d.failed_at DESC
          LIMIT $3::int`,
}

/** One entry with the failed run's input, locked for the retry. */
export const lockForRetry: Statement = {
  name: 'lock_dlq_entry',
  text: `SELECT d.id, d.task_id, d.retried_at, d.retry_run_id, r.input, r.input_path, r.priority, r.idempotency_key, r.pipeline_run_id
           FROM dlq d JOIN task_runs r ON r.id = d.task_run_id
          WHERE d.id = $1
            FOR UPDATE OF d`,
}

export const notRetriedIds: Statement = {
  name: 'dlq_not_retried',
  text: `SELECT id FROM dlq WHERE retried_at IS NULL ORDER BY failed_at`,
}

export const markRetried: Statement = {
  name: 'mark_dlq_retried',
  text: `UPDATE dlq SET retried_at = clock_timestamp(), retry_run_id = $2 WHERE id = $1 RETURNING retried_at`,
}

/** pipeweave_dlq_entries: entries not yet retried. */
export const countNotRetried: Statement = {
  name: 'count_dlq_not_retried',
  text: `SELECT count(*)::int AS n FROM dlq WHERE retried_at IS NULL`,
}

export const existingIds: Statement = {
  name: 'dlq_existing_ids',
  text: `SELECT id FROM dlq WHERE id = ANY ($1::text[])`,
}
