/**
 * Exit 1 is for bugs only (SPEC §2): failures an operator can foresee get 2–5 with a message that
 * says what to check. A statement timeout is 5 naming DB_STATEMENT_TIMEOUT_MS; input too large or
 * shaped wrong is 2 naming the limit; the database's own state (privileges, a read-only server, a
 * full disk) is 4 with the server's message; what the server refuses at connect time is 3.
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { Pool, escapeIdentifier } from 'pg'
import { enqueueTask } from '../src/api/enqueue'
import { registerService, validateManifest } from '../src/api/services'
import { classify } from '../src/base-command'
import type { Database } from '../src/db/database'
import { UsageError } from '../src/errors'
import { type CliResult, json, runCli } from './helpers/cli'
import { adminUrl, apiDatabase, createTestDatabase, type TestDatabase, TEST_SCHEMA } from './helpers/db'

let db: TestDatabase
let api: Database
let scratch: string

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  api = await apiDatabase(db.url)
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-foreseen-'))
  await registerService(api, { id: 'svc', version: '1', baseUrl: 'http://127.0.0.1:9', tasks: [{ id: 'work' }] })
})
afterAll(async () => {
  await api.close()
  await db.drop()
  fs.rmSync(scratch, { recursive: true, force: true })
})

function jsonError(result: CliResult): { code: string; message: string; hint?: string } {
  return json<{ error: { code: string; message: string; hint?: string } }>(result).error
}

/** Not the "this is a bug" line of exit 1, and one line. */
function expectForeseen(result: CliResult, exitCode: number): void {
  expect({ code: result.code, stdout: result.stdout }).toEqual({ code: exitCode, stdout: '' })
  expect(result.stderr).not.toMatch(/bug|unexpected error/i)
  expect(result.stderr.trim().split('\n')).toHaveLength(1)
}

describe('a statement timeout (SPEC §2: exit 5 naming the setting)', () => {
  it('exits 5 naming DB_STATEMENT_TIMEOUT_MS when a table is locked elsewhere', async () => {
    const holder = await db.pool.connect()
    try {
      await holder.query('BEGIN')
      await holder.query('LOCK TABLE services IN ACCESS EXCLUSIVE MODE')
      const env = { ...db.env, DB_STATEMENT_TIMEOUT_MS: '300' }
      const human = await runCli(['services:list'], { env })
      expectForeseen(human, 5)
      expect(human.stderr).toContain('DB_STATEMENT_TIMEOUT_MS')
      const machine = await runCli(['services:list', '--json'], { env })
      expect(machine.code).toBe(5)
      const error = jsonError(machine)
      expect(error.code).toBe('STATEMENT_TIMEOUT')
      expect(`${error.message} ${error.hint}`).toContain('DB_STATEMENT_TIMEOUT_MS')
      expect(error.hint).toMatch(/lock/)
    } finally {
      await holder.query('ROLLBACK')
      holder.release()
    }
  })
})

