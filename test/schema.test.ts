/**
 * pipeweave in a schema of its own (SPEC §1 "Schema", issue 10 acceptance 1 and 2), in a database
 * that already holds an application's tables in `public`: an app's `tasks` (rows, an index, a
 * trigger) and TypeORM's `migrations` (id serial, timestamp bigint, name varchar). With
 * `--schema pipeweave` every command works and leaves the app's tables exactly as they were (same
 * relfilenode, rows, indexes, triggers); without it, db:init/db:migrate/db:reset refuse (exit 4)
 * and change nothing. PIPEWEAVE_SCHEMA and the API's `schema` do the same; two schemas in one
 * database are two installs that never meet; the runbook one-liners (SPEC §3) work unchanged with
 * the schema on the search_path. Real processes, a real PostgreSQL, real HTTP workers.
 *
 * Independent of the suite's schema (PIPEWEAVE_TEST_SCHEMA): every command here names its schema.
 */
import { Client, Pool } from 'pg'
import { closeDatabase, createDatabase, enqueueTask, registerService, type Database, type TaskManifest } from '../src'
import { schemaOf } from '../src/sql/schema'
import { json, runCli, type CliResult } from './helpers/cli'
import { createTestDatabase, type TestDatabase } from './helpers/db'
import { LATEST_VERSION } from './helpers/migrations'
import { quickEnv, startRun } from './helpers/orchestrator'
import { psql } from './helpers/psql'
import { waitFor } from './helpers/wait'
import { fail, hold, ok, startWorker, type StubWorker } from './helpers/worker'

/** An application that was here first: its own `tasks` and TypeORM's `migrations`, in public. */
const APP_SQL = `
  CREATE TABLE public.tasks (
    id         serial PRIMARY KEY,
    title      text NOT NULL,
    done       boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT '2020-01-01T00:00:00Z'
  );
  CREATE INDEX tasks_title_idx ON public.tasks (lower(title));
  CREATE FUNCTION public.tasks_touch() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    NEW.updated_at := now();
    RETURN NEW;
  END
  $$;
  CREATE TRIGGER tasks_touch BEFORE UPDATE ON public.tasks FOR EACH ROW EXECUTE FUNCTION public.tasks_touch();
  INSERT INTO public.tasks (title, done) VALUES ('Write the report', false), ('Ship it', true), ('Water the plants', false);

  CREATE TABLE public.migrations (
    id          serial PRIMARY KEY,
    "timestamp" bigint NOT NULL,
    name        character varying NOT NULL
  );
  INSERT INTO public.migrations ("timestamp", name)
  VALUES (1700000000000, 'CreateTasks1700000000000'), (1700000100000, 'AddDoneToTasks1700000100000');
`

/**
 * Everything of the app's that a stray DROP, TRUNCATE, rewrite, INSERT or trigger would change:
 * every relation of public with its relfilenode, the index and trigger definitions, the functions,
 * the sequences' positions and every row.
 */
async function appSnapshot(pool: Pool): Promise<Record<string, unknown>> {
  const rows = async (text: string) => (await pool.query(text)).rows
  return {
    relations: await rows(`
      SELECT c.relname, c.relkind, c.oid::bigint AS oid, c.relfilenode::bigint AS relfilenode
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'public' ORDER BY c.relname`),
    indexes: await rows(`
      SELECT ic.relname AS index, tc.relname AS "table", pg_get_indexdef(i.indexrelid) AS definition, i.indisvalid
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_class tc ON tc.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = tc.relnamespace
       WHERE n.nspname = 'public' ORDER BY ic.relname`),
    triggers: await rows(`
      SELECT t.tgname, c.relname AS "table", t.tgenabled, pg_get_triggerdef(t.oid) AS definition
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'public' AND NOT t.tgisinternal ORDER BY t.tgname`),
    functions: await rows(`
      SELECT p.proname, pg_get_functiondef(p.oid) AS definition
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname = 'public' ORDER BY p.proname`),
    sequences: await rows(`SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' ORDER BY sequencename`),
    tasks: await rows('SELECT * FROM public.tasks ORDER BY id'),
    migrations: await rows('SELECT * FROM public.migrations ORDER BY id'),
  }
}

/** The schemas of the database (other than the system's). */
async function schemas(pool: Pool): Promise<string[]> {
  const { rows } = await pool.query<{ nspname: string }>(
    `SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY nspname`)
  return rows.map((r) => r.nspname)
}

/** Functions named like pipeweave's anywhere in the database. */
async function pipeweaveFunctions(pool: Pool): Promise<string[]> {
  const { rows } = await pool.query<{ name: string }>(`SELECT p.oid::regprocedure::text AS name FROM pg_proc p WHERE p.proname LIKE 'pipeweave\\_%'`)
  return rows.map((r) => r.name)
}

