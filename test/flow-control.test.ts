/**
 * Flow control, the operator's side (SPEC §7; issue 12, acceptance 1's CLI half): tasks:pause and
 * tasks:resume (a task or a service), tasks:limit, what maintenance:status and services:list report
 * of them, the manifest's rateLimit and breaker, and control_events. Real PostgreSQL, the built CLI
 * as real processes, `pipeweave run` draining to a stub HTTP worker.
 *
 * (That a paused task's runs are not claimed while orchestrators run, and that a limit holds across
 * orchestrators, is the claim's side: tests of the queue engine. Here the state is arranged and
 * read through the CLI, and the drain and --until-idle are shown to leave paused work out.)
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { getFlowControl, listControlEvents, pauseTasks, resumeTasks, setTaskRateLimit } from '../src/api/flow-control'
import { registerService } from '../src/api/services'
import type { Database } from '../src/db/database'
import { UsageError } from '../src/errors'
import { type CliResult, json, startCli } from './helpers/cli'
import { ALL_RUNS, apiDatabase, createTestDatabase, type TestDatabase } from './helpers/db'
import { quickEnv, startRun } from './helpers/orchestrator'
import { type ManifestTask, type StubWorker, startWorker } from './helpers/worker'

let db: TestDatabase
let api: Database
let worker: StubWorker
let scratch: string
let files = 0

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  api = await apiDatabase(db.url)
  worker = await startWorker()
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-flow-'))
})
afterAll(async () => {
  await worker?.close()
  await api?.close()
  await db?.drop()
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true })
})

type Cli = CliResult & { actor: string }

/** Run a command; also return the actor it records (`user@host pid`, the pid of its process). */
async function pipeweave(args: string[], options: { input?: string; env?: Record<string, string> } = {}): Promise<Cli> {
  const cli = startCli(args, { env: { ...db.env, ...options.env }, input: options.input })
  const result = await cli.done
  return { ...result, actor: `${os.userInfo().username}@${os.hostname()} ${cli.child.pid}` }
}

function manifestFile(manifest: unknown): string {
  const file = path.join(scratch, `service-${++files}.json`)
  fs.writeFileSync(file, JSON.stringify(manifest))
  return file
}

/** services:register for the stub worker, with `extra` manifest fields (breaker). */
async function register(serviceId: string, tasks: ManifestTask[], extra: Record<string, unknown> = {}): Promise<Cli> {
  const result = await pipeweave(['services:register', manifestFile({ ...worker.manifest(tasks, serviceId), ...extra }), '--json'])
  if (result.code !== 0) throw new Error(`services:register failed (${result.code}): ${result.stderr}`)
  return result
}

interface EventRow { kind: string; target: string; action: string; actor: string; reason: string | null; detail: unknown }

async function lastEventId(): Promise<string> {
  const { rows: [row] } = await db.pool.query<{ id: string | null }>('SELECT max(id)::text AS id FROM control_events')
  return row.id ?? '0'
}

async function eventsAfter(id: string): Promise<EventRow[]> {
  const { rows } = await db.pool.query<EventRow>('SELECT kind, target, action, actor, reason, detail FROM control_events WHERE id > $1 ORDER BY id', [id])
  return rows
}

function line(stdout: string, key: string): string | undefined {
  return stdout.split('\n').find((l) => l.startsWith(`${key}: `))?.slice(key.length + 2)
}

