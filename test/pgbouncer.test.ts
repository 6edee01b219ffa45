/**
 * pipeweave through a real PgBouncer in transaction pooling (SPEC §5, issue 10 acceptance 7):
 * Debian's pgbouncer with 3 server connections for a dozen and more pipeweave clients, in front of
 * a fresh database migrated directly (only db:migrate needs a session). Through it: three
 * `run --no-listen` drain 2,000 runs queued by `tasks:enqueue --jsonl` and the bulk API, each
 * received once; tasks:enqueue of one run; maintenance:request --wait while runs finish,
 * maintenance:exit; db:cleanup, whose hold is a lease row. After each, every pooled server
 * connection is checked for session state left behind (a SET outside a transaction, a session
 * advisory lock, LISTEN, a named prepared statement): in transaction pooling PgBouncer runs no
 * reset query, so the next client would inherit it.
 */
import { Client, escapeIdentifier } from 'pg'
import { enqueueTasks } from '../src/api/enqueue'
import { type Database } from '../src/db/database'
import { VERSION } from '../src/version'
import { type CliResult, json, runCli, startCli } from './helpers/cli'
import { ALL_RUNS, TEST_SCHEMA, type TestDatabase, adminUrl, apiDatabase, createTestDatabase } from './helpers/db'
import { allIn, quickEnv, registerTasks, type RunProcess, startRun, statusCounts } from './helpers/orchestrator'
import { PGBOUNCER, type PgBouncer, alive, runningPgBouncers, startPgBouncer } from './helpers/pgbouncer'
import { describeWithRealPart } from './helpers/real-parts'
import { waitFor } from './helpers/wait'
import { hold, ok, startWorker, type StubWorker } from './helpers/worker'

const describeWithPgBouncer = describeWithRealPart(__filename, {
  program: PGBOUNCER, install: 'apt-get install -y pgbouncer', requiredInCi: true,
})

/** Server connections PgBouncer keeps for the test database: fewer than pipeweave's clients. */
const POOL = 3
/** Each orchestrator's own pool: three of them are 12 clients for PgBouncer's 3 server connections. */
const RUN_POOL = 4
const ALIAS = 'pipeweave'