interface AppDatabase {
  db: TestDatabase
  /** A pool with the server's default search_path: every name below is qualified. */
  pool: Pool
  /** The CLI's environment: this database, and no schema unless a test names one. */
  env: Record<string, string | undefined>
  pipeweave(args: string[], extra?: Record<string, string | undefined>): Promise<CliResult>
  /** The programmatic API on this database, in `schema`. */
  api(schema: string): Promise<Database>
  close(): Promise<void>
}

async function appDatabase(): Promise<AppDatabase> {
  const db = await createTestDatabase({ prefix: 'pw_schema' })
  const pool = new Pool({ connectionString: db.url, max: 4 })
  pool.on('error', () => undefined)
  await pool.query(APP_SQL)
  const env = { DATABASE_URL: db.url, PIPEWEAVE_SCHEMA: undefined }
  const apis: Database[] = []
  return {
    db,
    pool,
    env,
    pipeweave: (args, extra = {}) => runCli(args, { env: { ...env, ...extra } }),
    api: async (schema) => {
      const api = await createDatabase({ env: {}, command: 'test', schema, flags: { url: db.url } })
      apis.push(api)
      return api
    },
    close: async () => {
      for (const api of apis) await closeDatabase(api).catch(() => undefined)
      await pool.end().catch(() => undefined)
      await db.drop()
    },
  }
}

async function registerTasks(api: Database, baseUrl: string, tasks: TaskManifest[]): Promise<void> {
  await registerService(api, { id: 'stub', version: '1.0.0', baseUrl, tasks })
}

function expectExit(result: CliResult, code: number): void {
  if (result.code !== code) {
    throw new Error(`expected exit ${code}, got ${result.code}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`)
  }
}

async function statusCounts(pool: Pool, schema: string): Promise<Record<string, number>> {
  const { rows } = await pool.query<{ status: string; n: number }>(`
    SELECT status, count(*)::int AS n
      FROM (SELECT status FROM ${schema}.task_runs UNION ALL SELECT status FROM ${schema}.task_run_history) r
     GROUP BY status`)
  return Object.fromEntries(rows.map((r) => [r.status, r.n]))
}

async function modeOf(pool: Pool, schema: string): Promise<string> {
  const { rows: [row] } = await pool.query<{ mode: string }>(`SELECT mode FROM ${schema}.orchestrator_state WHERE id = 'singleton'`)
  return row.mode
}

/** The server process of a pg client (pg_locks.pid). */
const processId = (client: Client) => (client as unknown as { processID: number }).processID

