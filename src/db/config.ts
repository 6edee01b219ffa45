/**
 * Connection resolution (SPEC §1) as a pure function: flags and environment in, one target out.
 * No I/O except reading the files the settings name (certificates, the libpq service file); fully
 * covered by unit tests.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
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
  /** Extra server settings: `options` in a URL or conninfo, or PGOPTIONS. */
  options?: string
  /** application_name asked for by the connection string or PGAPPNAME (external servers only). */
  applicationName?: string
  /** connect_timeout of the connection string or PGCONNECT_TIMEOUT, in ms (0: none). */
  connectTimeoutMs?: number
  /**
   * libpq's channel_binding: `prefer` uses SCRAM-SHA-256-PLUS when the server offers it over TLS;
   * `require` also refuses any authentication without it. Unset: node-postgres's default (off).
   */
  channelBinding?: ChannelBinding
}

export type ChannelBinding = 'disable' | 'prefer' | 'require'
const CHANNEL_BINDINGS: readonly ChannelBinding[] = ['disable', 'prefer', 'require']

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
  /** Idle connections the pool keeps instead of closing them (DB_POOL_MIN). */
  min: number
  connectTimeoutMs: number
  idleTimeoutMs: number
  statementTimeoutMs?: number
  slowQueryMs: number
}

type Env = Record<string, string | undefined>

const has = (value: string | undefined): value is string => value !== undefined && value !== ''

/** Resolve the connection target: the first source present wins as a whole (SPEC §1). */
export function resolveConnection(flags: ConnectionFlags, env: Env): ConnectionTarget {
  checkLibpqVariables(env)
  const api = flags.from === 'api'
  if (has(flags.url)) return fromConnectionString(flags.url, api ? 'connectionString' : '--url', flags, env)

  if ([flags.host, flags.database, flags.user, flags.password].some(has) || flags.port !== undefined) {
    return fromParts(api ? 'options' : 'flags', {
      host: flags.host,
      port: flags.port === undefined ? undefined : String(flags.port),
      dbname: flags.database,
      user: flags.user,
      password: flags.password,
    }, flags, env)
  }

  if (has(env.DATABASE_URL)) return fromConnectionString(env.DATABASE_URL, 'DATABASE_URL', flags, env)

  const dbPassword = has(env.DB_PASS) ? env.DB_PASS : env.DB_PASSWORD
  // Any one of a source's values makes it present (SPEC §1), DB_SSL and PGSSLMODE included: a
  // lone TLS setting means a server was meant, and must not fall back to the embedded database.
  // Settings that name no target (PGAPPNAME, PGCONNECT_TIMEOUT, DB_POOL_*) make no source.
  if ([env.DB_HOST, env.DB_PORT, env.DB_NAME, env.DB_USER, dbPassword, env.DB_SSL, env.DB_SSL_MODE].some(has)) {
    return fromParts('DB_*', {
      host: env.DB_HOST,
      port: env.DB_PORT,
      dbname: env.DB_NAME,
      user: env.DB_USER,
      password: dbPassword,
    }, flags, env)
  }

  // A service names a server as surely as PGHOST does: it is a source at the libpq level.
  if ([env.PGHOST, env.PGPORT, env.PGDATABASE, env.PGUSER, env.PGPASSWORD, env.PGSSLMODE, env.PGSERVICE].some(has)) {
    return fromParts('PG*', {}, flags, env)
  }

  return { kind: 'embedded' }
}

// ---------------------------------------------------------------------------------------------
// libpq's connection options (SPEC §1, libpq fidelity): what a URL's query, a conninfo string
// (and a service file) may say, and what pipeweave does with each. Nothing is silently dropped
// that would change the target or its security; a name libpq does not know is a typo (exit 2).

/** A connection string's options by libpq keyword (host, port, dbname, user, password, sslmode, …). */
export type Conninfo = Partial<Record<string, string>>

