/**
 * db:migrate (SPEC §3): concurrent migrators, a failing migration, a changed one, --dry-run and
 * --lock-timeout. Altered migration files live in throw-away installs (helpers/install.ts).
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { MIGRATION_LOCK_KEY } from '../src/sql/migrations'
import { json, runCli, startCli } from './helpers/cli'
import { createTestDatabase, type TestDatabase } from './helpers/db'
import { INITIAL_SCHEMA, type Install, createInstall } from './helpers/install'
import { waitFor } from './helpers/wait'

const SECOND = 'CREATE TABLE widgets (id int PRIMARY KEY);\nINSERT INTO widgets VALUES (1), (2);\n'
const THIRD = 'ALTER TABLE widgets ADD COLUMN label text;\n'

interface MigrateResult {
  dryRun: boolean
  applied: Array<{ id: number; name: string; durationMs: number | null }>
  pending: Array<{ id: number; name: string }>
}

async function tables(db: TestDatabase): Promise<string[]> {
  const { rows } = await db.pool.query<{ t: string }>(`SELECT tablename AS t FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1`)
  return rows.map((r) => r.t)
}

async function appliedIds(db: TestDatabase): Promise<number[]> {
  const { rows } = await db.pool.query<{ id: number }>('SELECT id FROM migrations WHERE id > 0 ORDER BY id')
  return rows.map((r) => r.id)
}

describe('db:migrate', () => {
  let install: Install
  beforeAll(() => {
    install = createInstall({ '001_initial_schema.sql': INITIAL_SCHEMA, '002_widgets.sql': SECOND, '003_widget_label.sql': THIRD })
  })
  afterAll(() => install.remove())

  describe('on an empty database', () => {
    let db: TestDatabase
    beforeEach(async () => { db = await createTestDatabase() })
    afterEach(async () => { await db.drop() })

    it('five processes started at once all exit 0 and apply every migration exactly once', async () => {
      const runs = Array.from({ length: 5 }, () => startCli(['db:migrate', '--json'], { env: db.env, bin: install.bin }))
      const results = await Promise.all(runs.map((r) => r.done))
      for (const result of results) expect({ code: result.code, stderr: result.stderr }).toMatchObject({ code: 0 })

      const { rows } = await db.pool.query<{ id: number; n: number }>('SELECT id, count(*)::int AS n FROM migrations GROUP BY id ORDER BY id')
      expect(rows).toEqual([{ id: 0, n: 1 }, { id: 1, n: 1 }, { id: 2, n: 1 }, { id: 3, n: 1 }])
      expect((await db.pool.query('SELECT count(*)::int AS n FROM widgets')).rows[0].n).toBe(2)
      // Between them, the five reported each migration applied once.
      const reported = results.flatMap((r) => json<MigrateResult>(r).applied.map((m) => m.id)).sort()
      expect(reported).toEqual([1, 2, 3])
    })

    it('--dry-run lists what would run and changes nothing', async () => {
      const result = await runCli(['db:migrate', '--dry-run', '--json'], { env: db.env, bin: install.bin })
      expect(result.code).toBe(0)
      expect(json(result)).toEqual({
        dryRun: true,
        applied: [],
        pending: [{ id: 1, name: 'initial_schema' }, { id: 2, name: 'widgets' }, { id: 3, name: 'widget_label' }],
      })
      expect(await tables(db)).toEqual([])

      const human = await runCli(['db:migrate', '--dry-run'], { env: db.env, bin: install.bin })
      expect(human.code).toBe(0)
      expect(human.stdout).toContain('Would apply 3 migration(s)')
      expect(human.stdout).toContain('widget_label')
      expect(await tables(db)).toEqual([])
    })

    it('a migration that fails half-way leaves nothing of itself, names the file, and keeps the ones before it', async () => {
      const failing = createInstall({
        '001_initial_schema.sql': INITIAL_SCHEMA,
        '002_widgets.sql': SECOND,
        '003_half_way.sql': 'CREATE TABLE gadgets (id int);\nINSERT INTO gadgets VALUES (1);\nALTER TABLE widgets ADD COLUMN label text;\nSELECT no_such_function();\n',
      })
      try {
        const human = await runCli(['db:migrate'], { env: db.env, bin: failing.bin })
        expect(human.code).toBe(4)
        const errorLines = human.stderr.split('\n').filter((line) => line.startsWith('error:'))
        expect(errorLines).toHaveLength(1)
        expect(errorLines[0]).toContain('003_half_way.sql')
        expect(errorLines[0]).toContain('no_such_function')
        expect(errorLines[0]).toMatch(/line 4, column \d+/)
        expect(human.stderr).not.toMatch(/\n\s+at /)

        expect(await appliedIds(db)).toEqual([1, 2])
        const names = await tables(db)
        expect(names).toContain('widgets')
        expect(names).not.toContain('gadgets')
        const { rows } = await db.pool.query(`SELECT 1 FROM information_schema.columns WHERE table_name = 'widgets' AND column_name = 'label'`)
        expect(rows).toEqual([])

        const machine = await runCli(['db:migrate', '--json'], { env: db.env, bin: failing.bin })
        expect(machine.code).toBe(4)
        const body = json<{ error: { code: string; message: string }; exitCode: number }>(machine)
        expect(body.exitCode).toBe(4)
        expect(body.error.code).toBe('MIGRATION_FAILED')
        expect(body.error.message).toContain('003_half_way.sql')
        expect(await appliedIds(db)).toEqual([1, 2])
      } finally {
        failing.remove()
      }
    })
  })

  describe('on a migrated database', () => {
    let db: TestDatabase
    beforeAll(async () => {
      db = await createTestDatabase()
      expect((await runCli(['db:migrate'], { env: db.env, bin: install.bin })).code).toBe(0)
    })
    afterAll(async () => { await db.drop() })

    it('says there is nothing to apply, whatever migrations/ the current directory holds', async () => {
      // The CLI reads the migrations beside itself, never ./migrations (SPEC §3).
      const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-cwd-'))
      try {
        fs.mkdirSync(path.join(cwd, 'migrations'))
        fs.writeFileSync(path.join(cwd, 'migrations', '004_not_ours.sql'), 'CREATE TABLE not_ours (id int);')
        const result = await runCli(['db:migrate', '--json'], { env: db.env, bin: install.bin, cwd })
        expect(result.code).toBe(0)
        expect(json(result)).toEqual({ dryRun: false, applied: [], pending: [] })
        expect(json(await runCli(['db:validate', '--json'], { env: db.env, bin: install.bin, cwd }))).toEqual({ valid: true, problems: [] })
      } finally {
        fs.rmSync(cwd, { recursive: true, force: true })
      }
    })

    it('--require-maintenance refuses (exit 4) unless the mode is maintenance', async () => {
      const refused = await runCli(['db:migrate', '--require-maintenance', '--json'], { env: db.env, bin: install.bin })
      expect(refused.code).toBe(4)
      expect(json(refused)).toMatchObject({ error: { code: 'NOT_IN_MAINTENANCE' }, exitCode: 4 })
      await db.pool.query(`UPDATE orchestrator_state SET mode = 'maintenance' WHERE id = 'singleton'`)
      try {
        expect((await runCli(['db:migrate', '--require-maintenance'], { env: db.env, bin: install.bin })).code).toBe(0)
      } finally {
        await db.pool.query(`UPDATE orchestrator_state SET mode = 'running' WHERE id = 'singleton'`)
      }
    })

    it('refuses (exit 4, naming the file) when an applied migration was changed, and db:validate too', async () => {
      const changed = createInstall({ '001_initial_schema.sql': INITIAL_SCHEMA, '002_widgets.sql': `${SECOND}-- an afterthought\n`, '003_widget_label.sql': THIRD, '004_more.sql': 'CREATE TABLE more_things (id int);\n' })
      try {
        const migrate = await runCli(['db:migrate'], { env: db.env, bin: changed.bin })
        expect(migrate.code).toBe(4)
        expect(migrate.stderr).toContain('002_widgets.sql')
        expect(migrate.stderr).toMatch(/changed after it was applied/)
        // Refuses everything: the new 004 was not applied either.
        expect(await appliedIds(db)).toEqual([1, 2, 3])
        expect(await tables(db)).not.toContain('more_things')

        const machine = await runCli(['db:migrate', '--json'], { env: db.env, bin: changed.bin })
        expect(machine.code).toBe(4)
        expect(json<{ error: { code: string } }>(machine).error.code).toBe('CHECKSUM_MISMATCH')

        const validate = await runCli(['db:validate', '--json'], { env: db.env, bin: changed.bin })
        expect(validate.code).toBe(4)
        expect(json(validate)).toEqual({
          valid: false,
          problems: [{ code: 'CHECKSUM_MISMATCH', file: '002_widgets.sql', message: expect.stringContaining('002_widgets.sql') }],
        })
      } finally {
        changed.remove()
      }
    })

    it('--lock-timeout: exit 5 while another session holds the migration lock, and waits its turn otherwise', async () => {
      const holder = await db.pool.connect()
      try {
        await holder.query(`SELECT pg_advisory_lock(${MIGRATION_LOCK_KEY})`)
        const timedOut = await runCli(['db:migrate', '--lock-timeout', '1', '--json'], { env: db.env, bin: install.bin })
        expect(timedOut.code).toBe(5)
        expect(json(timedOut)).toEqual({ error: { code: 'MIGRATION_LOCK_TIMEOUT', message: expect.any(String), hint: expect.any(String) }, exitCode: 5 })
        expect(timedOut.ms).toBeGreaterThanOrEqual(1000)

        const human = await runCli(['db:migrate', '--lock-timeout', '0'], { env: db.env, bin: install.bin })
        expect(human.code).toBe(5)
        expect(human.stderr).toMatch(/^error: another migrator held the migration lock/m)

        // With time to spare it waits, then runs once the lock is released.
        const waiting = startCli(['db:migrate', '--lock-timeout', '60'], { env: db.env, bin: install.bin })
        await waitFor(() => waiting.stderr().includes('waiting for another migrator'), { what: 'db:migrate to wait for the lock' })
        await holder.query(`SELECT pg_advisory_unlock(${MIGRATION_LOCK_KEY})`)
        const done = await waiting.done
        expect(done.code).toBe(0)
        expect(done.stdout).toContain('Nothing to apply')
      } finally {
        holder.release()
      }
    })

    // Last in this block: it leaves a migration 4 that the other installs do not know.
    it('warns when orchestrators are alive outside maintenance; a database ahead of this pipeweave is refused', async () => {
      const newer = createInstall({ '001_initial_schema.sql': INITIAL_SCHEMA, '002_widgets.sql': SECOND, '003_widget_label.sql': THIRD, '004_more.sql': 'CREATE TABLE more_things (id int);\n' })
      try {
        await db.pool.query(`INSERT INTO orchestrators (id, host, pid, version) VALUES ('o-1', 'h', 1, '0.1.0')`)
        const warned = await runCli(['db:migrate'], { env: db.env, bin: newer.bin })
        expect(warned.code).toBe(0)
        expect(warned.stderr).toMatch(/warning: 1 orchestrator\(s\) are running and the mode is running/)
        expect(await appliedIds(db)).toEqual([1, 2, 3, 4])

        const older = await runCli(['db:migrate', '--json'], { env: db.env, bin: install.bin })
        expect(older.code).toBe(4)
        expect(json(older)).toMatchObject({ error: { code: 'SCHEMA_AHEAD', message: expect.stringContaining('4 more') }, exitCode: 4 })
      } finally {
        newer.remove()
        await db.pool.query(`DELETE FROM orchestrators`)
      }
    })
  })
})
