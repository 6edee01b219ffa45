/**
 * The drain with a live orchestrator (SPEC §4, §5): `maintenance:request --wait` returns once the
 * due work (follow-ups included) is done, no run starts once the mode is `maintenance`, and after
 * `maintenance:exit` the same `run` process resumes by itself.
 */
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { json, runCli, startCli } from './helpers/cli'
import { enqueueMany, enqueueOne, finished, getRun, registerTasks, startRun } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { hold, ok, startWorker, type StubWorker } from './helpers/worker'

describe('pipeweave run: the drain', () => {
  let db: TestDatabase
  let worker: StubWorker

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [
      { id: 'work', retries: 0 },
      { id: 'parent', retries: 0, allowedNext: ['child'] },
      { id: 'child', retries: 0 },
    ])
  })

  afterEach(async () => {
    await worker.close()
    await db.drop()
  })

  const mode = async () => (await db.pool.query<{ mode: string }>(`SELECT mode FROM orchestrator_state`)).rows[0].mode

  it('drains the due work, starts nothing in maintenance, and resumes in the same process after exit', async () => {
    worker.behave('work', () => hold())
    worker.behave('parent', () => hold())
    worker.behave('child', () => ok('child done'))
    const work = await enqueueMany(db.pool, 'work', 40)
    const { runId: parentId } = await enqueueOne(db.pool, 'parent')
    // Scheduled for later: reported, but it does not hold the drain.
    const { runId: laterId } = await enqueueOne(db.pool, 'work', { delayMs: 600_000 })

    const env = { ...db.env, ORCHESTRATOR_STALE_MS: '2000', POLL_INTERVAL_MS: '200' }
    const run = startRun(env, ['--log-format', 'json', '--concurrency', '5'])
    const orchestratorId = await run.started()
    await worker.until(() => worker.held().length === 5, { what: '5 runs in flight' })

    const request = startCli(['maintenance:request', '--wait', '--timeout', '60', '--reason', 'drain test', '--json'], { env: db.env })
    await waitFor(async () => (await mode()) === 'waiting_for_maintenance', { what: 'the request to land' })
    // New work is refused now; existing work goes on.
    await expect(enqueueOne(db.pool, 'work')).rejects.toMatchObject({ code: 'MAINTENANCE_MODE' })

    // Let the worker answer: everything held now, and everything that comes after.
    worker.behave('work', () => ({ kind: 'reply', status: 200, body: { output: 'ok' }, delayMs: 5 }))
    worker.behave('parent', () => ok('parent done', ['child']))
    worker.releaseAll(ok('ok', ['child']))

    const result = await request.done
    expect(result.code).toBe(0)
    expect(json(result)).toMatchObject({ mode: 'maintenance', runningTasks: 0, pendingTasks: 0, scheduledTasks: 1 })
    expect(await mode()).toBe('maintenance')

    // Everything that was due ran, the pipeline's follow-up included; the scheduled run waits.
    const { rows: childRows } = await db.pool.query<{ id: string }>(`SELECT id FROM ${ALL_RUNS} AS task_runs WHERE parent_run_id = $1`, [parentId])
    expect(childRows).toHaveLength(1)
    for (const id of [...work, parentId, childRows[0].id]) expect((await getRun(db.pool, id)).status).toBe('completed')
    expect((await getRun(db.pool, laterId)).status).toBe('pending')

    // No run started after the mode became maintenance.
    const { rows: [event] } = await db.pool.query<{ at: Date }>(
      `SELECT at FROM maintenance_events WHERE to_mode = 'maintenance' ORDER BY at DESC LIMIT 1`)
    const { rows: [latest] } = await db.pool.query<{ started: Date }>(`SELECT max(started_at) AS started FROM ${ALL_RUNS} AS task_runs`)
    expect(latest.started.getTime()).toBeLessThanOrEqual(event.at.getTime())

    // In maintenance a run that becomes due is not started: make the scheduled one due now, then
    // let the orchestrator go through several polls (seen by its heartbeats moving on a second).
    const { rows: [due] } = await db.pool.query<{ now: Date }>(
      `UPDATE task_runs SET scheduled_for = now() WHERE id = $1 RETURNING now()`, [laterId])
    await waitFor(async () => {
      const { rows: [o] } = await db.pool.query<{ heartbeat_at: Date }>('SELECT heartbeat_at FROM orchestrators WHERE id = $1', [orchestratorId])
      return o && o.heartbeat_at.getTime() >= due.now.getTime() + 1000
    }, { what: 'the orchestrator to live through a second of maintenance' })
    expect((await getRun(db.pool, laterId)).status).toBe('pending')
    expect(worker.requestsFor(laterId)).toEqual([])
    expect(run.exited()).toBe(false)
    await run.waitForLog((l) => l.event === 'mode' && l.mode === 'maintenance')

    // Exit: the same process picks up the due run and new work.
    expect((await runCli(['maintenance:exit'], { env: db.env })).code).toBe(0)
    await run.waitForLog((l) => l.event === 'mode' && l.mode === 'running', { what: 'the resume' })
    const { runId: afterId } = await enqueueOne(db.pool, 'work', { input: { after: 'exit' } })
    expect(await finished(db.pool, afterId)).toMatchObject({ status: 'completed', orchestrator_id: orchestratorId })
    expect(await finished(db.pool, laterId)).toMatchObject({ status: 'completed', orchestrator_id: orchestratorId })
    expect((await run.stop('SIGTERM')).code).toBe(0)
  })

  it('stays up in maintenance and resumes on a mode change made in SQL by a runbook', async () => {
    worker.behave('work', () => ok('done'))
    const run = startRun({ ...db.env, POLL_INTERVAL_MS: '200' }, ['--log-format', 'json'])
    await run.started()
    expect((await runCli(['maintenance:enter', '--reason', 'runbook test'], { env: db.env })).code).toBe(0)
    await expect(enqueueOne(db.pool, 'work')).rejects.toMatchObject({ code: 'MAINTENANCE_MODE' })
    await db.pool.query(`UPDATE orchestrator_state SET mode = 'running' WHERE id = 'singleton'`)
    const { runId } = await enqueueOne(db.pool, 'work')
    expect(await finished(db.pool, runId)).toMatchObject({ status: 'completed' })
    expect(run.exited()).toBe(false)
    expect((await run.stop('SIGTERM')).code).toBe(0)
  })

  it('sees the end of a drain promptly, without waiting for its maintenance check interval', async () => {
    worker.behave('work', () => hold())
    await enqueueMany(db.pool, 'work', 3)
    // A check interval far longer than the test: only the check after each finished run can end it.
    const run = startRun({ ...db.env, POLL_INTERVAL_MS: '200' }, ['--log-format', 'json', '--maintenance-check-interval', '600000'])
    await run.started()
    await worker.until(() => worker.held().length === 3, { what: '3 runs in flight' })
    const requested = await runCli(['maintenance:request', '--json'], { env: db.env })
    expect(json(requested)).toMatchObject({ mode: 'waiting_for_maintenance' })
    worker.releaseAll(ok())
    await waitFor(async () => (await mode()) === 'maintenance', { timeoutMs: 20_000, what: 'the orchestrator to finish the drain' })
    const { rows: [event] } = await db.pool.query<{ actor: string }>(
      `SELECT actor FROM maintenance_events WHERE to_mode = 'maintenance'`)
    // The orchestrator itself (user@host pid) moved the mode, not a maintenance:* command.
    expect(event.actor).toMatch(new RegExp(` ${run.child.pid}$`))
    expect((await run.stop('SIGTERM')).code).toBe(0)
  })
})
