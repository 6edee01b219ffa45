/**
 * Edges of `pipeweave run` an operator meets (issue 11, items 7, 13 and 16): settings checked
 * before anything connects, a schema changed under it, probes that must not load the database,
 * the address its probe server binds, and a parent process that goes away (npx in a container).
 */
import * as fs from 'node:fs'
import * as http from 'node:http'
import * as net from 'node:net'
import { BIN, cleanEnv, json, runCli } from './helpers/cli'
import { createTestDatabase, type TestDatabase } from './helpers/db'
import { quickEnv, startRun } from './helpers/orchestrator'
import { spawnTracked } from './helpers/processes'
import { waitFor } from './helpers/wait'

/** Nothing listens here: a command that got as far as connecting would exit 3. */
const NOWHERE = 'postgres://u@127.0.0.1:1/x'

describe('settings are checked before connecting (exit 2, not 3)', () => {
  it.each([
    ['AUTO_MIGRATE', 'maybe', /AUTO_MIGRATE="maybe" is neither true nor false/],
    ['PIPEWEAVE_NO_LISTEN', 'sometimes', /PIPEWEAVE_NO_LISTEN="sometimes" is neither true nor false/],
    ['ORCHESTRATOR_STALE_MS', '99999999999', /ORCHESTRATOR_STALE_MS="99999999999" is more than a day/],
    ['PIPEWEAVE_BREAKER_COOLDOWN_MS', 'soon', /PIPEWEAVE_BREAKER_COOLDOWN_MS="soon" is not a whole number of at least 1/],
    ['PIPEWEAVE_BREAKER_COOLDOWN_MS', '0', /PIPEWEAVE_BREAKER_COOLDOWN_MS="0" is not a whole number of at least 1/],
    ['PIPEWEAVE_BREAKER_COOLDOWN_MS', '99999999999', /PIPEWEAVE_BREAKER_COOLDOWN_MS="99999999999" is more than a day/],
    ['PIPEWEAVE_BREAKER_MAX_OPEN_MS', '1h', /PIPEWEAVE_BREAKER_MAX_OPEN_MS="1h" is not a whole number of at least 1/],
    ['PIPEWEAVE_BREAKER_MAX_OPEN_MS', '3000000000', /PIPEWEAVE_BREAKER_MAX_OPEN_MS="3000000000" is more than/],
  ])('%s=%s', async (name, value, message) => {
    const result = await runCli(['run', '--json'], { env: { DATABASE_URL: NOWHERE, [name]: value } })
    expect(result.code).toBe(2)
    expect(json(result)).toMatchObject({ error: { code: 'INVALID_SETTING', message: expect.stringMatching(message) }, exitCode: 2 })
  })

  it('accepts the spellings of yes and no that oclif does', async () => {
    for (const value of ['true', 'FALSE', '1', '0', 'yes', 'no']) {
      const result = await runCli(['run', '--json'], { env: { DATABASE_URL: NOWHERE, AUTO_MIGRATE: value } })
      expect({ value, code: result.code }).toEqual({ value, code: 3 })
    }
  })
})

describe('a database whose applied migration was changed', () => {
  let db: TestDatabase
  beforeAll(async () => {
    db = await createTestDatabase({ migrated: true })
    // What an edited 001 looks like from the database: its recorded hash no longer matches.
    await db.pool.query(`UPDATE migrations SET hash = repeat('0', 40) WHERE id = 1`)
  })
  afterAll(async () => { await db.drop() })

  it('run refuses to start (exit 4, CHECKSUM_MISMATCH) and registers nothing', async () => {
    const result = await runCli(['run', '--json'], { env: quickEnv(db.env) })
    expect(result.code).toBe(4)
    expect(json(result)).toMatchObject({ error: { code: 'CHECKSUM_MISMATCH', message: expect.stringContaining('001_initial_schema.sql was changed') }, exitCode: 4 })
    expect((await db.pool.query('SELECT id FROM orchestrators')).rows).toEqual([])
  })

  it('db:status says so on stderr (its JSON keeps its shape)', async () => {
    const result = await runCli(['db:status', '--json'], { env: db.env })
    expect(result.code).toBe(0)
    expect(Object.keys(json(result)).sort()).toEqual(['applied', 'currentVersion', 'initialized', 'pending'])
    expect(result.stderr).toMatch(/001_initial_schema\.sql was changed after it was applied.*db:validate/)
  })
})

/** A TCP proxy that counts the bytes a client sends to PostgreSQL. */
async function countingProxy(target: URL): Promise<{ port: number; sent: () => number; close: () => Promise<void> }> {
  let sent = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname)
    sockets.add(client).add(upstream)
    client.on('data', (d) => { sent += d.length; upstream.write(d) })
    upstream.on('data', (d) => client.write(d))
    const end = () => { client.destroy(); upstream.destroy() }
    for (const s of [client, upstream]) { s.on('close', end); s.on('error', end) }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as net.AddressInfo).port,
    sent: () => sent,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

function get(port: number, path: string, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get({ host, port, path, agent: false }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)) }).on('error', reject)
  })
}

