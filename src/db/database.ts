/**
 * The pool and the one place queries go through: application_name, TLS (with libpq's `prefer`
 * fallback, which node-postgres lacks), the slow-query log, error mapping and password masking.
 */
import { isIP } from 'node:net'
import type { ConnectionOptions } from 'node:tls'
import type { PoolClient, QueryResult, QueryResultRow } from 'pg'
import { type Logger, silentLogger } from '../logger'
import { VERSION } from '../version'
import {
  type ConnectionFlags, type ExternalTarget, type PoolSettings, type SslObject, type SslSettings,
  describeTarget, resolveConnection, resolvePoolSettings,
} from './config'
import type { EmbeddedHandle } from './embedded'
import { Client, Pool } from './pg'
import { SQLSTATE, isConnectionLoss, toConnectionError } from './errors'
import { DEFAULT_SCHEMA, type Schema, schemaOf, validateSchemaName } from '../sql/schema'
import { ConnectionError, UsageError } from '../errors'

/** A named SQL statement: the name is what the slow-query log prints, never the values. */
export interface Statement {
  name: string
  text: string
}

/**
 * A statement of pipeweave's own tables, which names the configured schema: built for a schema
 * (once; src/sql/schema.ts `statement`) by whatever runs it.
 */
export type SchemaStatement = ((schema: Schema) => Statement) & { readonly statementName: string }

export type AnyStatement = Statement | SchemaStatement | string

export type Queryable = Pick<Database, 'query' | 'schema'>

export interface DatabaseConfig {
  /** The seeds' shape (SPEC §6): a connection string, as `--url` takes it. */
  connectionString?: string
  /** The seeds' other shape: `{ host, port, database, user, password, ssl }`, as the connection flags. */
  host?: string
  port?: number | string
  user?: string
  password?: string
  /** true (verified TLS), false (none), an sslmode name, or `{ rejectUnauthorized, ca, cert, key }` (PEM text). */
  ssl?: boolean | string | SslObject
  /** The CLI's connection flags (or the same parts from code); not together with the seeds' shapes. */
  flags?: ConnectionFlags
  env?: Record<string, string | undefined>
  cwd?: string
  /** The command or role, for application_name (`pipeweave/<version> <command>`). */
  command?: string
  logger?: Logger
  /**
   * The database to use on the resolved server: the seeds' `database`, or the server's maintenance
   * database instead of the target one (db:init).
   */
  database?: string
  /** Overrides of the pool settings read from the environment. */
  pool?: Partial<PoolSettings>
  /**
   * With nothing configured, may the embedded database be created (default true)? Commands that
   * only read pass false: they use an embedded database that exists, and otherwise say that
   * nothing is configured (exit 3) instead of making a cluster in the current directory (SPEC §1).
   */
  createEmbedded?: boolean
  /** Check the connection at once (default true), so that a bad setting fails before any work. */
  verify?: boolean
  /** Log queries slower than DB_SLOW_QUERY_MS as warnings (long-running processes). */
  logSlowQueries?: boolean
  /** Fail a pooled query that gets no answer within this long (long-running processes). */
  queryTimeoutMs?: number
  /**
   * Run pipeweave's statements as named prepared statements, planned once per connection (the
   * orchestrator's hot path: planning cost more than running its statements). Never behind a
   * transaction pooler, which does not carry them from one transaction to the next: `run`
   * prepares only while it LISTENs (--no-listen, what a pooler needs, turns this off).
   */
  prepareStatements?: boolean
  /** The schema of pipeweave's objects (`--schema`); else PIPEWEAVE_SCHEMA, else `public`. */
  schema?: string
}

/** The schema a configuration names: `schema`, else PIPEWEAVE_SCHEMA, else `public` (SPEC §1). */
/** The session settings of `run`'s connections (prepareStatements): see createDatabase. */
const RUN_SESSION_OPTIONS = '-c plan_cache_mode=force_generic_plan -c jit=off'

