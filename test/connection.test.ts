/**
 * The connection layer seen from the CLI (SPEC §1, §2): every source reaches the server in its
 * order, the failures exit with their code and one line, and no password ever shows.
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { Pool } from 'pg'
import { createDatabase } from '../src/db/database'
import { MIGRATION_LOCK_KEY } from '../src/sql/migrations'
import { type CliResult, json, runCli, startCli } from './helpers/cli'
import { adminUrl, createTestDatabase, type TestDatabase } from './helpers/db'
import { type FakeServer, blackHoleServer, unusedPort } from './helpers/fake-server'
import { waitFor } from './helpers/wait'

interface Target {
  host: string
  port: number | string
  database: string
  user: string
  password?: string
}

type Source = 'url' | 'flags' | 'DATABASE_URL' | 'DB_*' | 'PG*'
const SOURCES: Source[] = ['url', 'flags', 'DATABASE_URL', 'DB_*', 'PG*']

function urlOf(t: Target): string {
  const auth = t.password === undefined ? encodeURIComponent(t.user) : `${encodeURIComponent(t.user)}:${encodeURIComponent(t.password)}`
  return `postgres://${auth}@${t.host}:${t.port}/${encodeURIComponent(t.database)}`
}

/** The arguments and environment that give `t` through one source. */
function give(source: Source, t: Target, passwordVariable: 'DB_PASS' | 'DB_PASSWORD' = 'DB_PASS'): { args: string[]; env: Record<string, string> } {
  const pw = <K extends string>(key: K) => (t.password === undefined ? {} : { [key]: t.password })
  switch (source) {
    case 'url':
      return { args: ['--url', urlOf(t)], env: {} }
    case 'flags':
      return {
        args: ['--host', t.host, '--port', String(t.port), '--database', t.database, '--user', t.user, ...(t.password === undefined ? [] : ['--password', t.password])],
        env: {},
      }
    case 'DATABASE_URL':
      return { args: [], env: { DATABASE_URL: urlOf(t) } }
    case 'DB_*':
      return { args: [], env: { DB_HOST: t.host, DB_PORT: String(t.port), DB_NAME: t.database, DB_USER: t.user, ...pw(passwordVariable) } }
    case 'PG*':
      return { args: [], env: { PGHOST: t.host, PGPORT: String(t.port), PGDATABASE: t.database, PGUSER: t.user, ...pw('PGPASSWORD') } }
  }
}

function combine(...parts: Array<{ args: string[]; env: Record<string, string> }>): { args: string[]; env: Record<string, string> } {
  return { args: parts.flatMap((p) => p.args), env: Object.assign({}, ...parts.map((p) => p.env)) }
}

/** Run at most `limit` CLI processes at a time (two cores, shared). */
async function inTurn<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length)
  let next = 0
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < items.length) {
      const index = next++
      results[index] = await fn(items[index])
    }
  }))
  return results
}

/** The failure as a human reads it: nothing on stdout, one line on stderr, no stack trace. */
function expectOneLineFailure(result: CliResult, exitCode: number, pattern: RegExp): void {
  expect({ code: result.code, stdout: result.stdout }).toEqual({ code: exitCode, stdout: '' })
  const lines = result.stderr.trim().split('\n')
  expect(lines).toHaveLength(1)
  expect(lines[0]).toMatch(/^error: /)
  expect(lines[0]).toMatch(pattern)
}

/** `--json`: exactly `{ error: { code, message, hint? }, exitCode }` on stdout. */
function expectJsonFailure(result: CliResult, exitCode: number, code: string): { code: string; message: string; hint?: string } {
  expect(result.code).toBe(exitCode)
  const body = json<{ error: { code: string; message: string; hint?: string }; exitCode: number }>(result)
  expect(Object.keys(body).sort()).toEqual(['error', 'exitCode'])
  expect(body.exitCode).toBe(exitCode)
  expect(body.error.code).toBe(code)
  expect(Object.keys(body.error).filter((k) => !['code', 'message', 'hint'].includes(k))).toEqual([])
  expect(body.error.message).toEqual(expect.any(String))
  expect(body.error.message).not.toContain('\n')
  return body.error
}

