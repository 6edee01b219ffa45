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
