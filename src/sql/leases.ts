/**
 * SQL on `leases`: named, expiring holds (one db:cleanup at a time). Rows and transaction-scoped
 * settings only, never session state: each transaction may run on another server connection
 * behind a transaction pooler, which would keep a session lock or a SET for its next client.
 */
import type { Statement } from '../db/database'
import { statement } from './schema'

/** Take or renew lease $1 for holder $2 for $3 ms; a row only when $2 holds it now. */
export const acquireLease = statement('acquire_lease', (s) => `
  INSERT INTO ${s.q}.leases AS l (name, holder, expires_at)
  VALUES ($1::text, $2::text, clock_timestamp() + $3::int * interval '1 millisecond')
  ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
   WHERE l.holder = EXCLUDED.holder OR l.expires_at < clock_timestamp()
  RETURNING l.holder`)

export const releaseLease = statement('release_lease', (s) => `
  DELETE FROM ${s.q}.leases WHERE name = $1::text AND holder = $2::text`)

/** Batches of db:cleanup need not wait for their WAL flush: a batch lost in a crash is deleted again. */
export const asyncCommit: Statement = { name: 'async_commit', text: 'SET LOCAL synchronous_commit = off' }
