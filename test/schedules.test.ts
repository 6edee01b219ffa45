/**
 * schedules:set|list|remove, the programmatic API and a manifest's `schedules` (SPEC §7): what is
 * stored and recorded (control_events, kind 'schedule'), exit codes (SPEC §2: a bad expression, an
 * unknown time zone or task is 2, checked before connecting where no database is needed; a
 * service's schedule is refused to the CLI with 4), and ownership: a manifest's schedules are
 * replaced by every registration, schedules:set ones are separate and a name is owned once.
 * The loop that ticks them is test/schedule-loop.test.ts.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { listSchedules, registerService, removeSchedule, setSchedule } from '../src'
import { createDatabase, type Database } from '../src/db/database'
import { json, runCli } from './helpers/cli'
import { createTestDatabase, type TestDatabase, TEST_SCHEMA } from './helpers/db'

let db: TestDatabase
let api: Database
let scratch: string
let files = 0

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  api = await createDatabase({ flags: { url: db.url }, env: {}, command: 'test', schema: TEST_SCHEMA })
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-schedules-'))
  await registerService(api, { id: 'reports', version: '1', baseUrl: 'http://127.0.0.1:9', tasks: [{ id: 'send-report' }, { id: 'sync' }] })
})
afterAll(async () => {
  await api.close()
  await db.drop()
  fs.rmSync(scratch, { recursive: true, force: true })
})

const cli = (...args: string[]) => runCli(args, { env: db.env })
const DEAD = { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' }

async function scheduleEvents(name: string) {
  const { rows } = await db.pool.query<{ action: string; actor: string; reason: string | null; detail: Record<string, unknown> }>(
    `SELECT action, actor, reason, detail FROM control_events WHERE kind = 'schedule' AND target = $1 ORDER BY id`, [`schedule:${name}`])
  return rows
}

function manifestFile(manifest: unknown): string {
  const file = path.join(scratch, `service-${++files}.json`)
  fs.writeFileSync(file, JSON.stringify(manifest, null, 2))
  return file
}

describe('schedules:set, schedules:list, schedules:remove', () => {
  it('sets a schedule, lists it with its last and next tick, changes it, removes it; each change a control_events row', async () => {
    const before = Date.now()
    const set = await cli('schedules:set', 'nightly', '--cron', '30 2 * * *', '--timezone', 'Europe/Berlin', '--task', 'send-report',
      '--input', '{"kind":"daily"}', '--backfill', '1h30m', '--reason', 'ticket 42', '--json')
    expect({ code: set.code, stderr: set.stderr }).toEqual({ code: 0, stderr: '' })
    const result = json<{ created: boolean; changed: boolean; schedule: Record<string, unknown> }>(set)
    expect(result).toMatchObject({
      created: true, changed: true,
      schedule: {
        name: 'nightly', taskId: 'send-report', cron: '30 2 * * *', timezone: 'Europe/Berlin', input: { kind: 'daily' },
        overlap: 'skip', backfill: '1h30m', backfillMs: 5_400_000, service: null, lastRunId: null,
      },
    })
    // Its ticks start when it was set: the last tick is then, the next is the next 02:30 in Berlin.
    const { lastTick, nextTick } = result.schedule as { lastTick: string; nextTick: string }
    expect(Date.parse(lastTick)).toBeGreaterThanOrEqual(before - 1000)
    expect(Date.parse(nextTick) - Date.parse(lastTick)).toBeLessThanOrEqual(25 * 3600_000)
    expect(new Intl.DateTimeFormat('en-GB', { timeZone: 'Europe/Berlin', hour: '2-digit', minute: '2-digit' }).format(new Date(nextTick))).toBe('02:30')

    const list = await cli('schedules:list', '--json')
    expect(json<{ schedules: unknown[] }>(list).schedules).toEqual([result.schedule])
    const human = await cli('schedules:list', '--wide')
    expect(human.stdout).toMatch(/nightly .*send-report .*30 2 \* \* \* .*Europe\/Berlin .*skip .*1h30m .*schedules:set/)
    expect(human.stdout).toContain(nextTick)

    // The same again changes nothing (no row); another expression is an update, its ticks from now.
    const again = await cli('schedules:set', 'nightly', '--cron', '30 2 * * *', '--timezone', 'europe/berlin', '--task', 'send-report', '--input', '{"kind":"daily"}', '--backfill', '90m', '--json')
    expect(json(again)).toMatchObject({ created: false, changed: false })
    expect(again.stdout).toBeTruthy()
    const changed = await cli('schedules:set', 'nightly', '--cron', '0 3 * * *', '--timezone', 'Europe/Berlin', '--task', 'send-report', '--overlap', 'allow')
    expect(changed.code).toBe(0)
    expect(changed.stdout).toMatch(/^Changed schedule nightly: task send-report at "0 3 \* \* \*" \(Europe\/Berlin\), overlap allow, backfill none; next tick 20/)

    const removed = await cli('schedules:remove', 'nightly', '--json')
    expect(json(removed)).toMatchObject({ removed: { name: 'nightly', cron: '0 3 * * *' } })
    expect(json<{ schedules: unknown[] }>(await cli('schedules:list', '--json')).schedules).toEqual([])
    expect((await cli('schedules:list')).stdout).toMatch(/^No schedules\./)

    const rows = await scheduleEvents('nightly')
    expect(rows.map((r) => r.action)).toEqual(['created', 'updated', 'removed'])
    for (const row of rows) expect(row.actor).toMatch(/^\S+@\S+ \d+$/)
    expect(rows[0]).toMatchObject({ reason: 'ticket 42', detail: { task: 'send-report', cron: '30 2 * * *', timezone: 'Europe/Berlin', input: { kind: 'daily' }, overlap: 'skip', backfill: '1h30m' } })
    expect(rows[1].detail).toMatchObject({ cron: '0 3 * * *', overlap: 'allow', backfill: null, before: { cron: '30 2 * * *' } })
  })

  it('bad input exits 2 before connecting: an expression, a time zone, a duration, JSON, a name', async () => {
    const cases: Array<[string[], string, RegExp]> = [
      [['--cron', '* * * *'], 'INVALID_CRON', /4 field/],
      [['--cron', '61 * * * *'], 'INVALID_CRON', /invalid cron expression "61 \* \* \* \*"/],
      [['--cron', '0 0 30 2 *'], 'INVALID_CRON', /never fires/],
      [['--cron', '30 2 * * *', '--timezone', 'Mars/Olympus'], 'UNKNOWN_TIMEZONE', /unknown time zone "Mars\/Olympus"/],
      [['--cron', '30 2 * * *', '--backfill', 'ten minutes'], 'INVALID_DURATION', /--backfill must be a duration/],
      [['--cron', '30 2 * * *', '--input', '{nope'], 'INVALID_JSON', /not valid JSON/],
      [['--cron', '30 2 * * *', '--overlap', 'sometimes'], 'BAD_USAGE', /overlap/],
    ]
    for (const [flags, code, message] of cases) {
      const result = await runCli(['schedules:set', 'x', '--task', 'send-report', ...flags, '--json'], { env: DEAD })
      expect({ flags, code: result.code, error: json<{ error: { code: string; message: string } }>(result).error }).toEqual({
        flags, code: 2, error: expect.objectContaining({ code, message: expect.stringMatching(message) }),
      })
    }
    const name = await runCli(['schedules:set', 'bad name', '--task', 'send-report', '--cron', '* * * * *'], { env: DEAD })
    expect({ code: name.code, stderr: name.stderr }).toEqual({ code: 2, stderr: expect.stringMatching(/invalid schedule name "bad name"/) })
  })

  it('an unknown task is exit 2, an unknown schedule to remove is exit 2; nothing is written', async () => {
    const task = await cli('schedules:set', 'x', '--cron', '* * * * *', '--task', 'no-such-task', '--json')
    expect(task.code).toBe(2)
    expect(json(task)).toMatchObject({ error: { code: 'UNKNOWN_TASK', message: 'unknown task "no-such-task"' }, exitCode: 2 })
    const remove = await cli('schedules:remove', 'no-such-schedule')
    expect({ code: remove.code, stderr: remove.stderr }).toEqual({ code: 2, stderr: expect.stringMatching(/no schedule named "no-such-schedule"/) })
    const { rows } = await db.pool.query('SELECT name FROM schedules')
    expect(rows).toEqual([])
  })

  it('the API: setSchedule, listSchedules, removeSchedule (exported by the package)', async () => {
    const set = await setSchedule(api, { name: 'api', cron: '*/10 * * * * *', taskId: 'sync', backfill: 60_000, overlap: 'allow', actor: 'deploy-bot' })
    expect(set).toMatchObject({ created: true, schedule: { name: 'api', backfill: '1m', overlap: 'allow', timezone: 'UTC' } })
    const next = Date.parse(set.schedule.nextTick!)
    expect(next % 10_000).toBe(0)
    expect(next - Date.parse(set.schedule.lastTick!)).toBeLessThanOrEqual(10_000)
    expect((await listSchedules(api)).map((s) => s.name)).toEqual(['api'])
    expect(await removeSchedule(api, 'api', { actor: 'deploy-bot', reason: 'done' })).toMatchObject({ removed: { name: 'api' } })
    expect((await scheduleEvents('api')).map((r) => [r.action, r.actor])).toEqual([['created', 'deploy-bot'], ['removed', 'deploy-bot']])
    await expect(setSchedule(api, { name: 'api', cron: 'nope', taskId: 'sync' })).rejects.toMatchObject({ code: 'INVALID_CRON', exitCode: 2 })
  })
})

