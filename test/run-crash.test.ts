/**
 * Crash safety (SPEC §5): an orchestrator killed with runs in flight loses nothing. Its runs go
 * back to pending once its heartbeat is older than ORCHESTRATOR_STALE_MS, found by the next one;
 * each such run uses up its attempt ("orchestrator lost") and none stays `running`.
 */
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { allIn, enqueueMany, registerTasks, startRun, statusCounts } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { hold, ok, startWorker, type StubWorker } from './helpers/worker'

describe('pipeweave run: crash recovery', () => {
  let db: TestDatabase
  let worker: StubWorker
  const env = () => ({ ...db.env, ORCHESTRATOR_STALE_MS: '2000', POLL_INTERVAL_MS: '200', MAINTENANCE_CHECK_INTERVAL_MS: '300' })

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [{ id: 'job', retries: 2, retryBackoff: 'fixed', retryDelayMs: 0 }])
  })

  afterEach(async () => {
    await worker.close()
    await db.drop()
  })

  it('completes every run after a SIGKILL with 20 in flight; only those reach the worker twice', async () => {
    let killed = false
    worker.behave('job', () => (killed ? ok('done') : hold()))
    const ids = await enqueueMany(db.pool, 'job', 40)

    const first = startRun(env(), ['--log-format', 'json', '--concurrency', '20'])
    const firstId = await first.started()
    await worker.until(() => worker.held().length === 20, { what: '20 runs held by the worker' })
    const inFlight = new Set(worker.requests.map((r) => r.runId))
    expect(inFlight.size).toBe(20)

    killed = true
    first.child.kill('SIGKILL')
    expect((await first.done).signal).toBe('SIGKILL')
    // The killed process left its 20 runs `running` and its heartbeat behind.
    const { rows: held } = await db.pool.query<{ id: string }>(`SELECT id FROM ${ALL_RUNS} AS task_runs WHERE status = 'running' AND orchestrator_id = $1`, [firstId])
    expect(new Set(held.map((r) => r.id))).toEqual(inFlight)

    const second = startRun(env(), ['--log-format', 'json', '--concurrency', '20'])
    await second.started()
    await waitFor(() => allIn(db.pool, ['completed']), { timeoutMs: 30_000, what: 'every run completed' })
    expect(await statusCounts(db.pool)).toEqual({ completed: 40 })

    const arrivals = worker.arrivals()
    expect(new Set(arrivals.keys())).toEqual(new Set(ids))
    const twice = [...arrivals].filter(([, n]) => n > 1).map(([id]) => id)
    expect(new Set(twice)).toEqual(inFlight)
    expect([...arrivals.values()].every((n) => n <= 2)).toBe(true)

    // A run lost with its orchestrator used up its attempt; the others ran once.
    const { rows } = await db.pool.query<{ id: string; attempt: number; previous_attempts: Array<Record<string, unknown>> }>(
      `SELECT id, attempt, previous_attempts FROM ${ALL_RUNS} AS task_runs`)
    for (const row of rows) {
      if (inFlight.has(row.id)) {
        expect(row.attempt).toBe(2)
        expect(row.previous_attempts).toEqual([expect.objectContaining({ attempt: 1, error: 'orchestrator lost', errorCode: 'ORCHESTRATOR_LOST' })])
      } else {
        expect(row).toMatchObject({ attempt: 1, previous_attempts: [] })
      }
    }
    // The dead orchestrator's row is gone; the live one is registered.
    const { rows: orchestrators } = await db.pool.query<{ id: string }>('SELECT id FROM orchestrators')
    expect(orchestrators.map((o) => o.id)).not.toContain(firstId)
    await second.waitForLog((l) => l.event === 'recovered' && l.count === 20)
    // One line per run it took back, as for every other state change of a run.
    const handedBack = second.logs().filter((l) => l.event === 'run' && l.status === 'pending' && l.errorCode === 'ORCHESTRATOR_LOST')
    expect(new Set(handedBack.map((l) => l.runId))).toEqual(inFlight)
    expect(handedBack).toHaveLength(20)
    expect(handedBack.every((l) => l.attempt === 1 && typeof l.taskId === 'string')).toBe(true)

    expect((await second.stop('SIGTERM')).code).toBe(0)
  })

  it('fences an orchestrator that was taken for dead: its late results do not overwrite the new ones', async () => {
    worker.behave('job', (r) => (r.attempt === 1 ? hold() : ok('fresh')))
    const ids = await enqueueMany(db.pool, 'job', 3)
    const frozen = startRun(env(), ['--log-format', 'json'])
    const frozenId = await frozen.started()
    await worker.until(() => worker.held().length === 3, { what: '3 runs held' })
    // Frozen, not dead: a long GC pause, a suspended VM. Its heartbeat goes stale.
    frozen.child.kill('SIGSTOP')
    try {
      const other = startRun(env(), ['--log-format', 'json'])
      await other.started()
      await waitFor(() => allIn(db.pool, ['completed'], ids), { what: 'the other orchestrator to finish the runs' })
      frozen.child.kill('SIGCONT')
      // The frozen one wakes up and its workers answer at last: too late.
      await frozen.waitForLog((l) => l.event === 'reregistered', { what: 'the re-registration' })
      worker.releaseAll(ok('stale'))
      for (const id of ids) await frozen.waitForLog((l) => l.event === 'fenced' && l.runId === id, { what: `the fenced result of ${id}` })
      const { rows } = await db.pool.query<{ output: unknown; attempt: number; orchestrator_id: string }>(`SELECT output, attempt, orchestrator_id FROM ${ALL_RUNS} AS task_runs`)
      expect(rows).toHaveLength(3)
      for (const row of rows) {
        expect(row.output).toBe('fresh')
        expect(row.attempt).toBe(2)
        expect(row.orchestrator_id).not.toBe(frozenId)
      }
      expect((await frozen.stop('SIGTERM')).code).toBe(0)
      expect((await other.stop('SIGTERM')).code).toBe(0)
    } finally {
      frozen.child.kill('SIGCONT')
    }
  })

  it('dead-letters a run that kills its orchestrator every time instead of looping', async () => {
    await registerTasks(db.url, worker.url, [{ id: 'poison', retries: 1, retryBackoff: 'fixed', retryDelayMs: 0 }], 'poison-service')
    worker.behave('poison', () => hold())
    const [runId] = await enqueueMany(db.pool, 'poison', 1)
    for (let attempt = 1; attempt <= 2; attempt++) {
      const victim = startRun(env(), ['--log-format', 'json'])
      await worker.until(() => worker.requestsFor(runId).length === attempt, { what: `attempt ${attempt} dispatched` })
      victim.child.kill('SIGKILL')
      await victim.done
    }
    // A third start finds the second attempt lost too: retries exhausted, into the DLQ.
    const last = startRun(env(), ['--log-format', 'json'])
    await waitFor(async () => {
      const { rows: [r] } = await db.pool.query<{ status: string }>(`SELECT status FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [runId])
      return r.status === 'failed'
    }, { what: 'the poison run to fail', timeoutMs: 20_000 })
    const { rows: dlq } = await db.pool.query('SELECT attempts, error_code FROM dlq WHERE task_run_id = $1', [runId])
    expect(dlq).toEqual([{ attempts: 2, error_code: 'ORCHESTRATOR_LOST' }])
    expect(worker.requestsFor(runId)).toHaveLength(2)
    // The orchestrator that dead-lettered it says so, in the run's own line.
    await last.waitForLog((l) => l.event === 'run' && l.runId === runId && l.status === 'failed' && l.errorCode === 'ORCHESTRATOR_LOST' && l.attempt === 2,
      { what: 'the line of the dead-lettered run' })
    expect((await last.stop('SIGTERM')).code).toBe(0)
  })
})
