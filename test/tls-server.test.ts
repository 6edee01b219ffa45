/**
 * TLS (SPEC §1) against a real PostgreSQL with `ssl = on`: an embedded server of its own, started
 * here with a server certificate for `localhost` signed by a CA generated here (openssl), beside a
 * second, unrelated CA. What the client accepts is proven by the server itself: db:ping reports
 * `tls` from pg_stat_ssl for its own connection. (tls.test.ts covers every setting's message
 * against a fake endpoint; this file proves that a verified connection really works.)
 */
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { acquireEmbeddedServer, type EmbeddedHandle } from '../src/db/embedded'
import { json, runCli } from './helpers/cli'
import { describeWithRealPart } from './helpers/real-parts'

const OPENSSL = '/usr/bin/openssl'
// Loud when missing: a skipped file must not pass for a tested one (listed again at the end of the run).
const describeWithOpenssl = describeWithRealPart(__filename, { program: OPENSSL, install: 'apt-get install -y openssl' })

const openssl = (dir: string, args: string[]) => execFileSync(OPENSSL, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })

/** A CA, a server certificate for DNS:localhost signed by it, and another CA that signed nothing here. */
function makeCertificates(dir: string): { ca: string; otherCa: string; cert: string; key: string } {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  const caExtensions = ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']
  openssl(dir, ['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=pipeweave test CA', ...caExtensions])
  openssl(dir, ['req', '-x509', ...ec, '-keyout', 'other-ca.key', '-out', 'other-ca.crt', '-days', '2', '-subj', '/CN=some other CA', ...caExtensions])
  openssl(dir, ['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost'])
  fs.writeFileSync(path.join(dir, 'server.ext'),
    'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n')
  openssl(dir, ['x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.crt', '-days', '2', '-extfile', 'server.ext'])
  const files = { ca: 'ca.crt', otherCa: 'other-ca.crt', cert: 'server.crt', key: 'server.key' }
  return Object.fromEntries(Object.entries(files).map(([k, f]) => [k, path.join(dir, f)])) as ReturnType<typeof makeCertificates>
}

/** PostgreSQL reads its key only if the server's user owns it, mode 0600 (as root, the server runs as `postgres`). */
function handKeyToServer(key: string, cert: string): void {
  fs.chmodSync(key, 0o600)
  if (process.getuid?.() !== 0) return
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString())
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString())
  fs.chownSync(key, uid, gid)
  fs.chownSync(cert, uid, gid)
}

describeWithOpenssl('TLS against a real PostgreSQL with ssl = on', () => {
  let home: string
  let handle: EmbeddedHandle
  let files: ReturnType<typeof makeCertificates>
  let password: string
  let port: number

  beforeAll(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-tls-'))
    fs.chmodSync(home, 0o755)
    const certs = path.join(home, 'certs')
    fs.mkdirSync(certs, { mode: 0o755 })
    files = makeCertificates(certs)
    handKeyToServer(files.key, files.cert)
    handle = await acquireEmbeddedServer({
      env: { PIPEWEAVE_HOME: home }, cwd: home, applicationName: 'pipeweave-tls-test',
      serverSettings: {
        ssl: 'on', ssl_cert_file: `'${files.cert}'`, ssl_key_file: `'${files.key}'`,
        max_connections: 20, fsync: 'off', synchronous_commit: 'off',
      },
    })
    password = handle.server.password
    port = handle.server.port
  }, 120_000)

  afterAll(async () => {
    await handle?.release({ stop: 'always' })
    fs.rmSync(home, { recursive: true, force: true })
  })

  const url = (host: string, query: Record<string, string>) =>
    `postgres://postgres:${encodeURIComponent(password)}@${host}:${port}/postgres?${new URLSearchParams(query)}`
  const ping = (args: string[], env: Record<string, string> = {}) => runCli(['db:ping', '--json', ...args], { env })
  const tlsOf = async (args: string[], env: Record<string, string> = {}) => {
    const result = await ping(args, env)
    if (result.code !== 0) throw new Error(`db:ping exited ${result.code}: ${result.stdout}${result.stderr}`)
    expect(result.stderr).toBe('')
    return json<{ tls: boolean }>(result).tls
  }

  it('verify-full with the CA that signed the certificate connects over TLS, by URL and by DB_SSL', async () => {
    expect(await tlsOf(['--url', url('localhost', { sslmode: 'verify-full', sslrootcert: files.ca })])).toBe(true)
    expect(await tlsOf([], {
      DB_SSL: 'true', DB_SSL_CA: files.ca, DB_HOST: 'localhost', DB_PORT: String(port), DB_USER: 'postgres', DB_PASS: password, DB_NAME: 'postgres',
    })).toBe(true)
  })

  it('refuses a certificate its CA did not sign (exit 3), naming the setting that relaxes it', async () => {
    const byUrl = await ping(['--url', url('localhost', { sslmode: 'verify-full', sslrootcert: files.otherCa })])
    expect(byUrl.code).toBe(3)
    expect(json<{ error: { code: string; message: string; hint: string } }>(byUrl).error).toEqual({
      code: 'TLS_CERTIFICATE',
      message: expect.stringMatching(new RegExp(`^TLS certificate verification failed for localhost:${port}`)),
      hint: expect.stringMatching(/relax sslmode in the URL.*no-verify/),
    })
    const byEnv = await runCli(['db:ping'], {
      env: { DB_SSL: 'true', DB_SSL_CA: files.otherCa, DB_HOST: 'localhost', DB_PORT: String(port), DB_USER: 'postgres', DB_PASS: password, DB_NAME: 'postgres' },
    })
    expect(byEnv.code).toBe(3)
    expect(byEnv.stderr.trim().split('\n')).toHaveLength(1)
    expect(byEnv.stderr).toMatch(/^error: TLS certificate verification failed for localhost:\d+.*relax DB_SSL/)
    expect(byEnv.stderr).not.toContain(password)
  })

  it('verify-full checks the host name (the certificate names localhost, not 127.0.0.1); verify-ca does not', async () => {
    const byAddress = await ping(['--url', url('127.0.0.1', { sslmode: 'verify-full', sslrootcert: files.ca })])
    expect(byAddress.code).toBe(3)
    expect(json<{ error: { code: string } }>(byAddress).error.code).toBe('TLS_CERTIFICATE')
    expect(await tlsOf(['--url', url('127.0.0.1', { sslmode: 'verify-ca', sslrootcert: files.ca })])).toBe(true)
  })

  it('require and no-verify encrypt without verifying; disable does not encrypt', async () => {
    expect(await tlsOf(['--url', url('127.0.0.1', { sslmode: 'require' })])).toBe(true)
    expect(await tlsOf([], { DB_SSL: 'no-verify', DB_HOST: '127.0.0.1', DB_PORT: String(port), DB_USER: 'postgres', DB_PASS: password, DB_NAME: 'postgres' })).toBe(true)
    // The server accepts plain connections too (pg_hba `host`): tls is what the connection did.
    expect(await tlsOf(['--url', url('127.0.0.1', { sslmode: 'disable' })])).toBe(false)
  })
})
