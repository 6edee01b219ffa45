/**
 * The schedule loop of `pipeweave run` (SPEC §7; issue 12 acceptance 4 and the schedule half of 5),
 * with real `pipeweave run` processes, a real stub worker and real PostgreSQL: each tick enqueued
 * once fleet-wide (a compare-and-set on last_tick), overlap skip, ticks skipped during a
 * maintenance window as one control_events row, --backfill after a stopped fleet, and schedules
 * across restarts. A scheduled run carries its tick in its idempotency key
 * (`schedule:NAME@<ISO tick>`): the tests count runs by tick.
 *
 * Two cases drive the loop in-process (createOrchestrator), for what a process cannot be made to
 * do: read the server's clock as a fixed date in 2026 (the Berlin daylight-saving instants), and
 * lose the database for a while (catch-up within the stale time).
 */
import { createScheduleStore, type ScheduleStore } from '../src/orchestrator/scheduler'
import { json, runCli } from './helpers/cli'
import { ALL_RUNS, createTestDatabase, type TestDatabase } from './helpers/db'
import { startInProcess } from './helpers/in-process'
import { allIn, quickEnv, registerTasks, type RunProcess, startRun } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { hold, ok, startWorker, type StubWorker } from './helpers/worker'

let db: TestDatabase
let worker: StubWorker

beforeEach(async () => {
  db = await createTestDatabase({ migrated: true })
  worker = await startWorker()
  await registerTasks(db.url, worker.url, [
    { id: 'tick', retries: 0 },
    { id: 'slow', retries: 0, concurrency: 1 },
  ])
})

afterEach(async () => {
  await worker.close()
  await db.drop()
})

const SECOND = 1000
const iso = (ms: number) => new Date(ms).toISOString()
const cli = (...args: string[]) => runCli(args, { env: db.env })
const start = (count: number): RunProcess[] => Array.from({ length: count }, () => startRun(quickEnv(db.env), ['--log-format', 'json']))

/** The ticks of schedule `name` that became runs, in order (a tick twice appears twice). */
async function runTicks(name: string): Promise<number[]> {
  const { rows } = await db.pool.query<{ key: string }>(
    `SELECT idempotency_key AS key FROM ${ALL_RUNS} AS r WHERE idempotency_key LIKE $1 ORDER BY 1`, [`schedule:${name}@%`])
  return rows.map((r) => Date.parse(r.key.slice(r.key.indexOf('@') + 1))).sort((a, b) => a - b)
}

async function lastTick(name: string): Promise<number> {
  const { rows: [row] } = await db.pool.query<{ last_tick: Date }>('SELECT last_tick FROM schedules WHERE name = $1', [name])
  return row.last_tick.getTime()
}

interface EventRow { action: string; actor: string; reason: string | null; detail: { cause?: string; from?: string; to?: string; count?: number | null } }
async function events(name: string, actions = ['skipped', 'missed']): Promise<EventRow[]> {
  const { rows } = await db.pool.query<EventRow>(
    `SELECT action, actor, reason, detail FROM control_events WHERE kind = 'schedule' AND target = $1 AND action = ANY ($2) ORDER BY id`,
    [`schedule:${name}`, actions])
  return rows
}

/** Every whole second in [from, to], as ms. */
function seconds(from: number, to: number, step = SECOND): number[] {
  const out: number[] = []
  for (let t = from; t <= to; t += step) out.push(t)
  return out
}

/** The first whole second after `ms`. */
const nextSecond = (ms: number) => Math.floor(ms / SECOND) * SECOND + SECOND

function duplicates(ticks: number[]): string[] {
  return ticks.filter((t, i) => ticks.indexOf(t) !== i).map(iso)
}

async function stopAll(runs: RunProcess[]): Promise<void> {
  const exits = await Promise.all(runs.map((r) => r.stop('SIGTERM')))
  expect(exits.map((e) => e.code)).toEqual(runs.map(() => 0))
}

