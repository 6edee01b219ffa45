/**
 * Issue 12, acceptance 2 (SPEC §7, the service breaker), with real `pipeweave run` processes and a
 * real HTTP worker that refuses connections for a while (a port with nothing listening; the stub
 * worker starts on that port later):
 *   - 200 runs with retries 3 and retryDelayMs 100, two orchestrators, a short cool-down set
 *     through PIPEWEAVE_BREAKER_COOLDOWN_MS: no run reaches the DLQ and none uses an attempt while
 *     the worker is away; the breaker opens, each half-open period lets exactly one probe through
 *     (its failure reopens with the cool-down doubled), the held runs still hold a drain; once the
 *     worker is back the first request it sees is alone (the probe), and all 200 complete within
 *     one cool-down (plus the drain itself);
 *   - past PIPEWEAVE_BREAKER_MAX_OPEN_MS, connect failures use attempts again (DLQ);
 *   - a service with the breaker off (manifest `breaker: false`, written here with SQL until the
 *     manifest carries it) keeps today's behaviour beside one with it on.
 * Each fails without the breaker: the runs would spend their 4 attempts in under a second and
 * land in the DLQ.
 */
import * as runs from '../src/sql/task-runs'
import { ALL_RUNS, createTestDatabase, type TestDatabase } from './helpers/db'
import { allIn, enqueueMany, queryable, quickEnv, registerTasks, type RunProcess, startRun, statusCounts } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { closedPort, startWorker, type StubWorker } from './helpers/worker'

interface ControlEvent {
  id: string
  action: string
  at: Date
  actor: string
  detail: Record<string, unknown> | null
}