export function resolveSchema(config: Pick<DatabaseConfig, 'schema' | 'env'>): Schema {
  if (config.schema !== undefined && config.schema !== '') return schemaOf(validateSchemaName(config.schema, '--schema'))
  const fromEnv = (config.env ?? process.env).PIPEWEAVE_SCHEMA
  if (fromEnv !== undefined && fromEnv !== '') return schemaOf(validateSchemaName(fromEnv, 'PIPEWEAVE_SCHEMA'))
  return schemaOf(DEFAULT_SCHEMA)
}

export interface Database {
  readonly target: ExternalTarget
  /** The masked target, postgres://user:****@host:port/db. */
  readonly description: string
  /** The data directory, when this is the embedded server. */
  readonly embeddedDataDir?: string
  readonly tls: boolean
  readonly applicationName: string
  readonly logger: Logger
  /** Where pipeweave's objects live; every SchemaStatement run here names it. */
  readonly schema: Schema
  query<R extends QueryResultRow = QueryResultRow>(statement: AnyStatement, values?: unknown[]): Promise<QueryResult<R>>
  /** BEGIN … COMMIT on one pooled connection; ROLLBACK and release-with-error when fn throws. */
  withTransaction<T>(fn: (tx: TransactionClient) => Promise<T>): Promise<T>
  /** A pooled connection for work that needs one session (session locks). */
  withClient<T>(fn: (client: TransactionClient) => Promise<T>): Promise<T>
  /** A connection of its own, outside the pool (LISTEN, migrations); the caller ends it. */
  newClient(): Promise<Client>
  /** Turn a connection failure into a ConnectionError that says what to check; others pass through. */
  mapError(error: unknown): unknown
  close(): Promise<void>
}

export interface TransactionClient {
  readonly schema: Schema
  query<R extends QueryResultRow = QueryResultRow>(statement: AnyStatement, values?: unknown[]): Promise<QueryResult<R>>
}

/** The node-postgres TLS options for a resolved mode; `prefer` starts as TLS and may fall back. */
export function tlsOptions(ssl: SslSettings, host: string): false | ConnectionOptions {
  const files = { ...(ssl.ca ? { ca: ssl.ca } : {}), ...(ssl.cert ? { cert: ssl.cert } : {}), ...(ssl.key ? { key: ssl.key } : {}) }
  switch (ssl.mode) {
    case 'disable':
      return false
    case 'prefer':
    case 'require':
    case 'no-verify':
      return { ...files, rejectUnauthorized: false }
    case 'verify-ca':
      return { ...files, rejectUnauthorized: true, checkServerIdentity: () => undefined }
    case 'verify-full':
      // SNI takes host names only: an IP address as servername makes Node print a DEP0123 warning
      // on stderr. Without it, Node still checks the certificate against the address connected to.
      return { ...files, rejectUnauthorized: true, ...(isIP(host) === 0 ? { servername: host } : {}) }
  }
}

/** Every option createDatabase understands; anything else is a UsageError (SPEC §6). */
const CONFIG_KEYS: ReadonlySet<string> = new Set<keyof DatabaseConfig>([
  'connectionString', 'host', 'port', 'user', 'password', 'ssl', 'database',
  'flags', 'env', 'cwd', 'command', 'logger', 'pool', 'createEmbedded', 'verify', 'logSlowQueries', 'queryTimeoutMs', 'schema',
  'prepareStatements',
])
const SEED_KEYS = ['connectionString', 'host', 'port', 'user', 'password', 'ssl'] as const

function invalidConfig(message: string): UsageError {
  return new UsageError('INVALID_DATABASE_CONFIG', `createDatabase: ${message}`, {
    hint: 'give { connectionString }, { host, port, database, user, password, ssl } or { flags, env } (see DatabaseConfig)',
  })
}

/**
 * The connection flags a config stands for: its `flags`, or the seeds' shapes turned into them.
 * What it does not understand is refused, never dropped: a dropped connection option would land
 * on the embedded database instead of the server meant (SPEC §6).
 */
