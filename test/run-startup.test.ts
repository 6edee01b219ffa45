/**
 * Start-up and exit of `pipeweave run` (SPEC §5): pending migrations refused (exit 4, naming them)
 * or applied once by --auto-migrate however many start together, a schema ahead of the binary,
 * --until-idle, and the log format off a TTY.
 */
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { LATEST_VERSION, MIGRATIONS } from './helpers/migrations'
import { json, runCli } from './helpers/cli'
import { enqueueMany, enqueueOne, quickEnv, registerTasks, startRun, statusCounts } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { ok, startWorker, type StubWorker } from './helpers/worker'

describe('pipeweave run: start-up and exit', () => {
  let db: TestDatabase
  let worker: StubWorker

  afterEach(async () => {
    await worker?.close()
    await db?.drop()
  })

  it('refuses to start with pending migrations (exit 4), naming them', async () => {
    db = await createTestDatabase()
    const result = await runCli(['run', '--log-format', 'json'], { env: db.env })
    expect(result.code).toBe(4)
    expect(result.stderr).toContain('001_initial_schema.sql')
    expect(result.stderr).toContain('002_run_lifecycle.sql')
    expect(result.stderr).toMatch(/--auto-migrate/)
    // The refusal is the only thing said: no clean-up of a start that never happened.
    expect(result.stderr).not.toMatch(/could not|deregister|stopped/)
    const asJson = await runCli(['run', '--json'], { env: db.env })
    expect(asJson.code).toBe(4)
    expect(json(asJson)).toMatchObject({ error: { code: 'MIGRATIONS_PENDING' }, exitCode: 4 })
    // Nothing was applied, nothing registered.
    const { rows } = await db.pool.query(`SELECT to_regclass('migrations') AS t`)
    expect(rows[0].t).toBeNull()
  })

  it('names only the migrations that are pending', async () => {
    db = await createTestDatabase({ migrated: true })
    await db.pool.query('DELETE FROM migrations WHERE id = 2')
    const result = await runCli(['run'], { env: db.env })
    expect(result.code).toBe(4)
    expect(result.stderr).toContain('002_run_lifecycle.sql')
    expect(result.stderr).not.toContain('001_initial_schema.sql')
  })

  it('with --auto-migrate, two orchestrators started at once migrate once and both run', async () => {
    db = await createTestDatabase()
    worker = await startWorker()
    const a = startRun(quickEnv(db.env), ['--log-format', 'json', '--auto-migrate'])
    const b = startRun(quickEnv({ ...db.env, AUTO_MIGRATE: 'true' }), ['--log-format', 'json'])
    const ids = await Promise.all([a.started(), b.started()])
    const { rows: migrations } = await db.pool.query<{ id: number; n: number }>('SELECT id, count(*)::int AS n FROM migrations WHERE id > 0 GROUP BY id ORDER BY id')
    expect(migrations).toEqual(MIGRATIONS.map((m) => ({ id: m.id, n: 1 })))
    const { rows: orchestrators } = await db.pool.query<{ id: string }>('SELECT id FROM orchestrators')
    expect(new Set(orchestrators.map((o) => o.id))).toEqual(new Set(ids))

    // Both take work.
    await registerTasks(db.url, worker.url, [{ id: 'job' }])
    worker.behave('job', () => ({ kind: 'reply', status: 200, body: { output: 1 }, delayMs: 20 }))
    await enqueueMany(db.pool, 'job', 200)
    await waitFor(async () => (await statusCounts(db.pool)).completed === 200, { what: '200 runs completed' })
    const { rows: by } = await db.pool.query<{ orchestrator_id: string }>(`SELECT DISTINCT orchestrator_id FROM ${ALL_RUNS} AS task_runs`)
    expect(new Set(by.map((r) => r.orchestrator_id))).toEqual(new Set(ids))
    const exits = await Promise.all([a.stop(), b.stop()])
    expect(exits.map((e) => e.code)).toEqual([0, 0])
  })

  it('refuses to start when the database holds migrations it does not know, and a running one exits 4', async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [{ id: 'job' }])
    const run = startRun(quickEnv(db.env), ['--log-format', 'json', '--maintenance-check-interval', '200'])
    await run.started()
    // A newer pipeweave migrates the database during a deploy.
    await db.pool.query(`INSERT INTO migrations (id, name, hash) VALUES ($1, 'from_the_future', 'ffff')`, [LATEST_VERSION + 1])
    await run.waitForLog((l) => l.event === 'schema-ahead')
    const exit = await run.done
    expect(exit.code).toBe(4)
    expect((await db.pool.query('SELECT id FROM orchestrators')).rows).toEqual([])

    const refused = await runCli(['run', '--json'], { env: db.env })
    expect(refused.code).toBe(4)
    expect(json(refused)).toMatchObject({ error: { code: 'SCHEMA_AHEAD' } })
    expect(refused.stdout).toContain('from_the_future')
  })

  it('--until-idle exits 0 when nothing is due or running, and after draining what is due', async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [{ id: 'job' }])
    const idle = await runCli(['run', '--until-idle', '--log-format', 'json'], { env: db.env })
    expect(idle.code).toBe(0)
    expect(idle.stdout).toMatch(/stopped: 0 completed/)

    // A run scheduled for later is not due: it does not keep --until-idle alive.
    const { runId: later } = await enqueueOne(db.pool, 'job', { delayMs: 600_000 })
    expect((await runCli(['run', '--until-idle'], { env: db.env })).code).toBe(0)
    worker.behave('job', () => ok('done'))
    await enqueueMany(db.pool, 'job', 25)
    const busy = await runCli(['run', '--until-idle', '--json', '--concurrency', '5'], { env: db.env })
    expect(busy.code).toBe(0)
    expect(json(busy)).toMatchObject({ exitCode: 0, outcomes: { completed: 25 } })
    expect(await statusCounts(db.pool)).toEqual({ completed: 25, pending: 1 })
    expect(worker.requestsFor(later)).toEqual([])
  })

  it('logs JSON lines when stderr is not a TTY, and never the password', async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [{ id: 'job' }])
    await enqueueMany(db.pool, 'job', 3)
    const password = decodeURIComponent(new URL(db.url).password)
    expect(password.length).toBeGreaterThan(0)
    // No --log-format: the default off a TTY is JSON lines.
    const result = await runCli(['run', '--until-idle', '--verbose'], { env: db.env })
    expect(result.code).toBe(0)
    const lines = result.stderr.split('\n').filter(Boolean)
    expect(lines.length).toBeGreaterThan(3)
    for (const line of lines) expect(() => JSON.parse(line)).not.toThrow()
    const changes = lines.map((l) => JSON.parse(l)).filter((l) => l.event === 'run')
    expect(changes.map((l) => l.status).sort()).toEqual(['completed', 'completed', 'completed', 'running', 'running', 'running'])
    for (const l of changes) expect(Object.keys(l)).toEqual(expect.arrayContaining(['runId', 'taskId', 'attempt', 'status', 'durationMs']))
    expect(result.stderr + result.stdout).not.toContain(password)

    // The same with the password in the environment rather than the URL.
    const url = new URL(db.url)
    url.password = ''
    const viaEnv = await runCli(['run', '--until-idle', '--verbose'], { env: { DATABASE_URL: url.toString(), PGPASSWORD: password } })
    expect(viaEnv.code).toBe(0)
    expect(viaEnv.stderr + viaEnv.stdout).not.toContain(password)
  })
})
