/**
 * Turning node-postgres and socket errors into one-line ConnectionErrors that say which failure it
 * is and what to check (SPEC §1). Named SQLSTATEs, in the manner of graphile-worker's migrate.ts.
 */
import { ConnectionError, PipeweaveError, RefusedError, UsageError, WaitTimeoutError, firstLine } from '../errors'
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
  READ_ONLY_SQL_TRANSACTION: '25006',
  PROGRAM_LIMIT_EXCEEDED: '54000',
  OBJECT_IN_USE: '55006',
  DEPENDENT_OBJECTS_STILL_EXIST: '2BP01',
} as const

/**
 * Errors that come from the database's state rather than from pipeweave (SPEC §2): exit 4 with the
 * server's message and what to check. Class 42 (syntax error or access rule violation) is mostly
 * pipeweave's own SQL, a bug; only the codes listed here say that an object pipeweave did not
 * create is in the way (an application's `tasks` table without pipeweave's columns).
 */
const OBJECT_IN_THE_WAY = new Set([
  '42P07', // duplicate_table
  '42710', // duplicate_object
  '42723', // duplicate_function
  '42P06', // duplicate_schema
  '42809', // wrong_object_type
  '42703', // undefined_column
  '42804', // datatype_mismatch
])

/** Insufficient resources (53, too many connections excepted: a connection failure) and system errors (58). */
const SERVER_RESOURCES: Record<string, string> = {
  '53100': 'DISK_FULL',
  '53200': 'OUT_OF_MEMORY',
  '53400': 'CONFIGURATION_LIMIT_EXCEEDED',
  '58000': 'SERVER_SYSTEM_ERROR',
  '58030': 'SERVER_IO_ERROR',
}

/**
 * A foreseen server error as a typed error (SPEC §2), or undefined for one pipeweave did not
 * foresee (exit 1). Only errors the server sent about a statement (they carry a severity) count.
 */
export function serverStateError(error: unknown, schema = 'public'): PipeweaveError | undefined {
  const e = error as { code?: string; message?: string; severity?: string }
  if (!e || typeof e !== 'object' || typeof e.code !== 'string' || e.severity === undefined) return undefined
  const said = firstLine(e.message ?? e.code)
  const options = (hint: string) => ({ hint, cause: error })
  switch (e.code) {
    case SQLSTATE.QUERY_CANCELED:
      if (/statement timeout/i.test(said)) {
        return new WaitTimeoutError('STATEMENT_TIMEOUT', `a statement ran past statement_timeout and was cancelled (${said})`, options(
          'another session may hold a lock on the table (see pg_locks and pg_stat_activity); raise or unset DB_STATEMENT_TIMEOUT_MS (or the role\'s statement_timeout)'))
      }
      return new RefusedError('STATEMENT_CANCELLED', `the server cancelled the statement (${said})`, options(
        'an administrator or another process cancelled it (pg_cancel_backend); try again'))
    case SQLSTATE.LOCK_NOT_AVAILABLE:
      return new WaitTimeoutError('LOCK_TIMEOUT', `a lock held by another session was not granted in time (${said})`, options(
        'see pg_locks and pg_stat_activity for the session holding it; lock_timeout (a role or server setting) bounds the wait'))
    case SQLSTATE.INSUFFICIENT_PRIVILEGE:
      return new RefusedError('PERMISSION_DENIED', `the database refused: ${said}`, options(
        `the database user lacks a privilege on pipeweave's objects: GRANT it (GRANT USAGE ON SCHEMA ${schema} TO the user, and SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ${schema}), or connect as the user that ran db:init`))
    case SQLSTATE.READ_ONLY_SQL_TRANSACTION:
      return new RefusedError('READ_ONLY', `the database refused a write: ${said}`, options(
        'the server is a read-only standby (or default_transaction_read_only is on): point the connection at the primary'))
    case SQLSTATE.OBJECT_IN_USE:
      return new RefusedError('OBJECT_IN_USE', `the database refused: ${said}`, options(
        'another session is using the object (see pg_stat_activity); try again once it is done'))
    case SQLSTATE.DEPENDENT_OBJECTS_STILL_EXIST:
      return new RefusedError('OBJECT_IN_THE_WAY', `the database refused: ${said}`, options(
        'objects pipeweave did not create depend on pipeweave\'s (a view, a foreign key of another application): drop or move them first'))
    case SQLSTATE.PROGRAM_LIMIT_EXCEEDED:
      return new UsageError('VALUE_TOO_LARGE', `the database refused a value as too large: ${said}`, options('give a shorter value'))
  }
  if (OBJECT_IN_THE_WAY.has(e.code)) {
    return new RefusedError('OBJECT_IN_THE_WAY', `the database holds an object pipeweave did not expect: ${said}`, options(
      'an object pipeweave did not create is in the way (another application\'s table with one of pipeweave\'s names?): give pipeweave a database of its own, or move that object'))
  }
  const resource = SERVER_RESOURCES[e.code]
  if (resource) {
    return new RefusedError(resource, `the database server failed: ${said}`, options(
      'check the server: free disk space for its data directory, memory and its logs'))
  }
  return undefined
}

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
    case 'CHANNEL_BINDING_REQUIRED':
      return make('CHANNEL_BINDING_FAILED', `${firstLine(message)} (${hostPort}; channel_binding=require)`,
        'the server must authenticate with SCRAM-SHA-256 over TLS (password_encryption = scram-sha-256, a scram-sha-256 line in pg_hba.conf, TLS on); or drop channel_binding=require')
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
  // FATAL ends the session: at connect time it is the server refusing this connection (no CONNECT
  // privilege, a database that takes no connections): exit 3 like any connection refusal (SPEC §2).
  if ((error as { severity?: string }).severity === 'FATAL' && !isConnectionLoss(error)) {
    return make('CONNECTION_REFUSED_BY_SERVER', `the server at ${hostPort} refused the connection of user "${target.user}" to database "${target.database}": ${firstLine(message)}`,
      e.code === SQLSTATE.INSUFFICIENT_PRIVILEGE
        ? `grant it: GRANT CONNECT ON DATABASE ${target.database} TO ${target.user}; or check the user and database settings`
        : 'check the user and the database in your connection settings, and the server\'s settings for them')
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
      target.channelBinding === 'require'
        ? 'channel binding needs TLS: enable TLS on the server, or drop channel_binding=require'
        : 'enable TLS on the server, or allow plain connections with sslmode=disable (DB_SSL=false)')
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

