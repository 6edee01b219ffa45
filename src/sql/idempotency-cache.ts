/** SQL on `idempotency_cache`. */
import { statement } from './schema'

/** db:cleanup: one batch of expired entries ($1 cutoff, $2 batch size); idempotency_cache_expires_at_idx. */
export const deleteExpiredBatch = statement('delete_expired_idempotency_batch', (s) => `DELETE FROM ${s.q}.idempotency_cache
          WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM ${s.q}.idempotency_cache WHERE expires_at < $1::timestamptz LIMIT $2::int))`)

export const countExpired = statement('count_expired_idempotency', (s) => `SELECT count(*)::int AS n FROM ${s.q}.idempotency_cache WHERE expires_at < $1::timestamptz`)
