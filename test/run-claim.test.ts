/**
 * The claim (SPEC §5): lowest priority first then oldest, at most `concurrency` in flight, and never
 * more running runs of a task than its `tasks.concurrency`. A real `pipeweave run`, a real worker.
 */
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { allIn, enqueueMany, enqueueOne, quickEnv, registerTasks, startRun, statusCounts } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { hold, ok, startWorker, type StubWorker } from './helpers/worker'

describe('pipeweave run: the claim', () => {
  let db: TestDatabase
  let worker: StubWorker

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [
      { id: 'urgent', priority: 10, concurrency: 2, retries: 0 },
      { id: 'normal', priority: 50, retries: 0 },
      { id: 'bulk', priority: 100, retries: 0 },
    ])
  })

  afterEach(async () => {
    await worker.close()
    await db.drop()
  })

  it('completes 1,000 runs across 3 tasks, never more than 2 of the limited task at once', async () => {
    // Answers come back on a later turn of the worker's event loop, so runs overlap for real.
    worker.otherwise((r) => ({ kind: 'reply', status: 200, body: { output: { n: (r.body.input as { n: number }).n } }, delayMs: r.taskId === 'urgent' ? 3 : 1 }))
    const ids = [
      ...(await enqueueMany(db.pool, 'urgent', 300)),
      ...(await enqueueMany(db.pool, 'normal', 350)),
      ...(await enqueueMany(db.pool, 'bulk', 350)),
    ]
    expect(new Set(ids).size).toBe(1000)

    const run = startRun(db.env, ['--log-format', 'json', '--concurrency', '25', '--until-idle'], { timeoutMs: 100_000 })
    const result = await run.done
    expect(result.code).toBe(0)

    expect(await statusCounts(db.pool)).toEqual({ completed: 1000 })
    expect(worker.requests).toHaveLength(1000)
    expect(new Set(worker.requests.map((r) => r.runId)).size).toBe(1000)
    expect(worker.maxInFlight.get('urgent')).toBe(2)
    // --concurrency bounds the runs in flight, all tasks together.
    expect(worker.maxInFlightTotal).toBeLessThanOrEqual(25)
    // The other tasks are not limited: they did overlap beyond 2, so the limit above is real.
    expect(Math.max(worker.maxInFlight.get('normal') ?? 0, worker.maxInFlight.get('bulk') ?? 0)).toBeGreaterThan(2)
    const { rows: [wrong] } = await db.pool.query(
      `SELECT count(*)::int AS n FROM ${ALL_RUNS} AS task_runs WHERE output->>'n' IS DISTINCT FROM input->>'n'`)
    expect(wrong.n).toBe(0)
  })

  it('starts lower priority values first, then older runs, when the queue is saturated', async () => {
    // Enqueued while no orchestrator runs: interleaved priorities, some overridden per run.
    for (let n = 1; n <= 36; n++) {
      await enqueueOne(db.pool, ['bulk', 'normal', 'urgent'][n % 3], { input: { n }, priority: n % 7 === 0 ? 5 : undefined })
    }
    const { rows: expected } = await db.pool.query<{ id: string; task_id: string }>(
      `SELECT id, task_id FROM ${ALL_RUNS} AS task_runs ORDER BY priority, created_at`)

    const run = startRun(quickEnv(db.env), ['--log-format', 'json', '--concurrency', '1', '--until-idle'])
    expect((await run.done).code).toBe(0)
    expect(await statusCounts(db.pool)).toEqual({ completed: 36 })
    // One at a time: the worker sees them exactly in claim order.
    expect(worker.requests.map((r) => r.runId)).toEqual(expected.map((r) => r.id))
  })

  it('fills the first batch with the best runs the per-task limit allows, then takes the next best as slots free', async () => {
    worker.otherwise(() => hold())
    // 6 urgent (limit 2) ahead of 6 normal ahead of 6 bulk.
    const urgent = await enqueueMany(db.pool, 'urgent', 6)
    const normal = await enqueueMany(db.pool, 'normal', 6)
    const bulk = await enqueueMany(db.pool, 'bulk', 6)

    const run = startRun(quickEnv(db.env), ['--log-format', 'json', '--concurrency', '4'])
    await worker.until(() => worker.requests.length >= 4, { what: 'the first 4 dispatches' })
    await run.waitForLog((l) => l.event === 'run' && l.status === 'running' && l.runId === worker.requests[3].runId)
    // Nothing more fits: 4 in flight. The first batch: 2 urgent (its limit), then the 2 best normal.
    expect(new Set(worker.requests.slice(0, 4).map((r) => r.runId))).toEqual(new Set([urgent[0], urgent[1], normal[0], normal[1]]))
    expect(worker.requests).toHaveLength(4)

    // Free a normal slot: the next best that fits is normal[2] (urgent is still at its limit).
    worker.requests.find((r) => r.runId === normal[0])!.release(ok())
    await worker.until(() => worker.requests.length >= 5, { what: 'the 5th dispatch' })
    expect(worker.requests[4].runId).toBe(normal[2])

    // Free an urgent slot: once urgent[0]'s result is recorded (until then it counts as running
    // under its task's limit), urgent[2] takes the next slot before any normal or bulk run. The
    // slot urgent[0]'s answer freed may go to a normal run first: it freed when the answer came,
    // before the write (SPEC §5).
    worker.requests.find((r) => r.runId === urgent[0])!.release(ok())
    await waitFor(() => allIn(db.pool, ['completed'], [urgent[0]]), { what: 'urgent[0] recorded' })
    await worker.until(() => worker.requests.length >= 6, { what: 'the 6th dispatch' })
    if (worker.requests[5].runId !== urgent[2]) {
      expect(worker.requests[5].runId).toBe(normal[3])
      worker.requests[5].release(ok())
      await worker.until(() => worker.requests.length >= 7, { what: 'the 7th dispatch' })
      expect(worker.requests[6].runId).toBe(urgent[2])
    }
    expect(worker.maxInFlight.get('urgent')).toBe(2)

    // Let everything through. Normal runs are unlimited and ahead of bulk: no bulk run starts
    // while a normal one waits (bulk may fill slots that urgent's limit leaves free, though).
    worker.otherwise(() => ok())
    worker.releaseAll()
    await waitFor(() => allIn(db.pool, ['completed']), { what: 'every run completed' })
    const arrival = worker.requests.map((r) => r.runId)
    expect(arrival).toHaveLength(18)
    const lastNormal = Math.max(...normal.map((id) => arrival.indexOf(id)))
    const firstBulk = Math.min(...bulk.map((id) => arrival.indexOf(id)))
    expect(firstBulk).toBeGreaterThan(lastNormal)
    expect(worker.maxInFlight.get('urgent')).toBe(2)
    expect((await run.stop('SIGTERM')).code).toBe(0)
  })
})