type OptionUse =
  | 'use' // pipeweave applies it
  | 'ignore' // changes nothing pipeweave relies on (keepalives: pipeweave keeps its own)
  | { when: (value: string) => boolean; why: string } // accepted only with these values
  | 'unsupported' // would change the target or its security, and pipeweave does not implement it

const CONNECTION_OPTIONS: Record<string, OptionUse> = {
  host: 'use', port: 'use', dbname: 'use', user: 'use', password: 'use', options: 'use',
  application_name: 'use', connect_timeout: 'use', service: 'use', channel_binding: 'use',
  sslmode: 'use', sslrootcert: 'use', sslcert: 'use', sslkey: 'use',
  fallback_application_name: 'ignore', keepalives: 'ignore', keepalives_idle: 'ignore', keepalives_interval: 'ignore',
  keepalives_count: 'ignore', tcp_user_timeout: 'ignore', sslcompression: 'ignore', sslsni: 'ignore',
  krbsrvname: 'ignore', gsslib: 'ignore', gssdelegation: 'ignore', load_balance_hosts: 'ignore',
  // node-postgres's own URL parameter, meant the same way there (pipeweave has libpq's meanings already).
  uselibpqcompat: 'ignore',
  client_encoding: { when: (v) => /^(utf-?8|unicode|auto)$/i.test(v), why: 'pipeweave always talks UTF8' },
  target_session_attrs: { when: (v) => v === 'any', why: 'pipeweave connects to one host and does not check its role' },
  gssencmode: { when: (v) => v !== 'require', why: 'pipeweave does not do GSSAPI encryption' },
  hostaddr: 'unsupported', require_auth: 'unsupported', sslpassword: 'unsupported', sslcrl: 'unsupported',
  sslcrldir: 'unsupported', sslcertmode: 'unsupported', requirepeer: 'unsupported', replication: 'unsupported',
  passfile: 'unsupported', sslnegotiation: 'unsupported', ssl_min_protocol_version: 'unsupported',
  ssl_max_protocol_version: 'unsupported', min_protocol_version: 'unsupported', max_protocol_version: 'unsupported',
  sslkeylogfile: 'unsupported', scram_client_key: 'unsupported', scram_server_key: 'unsupported',
  oauth_issuer: 'unsupported', oauth_client_id: 'unsupported', oauth_client_secret: 'unsupported', oauth_scope: 'unsupported',
}

/** Refuse what pipeweave cannot honour, naming the option (never its value: it may be a password). */
function checkOptions(conninfo: Conninfo, where: string): void {
  for (const [name, value] of Object.entries(conninfo)) {
    const use = Object.hasOwn(CONNECTION_OPTIONS, name) ? CONNECTION_OPTIONS[name] : undefined
    if (use === undefined) {
      throw new UsageError('UNKNOWN_CONNECTION_OPTION', `unknown connection option "${name}" in ${where}`, {
        hint: 'check its spelling against libpq\'s connection parameters (sslmode, connect_timeout, application_name, …)',
      })
    }
    if (use === 'unsupported' || (typeof use === 'object' && !use.when(value ?? ''))) {
      throw new UsageError('UNSUPPORTED_CONNECTION_OPTION', `the connection option "${name}" in ${where} is not supported by pipeweave${typeof use === 'object' ? ` with that value (${use.why})` : ''}`, {
        hint: 'remove it; pipeweave would not honour it',
      })
    }
  }
}

/**
 * libpq variables for options pipeweave does not implement: refused like the options themselves
 * (a psql user's PGHOSTADDR or PGTARGETSESSIONATTRS=read-write must not be dropped), whatever
 * the source, since libpq applies them to any connection that does not say otherwise.
 * (PGPASSFILE is left alone: pipeweave does not read a password file, and says so when the
 * server asks for a password it was not given.)
 */
