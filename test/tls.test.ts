/**
 * TLS (SPEC §1) against a fake endpoint that speaks just enough PostgreSQL to start TLS with a
 * self-signed certificate for `localhost`, and against the real test server (which has no TLS).
 * A handshake the client completed means it accepted the certificate. tls-server.test.ts proves
 * the same settings against a real PostgreSQL with ssl = on and a CA generated in the test.
 */
import { json, runCli } from './helpers/cli'
import { adminUrl, createTestDatabase, type TestDatabase } from './helpers/db'
import { type FakeServer, TLS_CA_FILE, tlsServer } from './helpers/fake-server'

describe('TLS', () => {
  let fake: FakeServer
  beforeAll(async () => { fake = await tlsServer() })
  afterAll(async () => { await fake.close() })

  const secret = 'tls-Secret-pw'
  const at = (host: string, query = '') => `postgres://app:${secret}@${host}:${fake.port}/app${query}`

  /** Run, and report whether the client completed a TLS handshake (accepted the certificate). */
  async function attempt(args: string[], env: Record<string, string> = {}) {
    const before = fake.handshakes()
    const result = await runCli(['db:ping', ...args], { env })
    expect(result.code).toBe(3)
    expect(result.stdout).toBe('')
    expect(result.stderr).not.toContain(secret)
    // One line, and no runtime warning (a TLS servername set to an IP address prints one).
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    return { ...result, accepted: fake.handshakes() > before }
  }

  it.each([
    ['--ssl', ['--ssl', '--host', '127.0.0.1', '--port', 'PORT', '--user', 'app', '--password', secret], {}],
    ['DB_SSL', [], { DB_SSL: 'true', DB_HOST: 'localhost', DB_PORT: 'PORT', DB_PASS: secret }],
    ['sslmode in the URL', ['--url', 'URL?sslmode=verify-full'], {}],
    ['PGSSLMODE', [], { PGSSLMODE: 'verify-ca', PGHOST: '127.0.0.1', PGPORT: 'PORT', PGPASSWORD: secret }],
  ] as Array<[string, string[], Record<string, string>]>)('refuses an unverifiable certificate asked for by %s, naming that setting (exit 3)', async (setting, args, env) => {
    const fill = (text: string) => text.replace('PORT', String(fake.port)).replace(/^URL/, at('127.0.0.1'))
    const result = await attempt(args.map(fill), Object.fromEntries(Object.entries(env).map(([k, v]) => [k, fill(v)])))
    expect(result.accepted).toBe(false)
    expect(result.stderr).toMatch(/^error: TLS certificate verification failed for (127\.0\.0\.1|localhost):\d+/)
    expect(result.stderr).toContain(`relax ${setting}`)
    expect(result.stderr).toContain('no-verify')

    if (setting === '--ssl') {
      const machine = await runCli(['db:ping', '--json', ...args.map(fill)], { env: Object.fromEntries(Object.entries(env).map(([k, v]) => [k, fill(v)])) })
      expect(machine.code).toBe(3)
      expect(json<{ error: { code: string } }>(machine).error.code).toBe('TLS_CERTIFICATE')
    }
  })

  it.each([
    ['DB_SSL=no-verify', [], { DB_SSL: 'no-verify', DB_HOST: '127.0.0.1', DB_PORT: 'PORT' }],
    ['sslmode=require', ['--url', 'URL?sslmode=require'], {}],
    ['sslmode=no-verify', ['--url', 'URL?sslmode=no-verify'], {}],
    ['verify-ca with the CA (host name not checked)', ['--url', 'URL?sslmode=verify-ca'], { DB_SSL_CA: TLS_CA_FILE }],
  ] as Array<[string, string[], Record<string, string>]>)('encrypts without rejecting the certificate for %s', async (_what, args, env) => {
    const fill = (text: string) => text.replace('PORT', String(fake.port)).replace(/^URL/, at('127.0.0.1'))
    const result = await attempt(args.map(fill), Object.fromEntries(Object.entries(env).map(([k, v]) => [k, fill(v)])))
    expect(result.accepted).toBe(true)
    // The fake hangs up after the handshake: a lost connection, not a certificate failure.
    expect(result.stderr).not.toMatch(/certificate/)
  })

  it('verify-full checks the host name: accepted for localhost, refused for 127.0.0.1 (the certificate names only localhost)', async () => {
    const byName = await attempt(['--url', at('localhost', `?sslmode=verify-full&sslrootcert=${encodeURIComponent(TLS_CA_FILE)}`)])
    expect(byName.accepted).toBe(true)

    const byAddress = await attempt(['--url', at('127.0.0.1', '?sslmode=verify-full')], { DB_SSL_CA: TLS_CA_FILE })
    expect(byAddress.accepted).toBe(false)
    expect(byAddress.stderr).toMatch(/TLS certificate verification failed for 127\.0\.0\.1:\d+/)
  })

  describe('on the local test server, which has no TLS', () => {
    let db: TestDatabase
    beforeAll(async () => { db = await createTestDatabase() })
    afterAll(async () => { await db.drop() })

    it('sslmode=prefer falls back to a plain connection', async () => {
      const url = new URL(db.url)
      url.searchParams.set('sslmode', 'prefer')
      const result = await runCli(['db:ping', '--json', '--url', url.toString()])
      expect(result.code).toBe(0)
      expect(json(result).tls).toBe(false)
    })

    it('sslmode=require fails with exit 3 saying the server does not accept TLS', async () => {
      const url = new URL(db.url)
      url.searchParams.set('sslmode', 'require')
      const result = await runCli(['db:ping', '--url', url.toString()])
      expect(result.code).toBe(3)
      expect(result.stderr.trim().split('\n')).toHaveLength(1)
      expect(result.stderr).toMatch(/does not accept TLS, and sslmode in the URL requires it/)
      expect(result.stderr).not.toContain(new URL(adminUrl()).password)
    })
  })
})