async function pendingOf(taskId: string): Promise<number> {
  const { rows: [row] } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM task_runs WHERE task_id = $1 AND status = 'pending'`, [taskId])
  return row.n
}

interface PausedTask { id: string; pendingRuns: number }
interface Status { mode: string; pendingTasks: number; runningTasks: number; scheduledTasks: number; pausedTasks: PausedTask[]; message: string }

describe('pausing a task (acceptance 1, the CLI half)', () => {
  it('a paused task still takes runs (exit 0, a note on stderr); they do not hold a drain and are reported; tasks:resume lets run --until-idle drain them', async () => {
    await register('ab', [{ id: 'a.task' }, { id: 'b.task' }])
    const before = await lastEventId()

    const pause = await pipeweave(['tasks:pause', 'a.task', '--reason', 'partner outage', '--json'])
    expect({ code: pause.code, stderr: pause.stderr }).toEqual({ code: 0, stderr: '' })
    expect(json(pause)).toEqual({
      action: 'pause',
      changes: [{
        kind: 'task', id: 'a.task', changed: true, paused: { at: expect.any(String), by: pause.actor, reason: 'partner outage' }, servicePaused: null,
        message: 'task a.task paused: its pending runs wait for `pipeweave tasks:resume a.task`',
      }],
    })

    // Enqueue still queues, with a note on stderr: one run, a JSON Lines file, and with --json.
    const one = await pipeweave(['tasks:enqueue', 'a.task', '--input', '{"n":0}'])
    expect(one.code).toBe(0)
    expect(one.stdout).toMatch(/^\S+\n$/)
    expect(one.stderr).toMatch(/^note: task a\.task is paused \(since \S+ by .+: partner outage\); the run is queued and waits for `pipeweave tasks:resume a\.task`\n$/)
    const lines = Array.from({ length: 9 }, (_, i) => JSON.stringify({ n: i + 1 })).join('\n')
    const many = await pipeweave(['tasks:enqueue', 'a.task', '--jsonl', '-'], { input: lines })
    expect({ code: many.code, stdout: many.stdout }).toEqual({ code: 0, stdout: 'queued 9 runs\n' })
    expect(many.stderr).toMatch(/the runs are queued and wait for `pipeweave tasks:resume a\.task`/)
    const asJson = await pipeweave(['tasks:enqueue', 'a.task', '--json'])
    expect(asJson.code).toBe(0)
    expect(json(asJson)).toEqual({ runId: expect.any(String), deduplicated: false })
    expect(asJson.stderr).toMatch(/^note: task a\.task is paused/)
    expect(await pendingOf('a.task')).toBe(11)
    // A task that is not paused: no note.
    const other = await pipeweave(['tasks:enqueue', 'b.task'])
    expect({ code: other.code, stderr: other.stderr }).toEqual({ code: 0, stderr: '' })
    expect((await pipeweave(['runs:cancel', other.stdout.trim()])).code).toBe(0)

    // The drain completes with a.task's runs still pending, and they are reported.
    const request = await pipeweave(['maintenance:request', '--wait', '--timeout', '60', '--reason', 'deploy', '--json'])
    expect(request.code).toBe(0)
    expect(json<Status>(request)).toMatchObject({ mode: 'maintenance', pendingTasks: 0, runningTasks: 0, scheduledTasks: 0, pausedTasks: [{ id: 'a.task', pendingRuns: 11 }] })
    expect(await pendingOf('a.task')).toBe(11)
    const human = await pipeweave(['maintenance:status'])
    expect(human.code).toBe(0)
    expect(line(human.stdout, 'Mode')).toBe('maintenance')
    expect(line(human.stdout, 'Pending tasks')).toBe('0')
    expect(line(human.stdout, 'Paused tasks')).toBe('11')
    expect(line(human.stdout, 'Status')).toMatch(/ Paused: a\.task; their 11 pending run\(s\) wait for `pipeweave tasks:resume` and do not hold a drain\.$/)
    const machine = json<Status>(await pipeweave(['maintenance:status', '--json']))
    expect(machine).toMatchObject({ mode: 'maintenance', pendingTasks: 0, pausedTasks: [{ id: 'a.task', pendingRuns: 11 }] })
    expect(machine.message).toMatch(/Paused: a\.task/)
    expect((await pipeweave(['maintenance:exit'])).code).toBe(0)

    // Resumed: no longer reported as paused, they are due work again, and run --until-idle drains them.
    const resume = await pipeweave(['tasks:resume', 'a.task', '--json'])
    expect(resume.code).toBe(0)
    expect(json(resume)).toEqual({
      action: 'resume',
      changes: [{ kind: 'task', id: 'a.task', changed: true, paused: null, servicePaused: null, message: 'task a.task resumed' }],
    })
    expect(json<Status>(await pipeweave(['maintenance:status', '--json']))).toMatchObject({ pendingTasks: 11, pausedTasks: [] })
    expect(line((await pipeweave(['maintenance:status'])).stdout, 'Paused tasks')).toBe('0')
    const run = startRun({ ...db.env, ...quickEnv() }, ['--until-idle'])
    expect((await run.done).code).toBe(0)
    expect(await pendingOf('a.task')).toBe(0)
    const { rows: [done] } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${ALL_RUNS} AS r WHERE task_id = 'a.task' AND status = 'completed'`)
    expect(done.n).toBe(11)

    // Each change, one control_events row with its actor and reason (maintenance is recorded apart).
    expect(await eventsAfter(before)).toEqual([
      { kind: 'pause', target: 'task:a.task', action: 'paused', actor: pause.actor, reason: 'partner outage', detail: null },
      { kind: 'pause', target: 'task:a.task', action: 'resumed', actor: resume.actor, reason: null, detail: null },
    ])
  })

  it('a service pause covers a task registered after it; each resume clears its own level', async () => {
    await register('svc2', [{ id: 'svc2.first' }])
    const before = await lastEventId()
    const pause = await pipeweave(['tasks:pause', '--service', 'svc2', '--reason', 'worker upgrade', '--json'])
    expect(pause.code).toBe(0)
    expect(json(pause)).toEqual({
      action: 'pause',
      changes: [{
        kind: 'service', id: 'svc2', changed: true, paused: { at: expect.any(String), by: pause.actor, reason: 'worker upgrade' }, pausedTasks: [],
        message: 'service svc2 paused: no run of its tasks starts until `pipeweave tasks:resume --service svc2`',
      }],
    })
    const { rows: [pausedBefore] } = await db.pool.query(`SELECT paused_at, paused_by, pause_reason FROM services WHERE id = 'svc2'`)

    // A task registered later is covered, and the registration keeps the pause.
    await register('svc2', [{ id: 'svc2.first' }, { id: 'svc2.late' }])
    expect((await db.pool.query(`SELECT paused_at, paused_by, pause_reason FROM services WHERE id = 'svc2'`)).rows[0]).toEqual(pausedBefore)
    const enqueue = await pipeweave(['tasks:enqueue', 'svc2.late'])
    expect(enqueue.code).toBe(0)
    expect(enqueue.stderr).toMatch(/^note: its service svc2 is paused \(since \S+ by .+: worker upgrade\); the run is queued and waits for `pipeweave tasks:resume --service svc2`\n$/)
    const status = json<Status>(await pipeweave(['maintenance:status', '--json']))
    expect(status.pausedTasks).toEqual([{ id: 'svc2.first', pendingRuns: 0 }, { id: 'svc2.late', pendingRuns: 1 }])
    expect(status.pendingTasks).toBe(0)
    const list = await pipeweave(['services:list'])
    expect(list.stdout).toMatch(/svc2 .*svc2\.late .*service/)
    expect(list.stdout).toContain(`Paused: service svc2 (all its tasks) since ${pausedBefore.paused_at.toISOString()} by ${pause.actor}: worker upgrade`)

    // A task's resume does not lift its service's pause, and says so.
    const notPaused = await pipeweave(['tasks:resume', 'svc2.first'])
    expect(notPaused.code).toBe(0)
    expect(notPaused.stdout).toMatch(/^task svc2\.first was not paused; nothing changed; still paused by its service svc2 \(since .*: worker upgrade\): `pipeweave tasks:resume --service svc2`\n$/)
    // Paused at both levels, then the service resumed: the task stays paused on its own.
    const taskPause = await pipeweave(['tasks:pause', 'svc2.late', '--reason', 'bad input found'])
    expect(taskPause.code).toBe(0)
    const serviceResume = await pipeweave(['tasks:resume', '--service', 'svc2', '--reason', 'worker upgraded'])
    expect(serviceResume.stdout).toBe('service svc2 resumed; still paused on their own: svc2.late (`pipeweave tasks:resume svc2.late`)\n')
    expect(json<Status>(await pipeweave(['maintenance:status', '--json'])).pausedTasks).toEqual([{ id: 'svc2.late', pendingRuns: 1 }])
    const taskResume = await pipeweave(['tasks:resume', 'svc2.late'])
    expect(taskResume.stdout).toBe('task svc2.late resumed\n')
    expect(json<Status>(await pipeweave(['maintenance:status', '--json']))).toMatchObject({ pendingTasks: 1, pausedTasks: [] })
    const run = startRun({ ...db.env, ...quickEnv() }, ['--until-idle'])
    expect((await run.done).code).toBe(0)
    expect(await pendingOf('svc2.late')).toBe(0)

    expect(await eventsAfter(before)).toEqual([
      { kind: 'pause', target: 'service:svc2', action: 'paused', actor: pause.actor, reason: 'worker upgrade', detail: null },
      { kind: 'pause', target: 'task:svc2.late', action: 'paused', actor: taskPause.actor, reason: 'bad input found', detail: null },
      { kind: 'pause', target: 'service:svc2', action: 'resumed', actor: serviceResume.actor, reason: 'worker upgraded', detail: null },
      { kind: 'pause', target: 'task:svc2.late', action: 'resumed', actor: taskResume.actor, reason: null, detail: null },
    ])
  })

  it('all or nothing: an unknown task or service exits 2 naming it and changes nothing; a repeated pause records nothing', async () => {
    await register('c', [{ id: 'c.one' }, { id: 'c.two' }])
    const before = await lastEventId()
    const unknown = await pipeweave(['tasks:pause', 'c.one', 'c.nope', 'c.gone', '--json'])
    expect(unknown.code).toBe(2)
    expect(json(unknown)).toEqual({
      error: { code: 'UNKNOWN_TASK', message: 'unknown tasks "c.nope", "c.gone"; nothing was paused', hint: 'services:list shows the known tasks' }, exitCode: 2,
    })
    const service = await pipeweave(['tasks:resume', '--service', 'nope'])
    expect(service.code).toBe(2)
    expect(service.stderr).toMatch(/^error: unknown service "nope"; nothing was changed/)
    expect(await eventsAfter(before)).toEqual([])
    expect((await db.pool.query(`SELECT count(*)::int AS n FROM tasks WHERE paused_at IS NOT NULL`)).rows[0].n).toBe(0)

    // Bad usage, before anything connects (a database that is not there is not reached: exit 2, not 3).
    const nowhere = { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' }
    for (const args of [['tasks:pause'], ['tasks:pause', 'c.one', '--service', 'c'], ['tasks:resume'], ['tasks:limit', 'c.one', '--rate', 'fast']]) {
      const result = await pipeweave([...args, '--json'], { env: nowhere })
      expect({ args, code: result.code }).toEqual({ args, code: 2 })
    }

    const first = await pipeweave(['tasks:pause', 'c.one', 'c.two'])
    expect(first.stdout).toBe('task c.one paused: its pending runs wait for `pipeweave tasks:resume c.one`\n' +
      'task c.two paused: its pending runs wait for `pipeweave tasks:resume c.two`\n')
    const again = await pipeweave(['tasks:pause', 'c.one', '--reason', 'again', '--json'])
    expect(again.code).toBe(0)
    expect(json(again)).toMatchObject({ changes: [{ id: 'c.one', changed: false, paused: { by: first.actor, reason: null } }] })
    expect(json<{ changes: Array<{ message: string }> }>(again).changes[0].message).toMatch(/^task c\.one was already paused \(since \S+ by .+\); nothing changed/)
    expect((await eventsAfter(before)).map((e) => `${e.target} ${e.action}`)).toEqual(['task:c.one paused', 'task:c.two paused'])
    const resume = await pipeweave(['tasks:resume', 'c.one', 'c.two'])
    expect(resume.code).toBe(0)
    const resumeAgain = await pipeweave(['tasks:resume', 'c.one'])
    expect(resumeAgain.stdout).toBe('task c.one was not paused; nothing changed\n')
    expect(await eventsAfter(before)).toHaveLength(4)
  })

  it('concurrent pauses of one task, from separate processes: one change, one row', async () => {
    await register('race', [{ id: 'race.task' }])
    const before = await lastEventId()
    const results = await Promise.all(Array.from({ length: 5 }, () => pipeweave(['tasks:pause', 'race.task', '--json'])))
    expect(results.map((r) => r.code)).toEqual([0, 0, 0, 0, 0])
    const changed = results.filter((r) => json<{ changes: Array<{ changed: boolean }> }>(r).changes[0].changed)
    expect(changed).toHaveLength(1)
    const events = await eventsAfter(before)
    expect(events).toEqual([{ kind: 'pause', target: 'task:race.task', action: 'paused', actor: changed[0].actor, reason: null, detail: null }])
    expect((await db.pool.query(`SELECT paused_by FROM tasks WHERE id = 'race.task'`)).rows[0].paused_by).toBe(changed[0].actor)
    await pipeweave(['tasks:resume', 'race.task'])
  })

  it('a runbook\'s UPDATE is recorded too, with the database user; the API records the actor it is given', async () => {
    await register('book', [{ id: 'book.task' }])
    const before = await lastEventId()
    await db.pool.query(`UPDATE tasks SET paused_at = now(), pause_reason = 'from the runbook' WHERE id = 'book.task'`)
    await db.pool.query(`UPDATE tasks SET paused_at = NULL WHERE id = 'book.task'`)
    await pauseTasks(api, { service: 'book' }, { actor: 'dashboard', reason: 'from the dashboard' })
    await resumeTasks(api, { service: 'book' }, { actor: 'dashboard' })
    const events = await eventsAfter(before)
    expect(events.map((e) => [e.target, e.action, e.reason])).toEqual([
      ['task:book.task', 'paused', 'from the runbook'], ['task:book.task', 'resumed', null],
      ['service:book', 'paused', 'from the dashboard'], ['service:book', 'resumed', null],
    ])
    expect(events[0].actor).toMatch(/^\S+ \(.+\)$/) // current_user (application_name)
    expect(events[0].actor).toBe(events[1].actor)
    expect([events[2].actor, events[3].actor]).toEqual(['dashboard', 'dashboard'])
    // The API's typed errors.
    await expect(pauseTasks(api, { tasks: [] })).rejects.toBeInstanceOf(UsageError)
    await expect(pauseTasks(api, { tasks: ['book.nope'] })).rejects.toMatchObject({ code: 'UNKNOWN_TASK' })
    const history = await listControlEvents(api, { target: 'service:book' })
    expect(history.map((e) => [e.action, e.actor])).toEqual([['resumed', 'dashboard'], ['paused', 'dashboard']])
    expect(history[0].at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  })
})