export function connectionFlagsOf(config: DatabaseConfig): ConnectionFlags {
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw invalidConfig(`expected a config object, got ${config === null ? 'null' : Array.isArray(config) ? 'an array' : `a ${typeof config}`}`)
  }
  const unknown = Object.keys(config).filter((key) => !CONFIG_KEYS.has(key))
  if (unknown.length > 0) throw invalidConfig(`unknown option${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `"${k}"`).join(', ')}`)
  const seeds = SEED_KEYS.filter((key) => config[key] !== undefined)
  if (seeds.length === 0) return config.flags ?? {}
  const flagParts = Object.entries(config.flags ?? {}).filter(([key, value]) => key !== 'from' && value !== undefined && value !== false && value !== '')
  if (flagParts.length > 0) throw invalidConfig(`${seeds.join(', ')} and flags (${flagParts.map(([key]) => key).join(', ')}) both give the connection: give one`)
  for (const key of ['connectionString', 'host', 'user', 'password'] as const) {
    if (config[key] !== undefined && typeof config[key] !== 'string') throw invalidConfig(`${key} must be a string`)
  }
  if (config.port !== undefined && typeof config.port !== 'number' && typeof config.port !== 'string') throw invalidConfig('port must be a number')
  const parts = { host: config.host, port: config.port, user: config.user, password: config.password }
  if (config.connectionString !== undefined) {
    const mixed = Object.entries(parts).filter(([, value]) => value !== undefined).map(([key]) => key)
    if (mixed.length > 0) throw invalidConfig(`connectionString and ${mixed.join(', ')} both give the connection: give one`)
    return { url: config.connectionString, ssl: config.ssl, from: 'api' }
  }
  return { ...parts, database: config.database, ssl: config.ssl, from: 'api' }
}

/**
 * libpq's channel_binding=require, which node-postgres lacks: its enableChannelBinding only prefers
 * SCRAM-SHA-256-PLUS, and goes on with plain SCRAM, a password or trust when the server asks for
 * that. This client refuses every authentication but SCRAM-SHA-256-PLUS over TLS, before it sends
 * anything (a server in the middle learns no password), as libpq does. It overrides node-postgres's
 * authentication handlers (pg 8.x: _handleAuthSASL, _handleAuthCleartextPassword,
 * _handleAuthMD5Password, _handleReadyForQuery); channel-binding.test.ts holds it to that.
 */
const ClientBase = Client as unknown as new (config: object) => {
  connection: NodeJS.EventEmitter & { stream: { destroy(): void; getPeerCertificate?: unknown } }
  _handleAuthSASL(message: { mechanisms: string[] }): void
  _handleReadyForQuery(message: unknown): void
}
class ChannelBindingClientImpl extends ClientBase {
  private bound = false
  private refused = false

  constructor(config: object) {
    // Not a copy of config: pg-pool hands its options with the password non-enumerable.
    super(config)
    ;(this as unknown as { enableChannelBinding: boolean }).enableChannelBinding = true
    // Authentication without any SASL exchange (trust) ends in AuthenticationOk alone.
    this.connection.on('authenticationOk', () => {
      if (!this.bound) this.refuse('the server authenticated the client without channel binding')
    })
  }

  _handleAuthSASL(message: { mechanisms: string[] }): void {
    if (typeof this.connection.stream.getPeerCertificate !== 'function') return this.refuse('the connection does not use TLS')
    if (!message.mechanisms.includes('SCRAM-SHA-256-PLUS')) {
      return this.refuse(`the server did not offer SCRAM-SHA-256-PLUS (it offered ${message.mechanisms.join(', ')})`)
    }
    // node-postgres picks SCRAM-SHA-256-PLUS whenever it is offered over TLS with enableChannelBinding,
    // and the server's final SCRAM message (checked before AuthenticationOk) proves the binding.
    this.bound = true
    super._handleAuthSASL(message)
  }

  _handleAuthCleartextPassword(): void {
    this.refuse('the server asked for a password in clear text')
  }

