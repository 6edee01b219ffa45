/**
 * Several orchestrators on one database (SPEC §5): SKIP LOCKED hands each run to exactly one of
 * them, and a task's concurrency limit holds across all of them.
 */
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { allIn, enqueueMany, quickEnv, registerTasks, type RunProcess, startRun, statusCounts } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { startWorker, type StubWorker } from './helpers/worker'

describe('pipeweave run: three orchestrators on one database', () => {
  let db: TestDatabase
  let worker: StubWorker

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [
      { id: 'fast', retries: 0 },
      { id: 'limited', retries: 0, concurrency: 2 },
    ])
  })

  afterEach(async () => {
    await worker.close()
    await db.drop()
  })

  it('completes 2,000 runs, each reaching the worker exactly once', async () => {
    worker.behave('limited', () => ({ kind: 'reply', status: 200, body: { output: 'ok' }, delayMs: 2 }))
    const runs: RunProcess[] = [0, 1, 2].map(() => startRun(quickEnv(db.env), ['--log-format', 'json', '--concurrency', '20']))
    const ids = await Promise.all(runs.map((r) => r.started()))
    expect(new Set(ids).size).toBe(3)

    // Enqueued while all three are claiming, in batches, so that they compete for every batch.
    const enqueued: string[] = []
    for (let batch = 0; batch < 10; batch++) {
      enqueued.push(...(await enqueueMany(db.pool, 'fast', 190)))
      enqueued.push(...(await enqueueMany(db.pool, 'limited', 10)))
    }
    expect(new Set(enqueued).size).toBe(2000)

    await waitFor(() => allIn(db.pool, ['completed']), { timeoutMs: 90_000, what: 'all 2,000 runs completed' })
    expect(await statusCounts(db.pool)).toEqual({ completed: 2000 })

    const arrivals = worker.arrivals()
    expect(arrivals.size).toBe(2000)
    const twice = [...arrivals].filter(([, n]) => n !== 1)
    expect(twice).toEqual([])
    expect(new Set(arrivals.keys())).toEqual(new Set(enqueued))
    // The limit of 2 held across the three processes.
    expect(worker.maxInFlight.get('limited')).toBeLessThanOrEqual(2)

    // They did work side by side (which one gets how much is up to the scheduler).
    const { rows } = await db.pool.query<{ orchestrator_id: string; n: number }>(
      `SELECT orchestrator_id, count(*)::int AS n FROM ${ALL_RUNS} AS task_runs GROUP BY orchestrator_id`)
    expect(rows.every((r) => ids.includes(r.orchestrator_id))).toBe(true)
    expect(rows.length).toBeGreaterThanOrEqual(2)

    const exits = await Promise.all(runs.map((r) => r.stop('SIGTERM')))
    expect(exits.map((e) => e.code)).toEqual([0, 0, 0])
    const { rows: left } = await db.pool.query('SELECT id FROM orchestrators')
    expect(left).toEqual([])
  })
})
