/**
 * `channel_binding=require` (SPEC §1, libpq fidelity) is honoured, never ignored: against a real
 * PostgreSQL with TLS on (a server of this file's own, with the fixture certificate), SCRAM-SHA-256-PLUS
 * connects, and a server that authenticates without channel binding (password or trust, or no
 * TLS at all) is refused, exit 3, before a password is sent. A setting that cannot work (sslmode=
 * disable, a Unix socket) is exit 2 before any connection.
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { Pool } from 'pg'
import { acquireEmbeddedServer, type EmbeddedHandle } from '../src/db/embedded'
import { type CliResult, json, runCli } from './helpers/cli'
import { adminUrl } from './helpers/db'

const FIXTURES = path.resolve(__dirname, 'fixtures', 'tls')

describe('channel_binding', () => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-channel-binding-'))
  let handle: EmbeddedHandle
  const password = `Cb-${crypto.randomBytes(6).toString('hex')}`
  const roles = { scram: 'pw_cb_scram', plain: 'pw_cb_plain', trust: 'pw_cb_trust' }
  const at = (user: string, query: string, host = 'localhost') =>
    `postgres://${user}:${password}@${host}:${handle.server.port}/postgres?${query}`

  beforeAll(async () => {
    fs.chmodSync(home, 0o755)
    // The server's key must belong to the user the server runs as, mode 0600.
    for (const file of ['server.crt', 'server.key']) fs.copyFileSync(path.join(FIXTURES, file), path.join(home, file))
    fs.chmodSync(path.join(home, 'server.key'), 0o600)
    if (process.getuid?.() === 0) {
      const [uid, gid] = fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('postgres:'))!.split(':').slice(2, 4).map(Number)
      for (const file of ['server.crt', 'server.key']) fs.chownSync(path.join(home, file), uid, gid)
    }
    handle = await acquireEmbeddedServer({
      env: { PIPEWEAVE_HOME: home }, cwd: home, applicationName: 'pipeweave-test-channel-binding',
      serverSettings: { ssl: 'on', ssl_cert_file: `'${path.join(home, 'server.crt')}'`, ssl_key_file: `'${path.join(home, 'server.key')}'`, fsync: 'off' },
    })
    const s = handle.server
    // Two users whose pg_hba lines authenticate without SCRAM: what channel binding must refuse.
    const hba = path.join(s.dataDir, 'pg_hba.conf')
    fs.writeFileSync(hba, `host all ${roles.plain} 127.0.0.1/32 password\nhost all ${roles.trust} 127.0.0.1/32 trust\n${fs.readFileSync(hba, 'utf8')}`)
    const admin = new Pool({ host: s.host, port: s.port, user: s.user, password: s.password, database: 'postgres', max: 1 })
    try {
      for (const role of Object.values(roles)) await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`)
      await admin.query('SELECT pg_reload_conf()')
    } finally {
      await admin.end()
    }
  })

  afterAll(async () => {
    await handle?.release({ stop: 'always' })
    fs.rmSync(home, { recursive: true, force: true })
  })

  function refused(result: CliResult, pattern: RegExp): void {
    expect({ code: result.code, stdout: result.stdout }).toEqual({ code: 3, stdout: '' })
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(result.stderr).toMatch(pattern)
    expect(result.stderr).not.toContain(password)
  }

  it('connects with SCRAM-SHA-256-PLUS over TLS when channel_binding=require', async () => {
    for (const query of ['sslmode=require&channel_binding=require', 'sslmode=verify-full&channel_binding=require', 'channel_binding=require']) {
      const result = await runCli(['db:ping', '--json', '--url', at(roles.scram, query)], { env: { DB_SSL_CA: path.join(FIXTURES, 'server.crt') } })
      expect({ query, code: result.code, stderr: result.stderr, stdout: result.stdout }).toEqual({ query, code: 0, stderr: "", stdout: expect.any(String) })
      expect(json(result).tls).toBe(true)
    }
  })

  it('connects with channel_binding=prefer too', async () => {
    const result = await runCli(['db:ping', '--json', '--url', at(roles.scram, 'sslmode=require&channel_binding=prefer')])
    expect(result.code).toBe(0)
  })

  it.each([
    ['password', roles.plain],
    ['trust', roles.trust],
  ])('refuses a server that authenticates by %s without channel binding (exit 3), which connects without the setting', async (_method, role) => {
    refused(await runCli(['db:ping', '--url', at(role, 'sslmode=require&channel_binding=require')]), /channel binding/i)
    const machine = await runCli(['db:ping', '--json', '--url', at(role, 'sslmode=require&channel_binding=require')])
    expect(json<{ error: { code: string } }>(machine).error.code).toBe('CHANNEL_BINDING_FAILED')
    expect((await runCli(['db:ping', '--url', at(role, 'sslmode=require')])).code).toBe(0)
  })

  it('refuses a server without TLS (exit 3), naming channel_binding', async () => {
    const url = new URL(adminUrl())
    url.searchParams.set('channel_binding', 'require')
    refused(await runCli(['db:ping', '--url', url.toString()]), /channel_binding=require/)
  })

  it.each([
    ['sslmode=disable', (u: string) => at(roles.scram, 'sslmode=disable&channel_binding=require', u)],
    ['a Unix socket', () => `postgres://${roles.scram}@/postgres?host=/var/run/postgresql&channel_binding=require`],
  ])('refuses channel_binding=require with %s before connecting (exit 2)', async (_what, url) => {
    const result = await runCli(['db:ping', '--json', '--url', url('localhost')])
    expect(result.code).toBe(2)
    expect(json<{ error: { code: string; message: string } }>(result).error).toMatchObject({ code: 'CHANNEL_BINDING_NEEDS_TLS', message: expect.stringMatching(/channel_binding=require/) })
  })

  it('refuses a channel_binding value libpq does not know (exit 2)', async () => {
    const result = await runCli(['db:ping', '--json', '--url', at(roles.scram, 'channel_binding=always')])
    expect(result.code).toBe(2)
    expect(json<{ error: { message: string } }>(result).error.message).toMatch(/channel_binding/)
  })
})
