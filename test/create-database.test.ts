/**
 * The public createDatabase (SPEC §6) takes the seeds' shapes, `{ connectionString }` and
 * `{ host, port, database, user, password, ssl }`, beside `{ flags, env }`; an object it does not
 * understand is a UsageError, never a silent fall-back to the embedded database.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { type Database, createDatabase, closeDatabase, openOrCreateDatabase, UsageError } from '../src/index'
import { Pool } from 'pg'
import { resolveConnection } from '../src/db/config'
import { adminUrl, createTestDatabase, urlFor, type TestDatabase } from './helpers/db'

let db: TestDatabase
let home: string

beforeAll(async () => {
  db = await createTestDatabase()
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-create-db-'))
  fs.chmodSync(parent, 0o755) // reachable by the postgres user: no root fall-back under /var/lib/pipeweave
  home = path.join(parent, 'home') // never created: an embedded start would make it
})
afterAll(async () => {
  await db.drop()
  fs.rmSync(path.dirname(home), { recursive: true, force: true })
})

/** An environment with nothing configured: a fall-back would start the embedded database in `home`. */
const bare = () => ({ PIPEWEAVE_HOME: home })

async function where(api: Database): Promise<string> {
  try {
    const { rows: [row] } = await api.query<{ db: string }>('SELECT current_database() AS db')
    expect(api.embeddedDataDir).toBeUndefined()
    return row.db
  } finally {
    await closeDatabase(api)
  }
}

async function usageError(promise: Promise<unknown>): Promise<UsageError> {
  let opened: unknown
  try {
    opened = await promise
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError)
    return error as UsageError
  }
  await (opened as Database | undefined)?.close?.()
  throw new Error('expected a UsageError')
}

describe('createDatabase: the seeds\' shapes', () => {
  it('{ connectionString } connects to that database', async () => {
    expect(await where(await createDatabase({ connectionString: db.url, env: bare() }))).toBe(db.name)
    expect(fs.existsSync(home)).toBe(false)
  })

  it('{ host, port, database, user, password } connects to that database', async () => {
    const url = new URL(db.url)
    const api = await createDatabase({
      host: url.hostname, port: Number(url.port), database: db.name,
      user: decodeURIComponent(url.username), password: decodeURIComponent(url.password), ssl: false, env: bare(),
    })
    expect(await where(api)).toBe(db.name)
    expect(fs.existsSync(home)).toBe(false)
  })

  it('takes the port as a string too, as environment-fed configs have it', async () => {
    const url = new URL(db.url)
    const api = await createDatabase({
      host: url.hostname, port: url.port, database: db.name,
      user: decodeURIComponent(url.username), password: decodeURIComponent(url.password), env: bare(),
    })
    expect(await where(api)).toBe(db.name)
  })

  it('openOrCreateDatabase creates a missing database given as { connectionString }', async () => {
    const name = `${db.name}_made`
    const { db: api, created } = await openOrCreateDatabase({ connectionString: urlFor(name), env: bare() })
    try {
      expect(created).toBe(true)
      expect(await where(api)).toBe(name)
    } finally {
      const admin = new Pool({ connectionString: adminUrl(), max: 1 })
      await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).finally(() => admin.end())
    }
  })

  it('maps ssl: true, false and { rejectUnauthorized: false } to verified TLS, none and unverified TLS', () => {
    const target = (ssl: unknown) => {
      const resolved = resolveConnection({ host: 'db.example.org', ssl, from: 'api' } as never, {})
      if (resolved.kind !== 'external') throw new Error('expected an external target')
      return resolved.ssl
    }
    expect(target(true)).toMatchObject({ mode: 'verify-full' })
    expect(target(false)).toMatchObject({ mode: 'disable' })
    expect(target('require')).toMatchObject({ mode: 'require' })
    expect(target({ rejectUnauthorized: false })).toMatchObject({ mode: 'no-verify' })
    expect(target({ ca: 'PEM' })).toMatchObject({ mode: 'verify-full', ca: 'PEM' })
  })
})

describe('createDatabase: what it does not understand is a UsageError, never the embedded database', () => {
  it.each([
    ['a misspelt key', { conectionString: 'postgres://u@h/d' }, /conectionString/],
    ['an unknown key', { uri: 'postgres://u@h/d' }, /uri/],
    ['two sources at once', { connectionString: 'postgres://u@h/d', flags: { url: 'postgres://u@h/e' } }, /connectionString.*flags|flags.*connectionString/],
    ['a connection string that is not one', { connectionString: 'not a url' }, /connectionString/],
    ['a port that is not one', { host: 'h', port: 'eighty' }, /port/],
    ['an ssl setting it cannot read', { host: 'h', ssl: 'sometimes' }, /ssl/],
  ])('%s', async (_what, config, names) => {
    const error = await usageError(createDatabase({ ...config, env: bare() } as never))
    expect(error.message).toMatch(names)
    expect(fs.existsSync(home)).toBe(false)
  })

  it.each([
    ['a string', 'postgres://u@h/d'],
    ['null', null],
    ['an array', []],
  ])('refuses %s instead of a config object', async (_what, config) => {
    await usageError(createDatabase(config as never))
  })
})

describe("createDatabase: run's session settings (prepareStatements)", () => {
  const settings = async (api: Database) => {
    try {
      const { rows: [row] } = await api.query<{ plan: string; jit: string }>(`SELECT current_setting('plan_cache_mode') AS plan, current_setting('jit') AS jit`)
      return row
    } finally {
      await closeDatabase(api)
    }
  }

  it('run (prepareStatements) plans its statements once, generically, and never JIT-compiles them', async () => {
    // A generic claim plan with a backlog of ~100,000 runs costs more than jit_above_cost: a
    // server built with LLVM compiled it at every call (70 ms per claim on PostgreSQL 15).
    expect(await settings(await createDatabase({ connectionString: db.url, prepareStatements: true, env: bare() })))
      .toEqual({ plan: 'force_generic_plan', jit: 'off' })
  })

  it('other callers keep the server\'s settings (nothing set for them)', async () => {
    const admin = new Pool({ connectionString: db.url, max: 1 })
    try {
      const { rows: [server] } = await admin.query<{ plan: string; jit: string }>(`SELECT current_setting('plan_cache_mode') AS plan, current_setting('jit') AS jit`)
      expect(await settings(await createDatabase({ connectionString: db.url, env: bare() }))).toEqual(server)
    } finally {
      await admin.end()
    }
  })
})
