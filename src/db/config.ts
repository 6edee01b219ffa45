/**
 * Connection resolution (SPEC §1) as a pure function: flags and environment in, one target out.
 * No I/O except reading certificate files named by the settings; fully covered by unit tests.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import { UsageError } from '../errors'

/** Every tunable of the connection layer, with its default, in one place. */
export const CONNECTION_DEFAULTS = {
  port: 5432,
  poolMax: 10,
  connectTimeoutMs: 10_000,
  idleTimeoutMs: 30_000,
  slowQueryMs: 1000,
} as const

export type SslMode = 'disable' | 'prefer' | 'require' | 'verify-ca' | 'verify-full' | 'no-verify'
const SSL_MODES: readonly SslMode[] = ['disable', 'prefer', 'require', 'verify-ca', 'verify-full', 'no-verify']

export interface SslSettings {
  mode: SslMode
  /** Where the mode came from, named in TLS error messages ("set DB_SSL=no-verify …"). */
  setting: string
  ca?: string
  cert?: string
  key?: string
}

/** Where a target came from; `connectionString` and `options` are createDatabase's seed shapes (SPEC §6). */
export type ConnectionSource = '--url' | 'flags' | 'connectionString' | 'options' | 'DATABASE_URL' | 'DB_*' | 'PG*'

export interface ExternalTarget {
  kind: 'external'
  source: ConnectionSource
  host: string
  port: number
  database: string
  user: string
  password?: string
  ssl: SslSettings
  /** Extra server settings carried by a URL's `options` parameter. */
  options?: string
}

export interface EmbeddedTarget {
  kind: 'embedded'
}

export type ConnectionTarget = ExternalTarget | EmbeddedTarget

/** TLS as the API's `ssl` option gives it: node-postgres's shape (PEM contents, not file names). */
export interface SslObject {
  rejectUnauthorized?: boolean
  ca?: string
  cert?: string
  key?: string
}

export interface ConnectionFlags {
  url?: string
  host?: string
  port?: number | string
  database?: string
  user?: string
  password?: string
  /** --ssl: TLS with verification. From the API also an sslmode name, false (no TLS) or an SslObject. */
  ssl?: boolean | string | SslObject
  /** 'api': these came from createDatabase's options, and messages name them so. */
  from?: 'cli' | 'api'
}

export interface PoolSettings {
  max: number
  connectTimeoutMs: number
  idleTimeoutMs: number
  statementTimeoutMs?: number
  slowQueryMs: number
}

type Env = Record<string, string | undefined>

const has = (value: string | undefined): value is string => value !== undefined && value !== ''

/** Resolve the connection target: the first source present wins as a whole (SPEC §1). */
export function resolveConnection(flags: ConnectionFlags, env: Env): ConnectionTarget {
  const api = flags.from === 'api'
  if (has(flags.url)) return fromUrl(flags.url, api ? 'connectionString' : '--url', flags, env)

  if ([flags.host, flags.database, flags.user, flags.password].some(has) || flags.port !== undefined) {
    return fromParts(api ? 'options' : 'flags', {
      host: flags.host,
      port: flags.port === undefined ? undefined : String(flags.port),
      database: flags.database,
      user: flags.user,
      password: flags.password,
    }, flags, env)
  }

  if (has(env.DATABASE_URL)) return fromUrl(env.DATABASE_URL, 'DATABASE_URL', flags, env)

  const dbPassword = has(env.DB_PASS) ? env.DB_PASS : env.DB_PASSWORD
  // Any one of a source's values makes it present (SPEC §1), DB_SSL and PGSSLMODE included: a
  // lone TLS setting means a server was meant, and must not fall back to the embedded database.
  if ([env.DB_HOST, env.DB_PORT, env.DB_NAME, env.DB_USER, dbPassword, env.DB_SSL].some(has)) {
    return fromParts('DB_*', {
      host: env.DB_HOST,
      port: env.DB_PORT,
      database: env.DB_NAME,
      user: env.DB_USER,
      password: dbPassword,
    }, flags, env)
  }

  if ([env.PGHOST, env.PGPORT, env.PGDATABASE, env.PGUSER, env.PGPASSWORD, env.PGSSLMODE].some(has)) {
    return fromParts('PG*', {}, flags, env)
  }

  return { kind: 'embedded' }
}

interface Parts {
  host?: string
  port?: string
  database?: string
  user?: string
  password?: string
}

/** Fill what a source leaves out from the libpq variables, then the defaults, as libpq does. */
function fromParts(
  source: ConnectionSource,
  parts: Parts,
  flags: ConnectionFlags,
  env: Env,
  urlSsl?: { mode?: string; rootcert?: string; cert?: string; key?: string },
  options?: string,
): ExternalTarget {
  const host = pick(parts.host, env.PGHOST) ?? 'localhost'
  const portText = pick(parts.port, env.PGPORT)
  const port = portText === undefined ? CONNECTION_DEFAULTS.port : parsePort(portText, source)
  const user = pick(parts.user, env.PGUSER) ?? osUser()
  const database = pick(parts.database, env.PGDATABASE) ?? user
  const password = pick(parts.password, env.PGPASSWORD)
  const ssl = resolveSsl(host, flags, env, urlSsl)
  return { kind: 'external', source, host, port, database, user, password, ssl, ...(options ? { options } : {}) }
}