const LIBPQ_VARIABLES: Record<string, string> = {
  PGHOSTADDR: 'hostaddr', PGREQUIREAUTH: 'require_auth', PGTARGETSESSIONATTRS: 'target_session_attrs',
  PGSSLCRL: 'sslcrl', PGSSLCRLDIR: 'sslcrldir', PGSSLCERTMODE: 'sslcertmode', PGREQUIREPEER: 'requirepeer',
  PGGSSENCMODE: 'gssencmode', PGSSLMINPROTOCOLVERSION: 'ssl_min_protocol_version',
  PGSSLMAXPROTOCOLVERSION: 'ssl_max_protocol_version', PGSSLNEGOTIATION: 'sslnegotiation', PGCLIENTENCODING: 'client_encoding',
}

function checkLibpqVariables(env: Env): void {
  for (const [variable, option] of Object.entries(LIBPQ_VARIABLES)) {
    const value = env[variable]
    if (has(value)) checkOptions({ [option]: value }, `the environment (${variable})`)
  }
}

function invalidConnectionString(source: ConnectionSource, why?: string): UsageError {
  return new UsageError('INVALID_URL', `${source} is not a valid connection string${why ? ` (${why})` : ''}`, {
    hint: 'use postgres://user:password@host:5432/database (percent-encode special characters in the password), or host=… port=… dbname=… user=…',
  })
}

/** A URL (postgres://…) or a libpq key=value conninfo string, as `psql` takes either. */
function fromConnectionString(text: string, source: ConnectionSource, flags: ConnectionFlags, env: Env): ExternalTarget {
  const conninfo = /^postgres(ql)?:\/\//i.test(text) ? parseUrl(text, source) : parseConninfo(text, source)
  checkOptions(conninfo, source)
  return fromParts(source, conninfo, flags, env)
}

/**
 * libpq's `keyword = value …`: values are bare words or single-quoted, and a backslash escapes the
 * next character in either. Errors name the problem, never a value.
 */
export function parseConninfo(text: string, source: ConnectionSource): Conninfo {
  const result: Conninfo = {}
  let i = 0
  const space = (c: string | undefined) => c !== undefined && /\s/.test(c)
  while (i < text.length) {
    while (space(text[i])) i++
    if (i >= text.length) break
    let name = ''
    while (i < text.length && text[i] !== '=' && !space(text[i])) name += text[i++]
    if (!/^[a-z_]+$/.test(name)) throw invalidConnectionString(source)
    while (space(text[i])) i++
    if (text[i] !== '=') throw invalidConnectionString(source, `missing "=" after "${name}"`)
    i++
    while (space(text[i])) i++
    let value = ''
    if (text[i] === "'") {
      i++
      for (;;) {
        if (i >= text.length) throw invalidConnectionString(source, `unterminated quoted value of "${name}"`)
        const c = text[i++]
        if (c === "'") break
        if (c === '\\' && i < text.length) value += text[i++]
        else value += c
      }
    } else {
      while (i < text.length && !space(text[i])) {
        const c = text[i++]
        if (c === '\\' && i < text.length) value += text[i++]
        else value += c
      }
    }
    result[name] = value
  }
  return result
}

