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
import { createDatabase, type Database } from '../src/db/database'
import { UsageError } from '../src/errors'
import { type CliResult, json, runCli } from './helpers/cli'
import { adminUrl, createTestDatabase, type TestDatabase } from './helpers/db'

let db: TestDatabase
let api: Database
let scratch: string

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  api = await createDatabase({ flags: { url: db.url }, env: {}, command: 'test' })
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

  it.each(prototypeNames)('validateManifest refuses %j at the top level and in a task', (key) => {
    const top = JSON.parse(`{ "id": "s", "version": "1", "baseUrl": "http://h", "tasks": [], ${JSON.stringify(key)}: 1 }`)
    expect(() => validateManifest(top)).toThrow(UsageError)
    const task = JSON.parse(`{ "id": "s", "version": "1", "baseUrl": "http://h", "tasks": [{ "id": "t", ${JSON.stringify(key)}: 1 }] }`)
    expect(() => validateManifest(task)).toThrow(new RegExp(`tasks\\[0\\]\\.${key} is not a task field`))
  })
})

