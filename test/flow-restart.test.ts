/**
 * Flow-control state lives in the database (SPEC §7; issue 12, acceptance 5 for pauses, limits and
 * open breakers): a `pipeweave run` restarted keeps every pause, runtime limit and open breaker, as
 * its /metrics shows before and after the restart, and starting or stopping it changes and records
 * nothing. Also the flow-control series of /metrics: pipeweave_task_paused{task},
 * pipeweave_service_breaker_open{service} (from the database, at most every few seconds) and
 * pipeweave_task_rate_limited_total{task} (each claim the orchestrator reports, through its hook
 * onRateLimited, as held back by a task's rate limit).
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { createMetrics } from '../src/http/metrics'
import type { Database } from '../src/db/database'
import { json, runCli, startCli } from './helpers/cli'
import { apiDatabase, createTestDatabase, type TestDatabase } from './helpers/db'
import { type Exposition, parsePrometheus, series } from './helpers/prometheus'
import { httpGet, httpPortOf } from './helpers/surface'
import { waitFor } from './helpers/wait'
import { type ManifestTask, type StubWorker, startWorker } from './helpers/worker'

let db: TestDatabase
let worker: StubWorker
let scratch: string

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  worker = await startWorker()
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-flow-restart-'))
})
afterAll(async () => {
  await worker?.close()
  await db?.drop()
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true })
})

async function pipeweave(...args: string[]) {
  const result = await runCli(args, { env: db.env })
  if (result.code !== 0) throw new Error(`pipeweave ${args.join(' ')} exited ${result.code}: ${result.stderr}`)
  return result
}

async function register(serviceId: string, tasks: ManifestTask[]): Promise<void> {
  const file = path.join(scratch, `${serviceId}.json`)
  fs.writeFileSync(file, JSON.stringify(worker.manifest(tasks, serviceId)))
  await pipeweave('services:register', file)
}

/** Everything flow control keeps: pauses, limits, breakers, and the history. */
async function flowState() {
  const tasks = await db.pool.query(`SELECT id, paused_at, paused_by, pause_reason, rate_limit, rate_period_ms, rate_override,
                                            rate_override_limit, rate_override_period_ms FROM tasks ORDER BY id`)
  const services = await db.pool.query(`SELECT id, paused_at, paused_by, pause_reason, breaker_enabled, breaker_failures, breaker_open_until,
                                               breaker_cooldown_ms, breaker_opened_at, breaker_expires_at FROM services ORDER BY id`)
  const events = await db.pool.query(`SELECT id, kind, target, action, at, actor, reason, detail FROM control_events ORDER BY id`)
  return { tasks: tasks.rows, services: services.rows, events: events.rows }
}

/** Start `run --http-port 0`, wait until its /metrics shows the flow-control series as expected, stop it. */
async function scrapeOneRun(expected: (m: Exposition) => boolean): Promise<Exposition> {
  const run = startCli(['run', '--http-port', '0', '--http-host', '127.0.0.1', '--poll-interval', '100'], { env: db.env })
  try {
    const port = await httpPortOf(run)
    return await waitFor(async () => {
      const response = await httpGet(`http://127.0.0.1:${port}/metrics`)
      const m = parsePrometheus(response.body)
      return expected(m) ? m : undefined
    }, { what: 'the flow-control series of /metrics' })
  } finally {
    run.child.kill('SIGTERM')
    const result = await run.done
    expect(result.code).toBe(0)
  }
}

