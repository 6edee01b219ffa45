/**
 * Graceful shutdown (SPEC §5): on SIGTERM/SIGINT stop claiming, let in-flight dispatches finish
 * within --shutdown-timeout, then abort the rest. A request that was written may have reached its
 * worker, so it comes back as a new attempt (SHUTDOWN_ABORTED, due at once); a run never sent
 * keeps its attempt. Deregister, exit 0. A second SIGINT stops at once (exit 130), still handing
 * the held runs back.
 */
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { allIn, enqueueMany, getRun, quickEnv, registerTasks, startRun, statusCounts } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { hold, ok, startWorker, type StubWorker } from './helpers/worker'

describe('pipeweave run: graceful shutdown', () => {
  let db: TestDatabase
  let worker: StubWorker

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [{ id: 'job', retries: 1, retryDelayMs: 60_000 }])
  })

  afterEach(async () => {
    await worker.close()
    await db.drop()
  })

  it('on SIGTERM stops claiming, lets runs finish within the timeout, hands back the rest and exits 0', async () => {
    worker.behave('job', () => hold())
    const ids = await enqueueMany(db.pool, 'job', 10)
    const run = startRun(quickEnv(db.env), ['--log-format', 'json', '--concurrency', '6', '--shutdown-timeout', '3000'])
    const orchestratorId = await run.started()
    await worker.until(() => worker.held().length === 6, { what: '6 runs in flight' })
    const [finishing, unfinished] = [worker.held().slice(0, 3), worker.held().slice(3)]

    const signalledAt = Date.now()
    run.child.kill('SIGTERM')
    const stopping = await run.waitForLog((l) => l.event === 'stopping', { what: 'the stopping line' })
    expect(stopping.inFlight).toBe(6)
    // It says what it waits for: the runs in flight, by id.
    await run.waitForLog((l) => l.event === 'stopping' && unfinished.some((r) => l.msg.includes(r.runId)), { what: 'which runs it waits for' })

    for (const r of finishing) r.release(ok({ finished: 'during shutdown' }))
    await waitFor(() => allIn(db.pool, ['completed'], finishing.map((r) => r.runId)), { what: 'the released runs to complete' })

    const exit = await run.done
    const tookMs = Date.now() - signalledAt
    expect(exit.code).toBe(0)
    // The 3 that never answered were waited for up to the timeout (3 s), then cut off.
    expect(tookMs).toBeGreaterThanOrEqual(3000)
    expect(tookMs).toBeLessThan(30_000)
    for (const r of unfinished) expect(r.abandonedAt).toBeDefined()

    // No claim after SIGTERM, although 3 slots freed and 4 runs were due.
    expect(worker.requests).toHaveLength(6)
    for (const r of finishing) expect(await getRun(db.pool, r.runId)).toMatchObject({ status: 'completed', output: { finished: 'during shutdown' } })
    for (const r of unfinished) {
      // Sent, so maybe seen by the worker: that attempt is spent (once per attempt), and the run
      // comes back as its next attempt, due at once (not after the task's 60 s backoff).
      const back = await getRun(db.pool, r.runId)
      expect(back).toMatchObject({
        status: 'pending', attempt: 2, started_at: null, orchestrator_id: null, error_code: 'SHUTDOWN_ABORTED',
        previous_attempts: [expect.objectContaining({ attempt: 1, errorCode: 'SHUTDOWN_ABORTED' })],
      })
      expect(back.scheduled_for!.getTime()).toBeLessThanOrEqual(Date.now() + 1000)
      await run.waitForLog((l) => l.event === 'run' && l.runId === r.runId && l.status === 'pending')
    }
    // The 4 never sent keep their first attempt.
    const unsent = ids.filter((id) => !worker.requests.some((q) => q.runId === id))
    expect(unsent).toHaveLength(4)
    for (const id of unsent) expect(await getRun(db.pool, id)).toMatchObject({ status: 'pending', attempt: 1, previous_attempts: [] })
    expect(await statusCounts(db.pool)).toEqual({ completed: 3, pending: 7 })
    const { rows: registered } = await db.pool.query('SELECT id FROM orchestrators WHERE id = $1', [orchestratorId])
    expect(registered).toEqual([])

    // Nothing lost: the next orchestrator runs the other 7, each (runId, attempt) sent once.
    worker.behave('job', () => ok())
    const next = startRun(quickEnv(db.env), ['--log-format', 'json', '--until-idle'])
    expect((await next.done).code).toBe(0)
    expect(await statusCounts(db.pool)).toEqual({ completed: 10 })
    for (const r of unfinished) expect(worker.requestsFor(r.runId).map((q) => q.attempt)).toEqual([1, 2])
    for (const id of unsent) expect(worker.requestsFor(id).map((q) => q.attempt)).toEqual([1])
    expect(new Set(worker.requests.map((r) => r.runId))).toEqual(new Set(ids))
  })

  it('exits 0 at once on SIGTERM when nothing is in flight, and deregisters', async () => {
    const run = startRun(quickEnv(db.env), ['--log-format', 'json', '--shutdown-timeout', '60000'])
    const orchestratorId = await run.started()
    const { rows: before } = await db.pool.query('SELECT id FROM orchestrators')
    expect(before).toEqual([{ id: orchestratorId }])
    const exit = await run.stop('SIGTERM')
    expect(exit.code).toBe(0)
    expect((await db.pool.query('SELECT id FROM orchestrators')).rows).toEqual([])
  })

  it('exits 0 on a SIGTERM that arrives while it is still starting', async () => {
    // A fresh database and --auto-migrate: the SIGTERM lands while the migrations are applied.
    const fresh = await createTestDatabase()
    try {
      const run = startRun(quickEnv(fresh.env), ['--log-format', 'json', '--auto-migrate'])
      await run.waitForLog((l) => /pending migration/.test(l.msg), { what: 'the start of the migrations' })
      run.child.kill('SIGTERM')
      const exit = await run.done
      expect(exit.code).toBe(0)
      expect(exit.signal).toBeNull()
      expect((await fresh.pool.query('SELECT id FROM orchestrators')).rows).toEqual([])
    } finally {
      await fresh.drop()
    }
  })

  it('stops at once on a second SIGINT (exit 130), still handing the held runs back', async () => {
    worker.behave('job', () => hold())
    await enqueueMany(db.pool, 'job', 4)
    const run = startRun(quickEnv(db.env), ['--log-format', 'json', '--concurrency', '4', '--shutdown-timeout', '100000'])
    await run.started()
    await worker.until(() => worker.held().length === 4, { what: '4 runs in flight' })
    run.child.kill('SIGINT')
    await run.waitForLog((l) => l.event === 'stopping')
    run.child.kill('SIGINT')
    const exit = await run.done
    // Well before the 100 s shutdown timeout, and saying so.
    expect(exit.signal).toBeNull()
    expect(exit.code).toBe(130)
    expect(run.logs().some((l) => l.event === 'signal' && /stopping at once/.test(l.msg))).toBe(true)
    expect(await statusCounts(db.pool)).toEqual({ pending: 4 })
    // All 4 had been sent: each comes back as its next attempt.
    const { rows } = await db.pool.query<{ attempt: number; orchestrator_id: string | null }>(`SELECT attempt, orchestrator_id FROM ${ALL_RUNS} AS task_runs`)
    expect(rows.every((r) => r.attempt === 2 && r.orchestrator_id === null)).toBe(true)
    expect((await db.pool.query('SELECT id FROM orchestrators')).rows).toEqual([])
  })
})