describe('the service breaker (issue 12, acceptance 2)', () => {
  let db: TestDatabase
  let worker: StubWorker | undefined
  const started: RunProcess[] = []

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
  })

  afterEach(async () => {
    await Promise.all(started.splice(0).map((r) => r.stop()))
    await worker?.close()
    worker = undefined
    await db.drop()
  })

  const events = async (service = 'remote'): Promise<ControlEvent[]> => (await db.pool.query<ControlEvent>(
    `SELECT id, action, at, actor, detail FROM control_events WHERE kind = 'breaker' AND target = $1 ORDER BY id`, [`service:${service}`])).rows

  const orchestrators = (count: number, env: Record<string, string>, concurrency = 50) => {
    const list = Array.from({ length: count }, () => startRun(quickEnv({ ...db.env, ...env }), ['--log-format', 'json', '--concurrency', String(concurrency)]))
    started.push(...list)
    return list
  }

  it('holds 200 runs without using an attempt while the worker refuses connections, one probe per half-open period, and drains them within one cool-down of its return', async () => {
    const COOLDOWN_MS = 1000
    const port = await closedPort()
    await registerTasks(db.url, `http://127.0.0.1:${port}`, [{ id: 'call', retries: 3, retryDelayMs: 100, retryBackoff: 'fixed' }], 'remote')
    const procs = orchestrators(2, { PIPEWEAVE_BREAKER_COOLDOWN_MS: String(COOLDOWN_MS) })
    const ids = await Promise.all(procs.map((p) => p.started()))
    const ids200 = await enqueueMany(db.pool, 'call', 200)

    // Opened, then two half-open periods whose probe failed (cool-downs 1 s, 2 s, now 4 s).
    await waitFor(async () => (await events()).filter((e) => e.action === 'opened' && e.detail?.reopened === true).length >= 2,
      { timeoutMs: 30_000, what: 'the breaker to open and reopen twice' })
    const breakerRow = async () => (await db.pool.query<{ open_until: Date; cooldown_ms: number; failures: number }>(
      `SELECT breaker_open_until AS open_until, breaker_cooldown_ms AS cooldown_ms, breaker_failures AS failures FROM services WHERE id = 'remote'`)).rows[0]

    // Nothing used an attempt, nothing reached the DLQ, and the held runs hold a drain.
    const attempts = await db.pool.query<{ n: number; attempt: number; previous: number }>(
      `SELECT count(*)::int AS n, max(attempt) AS attempt, max(jsonb_array_length(previous_attempts)) AS previous FROM ${ALL_RUNS} AS r`)
    expect(attempts.rows[0]).toEqual({ n: 200, attempt: 1, previous: 0 })
    expect((await db.pool.query('SELECT 1 FROM dlq')).rowCount).toBe(0)
    expect(await statusCounts(db.pool)).toEqual({ pending: 200 })
    const { rows: [remains] } = await queryable(db.pool).query<{ remains: boolean }>(runs.workRemains)
    expect(remains.remains).toBe(true)

    // The worker comes back where it was.
    const state = await breakerRow()
    const back = Date.now()
    worker = await startWorker(port)
    await waitFor(() => allIn(db.pool, ['completed']), { timeoutMs: 60_000, intervalMs: 20, what: 'all 200 runs to complete' })
    const drained = Date.now()

    // Within one cool-down of its return: the next half-open moment (at most the current
    // cool-down away), then the drain of 200 runs (DRAIN_MS on a loaded 2-core machine).
    const DRAIN_MS = 3000
    expect(state.cooldown_ms).toBeGreaterThanOrEqual(4 * COOLDOWN_MS)
    expect(drained - back).toBeLessThanOrEqual(state.cooldown_ms + DRAIN_MS)
    // The probe came at the first half-open moment after the return, not a cool-down later.
    expect(worker.requests[0].arrivedAt).toBeLessThanOrEqual(Math.max(back, state.open_until.getTime()) + 1000)
    // The first request the worker saw was alone: the next one came after it was answered.
    expect(worker.requests[1].arrivedAt).toBeGreaterThanOrEqual(worker.requests[0].answeredAt!)

    // Every run reached the worker once, on its first attempt; no DLQ.
    const arrivals = worker.arrivals()
    expect(new Set(arrivals.keys())).toEqual(new Set(ids200))
    expect([...arrivals.values()].every((n) => n === 1)).toBe(true)
    expect(worker.requests.every((r) => r.attempt === 1 && (r.body.previousAttempts as unknown[]).length === 0)).toBe(true)
    expect((await db.pool.query('SELECT 1 FROM dlq')).rowCount).toBe(0)

    // The record: opened once, then per half-open period one probe, each failed probe followed by
    // a reopening (cool-down doubled) naming it, the last probe followed by the closing.
    const all = await events()
    const actors = new Set(ids.map((id) => `orchestrator:${id}`))
    expect(all.every((e) => actors.has(e.actor))).toBe(true)
    expect(all[0]).toMatchObject({ action: 'opened', detail: { reopened: false, cooldownMs: COOLDOWN_MS } })
    const rest = all.slice(1)
    const probes = rest.filter((e) => e.action === 'probe')
    expect(rest.map((e) => e.action)).toEqual([...probes.slice(0, -1).flatMap(() => ['probe', 'opened']), 'probe', 'closed'])
    probes.slice(0, -1).forEach((probe, i) => {
      const reopened = rest[2 * i + 1]
      expect(reopened.detail).toMatchObject({ reopened: true, probeRunId: probe.detail!.runId, cooldownMs: COOLDOWN_MS * 2 ** (i + 1) })
      // The next probe waited out the whole cool-down.
      expect(probes[i + 1].at.getTime() - reopened.at.getTime()).toBeGreaterThanOrEqual(COOLDOWN_MS * 2 ** (i + 1) - 5)
    })
    expect(probes.length).toBeGreaterThanOrEqual(3)
    expect(worker.requests[0].runId).toBe(probes[probes.length - 1].detail!.runId)

    // While it was down, after the first probe, the only connect failures were the probes' own:
    // one per half-open period, fleet-wide (not a burst from each orchestrator).
    const firstProbe = probes[0].at.getTime()
    const deferrals = procs.flatMap((p) => p.logs()).filter((l) => l.deferred === true && Date.parse(l.time) > firstProbe)
    expect(deferrals.map((l) => l.runId).sort()).toEqual(probes.slice(0, -1).map((e) => String(e.detail!.runId)).sort())

    const exits = await Promise.all(procs.map((p) => p.stop()))
    expect(exits.map((e) => e.code)).toEqual([0, 0])
  })

  it('past its longest open time (PIPEWEAVE_BREAKER_MAX_OPEN_MS) it holds nothing: connect failures use attempts again, into the DLQ', async () => {
    const port = await closedPort()
    await registerTasks(db.url, `http://127.0.0.1:${port}`, [{ id: 'call', retries: 3, retryDelayMs: 100, retryBackoff: 'fixed' }], 'remote')
    const [proc] = orchestrators(1, { PIPEWEAVE_BREAKER_COOLDOWN_MS: '500', PIPEWEAVE_BREAKER_MAX_OPEN_MS: '2500' }, 10)
    await proc.started()
    await enqueueMany(db.pool, 'call', 20)
    await waitFor(async () => (await events()).some((e) => e.action === 'opened'), { timeoutMs: 20_000, what: 'the breaker to open' })
    const { rows: [open] } = await db.pool.query<{ expires_at: Date }>(`SELECT breaker_expires_at AS expires_at FROM services WHERE id = 'remote'`)
    const { rows: [before] } = await db.pool.query<{ attempt: number }>(`SELECT max(attempt) AS attempt FROM ${ALL_RUNS} AS r`)
    expect(before.attempt).toBe(1)

    await waitFor(() => allIn(db.pool, ['failed']), { timeoutMs: 30_000, what: 'every run to fail into the DLQ' })
    const { rows: dead } = await db.pool.query<{ attempts: number; error_code: string; failed_at: Date; first_at: string }>(
      `SELECT attempts, error_code, failed_at, previous_attempts -> 0 ->> 'at' AS first_at FROM dlq`)
    expect(dead).toHaveLength(20)
    expect(dead.every((d) => d.attempts === 4 && d.error_code === 'ECONNREFUSED')).toBe(true)
    // Each attempt was used after the breaker had expired, none while it held the runs.
    expect(dead.every((d) => Date.parse(d.first_at) >= open.expires_at.getTime())).toBe(true)
    const actions = (await events()).map((e) => e.action)
    expect(actions).toContain('expired')
    expect(actions.indexOf('expired')).toBeGreaterThan(actions.indexOf('opened'))
    expect((await proc.stop()).code).toBe(0)
  })

  it('with the breaker off (breaker: false), today\'s behaviour: retries into the DLQ, beside a service whose breaker holds its runs', async () => {
    const [offPort, onPort] = [await closedPort(), await closedPort()]
    await registerTasks(db.url, `http://127.0.0.1:${offPort}`, [{ id: 'off-call', retries: 3, retryDelayMs: 100, retryBackoff: 'fixed' }], 'off')
    await registerTasks(db.url, `http://127.0.0.1:${onPort}`, [{ id: 'on-call', retries: 3, retryDelayMs: 100, retryBackoff: 'fixed' }], 'on')
    await db.pool.query(`UPDATE services SET breaker_enabled = false WHERE id = 'off'`)
    const procs = orchestrators(2, { PIPEWEAVE_BREAKER_COOLDOWN_MS: '60000' }, 20)
    await Promise.all(procs.map((p) => p.started()))
    const off = await enqueueMany(db.pool, 'off-call', 20)
    const on = await enqueueMany(db.pool, 'on-call', 20)

    await waitFor(() => allIn(db.pool, ['failed'], off), { timeoutMs: 30_000, what: 'the runs of the service without a breaker to fail' })
    await waitFor(async () => (await events('on')).some((e) => e.action === 'opened'), { timeoutMs: 20_000, what: 'the other breaker to open' })
    const { rows: dead } = await db.pool.query<{ task_id: string; attempts: number }>(`SELECT task_id, attempts FROM dlq`)
    expect(dead).toHaveLength(20)
    expect(dead.every((d) => d.task_id === 'off-call' && d.attempts === 4)).toBe(true)
    expect(await events('off')).toEqual([])
    await waitFor(() => allIn(db.pool, ['pending'], on), { what: 'the runs of the service with a breaker to be back in pending' })
    const { rows: [held] } = await db.pool.query<{ attempt: number }>(`SELECT max(attempt) AS attempt FROM ${ALL_RUNS} AS r WHERE id = ANY ($1)`, [on])
    expect(held.attempt).toBe(1)
    const exits = await Promise.all(procs.map((p) => p.stop()))
    expect(exits.map((e) => e.code)).toEqual([0, 0])
  })
})