describe('input too large or shaped wrong (SPEC §2: exit 2 naming the limit)', () => {
  it('refuses a 20 kB idempotency key with exit 2 naming the limit, and writes nothing', async () => {
    // Random, as real keys are: PostgreSQL compresses a repetitive one below the index's limit.
    const key = crypto.randomBytes(10_000).toString('hex')
    const result = await runCli(['tasks:enqueue', 'work', '--idempotency-key', key], { env: db.env })
    expectForeseen(result, 2)
    expect(result.stderr).toMatch(/idempotency key/i)
    expect(result.stderr).toMatch(/at most \d+ bytes/)
    expect(result.stderr).not.toContain(key)
    const machine = await runCli(['tasks:enqueue', 'work', '--idempotency-key', key, '--json'], { env: db.env })
    expect(machine.code).toBe(2)
    expect(jsonError(machine).code).toBe('IDEMPOTENCY_KEY_TOO_LONG')
    expect((await db.pool.query('SELECT count(*)::int AS n FROM task_runs')).rows[0].n).toBe(0)
  })

  it('refuses it before connecting (SPEC §2: input 2 before connection 3): exit 2 with an unreachable database', async () => {
    const key = crypto.randomBytes(10_000).toString('hex')
    const result = await runCli(['tasks:enqueue', 'work', '--idempotency-key', key, '--json'], { env: { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' } })
    expect(result.code).toBe(2)
    expect(jsonError(result).code).toBe('IDEMPOTENCY_KEY_TOO_LONG')
  })

  it('the API refuses it with a UsageError before any SQL, and takes a key at the limit', async () => {
    // 600 characters, 1,200 bytes in UTF-8: the limit is in bytes, as the index counts them.
    const refused = enqueueTask(api, { taskId: 'work', idempotencyKey: 'é'.repeat(600) })
    await expect(refused).rejects.toThrow(UsageError)
    await expect(refused).rejects.toMatchObject({ code: 'IDEMPOTENCY_KEY_TOO_LONG' })
    const atLimit = 'x'.repeat(1024)
    const first = await enqueueTask(api, { taskId: 'work', idempotencyKey: atLimit })
    expect(await enqueueTask(api, { taskId: 'work', idempotencyKey: atLimit })).toEqual({ runId: first.runId, deduplicated: true })
    await db.pool.query('DELETE FROM task_runs')
  })

  // JSON.parse makes "__proto__" an own key; the others are Object.prototype's names. A lookup
  // in a plain object finds the prototype's member for each of them.
  const prototypeNames = ['__proto__', 'hasOwnProperty', 'valueOf', 'isPrototypeOf', 'toString', 'constructor', 'propertyIsEnumerable', 'toLocaleString']

  it.each(prototypeNames)('refuses the manifest task key %j with exit 2 naming it, and writes nothing', async (key) => {
    const file = path.join(scratch, `manifest-${crypto.randomBytes(4).toString('hex')}.json`)
    fs.writeFileSync(file, `{ "id": "other", "version": "1", "baseUrl": "http://127.0.0.1:9", "tasks": [{ "id": "t1", ${JSON.stringify(key)}: 1 }] }`)
    const result = await runCli(['services:register', file], { env: db.env })
    expectForeseen(result, 2)
    expect(result.stderr).toContain(`tasks[0].${key} is not a task field`)
    expect((await db.pool.query(`SELECT count(*)::int AS n FROM services WHERE id = 'other'`)).rows[0].n).toBe(0)
  })

  it('refuses such a manifest before connecting (SPEC §2: input 2 before connection 3)', async () => {
    const file = path.join(scratch, 'manifest-offline.json')
    fs.writeFileSync(file, '{ "id": "other", "version": "1", "baseUrl": "http://127.0.0.1:9", "tasks": [{ "id": "t1", "valueOf": 1 }] }')
    const result = await runCli(['services:register', file, '--json'], { env: { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' } })
    expect(result.code).toBe(2)
    expect(jsonError(result).message).toContain('tasks[0].valueOf is not a task field')
  })

  it.each(prototypeNames)('validateManifest refuses %j at the top level and in a task', (key) => {
    const top = JSON.parse(`{ "id": "s", "version": "1", "baseUrl": "http://h", "tasks": [], ${JSON.stringify(key)}: 1 }`)
    expect(() => validateManifest(top)).toThrow(UsageError)
    const task = JSON.parse(`{ "id": "s", "version": "1", "baseUrl": "http://h", "tasks": [{ "id": "t", ${JSON.stringify(key)}: 1 }] }`)
    expect(() => validateManifest(task)).toThrow(new RegExp(`tasks\\[0\\]\\.${key} is not a task field`))
  })
})

describe('the database\'s state (SPEC §2: exit 4 with the server\'s message); refusals at connect time (3)', () => {
  const role = `pw_limited_${crypto.randomBytes(4).toString('hex')}`
  const password = `Lm-${crypto.randomBytes(6).toString('hex')}`
  let limitedEnv: Record<string, string>

  beforeAll(async () => {
    const admin = new Pool({ connectionString: adminUrl(), max: 1 })
    try {
      await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`)
    } finally {
      await admin.end()
    }
    const url = new URL(db.url)
    url.username = role
    url.password = password
    limitedEnv = { DATABASE_URL: url.toString() }
  })
  afterAll(async () => {
    await db.pool.query(`GRANT CONNECT ON DATABASE ${escapeIdentifier(db.name)} TO PUBLIC`)
    const admin = new Pool({ connectionString: adminUrl(), max: 1 })
    try {
      await admin.query(`DROP OWNED BY ${role}`).catch(() => undefined)
      await admin.query(`DROP ROLE IF EXISTS ${role}`)
    } finally {
      await admin.end()
    }
  })

  it('a user without privileges on pipeweave\'s tables: exit 4 with the server\'s message and what to check', async () => {
    const human = await runCli(['runs:list'], { env: limitedEnv })
    expectForeseen(human, 4)
    // For the table, or for the schema when pipeweave has one of its own.
    expect(human.stderr).toMatch(/permission denied for (table|schema)/)
    expect(human.stderr).toContain(`GRANT USAGE ON SCHEMA ${TEST_SCHEMA} TO the user`)
    expect(human.stderr).not.toContain(password)
    const machine = await runCli(['runs:list', '--json'], { env: limitedEnv })
    expect(machine.code).toBe(4)
    expect(jsonError(machine).code).toBe('PERMISSION_DENIED')
  })

  it('a read-only server (a standby, default_transaction_read_only): exit 4 naming it', async () => {
    await db.pool.query(`ALTER DATABASE ${escapeIdentifier(db.name)} SET default_transaction_read_only = on`)
    try {
      const human = await runCli(['maintenance:request', '--reason', 'ro'], { env: db.env })
      expectForeseen(human, 4)
      expect(human.stderr).toMatch(/read-only transaction/)
      expect(human.stderr).toMatch(/standby|primary/)
      const machine = await runCli(['maintenance:request', '--json'], { env: db.env })
      expect(machine.code).toBe(4)
      expect(jsonError(machine).code).toBe('READ_ONLY')
    } finally {
      await db.pool.query(`ALTER DATABASE ${escapeIdentifier(db.name)} RESET default_transaction_read_only`)
    }
  })

  it('a user the server refuses at connect time (no CONNECT privilege): exit 3, before any state', async () => {
    await db.pool.query(`REVOKE CONNECT ON DATABASE ${escapeIdentifier(db.name)} FROM PUBLIC`)
    try {
      const human = await runCli(['runs:list'], { env: limitedEnv })
      expectForeseen(human, 3)
      expect(human.stderr).toMatch(/permission denied for database/)
      const machine = await runCli(['runs:list', '--json'], { env: limitedEnv })
      expect(machine.code).toBe(3)
      expect(jsonError(machine).code).toBe('CONNECTION_REFUSED_BY_SERVER')
    } finally {
      await db.pool.query(`GRANT CONNECT ON DATABASE ${escapeIdentifier(db.name)} TO PUBLIC`)
    }
  })

  it.each([
    ['53100', 'could not extend file "base/16384/16385": No space left on device', 'DISK_FULL', /disk|space/i],
    ['25006', 'cannot execute UPDATE in a read-only transaction', 'READ_ONLY', /standby|primary/],
    ['42501', 'permission denied for table tasks', 'PERMISSION_DENIED', /GRANT/],
    ['42P07', 'relation "tasks" already exists', 'OBJECT_IN_THE_WAY', /did not create|another application/],
    ['42703', 'column "code_hash" does not exist', 'OBJECT_IN_THE_WAY', /did not create|another application/],
    ['55006', 'database "x" is being accessed by other users', 'OBJECT_IN_USE', /other session|pg_stat_activity/],
  ])('classify maps a server error %s to exit 4 with its message and a hint', (code, message, expected, hint) => {
    const failure = classify(Object.assign(new Error(message), { code, severity: 'ERROR' }))
    expect(failure).toMatchObject({ exitCode: 4, code: expected })
    expect(failure.message).toContain(message)
    expect(failure.hint).toMatch(hint)
  })

  it('classify keeps exit 1 for what pipeweave did not foresee (a syntax error is a bug)', () => {
    expect(classify(Object.assign(new Error('syntax error at or near "SELCT"'), { code: '42601', severity: 'ERROR' })).exitCode).toBe(1)
    expect(classify(new TypeError('x is not a function')).exitCode).toBe(1)
  })
})
