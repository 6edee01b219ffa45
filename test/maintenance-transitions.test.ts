/**
 * SPEC §4: every transition from every state, including the idempotent ones — the mode, the exit
 * code, the JSON and human output, and exactly the maintenance_events rows the SPEC asks for
 * (actor `user@host pid`, the reason; none for a no-op; two in one transaction for a request on a
 * drained system). Each command runs as a real process against a real PostgreSQL.
 */
import * as os from 'node:os'
import { createTestDatabase, type TestDatabase } from './helpers/db'
import { json, startCli, type CliResult } from './helpers/cli'
import type { MaintenanceStatus } from '../src/maintenance/maintenance'
import {
  type Mode, addPendingRun, addTask, eventsAfter, heartbeat, lastEventId, mode, resetTo, startRun,
} from './helpers/maintenance-fixtures'

const STATUS_KEYS = ['canEnterMaintenance', 'liveOrchestrators', 'message', 'mode', 'modeChangedAt', 'openBreakers', 'pausedTasks', 'pendingTasks', 'reason', 'runningTasks', 'scheduledTasks']
const TRANSITION_KEYS = [...STATUS_KEYS, 'changed'].sort()

/** The JSON of maintenance:status and of a transition (SPEC §4). */
type Status = MaintenanceStatus & { changed?: boolean }

let db: TestDatabase

/** Run a command; also return the pid, which is the `pid` part of the actor it records. */
async function pipeweave(...args: string[]): Promise<CliResult & { actor: string }> {
  const cli = startCli(args, { env: db.env })
  const result = await cli.done
  return { ...result, actor: `${os.userInfo().username}@${os.hostname()} ${cli.child.pid}` }
}

/** The `Key: value` lines of the human output, in order. */
function lines(stdout: string): string[] {
  return stdout.split('\n').filter((l) => l.length > 0)
}

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  await addTask(db.pool, 'work')
})
afterAll(async () => { await db.drop() })

/** How each state is arranged before the command; `busy` leaves a run running (a live holder). */
async function arrange(from: Mode, work: 'none' | 'pending' | 'running'): Promise<void> {
  await resetTo(db.pool, from)
  if (work === 'pending') await addPendingRun(db.pool, 'work')
  if (work === 'running') {
    // A run can only be claimed outside maintenance: claim first, then move the mode.
    await resetTo(db.pool, 'running')
    await startRun(db.pool, 'work')
    await db.pool.query(`UPDATE orchestrator_state SET mode = $1 WHERE id = 'singleton'`, [from])
  }
}