describeWithPgBouncer('pipeweave through a real PgBouncer (transaction pooling)', () => {
  let db: TestDatabase
  let worker: StubWorker
  let bouncer: PgBouncer
  /** The CLI's environment: DATABASE_URL through PgBouncer. */
  let env: Record<string, string>
  /** The programmatic API through PgBouncer. */
  let api: Database

  beforeAll(async () => {
    // Migrated directly, not through the pooler: migrations need a session (SPEC §5).
    db = await createTestDatabase({ migrated: true, prefix: 'pw_pgbouncer' })
    // The server's default for new connections: a `SET synchronous_commit = off` that outlived its
    // transaction (db:cleanup's batches use SET LOCAL) would show through the pooler as `off`.
    await db.pool.query(`ALTER DATABASE ${escapeIdentifier(db.name)} SET synchronous_commit = on`)
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [
      { id: 'fast', retries: 0 },
      { id: 'limited', retries: 0, concurrency: 2 },
      { id: 'slow', retries: 0 },
    ])
    bouncer = await startPgBouncer({ serverUrl: adminUrl(), databases: { [ALIAS]: db.name }, defaultPoolSize: POOL, maxClientConn: 200 })
    env = { DATABASE_URL: bouncer.url(ALIAS), PIPEWEAVE_SCHEMA: TEST_SCHEMA, DB_POOL_MAX: String(RUN_POOL) }
    api = await apiDatabase(bouncer.url(ALIAS))
  }, 60_000)

  afterAll(async () => {
    await api?.close()
    await bouncer?.stop()
    await worker?.close()
    await db?.drop()
  })

  /** `pipeweave <args> --json` through PgBouncer. */
  const cli = (args: string[]): Promise<CliResult> => runCli([...args, '--json'], { env })

  /** `run` polling only (a LISTEN would stay on a pooled server connection: the session checks below see it). */
  const runArgs = (concurrency: number) => ['--log-format', 'json', '--concurrency', String(concurrency), '--no-listen']

  /** Advisory locks held on the server in the test database (session locks would outlive their transaction). */
  const advisoryLocks = async () => (await db.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = $1)`,
    [db.name])).rows[0].n

  /** What a fresh server connection to the test database shows (taken directly, without the pooler). */
  let fresh: SessionState | undefined
  const freshState = async (): Promise<SessionState> => {
    if (fresh) return fresh
    const client = new Client({ connectionString: db.url })
    await client.connect()
    try {
      fresh = (await client.query<SessionState>(SESSION_STATE)).rows[0]
      return fresh
    } finally {
      await client.end()
    }
  }

  /**
   * The session state of every server connection PgBouncer holds for the test database: as many
   * pooled clients as it has server connections, each inside a transaction (so each holds one of
   * its own), each reading what its server connection carries. All must look like a fresh one.
   */
  const pooledSessionStates = async (): Promise<Array<SessionState & { pid: number }>> => {
    const clients = Array.from({ length: POOL }, () => new Client({ connectionString: bouncer.url(ALIAS) }))
    try {
      for (const c of clients) {
        c.on('error', () => undefined)
        await c.connect()
        await c.query('BEGIN')
      }
      const states = []
      for (const c of clients) states.push((await c.query<SessionState & { pid: number }>(`${SESSION_STATE}, pg_backend_pid() AS pid`)).rows[0])
      for (const c of clients) await c.query('COMMIT')
      return states
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => undefined)))
    }
  }

  const expectNoSessionStateLeft = async () => {
    const expected = await freshState()
    const states = await pooledSessionStates()
    expect(new Set(states.map((s) => s.pid)).size).toBe(POOL)
    for (const { pid, ...state } of states) expect({ pid, ...state }).toEqual({ pid, ...expected })
    expect(await advisoryLocks()).toBe(0)
    // PgBouncer never had more than POOL server connections for it.
    const servers = (await bouncer.admin<{ database: string }>('SHOW SERVERS')).filter((s) => s.database === ALIAS)
    expect(servers.length).toBeLessThanOrEqual(POOL)
  }

  it(`three \`run --no-listen\` drain 2,000 runs queued by tasks:enqueue --jsonl and the bulk API through it (${POOL} server connections), each received once`, async () => {
    worker.behave('limited', () => ({ kind: 'reply', status: 200, body: { output: 'ok' }, delayMs: 2 }))
    const runs: RunProcess[] = [0, 1, 2].map(() => startRun(quickEnv(env), runArgs(20)))
    const ids = await Promise.all(runs.map((r) => r.started()))
    expect(new Set(ids).size).toBe(3)

    // PgBouncer's own view while they work: its clients for the test database, its server connections.
    const seen = { runClients: new Set<string>(), servers: 0, applications: new Set<string>() }
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        const clients = (await bouncer.admin<{ database: string; addr: string; port: number; application_name: string }>('SHOW CLIENTS'))
          .filter((c) => c.database === ALIAS)
        const servers = (await bouncer.admin<{ database: string }>('SHOW SERVERS')).filter((s) => s.database === ALIAS)
        for (const c of clients) seen.applications.add(c.application_name)
        for (const c of clients) if (c.application_name === `pipeweave/${VERSION} run`) seen.runClients.add(`${c.addr}:${c.port}`)
        seen.servers = Math.max(seen.servers, servers.length)
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    })()

    // Enqueued through PgBouncer while all three claim, in batches of one transaction each: by
    // `tasks:enqueue --jsonl -` and by the bulk API.
    const enqueued: string[] = []
    for (let batch = 0; batch < 10; batch++) {
      const lines = Array.from({ length: 190 }, (_, i) => JSON.stringify({ batch, n: i + 1 })).join('\n')
      const bulk = await runCli(['tasks:enqueue', 'fast', '--jsonl', '-', '--json'], { env, input: `${lines}\n` })
      if (bulk.code !== 0) throw new Error(`tasks:enqueue --jsonl exited ${bulk.code}: ${bulk.stdout}${bulk.stderr}`)
      const { runIds } = json<{ runIds: string[] }>(bulk)
      expect(runIds).toHaveLength(190)
      enqueued.push(...runIds)
      enqueued.push(...(await enqueueTasks(api, 'limited', Array.from({ length: 10 }, (_, n) => ({ input: { batch, n } })))).runIds as string[])
    }
    expect(new Set(enqueued).size).toBe(2000)

    try {
      await waitFor(() => allIn(db.pool, ['completed']), { timeoutMs: 100_000, intervalMs: 250, what: 'all 2,000 runs completed' })
    } finally {
      sampling = false
      await sampler
    }
    expect(await statusCounts(db.pool)).toEqual({ completed: 2000 })
    const arrivals = worker.arrivals()
    expect([...arrivals].filter(([, n]) => n !== 1)).toEqual([])
    expect(new Set(arrivals.keys())).toEqual(new Set(enqueued))
    expect(worker.maxInFlight.get('limited')).toBeLessThanOrEqual(2)
    const { rows } = await db.pool.query<{ orchestrator_id: string }>(`SELECT DISTINCT orchestrator_id FROM ${ALL_RUNS} AS r`)
    expect(rows.every((r) => ids.includes(r.orchestrator_id))).toBe(true)

    // The orchestrators were PgBouncer's clients (by application_name; each client by its address),
    // more of them than its server connections.
    expect(seen.applications).toContain(`pipeweave/${VERSION} run`)
    expect(seen.runClients.size).toBeGreaterThan(POOL)
    expect(seen.servers).toBeLessThanOrEqual(POOL)

    const exits = await Promise.all(runs.map((r) => r.stop('SIGTERM')))
    expect(exits.map((e) => e.code)).toEqual([0, 0, 0])
    for (const r of runs) expect(r.otherLines()).toEqual([])
    expect(errorLogs(runs)).toEqual([])
    expect((await db.pool.query('SELECT id FROM orchestrators')).rows).toEqual([])
    await expectNoSessionStateLeft()
  }, 150_000)

  it('tasks:enqueue works through it (a key deduplicates), and `run --until-idle` completes the run', async () => {
    const first = await cli(['tasks:enqueue', 'fast', '--input', '{"via":"pgbouncer"}', '--idempotency-key', 'pgb-1'])
    expect(first.code).toBe(0)
    const { runId, deduplicated } = json<{ runId: string; deduplicated: boolean }>(first)
    expect(deduplicated).toBe(false)
    const again = json<{ runId: string; deduplicated: boolean }>(await cli(['tasks:enqueue', 'fast', '--idempotency-key', 'pgb-1']))
    expect(again).toEqual({ runId, deduplicated: true })
    expect((await db.pool.query('SELECT status, input FROM task_runs WHERE id = $1', [runId])).rows)
      .toEqual([{ status: 'pending', input: { via: 'pgbouncer' } }])

    // Polling only by the environment twin this time.
    const run = startRun(quickEnv({ ...env, PIPEWEAVE_NO_LISTEN: '1' }), ['--log-format', 'json', '--until-idle'])
    const exit = await run.done
    expect(exit.code).toBe(0)
    expect(worker.requestsFor(runId)).toHaveLength(1)
    expect((await db.pool.query(`SELECT status FROM ${ALL_RUNS} AS r WHERE id = $1`, [runId])).rows).toEqual([{ status: 'completed' }])
    await expectNoSessionStateLeft()
  })

  it('maintenance:request --wait waits for runs in flight to finish, and maintenance:exit resumes', async () => {
    worker.behave('slow', () => hold())
    const run = startRun(quickEnv(env), runArgs(5))
    await run.started()
    const { runIds } = await enqueueTasks(api, 'slow', Array.from({ length: 4 }, (_, i) => ({ input: { i } })))
    await worker.until(() => worker.held().length === 4, { what: 'four slow runs in flight' })

    const request = startCli(['maintenance:request', '--wait', '--timeout', '60', '--reason', 'pgbouncer test', '--json'], { env })
    await waitFor(async () => (await db.pool.query('SELECT mode FROM orchestrator_state')).rows[0]?.mode === 'waiting_for_maintenance',
      { what: 'the request to stand' })
    // New work is refused meanwhile (exit 4), through the pooler too; the wait goes on.
    expect((await cli(['tasks:enqueue', 'fast'])).code).toBe(4)
    expect(worker.held()).toHaveLength(4)
    expect(request.child.exitCode).toBeNull()

    worker.releaseAll(ok('done'))
    const waited = await request.done
    expect(waited.code).toBe(0)
    expect(json<{ mode: string }>(waited).mode).toBe('maintenance')
    expect(await allIn(db.pool, ['completed'], runIds as string[])).toBe(true)

    const exit = await cli(['maintenance:exit'])
    expect(exit.code).toBe(0)
    expect(json<{ mode: string }>(exit).mode).toBe('running')
    expect((await cli(['tasks:enqueue', 'fast'])).code).toBe(0)

    expect((await run.stop('SIGTERM')).code).toBe(0)
    expect(errorLogs([run])).toEqual([])
    await expectNoSessionStateLeft()
  })

  it('db:cleanup works through it; its hold is a lease row, and no session state is left on the pooled connections', async () => {
    // Something to delete: finished runs (these, and those of the tests above), expired cache entries.
    await enqueueTasks(api, 'fast', Array.from({ length: 300 }, (_, i) => ({ input: { i } })))
    expect((await startRun(quickEnv(env), [...runArgs(20), '--until-idle']).done).code).toBe(0)
    await db.pool.query(`
      INSERT INTO idempotency_cache (task_id, idempotency_key, output, expires_at)
      SELECT 'fast', 'expired-' || i, '{}', now() - interval '1 hour' FROM generate_series(1, 30) AS i`)
    const { rows: [{ finished }] } = await db.pool.query<{ finished: number }>('SELECT count(*)::int AS finished FROM task_run_history')
    expect(finished).toBeGreaterThanOrEqual(300)

    // Another cleanup's unexpired lease: this one does nothing and says so (exit 0).
    await db.pool.query(`INSERT INTO leases (name, holder, expires_at) VALUES ('db:cleanup', 'another cleanup', now() + interval '1 minute')`)
    const skipped = await cli(['db:cleanup', '--runs-retention-days', '0'])
    expect(skipped.code).toBe(0)
    expect(json(skipped)).toMatchObject({ skipped: true, taskRuns: 0 })
    await db.pool.query(`DELETE FROM leases`)

    // Small batches: many transactions, each SET LOCAL synchronous_commit = off, on the 3 server connections.
    const done = await cli(['db:cleanup', '--runs-retention-days', '0', '--batch-size', '100'])
    expect(done.code).toBe(0)
    expect(json(done)).toEqual({ idempotencyCache: 30, dlq: 0, taskRuns: finished, dryRun: false })
    expect((await db.pool.query('SELECT count(*)::int AS n FROM task_run_history')).rows[0].n).toBe(0)
    // The hold was a row, and it is gone; no advisory lock is held on the server.
    expect((await db.pool.query('SELECT * FROM leases')).rows).toEqual([])
    await expectNoSessionStateLeft()
    // A new pooled client sees the database's synchronous_commit, not the batches' local `off`.
    const client = new Client({ connectionString: bouncer.url(ALIAS) })
    await client.connect()
    try {
      expect((await client.query('SHOW synchronous_commit')).rows).toEqual([{ synchronous_commit: 'on' }])
    } finally {
      await client.end()
    }
  })

  it('stopping PgBouncer leaves no process behind', async () => {
    const { pid } = bouncer
    expect(alive(pid)).toBe(true)
    await bouncer.stop()
    expect(alive(pid)).toBe(false)
    expect(runningPgBouncers()).toEqual([])
  })
})

/** What a server connection carries that a client could leave behind for the next one. */
interface SessionState {
  synchronous_commit: string
  lock_timeout: string
  statement_timeout: string
  idle_in_transaction_session_timeout: string
  search_path: string
  /** LISTEN channels of the session. */
  listening: number
  /** Named prepared statements of the session (protocol-level or PREPARE). */
  prepared: number
  /** Session-level advisory locks (not those of the current transaction). */
  session_advisory_locks: number
}

const SESSION_STATE = `
  SELECT current_setting('synchronous_commit') AS synchronous_commit,
         current_setting('lock_timeout') AS lock_timeout,
         current_setting('statement_timeout') AS statement_timeout,
         current_setting('idle_in_transaction_session_timeout') AS idle_in_transaction_session_timeout,
         current_setting('search_path') AS search_path,
         (SELECT count(*)::int FROM pg_listening_channels()) AS listening,
         (SELECT count(*)::int FROM pg_prepared_statements) AS prepared,
         (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS session_advisory_locks`

/** Error lines of orchestrators' JSON logs (a query refused by the pooler would show here). */
function errorLogs(runs: RunProcess[]): string[] {
  return runs.flatMap((r) => r.logs().filter((l) => l.level === 'error').map((l) => l.msg))
}
