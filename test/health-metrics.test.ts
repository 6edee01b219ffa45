/**
 * `run --http-port` (issue 6, acceptance 4): /metrics is valid Prometheus text whose counters match
 * the runs pushed through; /readyz turns 503 on SIGTERM before the process exits; /healthz is
 * 503 while the database is down and 200 again once it is back.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import type { Pool } from 'pg'
import { acquireEmbeddedServer, type EmbeddedHandle } from '../src/db/embedded'
import { runCli, startCli } from './helpers/cli'
import { enqueueOne } from './helpers/orchestrator'
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { spawnTracked } from './helpers/processes'
import { httpGet, httpPortOf, migratedTestDatabase, postmasterPid } from './helpers/surface'
import { deferred, waitFor } from './helpers/wait'
import { type ManifestTask, type StubWorker, hold, ok, reply, startWorker } from './helpers/worker'
import { parsePrometheus, series, value } from './helpers/prometheus'

describe('the Prometheus parser of this test', () => {
  it('rejects what a scraper rejects', () => {
    expect(() => parsePrometheus('# TYPE a counter\na 1\n')).not.toThrow()
    expect(() => parsePrometheus('a 1\n')).toThrow(/without a TYPE/)
    expect(() => parsePrometheus('# TYPE a counter\na{x="1} 1\n')).toThrow(/bad labels/)
    expect(() => parsePrometheus('# TYPE a counter\na one\n')).toThrow(/bad sample value/)
    expect(() => parsePrometheus('# TYPE a counter\na 1\na 2\n')).toThrow(/duplicate/)
    expect(() => parsePrometheus('# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_count 1\nh_sum 0\n')).toThrow(/cumulative/)
    expect(parsePrometheus('# TYPE a gauge\na{m="x\\"y"} -Inf\n').samples[0]).toEqual({ name: 'a', labels: { m: 'x"y' }, value: -Infinity })
    expect(parsePrometheus('# TYPE a gauge\na Nan\n').samples[0].value).toBeNaN()
  })
})

// ---------------------------------------------------------------------------------------------

const enqueue = (pool: Pool, task: string, input: unknown = {}, delayMs = 0) =>
  enqueueOne(pool, task, { input, delayMs }).then((r) => r.runId)

const statuses = async (pool: Pool) => (await pool.query<{ task_id: string; status: string; n: number }>(
  `SELECT task_id, status, count(*)::int AS n FROM ${ALL_RUNS} AS task_runs GROUP BY 1, 2 ORDER BY 1, 2`)).rows.map((r) => `${r.task_id} ${r.status} ${r.n}`)

async function register(db: TestDatabase, worker: StubWorker, tasks: ManifestTask[]): Promise<void> {
  const file = path.join(os.tmpdir(), `pipeweave-health-manifest-${process.pid}-${worker.port}.json`)
  fs.writeFileSync(file, JSON.stringify(worker.manifest(tasks)))
  try {
    const result = await runCli(['services:register', file], { env: db.env })
    if (result.code !== 0) throw new Error(result.stderr)
  } finally {
    fs.rmSync(file, { force: true })
  }
}

describe('run --http-port', () => {
  const cleanups: Array<() => Promise<unknown>> = []
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()!().catch(() => undefined)
  })

  it('/metrics is Prometheus text whose figures match the runs pushed through', async () => {
    const db = await migratedTestDatabase('pw_metrics')
    cleanups.push(() => db.drop())
    const gate = deferred()
    const worker = (await startWorker())
      .behave('m.ok', () => ok({ ok: true }))
      .behave('m.flaky', (r) => (r.attempt === 1 ? reply(503, { error: 'warming up', code: 'WARMING_UP' }) : reply(200, {})))
      .behave('m.bad', () => reply(400, { error: 'no such thing', code: 'BAD_INPUT' }))
      .behave('m.held', async () => { await gate.promise; return reply(200) })
      .behave('m.slow', () => hold()) // never answered: its dispatch times out
      .otherwise(() => reply(404))
    cleanups.push(() => worker.close())
    await register(db, worker, [
      { id: 'm.ok' }, { id: 'm.flaky', retries: 1 }, { id: 'm.bad', retries: 3 }, { id: 'm.held', concurrency: 1 },
      { id: 'm.slow', timeout: 1 }, { id: 'm.cached', idempotencyTTL: 3600 },
    ])
    for (let i = 0; i < 3; i++) await enqueue(db.pool, 'm.ok', { i })
    await enqueue(db.pool, 'm.flaky')
    await enqueue(db.pool, 'm.bad')
    for (let i = 0; i < 3; i++) await enqueue(db.pool, 'm.held', { i })
    await enqueue(db.pool, 'm.ok', { later: true }, 3_600_000) // scheduled for later: not in the queue depth
    await enqueue(db.pool, 'm.slow')
    // A run whose idempotency key got a cached result after it was queued: completed from the cache.
    await enqueue(db.pool, 'm.cached')
    await db.pool.query(`UPDATE task_runs SET idempotency_key = 'k1' WHERE task_id = 'm.cached'`)
    await db.pool.query(`INSERT INTO idempotency_cache (task_id, idempotency_key, output, expires_at) VALUES ('m.cached', 'k1', '{"from":"cache"}', now() + interval '1 hour')`)

    const run = startCli(['run', '--http-port', '0', '--poll-interval', '100'], { env: db.env })
    const port = await httpPortOf(run)
    const scrape = async () => {
      const response = await httpGet(`http://127.0.0.1:${port}/metrics`)
      expect(response.status).toBe(200)
      expect(response.contentType).toMatch(/^text\/plain; version=0\.0\.4/)
      return parsePrometheus(response.body)
    }

    // Counters are incremented just after the database write: wait on the metrics themselves.
    const m = await waitFor(async () => {
      const e = await scrape()
      const done = value(e, 'pipeweave_runs_total', { task: 'm.ok', outcome: 'completed' }) === 3
        && value(e, 'pipeweave_runs_total', { task: 'm.flaky', outcome: 'completed' }) === 1
        && value(e, 'pipeweave_runs_total', { task: 'm.bad', outcome: 'failed' }) === 1
        && value(e, 'pipeweave_runs_total', { task: 'm.slow', outcome: 'timeout' }) === 1
        && value(e, 'pipeweave_runs_total', { task: 'm.cached', outcome: 'cached' }) === 1
        && value(e, 'pipeweave_runs_in_flight') === 1
        // Queue figures are read at most every few seconds (never a query per scrape).
        && value(e, 'pipeweave_queue_depth') === 2 && value(e, 'pipeweave_dlq_entries') === 2
      return done ? e : undefined
    }, { what: 'the metrics of the finished runs' })

    expect(series(m, 'pipeweave_runs_total')).toEqual({
      'outcome=completed,task=m.ok': 3,
      'outcome=retried,task=m.flaky': 1,
      'outcome=completed,task=m.flaky': 1,
      'outcome=failed,task=m.bad': 1,
      'outcome=timeout,task=m.slow': 1,
      'outcome=cached,task=m.cached': 1,
    })
    // A completion from the cache is not a dispatch.
    expect(series(m, 'pipeweave_dispatch_duration_seconds_count')).toEqual({ 'task=m.ok': 3, 'task=m.flaky': 2, 'task=m.bad': 1, 'task=m.slow': 1 })
    expect(value(m, 'pipeweave_dispatch_duration_seconds_sum', { task: 'm.slow' })).toBeGreaterThanOrEqual(1)
    expect(value(m, 'pipeweave_dispatch_duration_seconds_sum', { task: 'm.ok' })).toBeGreaterThan(0)
    // One m.held in flight (its task's concurrency is 1), two due behind it, one m.ok scheduled for later.
    expect(await statuses(db.pool)).toEqual([
      'm.bad failed 1', 'm.cached completed 1', 'm.flaky completed 1', 'm.held pending 2', 'm.held running 1', 'm.ok completed 3', 'm.ok pending 1', 'm.slow timeout 1',
    ])
    expect(value(m, 'pipeweave_queue_depth')).toBe(2)
    const { rows: [oldest] } = await db.pool.query(`SELECT extract(epoch FROM now() - min(created_at))::float8 AS age
      FROM task_runs WHERE status = 'pending' AND (scheduled_for IS NULL OR scheduled_for <= now())`)
    expect(value(m, 'pipeweave_queue_oldest_age_seconds')).toBeGreaterThan(0)
    expect(value(m, 'pipeweave_queue_oldest_age_seconds')).toBeLessThanOrEqual(oldest.age)
    expect(value(m, 'pipeweave_dlq_entries')).toBe(2)
    expect(series(m, 'pipeweave_maintenance_mode')).toEqual({ 'mode=running': 1, 'mode=waiting_for_maintenance': 0, 'mode=maintenance': 0 })
    expect(Object.fromEntries(['pipeweave_runs_total', 'pipeweave_dispatch_duration_seconds', 'pipeweave_runs_in_flight', 'pipeweave_queue_depth',
      'pipeweave_queue_oldest_age_seconds', 'pipeweave_dlq_entries', 'pipeweave_maintenance_mode'].map((n) => [n, m.types.get(n)]))).toEqual({
      pipeweave_runs_total: 'counter', pipeweave_dispatch_duration_seconds: 'histogram', pipeweave_runs_in_flight: 'gauge',
      pipeweave_queue_depth: 'gauge', pipeweave_queue_oldest_age_seconds: 'gauge', pipeweave_dlq_entries: 'gauge', pipeweave_maintenance_mode: 'gauge',
    })
    // prom-client's default process metrics.
    expect(m.types.get('process_cpu_seconds_total')).toBe('counter')
    expect(m.types.get('nodejs_heap_size_used_bytes')).toBe('gauge')

    // Let the held runs go: they all complete, and the queue empties.
    gate.resolve()
    const after = await waitFor(async () => {
      const e = await scrape()
      return value(e, 'pipeweave_runs_total', { task: 'm.held', outcome: 'completed' }) === 3 && value(e, 'pipeweave_runs_in_flight') === 0
        && value(e, 'pipeweave_queue_depth') === 0 ? e : undefined
    }, { what: 'the held runs to complete' })
    expect(value(after, 'pipeweave_queue_depth')).toBe(0)
    expect(value(after, 'pipeweave_queue_oldest_age_seconds')).toBe(0)

    // The mode is read from the database (at most every few seconds), also when it was changed
    // behind pipeweave's back.
    await db.pool.query(`UPDATE orchestrator_state SET mode = 'maintenance' WHERE id = 'singleton'`)
    await waitFor(async () => {
      const modes = series(await scrape(), 'pipeweave_maintenance_mode')
      return modes['mode=maintenance'] === 1 && modes['mode=running'] === 0 && modes['mode=waiting_for_maintenance'] === 0
    }, { what: 'the mode gauge to show maintenance' })

    run.child.kill('SIGTERM')
    expect((await run.done).code).toBe(0)
  })

  it('/readyz turns 503 on SIGTERM while the run in flight finishes, before the process exits', async () => {
    const db = await migratedTestDatabase('pw_readyz')
    cleanups.push(() => db.drop())
    const worker = (await startWorker()).otherwise(() => hold())
    cleanups.push(() => worker.close())
    await register(db, worker, [{ id: 'r.hold' }])

    const run = startCli(['run', '--http-port', '0', '--poll-interval', '100', '--shutdown-timeout', '60000'], { env: db.env })
    const port = await httpPortOf(run)
    const url = (p: string) => `http://127.0.0.1:${port}${p}`
    await waitFor(async () => (await httpGet(url('/readyz'))).status === 200, { what: '/readyz to be 200' })
    const runId = await enqueue(db.pool, 'r.hold')
    const request = await worker.nthRequest(1)

    run.child.kill('SIGTERM')
    await waitFor(async () => (await httpGet(url('/readyz'))).status === 503, { what: '/readyz to be 503' })
    // Still shutting down: the process is alive, waiting for its run, and live for the liveness probe.
    expect(run.child.exitCode).toBeNull()
    expect((await httpGet(url('/healthz'))).status).toBe(200)
    expect((await db.pool.query(`SELECT status FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [runId])).rows[0].status).toBe('running')

    request.release(ok('finished late'))
    const result = await run.done
    expect(result.code).toBe(0)
    expect((await db.pool.query(`SELECT status, output FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [runId])).rows[0]).toEqual({ status: 'completed', output: 'finished late' })
  })

  it('a port already in use is a setting to change (exit 2, says which port), not an internal error', async () => {
    const db = await createTestDatabase({ prefix: 'pw_busy_port' })
    cleanups.push(() => db.drop())
    const busy = await startWorker()
    cleanups.push(() => busy.close())
    const result = await runCli(['run', '--http-port', String(busy.port), '--json'], { env: db.env })
    expect(result.code).toBe(2)
    expect(JSON.parse(result.stdout)).toMatchObject({
      error: { code: 'HTTP_PORT_UNAVAILABLE', message: expect.stringContaining(`port ${busy.port}: it is already in use`) }, exitCode: 2,
    })
  })

  describe('/healthz while the database is down', () => {
    let home: string
    let handle: EmbeddedHandle | undefined
    let binDir: string | undefined

    beforeAll(async () => {
      home = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-healthz-'))
      fs.chmodSync(home, 0o755)
    })
    afterAll(async () => {
      const dataDir = path.join(home, 'pgdata')
      // A failed test may have left the server stopped: start it, so release() stops it cleanly.
      if (handle && binDir && !postmasterPid(dataDir)) {
        await pgCtl(binDir, ['-D', dataDir, '-l', path.join(dataDir, 'server.log'), '-o', `-p ${handle.server.port}`, '-w', 'start']).catch(() => undefined)
      }
      await handle?.release({ stop: 'always' })
      fs.rmSync(home, { recursive: true, force: true })
    })

    /** pg_ctl of the embedded binaries, as the postgres user when we are root (as pipeweave runs it). */
    function pgCtl(bin: string, args: string[]): Promise<string> {
      const asRoot = process.getuid?.() === 0
      const file = asRoot ? 'runuser' : path.join(bin, 'pg_ctl')
      const argv = asRoot ? ['-u', 'postgres', '--', path.join(bin, 'pg_ctl'), ...args] : args
      return new Promise((resolve, reject) => {
        const child = spawnTracked(file, argv, {
          detached: true, stdio: ['ignore', 'pipe', 'pipe'],
          env: { PATH: process.env.PATH, LC_ALL: 'C', LANG: 'C', TZ: 'UTC', LD_LIBRARY_PATH: path.join(path.dirname(bin), 'lib') },
        })
        let output = ''
        child.stdout!.on('data', (c) => { output += c })
        child.stderr!.on('data', (c) => { output += c })
        child.on('close', (code) => (code === 0 ? resolve(output) : reject(new Error(`pg_ctl ${args.join(' ')} exited ${code}: ${output}`))))
      })
    }

    it('is 503 while the server is stopped and 200 again once it is back', async () => {
      handle = await acquireEmbeddedServer({ env: { PIPEWEAVE_HOME: home }, cwd: home, applicationName: 'pipeweave-test-healthz' })
      const { server } = handle
      const dataDir = server.dataDir
      // The binaries the server runs from (the packaged ones, or pipeweave's reachable copy).
      binDir = path.dirname(fs.readlinkSync(`/proc/${postmasterPid(dataDir)}/exe`))
      const url = `postgres://${server.user}:${encodeURIComponent(server.password)}@${server.host}:${server.port}/${server.database}`

      const run = startCli(['run', '--http-port', '0', '--auto-migrate', '--poll-interval', '100'], { env: { DATABASE_URL: url } })
      const port = await httpPortOf(run)
      const healthz = () => httpGet(`http://127.0.0.1:${port}/healthz`)
      // Ready = started (migrated, registered): an outage during start-up is a failed start, not this.
      await waitFor(async () => (await httpGet(`http://127.0.0.1:${port}/readyz`)).status === 200, { what: '/readyz to be 200' })
      expect((await healthz()).status).toBe(200)

      await pgCtl(binDir, ['-D', dataDir, '-m', 'fast', '-w', 'stop'])
      const down = await waitFor(async () => {
        const r = await healthz()
        return r.status === 503 ? r : undefined
      }, { what: '/healthz to be 503' })
      expect(down.body).toMatch(/database/)
      expect(run.child.exitCode).toBeNull() // an outage is not a reason to exit

      await pgCtl(binDir, ['-D', dataDir, '-l', path.join(dataDir, 'server.log'), '-o', `-p ${server.port}`, '-w', 'start'])
      await waitFor(async () => (await healthz()).status === 200, { what: '/healthz to be 200 again' })

      run.child.kill('SIGTERM')
      expect((await run.done).code).toBe(0)
    })
  })
})
