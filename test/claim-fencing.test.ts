/**
 * Claim fencing (SPEC §5, issue 10 acceptance 5). An orchestrator taken for dead (frozen by
 * SIGSTOP, or cut off from the database) past ORCHESTRATOR_STALE_MS is reaped by another, which
 * runs its runs again as their next attempt. When it comes back it must register again before it
 * claims anything; its late answers for the attempts taken from it are dropped; and its lease
 * check stops it sending a run once its lease has lapsed, even a run it holds.
 *
 * How the processes tests make "claims before re-registering" visible: when the reaped
 * orchestrator comes back, the test holds its re-registration (an uncommitted row with its id,
 * which its heartbeat's INSERT … ON CONFLICT waits for and which a claim cannot see) and its
 * first claim (the `services` table locked, which every claim reads) until that claim is seen
 * waiting. Then the claim goes on alone, and only once it has finished does the re-registration
 * land. An engine that claims without being registered claims in that window; a fenced one is
 * told 'unregistered', waits for its heartbeat, and claims after it.
 */
import * as net from 'node:net'
import { Client } from 'pg'
import { createRepository } from '../src/orchestrator/repository'
import { runCli } from './helpers/cli'
import { apiDatabase, createTestDatabase, type TestDatabase, ALL_RUNS, TEST_SCHEMA } from './helpers/db'
import { startInProcess, stopLeftoverOrchestrators } from './helpers/in-process'
import { allIn, enqueueMany, registerTasks, type RunProcess, startRun } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { hold, ok, startWorker, type StubWorker } from './helpers/worker'

const STALE_MS = 2000