describe('schedules in pipeweave run', () => {
  it('every second with three orchestrators for 10 s: one run per tick, no tick twice, none missed', async () => {
    const runs = start(3)
    await Promise.all(runs.map((r) => r.started()))
    const set = await cli('schedules:set', 'every', '--cron', '*/1 * * * * *', '--task', 'tick', '--overlap', 'allow', '--json')
    expect(set.code).toBe(0)
    const created = Date.parse(json<{ schedule: { lastTick: string } }>(set).schedule.lastTick)

    await waitFor(async () => (await lastTick('every')) >= created + 10 * SECOND, { timeoutMs: 60_000, what: '10 s of ticks' })
    expect((await cli('schedules:remove', 'every')).code).toBe(0)
    await waitFor(() => allIn(db.pool, ['completed']), { timeoutMs: 30_000, what: 'every scheduled run completed' })

    const ticks = await runTicks('every')
    expect(duplicates(ticks)).toEqual([])
    // Every second from the first after the schedule was set to the last decided: each one run.
    expect(ticks.map(iso)).toEqual(seconds(nextSecond(created), ticks[ticks.length - 1]).map(iso))
    expect(ticks.length).toBeGreaterThanOrEqual(10)
    // Fleet-wide once: every tick was decided (logged as enqueued) by exactly one of the three.
    const decided = runs.flatMap((r) => r.logs().filter((l) => l.event === 'schedule' && l.outcome === 'enqueued').map((l) => Date.parse(String(l.tick))))
    expect(decided.sort((a, b) => a - b).map(iso)).toEqual(ticks.map(iso))
    expect(await events('every')).toEqual([])
    // Each of them raced for the ticks (it read and tried them); which one wins is up to the scheduler.
    expect(worker.requests.length).toBe(ticks.length)
    await stopAll(runs)
  })

  it('overlap skip: nothing is enqueued while the previous tick\'s run is pending, then running; one row for the range', async () => {
    // 'slow' has concurrency 1: a blocker holds it, so the schedule's first run waits pending.
    worker.behave('slow', () => hold())
    const runs = start(2)
    await Promise.all(runs.map((r) => r.started()))
    const enqueued = await cli('tasks:enqueue', 'slow', '--input', '{"blocker":true}', '--json')
    const blockerId = json<{ runId: string }>(enqueued).runId
    await worker.until(() => worker.requests.some((r) => r.runId === blockerId), { what: 'the blocker running' })

    expect((await cli('schedules:set', 'ov', '--cron', '*/1 * * * * *', '--task', 'slow')).code).toBe(0)
    await waitFor(async () => (await runTicks('ov')).length === 1, { what: 'the first tick\'s run' })
    const [first] = await runTicks('ov')
    // Three more ticks while that run is pending (the blocker holds the task's one slot).
    await waitFor(async () => (await lastTick('ov')) >= first + 3 * SECOND, { timeoutMs: 30_000, what: 'three ticks while pending' })
    const { rows: [pending] } = await db.pool.query(`SELECT status FROM task_runs WHERE idempotency_key = $1`, [`schedule:ov@${iso(first)}`])
    expect(pending).toEqual({ status: 'pending' })
    expect(await runTicks('ov')).toEqual([first])

    // The blocker finishes: the scheduled run starts (and is held), still no new run.
    worker.requests.find((r) => r.runId === blockerId)!.release(ok())
    await worker.until(() => worker.requests.some((r) => r.body.idempotencyKey === `schedule:ov@${iso(first)}`), { what: 'the scheduled run running' })
    const running = await lastTick('ov')
    await waitFor(async () => (await lastTick('ov')) >= running + 3 * SECOND, { timeoutMs: 30_000, what: 'three ticks while running' })
    expect(await runTicks('ov')).toEqual([first])

    // It finishes: the next tick enqueues again.
    worker.behave('slow', () => ok())
    worker.releaseAll(ok())
    await waitFor(async () => (await runTicks('ov')).length >= 2, { timeoutMs: 30_000, what: 'a run after the overlap' })
    expect((await cli('schedules:remove', 'ov')).code).toBe(0)
    const ticks = await runTicks('ov')
    const skipped = await events('ov')
    // One row for the whole range of skipped ticks, pending and running alike, extended tick by tick
    // (on a slow machine a later run may still be pending at its next tick: a row of its own, later).
    expect(skipped[0]).toMatchObject({ action: 'skipped', detail: { cause: 'overlap', from: iso(first + SECOND) }, actor: expect.stringMatching(/^orchestrator:/) })
    const to = Date.parse(skipped[0].detail.to!)
    expect(skipped[0].detail.count).toBe((to - first) / SECOND)
    // The tick right after the range, once the run had finished, was a run again.
    expect(ticks[1]).toBe(to + SECOND)
    expect(skipped.slice(1).filter((row) => Date.parse(row.detail.from!) <= ticks[1])).toEqual([])
    expect(duplicates(ticks)).toEqual([])
    await stopAll(runs)
  })

  it('a maintenance window skips its ticks and records one control_events row for the range', async () => {
    const runs = start(2)
    await Promise.all(runs.map((r) => r.started()))
    const set = await cli('schedules:set', 'mw', '--cron', '*/1 * * * * *', '--task', 'tick', '--overlap', 'allow', '--json')
    const created = Date.parse(json<{ schedule: { lastTick: string } }>(set).schedule.lastTick)
    await waitFor(async () => (await runTicks('mw')).length >= 3, { timeoutMs: 30_000, what: 'three ticks' })

    expect((await cli('maintenance:request', '--reason', 'window', '--wait', '--timeout', '60')).code).toBe(0)
    await waitFor(async () => ((await events('mw'))[0]?.detail.count ?? 0) >= 3, { timeoutMs: 30_000, what: 'three ticks skipped' })
    expect((await cli('maintenance:exit')).code).toBe(0)
    const reopened = Date.now()
    await waitFor(async () => (await runTicks('mw')).filter((t) => t > reopened).length >= 3, { timeoutMs: 30_000, what: 'three ticks after the window' })
    expect((await cli('schedules:remove', 'mw')).code).toBe(0)

    const rows = await events('mw')
    expect(rows).toHaveLength(1)
    expect(rows[0]).toMatchObject({ action: 'skipped', detail: { cause: 'mode' }, actor: expect.stringMatching(/^orchestrator:/) })
    const from = Date.parse(rows[0].detail.from!)
    const to = Date.parse(rows[0].detail.to!)
    expect(rows[0].detail.count).toBe((to - from) / SECOND + 1)
    const ticks = await runTicks('mw')
    expect(duplicates(ticks)).toEqual([])
    expect(ticks.filter((t) => t >= from && t <= to)).toEqual([])
    // Every second from the first tick on: a run, or in the skipped range; none missed.
    const decided = [...ticks, ...seconds(from, to)].sort((a, b) => a - b)
    expect(decided.map(iso)).toEqual(seconds(nextSecond(created), decided[decided.length - 1]).map(iso))
    await stopAll(runs)
  })

  it('--backfill 10m: a stopped fleet\'s missed ticks of the last 10 minutes are enqueued, none older; without it none', async () => {
    for (const [name, extra] of [['bf', ['--backfill', '10m']], ['nobf', []]] as const) {
      expect((await cli('schedules:set', name, '--cron', '* * * * *', '--task', 'tick', '--overlap', 'allow', ...extra)).code).toBe(0)
    }
    // The fleet stopped 30 minutes ago: the schedules' last decided tick is that old.
    await db.pool.query(`UPDATE schedules SET last_tick = date_trunc('milliseconds', now() - interval '30 minutes'), created_at = now() - interval '31 minutes'`)
    const since = await lastTick('bf')
    const t0 = Date.now()
    const [run] = start(1)
    await run.started()
    const minute = (ms: number) => Math.floor(ms / 60_000) * 60_000
    await waitFor(async () => (await lastTick('bf')) >= minute(t0) && (await lastTick('nobf')) >= minute(t0), { timeoutMs: 30_000, what: 'both schedules caught up' })
    const t1 = Date.now()
    await waitFor(() => allIn(db.pool, ['completed']), { timeoutMs: 30_000, what: 'the backfilled runs completed' })

    const bf = await runTicks('bf')
    expect(duplicates(bf)).toEqual([])
    // The ticks within 10 minutes of the moment the orchestrator decided them (between t0 and t1), consecutive.
    expect(bf[0]).toBeGreaterThanOrEqual(t0 - 600_000)
    expect(bf[0] - 60_000).toBeLessThan(t1 - 600_000)
    expect(bf.map(iso)).toEqual(seconds(bf[0], bf[bf.length - 1], 60_000).map(iso))
    expect(bf.length).toBeGreaterThanOrEqual(10)
    expect(bf.length).toBeLessThanOrEqual(11)
    // The older ones: one row, from the first tick after the fleet stopped to the one before the first enqueued.
    const missed = await events('bf')
    expect(missed).toEqual([expect.objectContaining({ action: 'missed', detail: expect.objectContaining({ cause: 'no-orchestrator' }) })])
    expect(missed[0].detail).toMatchObject({ from: iso(minute(since) + 60_000), to: iso(bf[0] - 60_000) })
    expect(missed[0].detail.count).toBe((bf[0] - 60_000 - (minute(since) + 60_000)) / 60_000 + 1)

    // Without --backfill: nothing from before the orchestrator started; the range is one row too.
    const nobf = await runTicks('nobf')
    expect(nobf.filter((t) => t < t0)).toEqual([])
    const nobfMissed = await events('nobf')
    expect(nobfMissed).toHaveLength(1)
    expect(nobfMissed[0].detail).toMatchObject({ cause: 'no-orchestrator', from: iso(minute(since) + 60_000) })
    expect(Date.parse(nobfMissed[0].detail.to!)).toBeGreaterThanOrEqual(minute(t0) - 60_000)
    await stopAll([run])
  })

  it('restarting every orchestrator keeps a schedule ticking once: a rolling restart misses nothing, a stopped fleet only its gap', async () => {
    const [a, b] = start(2)
    await Promise.all([a.started(), b.started()])
    const set = await cli('schedules:set', 'rs', '--cron', '*/1 * * * * *', '--task', 'tick', '--overlap', 'allow', '--json')
    const created = Date.parse(json<{ schedule: { lastTick: string } }>(set).schedule.lastTick)
    const ticksAfter = async (ms: number, n: number, what: string) => waitFor(async () => (await runTicks('rs')).filter((t) => t > ms).length >= n, { timeoutMs: 30_000, what })
    await ticksAfter(created, 3, 'three ticks')

    // Rolling: one at a time, always one alive.
    await stopAll([a])
    const [c] = start(1)
    await c.started()
    await stopAll([b])
    const [d] = start(1)
    await d.started()
    await ticksAfter(Date.now(), 3, 'three ticks after the rolling restart')
    const rolled = await lastTick('rs')
    expect(await events('rs')).toEqual([])

    // The whole fleet stops; the schedule's next tick goes overdue (no orchestrator takes it).
    await stopAll([c, d])
    await waitFor(async () => {
      const list = json<{ schedules: Array<{ name: string; nextTick: string }> }>(await cli('schedules:list', '--json'))
      return Date.parse(list.schedules.find((s) => s.name === 'rs')!.nextTick) < Date.now() - 1500
    }, { timeoutMs: 30_000, what: 'the next tick overdue' })
    const [e, f] = start(2)
    await Promise.all([e.started(), f.started()])
    await ticksAfter(Date.now(), 3, 'three ticks after the full restart')
    expect((await cli('schedules:remove', 'rs')).code).toBe(0)

    const ticks = await runTicks('rs')
    expect(duplicates(ticks)).toEqual([])
    // The stopped fleet's gap is one 'missed' row (no backfill), after everything the rolling restart kept.
    const missed = await events('rs')
    expect(missed).toHaveLength(1)
    expect(missed[0]).toMatchObject({ action: 'missed', detail: { cause: 'no-orchestrator' } })
    const from = Date.parse(missed[0].detail.from!)
    const to = Date.parse(missed[0].detail.to!)
    expect(from).toBeGreaterThan(rolled)
    expect(missed[0].detail.count).toBe((to - from) / SECOND + 1)
    expect(ticks.filter((t) => t >= from && t <= to)).toEqual([])
    const decided = [...ticks, ...seconds(from, to)].sort((x, y) => x - y)
    expect(decided.map(iso)).toEqual(seconds(nextSecond(created), decided[decided.length - 1]).map(iso))
    await stopAll([e, f])
  })
})