  _handleAuthMD5Password(): void {
    this.refuse('the server asked for an MD5 password')
  }

  _handleReadyForQuery(message: unknown): void {
    if (!this.refused) super._handleReadyForQuery(message) // the rest of a refused handshake is ignored
  }

  private refuse(why: string): void {
    if (this.refused) return
    this.refused = true
    this.connection.emit('error', Object.assign(new Error(`channel binding required, but ${why}`), { code: 'CHANNEL_BINDING_REQUIRED' }))
    this.connection.stream.destroy()
  }
}
const ChannelBindingClient = ChannelBindingClientImpl as unknown as typeof Client

/** Does this node-postgres still have the handlers ChannelBindingClient overrides? Else require is refused, never ignored. */
function channelBindingEnforceable(): boolean {
  const proto = Client.prototype as unknown as Record<string, unknown>
  return ['_handleAuthSASL', '_handleAuthCleartextPassword', '_handleAuthMD5Password', '_handleReadyForQuery']
    .every((name) => typeof proto[name] === 'function')
}

export async function createDatabase(config: DatabaseConfig = {}): Promise<Database> {
  const flags = connectionFlagsOf(config)
  const env = config.env ?? process.env
  const logger = config.logger ?? silentLogger
  const schema = resolveSchema(config)
  const resolved = resolveConnection(flags, env)
  if (resolved.kind === 'external' && resolved.channelBinding === 'require' && !channelBindingEnforceable()) {
    throw new UsageError('CHANNEL_BINDING_UNSUPPORTED', 'channel_binding=require cannot be enforced with this version of node-postgres', {
      hint: 'use channel_binding=prefer, or the node-postgres version pipeweave ships with',
    })
  }
  const settings = { ...resolvePoolSettings(env, resolved), ...config.pool }
  if (!config.logSlowQueries) settings.slowQueryMs = Infinity
  // PGAPPNAME (or application_name in the URL) replaces the default on an external server only:
  // the embedded server counts the pipeweave processes using it by the default name (SPEC §1.1).
  const applicationName = (resolved.kind === 'external' && resolved.applicationName
    ? resolved.applicationName
    : `pipeweave/${VERSION}${config.command ? ` ${config.command}` : ''}`).slice(0, 63)

  let embedded: EmbeddedHandle | undefined
  let target: ExternalTarget
  if (resolved.kind === 'embedded') {
    // Loaded only here: a command on a configured server never needs it (start-up cost).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { acquireEmbeddedServer, assertEmbeddedAllowed, embeddedCluster } = require('./embedded') as typeof import('./embedded')
    const cwd = config.cwd ?? process.cwd()
    if (config.createEmbedded === false) {
      assertEmbeddedAllowed(env) // NODE_ENV=production's refusal (exit 2) comes first
      const cluster = embeddedCluster({ env, cwd })
      if (!cluster.exists) {
        throw new ConnectionError('NOTHING_CONFIGURED', `no database is configured, and there is no embedded database at ${cluster.dataDir} yet`, {
          hint: 'set DATABASE_URL (or --url, DB_HOST, PGHOST) to use your PostgreSQL, or run `pipeweave db:init` to create the embedded one here',
        })
      }
    }
    embedded = await acquireEmbeddedServer({ env, cwd, applicationName, log: (m) => logger.info(m) })
    const s = embedded.server
    target = {
      kind: 'external', source: 'DATABASE_URL', host: s.host, port: s.port, database: s.database,
      user: s.user, password: s.password, ssl: { mode: 'disable', setting: 'the embedded server' },
    }
    logger.info(`using embedded PostgreSQL at ${s.dataDir} (set DATABASE_URL to use your own)`)
  } else {
    target = resolved
  }
  if (config.database) target = { ...target, database: config.database }

  try {
    let ssl = tlsOptions(target.ssl, target.host)
    const clientConfig = () => ({
      host: target.host,
      port: target.port,
      database: target.database,
      user: target.user,
      password: target.password,
      ssl,
      application_name: applicationName,
      connectionTimeoutMillis: settings.connectTimeoutMs,
      // TCP keepalive: a peer that vanished without a FIN (a dropped NAT entry, a dead host) is found.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      ...(settings.statementTimeoutMs !== undefined ? { statement_timeout: settings.statementTimeoutMs } : {}),
      // Prepared statements (run) keep one generic plan each: re-planning a custom plan at every
      // call is the cost they save (PostgreSQL kept custom plans for the claim). And no JIT: a
      // generic plan does not know the claim's LIMIT, so with a backlog of ~100,000 runs its cost
      // passes jit_above_cost, and a server built with LLVM (Debian's, the usual packages) then
      // compiled the claim at every call: 70 ms per claim, a drain 10× slower. Statements of a
      // few rows never gain from it. Session state, so never through a pooler: prepareStatements
      // is off there (custom plans know the LIMIT).
      ...(target.options || config.prepareStatements
        ? { options: [target.options, config.prepareStatements ? RUN_SESSION_OPTIONS : undefined].filter(Boolean).join(' ') }
        : {}),
      ...(target.channelBinding === 'prefer' || target.channelBinding === 'require' ? { enableChannelBinding: true } : {}),
    })
    const ClientClass = target.channelBinding === 'require' ? ChannelBindingClient : Client

    const newPool = () => {
      const created = new Pool({
        ...clientConfig(), Client: ClientClass, max: settings.max, min: Math.min(settings.min, settings.max), idleTimeoutMillis: settings.idleTimeoutMs,
        // A query that gets no answer (a connection that died silently) fails instead of hanging
        // its caller for ever; pg-pool destroys the connection it was released with.
        ...(config.queryTimeoutMs ? { query_timeout: config.queryTimeoutMs } : {}),
      })
      // An idle client's error (server restart) must not crash the process: the next query reports it.
      created.on('error', (error) => logger.debug(`idle database connection closed: ${error.message}`))
      return created
    }
    let pool = newPool()
    if (config.verify !== false) {
      // One real connection first: a bad setting fails here with a clear message, and `prefer`
      // learns whether the server speaks TLS (node-postgres has no fallback of its own). It is the
      // pool's own first connection, left idle in it: the first query uses it instead of opening
      // another (one connection and authentication less at every start, bench/cold-start.js).
      const connectFirst = async () => {
        try {
          ;(await pool.connect()).release()
        } catch (error) {
          await pool.end().catch(() => undefined)
          throw error
        }
      }
      try {
        await connectFirst()
      } catch (error) {
        if (target.ssl.mode === 'prefer' && /does not support SSL/i.test(String((error as Error)?.message))) {
          ssl = false
          pool = newPool()
          await connectFirst()
        } else {
          throw error
        }
      }
    }

    return new PgDatabase(pool, target, settings, logger, applicationName, ssl !== false, clientConfig, ClientClass, schema, embedded, Boolean(config.prepareStatements))
  } catch (error) {
    await embedded?.release().catch(() => undefined)
    throw toConnectionError(error, target, settings.connectTimeoutMs)
  }
}

