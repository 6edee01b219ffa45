/**
 * What holds a drain and what does not (SPEC §4): runs scheduled for later (a retry's backoff) do
 * not, and are reported as scheduled; runs held by dead orchestrators (no `orchestrators` row, or a
 * heartbeat older than ORCHESTRATOR_STALE_MS) are handed back by the drain check before it counts,
 * using up their attempt (SPEC §5), so a killed fleet never holds a drain; and with nobody alive to
 * run due pending runs, `Status:` says so and points at maintenance:enter.
 */
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { json, runCli } from './helpers/cli'
import {
  addPendingRun, addTask, claim, complete, countRuns, eventsAfter, fail, heartbeat, lastEventId, mode, resetTo, startRun,
} from './helpers/maintenance-fixtures'

let db: TestDatabase

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  // retry_delay_ms 0: a handed-back run is due at once (so it holds the drain, visibly).
  await addTask(db.pool, 'instant-retry', { retries: 3, retryDelayMs: 0 })
  await addTask(db.pool, 'slow-retry', { retries: 3, retryDelayMs: 600_000, retryBackoff: 'fixed' })
  await addTask(db.pool, 'no-retry', { retries: 0 })
})
afterAll(async () => { await db.drop() })

const pipeweave = (args: string[], env: Record<string, string> = {}) => runCli(args, { env: { ...db.env, ...env } })

interface Status {
  mode: string
  pendingTasks: number
  runningTasks: number
  scheduledTasks: number
  liveOrchestrators: number
  message: string
}

function statusLine(stdout: string, key: string): string | undefined {
  return stdout.split('\n').find((l) => l.startsWith(`${key}: `))?.slice(key.length + 2)
}