describe('the schedule loop in-process (createOrchestrator)', () => {
  /** The loop's own statements, with the server's clock read as `clock()`. */
  const atClock = (clock: () => number) => (database: Parameters<typeof createScheduleStore>[0], id: string): ScheduleStore => {
    const real = createScheduleStore(database, id)
    return { ...real, read: async () => ({ ...(await real.read()), nowMs: clock() }) }
  }

  it('30 2 * * * in Europe/Berlin, decided by the loop: 2026-03-29 right after the jump (01:00 UTC), 2026-10-25 once (00:30 UTC)', async () => {
    expect((await cli('schedules:set', 'berlin', '--cron', '30 2 * * *', '--timezone', 'Europe/Berlin', '--task', 'tick', '--overlap', 'allow', '--backfill', '366d')).code).toBe(0)
    await db.pool.query(`UPDATE schedules SET last_tick = '2026-03-27T00:00:00Z' WHERE name = 'berlin'`)
    // The server's clock as the loop reads it: 2026-10-27 12:00 UTC, moving on.
    const epoch = Date.now()
    const clock = () => Date.parse('2026-10-27T12:00:00Z') + (Date.now() - epoch)
    const orchestrator = await startInProcess(db.url, { scheduleStore: atClock(clock), concurrency: 20, pollIntervalMs: 100, maintenanceCheckIntervalMs: 500 })
    await waitFor(async () => (await lastTick('berlin')) === Date.parse('2026-10-27T01:30:00Z'), { timeoutMs: 60_000, what: 'the loop caught up to 2026-10-27' })
    await waitFor(() => allIn(db.pool, ['completed']), { timeoutMs: 60_000, what: 'the runs completed' })
    expect(await orchestrator.stop()).toEqual({ exitCode: 0 })

    const ticks = (await runTicks('berlin')).map(iso)
    expect(duplicates(await runTicks('berlin'))).toEqual([])
    expect(ticks.filter((t) => t >= '2026-03-27' && t < '2026-03-31')).toEqual([
      '2026-03-27T01:30:00.000Z', '2026-03-28T01:30:00.000Z', '2026-03-29T01:00:00.000Z', '2026-03-30T00:30:00.000Z',
    ])
    expect(ticks.filter((t) => t >= '2026-10-24' && t < '2026-10-28')).toEqual([
      '2026-10-24T00:30:00.000Z', '2026-10-25T00:30:00.000Z', '2026-10-26T01:30:00.000Z', '2026-10-27T01:30:00.000Z',
    ])
    // One tick a day from 2026-03-27 to 2026-10-27: 215 days.
    expect(ticks).toHaveLength(215)
  })

  it('a database outage while the orchestrator lives: ticks within the stale time are caught up, older ones are one missed row', async () => {
    let downUntil = 0
    const flaky = (database: Parameters<typeof createScheduleStore>[0], id: string): ScheduleStore => {
      const real = createScheduleStore(database, id)
      const down = () => {
        if (Date.now() < downUntil) throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' })
      }
      return {
        read: async () => { down(); return real.read() },
        tick: async (s, t) => { down(); return real.tick(s, t) },
        miss: async (s, f, t, n, cause) => { down(); return real.miss(s, f, t, n, cause) },
      }
    }
    const orchestrator = await startInProcess(db.url, { scheduleStore: flaky, staleMs: 6000, pollIntervalMs: 100, maintenanceCheckIntervalMs: 500 })
    expect((await cli('schedules:set', 'out', '--cron', '*/1 * * * * *', '--task', 'tick', '--overlap', 'allow')).code).toBe(0)
    await waitFor(async () => (await runTicks('out')).length >= 2, { timeoutMs: 30_000, what: 'two ticks' })

    // Two seconds without the database (well under the stale time of 6 s): caught up, nothing missed.
    downUntil = Date.now() + 2000
    await waitFor(async () => (await runTicks('out')).filter((t) => t > downUntil).length >= 2, { timeoutMs: 30_000, what: 'ticks after a short outage' })
    expect(await events('out')).toEqual([])
    const short = await runTicks('out')
    expect(short.map(iso)).toEqual(seconds(short[0], short[short.length - 1]).map(iso))

    // Ten seconds (over it): the ticks older than the stale time when it came back are missed, one row.
    const longFrom = Date.now()
    downUntil = longFrom + 10_000
    await waitFor(async () => (await runTicks('out')).filter((t) => t > downUntil).length >= 2, { timeoutMs: 30_000, what: 'ticks after a long outage' })
    expect(await orchestrator.stop()).toEqual({ exitCode: 0 })
    const missed = await events('out')
    expect(missed).toHaveLength(1)
    expect(missed[0]).toMatchObject({ action: 'missed', detail: { cause: 'late' } })
    const from = Date.parse(missed[0].detail.from!)
    const to = Date.parse(missed[0].detail.to!)
    expect(from).toBeGreaterThan(longFrom - 2 * SECOND)
    expect(to).toBeLessThan(downUntil)
    const ticks = await runTicks('out')
    // Back after downUntil: the ticks of the last 6 s (the stale time) were caught up.
    expect(ticks.filter((t) => t > to && t < downUntil).length).toBeGreaterThanOrEqual(2)
    expect(duplicates(ticks)).toEqual([])
    const decided = [...ticks, ...seconds(from, to)].sort((x, y) => x - y)
    expect(decided.map(iso)).toEqual(seconds(ticks[0], decided[decided.length - 1]).map(iso))
  })
})