class PgDatabase implements Database {
  readonly description: string
  readonly embeddedDataDir?: string
  private closed = false
  /** Pooled connections not yet closed: pool.end() resolves before their sockets are (pg-pool 3). */
  private readonly connections = new Set<unknown>()
  private onAllClosed?: () => void

  constructor(
    private readonly pool: Pool,
    readonly target: ExternalTarget,
    private readonly settings: PoolSettings,
    readonly logger: Logger,
    readonly applicationName: string,
    readonly tls: boolean,
    private readonly clientConfig: () => object,
    private readonly ClientClass: typeof Client,
    readonly schema: Schema,
    private readonly embedded?: EmbeddedHandle,
    private readonly prepare = false,
  ) {
    this.description = describeTarget(target)
    this.embeddedDataDir = embedded?.server.dataDir
    pool.on('connect', (client) => this.connections.add(client))
    pool.on('remove', (client) => {
      this.connections.delete(client)
      if (this.connections.size === 0) this.onAllClosed?.()
    })
  }

  query<R extends QueryResultRow = QueryResultRow>(statement: AnyStatement, values?: unknown[]): Promise<QueryResult<R>> {
    return timedQuery<R>(this.pool, bind(statement, this.schema), values, this)
  }

  async withClient<T>(fn: (client: TransactionClient) => Promise<T>): Promise<T> {
    let client: PoolClient
    try {
      client = await this.pool.connect()
    } catch (error) {
      throw this.mapError(error)
    }
    let failure: unknown
    try {
      return await fn({ schema: this.schema, query: (s, v) => timedQuery(client, bind(s, this.schema), v, this) })
    } catch (error) {
      failure = error
      throw error
    } finally {
      // A broken connection goes back with its error, so the pool destroys it (pg-pool).
      client.release(failure !== undefined && isConnectionLoss(failure) ? (failure as Error) : undefined)
    }
  }