describe('a restart of run keeps pauses, runtime limits and open breakers (acceptance 5)', () => {
  it('the state is the same after the restart, /metrics shows it before and after, and nothing is recorded by the restarts', async () => {
    await register('front', [{ id: 'front.send' }, { id: 'front.quota', rateLimit: { limit: 5, periodMs: 1000 } }])
    await register('back', [{ id: 'back.sync' }])
    await register('dead', [{ id: 'dead.call' }])
    await pipeweave('tasks:pause', 'front.send', '--reason', 'mail provider outage')
    await pipeweave('tasks:limit', 'front.quota', '--rate', '20/1s')
    await pipeweave('tasks:pause', '--service', 'back', '--reason', 'migration')
    // An open breaker, as the dispatcher leaves it after 5 connect failures (the engine's side).
    await db.pool.query(`UPDATE services SET breaker_failures = 5, breaker_open_until = now() + interval '1 hour', breaker_cooldown_ms = 30000,
                                breaker_opened_at = now(), breaker_expires_at = now() + interval '2 hours' WHERE id = 'dead'`)
    const before = await flowState()
    expect(before.events.map((e) => `${e.target} ${e.action}`)).toEqual(['task:front.send paused', 'task:front.quota set', 'service:back paused'])

    const expected = {
      paused: { 'task=front.send': 1, 'task=front.quota': 0, 'task=back.sync': 1, 'task=dead.call': 0 },
      breakers: { 'service=front': 0, 'service=back': 0, 'service=dead': 1 },
    }
    const shows = (m: Exposition) => isDeepStrictEqual(series(m, 'pipeweave_task_paused'), expected.paused)
      && isDeepStrictEqual(series(m, 'pipeweave_service_breaker_open'), expected.breakers)
    const first = await scrapeOneRun(shows)
    expect(series(first, 'pipeweave_task_paused')).toEqual(expected.paused)
    expect(series(first, 'pipeweave_service_breaker_open')).toEqual(expected.breakers)
    expect(first.types.get('pipeweave_task_paused')).toBe('gauge')
    expect(first.types.get('pipeweave_service_breaker_open')).toBe('gauge')
    expect(first.types.get('pipeweave_task_rate_limited_total')).toBe('counter')

    // Restarted: the same state, the same series.
    const second = await scrapeOneRun(shows)
    expect(series(second, 'pipeweave_task_paused')).toEqual(expected.paused)
    expect(series(second, 'pipeweave_service_breaker_open')).toEqual(expected.breakers)
    expect(await flowState()).toEqual(before)

    const list = json<{ services: Array<{ id: string; paused: unknown; breaker: { state: string; openUntil: string }; tasks: Array<{ id: string; paused: unknown; effectiveRateLimit: unknown; rateLimitSource: string }> }> }>(
      await pipeweave('services:list', '--json'))
    const byId = Object.fromEntries(list.services.map((s) => [s.id, s]))
    expect(byId.back.paused).toMatchObject({ reason: 'migration' })
    expect(byId.dead.breaker).toMatchObject({ state: 'open', openUntil: before.services.find((s) => s.id === 'dead')!.breaker_open_until.toISOString() })
    expect(byId.front.tasks).toEqual([
      expect.objectContaining({ id: 'front.quota', paused: null, effectiveRateLimit: { limit: 20, periodMs: 1000 }, rateLimitSource: 'runtime' }),
      expect.objectContaining({ id: 'front.send', paused: expect.objectContaining({ reason: 'mail provider outage' }) }),
    ])

    // Resumed, the gauge follows (read from the database).
    await pipeweave('tasks:resume', 'front.send')
    await scrapeOneRun((m) => series(m, 'pipeweave_task_paused')['task=front.send'] === 0)
  })
})

describe('pipeweave_task_rate_limited_total', () => {
  let api: Database
  beforeAll(async () => { api = await apiDatabase(db.url) })
  afterAll(async () => { await api?.close() })

  it('counts, per task, the claims the orchestrator reports as held back by the task\'s rate limit (hooks.onRateLimited)', async () => {
    const metrics = createMetrics(api)
    const text = async () => parsePrometheus(await metrics.registry.metrics())
    // Nothing held back yet: the family is there, with no series.
    expect((await text()).types.get('pipeweave_task_rate_limited_total')).toBe('counter')
    expect(series(await text(), 'pipeweave_task_rate_limited_total')).toEqual({})
    for (const task of ['front.quota', 'front.quota', 'other', 'front.quota']) metrics.hooks.onRateLimited!(task)
    expect(series(await text(), 'pipeweave_task_rate_limited_total')).toEqual({ 'task=front.quota': 3, 'task=other': 1 })
  })
})