/** The local address of the TCP socket listening on `port` (from /proc/net/tcp), e.g. 127.0.0.1. */
function listeningAddress(port: number): string | undefined {
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const [, local, , state] = line.trim().split(/\s+/)
    if (!local || state !== '0A') continue // 0A: LISTEN
    const [hex, portHex] = local.split(':')
    if (parseInt(portHex, 16) !== port) continue
    return [3, 2, 1, 0].map((i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16)).join('.')
  }
  return undefined
}

describe('the probe server', () => {
  let db: TestDatabase
  beforeAll(async () => { db = await createTestDatabase({ migrated: true }) })
  afterAll(async () => { await db.drop() })

  it('answers /healthz from the last heartbeat: 300 probes send the database nothing', async () => {
    const proxy = await countingProxy(new URL(db.url))
    const via = new URL(db.url)
    via.port = String(proxy.port)
    // Idle and slow to poll: what it sends of itself in the probes' moment is a heartbeat at most.
    const run = startRun({ ...db.env, DATABASE_URL: via.toString(), POLL_INTERVAL_MS: '60000', MAINTENANCE_CHECK_INTERVAL_MS: '60000' },
      ['--log-format', 'json', '--http-port', '0', '--http-host', '127.0.0.1'])
    try {
      const line = await run.waitForLog((l) => l.event === 'http', { what: 'the probe server' })
      const port = Number(line.port)
      await waitFor(async () => (await get(port, '/readyz')) === 200, { what: 'ready' })
      const before = proxy.sent()
      const statuses = await Promise.all(Array.from({ length: 300 }, () => get(port, '/healthz')))
      const during = proxy.sent() - before
      expect(statuses.every((s) => s === 200)).toBe(true)
      // A query per probe (what /healthz did) would be 300 statements, some 18 kB; a heartbeat is
      // a few hundred bytes.
      expect(during).toBeLessThan(2000)
    } finally {
      expect((await run.stop('SIGTERM')).code).toBe(0)
      await proxy.close()
    }
  })

  it('binds --http-host (127.0.0.1: the machine only), and 0.0.0.0 by default', async () => {
    for (const [args, address] of [[['--http-host', '127.0.0.1'], '127.0.0.1'], [[], '0.0.0.0']] as const) {
      const run = startRun(quickEnv(db.env), ['--log-format', 'json', '--http-port', '0', ...args])
      try {
        const line = await run.waitForLog((l) => l.event === 'http', { what: 'the probe server' })
        expect(line.host).toBe(address)
        expect(listeningAddress(Number(line.port))).toBe(address)
      } finally {
        expect((await run.stop('SIGTERM')).code).toBe(0)
      }
    }
  })

  it('PIPEWEAVE_HTTP_HOST is the same setting', async () => {
    const run = startRun(quickEnv({ ...db.env, PIPEWEAVE_HTTP_HOST: '127.0.0.1' }), ['--log-format', 'json', '--http-port', '0'])
    try {
      const line = await run.waitForLog((l) => l.event === 'http', { what: 'the probe server' })
      expect(listeningAddress(Number(line.port))).toBe('127.0.0.1')
    } finally {
      expect((await run.stop('SIGTERM')).code).toBe(0)
    }
  })
})

describe('the parent process goes away (npx pipeweave run, killed by its platform)', () => {
  let db: TestDatabase
  beforeAll(async () => { db = await createTestDatabase({ migrated: true }) })
  afterAll(async () => { await db.drop() })

  it('stops gracefully on its own: it says why, deregisters and exits', async () => {
    // npx runs `sh -c …`; the platform's SIGKILL (or SIGTERM, which npm passes to sh only) ends
    // the shell and orphans run.
    const shell = spawnTracked('sh', ['-c', `"${process.execPath}" "${BIN}" run --log-format json; echo "run exited $?" >&2`], {
      env: cleanEnv(quickEnv(db.env)), stdio: ['ignore', 'ignore', 'pipe'],
    })
    let orphan: number | undefined
    let stderr = ''
    shell.stderr!.on('data', (d) => { stderr += d })
    try {
      const { rows: [registered] } = await waitFor(async () => {
        const result = await db.pool.query<{ id: string; pid: number }>('SELECT id, pid FROM orchestrators')
        return result.rows.length > 0 ? result : undefined
      }, { what: 'run to register' })
      orphan = registered.pid
      shell.kill('SIGKILL')
      const alive = () => fs.existsSync(`/proc/${registered.pid}`) && !/\) Z /.test(fs.readFileSync(`/proc/${registered.pid}/stat`, 'utf8'))
      await waitFor(() => !alive(), { timeoutMs: 30_000, what: 'the orphaned run to exit' })
      expect((await db.pool.query('SELECT id FROM orchestrators')).rows).toEqual([])
      expect(stderr).toMatch(/the parent process \(\d+\) went away: stopping/)
      expect(stderr).toMatch(/"event":"stopped"/)
    } finally {
      shell.kill('SIGKILL')
      // The orphan is nobody's child here: if it outlived the test, end it.
      if (orphan !== undefined) try { process.kill(orphan, 'SIGKILL') } catch { /* gone already */ }
    }
  })
})