  withTransaction<T>(fn: (tx: TransactionClient) => Promise<T>): Promise<T> {
    return this.withClient(async (client) => {
      await client.query('BEGIN')
      try {
        const result = await fn(client)
        await client.query('COMMIT')
        return result
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined)
        throw error
      }
    })
  }

  async newClient(): Promise<Client> {
    const client = new this.ClientClass(this.clientConfig())
    client.on('error', (error) => this.logger.debug(`database connection closed: ${error.message}`))
    try {
      await client.connect()
    } catch (error) {
      await client.end().catch(() => undefined)
      throw this.mapError(error)
    }
    return client
  }

  mapError(error: unknown): unknown {
    return toConnectionError(error, this.target, this.settings.connectTimeoutMs)
  }

  get prepareStatements(): boolean {
    return this.prepare
  }

  slowQueryMs(): number {
    return this.settings.slowQueryMs
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.pool.end().catch(() => undefined)
    // pg-pool's end() calls client.end() without waiting for it: wait until every pooled
    // connection has really closed, or the embedded server's "is any other pipeweave process
    // connected?" check below can count our own closing connections and leave it running.
    if (this.connections.size > 0) {
      await new Promise<void>((resolve) => {
        this.onAllClosed = resolve
        setTimeout(resolve, this.settings.connectTimeoutMs).unref()
      })
    }
    await this.embedded?.release()
  }
}

async function timedQuery<R extends QueryResultRow>(
  runner: { query: Pool['query'] },
  statement: Statement | string,
  values: unknown[] | undefined,
  db: PgDatabase,
): Promise<QueryResult<R>> {
  const { name, text } = typeof statement === 'string' ? { name: 'sql', text: statement } : statement
  const started = performance.now()
  try {
    // Unnamed statements unless asked (prepareStatements): a transaction pooler does not carry
    // named ones across transactions. A prepared statement's name is its schema's and its own.
    const prepared = db.prepareStatements && typeof statement !== 'string' ? `pw_${db.schema.name}_${name}` : undefined
    return await runner.query<R>({ name: prepared, text, values })
  } catch (error) {
    throw db.mapError(error)
  } finally {
    const ms = performance.now() - started
    if (ms > db.slowQueryMs()) db.logger.warn(`slow query ${name} took ${Math.round(ms)} ms`, { statement: name, durationMs: Math.round(ms) })
  }
}

/** A statement with its schema named. */
export function bind(statement: AnyStatement, schema: Schema): Statement | string {
  return typeof statement === 'function' ? statement(schema) : statement
}

/** A plain client (from newClient) seen through the same query interface, unnamed statements. */
export function clientQueryable(client: Client, schema: Schema): Queryable {
  return {
    schema,
    query: <R extends QueryResultRow = QueryResultRow>(statement: AnyStatement, values?: unknown[]) => {
      const bound = bind(statement, schema)
      return client.query<R>({ text: typeof bound === 'string' ? bound : bound.text, values })
    },
  }
}

export { SQLSTATE }
