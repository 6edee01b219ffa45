/**
 * Turning node-postgres and socket errors into one-line ConnectionErrors that say which failure it
 * is and what to check (SPEC §1). Named SQLSTATEs, in the manner of graphile-worker's migrate.ts.
 */
import { ConnectionError, PipeweaveError, firstLine } from '../errors'
import { describeTarget, isSocketHost, type ExternalTarget } from './config'

export const SQLSTATE = {
  INVALID_PASSWORD: '28P01',
  INVALID_AUTHORIZATION: '28000',
  INVALID_CATALOG_NAME: '3D000',
  CANNOT_CONNECT_NOW: '57P03',
  ADMIN_SHUTDOWN: '57P01',
  CRASH_SHUTDOWN: '57P02',
  TOO_MANY_CONNECTIONS: '53300',
  UNDEFINED_TABLE: '42P01',
  INSUFFICIENT_PRIVILEGE: '42501',
  UNDEFINED_FUNCTION: '42883',
  DUPLICATE_DATABASE: '42P04',
  UNIQUE_VIOLATION: '23505',
  FOREIGN_KEY_VIOLATION: '23503',
  QUERY_CANCELED: '57014',
  LOCK_NOT_AVAILABLE: '55P03',
  SERIALIZATION_FAILURE: '40001',
  DEADLOCK_DETECTED: '40P01',
} as const

const TLS_CERT_CODES = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'CERT_REJECTED',
])

const LOST_CONNECTION_MESSAGES = [
  'Connection terminated unexpectedly',
  'Connection terminated',
  'Client has encountered a connection error and is not queryable',
  'Client was closed and is not queryable',
  'terminating connection',
  'Query read timeout',
  // pg-pool: every connection busy or not connecting, and the wait for one ran out.
  'timeout exceeded when trying to connect',
]

interface ErrorLike {
  code?: string
  message?: string
  errno?: number
}

/** Is this the database going away (as opposed to a bad query)? Long-running loops retry these. */
export function isConnectionLoss(error: unknown): boolean {
  if (error instanceof ConnectionError) return true
  const e = error as ErrorLike
  if (!e || typeof e !== 'object') return false
  if (e.code && ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ENOENT',
    SQLSTATE.ADMIN_SHUTDOWN, SQLSTATE.CRASH_SHUTDOWN, SQLSTATE.CANNOT_CONNECT_NOW, SQLSTATE.TOO_MANY_CONNECTIONS].includes(e.code)) {
    return true
  }
  if (e.code?.startsWith('08')) return true // connection_exception class
  const message = e.message ?? ''
  return LOST_CONNECTION_MESSAGES.some((m) => message.includes(m)) || /timeout expired|connection timeout/i.test(message)
}

/** Map a failure to connect (or a lost connection) to a ConnectionError; anything else passes through. */
export function toConnectionError(error: unknown, target: ExternalTarget, connectTimeoutMs?: number): unknown {
  if (error instanceof PipeweaveError) return error
  const e = (error ?? {}) as ErrorLike
  const where = describeTarget(target)
  const hostPort = isSocketHost(target.host) ? `the socket in ${target.host}` : `${target.host}:${target.port}`
  const make = (code: string, message: string, hint: string) => new ConnectionError(code, message, { hint, cause: error })
  const message = e.message ?? String(error)

  switch (e.code) {
    case 'ECONNREFUSED':
      return make('CONNECTION_REFUSED', `connection refused by ${hostPort}`,
        'is PostgreSQL running there and listening on that port? check the host and port (DATABASE_URL, DB_HOST/DB_PORT, PGHOST/PGPORT)')
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return make('HOST_NOT_FOUND', `cannot resolve the database host "${target.host}"`, 'check the host name in your connection settings')
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return make('HOST_UNREACHABLE', `the database host ${hostPort} is unreachable`,
        'check the host, the network path and any firewall; DB_CONNECT_TIMEOUT_MS bounds the wait')
    case 'ENOENT':
      return make('SOCKET_NOT_FOUND', `no PostgreSQL socket in ${target.host}`, 'check the socket directory and that the server (or the Cloud SQL proxy) is running')
    case SQLSTATE.INVALID_PASSWORD:
      return make('AUTHENTICATION_FAILED', `password authentication failed for user "${target.user}" at ${where}`,
        'check the user and password (in the URL, DB_USER/DB_PASS or PGUSER/PGPASSWORD)')
    case SQLSTATE.INVALID_AUTHORIZATION:
      return make('AUTHENTICATION_FAILED', `the server refused user "${target.user}": ${firstLine(message)}`,
        'check the user, the password and the server\'s pg_hba.conf (TLS on or off may matter)')
    case SQLSTATE.INVALID_CATALOG_NAME:
      return make('DATABASE_MISSING', `database "${target.database}" does not exist at ${where}`, 'create it with `pipeweave db:init`')
    case SQLSTATE.CANNOT_CONNECT_NOW:
      return make('SERVER_UNAVAILABLE', `the database server at ${hostPort} is starting up or shutting down`, 'try again in a moment')
    case SQLSTATE.TOO_MANY_CONNECTIONS:
      return make('TOO_MANY_CONNECTIONS', `the database server at ${hostPort} has too many connections`, 'lower DB_POOL_MAX or raise max_connections')
    case SQLSTATE.ADMIN_SHUTDOWN:
    case SQLSTATE.CRASH_SHUTDOWN:
      return make('CONNECTION_LOST', `the database server at ${hostPort} closed the connection (${firstLine(message)})`, 'check that the server is up')
  }
  // An error the server sent about a statement (it has a severity) is not a connection problem,
  // whatever its text says: `unknown task ssl-renew` must not read as a TLS failure.
  if ((error as { severity?: string }).severity !== undefined && !isConnectionLoss(error)) return error
  if (/timeout expired|connection timeout/i.test(message)) {
    return make('CONNECT_TIMEOUT', `no answer from ${hostPort} within ${connectTimeoutMs ?? 'the connect timeout'} ms`,
      'check the host and port and the network path; DB_CONNECT_TIMEOUT_MS sets the limit')
  }
  if (e.code && TLS_CERT_CODES.has(e.code)) {
    return make('TLS_CERTIFICATE', `TLS certificate verification failed for ${hostPort}: ${firstLine(message)}`,
      `give the server's CA with DB_SSL_CA (or sslrootcert), or relax ${target.ssl.setting}: DB_SSL=no-verify, or sslmode=no-verify in the URL`)
  }
  if (/does not support SSL/i.test(message)) {
    return make('TLS_UNSUPPORTED', `the server at ${hostPort} does not accept TLS, and ${target.ssl.setting} requires it`,
      'enable TLS on the server, or allow plain connections with sslmode=disable (DB_SSL=false)')
  }
  if (/SSL|TLS|certificate|EPROTO/i.test(message) || e.code === 'EPROTO' || e.code?.startsWith('ERR_SSL') || e.code?.startsWith('ERR_TLS')) {
    return make('TLS_FAILED', `TLS negotiation with ${hostPort} failed: ${firstLine(message)}`,
      `check the server's TLS setup and ${target.ssl.setting}`)
  }
  if (/client password must be a string|password must be a string|no password/i.test(message)) {
    return make('PASSWORD_REQUIRED', `the server at ${hostPort} asks user "${target.user}" for a password and none was given`,
      'set it in the URL, DB_PASS or PGPASSWORD')
  }
  if (isConnectionLoss(error)) {
    return make('CONNECTION_LOST', `lost the connection to ${hostPort}: ${firstLine(message)}`, 'check that the server is up')
  }
  return error
}