describe('tasks:limit', () => {
  beforeAll(async () => {
    await register('lim', [{ id: 'lim.task', rateLimit: { limit: 5, periodMs: 1000 } }, { id: 'lim.free' }])
  })

  it.each([
    ['fast', /--rate must be N\/PERIOD \(20\/1s, 100\/1m, 5\/500ms\), none or manifest, not "fast"/],
    ['20', /--rate must be N\/PERIOD/],
    ['20/1w', /--rate must be N\/PERIOD/],
    ['-1/1s', /--rate must be N\/PERIOD/],
    ['0/1s', /--rate: limit must be a whole number from 1 to 10000, not 0/],
    ['10001/1s', /--rate: limit must be a whole number from 1 to 10000, not 10001/],
    ['20/0s', /--rate: periodMs must be a whole number of milliseconds from 1 to 86400000 \(a day\), not 0/],
    ['20/2d', /--rate: periodMs must be .* not 172800000/],
  ])('--rate %s exits 2 naming --rate, and changes nothing', async (rate, message) => {
    const before = await lastEventId()
    const result = await pipeweave(['tasks:limit', 'lim.task', '--rate', rate, '--json'])
    expect(result.code).toBe(2)
    expect(json(result)).toMatchObject({ error: { code: 'INVALID_RATE', message: expect.stringMatching(message) }, exitCode: 2 })
    expect(await eventsAfter(before)).toEqual([])
  })

  it('a missing --rate and an unknown task exit 2', async () => {
    const missing = await pipeweave(['tasks:limit', 'lim.task'])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toMatch(/rate/)
    const unknown = await pipeweave(['tasks:limit', 'lim.nope', '--rate', '20/1s', '--json'])
    expect(unknown.code).toBe(2)
    expect(json(unknown)).toMatchObject({ error: { code: 'UNKNOWN_TASK', message: 'unknown task "lim.nope"; nothing was changed' } })
  })

  it('sets a runtime limit over the manifest\'s, `none` removes any, `manifest` returns to it; each change one row', async () => {
    const before = await lastEventId()
    const set = await pipeweave(['tasks:limit', 'lim.task', '--rate', '20/1s', '--reason', 'partner raised the quota', '--json'])
    expect(set.code).toBe(0)
    expect(json(set)).toEqual({
      taskId: 'lim.task', changed: true, rateLimit: { limit: 20, periodMs: 1000 }, rateLimitSource: 'runtime', manifestRateLimit: { limit: 5, periodMs: 1000 },
    })
    expect((await db.pool.query(`SELECT rate_limit, rate_period_ms, rate_override, rate_override_limit, rate_override_period_ms FROM tasks WHERE id = 'lim.task'`)).rows[0])
      .toEqual({ rate_limit: 5, rate_period_ms: 1000, rate_override: true, rate_override_limit: 20, rate_override_period_ms: 1000 })
    const same = await pipeweave(['tasks:limit', 'lim.task', '--rate', '20/s'])
    expect(same.stdout).toBe('task lim.task: at most 20/1s (set at runtime; the manifest\'s is 5/1s (`pipeweave tasks:limit lim.task --rate manifest` returns to it)); nothing changed\n')
    const list = await pipeweave(['services:list'])
    expect(list.stdout).toMatch(/lim\.task .*20\/1s \(runtime\)/)
    expect(list.stdout).toMatch(/lim\.free /)

    const none = await pipeweave(['tasks:limit', 'lim.task', '--rate', 'none'])
    expect(none.stdout).toMatch(/^task lim\.task: no rate limit \(set at runtime; the manifest's is 5\/1s/)
    const half = await pipeweave(['tasks:limit', 'lim.free', '--rate', '5/500ms', '--json'])
    expect(json(half)).toMatchObject({ rateLimit: { limit: 5, periodMs: 500 }, rateLimitSource: 'runtime', manifestRateLimit: null })
    const back = await pipeweave(['tasks:limit', 'lim.task', '--rate', 'manifest', '--json'])
    expect(json(back)).toEqual({ taskId: 'lim.task', changed: true, rateLimit: { limit: 5, periodMs: 1000 }, rateLimitSource: 'manifest', manifestRateLimit: { limit: 5, periodMs: 1000 } })

    expect(await eventsAfter(before)).toEqual([
      { kind: 'rate_limit', target: 'task:lim.task', action: 'set', actor: set.actor, reason: 'partner raised the quota', detail: { limit: 20, periodMs: 1000 } },
      { kind: 'rate_limit', target: 'task:lim.task', action: 'cleared', actor: none.actor, reason: null, detail: { limit: null, periodMs: null } },
      { kind: 'rate_limit', target: 'task:lim.free', action: 'set', actor: half.actor, reason: null, detail: { limit: 5, periodMs: 500 } },
      { kind: 'rate_limit', target: 'task:lim.task', action: 'manifest', actor: back.actor, reason: null, detail: { limit: 5, periodMs: 1000 } },
    ])
    // The API takes the same settings, and checks them (exit 2's error).
    await expect(setTaskRateLimit(api, 'lim.free', { limit: 0, periodMs: 1000 })).rejects.toMatchObject({ code: 'INVALID_RATE' })
    expect(await setTaskRateLimit(api, 'lim.free', 'manifest', { actor: 'dashboard' })).toMatchObject({ changed: true, rateLimit: null, rateLimitSource: 'manifest' })
  })
})

describe('services:register and the manifest', () => {
  it('a registration never undoes a pause or a runtime limit, and records nothing of them', async () => {
    await register('keep', [{ id: 'keep.task', codeHash: 'v1', rateLimit: { limit: 5, periodMs: 1000 } }])
    expect((await pipeweave(['tasks:pause', 'keep.task', '--reason', 'hold'])).code).toBe(0)
    expect((await pipeweave(['tasks:pause', '--service', 'keep', '--reason', 'hold all'])).code).toBe(0)
    expect((await pipeweave(['tasks:limit', 'keep.task', '--rate', '20/1s'])).code).toBe(0)
    const columns = `SELECT t.paused_at, t.paused_by, t.pause_reason, t.rate_override, t.rate_override_limit, t.rate_override_period_ms,
                            sv.paused_at AS sv_paused_at, sv.paused_by AS sv_paused_by, sv.pause_reason AS sv_pause_reason
                       FROM tasks t JOIN services sv ON sv.id = t.service_id WHERE t.id = 'keep.task'`
    const { rows: [held] } = await db.pool.query(columns)
    expect(held).toMatchObject({ pause_reason: 'hold', rate_override: true, rate_override_limit: 20, sv_pause_reason: 'hold all' })
    const before = await lastEventId()

    // A new version of the manifest: another code hash and manifest limit, and a task more.
    await register('keep', [{ id: 'keep.task', codeHash: 'v2', rateLimit: { limit: 10, periodMs: 2000 } }, { id: 'keep.more' }])
    expect((await db.pool.query(columns)).rows[0]).toEqual(held)
    expect((await db.pool.query(`SELECT rate_limit, rate_period_ms, code_version FROM tasks WHERE id = 'keep.task'`)).rows[0])
      .toEqual({ rate_limit: 10, rate_period_ms: 2000, code_version: 2 })
    expect(await eventsAfter(before)).toEqual([])
    const flow = await getFlowControl(api)
    expect(flow.tasks.find((t) => t.id === 'keep.task')).toEqual({
      id: 'keep.task', serviceId: 'keep', paused: { at: held.paused_at.toISOString(), by: held.paused_by, reason: 'hold' },
      servicePaused: { at: held.sv_paused_at.toISOString(), by: held.sv_paused_by, reason: 'hold all' },
      rateLimit: { limit: 20, periodMs: 1000 }, rateLimitSource: 'runtime', manifestRateLimit: { limit: 10, periodMs: 2000 },
    })
    expect(flow.tasks.find((t) => t.id === 'keep.more')).toMatchObject({ paused: null, servicePaused: { reason: 'hold all' } })

    // Without a rateLimit, the manifest's goes; the runtime one stays until `--rate manifest`.
    await register('keep', [{ id: 'keep.task', codeHash: 'v2' }, { id: 'keep.more' }])
    expect((await db.pool.query(`SELECT rate_limit, rate_override_limit FROM tasks WHERE id = 'keep.task'`)).rows[0]).toEqual({ rate_limit: null, rate_override_limit: 20 })
    await pipeweave(['tasks:resume', '--service', 'keep'])
    await pipeweave(['tasks:resume', 'keep.task'])
  })

  it('`breaker: false` turns the breaker off, closing an open one (recorded); the default keeps its state', async () => {
    await register('brk', [{ id: 'brk.task' }])
    const open = `UPDATE services SET breaker_failures = 5, breaker_open_until = now() + interval '1 hour', breaker_cooldown_ms = 30000,
                         breaker_opened_at = now(), breaker_expires_at = now() + interval '2 hours' WHERE id = 'brk'`
    await db.pool.query(open)
    await register('brk', [{ id: 'brk.task' }], { breaker: true })
    expect((await db.pool.query(`SELECT breaker_enabled, breaker_failures, breaker_open_until IS NOT NULL AS open FROM services WHERE id = 'brk'`)).rows[0])
      .toEqual({ breaker_enabled: true, breaker_failures: 5, open: true })
    const before = await lastEventId()
    const off = await register('brk', [{ id: 'brk.task' }], { breaker: false })
    expect((await db.pool.query(`SELECT breaker_enabled, breaker_failures, breaker_open_until, breaker_cooldown_ms, breaker_opened_at, breaker_expires_at FROM services WHERE id = 'brk'`)).rows[0])
      .toEqual({ breaker_enabled: false, breaker_failures: 0, breaker_open_until: null, breaker_cooldown_ms: null, breaker_opened_at: null, breaker_expires_at: null })
    expect(await eventsAfter(before)).toEqual([
      { kind: 'breaker', target: 'service:brk', action: 'closed', actor: off.actor, reason: 'breaker: false in the manifest', detail: null },
    ])
    // Registering it off again changes nothing more.
    await register('brk', [{ id: 'brk.task' }], { breaker: false })
    expect(await eventsAfter(before)).toHaveLength(1)
    const list = json<{ services: Array<{ id: string; breaker: { state: string } }> }>(await pipeweave(['services:list', '--json']))
    expect(list.services.find((s) => s.id === 'brk')!.breaker.state).toBe('off')
  })

  describe('an invalid rateLimit or breaker exits 2 naming each problem, and writes nothing', () => {
    const good = { id: 'val', version: '1', baseUrl: 'http://127.0.0.1:9' }
    const cases: Array<[string, Record<string, unknown>, RegExp[]]> = [
      ['a limit of 0', { ...good, tasks: [{ id: 'v', rateLimit: { limit: 0, periodMs: 1000 } }] }, [/tasks\[0\]\.rateLimit\.limit must be a whole number from 1 to 10000, not 0/]],
      ['a string limit and no period', { ...good, tasks: [{ id: 'v', rateLimit: { limit: '20' } }] }, [/tasks\[0\]\.rateLimit\.limit must be .* not "20"/, /tasks\[0\]\.rateLimit\.periodMs must be a whole number of milliseconds/]],
      ['a period over a day', { ...good, tasks: [{ id: 'v', rateLimit: { limit: 1, periodMs: 86_400_001 } }] }, [/tasks\[0\]\.rateLimit\.periodMs must be .* \(a day\), not 86400001/]],
      ['an unknown rateLimit field', { ...good, tasks: [{ id: 'v', rateLimit: { limit: 1, periodMs: 1, burst: 5 } }] }, [/tasks\[0\]\.rateLimit\.burst is not a rateLimit field \(limit, periodMs\)/]],
      ['a rateLimit that is a number', { ...good, tasks: [{ id: 'v', rateLimit: 20 }] }, [/tasks\[0\]\.rateLimit must be \{ "limit": N, "periodMs": P \}/]],
      ['a breaker that is not a boolean', { ...good, breaker: 'no', tasks: [] }, [/\bbreaker must be true or false/]],
      ['a breaker on a task', { ...good, tasks: [{ id: 'v', breaker: false }] }, [/tasks\[0\]\.breaker is not a task field: the breaker is the service's/]],
      ['all at once', { ...good, breaker: 0, tasks: [{ id: 'v', rateLimit: { limit: 0, periodMs: 0 } }, { id: 'w', breaker: true, rateLimit: [] }] }, [
        /\bbreaker must be true or false/, /tasks\[0\]\.rateLimit\.limit must/, /tasks\[0\]\.rateLimit\.periodMs must/, /tasks\[1\]\.breaker is not a task field/, /tasks\[1\]\.rateLimit must be/,
      ]],
    ]

    it.each(cases)('%s', async (_what, manifest, problems) => {
      const error = await registerService(api, manifest).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(UsageError)
      for (const problem of problems) expect((error as UsageError).message).toMatch(problem)
      const result = await pipeweave(['services:register', manifestFile(manifest), '--json'])
      expect(result.code).toBe(2)
      for (const problem of problems) expect(json<{ error: { message: string } }>(result).error.message).toMatch(problem)
      expect((await db.pool.query(`SELECT count(*)::int AS n FROM services WHERE id = 'val'`)).rows[0].n).toBe(0)
    })
  })
})

describe('services:list', () => {
  it('shows each service\'s breaker (open until …), its pause and each task\'s limit, as a table and as JSON', async () => {
    await register('show', [{ id: 'show.task', rateLimit: { limit: 100, periodMs: 60_000 } }])
    const state = async (sql: string) => {
      await db.pool.query(`UPDATE services SET breaker_failures = 0, breaker_open_until = NULL, breaker_cooldown_ms = NULL, breaker_opened_at = NULL, breaker_expires_at = NULL WHERE id = 'show'`)
      if (sql) await db.pool.query(`UPDATE services SET ${sql} WHERE id = 'show'`)
      const human = await pipeweave(['services:list'])
      const machine = json<{ services: Array<Record<string, unknown> & { id: string }> }>(await pipeweave(['services:list', '--json']))
      const row = human.stdout.split('\n').find((l) => l.includes('show.task'))!
      return { row, service: machine.services.find((s) => s.id === 'show')! }
    }
    const closed = await state('')
    expect(closed.row).toMatch(/show .* closed .*show\.task .*100\/1m /)
    expect(closed.service).toEqual({
      id: 'show', version: '1.0.0', baseUrl: worker.url, registeredAt: expect.any(String), updatedAt: expect.any(String), paused: null,
      breaker: { state: 'closed', failures: 0, openUntil: null, openedAt: null, expiresAt: null, cooldownMs: null },
      tasks: [expect.objectContaining({
        id: 'show.task', rateLimit: { limit: 100, periodMs: 60_000 }, paused: null, effectiveRateLimit: { limit: 100, periodMs: 60_000 }, rateLimitSource: 'manifest',
      })],
    })
    expect((await state('breaker_failures = 2')).row).toMatch(/closed \(2 connect failures\)/)

    const open = await state(`breaker_failures = 5, breaker_open_until = '2099-01-01T00:00:30Z', breaker_cooldown_ms = 30000, breaker_opened_at = now(), breaker_expires_at = '2099-01-01T01:00:00Z'`)
    expect(open.row).toMatch(/open until 2099-01-01T00:00:30\.000Z/)
    expect(open.service.breaker).toEqual({ state: 'open', failures: 5, openUntil: '2099-01-01T00:00:30.000Z', openedAt: expect.any(String), expiresAt: '2099-01-01T01:00:00.000Z', cooldownMs: 30000 })
    // Its runs are due work that the breaker holds: maintenance:status says how many (and they hold a drain).
    const enqueued = await pipeweave(['tasks:enqueue', 'show.task'])
    expect(enqueued.code).toBe(0)
    const held = await pipeweave(['maintenance:status', '--json'])
    expect(json<Status & { openBreakers: unknown }>(held)).toMatchObject({
      pendingTasks: 1, openBreakers: [{ service: 'show', openUntil: '2099-01-01T00:00:30.000Z', pendingRuns: 1 }],
    })
    expect(line((await pipeweave(['maintenance:status'])).stdout, 'Status'))
      .toMatch(/ The breaker of service show is open until 2099-01-01T00:00:30\.000Z: 1 of the pending task\(s\) wait for its worker\./)
    expect((await pipeweave(['runs:cancel', enqueued.stdout.trim()])).code).toBe(0)
    const half = await state(`breaker_open_until = now() - interval '1 second', breaker_opened_at = now() - interval '1 minute', breaker_expires_at = now() + interval '1 hour'`)
    expect(half.row).toMatch(/half-open \(probing\)/)
    expect((half.service.breaker as { state: string }).state).toBe('half-open')
    const expired = await state(`breaker_open_until = now() + interval '1 minute', breaker_opened_at = '2000-01-01T00:00:00Z', breaker_expires_at = now() - interval '1 second'`)
    expect(expired.row).toMatch(/expired \(open since 2000-01-01T00:00:00\.000Z\)/)
    await state('')
  })
})