describe('claim fencing', () => {
  let db: TestDatabase
  let worker: StubWorker
  const env = (extra: Record<string, string> = {}) => ({
    ...db.env, ORCHESTRATOR_STALE_MS: String(STALE_MS), POLL_INTERVAL_MS: '200', MAINTENANCE_CHECK_INTERVAL_MS: '300', ...extra,
  })

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [{ id: 'job', retries: 3, retryBackoff: 'fixed', retryDelayMs: 0 }])
  })

  afterEach(async () => {
    await stopLeftoverOrchestrators()
    await worker.close()
    await db.drop()
  })

  /**
   * The scenario both process tests share. `silence` makes the first orchestrator unable to
   * heartbeat and resolves once it is; `restore` undoes it.
   */
  async function reapedThenBack(options: { url?: string; silence(a: RunProcess): Promise<void>; restore(a: RunProcess): void }) {
    const reaped = await enqueueMany(db.pool, 'job', 3)
    // Attempt 1 of the first runs is held by the worker until the end; everything else is answered.
    worker.behave('job', (r) => (reaped.includes(r.runId) && r.attempt === 1 ? hold() : ok({ attempt: r.attempt })))
    const a = startRun(env(options.url ? { DATABASE_URL: options.url } : {}), ['--log-format', 'json', '--concurrency', '6'])
    const aId = await a.started()
    await worker.until(() => worker.held().length === 3, { what: 'the first orchestrator to send its 3 runs' })

    const registration = new Client({ connectionString: db.url, options: `-c search_path=${TEST_SCHEMA}` })
    const claims = new Client({ connectionString: db.url, options: `-c search_path=${TEST_SCHEMA}` })
    await Promise.all([registration.connect(), claims.connect()])
    try {
      await options.silence(a)

      // Another orchestrator finds it stale, reaps it, and runs its runs again as attempt 2.
      const b = startRun(env(), ['--log-format', 'json', '--concurrency', '6'])
      const bId = await b.started()
      await waitFor(() => allIn(db.pool, ['completed'], reaped), { what: 'the other orchestrator to finish the reaped runs' })
      await b.waitForLog((l) => l.event === 'recovered' && l.count === 3, { what: 'the reaping' })
      expect((await db.pool.query('SELECT id FROM orchestrators WHERE id = $1', [aId])).rows).toEqual([])
      expect((await b.stop('SIGTERM')).code).toBe(0)

      // Due work for the first one when it comes back (it has 3 free slots).
      const later = await enqueueMany(db.pool, 'job', 3)
      await registration.query('BEGIN')
      await registration.query(`INSERT INTO orchestrators (id, host, pid, version) VALUES ($1, 'held by the test', 0, 'test')`, [aId])
      await claims.query('BEGIN')
      await claims.query('LOCK TABLE services IN ACCESS EXCLUSIVE MODE')
      const { rows: [{ at: backAt }] } = await db.pool.query<{ at: string }>('SELECT clock_timestamp()::text AS at')

      options.restore(a)

      // Its first claim since it came back: waiting on `services` (or, on an engine that claims
      // without its registration, possibly done already).
      const first = await waitFor(async () => {
        const { rows: [waiting] } = await db.pool.query<{ pid: number; started: string }>(
          `SELECT pid, query_start::text AS started FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'
              AND query ~ 'pipeweave_claim_(gate_v1|runs)\\('`)
        if (waiting) return waiting
        const { rows: claimed } = await db.pool.query(`SELECT id FROM task_runs WHERE orchestrator_id = $1 AND started_at > $2::timestamptz`, [aId, backAt])
        return claimed.length > 0 ? { pid: 0, started: '' } : undefined
      }, { timeoutMs: 20_000, what: 'the first claim of the orchestrator that came back' })
      await claims.query('COMMIT')
      if (first.pid !== 0) {
        await waitFor(async () => {
          const { rows: [row] } = await db.pool.query<{ done: boolean }>(
            `SELECT state <> 'active' OR query_start > $2::timestamptz AS done FROM pg_stat_activity WHERE pid = $1`, [first.pid, first.started])
          return !row || row.done
        }, { what: 'that claim to finish' })
      }
      // Only now can its re-registration land.
      await registration.query('ROLLBACK')
      const reregistered = await a.waitForLog((l) => l.event === 'reregistered', { what: 'the re-registration' })
      const { rows: [row] } = await db.pool.query<{ started_at: string }>('SELECT started_at::text FROM orchestrators WHERE id = $1', [aId])
      expect(row).toBeDefined()

      await waitFor(() => allIn(db.pool, ['completed'], later), { what: 'the runs enqueued for its return' })
      // Its workers answer the attempts taken from it at last: too late, dropped.
      expect(worker.releaseAll(ok('stale'))).toBe(3)
      for (const id of reaped) await a.waitForLog((l) => l.event === 'fenced' && l.runId === id, { what: `the fenced result of ${id}` })

      // It claimed nothing between its reaping and its re-registration: every run it holds or
      // held since then started after both its new row and its "registered again" line.
      const { rows: since } = await db.pool.query<{ id: string; started_at: string; before_row: boolean; before_line: boolean }>(
        `SELECT id, started_at::text, started_at <= $2::timestamptz AS before_row, started_at <= $3::timestamptz AS before_line
           FROM ${ALL_RUNS} AS r WHERE orchestrator_id = $1`, [aId, row.started_at, reregistered.time])
      expect(since.filter((r) => r.before_row || r.before_line)).toEqual([])
      expect(since.map((r) => r.id).sort()).toEqual([...later].sort())

      // The reaped runs are the other orchestrator's: its attempt 2 and its answer.
      const { rows: finals } = await db.pool.query<{ id: string; status: string; attempt: number; output: unknown; orchestrator_id: string; previous_attempts: Array<Record<string, unknown>> }>(
        `SELECT id, status, attempt, output, orchestrator_id, previous_attempts FROM ${ALL_RUNS} AS r WHERE id = ANY ($1)`, [reaped])
      expect(finals).toHaveLength(3)
      for (const r of finals) {
        expect(r).toMatchObject({ status: 'completed', attempt: 2, output: { attempt: 2 }, orchestrator_id: bId })
        expect(r.previous_attempts).toEqual([expect.objectContaining({ attempt: 1, errorCode: 'ORCHESTRATOR_LOST' })])
      }
      // Each (run, attempt) reached the worker once at most.
      const sent = worker.requests.map((r) => `${r.runId}/${r.attempt}`)
      expect(sent.length).toBe(new Set(sent).size)
      expect(sent.sort()).toEqual([...reaped.flatMap((id) => [`${id}/1`, `${id}/2`]), ...later.map((id) => `${id}/1`)].sort())

      expect((await a.stop('SIGTERM')).code).toBe(0)
    } finally {
      options.restore(a)
      await Promise.all([registration.end(), claims.end()].map((p) => p.catch(() => undefined)))
    }
  }

  it('a frozen orchestrator (SIGSTOP past the stale time) registers again before it claims; its late results are dropped', async () => {
    await reapedThenBack({
      silence: async (a) => { a.child.kill('SIGSTOP') },
      restore: (a) => { a.child.kill('SIGCONT') },
    })
  })

  it('an orchestrator cut off from the database past the stale time registers again before it claims; its late results are dropped', async () => {
    const target = new URL(db.url)
    const proxy = await Switch.start(target.hostname, Number(target.port))
    try {
      const via = new URL(db.url)
      via.port = String(proxy.port)
      await reapedThenBack({
        url: via.toString(),
        silence: async (a) => {
          proxy.down()
          await a.waitForLog((l) => l.event === 'db-down', { what: 'the outage to be noticed' })
        },
        restore: () => proxy.up(),
      })
    } finally {
      await proxy.close()
    }
  })

  it('an orchestrator reaped by maintenance:status that claims its own run again sends the new attempt at once, and its shutdown aborts both attempts', async () => {
    // A task timeout far beyond the shutdown timeout: the old attempt's request stays out.
    await registerTasks(db.url, worker.url, [{ id: 'slow', retries: 3, retryBackoff: 'fixed', retryDelayMs: 0, timeout: 120 }], 'slow-service')
    worker.behave('slow', () => hold())
    const [id] = await enqueueMany(db.pool, 'slow', 1)
    const a = startRun(env(), ['--log-format', 'json', '--concurrency', '4', '--shutdown-timeout', '1000'])
    const aId = await a.started()
    await worker.until(() => worker.held().length === 1, { what: 'attempt 1 sent' })
    a.child.kill('SIGSTOP')
    try {
      // No other orchestrator: the drain check of maintenance:status reaps it, and its run is
      // pending again as attempt 2.
      await waitFor(async () => {
        const status = await runCli(['maintenance:status', '--json'], { env: env() })
        const { rows } = await db.pool.query('SELECT id FROM orchestrators WHERE id = $1', [aId])
        return status.code === 0 && rows.length === 0
      }, { what: 'maintenance:status to reap the frozen orchestrator' })
    } finally {
      a.child.kill('SIGCONT')
    }
    await a.waitForLog((l) => l.event === 'reregistered', { what: 'the re-registration' })
    // It claims the run again itself, after registering (its new row), and sends attempt 2 while
    // attempt 1 is still out: the attempt fences the old one's answer, nothing waits for it.
    await worker.until(() => worker.requestsFor(id).length === 2, { what: 'attempt 2 sent' })
    expect(worker.requestsFor(id).map((r) => r.attempt)).toEqual([1, 2])
    const { rows: claimed } = await db.pool.query<{ after: boolean }>(
      `SELECT r.started_at > o.started_at AS after FROM task_runs r JOIN orchestrators o ON o.id = r.orchestrator_id
        WHERE r.id = $1 AND o.id = $2`, [id, aId])
    expect(claimed).toEqual([{ after: true }])

    // The shutdown holds both attempts: it waits for them, by name, then aborts both.
    a.child.kill('SIGTERM')
    // 1 s of shutdown timeout, 120 s of task timeout: 20 s is generous.
    await waitFor(() => a.exited(), { timeoutMs: 20_000, what: 'the orchestrator to exit' })
    expect((await a.done).code).toBe(0)
    const waiting = a.logs().filter((l) => l.event === 'stopping' && l.msg.startsWith('waiting for'))
    expect(waiting.length).toBeGreaterThan(0)
    expect(waiting.every((l) => l.msg.includes(id))).toBe(true)
    await worker.until(() => worker.requestsFor(id).every((r) => r.abandonedAt !== undefined), { what: 'both requests to be hung up on' })
    // Attempt 2 is spent (it was sent); attempt 1's abort is fenced, it was not this orchestrator's.
    expect(a.logs().filter((l) => l.event === 'fenced' && l.runId === id).map((l) => l.attempt)).toEqual([1])
    const { rows: [row] } = await db.pool.query<{ status: string; attempt: number; previous_attempts: Array<Record<string, unknown>> }>(
      `SELECT status, attempt, previous_attempts FROM ${ALL_RUNS} AS r WHERE id = $1`, [id])
    expect(row).toMatchObject({ status: 'pending', attempt: 3 })
    expect(row.previous_attempts).toEqual([
      expect.objectContaining({ attempt: 1, errorCode: 'ORCHESTRATOR_LOST' }),
      expect.objectContaining({ attempt: 2, errorCode: 'SHUTDOWN_ABORTED' }),
    ])

    // The next orchestrator sends attempt 3: every attempt reached the worker once.
    worker.behave('slow', () => ok('done'))
    expect((await startRun(env(), ['--log-format', 'json', '--until-idle']).done).code).toBe(0)
    expect(worker.requestsFor(id).map((r) => r.attempt)).toEqual([1, 2, 3])
  })

  it('fences results by attempt within one statement: a late attempt written beside the current one of the same run is reported fenced', async () => {
    // One orchestrator may hold two attempts of a run (it claimed its own reaped run again), and
    // their results may go in one batch (both aborted at shutdown, say).
    const [done, failed] = await enqueueMany(db.pool, 'job', 2)
    const api = await apiDatabase(db.url)
    try {
      const repo = createRepository(api, 'fencing-test')
      await repo.heartbeat()
      const attempt1 = await repo.claim(2, 10_000)
      expect(attempt1.runs.map((r) => r.attempt)).toEqual([1, 1])
      const retry = { error: 'dropped', code: 'CONNECTION_DROPPED', retry: true, delayMs: 0, status: 'failed' as const }
      expect((await repo.fail([done, failed].map((runId) => ({ runId, attempt: 1, ...retry })))).map((r) => r.outcome)).toEqual(['retried', 'retried'])
      const attempt2 = await repo.claim(2, 10_000)
      expect(attempt2.runs.map((r) => r.attempt)).toEqual([2, 2])

      const completed = await repo.complete([1, 2].map((attempt) => ({ runId: done, attempt, output: { attempt }, runNext: [], fromCache: false })))
      expect(completed.map((r) => r.completed)).toEqual([false, true])
      const failures = await repo.fail([1, 2].map((attempt) => ({ runId: failed, attempt, ...retry })))
      expect(failures.map((r) => r.outcome)).toEqual(['fenced', 'retried'])
      expect(failures[0].scheduledFor).toBeNull()

      const { rows } = await db.pool.query(`SELECT id, status, attempt, output FROM ${ALL_RUNS} AS r ORDER BY id`)
      expect(rows).toEqual([
        { id: done, status: 'completed', attempt: 2, output: { attempt: 2 } },
        { id: failed, status: 'pending', attempt: 3, output: null },
      ].sort((x, y) => x.id.localeCompare(y.id)))
    } finally {
      await api.close()
    }
  })

  it('hands back, unsent, the runs a claim brings after the lease has lapsed (in-process: the claim committed in time, its answer came late)', async () => {
    const ids = await enqueueMany(db.pool, 'job', 4)
    let heartbeatsRefused = false
    let holdClaims = true
    let lastHeartbeatSentAt = -Infinity
    let lateRuns = 0
    const p = await startInProcess(db.url, {
      staleMs: STALE_MS, concurrency: 4, pollIntervalMs: 100,
      // No drain check of its own during the test: nothing reaps it, so its runs come back to it.
      maintenanceCheckIntervalMs: 600_000,
      repository: (database, id) => {
        const real = createRepository(database, id, { concurrency: 4 })
        return {
          ...real,
          async heartbeat() {
            const sentAt = performance.now()
            if (heartbeatsRefused) throw new Error('heartbeat refused by the test')
            const result = await real.heartbeat()
            lastHeartbeatSentAt = Math.max(lastHeartbeatSentAt, sentAt)
            return result
          },
          async claim(limit, leaseMs) {
            const result = await real.claim(limit, leaseMs)
            if (holdClaims && result.runs.length > 0) {
              // The claim committed while the lease held (the gate checked it); from now on no
              // heartbeat lands, and its answer arrives only once the lease has lapsed.
              heartbeatsRefused = true
              lateRuns += result.runs.length
              await waitFor(() => performance.now() - lastHeartbeatSentAt > leaseMs, { intervalMs: 10, what: 'the lease to lapse' })
            }
            return result
          },
        }
      },
    })

    const lapsed = (id: string) => p.log.some((l) => l.runId === id && l.errorCode === 'LEASE_LAPSED')
    await waitFor(() => ids.every(lapsed) || worker.requests.length > 0, { what: 'the runs of the late claim to be handed back' })
    expect(worker.requests.map((r) => `${r.runId}/${r.attempt}`)).toEqual([])
    expect(lateRuns).toBeGreaterThanOrEqual(4)
    for (const id of ids) {
      const line = p.log.find((l) => l.runId === id && l.errorCode === 'LEASE_LAPSED')!
      expect(line).toMatchObject({ level: 'warn', event: 'run', status: 'pending', attempt: 1 })
      expect(line.msg).toMatch(/not sent: this orchestrator's lease had lapsed/)
    }
    // Back to pending, their attempt kept: nothing was sent, nothing was spent.
    await waitFor(() => allIn(db.pool, ['pending'], ids), { what: 'the runs to be pending again' })
    const { rows } = await db.pool.query(`SELECT id, attempt, previous_attempts, orchestrator_id, started_at FROM ${ALL_RUNS} AS r ORDER BY id`)
    expect(rows).toEqual([...ids].sort().map((id) => ({ id, attempt: 1, previous_attempts: [], orchestrator_id: null, started_at: null })))

    // Its heartbeat lands again: it registers, claims them anew and sends each once.
    holdClaims = false
    heartbeatsRefused = false
    await waitFor(() => allIn(db.pool, ['completed'], ids), { what: 'the runs to complete once the lease is back' })
    expect(worker.requests.map((r) => `${r.runId}/${r.attempt}`).sort()).toEqual(ids.map((id) => `${id}/1`).sort())
    expect(await p.stop()).toEqual({ exitCode: 0 })
  })
})

/** A TCP proxy to the database that can go down (every connection cut, new ones refused) and up. */
class Switch {
  private readonly pairs = new Set<{ client: net.Socket; upstream: net.Socket }>()
  private isDown = false
  port = 0

  private constructor(private readonly server: net.Server) {}

  static async start(host: string, port: number): Promise<Switch> {
    const server = net.createServer()
    const proxy = new Switch(server)
    server.on('connection', (client) => {
      if (proxy.isDown) {
        client.destroy()
        return
      }
      const upstream = net.connect(port, host)
      const pair = { client, upstream }
      proxy.pairs.add(pair)
      client.pipe(upstream)
      upstream.pipe(client)
      const end = () => {
        proxy.pairs.delete(pair)
        client.destroy()
        upstream.destroy()
      }
      for (const socket of [client, upstream]) {
        socket.on('close', end)
        socket.on('error', end)
      }
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    proxy.port = (server.address() as net.AddressInfo).port
    return proxy
  }

  down(): void {
    this.isDown = true
    for (const { client, upstream } of this.pairs) {
      client.destroy()
      upstream.destroy()
    }
    this.pairs.clear()
  }

  up(): void {
    this.isDown = false
  }

  async close(): Promise<void> {
    this.down()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}