describe('maintenance transitions: mode, exit code and maintenance_events (SPEC §4)', () => {
  const cases: Array<{
    from: Mode; work: 'none' | 'pending' | 'running'; command: string; code: number; to: Mode; events: Array<[Mode, Mode]>
  }> = [
    // running
    { from: 'running', work: 'pending', command: 'request', code: 0, to: 'waiting_for_maintenance', events: [['running', 'waiting_for_maintenance']] },
    { from: 'running', work: 'running', command: 'request', code: 0, to: 'waiting_for_maintenance', events: [['running', 'waiting_for_maintenance']] },
    { from: 'running', work: 'none', command: 'request', code: 0, to: 'maintenance', events: [['running', 'waiting_for_maintenance'], ['waiting_for_maintenance', 'maintenance']] },
    { from: 'running', work: 'pending', command: 'enter', code: 0, to: 'maintenance', events: [['running', 'maintenance']] },
    { from: 'running', work: 'running', command: 'enter', code: 4, to: 'running', events: [] },
    { from: 'running', work: 'none', command: 'exit', code: 0, to: 'running', events: [] },
    // waiting_for_maintenance
    { from: 'waiting_for_maintenance', work: 'running', command: 'request', code: 0, to: 'waiting_for_maintenance', events: [] },
    { from: 'waiting_for_maintenance', work: 'pending', command: 'request', code: 0, to: 'waiting_for_maintenance', events: [] },
    { from: 'waiting_for_maintenance', work: 'none', command: 'request', code: 0, to: 'maintenance', events: [['waiting_for_maintenance', 'maintenance']] },
    { from: 'waiting_for_maintenance', work: 'pending', command: 'enter', code: 0, to: 'maintenance', events: [['waiting_for_maintenance', 'maintenance']] },
    { from: 'waiting_for_maintenance', work: 'running', command: 'enter', code: 4, to: 'waiting_for_maintenance', events: [] },
    { from: 'waiting_for_maintenance', work: 'running', command: 'exit', code: 0, to: 'running', events: [['waiting_for_maintenance', 'running']] },
    { from: 'waiting_for_maintenance', work: 'running', command: 'status', code: 0, to: 'waiting_for_maintenance', events: [] },
    { from: 'waiting_for_maintenance', work: 'none', command: 'status', code: 0, to: 'maintenance', events: [['waiting_for_maintenance', 'maintenance']] },
    // maintenance
    { from: 'maintenance', work: 'pending', command: 'request', code: 0, to: 'maintenance', events: [] },
    { from: 'maintenance', work: 'pending', command: 'enter', code: 0, to: 'maintenance', events: [] },
    { from: 'maintenance', work: 'pending', command: 'exit', code: 0, to: 'running', events: [['maintenance', 'running']] },
    { from: 'maintenance', work: 'none', command: 'status', code: 0, to: 'maintenance', events: [] },
  ]

  it.each(cases)('$from ($work) → maintenance:$command: exit $code, mode $to, events $events', async ({ from, work, command, code, to, events }) => {
    await arrange(from, work)
    const before = await lastEventId(db.pool)
    const beforeState = await mode(db.pool)

    const result = await pipeweave(`maintenance:${command}`, '--json')

    expect({ code: result.code, stderr: result.stderr }).toEqual({ code, stderr: '' })
    const state = await mode(db.pool)
    expect(state.mode).toBe(to)
    const written = await eventsAfter(db.pool, before)
    expect(written.map((e) => [e.from_mode, e.to_mode])).toEqual(events)
    for (const event of written) expect(event.actor).toBe(result.actor)
    if (events.length === 0) {
      expect(state.modeChangedAt).toEqual(beforeState.modeChangedAt)
    } else {
      // mode_changed_at is the last change's `at`; the changes of one command share one transaction.
      expect(state.modeChangedAt).toEqual(written[written.length - 1].at)
      expect(new Set(written.map((e) => e.xid)).size).toBe(1)
    }

    const body = json<Status & { error?: { code: string; message: string }; exitCode?: number }>(result)
    if (code === 0) {
      expect(Object.keys(body).sort()).toEqual(command === 'status' ? [...STATUS_KEYS].sort() : TRANSITION_KEYS)
      expect(body.mode).toBe(to)
      expect(body.modeChangedAt).toBe(state.modeChangedAt.toISOString())
      if (command !== 'status') expect(body.changed).toBe(events.length > 0)
    } else {
      expect(body.exitCode).toBe(code)
      expect(body.error?.code).toBe('TASKS_RUNNING')
      expect(body.error?.message).toMatch(/\b1 task run\(s\) are running/)
    }
  })
})

