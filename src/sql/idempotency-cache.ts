/** SQL on `idempotency_cache`. */
import type { Statement } from '../db/database'

/** db:cleanup: one batch of expired entries ($1 cutoff, $2 batch size); idempotency_cache_expires_at_idx. */
export const deleteExpiredBatch: Statement = {
  name: 'delete_expired_idempotency_batch',
  text: `DELETE FROM idempotency_cache
          WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM idempotency_cache WHERE expires_at < $1::timestamptz LIMIT $2::int))`,
}

export const countExpired: Statement = {
  name: 'count_expired_idempotency',
  text: `SELECT count(*)::int AS n FROM idempotency_cache WHERE expires_at < $1::timestamptz`,
}