describe('connection', () => {
  let db: TestDatabase
  let server: { host: string; port: string }
  // A role of our own, with a password full of characters that need encoding in a URL.
  const role = `pw_conn_${crypto.randomBytes(4).toString('hex')}`
  const password = `Rt-${crypto.randomBytes(4).toString('hex')}-p@ss:w/rd %?`
  const wrongPassword = `Wr-${crypto.randomBytes(4).toString('hex')}-s3cr3t`
  let good: Target

  beforeAll(async () => {
    db = await createTestDatabase()
    const admin = new URL(adminUrl())
    server = { host: admin.hostname, port: admin.port || '5432' }
    const pool = new Pool({ connectionString: adminUrl(), max: 1 })
    try {
      await pool.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password.replace(/'/g, "''")}'`)
    } finally {
      await pool.end()
    }
    good = { host: server.host, port: server.port, database: db.name, user: role, password }
  })

  afterAll(async () => {
    await db.drop()
    const pool = new Pool({ connectionString: adminUrl(), max: 1 })
    try {
      await pool.query(`DROP ROLE IF EXISTS ${role}`)
    } finally {
      await pool.end()
    }
  })

  describe('sources (SPEC §1)', () => {
    it('uses the first source present, whatever the sources after it say', async () => {
      // Source k points at the test database; every source after it at a database that does not exist.
      const results = await inTurn(SOURCES.map((_, k) => k), 2, (k) => {
        const given = combine(...SOURCES.slice(k).map((source, i) =>
          give(source, i === 0 ? good : { ...good, database: `decoy_${source.replace(/\W/g, '')}` })))
        return runCli(['db:ping', '--json', ...given.args], { env: given.env })
      })
      results.forEach((result, k) => {
        expect({ source: SOURCES[k], code: result.code, stderr: result.stderr }).toEqual({ source: SOURCES[k], code: 0, stderr: '' })
        expect(json(result).target).toBe(`postgres://${role}:****@${server.host}:${server.port}/${db.name}`)
      })
    })

    it('does not fall through to a later source when the first one is wrong', async () => {
      const results = await inTurn(SOURCES.slice(0, 4).map((_, k) => k), 2, (k) => {
        const given = combine(...SOURCES.slice(k).map((source, i) => give(source, i === 0 ? { ...good, database: `missing_${k}` } : good)))
        return runCli(['db:ping', '--json', ...given.args], { env: given.env })
      })
      results.forEach((result, k) => {
        const error = expectJsonFailure(result, 3, 'DATABASE_MISSING')
        expect(error.message).toContain(`"missing_${k}"`)
      })
    })

    it('fills what a URL leaves out from the libpq variables', async () => {
      const result = await runCli(['db:ping', '--json', '--url', `postgres://${server.host}:${server.port}`], {
        env: { PGUSER: role, PGPASSWORD: password, PGDATABASE: db.name },
      })
      expect(result.code).toBe(0)
      expect(json(result).target).toBe(`postgres://${role}:****@${server.host}:${server.port}/${db.name}`)
    })

    it('takes a source as a whole: DB_PASS does not complete a DATABASE_URL, PGPASSWORD does', async () => {
      const withoutPassword = urlOf({ ...good, password: undefined })
      const mixed = await runCli(['db:ping', '--json'], { env: { DATABASE_URL: withoutPassword, DB_PASS: password } })
      expect(mixed.code).toBe(3)
      expect(['PASSWORD_REQUIRED', 'AUTHENTICATION_FAILED']).toContain(json<{ error: { code: string } }>(mixed).error.code)

      const libpq = await runCli(['db:ping', '--json'], { env: { DATABASE_URL: withoutPassword, PGPASSWORD: password } })
      expect(libpq.code).toBe(0)
    })

    it.each([
      ['a lone DB_HOST', (port: number) => ({ DB_HOST: '127.0.0.1', DB_PORT: String(port) })],
      ['a lone PGUSER (with PGPORT)', (port: number) => ({ PGUSER: 'nobody', PGPORT: String(port) })],
    ])('turns the embedded database off for %s', async (_what, env) => {
      const home = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-home-'))
      try {
        const result = await runCli(['db:ping'], { env: { ...env(await unusedPort()), PIPEWEAVE_HOME: home } })
        expectOneLineFailure(result, 3, /refused/)
        expect(fs.readdirSync(home)).toEqual([])
      } finally {
        fs.rmSync(home, { recursive: true, force: true })
      }
    })

    it('sets application_name to pipeweave/<version> <command> on its connections', async () => {
      // db:migrate waits for the migration lock while we hold it: long enough to see its session.
      const holder = await db.pool.connect()
      try {
        await holder.query(`SELECT pg_advisory_lock(${MIGRATION_LOCK_KEY})`)
        const migrate = startCli(['db:migrate', '--lock-timeout', '60', '--dry-run'], { env: db.env })
        const version = JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', 'package.json'), 'utf8')).version
        await waitFor(async () => (await db.pool.query(
          'SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND application_name = $2', [db.name, `pipeweave/${version} db:migrate`])).rowCount,
        { what: 'the db:migrate session' })
        await holder.query(`SELECT pg_advisory_unlock(${MIGRATION_LOCK_KEY})`)
        expect((await migrate.done).code).toBe(0)
      } finally {
        holder.release()
      }
    })
  })

  describe('settings that reach the server', () => {
    it('DB_STATEMENT_TIMEOUT_MS sets statement_timeout, and application_name names the command', async () => {
      const api = await createDatabase({ flags: { url: urlOf(good) }, env: { DB_STATEMENT_TIMEOUT_MS: '1234' }, command: 'db:test-settings' })
      try {
        const { rows: [row] } = await api.query(`SELECT current_setting('statement_timeout') AS timeout, current_setting('application_name') AS app`)
        expect(row.timeout).toBe('1234ms')
        expect(row.app).toMatch(/^pipeweave\/\d+\.\d+\.\d+\S* db:test-settings$/)
        await expect(api.query('SELECT pg_sleep(5)')).rejects.toThrow(/statement timeout/)
      } finally {
        await api.close()
      }
    })

    it('logs a query slower than DB_SLOW_QUERY_MS as a warning with its name and duration, never its values', async () => {
      const warnings: Array<[string, unknown]> = []
      const logger = { debug: () => undefined, info: () => undefined, error: () => undefined, warn: (message: string, fields?: unknown) => { warnings.push([message, fields]) } }
      const api = await createDatabase({ flags: { url: urlOf(good) }, env: { DB_SLOW_QUERY_MS: '300' }, command: 'test', logger, logSlowQueries: true })
      try {
        await api.query({ name: 'warm_up', text: 'SELECT 1' }) // opens the pooled connection, which may take a while
        await api.query({ name: 'quick_one', text: 'SELECT $1::text AS v' }, ['fast-value'])
        await api.query({ name: 'sleepy_statement', text: 'SELECT pg_sleep(0.4), $1::text AS v' }, ['secret-value'])
      } finally {
        await api.close()
      }
      expect(warnings.filter(([message]) => !message.includes('warm_up'))).toEqual([[expect.stringMatching(/^slow query sleepy_statement took \d+ ms$/), { statement: 'sleepy_statement', durationMs: expect.any(Number) }]])
      expect(JSON.stringify(warnings)).not.toContain('secret-value')
    })

    it('returns timestamptz values as the same instants whatever the client and server time zones', async () => {
      const migrated = await createTestDatabase({ migrated: true })
      try {
        const { rows: [row] } = await migrated.pool.query(`SELECT extract(epoch FROM finished_at) * 1000 AS ms FROM pipeweave_migration_log WHERE migration_id = 1`)
        const url = new URL(migrated.url)
        url.searchParams.set('options', '-c TimeZone=America/Los_Angeles')
        const result = await runCli(['db:status', '--json', '--url', url.toString()], { env: { TZ: 'Pacific/Kiritimati' } })
        expect(result.code).toBe(0)
        const appliedAt = json<{ applied: Array<{ appliedAt: string }> }>(result).applied[0].appliedAt
        expect(Math.abs(new Date(appliedAt).getTime() - Number(row.ms))).toBeLessThan(1)
      } finally {
        await migrated.drop()
      }
    })
  })

  describe('masking a common password', () => {
    it('shows postgres://user:****@… and valid JSON when the password is "postgres"', async () => {
      const common = `${role}_common`
      const pool = new Pool({ connectionString: adminUrl(), max: 1 })
      try {
        await pool.query(`CREATE ROLE ${common} LOGIN PASSWORD 'postgres'`)
        const result = await runCli(['db:ping', '--json'], { env: { DATABASE_URL: urlOf({ ...good, user: common, password: 'postgres' }) } })
        expect(result.code).toBe(0)
        expect(json(result).target).toBe(`postgres://${common}:****@${server.host}:${server.port}/${db.name}`)
      } finally {
        await pool.query(`DROP ROLE IF EXISTS ${common}`).finally(() => pool.end())
      }
    })
  })

  describe('failures (SPEC §1, §2)', () => {
    let blackHole: FakeServer
    beforeAll(async () => { blackHole = await blackHoleServer() })
    afterAll(async () => { await blackHole.close() })

    // Each failure, its exit code, its --json code and what its one line must say.
    const cases = () => [
      { name: 'an unused port', url: async () => urlOf({ ...good, port: await unusedPort() }), exit: 3, code: 'CONNECTION_REFUSED', says: /connection refused by 127\.0\.0\.1:\d+/ },
      { name: 'a wrong password', url: async () => urlOf({ ...good, password: wrongPassword }), exit: 3, code: 'AUTHENTICATION_FAILED', says: new RegExp(`password authentication failed for user "${role}"`) },
      { name: 'a missing database', url: async () => urlOf({ ...good, database: 'pw_no_such_db' }), exit: 3, code: 'DATABASE_MISSING', says: /database "pw_no_such_db" does not exist.*pipeweave db:init/ },
      { name: 'an unknown host', url: async () => urlOf({ ...good, host: 'no-such-host.invalid' }), exit: 3, code: 'HOST_NOT_FOUND', says: /cannot resolve the database host "no-such-host\.invalid"/ },
      { name: 'a malformed URL', url: async () => `postgres://${role}:${encodeURIComponent(password)}@${server.host}:99999999/x`, exit: 2, code: 'INVALID_URL', says: /not a valid connection string/ },
    ]

    it.each(cases().map((c) => [c.name, c] as const))('%s: exit code, one line naming the cause, within the connect timeout', async (_name, c) => {
      const url = await c.url()
      const human = await runCli(['db:status', '--url', url])
      expectOneLineFailure(human, c.exit, c.says)
      expect(human.ms).toBeLessThan(10_000) // DB_CONNECT_TIMEOUT_MS's default

      const machine = await runCli(['db:status', '--json', '--url', url])
      const error = expectJsonFailure(machine, c.exit, c.code)
      if (c.code === 'DATABASE_MISSING') expect(error.hint).toContain('pipeweave db:init')
      expect(machine.ms).toBeLessThan(10_000)

      for (const result of [human, machine]) {
        expect(result.stdout + result.stderr).not.toContain(password)
        expect(result.stdout + result.stderr).not.toContain(encodeURIComponent(password))
        expect(result.stdout + result.stderr).not.toContain(wrongPassword)
      }
    })

    it('a missing password fails at once: exit 3 naming it, not after the server gives up on the login', async () => {
      // The server waits (authentication_timeout, 60 s) for the password pg could not send; the
      // half-open login kept the process alive until the command's 3 s exit timer.
      const url = urlOf({ ...good, password: undefined })
      const human = await runCli(['db:ping', '--url', url])
      expectOneLineFailure(human, 3, new RegExp(`asks user "${role}" for a password and none was given`))
      const machine = await runCli(['db:ping', '--json'], { env: { DATABASE_URL: url } })
      expectJsonFailure(machine, 3, 'PASSWORD_REQUIRED')
      for (const result of [human, machine]) expect(result.ms).toBeLessThan(2500)
    })

    it('a server that never answers: exit 3 once DB_CONNECT_TIMEOUT_MS has passed', async () => {
      const env = { DATABASE_URL: urlOf({ ...good, port: blackHole.port }), DB_CONNECT_TIMEOUT_MS: '1000' }
      const human = await runCli(['db:ping'], { env })
      expectOneLineFailure(human, 3, /no answer from 127\.0\.0\.1:\d+ within 1000 ms/)
      expect(human.ms).toBeGreaterThanOrEqual(1000)
      expect(human.ms).toBeLessThan(10_000)
      expect(blackHole.connections()).toBeGreaterThan(0)
      expectJsonFailure(await runCli(['db:ping', '--json'], { env }), 3, 'CONNECT_TIMEOUT')
    })

    it('shows the stack trace only with --verbose or DEBUG=pipeweave*', async () => {
      const url = urlOf({ ...good, database: 'pw_no_such_db' })
      for (const result of [await runCli(['db:ping', '--url', url, '--verbose']), await runCli(['db:ping', '--url', url], { env: { DEBUG: 'pipeweave*' } })]) {
        expect(result.code).toBe(3)
        expect(result.stderr).toMatch(/^error: database "pw_no_such_db" does not exist/)
        expect(result.stderr).toMatch(/\n\s+at /)
        expect(result.stderr).not.toContain(password)
      }
    })
  })

  describe('libpq fidelity (SPEC §1)', () => {
    /** libpq's conninfo quoting: single quotes, a backslash before ' and \\. */
    const quote = (value: string) => `'${value.replace(/[\\']/g, (c) => `\\${c}`)}'`
    const conninfoOf = (t: Target) =>
      `host=${t.host} port=${t.port} dbname=${quote(t.database)} user=${quote(t.user)}${t.password === undefined ? '' : ` password=${quote(t.password)}`}`

    it('takes a key=value conninfo string in DATABASE_URL or --url, as psql does', async () => {
      const conninfo = conninfoOf(good)
      for (const result of [await runCli(['db:ping', '--json'], { env: { DATABASE_URL: conninfo } }), await runCli(['db:ping', '--json', '--url', conninfo])]) {
        expect(result.code).toBe(0)
        expect(json(result).target).toBe(`postgres://${role}:****@${server.host}:${server.port}/${db.name}`)
        expect(result.stdout + result.stderr).not.toContain(password)
      }
    })

    it('PGSERVICE names a service of PGSERVICEFILE: the server it defines, not the embedded database', async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-pgservice-'))
      try {
        const file = path.join(dir, 'pg_service.conf')
        // A service file's values are the rest of the line, unquoted (libpq).
        fs.writeFileSync(file, `# services\n[pipeweave-test]\nhost=${good.host}\nport=${good.port}\ndbname=${good.database}\nuser=${good.user}\npassword=${good.password}\n`)
        const result = await runCli(['db:ping', '--json'], { env: { PGSERVICE: 'pipeweave-test', PGSERVICEFILE: file, HOME: dir } })
        expect(result.code).toBe(0)
        expect(json(result)).toMatchObject({ target: `postgres://${role}:****@${server.host}:${server.port}/${db.name}`, embedded: false })
        expect(result.stderr).not.toContain('embedded')
        expect(result.stdout + result.stderr).not.toContain(password)
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    })

    it('PGAPPNAME (or application_name in the URL) names the sessions on an external server', async () => {
      const holder = await db.pool.connect()
      try {
        await holder.query(`SELECT pg_advisory_lock(${MIGRATION_LOCK_KEY})`)
        const viaEnv = startCli(['db:migrate', '--lock-timeout', '60', '--dry-run'], { env: { DATABASE_URL: urlOf(good), PGAPPNAME: 'nightly-cron' } })
        const viaUrl = startCli(['db:migrate', '--lock-timeout', '60', '--dry-run'], { env: { DATABASE_URL: `${urlOf(good)}?application_name=deploy-script`, PGAPPNAME: 'loses' } })
        for (const name of ['nightly-cron', 'deploy-script']) {
          await waitFor(async () => (await db.pool.query(
            'SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND application_name = $2', [db.name, name])).rowCount, { what: `a session named ${name}` })
        }
        await holder.query(`SELECT pg_advisory_unlock(${MIGRATION_LOCK_KEY})`)
        expect((await viaEnv.done).code).toBe(0)
        expect((await viaUrl.done).code).toBe(0)
      } finally {
        await holder.query('SELECT pg_advisory_unlock_all()')
        holder.release()
      }
    })

    it('DB_SSL_MODE is the sslmode of the DB_* source: require fails against a server without TLS, naming it', async () => {
      const given = give('DB_*', good)
      const result = await runCli(['db:ping'], { env: { ...given.env, DB_SSL_MODE: 'require' } })
      expectOneLineFailure(result, 3, /does not accept TLS, and DB_SSL_MODE requires it/)
      expect((await runCli(['db:ping'], { env: { ...given.env, DB_SSL_MODE: 'disable' } })).code).toBe(0)
    })

    it('warns once on stderr about a DB_* or PIPEWEAVE_* variable that looks like a typo, and passes the application\'s own silently', async () => {
      const env = { DATABASE_URL: urlOf(good) }
      const typo = await runCli(['db:ping', '--json'], { env: { ...env, DB_HOSTT: 'db.internal', DB_ENGINE: 'postgres' } })
      expect(typo.code).toBe(0)
      expect(json(typo).target).toContain(db.name)
      expect(typo.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^warning: DB_HOSTT .*DB_HOST\b/)])
      const quiet = await runCli(['db:ping'], { env: { ...env, DB_ENGINE: 'postgres', DB_MIGRATIONS_DIR: 'db' } })
      expect({ code: quiet.code, stderr: quiet.stderr }).toEqual({ code: 0, stderr: '' })
    })

    it('connect_timeout in the URL and PGCONNECT_TIMEOUT (seconds) bound the connect, as DB_CONNECT_TIMEOUT_MS does', async () => {
      const blackHole = await blackHoleServer()
      try {
        const silent = urlOf({ ...good, port: blackHole.port })
        for (const env of [{ DATABASE_URL: `${silent}?connect_timeout=2` }, { DATABASE_URL: silent, PGCONNECT_TIMEOUT: '2' }]) {
          const result = await runCli(['db:ping'], { env })
          expectOneLineFailure(result, 3, /no answer from 127\.0\.0\.1:\d+ within 2000 ms/)
          expect(result.ms).toBeGreaterThanOrEqual(2000)
          expect(result.ms).toBeLessThan(9000)
        }
      } finally {
        await blackHole.close()
      }
    })
  })

  describe('a password given by any source never shows (SPEC §1)', () => {
    const givers: Array<[string, Source, 'DB_PASS' | 'DB_PASSWORD']> = [
      ['--url', 'url', 'DB_PASS'], ['--password', 'flags', 'DB_PASS'], ['DATABASE_URL', 'DATABASE_URL', 'DB_PASS'],
      ['DB_PASS', 'DB_*', 'DB_PASS'], ['DB_PASSWORD', 'DB_*', 'DB_PASSWORD'], ['PGPASSWORD', 'PG*', 'DB_PASS'],
    ]
    const commands = ['db:ping', 'db:status', 'db:migrate', 'db:cleanup', 'db:validate']

    it.each(givers)('given by %s: not on success, wrong password, refused port, missing database, with --verbose', async (_name, source, variable) => {
      const port = await unusedPort()
      const runs = [
        { target: good, command: 'db:ping', exit: 0 },
        { target: { ...good, password: wrongPassword }, command: commands[givers.findIndex((g) => g[0] === _name) % commands.length], exit: 3 },
        { target: { ...good, port }, command: 'db:status', exit: 3 },
        { target: { ...good, database: 'pw_no_such_db' }, command: 'db:cleanup', exit: 3 },
      ]
      const results = await inTurn(runs, 2, (run) => {
        const given = give(source, run.target, variable)
        return runCli([run.command, '--verbose', ...given.args], { env: { ...given.env, DEBUG: 'pipeweave*' } })
      })
      results.forEach((result, i) => {
        // db:validate checks the files alone when the database cannot be reached (exit 0, a warning).
        expect(result.code).toBe(runs[i].command === 'db:validate' ? 0 : runs[i].exit)
        const output = result.stdout + result.stderr
        for (const secret of [password, wrongPassword]) {
          expect(output).not.toContain(secret)
          expect(output).not.toContain(encodeURIComponent(secret))
        }
      })
    })
  })
})
