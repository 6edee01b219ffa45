/**
 * Connection resolution (SPEC §1) as the pure function it is: flags and environment in, one
 * target out. The CLI-level proof that each source reaches the server is in connection.test.ts.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {
  CONNECTION_DEFAULTS, KNOWN_SETTINGS, type ConnectionFlags, type ExternalTarget, describeTarget, resolveConnection, resolvePoolSettings, settingTypos,
} from '../src/db/config'
import { tlsOptions } from '../src/db/database'
import { UsageError } from '../src/errors'

type Env = Record<string, string | undefined>

function external(flags: ConnectionFlags, env: Env): ExternalTarget {
  const target = resolveConnection(flags, env)
  if (target.kind !== 'external') throw new Error(`expected an external target, got ${JSON.stringify(target)}`)
  return target
}

function usageError(fn: () => unknown): UsageError {
  try {
    fn()
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError)
    return error as UsageError
  }
  throw new Error('expected a UsageError')
}

const osUser = os.userInfo().username

describe('resolveConnection: the first source present wins as a whole', () => {
  const all: { flags: ConnectionFlags; env: Env } = {
    flags: { url: 'postgres://u1:p1@h1:1001/d1', host: 'h2', port: 1002, database: 'd2', user: 'u2', password: 'p2' },
    env: {
      DATABASE_URL: 'postgres://u3:p3@h3:1003/d3',
      DB_HOST: 'h4', DB_PORT: '1004', DB_NAME: 'd4', DB_USER: 'u4', DB_PASS: 'p4',
      PGHOST: 'h5', PGPORT: '1005', PGDATABASE: 'd5', PGUSER: 'u5', PGPASSWORD: 'p5',
    },
  }

  it('takes --url over everything', () => {
    expect(external(all.flags, all.env)).toMatchObject({ source: '--url', host: 'h1', port: 1001, database: 'd1', user: 'u1', password: 'p1' })
  })

  it('takes the connection flags over the environment', () => {
    const { url: _url, ...flags } = all.flags
    expect(external(flags, all.env)).toMatchObject({ source: 'flags', host: 'h2', port: 1002, database: 'd2', user: 'u2', password: 'p2' })
  })

  it('takes DATABASE_URL over DB_* and PG*', () => {
    expect(external({}, all.env)).toMatchObject({ source: 'DATABASE_URL', host: 'h3', port: 1003, database: 'd3', user: 'u3', password: 'p3' })
  })

  it('takes DB_* over PG*', () => {
    const { DATABASE_URL: _u, ...env } = all.env
    expect(external({}, env)).toMatchObject({ source: 'DB_*', host: 'h4', port: 1004, database: 'd4', user: 'u4', password: 'p4' })
  })

  it('takes the libpq variables last', () => {
    const env = { PGHOST: 'h5', PGPORT: '1005', PGDATABASE: 'd5', PGUSER: 'u5', PGPASSWORD: 'p5' }
    expect(external({}, env)).toMatchObject({ source: 'PG*', host: 'h5', port: 1005, database: 'd5', user: 'u5', password: 'p5' })
  })

  it('uses the embedded database when nothing is configured (empty values count as unset)', () => {
    expect(resolveConnection({}, {})).toEqual({ kind: 'embedded' })
    expect(resolveConnection({ url: '' }, { DATABASE_URL: '', DB_HOST: '', PGUSER: '' })).toEqual({ kind: 'embedded' })
  })

  it.each([
    ['a lone --host', { host: 'h' }, {}, 'flags'],
    ['a lone --port', { port: 6543 }, {}, 'flags'],
    ['a lone --password', { password: 'x' }, {}, 'flags'],
    ['a lone DB_HOST', {}, { DB_HOST: 'h' }, 'DB_*'],
    ['a lone DB_PASSWORD', {}, { DB_PASSWORD: 'x' }, 'DB_*'],
    ['a lone PGUSER', {}, { PGUSER: 'someone' }, 'PG*'],
    ['a lone PGHOST', {}, { PGHOST: 'h' }, 'PG*'],
  ] as Array<[string, ConnectionFlags, Env, string]>)('treats %s as a present source (no embedded database)', (_what, flags, env, source) => {
    expect(external(flags, env).source).toBe(source)
  })

  it('does not mix a losing source into the winner: DB_PASS is not used with DATABASE_URL', () => {
    const target = external({}, { DATABASE_URL: 'postgres://app@db:5432/app', DB_PASS: 'from-db-pass', DB_NAME: 'other' })
    expect(target.password).toBeUndefined()
    expect(target.database).toBe('app')
  })

  it('accepts DB_PASSWORD for DB_PASS, and prefers DB_PASS when both are set', () => {
    expect(external({}, { DB_HOST: 'h', DB_PASSWORD: 'b' }).password).toBe('b')
    expect(external({}, { DB_HOST: 'h', DB_PASS: 'a', DB_PASSWORD: 'b' }).password).toBe('a')
  })
})

describe('resolveConnection: parts a source leaves out', () => {
  it('fall back to the libpq variables for a URL, as libpq does', () => {
    const target = external({ url: 'postgres://db.internal' }, { PGPORT: '6000', PGUSER: 'pguser', PGPASSWORD: 'pgpass', PGDATABASE: 'pgdb' })
    expect(target).toMatchObject({ host: 'db.internal', port: 6000, user: 'pguser', password: 'pgpass', database: 'pgdb' })
  })

  it('then to the defaults: port 5432, the OS user, a database named after the user, localhost', () => {
    expect(external({ url: 'postgres://db.internal' }, {})).toMatchObject({ host: 'db.internal', port: CONNECTION_DEFAULTS.port, user: osUser, database: osUser })
    expect(external({}, { PGUSER: 'alice' })).toMatchObject({ host: 'localhost', port: 5432, user: 'alice', database: 'alice' })
  })

  it('fall back for DB_* too (DB_PORT defaults to 5432)', () => {
    expect(external({}, { DB_HOST: 'h', DB_USER: 'u' })).toMatchObject({ host: 'h', port: 5432, user: 'u', database: 'u' })
  })
})

describe('resolveConnection: URLs', () => {
  it('decodes a percent-encoded user, password and database', () => {
    const password = 'p@ss:w/rd %x#?'
    const url = `postgresql://us%40er:${encodeURIComponent(password)}@h:5433/my%20db`
    expect(external({ url }, {})).toMatchObject({ user: 'us@er', password, host: 'h', port: 5433, database: 'my db' })
  })

  it('reads an IPv6 host', () => {
    expect(external({ url: 'postgres://u@[::1]:5440/d' }, {})).toMatchObject({ host: '::1', port: 5440 })
  })

  it('reads a Unix socket directory from ?host=, with or without an empty host part (Cloud SQL)', () => {
    const socket = '/cloudsql/project:region:instance'
    for (const url of [`postgres://u:p@/d?host=${socket}`, `postgres://u:p@localhost/d?host=${encodeURIComponent(socket)}`]) {
      const target = external({ url }, {})
      expect(target).toMatchObject({ host: socket, database: 'd', user: 'u' })
      expect(target.ssl.mode).toBe('disable')
    }
  })

  it('takes user, password, port and dbname from query parameters', () => {
    expect(external({ url: 'postgres://h/?user=u&password=p&port=7000&dbname=d' }, {}))
      .toMatchObject({ host: 'h', user: 'u', password: 'p', port: 7000, database: 'd' })
  })

  it.each([
    'not a url',
    'mysql://u:p@h/d',
    'postgres://u:p@h:notaport/d',
    'postgres://u:p%zz@h/d',
  ])('refuses %j as exit 2 naming the source, never echoing it', (url) => {
    const error = usageError(() => resolveConnection({}, { DATABASE_URL: url }))
    expect(error.exitCode).toBe(2)
    expect(error.code).toBe('INVALID_URL')
    expect(error.message).toContain('DATABASE_URL')
    expect(error.message).not.toContain(url)
  })

  it('refuses a port out of range from any source', () => {
    expect(usageError(() => resolveConnection({}, { DB_HOST: 'h', DB_PORT: '99999' })).code).toBe('INVALID_PORT')
    expect(usageError(() => resolveConnection({}, { PGPORT: 'abc' })).code).toBe('INVALID_PORT')
  })
})

describe('resolveConnection: TLS', () => {
  const ssl = (flags: ConnectionFlags, env: Env) => external(flags, env).ssl

  it('uses no TLS for a loopback host or a socket unless asked', () => {
    expect(ssl({ url: 'postgres://u@localhost/d' }, {}).mode).toBe('disable')
    expect(ssl({ url: 'postgres://u@127.0.0.1/d' }, { NODE_ENV: 'production' }).mode).toBe('disable')
    expect(ssl({ host: '/var/run/postgresql' }, { PGSSLMODE: 'require' }).mode).toBe('disable')
  })

  it('uses libpq\'s default prefer for a remote host, and verified TLS under NODE_ENV=production', () => {
    expect(ssl({ url: 'postgres://u@db.internal/d' }, {}).mode).toBe('prefer')
    expect(ssl({ url: 'postgres://u@db.internal/d' }, { NODE_ENV: 'production' })).toMatchObject({ mode: 'verify-full', setting: 'NODE_ENV=production' })
  })

  it.each(['disable', 'prefer', 'require', 'verify-ca', 'verify-full', 'no-verify'])('honours sslmode=%s in the URL with libpq\'s meaning', (mode) => {
    expect(ssl({ url: `postgres://u@db.internal/d?sslmode=${mode}` }, { NODE_ENV: 'production', DB_SSL: 'true' })).toMatchObject({ mode, setting: 'sslmode in the URL' })
  })

  it('counts a lone DB_SSL or PGSSLMODE as a present source (no embedded database)', () => {
    expect(resolveConnection({}, { DB_SSL: 'true' })).toMatchObject({ kind: 'external', source: 'DB_*', host: 'localhost' })
    expect(resolveConnection({}, { PGSSLMODE: 'require' })).toMatchObject({ kind: 'external', source: 'PG*', host: 'localhost' })
  })

  it('honours PGSSLMODE, and lets an explicit setting win over the production default', () => {
    expect(ssl({}, { DB_HOST: 'db.internal', PGSSLMODE: 'require' })).toMatchObject({ mode: 'require', setting: 'PGSSLMODE' })
    expect(ssl({}, { DB_HOST: 'db.internal', PGSSLMODE: 'disable', NODE_ENV: 'production' }).mode).toBe('disable')
  })

  it('reads --ssl and DB_SSL=true as verified TLS, DB_SSL=no-verify as the explicit opt-out', () => {
    expect(ssl({ host: 'db.internal', ssl: true }, {})).toMatchObject({ mode: 'verify-full', setting: '--ssl' })
    expect(ssl({}, { DB_HOST: 'db.internal', DB_SSL: 'true' })).toMatchObject({ mode: 'verify-full', setting: 'DB_SSL' })
    expect(ssl({}, { DB_HOST: 'db.internal', DB_SSL: 'no-verify' }).mode).toBe('no-verify')
    expect(ssl({}, { DB_HOST: 'db.internal', DB_SSL: 'false' }).mode).toBe('disable')
  })

  it('reads the CA and client certificate files, and refuses an unreadable one (exit 2)', () => {
    const ca = path.resolve(__dirname, 'fixtures', 'tls', 'server.crt')
    expect(ssl({}, { DB_HOST: 'db.internal', DB_SSL: 'true', DB_SSL_CA: ca }).ca).toContain('BEGIN CERTIFICATE')
    expect(ssl({}, { DB_HOST: 'db.internal', PGSSLMODE: 'verify-ca', PGSSLROOTCERT: ca }).ca).toContain('BEGIN CERTIFICATE')
    expect(usageError(() => resolveConnection({}, { DB_HOST: 'db.internal', DB_SSL_CA: '/nonexistent/ca.pem' })).code).toBe('TLS_FILE_UNREADABLE')
  })

  it('refuses an unknown sslmode (exit 2)', () => {
    expect(usageError(() => resolveConnection({ url: 'postgres://h/d?sslmode=sometimes' }, {})).code).toBe('INVALID_SSLMODE')
    expect(usageError(() => resolveConnection({}, { DB_HOST: 'h', DB_SSL: 'maybe' })).code).toBe('INVALID_SSLMODE')
  })
})

describe('tlsOptions', () => {
  const settings = (mode: Parameters<typeof tlsOptions>[0]['mode']) => ({ mode, setting: 'test' })

  it('turns TLS off for disable', () => {
    expect(tlsOptions(settings('disable'), 'db.internal')).toBe(false)
  })

  it.each(['prefer', 'require', 'no-verify'] as const)('encrypts without verifying for %s', (mode) => {
    expect(tlsOptions(settings(mode), 'db.internal')).toMatchObject({ rejectUnauthorized: false })
  })

  it('verifies the chain but not the host name for verify-ca', () => {
    const options = tlsOptions(settings('verify-ca'), 'db.internal') as { rejectUnauthorized: boolean; checkServerIdentity: () => unknown }
    expect(options.rejectUnauthorized).toBe(true)
    expect(options.checkServerIdentity()).toBeUndefined()
  })

  it('verifies chain and host for verify-full, passing the CA and client certificate', () => {
    const options = tlsOptions({ mode: 'verify-full', setting: 'test', ca: 'CA', cert: 'CERT', key: 'KEY' }, 'db.internal')
    expect(options).toMatchObject({ rejectUnauthorized: true, ca: 'CA', cert: 'CERT', key: 'KEY' })
    expect(options).not.toHaveProperty('checkServerIdentity')
    expect(options).toMatchObject({ servername: 'db.internal' })
  })

  it('sends no SNI server name for an IP address (Node warns on stderr), and still verifies', () => {
    for (const host of ['10.0.0.5', '::1']) {
      const options = tlsOptions(settings('verify-full'), host)
      expect(options).toMatchObject({ rejectUnauthorized: true })
      expect(options).not.toHaveProperty('servername')
    }
  })
})

describe('describeTarget', () => {
  it('masks the password and never shows it', () => {
    const target = external({ url: 'postgres://app:s3cret@db.internal:6432/orders' }, {})
    expect(describeTarget(target)).toBe('postgres://app:****@db.internal:6432/orders')
  })

  it('shows no mask when there is no password, brackets an IPv6 host and names a socket directory', () => {
    expect(describeTarget(external({ url: 'postgres://app@[::1]:5432/d' }, {}))).toBe('postgres://app@[::1]:5432/d')
    expect(describeTarget(external({ url: 'postgres://app:pw@/d?host=/cloudsql/p:r:i' }, {}))).toBe('postgres://app:****@/d?host=/cloudsql/p:r:i')
  })
})

describe('resolvePoolSettings', () => {
  it('has the SPEC defaults', () => {
    expect(resolvePoolSettings({})).toEqual({ max: 10, min: 0, connectTimeoutMs: 10_000, idleTimeoutMs: 30_000, slowQueryMs: 1000 })
  })

  it('reads every setting from the environment', () => {
    expect(resolvePoolSettings({
      DB_POOL_MAX: '3', DB_CONNECT_TIMEOUT_MS: '2500', DB_POOL_IDLE_TIMEOUT_MS: '100', DB_STATEMENT_TIMEOUT_MS: '5000', DB_SLOW_QUERY_MS: '50',
    })).toEqual({ max: 3, min: 0, connectTimeoutMs: 2500, idleTimeoutMs: 100, statementTimeoutMs: 5000, slowQueryMs: 50 })
  })

  it.each([['DB_POOL_MAX', '0'], ['DB_POOL_MAX', 'ten'], ['DB_CONNECT_TIMEOUT_MS', '1.5'], ['DB_STATEMENT_TIMEOUT_MS', '-1']])(
    'refuses %s=%s as invalid configuration (exit 2)', (name, value) => {
      const error = usageError(() => resolvePoolSettings({ [name]: value }))
      expect(error.exitCode).toBe(2)
      expect(error.message).toContain(name)
    })
})

describe('libpq fidelity: conninfo strings and connection options (SPEC §1)', () => {
  it('reads a key=value conninfo string from --url or DATABASE_URL, quoted values and spaces around = included', () => {
    const conninfo = `host=db.internal port = 6000 dbname='my app' user=alice password='it\\'s a \\\\ pass'`
    expect(external({}, { DATABASE_URL: conninfo })).toMatchObject({
      source: 'DATABASE_URL', host: 'db.internal', port: 6000, database: 'my app', user: 'alice', password: "it's a \\ pass",
    })
    expect(external({ url: 'host=/cloudsql/p:r:i dbname=d' }, {})).toMatchObject({ source: '--url', host: '/cloudsql/p:r:i', database: 'd' })
  })

  it('fills what a conninfo string leaves out from the libpq variables, as a URL does', () => {
    expect(external({}, { DATABASE_URL: 'dbname=app', PGHOST: 'pg.internal', PGUSER: 'bob' })).toMatchObject({ host: 'pg.internal', user: 'bob', database: 'app' })
  })

  it.each([
    ['a keyword without a value', 'host=h dbname'],
    ['an unterminated quote', "host=h password='secret-value"],
    ['something that is not a keyword', 'mysql://h/d?x=1'],
  ])('refuses %s as exit 2 naming the source, never echoing a value', (_what, text) => {
    const error = usageError(() => resolveConnection({}, { DATABASE_URL: text }))
    expect(error.code).toBe('INVALID_URL')
    expect(error.message).toContain('DATABASE_URL')
    expect(error.message).not.toContain('secret-value')
  })

  it('refuses a connection option it does not know (a typo) in a URL or conninfo, naming it (exit 2)', () => {
    for (const [flags, env] of [[{ url: 'postgres://h/d?sslmdoe=require' }, {}], [{}, { DATABASE_URL: 'host=h sslmdoe=require' }]] as Array<[ConnectionFlags, Env]>) {
      const error = usageError(() => resolveConnection(flags, env))
      expect(error.code).toBe('UNKNOWN_CONNECTION_OPTION')
      expect(error.message).toContain('"sslmdoe"')
    }
  })

  it('refuses a libpq option that would change the target or its security and that pipeweave does not implement', () => {
    for (const option of ['hostaddr=10.0.0.1', 'require_auth=scram-sha-256', 'target_session_attrs=read-write', 'sslcrl=/etc/crl.pem', 'replication=database']) {
      const error = usageError(() => resolveConnection({}, { DATABASE_URL: `host=h ${option}` }))
      expect(error.code).toBe('UNSUPPORTED_CONNECTION_OPTION')
      expect(error.message).toContain(`"${option.split('=')[0]}"`)
    }
  })

  it('accepts the libpq options that change nothing pipeweave relies on', () => {
    expect(external({ url: 'postgres://h/d?keepalives=1&keepalives_idle=30&fallback_application_name=x&target_session_attrs=any&client_encoding=UTF8' }, {}).host).toBe('h')
  })

  it('reads options from the URL, then PGOPTIONS', () => {
    expect(external({ url: 'postgres://h/d?options=-c%20work_mem%3D8MB' }, { PGOPTIONS: '-c geqo=off' }).options).toBe('-c work_mem=8MB')
    expect(external({ url: 'postgres://h/d' }, { PGOPTIONS: '-c geqo=off' }).options).toBe('-c geqo=off')
  })

  it('takes application_name from the URL or conninfo, then PGAPPNAME; PGAPPNAME alone is no source', () => {
    expect(external({ url: 'postgres://h/d?application_name=nightly' }, { PGAPPNAME: 'env-name' }).applicationName).toBe('nightly')
    expect(external({}, { DATABASE_URL: 'host=h application_name=nightly' }).applicationName).toBe('nightly')
    expect(external({}, { DB_HOST: 'h', PGAPPNAME: 'env-name' }).applicationName).toBe('env-name')
    expect(external({ url: 'postgres://h/d' }, {}).applicationName).toBeUndefined()
    expect(resolveConnection({}, { PGAPPNAME: 'env-name' })).toEqual({ kind: 'embedded' })
  })

  it('takes connect_timeout (seconds, at least 2, 0 = none) from the URL, then PGCONNECT_TIMEOUT; PGCONNECT_TIMEOUT alone is no source', () => {
    expect(external({ url: 'postgres://h/d?connect_timeout=5' }, { PGCONNECT_TIMEOUT: '9' }).connectTimeoutMs).toBe(5000)
    expect(external({}, { DB_HOST: 'h', PGCONNECT_TIMEOUT: '9' }).connectTimeoutMs).toBe(9000)
    expect(external({}, { DB_HOST: 'h', PGCONNECT_TIMEOUT: '1' }).connectTimeoutMs).toBe(2000)
    expect(external({}, { DB_HOST: 'h', PGCONNECT_TIMEOUT: '0' }).connectTimeoutMs).toBe(0)
    expect(external({ url: 'postgres://h/d' }, {}).connectTimeoutMs).toBeUndefined()
    expect(resolveConnection({}, { PGCONNECT_TIMEOUT: '5' })).toEqual({ kind: 'embedded' })
    expect(usageError(() => resolveConnection({}, { DB_HOST: 'h', PGCONNECT_TIMEOUT: 'soon' })).code).toBe('INVALID_SETTING')
  })

  it('lets DB_CONNECT_TIMEOUT_MS win over connect_timeout and PGCONNECT_TIMEOUT, which win over the default', () => {
    const target = external({}, { DB_HOST: 'h', PGCONNECT_TIMEOUT: '9' })
    expect(resolvePoolSettings({ PGCONNECT_TIMEOUT: '9' }, target).connectTimeoutMs).toBe(9000)
    expect(resolvePoolSettings({ PGCONNECT_TIMEOUT: '9', DB_CONNECT_TIMEOUT_MS: '1500' }, target).connectTimeoutMs).toBe(1500)
    expect(resolvePoolSettings({}, external({ url: 'postgres://h/d' }, {})).connectTimeoutMs).toBe(CONNECTION_DEFAULTS.connectTimeoutMs)
  })
})

describe('libpq fidelity: PGSERVICE and the service files (SPEC §1)', () => {
  let dir: string
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-service-'))
    fs.mkdirSync(path.join(dir, 'home'))
    fs.mkdirSync(path.join(dir, 'sysconf'))
    fs.writeFileSync(path.join(dir, 'services.conf'), [
      '# the team\'s services',
      '[reporting]',
      'host=reports.internal',
      'port = 6432',
      'dbname=reports',
      'user=reporter',
      'password=from-service',
      'sslmode=require',
      'application_name=reports-cron',
      '',
      '[other]',
      'host=other.internal',
    ].join('\n'))
    fs.writeFileSync(path.join(dir, 'home', '.pg_service.conf'), '[mine]\nhost=mine.internal\ndbname=mine\n')
    fs.writeFileSync(path.join(dir, 'sysconf', 'pg_service.conf'), '[mine]\nhost=shadowed.internal\n[shared]\nhost=shared.internal\ndbname=shared\n')
    fs.writeFileSync(path.join(dir, 'typo.conf'), '[bad]\nhost=h\nsslmdoe=require\n')
    fs.writeFileSync(path.join(dir, 'nested.conf'), '[outer]\nservice=inner\n')
    fs.writeFileSync(path.join(dir, 'noequals.conf'), '[broken]\nhost h\n')
  })
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

  const files = () => ({ HOME: path.join(dir, 'home'), PGSYSCONFDIR: path.join(dir, 'sysconf') })

  it('makes PGSERVICE a present source at the libpq level, read from PGSERVICEFILE', () => {
    const target = external({}, { ...files(), PGSERVICE: 'reporting', PGSERVICEFILE: path.join(dir, 'services.conf') })
    expect(target).toMatchObject({
      source: 'PG*', host: 'reports.internal', port: 6432, database: 'reports', user: 'reporter', password: 'from-service', applicationName: 'reports-cron',
    })
    expect(target.ssl.mode).toBe('require')
  })

  it('reads ~/.pg_service.conf without PGSERVICEFILE, then PGSYSCONFDIR/pg_service.conf; the first that defines the service wins', () => {
    expect(external({}, { ...files(), PGSERVICE: 'mine' })).toMatchObject({ host: 'mine.internal', database: 'mine' })
    expect(external({}, { ...files(), PGSERVICE: 'shared' })).toMatchObject({ host: 'shared.internal', database: 'shared' })
  })

  it('lets a service fill what a higher source leaves out, ahead of the PG* variables, as libpq does', () => {
    const env = { ...files(), PGSERVICEFILE: path.join(dir, 'services.conf'), PGUSER: 'pg-user', PGPORT: '7777' }
    expect(external({}, { ...env, DATABASE_URL: 'postgres://db.internal/app?service=reporting' }))
      .toMatchObject({ source: 'DATABASE_URL', host: 'db.internal', database: 'app', user: 'reporter', port: 6432 })
    expect(external({}, { ...env, PGSERVICE: 'reporting', DB_HOST: 'db.internal' }))
      .toMatchObject({ source: 'DB_*', host: 'db.internal', user: 'reporter' })
    expect(external({}, { ...env, DATABASE_URL: 'host=db.internal service=reporting user=own' }))
      .toMatchObject({ host: 'db.internal', user: 'own', database: 'reports' })
  })

  it('refuses a service that no file defines (exit 2), naming the files looked in', () => {
    const error = usageError(() => resolveConnection({}, { ...files(), PGSERVICE: 'nowhere', PGSERVICEFILE: path.join(dir, 'services.conf') }))
    expect(error.code).toBe('SERVICE_NOT_FOUND')
    expect(error.message).toContain('"nowhere"')
    expect(error.message).toContain(path.join(dir, 'services.conf'))
    expect(error.message).toContain(path.join(dir, 'sysconf', 'pg_service.conf'))
  })

  it.each([
    ['an unknown option', 'typo.conf', 'bad', /"sslmdoe".*line 3/],
    ['a nested service', 'nested.conf', 'outer', /nested service/],
    ['a line without =', 'noequals.conf', 'broken', /syntax error.*line 2/],
  ])('refuses a service file with %s (exit 2), naming the file and line', (_what, file, service, says) => {
    const error = usageError(() => resolveConnection({}, { ...files(), PGSERVICE: service, PGSERVICEFILE: path.join(dir, file) }))
    expect(error.exitCode).toBe(2)
    expect(error.message).toContain(path.join(dir, file))
    expect(error.message).toMatch(says)
  })
})

describe('libpq fidelity: channel_binding (SPEC §1)', () => {
  it('reads channel_binding from the URL or conninfo, then PGCHANNELBINDING; unset leaves node-postgres\'s default', () => {
    expect(external({ url: 'postgres://db.internal/d?channel_binding=prefer' }, { PGCHANNELBINDING: 'require' }).channelBinding).toBe('prefer')
    expect(external({}, { DB_HOST: 'db.internal', PGCHANNELBINDING: 'require' }).channelBinding).toBe('require')
    expect(external({ url: 'postgres://db.internal/d' }, {}).channelBinding).toBeUndefined()
    expect(resolveConnection({}, { PGCHANNELBINDING: 'require' })).toEqual({ kind: 'embedded' })
  })

  it('makes TLS required where the default would allow plain connections, and keeps a stricter sslmode', () => {
    expect(external({ url: 'postgres://db.internal/d?channel_binding=require' }, {}).ssl).toMatchObject({ mode: 'require', setting: 'channel_binding=require' })
    expect(external({ url: 'postgres://localhost/d?channel_binding=require' }, {}).ssl.mode).toBe('require')
    expect(external({ url: 'postgres://db.internal/d?channel_binding=require&sslmode=prefer' }, {}).ssl.mode).toBe('require')
    expect(external({ url: 'postgres://db.internal/d?channel_binding=require&sslmode=verify-full' }, {}).ssl.mode).toBe('verify-full')
    expect(external({ url: 'postgres://localhost/d?channel_binding=prefer' }, {}).ssl.mode).toBe('disable')
  })

  it('refuses require where TLS cannot be, and a value libpq does not know (exit 2)', () => {
    expect(usageError(() => resolveConnection({ url: 'postgres://h/d?channel_binding=require&sslmode=disable' }, {})).code).toBe('CHANNEL_BINDING_NEEDS_TLS')
    expect(usageError(() => resolveConnection({}, { DB_HOST: 'h', DB_SSL: 'false', PGCHANNELBINDING: 'require' })).code).toBe('CHANNEL_BINDING_NEEDS_TLS')
    expect(usageError(() => resolveConnection({ host: '/var/run/postgresql' }, { PGCHANNELBINDING: 'require' })).code).toBe('CHANNEL_BINDING_NEEDS_TLS')
    expect(usageError(() => resolveConnection({}, { DB_HOST: 'h', PGCHANNELBINDING: 'always' })).message).toContain('PGCHANNELBINDING')
  })
})

describe('the seeds\' aliases: DB_POOL_SIZE, DB_POOL_MIN, DB_SSL_MODE (SPEC §1)', () => {
  it('reads DB_POOL_SIZE as DB_POOL_MAX (DB_POOL_MAX wins when both are set)', () => {
    expect(resolvePoolSettings({ DB_POOL_SIZE: '4' }).max).toBe(4)
    expect(resolvePoolSettings({ DB_POOL_SIZE: '4', DB_POOL_MAX: '6' }).max).toBe(6)
    expect(usageError(() => resolvePoolSettings({ DB_POOL_SIZE: 'lots' })).message).toContain('DB_POOL_SIZE')
  })

  it('reads DB_POOL_MIN (0 by default), at most the pool size', () => {
    expect(resolvePoolSettings({}).min).toBe(0)
    expect(resolvePoolSettings({ DB_POOL_MIN: '2', DB_POOL_SIZE: '5' }).min).toBe(2)
    expect(usageError(() => resolvePoolSettings({ DB_POOL_MIN: '12' })).message).toMatch(/DB_POOL_MIN.*DB_POOL_MAX/)
  })

  it('reads DB_SSL_MODE as an sslmode of the DB_* source (DB_SSL wins when both are set), and a lone one as a present source', () => {
    expect(external({}, { DB_HOST: 'db.internal', DB_SSL_MODE: 'require' }).ssl).toMatchObject({ mode: 'require', setting: 'DB_SSL_MODE' })
    expect(external({}, { DB_HOST: 'db.internal', DB_SSL_MODE: 'require', DB_SSL: 'true' }).ssl.mode).toBe('verify-full')
    expect(external({}, { DB_HOST: 'db.internal', DB_SSL_MODE: 'disable', PGSSLMODE: 'require' }).ssl.mode).toBe('disable')
    expect(resolveConnection({}, { DB_SSL_MODE: 'require' })).toMatchObject({ kind: 'external', source: 'DB_*' })
    expect(usageError(() => resolveConnection({}, { DB_HOST: 'h', DB_SSL_MODE: 'sometimes' })).message).toContain('DB_SSL_MODE')
  })

  it('makes no source of DB_POOL_* alone', () => {
    expect(resolveConnection({}, { DB_POOL_SIZE: '4', DB_POOL_MIN: '1', DB_POOL_MAX: '5' })).toEqual({ kind: 'embedded' })
  })
})

describe('settingTypos: a DB_* or PIPEWEAVE_* variable within edit distance 2 of a known name (SPEC §1)', () => {
  it.each([
    ['DB_HOSTT', 'DB_HOST'], ['DB_HSOT', 'DB_HOST'], ['DB_PASWORD', 'DB_PASSWORD'], ['DB_Host', 'DB_HOST'],
    ['DB_SLOW_QUERY_M', 'DB_SLOW_QUERY_MS'], ['PIPEWEAVE_HOEM', 'PIPEWEAVE_HOME'], ['PIPEWEAVE_SECRETKEY', 'PIPEWEAVE_SECRET_KEY'],
  ])('warns about %s, suggesting %s', (name, meant) => {
    expect(settingTypos({ [name]: 'x' })).toEqual([{ name, meant }])
  })

  it('passes the application\'s own DB_* variables, known names, names further off and other variables silently', () => {
    expect(settingTypos({
      DB_STATEMENT_TIMEOUT: '3', PIPEWEAVE_SECRET: 'x',
      DB_ENGINE: 'postgres', DB_MIGRATIONS_TABLE: 'm', DB_HOST: 'h', DB_POOL_SIZE: '3', PIPEWEAVE_SCHEMA: 's', PIPEWEAVE_DASHBOARD_TOKEN: 't',
      PGHOSTT: 'x', HOSTT: 'x', db_hostt: 'x',
    })).toEqual([])
  })

  it('knows every name the SPEC and the code read', () => {
    for (const name of ['DB_HOST', 'DB_PORT', 'DB_NAME', 'DB_USER', 'DB_PASS', 'DB_PASSWORD', 'DB_SSL', 'DB_SSL_MODE', 'DB_SSL_CA', 'DB_SSL_CERT',
      'DB_SSL_KEY', 'DB_POOL_MAX', 'DB_POOL_SIZE', 'DB_POOL_MIN', 'DB_POOL_IDLE_TIMEOUT_MS', 'DB_CONNECT_TIMEOUT_MS', 'DB_STATEMENT_TIMEOUT_MS',
      'DB_SLOW_QUERY_MS', 'DB_QUERY_TIMEOUT_MS', 'PIPEWEAVE_HOME', 'PIPEWEAVE_EMBEDDED', 'PIPEWEAVE_SECRET_KEY', 'PIPEWEAVE_NO_LISTEN',
      'PIPEWEAVE_HTTP_PORT', 'PIPEWEAVE_HTTP_HOST', 'PIPEWEAVE_SCHEMA', 'PIPEWEAVE_DASHBOARD_TOKEN', 'PIPEWEAVE_BREAKER_COOLDOWN_MS',
      'PIPEWEAVE_BREAKER_MAX_OPEN_MS', 'PIPEWEAVE_TEST_DATABASE_URL']) {
      expect(Object.keys(KNOWN_SETTINGS)).toContain(name)
    }
  })
})

describe('libpq fidelity: libpq variables pipeweave cannot honour (SPEC §1)', () => {
  it.each([
    ['PGHOSTADDR', '10.0.0.9'], ['PGREQUIREAUTH', 'scram-sha-256'], ['PGTARGETSESSIONATTRS', 'read-write'], ['PGSSLCRL', '/etc/crl.pem'],
  ])('refuses %s (it would change the server or its security) instead of ignoring it (exit 2)', (name, value) => {
    for (const env of [{ DATABASE_URL: 'postgres://db.internal/d' }, {}]) {
      const error = usageError(() => resolveConnection({}, { ...env, [name]: value }))
      expect(error.code).toBe('UNSUPPORTED_CONNECTION_OPTION')
      expect(error.message).toContain(name)
    }
  })

  it('accepts the harmless ones and the values that change nothing', () => {
    expect(external({ url: 'postgres://db.internal/d' }, { PGTARGETSESSIONATTRS: 'any', PGCLIENTENCODING: 'UTF8', PGSSLSNI: '1', PGGSSENCMODE: 'prefer' }).host).toBe('db.internal')
  })
})