describe('--schema pipeweave beside an application\'s tables in public', () => {
  let app: AppDatabase
  let worker: StubWorker

  beforeEach(async () => {
    app = await appDatabase()
    worker = await startWorker()
  })
  afterEach(async () => {
    await worker.close()
    await app.close()
  })

  it('db:init, a full run drain, maintenance, db:cleanup and db:reset all work and leave the app\'s tables untouched', async () => {
    const before = await appSnapshot(app.pool)
    const s = ['--schema', 'pipeweave']

    const init = await app.pipeweave(['db:init', ...s, '--json'])
    expectExit(init, 0)
    expect(json(init)).toMatchObject({ currentVersion: LATEST_VERSION })
    expect(await schemas(app.pool)).toEqual(['pipeweave', 'public'])
    // Every pipeweave object is in its schema: its tables, its functions, postgres-migrations' table.
    const { rows: [placed] } = await app.pool.query(`
      SELECT to_regclass('pipeweave.task_runs') IS NOT NULL AS runs,
             to_regclass('pipeweave.tasks') IS NOT NULL AS tasks,
             (SELECT count(*)::int FROM pipeweave.migrations WHERE id > 0) AS migrations,
             (SELECT count(*)::int FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE p.proname LIKE 'pipeweave\\_%' AND n.nspname <> 'pipeweave') AS stray_functions`)
    expect(placed).toEqual({ runs: true, tasks: true, migrations: LATEST_VERSION, stray_functions: 0 })
    expect(await appSnapshot(app.pool)).toEqual(before)

    const migrate = await app.pipeweave(['db:migrate', ...s, '--json'])
    expectExit(migrate, 0)
    expect(json(migrate)).toMatchObject({ applied: [], pending: [] })
    const status = await app.pipeweave(['db:status', ...s, '--json'])
    expectExit(status, 0)
    expect(json(status)).toMatchObject({ initialized: true, currentVersion: LATEST_VERSION, pending: [] })
    expectExit(await app.pipeweave(['db:validate', ...s]), 0)

    // Work: a step with a follow-up, a run that fails once then succeeds, a dead letter, plain runs.
    const api = await app.api('pipeweave')
    await registerTasks(api, worker.url, [
      { id: 'step-one', retries: 0, allowedNext: ['step-two'] },
      { id: 'step-two', retries: 0 },
      { id: 'flaky', retries: 2, retryBackoff: 'fixed', retryDelayMs: 0 },
      { id: 'doomed', retries: 0 },
      { id: 'plain', retries: 0 },
    ])
    let flakyCalls = 0
    worker.behave('step-one', (r) => ok({ one: r.body.input }, ['step-two']))
    worker.behave('flaky', () => (++flakyCalls === 1 ? fail(503, { error: 'warming up' }) : ok({ fine: true })))
    worker.behave('doomed', () => fail(400, { error: 'never' }))
    const enqueued = await app.pipeweave(['tasks:enqueue', 'step-one', ...s, '--input', '{"n":1}', '--json'])
    expectExit(enqueued, 0)
    const stepOne = json<{ runId: string }>(enqueued).runId
    const flaky = (await enqueueTask(api, { taskId: 'flaky', input: { n: 2 } })).runId!
    const doomed = (await enqueueTask(api, { taskId: 'doomed', input: { n: 3 } })).runId!
    for (let n = 4; n <= 8; n++) await enqueueTask(api, { taskId: 'plain', input: { n } })

    const run = startRun(quickEnv(app.env), [...s, '--log-format', 'json', '--until-idle'])
    expectExit(await run.done, 0)
    expect(await statusCounts(app.pool, 'pipeweave')).toEqual({ completed: 8, failed: 1 })
    const { rows: history } = await app.pool.query(`SELECT id, task_id, status, attempt, parent_run_id FROM pipeweave.task_run_history`)
    expect(history.find((r) => r.id === flaky)).toMatchObject({ status: 'completed', attempt: 2 })
    expect(history.find((r) => r.task_id === 'step-two')).toMatchObject({ status: 'completed', parent_run_id: stepOne })
    expect(history.find((r) => r.id === doomed)).toMatchObject({ status: 'failed' })
    const { rows: dead } = await app.pool.query('SELECT task_run_id FROM pipeweave.dlq')
    expect(dead).toEqual([{ task_run_id: doomed }])
    expect(worker.requests).toHaveLength(10)
    const shown = await app.pipeweave(['runs:show', flaky, ...s, '--json'])
    expectExit(shown, 0)
    expect(json(shown)).toMatchObject({ id: flaky, status: 'completed', attempt: 2, previousAttempts: [expect.objectContaining({ error: 'warming up' })] })
    const listed = await app.pipeweave(['runs:list', ...s, '--json'])
    expectExit(listed, 0)
    expect(json<{ runs: unknown[] }>(listed).runs).toHaveLength(9)
    expectExit(await app.pipeweave(['dlq:list', ...s]), 0)
    expect(await appSnapshot(app.pool)).toEqual(before)

    // Maintenance: the drain, its status, and the way back.
    expectExit(await app.pipeweave(['maintenance:request', ...s, '--wait', '--timeout', '60', '--reason', 'schema test']), 0)
    const inMaintenance = await app.pipeweave(['maintenance:status', ...s])
    expectExit(inMaintenance, 0)
    expect(inMaintenance.stdout.split('\n')).toContain('Mode: maintenance')
    expectExit(await app.pipeweave(['maintenance:exit', ...s]), 0)
    expect(json(await app.pipeweave(['maintenance:status', ...s, '--json']))).toMatchObject({ mode: 'running' })
    const { rows: events } = await app.pool.query('SELECT from_mode, to_mode FROM pipeweave.maintenance_events ORDER BY id')
    expect(events).toEqual([
      { from_mode: 'running', to_mode: 'waiting_for_maintenance' },
      { from_mode: 'waiting_for_maintenance', to_mode: 'maintenance' },
      { from_mode: 'maintenance', to_mode: 'running' },
    ])
    expect(await appSnapshot(app.pool)).toEqual(before)

    // Cleanup: every finished run but the dead letter's (its DLQ entry still points to it).
    const cleanup = await app.pipeweave(['db:cleanup', ...s, '--runs-retention-days', '0', '--json'])
    expectExit(cleanup, 0)
    expect(json(cleanup)).toMatchObject({ taskRuns: 8, dlq: 0, dryRun: false })
    expect(await statusCounts(app.pool, 'pipeweave')).toEqual({ failed: 1 })
    expect(await appSnapshot(app.pool)).toEqual(before)

    // Reset: pipeweave's objects dropped and made again, in its schema only.
    const reset = await app.pipeweave(['db:reset', ...s, '--yes', '--json'])
    expectExit(reset, 0)
    expect(json<{ applied: unknown[] }>(reset).applied).toHaveLength(LATEST_VERSION)
    expect(await statusCounts(app.pool, 'pipeweave')).toEqual({})
    expect((await app.pool.query('SELECT count(*)::int AS n FROM pipeweave.services')).rows[0].n).toBe(0)
    expect(await schemas(app.pool)).toEqual(['pipeweave', 'public'])
    expect(await appSnapshot(app.pool)).toEqual(before)
  })

  it('PIPEWEAVE_SCHEMA=pipeweave works like --schema pipeweave, and the API takes `schema` (or reads PIPEWEAVE_SCHEMA)', async () => {
    const before = await appSnapshot(app.pool)
    const env = { PIPEWEAVE_SCHEMA: 'pipeweave' }
    expectExit(await app.pipeweave(['db:init'], env), 0)
    expect(await schemas(app.pool)).toEqual(['pipeweave', 'public'])
    expect(json(await app.pipeweave(['db:status', '--json'], env))).toMatchObject({ initialized: true, currentVersion: LATEST_VERSION })
    // The flag wins over the variable: another schema holds nothing yet.
    expect(json(await app.pipeweave(['db:status', '--schema', 'elsewhere', '--json'], env))).toMatchObject({ initialized: false })

    // The API: `schema` given, or PIPEWEAVE_SCHEMA read from its environment, as the CLI does.
    const api = await app.api('pipeweave')
    expect(api.schema.name).toBe('pipeweave')
    const fromEnv = await createDatabase({ env: { PIPEWEAVE_SCHEMA: 'pipeweave' }, command: 'test', flags: { url: app.db.url } })
    try {
      expect(fromEnv.schema.name).toBe('pipeweave')
      await registerTasks(fromEnv, worker.url, [{ id: 'plain', retries: 0 }])
    } finally {
      await closeDatabase(fromEnv)
    }
    const viaApi = (await enqueueTask(api, { taskId: 'plain', input: { via: 'api' } })).runId!
    const viaCli = json<{ runId: string }>(await app.pipeweave(['tasks:enqueue', 'plain', '--input', '{"via":"cli"}', '--json'], env)).runId
    const { rows: queued } = await app.pool.query('SELECT id FROM pipeweave.task_runs ORDER BY id')
    expect(queued.map((r) => r.id)).toEqual([viaApi, viaCli].sort())

    const run = startRun(quickEnv({ ...app.env, ...env }), ['--log-format', 'json', '--until-idle'])
    expectExit(await run.done, 0)
    expect(await statusCounts(app.pool, 'pipeweave')).toEqual({ completed: 2 })
    expect(worker.requests.map((r) => r.body.input)).toEqual(expect.arrayContaining([{ via: 'api' }, { via: 'cli' }]))
    const status = await app.pipeweave(['maintenance:status'], env)
    expectExit(status, 0)
    expect(status.stdout.split('\n')).toContain('Mode: running')
    expectExit(await app.pipeweave(['db:reset', '--yes'], env), 0)
    expect(await appSnapshot(app.pool)).toEqual(before)
  })
})

