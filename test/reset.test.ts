/**
 * db:reset (SPEC §3): every guard refuses with exit 4 and leaves the database untouched (the
 * production-looking guard before even connecting); with --yes it drops and re-migrates.
 */
import { objectsCreatedBy } from '../src/api/reset'
import { spawn } from 'node:child_process'
import { BIN, cleanEnv, json, runCli } from './helpers/cli'
import { createTestDatabase, type TestDatabase } from './helpers/db'
import { type FakeServer, blackHoleServer } from './helpers/fake-server'
import { INITIAL_SCHEMA, createInstall } from './helpers/install'
import { track } from './helpers/processes'
import { waitFor } from './helpers/wait'
import { LATEST_VERSION, MIGRATIONS, SHIPPED } from './helpers/migrations'

/**
 * db:reset on a terminal: run under util-linux `script`, which gives it a pseudo-terminal, and
 * type `keys` once the prompt shows.
 */
async function resetOnTerminal(env: Record<string, string>, keys: string): Promise<{ code: number | null; output: string }> {
  const child = track(spawn('script', ['-qec', `"${process.execPath}" "${BIN}" db:reset`, '/dev/null'], {
    env: cleanEnv({ ...env, TERM: 'dumb' }), stdio: ['pipe', 'pipe', 'pipe'],
  }), 'pipeweave db:reset (under script)')
  let output = ''
  child.stdout.on('data', (chunk) => { output += chunk })
  child.stderr.on('data', (chunk) => { output += chunk })
  const done = new Promise<number | null>((resolve) => child.on('close', resolve))
  try {
    await waitFor(() => output.includes('Type the database name to confirm:'), { what: 'the confirmation prompt' })
    child.stdin.write(keys)
    const code = await done
    return { code, output }
  } finally {
    child.kill('SIGKILL')
  }
}