describe('runs scheduled for later', () => {
  it('a retry scheduled 10 minutes ahead does not hold the drain and is reported as scheduled', async () => {
    await resetTo(db.pool, 'running')
    // A real retry: the first attempt fails and the run goes back with a 10-minute backoff.
    const runId = await startRun(db.pool, 'slow-retry', 'orch')
    const failed = await fail(db.pool, runId, 'orch', { error: 'worker said 503', code: 'HTTP_503', retryable: true })
    expect(failed.outcome).toBe('retried')
    expect(failed.scheduledFor!.getTime()).toBeGreaterThan(Date.now() + 9 * 60_000)
    const before = await lastEventId(db.pool)

    const request = await pipeweave(['maintenance:request', '--json'])
    expect(request.code).toBe(0)
    expect(json<Status>(request)).toMatchObject({ mode: 'maintenance', pendingTasks: 0, runningTasks: 0, scheduledTasks: 1 })
    expect((await eventsAfter(db.pool, before)).map((e) => e.to_mode)).toEqual(['waiting_for_maintenance', 'maintenance'])

    const human = await pipeweave(['maintenance:status'])
    expect(statusLine(human.stdout, 'Mode')).toBe('maintenance')
    expect(statusLine(human.stdout, 'Scheduled tasks')).toBe('1')
    expect(statusLine(human.stdout, 'Pending tasks')).toBe('0')
    expect(statusLine(human.stdout, 'Status')).toMatch(/1 scheduled/)

    // Untouched: still the pending second attempt, still 10 minutes ahead.
    const { rows: [run] } = await db.pool.query(`SELECT status, attempt, scheduled_for FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [runId])
    expect(run).toEqual({ status: 'pending', attempt: 2, scheduled_for: failed.scheduledFor })
  })

  it('in waiting_for_maintenance, the drain ends when the running run completes, the scheduled one waiting', async () => {
    await resetTo(db.pool, 'running')
    const running = await startRun(db.pool, 'instant-retry', 'orch')
    await addPendingRun(db.pool, 'instant-retry', { scheduledInMs: 600_000, attempt: 2 })
    expect(json<Status>(await pipeweave(['maintenance:request', '--json'])))
      .toMatchObject({ mode: 'waiting_for_maintenance', runningTasks: 1, pendingTasks: 0, scheduledTasks: 1 })
    await complete(db.pool, running, 'orch', null)
    expect(json<Status>(await pipeweave(['maintenance:status', '--json'])))
      .toMatchObject({ mode: 'maintenance', runningTasks: 0, pendingTasks: 0, scheduledTasks: 1 })
  })
})

describe('runs held by dead orchestrators', () => {
  // Heartbeats count from the server's start at the earliest (reap_orchestrators: nobody could
  // heartbeat while it was down), so nothing looks dead on a server younger than the stale time.
  // The suite's server may have just started when this file runs first: wait until it is older
  // than the default stale time (30 s) that these tests rely on.
  beforeAll(async () => {
    const { rows: [{ ms }] } = await db.pool.query<{ ms: number }>(
      `SELECT (extract(epoch FROM now() - pg_postmaster_start_time()) * 1000)::float8 AS ms`)
    const wait = 31_000 - ms
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
  }, 60_000)

  it('a run whose orchestrator has no row is handed back before the count, its attempt used up', async () => {
    await resetTo(db.pool, 'running')
    const runId = await startRun(db.pool, 'instant-retry', 'vanished')
    await db.pool.query(`DELETE FROM orchestrators WHERE id = 'vanished'`)

    const request = await pipeweave(['maintenance:request', '--json'])
    expect(request.code).toBe(0)
    const status = json<Status>(request)
    expect(status).toMatchObject({ mode: 'waiting_for_maintenance', runningTasks: 0, pendingTasks: 1, liveOrchestrators: 0 })
    // Nobody alive will run it: Status says so, and that maintenance:enter keeps it.
    expect(status.message).toMatch(/no orchestrator is alive/)
    expect(status.message).toMatch(/nothing will run/)
    expect(status.message).toMatch(/maintenance:enter/)

    const { rows: [run] } = await db.pool.query(
      `SELECT status, attempt, orchestrator_id, started_at, previous_attempts FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [runId])
    expect(run).toEqual({
      status: 'pending', attempt: 2, orchestrator_id: null, started_at: null,
      previous_attempts: [{ attempt: 1, error: 'orchestrator lost', errorCode: 'ORCHESTRATOR_LOST', at: expect.any(String) }],
    })

    const human = await pipeweave(['maintenance:status'])
    expect(statusLine(human.stdout, 'Status')).toMatch(/nothing will run.*maintenance:enter/)
    expect(statusLine(human.stdout, 'Live orchestrators')).toBe('0')

    const enter = await pipeweave(['maintenance:enter', '--json'])
    expect(json<Status>(enter)).toMatchObject({ mode: 'maintenance', pendingTasks: 1 })
    expect(await countRuns(db.pool, `id = $1 AND status = 'pending' AND attempt = 2`, [runId])).toBe(1)
  })

  it('a heartbeat older than ORCHESTRATOR_STALE_MS is dead: its row goes and its runs are handed back', async () => {
    await resetTo(db.pool, 'running')
    const runId = await startRun(db.pool, 'instant-retry', 'stale')
    await heartbeat(db.pool, 'stale', 120_000)

    // With a stale limit above the heartbeat's age, the orchestrator is alive: nothing is touched.
    const patient = await pipeweave(['maintenance:request', '--json'], { ORCHESTRATOR_STALE_MS: '600000' })
    expect(json<Status>(patient)).toMatchObject({ mode: 'waiting_for_maintenance', runningTasks: 1, liveOrchestrators: 1 })
    expect(await countRuns(db.pool, `id = $1 AND status = 'running'`, [runId])).toBe(1)

    // With the default (30 s), it is dead.
    const status = json<Status>(await pipeweave(['maintenance:status', '--json']))
    expect(status).toMatchObject({ mode: 'waiting_for_maintenance', runningTasks: 0, pendingTasks: 1, liveOrchestrators: 0 })
    expect(await countRuns(db.pool, `id = $1 AND status = 'pending' AND attempt = 2`, [runId])).toBe(1)
    const { rows } = await db.pool.query(`SELECT id FROM orchestrators`)
    expect(rows).toEqual([])
  })

  it('an exhausted run lost with its orchestrator goes to the DLQ, and the drain completes', async () => {
    await resetTo(db.pool, 'running')
    const runId = await startRun(db.pool, 'no-retry', 'killed')
    await heartbeat(db.pool, 'killed', 120_000)
    const before = await lastEventId(db.pool)

    const request = await pipeweave(['maintenance:request', '--json'])
    expect(json<Status>(request)).toMatchObject({ mode: 'maintenance', runningTasks: 0, pendingTasks: 0 })
    expect((await eventsAfter(db.pool, before)).map((e) => e.to_mode)).toEqual(['waiting_for_maintenance', 'maintenance'])

    const { rows: [run] } = await db.pool.query(`SELECT status, attempt, error FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [runId])
    expect(run).toEqual({ status: 'failed', attempt: 1, error: 'orchestrator lost' })
    const { rows: dlq } = await db.pool.query('SELECT task_run_id, task_id, attempts, error, previous_attempts FROM dlq')
    expect(dlq).toEqual([{
      task_run_id: runId, task_id: 'no-retry', attempts: 1, error: 'orchestrator lost',
      previous_attempts: [{ attempt: 1, error: 'orchestrator lost', errorCode: 'ORCHESTRATOR_LOST', at: expect.any(String) }],
    }])
  })

  it('runs of a killed fleet come back due at once (no backoff) and hold the drain until a survivor finishes them', async () => {
    await resetTo(db.pool, 'running')
    const runs = [await startRun(db.pool, 'slow-retry', 'fleet-1'), await startRun(db.pool, 'slow-retry', 'fleet-2')]
    // The fleet is killed: its heartbeats stop; one orchestrator survives.
    await heartbeat(db.pool, 'fleet-1', 120_000)
    await heartbeat(db.pool, 'fleet-2', 120_000)
    await heartbeat(db.pool, 'survivor')

    // The crashed work is due again, not scheduled past the drain, so it holds the drain…
    const waiting = json<Status>(await pipeweave(['maintenance:request', '--json']))
    expect(waiting).toMatchObject({ mode: 'waiting_for_maintenance', runningTasks: 0, pendingTasks: 2, scheduledTasks: 0, liveOrchestrators: 1 })
    expect(await countRuns(db.pool, `id = ANY ($1) AND status = 'pending' AND attempt = 2 AND scheduled_for <= now()`, [runs])).toBe(2)

    // …until the survivor has run it.
    const claimed = await claim(db.pool, 'survivor', 5)
    expect([...claimed].sort()).toEqual([...runs].sort())
    for (const id of claimed) await complete(db.pool, id, 'survivor', null)
    const done = json<Status>(await pipeweave(['maintenance:status', '--json']))
    expect(done).toMatchObject({ mode: 'maintenance', runningTasks: 0, pendingTasks: 0, scheduledTasks: 0 })
    expect(await countRuns(db.pool, `id = ANY ($1) AND status = 'completed' AND attempt = 2`, [runs])).toBe(2)
  })
})