describe('without --schema, in a public that holds an application\'s tasks and TypeORM\'s migrations', () => {
  let app: AppDatabase
  let before: Record<string, unknown>

  beforeAll(async () => {
    app = await appDatabase()
    before = await appSnapshot(app.pool)
  })
  afterAll(async () => { await app.close() })

  /** Nothing of pipeweave's was made anywhere, and the app's tables are as they were. */
  async function expectUntouched(): Promise<void> {
    expect(await schemas(app.pool)).toEqual(['public'])
    expect(await pipeweaveFunctions(app.pool)).toEqual([])
    expect(await appSnapshot(app.pool)).toEqual(before)
  }

  it.each([['db:init'], ['db:migrate']])('%s exits 4 naming the clashing tables, suggests --schema pipeweave, and changes nothing', async (command) => {
    const result = await app.pipeweave([command])
    expectExit(result, 4)
    expect(result.stderr).toMatch(/"tasks"/)
    expect(result.stderr).toMatch(/"migrations"/)
    expect(result.stderr).toContain('--schema pipeweave')
    expect(result.stdout).toBe('')
    const asJson = await app.pipeweave([command, '--json'])
    expectExit(asJson, 4)
    expect(json(asJson)).toMatchObject({ exitCode: 4, error: { code: 'SCHEMA_CLASH', hint: expect.stringContaining('--schema pipeweave') } })
    await expectUntouched()
  })

  it('db:status does not take TypeORM\'s migrations table for pipeweave\'s', async () => {
    const result = await app.pipeweave(['db:status', '--json'])
    expect(result.code).not.toBe(1)
    expectExit(result, 0)
    expect(json(result)).toMatchObject({ initialized: false, currentVersion: null, applied: [] })
    expectExit(await app.pipeweave(['db:status']), 0)
    await expectUntouched()
  })

  it('db:reset is refused (exit 4) and drops nothing', async () => {
    const result = await app.pipeweave(['db:reset', '--yes', '--json'])
    expectExit(result, 4)
    expect(json(result)).toMatchObject({ error: { code: 'SCHEMA_CLASH' } })
    await expectUntouched()
  })

  it('--schema public (or PIPEWEAVE_SCHEMA=public) is refused the same way', async () => {
    expectExit(await app.pipeweave(['db:init', '--schema', 'public']), 4)
    expectExit(await app.pipeweave(['db:init'], { PIPEWEAVE_SCHEMA: 'public' }), 4)
    await expectUntouched()
  })
})

