/** Statements about the server and the session rather than a table. */
import type { Statement } from '../db/database'

export const ping: Statement = { name: 'ping', text: 'SELECT 1' }

/** The server's version and whether this connection uses TLS (db:ping). */
export const serverInfo: Statement = {
  name: 'server_info',
  text: `SELECT current_setting('server_version') AS version,
                COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false) AS tls`,
}

/** The server's clock now, not the statement's start (clock_timestamp). */
export const serverClock: Statement = { name: 'server_clock', text: 'SELECT clock_timestamp() AS now' }

/** The transaction's start on the server's clock (now()). */
export const transactionClock: Statement = { name: 'transaction_clock', text: 'SELECT now() AS now' }
