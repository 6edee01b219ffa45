/**
 * Issue 12, acceptance 1, its dispatch half (SPEC §7, pause and resume), with three real
 * `pipeweave run` processes and a real HTTP worker: with 500 pending runs of task A and 500 of
 * task B, pausing A (its paused_at, written with SQL until `tasks:pause` exists) stops A's
 * dispatches within one poll interval while B drains; paused work holds no drain (`--until-idle`
 * exits, maintenance is reached with A's runs still pending and counted apart); resuming drains
 * A. A service's pause covers its tasks. Fails without the pause in the claim: A drains with B.
 */
import { requestMaintenance, exitMaintenance } from '../src/maintenance/maintenance'
import * as state from '../src/sql/orchestrator-state'
import * as runs from '../src/sql/task-runs'
import { ALL_RUNS, apiDatabase, createTestDatabase, type TestDatabase } from './helpers/db'
import { allIn, enqueueMany, queryable, quickEnv, registerTasks, type RunProcess, startRun } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { startWorker, type StubWorker } from './helpers/worker'

const POLL_MS = 300

describe('pause and resume in the claim (issue 12, acceptance 1)', () => {
  let db: TestDatabase
  let worker: StubWorker
  const started: RunProcess[] = []

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    // Slow enough that the queue lasts a few seconds with 3 × 4 runs in flight.
    worker.otherwise(() => ({ kind: 'reply', status: 200, body: { output: null }, delayMs: 25 }))
    await registerTasks(db.url, worker.url, [{ id: 'A', retries: 0 }, { id: 'B', retries: 0 }])
  })

  afterEach(async () => {
    await Promise.all(started.splice(0).map((r) => r.stop()))
    await worker.close()
    await db.drop()
  })

  const env = () => quickEnv({ ...db.env, POLL_INTERVAL_MS: String(POLL_MS) })
  const serverNow = async () => (await db.pool.query<{ now: Date }>(`SELECT clock_timestamp() AS now`)).rows[0].now
  const counts = async (task: string) => (await db.pool.query<{ pending: number; completed: number; last_start: Date | null }>(`
    SELECT count(*) FILTER (WHERE status = 'pending')::int AS pending, count(*) FILTER (WHERE status = 'completed')::int AS completed,
           max(started_at) AS last_start
      FROM ${ALL_RUNS} AS r WHERE task_id = $1`, [task])).rows[0]

  it('pausing A stops its dispatches within one poll interval while B drains; paused runs hold no drain; resuming drains A', async () => {
    const procs = [0, 1, 2].map(() => startRun(env(), ['--log-format', 'json', '--concurrency', '4']))
    started.push(...procs)
    await Promise.all(procs.map((p) => p.started()))
    // Interleaved, so that both tasks are being dispatched when A is paused.
    const ids: Record<'A' | 'B', string[]> = { A: [], B: [] }
    for (let i = 0; i < 5; i++) {
      ids.A.push(...await enqueueMany(db.pool, 'A', 100))
      ids.B.push(...await enqueueMany(db.pool, 'B', 100))
    }
    await worker.until(() => worker.requests.filter((r) => r.taskId === 'A').length >= 50, { timeoutMs: 30_000, what: '50 runs of A dispatched' })

    await db.pool.query(`UPDATE tasks SET paused_at = now(), paused_by = 'test', pause_reason = 'acceptance 1' WHERE id = 'A'`)
    const pausedAt = await serverNow()
    const pausedLocal = Date.now()

    await waitFor(() => allIn(db.pool, ['completed'], ids.B), { timeoutMs: 60_000, what: 'B to drain while A is paused' })
    const a = await counts('A')
    // No run of A started later than one poll interval after the pause, and none reached the
    // worker later than that (plus the moment a dispatch takes to leave).
    expect(a.last_start!.getTime()).toBeLessThanOrEqual(pausedAt.getTime() + POLL_MS)
    const lateA = worker.requests.filter((r) => r.taskId === 'A' && r.arrivedAt > pausedLocal + POLL_MS + 200)
    expect(lateA.map((r) => r.runId)).toEqual([])
    expect(a.pending).toBeGreaterThan(0)
    expect(a.pending + a.completed).toBe(500)

    // Paused work does not hold a drain: nothing else is due or running.
    const { rows: [remains] } = await queryable(db.pool).query<{ remains: boolean }>(runs.workRemains)
    expect(remains.remains).toBe(false)
    const idle = startRun(env(), ['--log-format', 'json', '--until-idle'])
    started.push(idle)
    expect((await idle.done).code).toBe(0)
    const api = await apiDatabase(db.url)
    try {
      const requested = await requestMaintenance(api, { actor: 'test', reason: 'paused work holds no drain' })
      expect(requested.mode).toBe('maintenance')
      const { rows: [status] } = await queryable(db.pool).query<{ pending: number; paused: Array<{ id: string; pendingRuns: number }> }>(state.status, [30_000])
      expect(status).toMatchObject({ pending: 0, paused: [{ id: 'A', pendingRuns: a.pending }] })
      await exitMaintenance(api, { actor: 'test' })
    } finally {
      await api.close()
    }
    // Still held, two poll intervals on.
    await new Promise((resolve) => setTimeout(resolve, 2 * POLL_MS))
    expect((await counts('A')).pending).toBe(a.pending)

    await db.pool.query(`UPDATE tasks SET paused_at = NULL, paused_by = NULL, pause_reason = NULL WHERE id = 'A'`)
    await waitFor(() => allIn(db.pool, ['completed'], ids.A), { timeoutMs: 60_000, what: 'A to drain once resumed' })
    const arrivals = worker.arrivals()
    expect(arrivals.size).toBe(1000)
    expect([...arrivals.values()].every((n) => n === 1)).toBe(true)
    const exits = await Promise.all(procs.map((p) => p.stop()))
    expect(exits.map((e) => e.code)).toEqual([0, 0, 0])
  })

  it("a service's pause holds every task of the service; resuming it lets them run", async () => {
    const proc = startRun(env(), ['--log-format', 'json'])
    started.push(proc)
    await proc.started()
    await db.pool.query(`UPDATE services SET paused_at = now(), paused_by = 'test' WHERE id = 'stub'`)
    const ids = [...await enqueueMany(db.pool, 'A', 5), ...await enqueueMany(db.pool, 'B', 5)]
    await new Promise((resolve) => setTimeout(resolve, 3 * POLL_MS))
    expect(worker.requests).toHaveLength(0)
    expect(await allIn(db.pool, ['pending'], ids)).toBe(true)
    await db.pool.query(`UPDATE services SET paused_at = NULL, paused_by = NULL WHERE id = 'stub'`)
    await waitFor(() => allIn(db.pool, ['completed'], ids), { timeoutMs: 10_000, what: 'the runs once the service is resumed' })
    expect((await proc.stop()).code).toBe(0)
  })

  it('a resume (or a changed rate limit) wakes every orchestrator: no poll interval to wait', async () => {
    // Polling once a minute: only the notification of the resume can start the runs in time.
    const proc = startRun(quickEnv({ ...db.env, POLL_INTERVAL_MS: '60000' }), ['--log-format', 'json'])
    started.push(proc)
    await proc.started()
    await db.pool.query(`UPDATE tasks SET paused_at = now() WHERE id = 'A'`)
    const ids = await enqueueMany(db.pool, 'A', 3)
    await new Promise((resolve) => setTimeout(resolve, 500))
    expect(worker.requests).toHaveLength(0)
    await db.pool.query(`UPDATE tasks SET paused_at = NULL WHERE id = 'A'`)
    await waitFor(() => allIn(db.pool, ['completed'], ids), { timeoutMs: 20_000, what: 'the runs once A is resumed' })
    expect((await proc.stop()).code).toBe(0)
  })
})