describe('db:reset', () => {
  let db: TestDatabase
  beforeAll(async () => { db = await createTestDatabase({ migrated: true }) })
  afterAll(async () => { await db.drop() })

  beforeEach(async () => {
    await db.pool.query(`INSERT INTO services (id, version, base_url) VALUES ('keep-me', '1', 'http://127.0.0.1:1') ON CONFLICT DO NOTHING`)
  })
  const survivors = async () => (await db.pool.query(`SELECT id FROM services`)).rows.map((r) => r.id)

  function expectRefused(result: { code: number | null; stdout: string; stderr: string }, says: RegExp): void {
    expect(result.code).toBe(4)
    expect(result.stdout).toBe('')
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(result.stderr).toMatch(says)
  }

  it('is refused under NODE_ENV=production, even with --yes --force', async () => {
    const result = await runCli(['db:reset', '--yes', '--force'], { env: { ...db.env, NODE_ENV: 'production' } })
    expectRefused(result, /never allowed with NODE_ENV=production/)
    const machine = await runCli(['db:reset', '--yes', '--json'], { env: { ...db.env, NODE_ENV: 'production' } })
    expect(machine.code).toBe(4)
    expect(json<{ error: { code: string } }>(machine).error.code).toBe('RESET_REFUSED_PRODUCTION')
    expect(await survivors()).toEqual(['keep-me'])
  })

  it.each(['Production', 'PRODUCTION', ' production '])('is refused under NODE_ENV=%p too: the value is normalised before comparing', async (value) => {
    const result = await runCli(['db:reset', '--yes', '--force'], { env: { ...db.env, NODE_ENV: value } })
    expectRefused(result, /never allowed with NODE_ENV=production/)
    expect(await survivors()).toEqual(['keep-me'])
  })

  it('is refused without --yes when there is no terminal', async () => {
    const result = await runCli(['db:reset'], { env: db.env, input: `${db.name}\n` })
    expectRefused(result, /needs confirmation.*--yes/)
    expect(await survivors()).toEqual(['keep-me'])
  })

  describe('for a target that looks like production', () => {
    let fake: FakeServer
    beforeAll(async () => { fake = await blackHoleServer() })
    afterAll(async () => { await fake.close() })

    it.each([
      ['a database name containing "prod"', (port: number) => `postgres://app:pw@127.0.0.1:${port}/orders_prod`, /database "orders_prod" contains "prod"/],
      ['a host containing "prod"', () => 'postgres://app:pw@db-prod.internal:5432/orders', /host "db-prod.internal" contains "prod"/],
      ['a host ending in .com', () => 'postgres://app:pw@db.example.com:5432/orders', /ends in \.com/],
      ['a host ending in .com with a trailing dot', () => 'postgres://app:pw@db.example.com.:5432/orders', /ends in \.com/],
      ['a host ending in .COM', () => 'postgres://app:pw@DB.EXAMPLE.COM:5432/orders', /ends in \.com/],
      ['a host containing "prod" with a trailing dot, in capitals', () => 'postgres://app:pw@DB-PROD.INTERNAL.:5432/orders', /contains "prod"/],
      ['an RDS endpoint with a trailing dot', () => 'postgres://app:pw@x.abc.eu-west-1.rds.amazonaws.com.:5432/orders', /rds\.amazonaws|ends in \.com/],
      ['an RDS endpoint', () => 'postgres://app:pw@x.abc.eu-west-1.rds.amazonaws.com:5432/orders', /rds\.amazonaws/],
    ] as Array<[string, (port: number) => string, RegExp]>)('refuses %s without --force, before connecting', async (_what, url, says) => {
      const before = fake.connections()
      const result = await runCli(['db:reset', '--yes', '--url', url(fake.port)])
      expectRefused(result, says)
      expect(result.stderr).toContain('--force')
      expect(result.stderr).not.toContain(':pw@')
      expect(fake.connections()).toBe(before)
    })

    it('goes on to connect with --force', async () => {
      const before = fake.connections()
      const result = await runCli(['db:reset', '--yes', '--force', '--url', `postgres://app:pw@127.0.0.1:${fake.port}/orders_prod`], {
        env: { DB_CONNECT_TIMEOUT_MS: '500' },
      })
      expect(result.code).toBe(3) // the black hole never answers: the guard let it through
      expect(fake.connections()).toBeGreaterThan(before)
    })
  })

  it('with --yes drops every pipeweave object and applies the migrations again', async () => {
    await db.pool.query(`UPDATE orchestrator_state SET mode = 'maintenance'`)
    const result = await runCli(['db:reset', '--yes', '--json'], { env: db.env })
    expect(result.code).toBe(0)
    expect(json(result)).toEqual({ database: db.name, reset: true, applied: MIGRATIONS.map((m) => ({ id: m.id, name: m.name, durationMs: expect.any(Number) })) })
    expect(await survivors()).toEqual([])
    expect((await db.pool.query(`SELECT id, mode FROM orchestrator_state`)).rows).toEqual([{ id: 'singleton', mode: 'running' }])
    expect((await db.pool.query(`SELECT id FROM migrations ORDER BY id`)).rows).toEqual([{ id: 0 }, ...MIGRATIONS.map((m) => ({ id: m.id }))])

    const status = json<{ initialized: boolean; pending: unknown[] }>(await runCli(['db:status', '--json'], { env: db.env }))
    expect(status).toMatchObject({ initialized: true, pending: [] })
  })

  it('also drops what later migrations created, so they apply again', async () => {
    const later = createInstall({
      ...SHIPPED,
      [`${String(LATEST_VERSION + 1).padStart(3, '0')}_later.sql`]: `-- a later migration: a type, a table, a view, a sequence and a function of its own
CREATE TYPE widget_kind AS ENUM ('small', 'large');
CREATE TABLE IF NOT EXISTS widgets (id int PRIMARY KEY, kind widget_kind NOT NULL);
CREATE SEQUENCE widget_numbers;
CREATE OR REPLACE VIEW large_widgets AS SELECT id FROM widgets WHERE kind = 'large';
CREATE FUNCTION count_widgets() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM widgets';
INSERT INTO widgets VALUES (1, 'large');
`,
    })
    try {
      expect((await runCli(['db:migrate'], { env: db.env, bin: later.bin })).code).toBe(0)
      await db.pool.query(`INSERT INTO widgets VALUES (2, 'small')`)
      const result = await runCli(['db:reset', '--yes'], { env: db.env, bin: later.bin })
      expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: expect.any(String) })
      expect(result.stdout).toContain(`applied ${MIGRATIONS.length + 1} migration(s)`)
      expect((await db.pool.query(`SELECT id FROM widgets`)).rows).toEqual([{ id: 1 }])
      expect((await db.pool.query(`SELECT id FROM migrations ORDER BY id`)).rows).toEqual([{ id: 0 }, ...MIGRATIONS.map((m) => ({ id: m.id })), { id: LATEST_VERSION + 1 }])
    } finally {
      later.remove()
      // Back to this checkout's migrations for the other tests of this file.
      await db.pool.query('DROP VIEW IF EXISTS large_widgets; DROP TABLE IF EXISTS widgets; DROP SEQUENCE IF EXISTS widget_numbers; DROP FUNCTION IF EXISTS count_widgets(); DROP TYPE IF EXISTS widget_kind')
      expect((await runCli(['db:reset', '--yes'], { env: db.env })).code).toBe(0)
    }
  })

  it('reads the objects a migration creates from its SQL (comments ignored)', () => {
    const created = objectsCreatedBy([{ sql: INITIAL_SCHEMA }, {
      sql: `-- CREATE TABLE not_this_one (id int);
/* CREATE TYPE nor_this */
CREATE UNLOGGED TABLE IF NOT EXISTS public."Odd Name" (id int);
CREATE MATERIALIZED VIEW stats AS SELECT 1;
CREATE OR REPLACE PROCEDURE tidy() LANGUAGE sql AS 'SELECT 1';
CREATE DOMAIN positive AS int CHECK (VALUE > 0);`,
    }])
    const names = created.relations.map((r) => `${r.kind} ${r.name}`)
    for (const table of ['orchestrator_state', 'maintenance_events', 'orchestrators', 'services', 'tasks', 'task_code_history',
      'pipelines', 'pipeline_runs', 'task_runs', 'task_run_history', 'dlq', 'idempotency_cache', 'leases', 'pipeweave_migration_log']) {
      expect(names).toContain(`TABLE ${table}`)
    }
    expect(names).toEqual(expect.arrayContaining(['TABLE public."Odd Name"', 'MATERIALIZED VIEW stats', 'DOMAIN positive']))
    expect(names.join(' ')).not.toMatch(/not_this_one|nor_this/)
    expect(created.functions).toEqual(['pipeweave_log_migration', 'pipeweave_new_id', 'pipeweave_mode_changed', 'tidy'])
  })

  describe('on a terminal', () => {
    it('refuses (exit 4) when the name typed differs, or on Ctrl+D, leaving the data', async () => {
      const wrong = await resetOnTerminal(db.env, 'not_the_name\r')
      expect(wrong.code).toBe(4)
      expect(wrong.output).toMatch(/the name typed does not match; nothing was changed/)
      expect(await survivors()).toEqual(['keep-me'])

      const eof = await resetOnTerminal(db.env, '\x04')
      expect(eof.code).toBe(4)
      expect(eof.output).not.toMatch(/unexpected error/)
      expect(await survivors()).toEqual(['keep-me'])
    })

    it('resets once the database name is typed', async () => {
      const typed = await resetOnTerminal(db.env, `${db.name}\r`)
      expect(typed.code).toBe(0)
      expect(typed.output).toContain(`Reset ${db.name}`)
      expect(await survivors()).toEqual([])
    })
  })
})
