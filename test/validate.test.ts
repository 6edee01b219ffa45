/**
 * db:validate (SPEC §3): every problem of the files and of the applied history, listed at once,
 * exit 4; JSON `{ valid, problems: [{ code, file, message }] }`.
 */
import { json, runCli } from './helpers/cli'
import { createTestDatabase, type TestDatabase } from './helpers/db'
import { INITIAL_SCHEMA, type Install, createInstall } from './helpers/install'

interface Validation {
  valid: boolean
  problems: Array<{ code: string; file: string | null; message: string }>
}

describe('db:validate', () => {
  let db: TestDatabase
  let install: Install
  beforeAll(async () => {
    db = await createTestDatabase({ migrated: true })
    install = createInstall({ '001_initial_schema.sql': INITIAL_SCHEMA })
  })
  afterAll(async () => {
    install.remove()
    await db.drop()
  })

  it('passes valid files and history: exit 0, the exact JSON shape', async () => {
    const result = await runCli(['db:validate', '--json'], { env: db.env })
    expect(result.code).toBe(0)
    expect(json(result)).toEqual({ valid: true, problems: [] })

    const human = await runCli(['db:validate'], { env: db.env })
    expect(human.code).toBe(0)
    expect(human.stdout.trim()).toBe('Migrations are valid.')
  })

  it('lists every problem: bad names, duplicates, gaps, changed files, applied migrations without a file', async () => {
    install.setMigrations({
      '001_initial_schema.sql': INITIAL_SCHEMA,
      '002_Add-Things.sql': 'SELECT 1;',
      '002_add_things.sql': 'SELECT 1;',
      '002_add_more_things.sql': 'SELECT 1;',
      '004_after_a_gap.sql': 'SELECT 1;',
      'helper.js': 'module.exports = {}',
      'README.md': 'not a migration, and not read as one',
    })
    // The history: 001 applied from a file that has since changed, and a migration 9 this install has no file for.
    // This install's history is migration 1 alone (its files below stand in for the rest).
    await db.pool.query(`DELETE FROM migrations WHERE id > 1`)
    await db.pool.query(`UPDATE migrations SET hash = 'changed' WHERE id = 1`)
    await db.pool.query(`INSERT INTO migrations (id, name, hash) VALUES (9, 'from_the_future', 'x')`)
    try {
      const result = await runCli(['db:validate', '--json'], { env: db.env, bin: install.bin })
      expect(result.code).toBe(4)
      const body = json<Validation>(result)
      expect(Object.keys(body).sort()).toEqual(['problems', 'valid'])
      expect(body.valid).toBe(false)
      for (const problem of body.problems) expect(Object.keys(problem).sort()).toEqual(['code', 'file', 'message'])
      const found = body.problems.map((p) => [p.code, p.file])
      expect(found).toEqual(expect.arrayContaining([
        ['INVALID_FILE_NAME', '002_Add-Things.sql'],
        ['INVALID_FILE_NAME', 'helper.js'],
        ['DUPLICATE_ID', '002_add_things.sql'],
        ['NON_CONSECUTIVE_ID', '004_after_a_gap.sql'],
        ['CHECKSUM_MISMATCH', '001_initial_schema.sql'],
        ['MISSING_FILE', null],
      ]))
      expect(found).toHaveLength(6)
      expect(body.problems.find((p) => p.code === 'MISSING_FILE')!.message).toContain('from_the_future')
      expect(body.problems.find((p) => p.code === 'DUPLICATE_ID')!.message).toContain('002_add_more_things.sql')

      const human = await runCli(['db:validate'], { env: db.env, bin: install.bin })
      expect(human.code).toBe(4)
      expect(human.stdout).toContain('6 problem(s)')
      for (const p of body.problems) expect(human.stdout).toContain(p.message)

      // db:migrate refuses files that do not validate, naming them.
      const migrate = await runCli(['db:migrate'], { env: db.env, bin: install.bin })
      expect(migrate.code).toBe(4)
      expect(migrate.stderr).toContain('002_Add-Things.sql')
    } finally {
      await db.pool.query(`DELETE FROM migrations WHERE id = 9`)
      await db.pool.query(`DELETE FROM pipeweave_migration_log WHERE migration_id = 9`)
    }
  })

  it('checks the files alone when no database can be reached (with a warning)', async () => {
    install.setMigrations({ '001_initial_schema.sql': INITIAL_SCHEMA, '003_gap.sql': 'SELECT 1;' })
    const result = await runCli(['db:validate', '--json', '--url', 'postgres://nobody@127.0.0.1:1/none'], { bin: install.bin })
    expect(result.code).toBe(4)
    expect(json(result)).toEqual({ valid: false, problems: [{ code: 'NON_CONSECUTIVE_ID', file: '003_gap.sql', message: expect.any(String) }] })
    expect(result.stderr).toMatch(/could not be reached.*checked the files only/)
  })
})