function parseUrl(text: string, source: ConnectionSource): Conninfo {
  let url: URL
  try {
    // A Unix-socket URL may leave the host empty (postgres://user@/db?host=/cloudsql/…).
    url = new URL(text.replace(/^(postgres(?:ql)?:\/\/[^/?#]*@)(?=[/?#]|$)/i, '$1localhost'))
  } catch {
    throw invalidConnectionString(source)
  }
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
  const conninfo: Conninfo = {}
  if (hostname) conninfo.host = hostname
  if (url.port) conninfo.port = url.port
  if (url.pathname.length > 1) conninfo.dbname = decode(url.pathname.slice(1))
  if (url.username) conninfo.user = decode(url.username)
  if (url.password) conninfo.password = decode(url.password)
  // Query parameters are conninfo options too, and win over the URL's parts, as in libpq.
  for (const [name, value] of url.searchParams) {
    if (name === 'ssl') {
      // node-postgres's ?ssl=true: verified TLS, as --ssl (an sslmode beside it wins).
      if (!/^(true|1|false|0)$/i.test(value)) throw new UsageError('INVALID_SSLMODE', `invalid ssl=… in ${source}`, { hint: 'use ssl=true or ssl=false, or sslmode=…' })
      if (conninfo.sslmode === undefined && !url.searchParams.has('sslmode')) conninfo.sslmode = /^(true|1)$/i.test(value) ? 'verify-full' : 'disable'
      continue
    }
    conninfo[name] = value
  }
  return conninfo
}

/**
 * Fill what a source leaves out from the libpq variables, then the defaults, as libpq does.
 * `conninfo` holds the source's own options (a URL's, a conninfo string's, or the flags' parts).
 */
function fromParts(source: ConnectionSource, conninfo: Conninfo, flags: ConnectionFlags, env: Env): ExternalTarget {
  // libpq's order for what the source leaves out: the service (service=… or PGSERVICE), then the
  // PG* variables, then the defaults.
  const serviceName = pick(conninfo.service, env.PGSERVICE)
  const service = serviceName === undefined ? {} : findService(serviceName, env)
  const libpq = (keyword: string, variable: string) => pick(conninfo[keyword], service[keyword], env[variable])
  const host = libpq('host', 'PGHOST') ?? 'localhost'
  const portText = libpq('port', 'PGPORT')
  const port = portText === undefined ? CONNECTION_DEFAULTS.port : parsePort(portText, source)
  const user = libpq('user', 'PGUSER') ?? osUser()
  const database = libpq('dbname', 'PGDATABASE') ?? user
  const password = libpq('password', 'PGPASSWORD')
  const ssl = resolveSsl(host, flags, env,
    { mode: conninfo.sslmode, rootcert: conninfo.sslrootcert, cert: conninfo.sslcert, key: conninfo.sslkey },
    { mode: service.sslmode, rootcert: service.sslrootcert, cert: service.sslcert, key: service.sslkey, name: serviceName })
  const options = libpq('options', 'PGOPTIONS')
  const applicationName = libpq('application_name', 'PGAPPNAME')
  const timeoutText = libpq('connect_timeout', 'PGCONNECT_TIMEOUT')
  const timeout = timeoutText === undefined ? undefined : connectTimeout(timeoutText,
    has(conninfo.connect_timeout) ? `connect_timeout in ${source}` : has(service.connect_timeout) ? `connect_timeout of service "${serviceName}"` : 'PGCONNECT_TIMEOUT')
  const bindingText = libpq('channel_binding', 'PGCHANNELBINDING')
  const channelBinding = bindingText === undefined ? undefined : parseChannelBinding(bindingText, source, conninfo, service, serviceName)
  return {
    kind: 'external', source, host, port, database, user, password,
    ssl: channelBinding === 'require' ? tlsForChannelBinding(ssl, host) : ssl,
    ...(channelBinding ? { channelBinding } : {}),
    ...(options ? { options } : {}),
    ...(applicationName ? { applicationName } : {}),
    ...(timeout !== undefined ? { connectTimeoutMs: timeout } : {}),
  }
}

/**
 * A service's options, read as libpq reads them: PGSERVICEFILE (else ~/.pg_service.conf), then
 * PGSYSCONFDIR/pg_service.conf (Debian's libpq: /etc/postgresql-common); the first file that
 * defines the service wins. Its lines are `keyword=value`, the value being the rest of the line.
 */
function findService(name: string, env: Env): Conninfo {
  const home = has(env.HOME) ? env.HOME : os.homedir()
  const files = [
    has(env.PGSERVICEFILE) ? env.PGSERVICEFILE : path.join(home, '.pg_service.conf'),
    path.join(has(env.PGSYSCONFDIR) ? env.PGSYSCONFDIR : '/etc/postgresql-common', 'pg_service.conf'),
  ]
  for (const file of files) {
    let text: string
    try {
      text = fs.readFileSync(file, 'utf8')
    } catch {
      continue // libpq moves on to the next file
    }
    const found = serviceIn(text, name, file)
    if (found) return found
  }
  throw new UsageError('SERVICE_NOT_FOUND', `definition of service "${name}" not found (looked in ${files.join(' and ')})`, {
    hint: 'check PGSERVICE (or service=) and the service file (PGSERVICEFILE, ~/.pg_service.conf)',
  })
}

/** The options of section [name] of a service file, or undefined when it has no such section. */
export function serviceIn(text: string, name: string, file: string): Conninfo | undefined {
  let found: Conninfo | undefined
  const lines = text.split(/\r?\n/)
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index].trim()
    if (line === '' || line.startsWith('#')) continue
    if (line.startsWith('[')) {
      if (found) break // the end of our section
      if (line === `[${name}]`) found = {}
      continue
    }
    if (!found) continue // libpq reads only the lines of the service asked for
    const where = `service file "${file}", line ${index + 1}`
    const equals = line.indexOf('=')
    if (equals < 0) {
      throw new UsageError('INVALID_SERVICE_FILE', `syntax error in ${where}`, { hint: 'each line of a service is keyword=value' })
    }
    const keyword = line.slice(0, equals).trim()
    if (keyword === 'service') {
      throw new UsageError('INVALID_SERVICE_FILE', `nested service specifications are not supported (${where})`, { hint: 'remove the service= line' })
    }
    const value = line.slice(equals + 1).trimStart()
    checkOptions({ [keyword]: value }, where)
    if (found[keyword] === undefined) found[keyword] = value // the first setting counts, as in libpq
  }
  return found
}

function parseChannelBinding(text: string, source: ConnectionSource, conninfo: Conninfo, service: Conninfo, serviceName?: string): ChannelBinding {
  if ((CHANNEL_BINDINGS as readonly string[]).includes(text)) return text as ChannelBinding
  const setting = has(conninfo.channel_binding) ? `channel_binding in ${source}`
    : has(service.channel_binding) ? `channel_binding of service "${serviceName}"` : 'PGCHANNELBINDING'
  throw new UsageError('INVALID_SETTING', `invalid ${setting} "${text}"`, { hint: `use one of ${CHANNEL_BINDINGS.join(', ')}` })
}

/**
 * channel_binding=require binds the authentication to the TLS session: TLS it must be. A default
 * that would allow plain connections (a local host's none, libpq's prefer) becomes require, so a
 * server without TLS fails at once; an explicit sslmode=disable, or a Unix socket, cannot work and
 * is bad configuration (exit 2, before any connection).
 */
function tlsForChannelBinding(ssl: SslSettings, host: string): SslSettings {
  if (isSocketHost(host)) {
    throw new UsageError('CHANNEL_BINDING_NEEDS_TLS', `channel_binding=require needs TLS, and a Unix socket (${host}) has none`, {
      hint: 'connect over TCP with TLS, or drop channel_binding=require (a socket is local: there is no one in between)',
    })
  }
  if (ssl.mode === 'disable' && !ssl.setting.startsWith('the default')) {
    throw new UsageError('CHANNEL_BINDING_NEEDS_TLS', `channel_binding=require needs TLS, and ${ssl.setting} turns it off`, {
      hint: 'use sslmode=require (or stricter) with channel_binding=require',
    })
  }
  if (ssl.mode === 'disable' || ssl.mode === 'prefer') return { ...ssl, mode: 'require', setting: 'channel_binding=require' }
  return ssl
}

/** libpq's connect_timeout: whole seconds; 0 or less waits for ever; less than 2 counts as 2. */
function connectTimeout(text: string, setting: string): number {
  const seconds = Number(text.trim())
  if (!Number.isInteger(seconds)) {
    throw new UsageError('INVALID_SETTING', `${setting}="${text}" is not a whole number of seconds`, { hint: `fix or unset ${setting}` })
  }
  return seconds <= 0 ? 0 : Math.max(2, seconds) * 1000
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
  urlSsl: { mode?: string; rootcert?: string; cert?: string; key?: string },
  serviceSsl: { mode?: string; rootcert?: string; cert?: string; key?: string; name?: string } = {},
): SslSettings {
  const files = {
    ca: readCert(pick(urlSsl.rootcert, env.DB_SSL_CA, serviceSsl.rootcert, env.PGSSLROOTCERT), 'CA'),
    cert: readCert(pick(urlSsl.cert, env.DB_SSL_CERT, serviceSsl.cert, env.PGSSLCERT), 'client certificate'),
    key: readCert(pick(urlSsl.key, env.DB_SSL_KEY, serviceSsl.key, env.PGSSLKEY), 'client key'),
  }
  const withFiles = (mode: SslMode, setting: string): SslSettings => ({ mode, setting, ...dropUndefined(files) })

  if (isSocketHost(host)) return { mode: 'disable', setting: 'a Unix socket' }
  if (urlSsl.mode) return withFiles(parseSslMode(urlSsl.mode, 'sslmode in the URL'), 'sslmode in the URL')
  if (flags.from === 'api' && flags.ssl !== undefined) return apiSsl(flags.ssl, files)
  if (flags.ssl) return withFiles('verify-full', '--ssl')
  if (has(env.DB_SSL)) return withFiles(parseDbSsl(env.DB_SSL), 'DB_SSL')
  // The seeds' alias: an sslmode with libpq's meanings, beside DB_SSL.
  if (has(env.DB_SSL_MODE)) return withFiles(parseSslMode(env.DB_SSL_MODE, 'DB_SSL_MODE'), 'DB_SSL_MODE')
  if (has(serviceSsl.mode)) {
    const setting = `sslmode of service "${serviceSsl.name}"`
    return withFiles(parseSslMode(serviceSsl.mode, setting), setting)
  }
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

/**
 * Pool settings from the environment (SPEC §1); invalid numbers are usage errors. The target's
 * connect_timeout (or PGCONNECT_TIMEOUT) applies unless DB_CONNECT_TIMEOUT_MS says otherwise.
 */
export function resolvePoolSettings(env: Env, target?: ConnectionTarget): PoolSettings {
  const statementTimeoutMs = optionalInt(env, 'DB_STATEMENT_TIMEOUT_MS')
  const libpqTimeout = target?.kind === 'external' ? target.connectTimeoutMs : undefined
  // DB_POOL_SIZE is the seeds' name for DB_POOL_MAX.
  const max = optionalInt(env, 'DB_POOL_MAX', 1) ?? optionalInt(env, 'DB_POOL_SIZE', 1) ?? CONNECTION_DEFAULTS.poolMax
  const min = optionalInt(env, 'DB_POOL_MIN') ?? 0
  if (min > max) {
    throw new UsageError('INVALID_SETTING', `DB_POOL_MIN=${min} is more than the pool size ${max} (DB_POOL_MAX or DB_POOL_SIZE)`, {
      hint: 'lower DB_POOL_MIN or raise DB_POOL_MAX',
    })
  }
  return {
    max,
    min,
    connectTimeoutMs: optionalInt(env, 'DB_CONNECT_TIMEOUT_MS', 1) ?? libpqTimeout ?? CONNECTION_DEFAULTS.connectTimeoutMs,
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

/**
 * Every DB_* and PIPEWEAVE_* environment variable that pipeweave reads (its tests and benchmarks
 * included): one table, so that a typo can be told from an application's own setting (SPEC §1).
 */
export const KNOWN_SETTINGS: Readonly<Record<string, string>> = {
  DB_HOST: 'database host (the DB_* source)',
  DB_PORT: 'database port',
  DB_NAME: 'database name',
  DB_USER: 'database user',
  DB_PASS: 'database password',
  DB_PASSWORD: 'database password (DB_PASS wins)',
  DB_SSL: 'TLS: true (verified), no-verify, false, or an sslmode',
  DB_SSL_MODE: 'an sslmode (DB_SSL wins)',
  DB_SSL_CA: 'CA file',
  DB_SSL_CERT: 'client certificate file',
  DB_SSL_KEY: 'client key file',
  DB_POOL_MAX: 'connections per process',
  DB_POOL_SIZE: 'DB_POOL_MAX under the seeds\' name',
  DB_POOL_MIN: 'idle connections kept',
  DB_POOL_IDLE_TIMEOUT_MS: 'idle connections close after this',
  DB_CONNECT_TIMEOUT_MS: 'connect timeout',
  DB_STATEMENT_TIMEOUT_MS: 'statement_timeout',
  DB_SLOW_QUERY_MS: 'slow-query warning threshold of run',
  DB_QUERY_TIMEOUT_MS: 'run gives up on a query with no answer after this',
  PIPEWEAVE_HOME: 'where the embedded database lives',
  PIPEWEAVE_EMBEDDED: '0 refuses the embedded database',
  PIPEWEAVE_SCHEMA: 'the schema of pipeweave\'s objects',
  PIPEWEAVE_SECRET_KEY: 'HMAC key of dispatch signatures',
  PIPEWEAVE_NO_LISTEN: '1: run polls, without LISTEN/NOTIFY',
  PIPEWEAVE_HTTP_PORT: 'run\'s /healthz, /readyz and /metrics port',
  PIPEWEAVE_HTTP_HOST: 'the address that server binds',
  PIPEWEAVE_DASHBOARD_TOKEN: 'the dashboard\'s action token',
  PIPEWEAVE_DASHBOARD_REFRESH_MS: 'how often the dashboard refreshes',
  PIPEWEAVE_BREAKER_COOLDOWN_MS: 'service breaker cool-down',
  PIPEWEAVE_BREAKER_MAX_OPEN_MS: 'service breaker longest open time',
  PIPEWEAVE_TEST_DATABASE_URL: 'the test suite\'s server',
  PIPEWEAVE_TEST_ADMIN_URL: 'set by the test suite for its files',
  PIPEWEAVE_TEST_WORKERS: 'jest workers of the test suite',
  PIPEWEAVE_BENCH_DATABASE_URL: 'the benchmarks\' server',
}

/**
 * DB_* and PIPEWEAVE_* variables that look like a misspelt setting: within edit distance 2 of a
 * known name (case aside). Others pass silently: an application's own DB_ENGINE is no typo, and
 * cron output stays quiet (SPEC §1).
 */
export function settingTypos(env: Env): Array<{ name: string; meant: string }> {
  const known = Object.keys(KNOWN_SETTINGS)
  const typos: Array<{ name: string; meant: string }> = []
  for (const name of Object.keys(env).sort()) {
    if (!/^(DB|PIPEWEAVE)_/.test(name) || Object.hasOwn(KNOWN_SETTINGS, name)) continue
    let best: { meant: string; distance: number } | undefined
    for (const candidate of known) {
      const distance = editDistance(name.toUpperCase(), candidate)
      if (distance <= 2 && (!best || distance < best.distance)) best = { meant: candidate, distance }
    }
    if (best) typos.push({ name, meant: best.meant })
  }
  return typos
}

/** Levenshtein distance with adjacent transpositions (optimal string alignment): DB_HSOT is 1 from DB_HOST. */
function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2) return 3 // only "within 2" matters
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) d[0][j] = j
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1)
    }
  }
  return d[a.length][b.length]
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