describe('a bad schema name', () => {
  // Nothing listens on port 1: had the command connected, it would exit 3.
  const unreachable = { DATABASE_URL: 'postgres://someone:secret@127.0.0.1:1/nowhere', PIPEWEAVE_SCHEMA: undefined }

  it.each([
    [['db:init', '--schema', 'Bad Name'], {}],
    [['db:status', '--schema', 'Bad Name'], {}],
    [['maintenance:status', '--schema', 'x;drop'], {}],
    [['run', '--schema', 'Pipeweave'], {}],
    [['db:init'], { PIPEWEAVE_SCHEMA: 'Bad Name' }],
  ] as Array<[string[], Record<string, string>]>)('%j %j exits 2 before connecting', async (args, extra) => {
    const result = await runCli([...args, '--json'], { env: { ...unreachable, ...extra } })
    expectExit(result, 2)
    expect(json(result)).toMatchObject({ exitCode: 2, error: { code: 'INVALID_SCHEMA' } })
    expect(json<{ error: { message: string } }>(result).error.message).toMatch(extra.PIPEWEAVE_SCHEMA ? /PIPEWEAVE_SCHEMA/ : /--schema/)
  })
})

describe('two schemas in one database', () => {
  let app: AppDatabase
  const workers: Record<'a' | 'b', StubWorker> = {} as never
  const apis: Record<'a' | 'b', Database> = {} as never

  beforeAll(async () => {
    app = await appDatabase()
    for (const name of ['a', 'b'] as const) {
      expectExit(await app.pipeweave(['db:init', '--schema', name]), 0)
      workers[name] = await startWorker()
      apis[name] = await app.api(name)
      // The same task id in both: each install dispatches to the worker registered in it.
      await registerTasks(apis[name], workers[name].url, [{ id: 'work', retries: 0 }])
    }
  })
  afterAll(async () => {
    for (const worker of Object.values(workers)) await worker.close()
    await app.close()
  })

  it('each orchestrator drains its own schema only; a maintenance request in a neither blocks nor changes b', async () => {
    const orchestrators = {
      a: startRun(quickEnv(app.env), ['--schema', 'a', '--log-format', 'json']),
      b: startRun(quickEnv(app.env), ['--schema', 'b', '--log-format', 'json']),
    }
    const ids = { a: await orchestrators.a.started(), b: await orchestrators.b.started() }
    const enqueue = async (name: 'a' | 'b', count: number) => {
      const runIds: string[] = []
      for (let n = 0; n < count; n++) runIds.push((await enqueueTask(apis[name], { taskId: 'work', input: { schema: name, n } })).runId!)
      return runIds
    }
    const runs = { a: await enqueue('a', 10), b: await enqueue('b', 10) }
    await waitFor(async () => (await statusCounts(app.pool, 'a')).completed === 10 && (await statusCounts(app.pool, 'b')).completed === 10,
      { what: 'both schemas drained' })
    for (const name of ['a', 'b'] as const) {
      // Each worker saw its own schema's runs only, each sent by its own schema's orchestrator.
      expect(workers[name].requests.map((r) => r.runId).sort()).toEqual([...runs[name]].sort())
      expect(new Set(workers[name].requests.map((r) => (r.body.input as { schema: string }).schema))).toEqual(new Set([name]))
      const { rows } = await app.pool.query(`SELECT DISTINCT orchestrator_id FROM ${name}.task_run_history`)
      expect(rows).toEqual([{ orchestrator_id: ids[name] }])
      const { rows: registered } = await app.pool.query(`SELECT id FROM ${name}.orchestrators`)
      expect(registered).toEqual([{ id: ids[name] }])
    }

    // A run held by a's worker keeps a's drain open.
    workers.a.behave('work', () => hold())
    const [heldRun] = await enqueue('a', 1)
    const held = await workers.a.nthRequest(11)
    expect(held.runId).toBe(heldRun)
    const request = await app.pipeweave(['maintenance:request', '--schema', 'a', '--json'])
    expectExit(request, 0)
    expect(json(request)).toMatchObject({ mode: 'waiting_for_maintenance', runningTasks: 1 })
    const bEventsBefore = (await app.pool.query('SELECT count(*)::int AS n FROM b.maintenance_events')).rows[0].n

    // Meanwhile b takes new work and runs it, and a refuses new work.
    const bRun = json<{ runId: string }>(await app.pipeweave(['tasks:enqueue', 'work', '--schema', 'b', '--input', '{"schema":"b","late":true}', '--json'])).runId
    await workers.b.until(() => workers.b.requests.some((r) => r.runId === bRun), { what: 'b\'s late run dispatched' })
    await waitFor(async () => (await statusCounts(app.pool, 'b')).completed === 11, { what: 'b\'s late run completed' })
    expectExit(await app.pipeweave(['tasks:enqueue', 'work', '--schema', 'a', '--input', '{}']), 4)
    expect(await modeOf(app.pool, 'b')).toBe('running')
    expect(json(await app.pipeweave(['maintenance:status', '--schema', 'b', '--json']))).toMatchObject({ mode: 'running', runningTasks: 0 })
    expect(await modeOf(app.pool, 'a')).toBe('waiting_for_maintenance')

    // a's drain ends when its run does; b never changed mode.
    held.release(ok())
    await waitFor(async () => (await modeOf(app.pool, 'a')) === 'maintenance', { what: 'a in maintenance' })
    expect((await app.pool.query('SELECT count(*)::int AS n FROM b.maintenance_events')).rows[0].n).toBe(bEventsBefore)
    expect(await modeOf(app.pool, 'b')).toBe('running')
    expectExit(await app.pipeweave(['maintenance:exit', '--schema', 'a']), 0)
    workers.a.behave('work', () => ok())

    for (const name of ['a', 'b'] as const) expectExit(await orchestrators[name].stop('SIGTERM'), 0)
  })

  it('their gate keys differ (pg_locks): a mode change holding a\'s gate does not hold up b', async () => {
    const gate = async (name: string) => (await app.pool.query<{ key: string }>(`SELECT (${schemaOf(name).gateKey})::text AS key`)).rows[0].key
    const keys = { a: await gate('a'), b: await gate('b') }
    expect(keys.a).not.toBe(keys.b)

    const changer = new Client({ connectionString: app.db.url })
    const enqueuer = new Client({ connectionString: app.db.url })
    await changer.connect()
    await enqueuer.connect()
    try {
      // A runbook's mode change in a, left open: its trigger holds a's gate exclusive.
      await changer.query('BEGIN')
      await changer.query(`UPDATE a.orchestrator_state SET mode = 'maintenance' WHERE id = 'singleton'`)
      // An enqueue in b, left open: it holds b's gate shared (pipeweave_gate_v1).
      await enqueuer.query('BEGIN')
      expect((await enqueuer.query('SELECT b.pipeweave_gate_v1() AS mode')).rows[0].mode).toBe('running')

      const { rows: locks } = await app.pool.query<{ pid: number; key: string; mode: string; granted: boolean }>(`
        SELECT pid, ((classid::int8 << 32) | objid::int8)::text AS key, mode, granted
          FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND pid = ANY ($1::int[]) ORDER BY pid`,
      [[processId(changer), processId(enqueuer)]])
      expect(locks).toEqual([
        { pid: processId(changer), key: keys.a, mode: 'ExclusiveLock', granted: true },
        { pid: processId(enqueuer), key: keys.b, mode: 'ShareLock', granted: true },
      ].sort((x, y) => x.pid - y.pid))

      // While a's gate is held, b's installs go on: an enqueue by the CLI and a claim by its orchestrator.
      const enqueued = await app.pipeweave(['tasks:enqueue', 'work', '--schema', 'b', '--input', '{"gate":"b"}', '--json'], { DB_STATEMENT_TIMEOUT_MS: '10000' })
      expectExit(enqueued, 0)
      const runId = json<{ runId: string }>(enqueued).runId
      expectExit(await startRun(quickEnv(app.env), ['--schema', 'b', '--log-format', 'json', '--until-idle']).done, 0)
      expect(workers.b.requests.filter((r) => r.runId === runId)).toHaveLength(1)
      expect((await app.pool.query('SELECT status FROM b.task_run_history WHERE id = $1', [runId])).rows).toEqual([{ status: 'completed' }])
      // All the while, a's gate was held: a's mode change is still open.
      expect((await app.pool.query(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' AND granted AND pid = $1`,
        [processId(changer)])).rows[0].n).toBe(1)
    } finally {
      await changer.query('ROLLBACK').catch(() => undefined)
      await enqueuer.query('ROLLBACK').catch(() => undefined)
      await changer.end()
      await enqueuer.end()
    }
    expect(await modeOf(app.pool, 'a')).toBe('running')
  })

  it('their NOTIFY channels differ: each install\'s events go to its own channel', async () => {
    const channels = { a: schemaOf('a').channel, b: schemaOf('b').channel }
    expect(channels).toEqual({ a: 'pipeweave.a', b: 'pipeweave.b' })
    const listener = new Client({ connectionString: app.db.url })
    await listener.connect()
    const heard: Array<{ channel: string; payload: string | undefined }> = []
    listener.on('notification', (n) => heard.push({ channel: n.channel, payload: n.payload }))
    try {
      await listener.query(`LISTEN "${channels.a}"`)
      await listener.query(`LISTEN "${channels.b}"`)
      // No orchestrator runs: the runs stay pending, and nothing else notifies.
      await enqueueTask(apis.a, { taskId: 'work', input: { n: 'a' } })
      await waitFor(() => heard.length >= 1, { what: 'a\'s notification' })
      expectExit(await app.pipeweave(['maintenance:enter', '--schema', 'b']), 0)
      await waitFor(() => heard.length >= 2, { what: 'b\'s notification' })
      expectExit(await app.pipeweave(['maintenance:exit', '--schema', 'b']), 0)
      await waitFor(() => heard.length >= 3, { what: 'b\'s second notification' })
      // A round trip after the last change: any notification of it has arrived by now.
      await listener.query('SELECT 1')
      expect(heard).toEqual([
        { channel: 'pipeweave.a', payload: 'runs' },
        { channel: 'pipeweave.b', payload: 'mode' },
        { channel: 'pipeweave.b', payload: 'mode' },
      ])
    } finally {
      await listener.end()
    }
  })
})