function pick(...values: Array<string | undefined>): string | undefined {
  return values.find(has)
}

function osUser(): string {
  try {
    return os.userInfo().username
  } catch {
    return 'postgres'
  }
}

function parsePort(text: string, source: ConnectionSource): number {
  const port = Number(text)
  if (!Number.isInteger(port) || port < 1 || port > 65_535) {
    throw new UsageError('INVALID_PORT', `invalid port "${text}" (from ${source})`, {
      hint: 'give a number between 1 and 65535',
    })
  }
  return port
}

function fromUrl(text: string, source: ConnectionSource, flags: ConnectionFlags, env: Env): ExternalTarget {
  let url: URL
  try {
    if (!/^postgres(ql)?:\/\//i.test(text)) throw new Error('scheme')
    // A Unix-socket URL may leave the host empty (postgres://user@/db?host=/cloudsql/…).
    url = new URL(text.replace(/^(postgres(?:ql)?:\/\/[^/?#]*@)(?=[/?#]|$)/i, '$1localhost'))
  } catch {
    throw new UsageError('INVALID_URL', `${source} is not a valid connection string`, {
      hint: 'use postgres://user:password@host:5432/database (percent-encode special characters in the password)',
    })
  }
  const query = url.searchParams
  const decode = (value: string) => {
    try {
      return decodeURIComponent(value)
    } catch {
      throw new UsageError('INVALID_URL', `${source} is not a valid connection string (bad percent-encoding)`, {
        hint: 'percent-encode special characters: %40 for @, %2F for /, %25 for %',
      })
    }
  }
  const emptyHost = /^postgres(ql)?:\/\/([^/?#]*@)?(?=[/?#]|$)/i.test(text)
  const hostname = emptyHost ? '' : decode(url.hostname.replace(/^\[(.+)\]$/, '$1'))
  const parts: Parts = {
    host: query.get('host') ?? (hostname || undefined),
    port: query.get('port') ?? (url.port || undefined),
    database: url.pathname.length > 1 ? decode(url.pathname.slice(1)) : (query.get('dbname') ?? undefined),
    user: query.get('user') ?? (url.username ? decode(url.username) : undefined),
    password: query.get('password') ?? (url.password ? decode(url.password) : undefined),
  }
  const urlSsl = {
    mode: query.get('sslmode') ?? undefined,
    rootcert: query.get('sslrootcert') ?? undefined,
    cert: query.get('sslcert') ?? undefined,
    key: query.get('sslkey') ?? undefined,
  }
  return fromParts(source, parts, flags, env, urlSsl, query.get('options') ?? undefined)
}

export function isSocketHost(host: string): boolean {
  return host.startsWith('/')
}

export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host)
}

/**
 * TLS rules (SPEC §1): URL sslmode, then --ssl, then DB_SSL, then PGSSLMODE; with none of them a
 * socket or loopback host gets no TLS, a remote host under NODE_ENV=production verified TLS, and any
 * other remote host libpq's default `prefer`.
 */
function resolveSsl(
  host: string,
  flags: ConnectionFlags,
  env: Env,
  urlSsl?: { mode?: string; rootcert?: string; cert?: string; key?: string },
): SslSettings {
  const files = {
    ca: readCert(urlSsl?.rootcert ?? pick(env.DB_SSL_CA, env.PGSSLROOTCERT), 'CA'),
    cert: readCert(urlSsl?.cert ?? pick(env.DB_SSL_CERT, env.PGSSLCERT), 'client certificate'),
    key: readCert(urlSsl?.key ?? pick(env.DB_SSL_KEY, env.PGSSLKEY), 'client key'),
  }
  const withFiles = (mode: SslMode, setting: string): SslSettings => ({ mode, setting, ...dropUndefined(files) })

  if (isSocketHost(host)) return { mode: 'disable', setting: 'a Unix socket' }
  if (urlSsl?.mode) return withFiles(parseSslMode(urlSsl.mode, 'sslmode in the URL'), 'sslmode in the URL')
  if (flags.from === 'api' && flags.ssl !== undefined) return apiSsl(flags.ssl, files)
  if (flags.ssl) return withFiles('verify-full', '--ssl')
  if (has(env.DB_SSL)) return withFiles(parseDbSsl(env.DB_SSL), 'DB_SSL')
  if (has(env.PGSSLMODE)) return withFiles(parseSslMode(env.PGSSLMODE, 'PGSSLMODE'), 'PGSSLMODE')
  if (isLoopbackHost(host)) return withFiles('disable', 'the default for a local host')
  if (env.NODE_ENV === 'production') return withFiles('verify-full', 'NODE_ENV=production')
  return withFiles('prefer', 'the default (prefer)')
}

/** createDatabase's `ssl`: true (verified), false (none), an sslmode name, or node-postgres's object. */
function apiSsl(ssl: NonNullable<ConnectionFlags['ssl']>, files: Partial<Pick<SslSettings, 'ca' | 'cert' | 'key'>>): SslSettings {
  const setting = 'the ssl option'
  if (ssl === true) return { mode: 'verify-full', setting, ...dropUndefined(files) }
  if (ssl === false) return { mode: 'disable', setting }
  if (typeof ssl === 'string') return { mode: parseSslMode(ssl, setting), setting, ...dropUndefined(files) }
  if (typeof ssl === 'object' && ssl !== null && !Array.isArray(ssl)) {
    const unknown = Object.keys(ssl).filter((key) => !['rejectUnauthorized', 'ca', 'cert', 'key'].includes(key))
    const notText = (['ca', 'cert', 'key'] as const).filter((key) => ssl[key] !== undefined && typeof ssl[key] !== 'string')
    if (unknown.length === 0 && notText.length === 0) {
      return {
        mode: ssl.rejectUnauthorized === false ? 'no-verify' : 'verify-full',
        setting,
        ...dropUndefined({ ...files, ca: ssl.ca ?? files.ca, cert: ssl.cert ?? files.cert, key: ssl.key ?? files.key }),
      }
    }
  }
  throw new UsageError('INVALID_SSL', `the ssl option must be true, false, an sslmode (${SSL_MODES.join(', ')}) or { rejectUnauthorized, ca, cert, key } with PEM text`, {
    hint: 'e.g. ssl: { rejectUnauthorized: true, ca: fs.readFileSync(\'ca.pem\', \'utf8\') }',
  })
}

function parseSslMode(text: string, setting: string): SslMode {
  const mode = text.toLowerCase()
  if ((SSL_MODES as readonly string[]).includes(mode)) return mode as SslMode
  if (mode === 'allow') return 'prefer'
  throw new UsageError('INVALID_SSLMODE', `invalid ${setting} "${text}"`, {
    hint: `use one of ${SSL_MODES.join(', ')}`,
  })
}

function parseDbSsl(text: string): SslMode {
  const value = text.toLowerCase()
  if (['true', '1', 'yes', 'on'].includes(value)) return 'verify-full'
  if (['false', '0', 'no', 'off'].includes(value)) return 'disable'
  return parseSslMode(value, 'DB_SSL')
}

function readCert(file: string | undefined, what: string): string | undefined {
  if (!has(file)) return undefined
  try {
    return fs.readFileSync(file, 'utf8')
  } catch (error) {
    throw new UsageError('TLS_FILE_UNREADABLE', `cannot read the TLS ${what} file ${file}: ${(error as NodeJS.ErrnoException).code ?? error}`, {
      hint: 'check the path in DB_SSL_CA / DB_SSL_CERT / DB_SSL_KEY (or the PGSSL* variables)',
    })
  }
}

function dropUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>
}

/** Pool settings from the environment (SPEC §1); invalid numbers are usage errors. */
export function resolvePoolSettings(env: Env): PoolSettings {
  const statementTimeoutMs = optionalInt(env, 'DB_STATEMENT_TIMEOUT_MS')
  return {
    max: optionalInt(env, 'DB_POOL_MAX', 1) ?? CONNECTION_DEFAULTS.poolMax,
    connectTimeoutMs: optionalInt(env, 'DB_CONNECT_TIMEOUT_MS', 1) ?? CONNECTION_DEFAULTS.connectTimeoutMs,
    idleTimeoutMs: optionalInt(env, 'DB_POOL_IDLE_TIMEOUT_MS') ?? CONNECTION_DEFAULTS.idleTimeoutMs,
    slowQueryMs: optionalInt(env, 'DB_SLOW_QUERY_MS') ?? CONNECTION_DEFAULTS.slowQueryMs,
    ...(statementTimeoutMs === undefined ? {} : { statementTimeoutMs }),
  }
}

/** An integer setting from the environment, or undefined when unset; anything else is exit 2. */
export function optionalInt(env: Env, name: string, min = 0): number | undefined {
  const text = env[name]
  if (!has(text)) return undefined
  const value = Number(text)
  if (!Number.isInteger(value) || value < min) {
    throw new UsageError('INVALID_SETTING', `${name}="${text}" is not a whole number${min > 0 ? ` of at least ${min}` : ''}`, {
      hint: `fix or unset ${name}`,
    })
  }
  return value
}

/** `postgres://user:****@host:port/db`: how a target is shown anywhere. Never the password. */
export function describeTarget(target: ExternalTarget): string {
  const user = encodeURIComponent(target.user)
  const auth = target.password === undefined ? `${user}@` : `${user}:****@`
  if (isSocketHost(target.host)) {
    return `postgres://${auth}/${encodeURIComponent(target.database)}?host=${target.host}`
  }
  const host = target.host.includes(':') ? `[${target.host}]` : target.host
  return `postgres://${auth}${host}:${target.port}/${encodeURIComponent(target.database)}`
}