describe('what the events and the status record', () => {
  it('a request on a drained system appends two rows, in order, in one transaction, both with the actor and the reason', async () => {
    await arrange('running', 'none')
    const before = await lastEventId(db.pool)
    const result = await pipeweave('maintenance:request', '--reason', 'deploy 1.4', '--json')
    expect(result.code).toBe(0)
    const written = await eventsAfter(db.pool, before)
    expect(written).toEqual([
      expect.objectContaining({ from_mode: 'running', to_mode: 'waiting_for_maintenance', actor: result.actor, reason: 'deploy 1.4' }),
      expect.objectContaining({ from_mode: 'waiting_for_maintenance', to_mode: 'maintenance', actor: result.actor, reason: 'deploy 1.4' }),
    ])
    expect(written[0].xid).toBe(written[1].xid)
    expect(written[0].at.getTime()).toBeLessThanOrEqual(written[1].at.getTime())
    expect(Number(written[0].id)).toBeLessThan(Number(written[1].id))
    expect(result.actor).toMatch(/^[^@\s]+@\S+ \d+$/)

    const body = json<Status>(result)
    expect(body).toEqual({
      mode: 'maintenance', pendingTasks: 0, runningTasks: 0, scheduledTasks: 0, pausedTasks: [], openBreakers: [], liveOrchestrators: 0,
      canEnterMaintenance: true, modeChangedAt: written[1].at.toISOString(), reason: 'deploy 1.4',
      message: expect.any(String), changed: true,
    })
  })

  it('the drain check keeps the request\'s reason on the → maintenance row; exit clears it', async () => {
    await arrange('running', 'running')
    const before = await lastEventId(db.pool)
    expect((await pipeweave('maintenance:request', '--reason', 'migrate 003')).code).toBe(0)
    await db.pool.query(`UPDATE task_runs SET status = 'completed', completed_at = clock_timestamp() WHERE status = 'running'`)
    const status = await pipeweave('maintenance:status', '--json')
    expect(json<Status>(status)).toMatchObject({ mode: 'maintenance', reason: 'migrate 003' })
    const exit = await pipeweave('maintenance:exit', '--json')
    expect(json<Status>(exit)).toMatchObject({ mode: 'running', reason: null, changed: true })
    expect((await eventsAfter(db.pool, before)).map((e) => [e.to_mode, e.reason, e.actor])).toEqual([
      ['waiting_for_maintenance', 'migrate 003', expect.any(String)],
      ['maintenance', 'migrate 003', status.actor],
      ['running', null, exit.actor],
    ])
  })

  it('maintenance:status prints the SPEC lines, in order, with the reason', async () => {
    await arrange('running', 'running')
    await addPendingRun(db.pool, 'work')
    await addPendingRun(db.pool, 'work', { scheduledInMs: 600_000 })
    expect((await pipeweave('maintenance:request', '--reason', 'deploy 1.5')).code).toBe(0)
    const state = await mode(db.pool)

    const result = await pipeweave('maintenance:status')
    expect(result.code).toBe(0)
    expect(result.stderr).toBe('')
    const out = lines(result.stdout)
    expect(out).toEqual([
      'Mode: waiting_for_maintenance',
      'Pending tasks: 1',
      'Running tasks: 1',
      'Scheduled tasks: 1',
      'Paused tasks: 0',
      'Live orchestrators: 1',
      'Can enter maintenance: No',
      expect.stringMatching(/^Status: \S/),
      `Mode changed at: ${state.modeChangedAt.toISOString()}`,
      'Reason: deploy 1.5',
    ])
    // The deploy-script parse of SPEC §4.
    expect(out.filter((l) => l.includes('Mode:')).map((l) => l.split(/\s+/)[1])).toEqual(['waiting_for_maintenance'])
  })

  it('the transition commands print the same lines; enter says Yes when nothing runs', async () => {
    await arrange('running', 'pending')
    const result = await pipeweave('maintenance:enter')
    expect(result.code).toBe(0)
    const state = await mode(db.pool)
    expect(lines(result.stdout)).toEqual([
      'Mode: maintenance',
      'Pending tasks: 1',
      'Running tasks: 0',
      'Scheduled tasks: 0',
      'Paused tasks: 0',
      'Live orchestrators: 0',
      'Can enter maintenance: Yes',
      expect.stringMatching(/^Status: \S/),
      `Mode changed at: ${state.modeChangedAt.toISOString()}`,
    ])
  })

  it('maintenance:status --json has exactly the SPEC keys; --history N adds the newest N changes', async () => {
    await arrange('running', 'none')
    await heartbeat(db.pool, 'alive')
    const plain = json<Status>(await pipeweave('maintenance:status', '--json'))
    expect(Object.keys(plain).sort()).toEqual([...STATUS_KEYS].sort())
    expect(plain).toMatchObject({ mode: 'running', pendingTasks: 0, runningTasks: 0, scheduledTasks: 0, liveOrchestrators: 1, canEnterMaintenance: true, reason: null })

    const request = await pipeweave('maintenance:request', '--reason', 'history check')
    const exit = await pipeweave('maintenance:exit')
    expect([request.code, exit.code]).toEqual([0, 0])
    const withHistory = json<Status>(await pipeweave('maintenance:status', '--json', '--history', '2'))
    expect(Object.keys(withHistory).sort()).toEqual([...STATUS_KEYS, 'history'].sort())
    expect(withHistory.history).toEqual([
      { fromMode: 'maintenance', toMode: 'running', at: expect.any(String), actor: exit.actor, reason: null },
      { fromMode: 'waiting_for_maintenance', toMode: 'maintenance', at: expect.any(String), actor: request.actor, reason: 'history check' },
    ])
    expect(withHistory.history![0].at).toBe(withHistory.modeChangedAt)

    const human = await pipeweave('maintenance:status', '--history', '1')
    expect(human.stdout).toMatch(/History:/)
    expect(human.stdout).toContain(exit.actor)
  })
})

describe('concurrent commands', () => {
  it('three maintenance:request at once: one change, one event, every one exits 0', async () => {
    await arrange('running', 'running')
    const before = await lastEventId(db.pool)
    const results = await Promise.all([1, 2, 3].map(() => pipeweave('maintenance:request', '--json')))
    expect(results.map((r) => r.code)).toEqual([0, 0, 0])
    const bodies = results.map((r) => json<Status>(r))
    expect(bodies.map((b) => b.mode)).toEqual(['waiting_for_maintenance', 'waiting_for_maintenance', 'waiting_for_maintenance'])
    expect(bodies.filter((b) => b.changed)).toHaveLength(1)
    const written = await eventsAfter(db.pool, before)
    expect(written.map((e) => e.to_mode)).toEqual(['waiting_for_maintenance'])
    expect(written[0].actor).toBe(results[bodies.findIndex((b) => b.changed)].actor)
  })
})