describe('a manifest\'s schedules (services:register)', () => {
  const manifest = (schedules: unknown[] | undefined, version = '1') => ({
    id: 'billing', version, baseUrl: 'http://127.0.0.1:9', tasks: [{ id: 'invoice' }, { id: 'remind' }], ...(schedules ? { schedules } : {}),
  })
  const register = (m: unknown, ...flags: string[]) => cli('services:register', manifestFile(m), ...flags)

  it('are owned by the service: created, kept as they are when registered again, replaced, removed with the manifest', async () => {
    const first = await register(manifest([
      { name: 'monthly-invoices', cron: '0 6 1 * *', task: 'invoice', timezone: 'Europe/Paris', input: { run: 'monthly', at: 6 } },
      { name: 'reminders', cron: '0 9 * * 1-5', task: 'remind', backfill: '2h', overlap: 'allow' },
    ]), '--json')
    expect(first.code).toBe(0)
    expect(json(first)).toMatchObject({ schedules: [{ name: 'monthly-invoices', status: 'created' }, { name: 'reminders', status: 'created' }] })
    const listed = json<{ schedules: Array<Record<string, unknown>> }>(await cli('schedules:list', '--json')).schedules
    expect(listed).toEqual([
      expect.objectContaining({ name: 'monthly-invoices', service: 'billing', taskId: 'invoice', timezone: 'Europe/Paris', input: { run: 'monthly', at: 6 }, backfill: null }),
      expect.objectContaining({ name: 'reminders', service: 'billing', taskId: 'remind', backfill: '2h', overlap: 'allow' }),
    ])
    const { rows: [{ last_tick: tickBefore }] } = await db.pool.query(`SELECT last_tick FROM schedules WHERE name = 'reminders'`)

    // Registered again as it is (a deploy): nothing changes, not even last_tick; no row.
    const same = await register(manifest([
      { name: 'reminders', cron: '0 9 * * 1-5', task: 'remind', backfill: '120m', overlap: 'allow' },
      { name: 'monthly-invoices', cron: '0 6 1 * *', task: 'invoice', timezone: 'Europe/Paris', input: { at: 6, run: 'monthly' } },
    ], '2'), '--json')
    expect(json(same)).toMatchObject({ schedules: [{ name: 'monthly-invoices', status: 'unchanged' }, { name: 'reminders', status: 'unchanged' }] })
    const { rows: [{ last_tick: tickAfter }] } = await db.pool.query(`SELECT last_tick FROM schedules WHERE name = 'reminders'`)
    expect(tickAfter).toEqual(tickBefore)

    // The CLI cannot change or remove them (exit 4).
    const set = await cli('schedules:set', 'reminders', '--cron', '* * * * *', '--task', 'remind', '--json')
    expect(set.code).toBe(4)
    expect(json(set)).toMatchObject({ error: { code: 'SCHEDULE_OWNED_BY_SERVICE', message: expect.stringMatching(/belongs to service "billing"/) } })
    expect((await cli('schedules:remove', 'reminders')).code).toBe(4)

    // Replaced: one changed, one gone, one new.
    const replaced = await register(manifest([
      { name: 'reminders', cron: '0 10 * * 1-5', task: 'remind' },
      { name: 'weekly-digest', cron: '@weekly', task: 'remind' },
    ], '3'), '--json')
    expect(json(replaced)).toMatchObject({ schedules: [
      { name: 'monthly-invoices', status: 'removed' }, { name: 'reminders', status: 'updated' }, { name: 'weekly-digest', status: 'created' },
    ] })
    // A manifest without schedules: the service has none.
    expect(json(await register(manifest(undefined, '4'), '--json'))).toMatchObject({ schedules: [{ name: 'reminders', status: 'removed' }, { name: 'weekly-digest', status: 'removed' }] })
    expect(json<{ schedules: unknown[] }>(await cli('schedules:list', '--json')).schedules).toEqual([])

    expect((await scheduleEvents('reminders')).map((r) => r.action)).toEqual(['created', 'updated', 'removed'])
    expect((await scheduleEvents('reminders'))[0]).toMatchObject({ reason: 'services:register billing 1', detail: { service: 'billing' } })
  })

  it('a name set with schedules:set cannot be taken by a manifest (exit 2, nothing written), and bad schedule fields are named', async () => {
    expect((await cli('schedules:set', 'mine', '--cron', '* * * * *', '--task', 'send-report')).code).toBe(0)
    const taken = await register({ ...manifest([{ name: 'mine', cron: '0 * * * *', task: 'invoice' }]), id: 'other', tasks: [{ id: 'invoice2' }], schedules: [{ name: 'mine', cron: '0 * * * *', task: 'invoice2' }] }, '--json')
    expect(taken.code).toBe(2)
    expect(json(taken)).toMatchObject({ error: { code: 'SCHEDULE_NAME_TAKEN', message: expect.stringMatching(/schedule "mine" was set with schedules:set/) } })
    const { rows } = await db.pool.query(`SELECT id FROM services WHERE id = 'other'`)
    expect(rows).toEqual([])
    const { rows: [mine] } = await db.pool.query(`SELECT service_id, task_id FROM schedules WHERE name = 'mine'`)
    expect(mine).toEqual({ service_id: null, task_id: 'send-report' })

    const bad = await register(manifest([
      { name: 'a', cron: '* * *', task: 'invoice' },
      { name: 'b', cron: '* * * * *', task: 'not-mine' },
      { name: 'c', cron: '* * * * *', task: 'invoice', timezone: 'Nowhere/City', backfill: 'soon', overlap: 'maybe', every: 5 },
      { name: 'c', task: 'invoice' },
    ]), '--json')
    expect(bad.code).toBe(2)
    const message = json<{ error: { message: string } }>(bad).error.message
    for (const field of [/schedules\[0\]\.cron invalid cron expression/, /schedules\[1\]\.task "not-mine" is not a task of this manifest/,
      /schedules\[2\]\.timezone unknown time zone/, /schedules\[2\]\.backfill/, /schedules\[2\]\.overlap/, /schedules\[2\]\.every is not a schedule field/,
      /schedules\[3\]\.cron is required/, /schedules\[3\]\.name repeats the schedule name "c"/]) {
      expect(message).toMatch(field)
    }
    expect((await cli('schedules:remove', 'mine')).code).toBe(0)
  })
})