describe('the runbook one-liners (SPEC §3), unchanged, with SET search_path TO pipeweave', () => {
  let app: AppDatabase
  let worker: StubWorker
  let api: Database
  let dbUser: string
  let before: Record<string, unknown>
  const s = ['--schema', 'pipeweave']
  const runbook = (sql: string) => psql(app.db.url, sql, { schema: 'pipeweave' })

  beforeAll(async () => {
    app = await appDatabase()
    before = await appSnapshot(app.pool)
    dbUser = decodeURIComponent(new URL(app.db.url).username)
    expectExit(await app.pipeweave(['db:init', ...s]), 0)
    worker = await startWorker()
    api = await app.api('pipeweave')
    await registerTasks(api, worker.url, [{ id: 'slow', retries: 0 }, { id: 'work', retries: 0 }])
  })
  afterAll(async () => {
    await worker.close()
    // The app's tasks never met the runbook's SQL: the search_path named pipeweave's schema only.
    expect(await appSnapshot(app.pool)).toEqual(before)
    await app.close()
  })

  /** Run `id` is in the history as cancelled, with no output: the late answer was dropped. */
  async function expectCancelledInHistory(id: string): Promise<void> {
    const { rows } = await app.pool.query('SELECT status, output, orchestrator_id FROM pipeweave.task_run_history WHERE id = $1', [id])
    expect(rows).toEqual([expect.objectContaining({ status: 'cancelled', output: null })])
    expect((await app.pool.query('SELECT count(*)::int AS n FROM pipeweave.task_runs WHERE id = $1', [id])).rows[0].n).toBe(0)
    const shown = await app.pipeweave(['runs:show', id, ...s, '--json'])
    expectExit(shown, 0)
    expect(json(shown)).toMatchObject({ id, status: 'cancelled', output: null })
  }

  it('SELECT … WHERE status IN (\'pending\',\'running\') lists the live runs; UPDATE … SET status = \'cancelled\' of a run started over an hour ago: the late result is dropped, the maintenance tick moves it to the history', async () => {
    worker.behave('slow', () => hold())
    const run = startRun(quickEnv(app.env), [...s, '--log-format', 'json', '--concurrency', '1'])
    await run.started()
    const first = (await enqueueTask(api, { taskId: 'slow', input: { n: 1 } })).runId!
    const held = await worker.nthRequest(1)
    expect(held.runId).toBe(first)
    const second = (await enqueueTask(api, { taskId: 'slow', input: { n: 2 } })).runId!

    const live = await runbook(`SELECT id, task_id, status, started_at FROM task_runs WHERE status IN ('pending','running')`)
    expect(live.lines.map((line) => line.split('|').slice(0, 3)).sort()).toEqual([[first, 'slow', 'running'], [second, 'slow', 'pending']].sort())
    expect(live.lines.find((line) => line.startsWith(first))!.split('|')[3]).not.toBe('')

    // The run has been running for two hours, as far as the runbook can tell.
    await app.pool.query(`UPDATE pipeweave.task_runs SET started_at = now() - interval '2 hours' WHERE id = $1`, [first])
    expect((await runbook(`UPDATE task_runs SET status = 'cancelled' WHERE status = 'running' AND started_at < now() - interval '1 hour'`)).lines)
      .toEqual(['UPDATE 1'])

    // The worker answers late: the completion is fenced, the result dropped.
    held.release(ok({ late: true }))
    await run.waitForLog((l) => l.event === 'fenced' && l.runId === first, { what: 'the late result dropped' })
    await waitFor(async () => (await app.pool.query('SELECT 1 FROM pipeweave.task_run_history WHERE id = $1', [first])).rowCount === 1,
      { what: 'the cancelled run moved to the history' })
    await run.waitForLog((l) => l.event === 'swept', { what: 'the sweep' })
    await expectCancelledInHistory(first)
    expect(run.logs().some((l) => l.runId === first && l.status === 'completed')).toBe(false)

    // The slot the answer freed goes to the next run.
    const next = await worker.nthRequest(2)
    expect(next.runId).toBe(second)
    next.release(ok())
    await waitFor(async () => (await statusCounts(app.pool, 'pipeweave')).completed === 1, { what: 'the second run completed' })
    expectExit(await run.stop('SIGTERM'), 0)
    worker.behave('slow', () => ok())
  })

  it('… or, with no maintenance tick in between, the next db:cleanup moves it', async () => {
    worker.behave('slow', () => hold())
    // A maintenance tick an hour away: this orchestrator does not sweep during the test.
    const run = startRun(quickEnv({ ...app.env, MAINTENANCE_CHECK_INTERVAL_MS: '3600000' }), [...s, '--log-format', 'json'])
    await run.started()
    const id = (await enqueueTask(api, { taskId: 'slow', input: { n: 3 } })).runId!
    const held = await worker.until(() => worker.requests.some((r) => r.runId === id), { what: 'the run dispatched' })
      .then(() => worker.requests.find((r) => r.runId === id)!)
    await app.pool.query(`UPDATE pipeweave.task_runs SET started_at = now() - interval '2 hours' WHERE id = $1`, [id])
    expect((await runbook(`UPDATE task_runs SET status = 'cancelled' WHERE status = 'running' AND started_at < now() - interval '1 hour'`)).lines)
      .toEqual(['UPDATE 1'])
    held.release(ok({ late: true }))
    await run.waitForLog((l) => l.event === 'fenced' && l.runId === id, { what: 'the late result dropped' })
    expectExit(await run.stop('SIGTERM'), 0)

    // Still among the live rows, cancelled: runs:show says so already.
    const { rows: stray } = await app.pool.query('SELECT status FROM pipeweave.task_runs WHERE id = $1', [id])
    expect(stray).toEqual([{ status: 'cancelled' }])
    expect(json(await app.pipeweave(['runs:show', id, ...s, '--json']))).toMatchObject({ id, status: 'cancelled' })

    const cleanup = await app.pipeweave(['db:cleanup', ...s, '--json'])
    expectExit(cleanup, 0)
    expect(json(cleanup)).toMatchObject({ taskRuns: 0 })
    await expectCancelledInHistory(id)
    worker.behave('slow', () => ok())
  })

  it('UPDATE orchestrator_state SET mode = \'running\' WHERE id = \'singleton\' in maintenance: recorded with the database user as actor, honoured by the orchestrator', async () => {
    const queued = [
      (await enqueueTask(api, { taskId: 'work', input: { n: 1 } })).runId!,
      (await enqueueTask(api, { taskId: 'work', input: { n: 2 } })).runId!,
    ]
    expectExit(await app.pipeweave(['maintenance:enter', ...s, '--reason', 'restore']), 0)
    const run = startRun(quickEnv(app.env), [...s, '--log-format', 'json'])
    const started = await run.waitForLog((l) => l.event === 'started', { what: 'its start' })
    expect(started).toMatchObject({ mode: 'maintenance', schema: 'pipeweave' })
    const { rows: [{ last }] } = await app.pool.query('SELECT max(id) AS last FROM pipeweave.maintenance_events')
    expect(worker.requests.filter((r) => queued.includes(r.runId))).toEqual([])

    expect((await runbook(`UPDATE orchestrator_state SET mode = 'running' WHERE id = 'singleton'`)).lines).toEqual(['UPDATE 1'])

    const { rows: events } = await app.pool.query(
      'SELECT from_mode, to_mode, actor, reason FROM pipeweave.maintenance_events WHERE id > $1 ORDER BY id', [last])
    expect(events).toEqual([{ from_mode: 'maintenance', to_mode: 'running', actor: `${dbUser} (psql)`, reason: null }])
    await run.waitForLog((l) => l.event === 'mode' && l.mode === 'running', { what: 'the resume' })
    await worker.until(() => queued.every((id) => worker.requests.some((r) => r.runId === id)), { what: 'the queued runs dispatched' })
    await waitFor(async () => (await app.pool.query(
      `SELECT count(*)::int AS n FROM pipeweave.task_run_history WHERE id = ANY ($1::text[]) AND status = 'completed'`, [queued])).rows[0].n === 2,
    { what: 'the queued runs completed' })
    const status = await app.pipeweave(['maintenance:status', ...s])
    expect(status.stdout.split('\n')).toContain('Mode: running')
    expectExit(await run.stop('SIGTERM'), 0)
  })
})
