/**
 * `maintenance:enter` (SPEC §4): refused (exit 4, naming the count) while runs are running; with
 * only pending runs it enters at once, and the pending runs are kept, untouched, for after
 * `maintenance:exit` — nothing claims them in between.
 */
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { waitFor } from './helpers/wait'
import { enqueueOne } from './helpers/orchestrator'
import { json, runCli } from './helpers/cli'
import {
  addPendingRun, addTask, claim, countRuns, eventsAfter, heartbeat, lastEventId, mode, resetTo, startRun,
} from './helpers/maintenance-fixtures'

let db: TestDatabase

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  await addTask(db.pool, 'work')
})
afterAll(async () => { await db.drop() })

const pipeweave = (...args: string[]) => runCli(args, { env: db.env })

it('with running runs: exit 4 naming how many, nothing changes', async () => {
  await resetTo(db.pool, 'running')
  await startRun(db.pool, 'work', 'orch-a')
  await startRun(db.pool, 'work', 'orch-b')
  await addPendingRun(db.pool, 'work')
  const before = await lastEventId(db.pool)

  const human = await pipeweave('maintenance:enter', '--reason', 'restore')
  expect(human.code).toBe(4)
  expect(human.stdout).toBe('')
  expect(human.stderr).toMatch(/cannot enter maintenance: 2 task run\(s\) are running/)
  expect(human.stderr).toMatch(/maintenance:request --wait/)

  const machine = await pipeweave('maintenance:enter', '--json')
  expect(machine.code).toBe(4)
  expect(json(machine)).toEqual({
    error: { code: 'TASKS_RUNNING', message: expect.stringMatching(/\b2 task run\(s\) are running/), hint: expect.any(String) },
    exitCode: 4,
  })

  expect(await mode(db.pool)).toMatchObject({ mode: 'running', reason: null })
  expect(await eventsAfter(db.pool, before)).toEqual([])
  expect(await countRuns(db.pool, `status = 'running'`)).toBe(2)
  expect(await countRuns(db.pool, `status = 'pending'`)).toBe(1)
})

it('with only pending runs: enters at once, and the pending runs are all there after maintenance:exit', async () => {
  await resetTo(db.pool, 'running')
  const due = [await addPendingRun(db.pool, 'work'), await addPendingRun(db.pool, 'work')]
  const later = await addPendingRun(db.pool, 'work', { scheduledInMs: 60_000 })
  const { rows: arranged } = await db.pool.query(`SELECT id, status, attempt, scheduled_for, created_at FROM ${ALL_RUNS} AS task_runs ORDER BY id`)
  const before = await lastEventId(db.pool)

  const enter = await pipeweave('maintenance:enter', '--reason', 'restore from backup', '--json')
  expect(enter.code).toBe(0)
  expect(json(enter)).toMatchObject({
    mode: 'maintenance', changed: true, pendingTasks: 2, scheduledTasks: 1, runningTasks: 0, canEnterMaintenance: true, reason: 'restore from backup',
  })
  // Nothing is claimed in maintenance, however many orchestrators ask.
  await heartbeat(db.pool, 'orch-c')
  expect(await claim(db.pool, 'orch-c', 10)).toEqual([])

  const exit = await pipeweave('maintenance:exit', '--json')
  expect(exit.code).toBe(0)
  expect(json(exit)).toMatchObject({ mode: 'running', changed: true, pendingTasks: 2, scheduledTasks: 1 })
  const { rows: after } = await db.pool.query(`SELECT id, status, attempt, scheduled_for, created_at FROM ${ALL_RUNS} AS task_runs ORDER BY id`)
  expect(after).toEqual(arranged)
  expect(after.map((r) => r.id).sort()).toEqual([...due, later].sort())

  expect((await eventsAfter(db.pool, before)).map((e) => [e.from_mode, e.to_mode, e.reason])).toEqual([
    ['running', 'maintenance', 'restore from backup'],
    ['maintenance', 'running', null],
  ])
  // And they run after the exit.
  expect((await claim(db.pool, 'orch-c', 10)).sort()).toEqual([...due].sort())
})

it('from waiting_for_maintenance with pending runs nobody will run: enter keeps them', async () => {
  await resetTo(db.pool, 'running')
  const pending = await addPendingRun(db.pool, 'work')
  const request = await pipeweave('maintenance:request', '--json')
  expect(json(request)).toMatchObject({ mode: 'waiting_for_maintenance', pendingTasks: 1, liveOrchestrators: 0 })

  const enter = await pipeweave('maintenance:enter', '--json')
  expect(enter.code).toBe(0)
  expect(json(enter)).toMatchObject({ mode: 'maintenance', changed: true, pendingTasks: 1 })
  const { rows: [run] } = await db.pool.query(`SELECT status, attempt FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [pending])
  expect(run).toEqual({ status: 'pending', attempt: 1 })
})

it('hands back a lost run without deadlocking an enqueue of its idempotency key in flight', async () => {
  await resetTo(db.pool, 'running')
  await addTask(db.pool, 'keyed', { retryDelayMs: 0 })
  // A run holding key k, lost with its orchestrator.
  const { runId: lost } = await enqueueOne(db.pool, 'keyed', { input: {}, idempotencyKey: 'k' })
  await heartbeat(db.pool, 'ghost')
  expect(await claim(db.pool, 'ghost', 1)).toEqual([lost])
  await db.pool.query(`DELETE FROM orchestrators WHERE id = 'ghost'`)

  // An enqueuing transaction in flight holds the gate shared…
  const tx = await db.pool.connect()
  try {
    await tx.query('BEGIN')
    await enqueueOne(tx, 'work', { input: {} })
    // …when maintenance:enter comes and waits for the gate…
    const enter = runCli(['maintenance:enter', '--json'], { env: db.env })
    await waitFor(async () => (await db.pool.query(`SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`)).rowCount! > 0,
      { what: 'maintenance:enter to wait for the gate' })
    // …and the transaction enqueues key k: it must not wait on a run that enter holds while enter waits on it.
    const again = await enqueueOne(tx, 'keyed', { input: {}, idempotencyKey: 'k' })
    expect(again).toEqual({ runId: lost, deduplicated: true })
    await tx.query('COMMIT')

    const result = await enter
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' })
    expect(json(result)).toMatchObject({ mode: 'maintenance', pendingTasks: 2, runningTasks: 0 })
  } finally {
    await tx.query('ROLLBACK').catch(() => undefined)
    tx.release()
  }
  const { rows: [run] } = await db.pool.query(`SELECT status, attempt FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [lost])
  expect(run).toEqual({ status: 'pending', attempt: 2 })
})
