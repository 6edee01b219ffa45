/** SQL on `dlq`, the dead-letter queue. */
import { statement } from './schema'

/** db:cleanup: one batch of entries that failed before $1; dlq_failed_at_idx. */
export const deleteOlderBatch = statement('delete_old_dlq_batch', (s) => `DELETE FROM ${s.q}.dlq
          WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM ${s.q}.dlq WHERE failed_at < $1::timestamptz LIMIT $2::int))`)

export const countOlder = statement('count_old_dlq', (s) => `SELECT count(*)::int AS n FROM ${s.q}.dlq WHERE failed_at < $1::timestamptz`)

const ENTRY_COLUMNS = `d.id, d.task_run_id, d.task_id, d.error, d.error_code, d.attempts, d.previous_attempts,
  d.failed_at, d.retried_at, d.retry_run_id`

/**
 * dlq:list, newest first ($1 task or null, $2 only not yet retried, $3 limit), paged by keyset: $4
 * the last id of the page before (ids are time-ordered: the order entries failed in). dlq_pkey
 * walked backwards from the cursor.
 */
export const list = statement('list_dlq', (s) => `SELECT ${ENTRY_COLUMNS} FROM ${s.q}.dlq d
          WHERE ($1::text IS NULL OR d.task_id = $1::text)
            AND (NOT $2::boolean OR d.retried_at IS NULL)
            AND ($4::text IS NULL OR d.id < $4::text)
          ORDER BY d.id DESC
          LIMIT $3::int`)

/** A run's DLQ entries (a run's page); dlq_task_run_id_idx. */
export const ofRun = statement('dlq_of_run', (s) => `SELECT ${ENTRY_COLUMNS} FROM ${s.q}.dlq d
          WHERE d.task_run_id = $1::text ORDER BY d.id`)

/**
 * One entry with the failed run's input, locked for the retry. The run is in task_run_history
 * (db:cleanup keeps it while the entry exists), or among the live rows until a sweep moves it
 * there; `run_found` is false only if SQL removed it. Primary keys of both.
 */
export const lockForRetry = statement('lock_dlq_entry', (s) => `SELECT d.id, d.task_id, d.retried_at, d.retry_run_id,
                (r.id IS NOT NULL) AS run_found, r.input, r.input_path, r.priority, r.idempotency_key, r.pipeline_run_id
           FROM ${s.q}.dlq d
           LEFT JOIN LATERAL (
             SELECT h.id, h.input, h.input_path, h.priority, h.idempotency_key, h.pipeline_run_id
               FROM ${s.q}.task_run_history h WHERE h.id = d.task_run_id
             UNION ALL
             SELECT l.id, l.input, l.input_path, l.priority, l.idempotency_key, l.pipeline_run_id
               FROM ${s.q}.task_runs l WHERE l.id = d.task_run_id
             LIMIT 1) AS r ON true
          WHERE d.id = $1
            FOR UPDATE OF d`)

export const notRetriedIds = statement('dlq_not_retried', (s) => `SELECT id FROM ${s.q}.dlq WHERE retried_at IS NULL ORDER BY failed_at`)

export const markRetried = statement('mark_dlq_retried', (s) => `UPDATE ${s.q}.dlq SET retried_at = clock_timestamp(), retry_run_id = $2 WHERE id = $1 RETURNING retried_at`)

/** pipeweave_dlq_entries: entries not yet retried. */
export const countNotRetried = statement('count_dlq_not_retried', (s) => `SELECT count(*)::int AS n FROM ${s.q}.dlq WHERE retried_at IS NULL`)

export const existingIds = statement('dlq_existing_ids', (s) => `SELECT id FROM ${s.q}.dlq WHERE id = ANY ($1::text[])`)
