/**
 * `services:register FILE` and `services:list` (SPEC §5): the manifest upserts a service and its
 * tasks (units as the SPEC says), a changed codeHash bumps code_version and appends
 * task_code_history, and an invalid manifest exits 2 naming the field and writes nothing.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { registerService } from '../src/api/services'
import { createDatabase, type Database } from '../src/db/database'
import { UsageError } from '../src/errors'
import { createTestDatabase, type TestDatabase, TEST_SCHEMA } from './helpers/db'
import { json, runCli } from './helpers/cli'

let db: TestDatabase
let api: Database
let scratch: string
let files = 0

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  api = await createDatabase({ flags: { url: db.url }, env: {}, command: 'test', schema: TEST_SCHEMA })
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-services-'))
})
afterAll(async () => {
  await api.close()
  await db.drop()
  fs.rmSync(scratch, { recursive: true, force: true })
})

function manifestFile(manifest: unknown): string {
  const file = path.join(scratch, `service-${++files}.json`)
  fs.writeFileSync(file, typeof manifest === 'string' ? manifest : JSON.stringify(manifest, null, 2))
  return file
}

const register = (manifest: unknown, ...flags: string[]) => runCli(['services:register', manifestFile(manifest), ...flags], { env: db.env })

function imageService(overrides: Record<string, unknown> = {}, taskOverrides: Record<string, unknown> = {}) {
  return {
    id: 'images',
    version: '1.4.0',
    baseUrl: 'http://images.internal:8080/',
    tasks: [
      {
        id: 'resize', codeHash: 'sha256:aaa', timeout: 120, retries: 5, retryBackoff: 'fixed', retryDelayMs: 2000,
        maxRetryDelayMs: 60000, heartbeatIntervalMs: 10000, concurrency: 4, priority: 10, idempotencyTTL: 3600,
        allowedNext: ['thumbnail'], description: 'Resize an image', ...taskOverrides,
      },
      { id: 'thumbnail', codeHash: 'sha256:bbb' },
    ],
    ...overrides,
  }
}

/** Everything services:register may write, to show that a refused manifest wrote nothing. */
async function snapshot() {
  const tables = await Promise.all(['services', 'tasks', 'task_code_history'].map(async (t) => (await db.pool.query(`SELECT * FROM ${t} ORDER BY 1, 2`)).rows))
  return { services: tables[0], tasks: tables[1], history: tables[2] }
}

describe('services:register', () => {
  it('creates the service and its tasks, with the SPEC units, and records code version 1', async () => {
    const result = await register(imageService(), '--json')
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' })
    expect(json(result)).toEqual({
      service: { id: 'images', version: '1.4.0', baseUrl: 'http://images.internal:8080', created: true },
      tasks: [
        { id: 'resize', codeVersion: 1, status: 'created' },
        { id: 'thumbnail', codeVersion: 1, status: 'created' },
      ],
      schedules: [],
    })
    const { rows: [service] } = await db.pool.query(`SELECT id, version, base_url FROM services`)
    expect(service).toEqual({ id: 'images', version: '1.4.0', base_url: 'http://images.internal:8080' })
    const { rows: tasks } = await db.pool.query(`
      SELECT id, service_id, code_hash, code_version, timeout_seconds, retries, retry_backoff, retry_delay_ms, max_retry_delay_ms,
             heartbeat_interval_ms, concurrency, priority, idempotency_ttl_seconds, allowed_next, description
        FROM tasks ORDER BY id`)
    expect(tasks).toEqual([
      {
        id: 'resize', service_id: 'images', code_hash: 'sha256:aaa', code_version: 1, timeout_seconds: 120, retries: 5,
        retry_backoff: 'fixed', retry_delay_ms: 2000, max_retry_delay_ms: 60000, heartbeat_interval_ms: 10000, concurrency: 4,
        priority: 10, idempotency_ttl_seconds: 3600, allowed_next: ['thumbnail'], description: 'Resize an image',
      },
      {
        // The defaults of SPEC §3 for what the manifest leaves out.
        id: 'thumbnail', service_id: 'images', code_hash: 'sha256:bbb', code_version: 1, timeout_seconds: 300, retries: 3,
        retry_backoff: 'exponential', retry_delay_ms: 1000, max_retry_delay_ms: 300000, heartbeat_interval_ms: null, concurrency: 0,
        priority: 100, idempotency_ttl_seconds: null, allowed_next: [], description: null,
      },
    ])
    const { rows: history } = await db.pool.query(`SELECT task_id, code_version, code_hash FROM task_code_history ORDER BY 1, 2`)
    expect(history).toEqual([
      { task_id: 'resize', code_version: 1, code_hash: 'sha256:aaa' },
      { task_id: 'thumbnail', code_version: 1, code_hash: 'sha256:bbb' },
    ])
  })

  it('registering it again changes nothing but the upsert; a changed codeHash bumps code_version and appends history', async () => {
    const same = await register(imageService(), '--json')
    expect(json(same)).toMatchObject({ service: { created: false }, tasks: [{ id: 'resize', codeVersion: 1, status: 'updated' }, { id: 'thumbnail', codeVersion: 1, status: 'updated' }] })

    const changed = await register(imageService({ version: '1.5.0', baseUrl: 'https://images.internal' }, { codeHash: 'sha256:ccc', timeout: 30 }), '--json')
    expect(changed.code).toBe(0)
    expect(json(changed)).toEqual({
      service: { id: 'images', version: '1.5.0', baseUrl: 'https://images.internal', created: false },
      tasks: [{ id: 'resize', codeVersion: 2, status: 'code changed' }, { id: 'thumbnail', codeVersion: 1, status: 'updated' }],
      schedules: [],
    })
    const { rows: [resize] } = await db.pool.query(`SELECT code_hash, code_version, timeout_seconds FROM tasks WHERE id = 'resize'`)
    expect(resize).toEqual({ code_hash: 'sha256:ccc', code_version: 2, timeout_seconds: 30 })
    const { rows: [service] } = await db.pool.query(`SELECT version, base_url FROM services WHERE id = 'images'`)
    expect(service).toEqual({ version: '1.5.0', base_url: 'https://images.internal' })
    const { rows: history } = await db.pool.query(`SELECT task_id, code_version, code_hash FROM task_code_history ORDER BY 1, 2`)
    expect(history).toEqual([
      { task_id: 'resize', code_version: 1, code_hash: 'sha256:aaa' },
      { task_id: 'resize', code_version: 2, code_hash: 'sha256:ccc' },
      { task_id: 'thumbnail', code_version: 1, code_hash: 'sha256:bbb' },
    ])

    // And back to an earlier hash is a change too: a new version, not a rewind.
    const back = await register(imageService({ version: '1.5.0', baseUrl: 'https://images.internal' }, { codeHash: 'sha256:aaa', timeout: 30 }), '--json')
    expect(json(back)).toMatchObject({ tasks: [{ id: 'resize', codeVersion: 3, status: 'code changed' }, { id: 'thumbnail', codeVersion: 1 }] })
  })

  it('prints what it did for a person', async () => {
    const result = await register(imageService({ version: '1.5.0', baseUrl: 'https://images.internal' }, { codeHash: 'sha256:aaa', timeout: 30 }))
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/^Updated service images 1\.5\.0 at https:\/\/images\.internal\n/)
    expect(result.stdout).toMatch(/resize/)
  })

  describe('an invalid manifest exits 2 naming the field, and writes nothing', () => {
    // [what, manifest, the field the message must name, also through the CLI]. The API is the same
    // validation (registerService), so only some cases pay for a CLI process.
    const cases: Array<[string, unknown, RegExp, boolean]> = [
      ['a bad field type', imageService({}, { retries: '3' }), /tasks\[0\]\.retries/, true],
      ['a bad enum value', imageService({}, { retryBackoff: 'linear' }), /tasks\[0\]\.retryBackoff/, false],
      ['a negative number', imageService({}, { concurrency: -1 }), /tasks\[0\]\.concurrency/, false],
      ['a string version', imageService({ version: 2 }), /\bversion\b/, false],
      ['an unknown manifest field', imageService({ owner: 'team-a' }), /"owner"/, true],
      ['an unknown task field', imageService({}, { timeoutMs: 1000 }), /tasks\[0\]\.timeoutMs/, false],
      ['a missing service id', { version: '1', baseUrl: 'http://x', tasks: [] }, /\bid is required/, true],
      ['a missing task id', { id: 'svc', version: '1', baseUrl: 'http://x', tasks: [{ codeHash: 'h' }] }, /tasks\[0\]\.id/, false],
      ['a null task id', { id: 'svc', version: '1', baseUrl: 'http://x', tasks: [{ id: null }] }, /tasks\[0\]\.id/, true],
      ['a duplicate task id', { id: 'svc', version: '1', baseUrl: 'http://x', tasks: [{ id: 'a' }, { id: 'a' }] }, /tasks\[1\]\.id/, true],
      ['a baseUrl that is not a URL', imageService({ baseUrl: 'images.internal:8080' }), /baseUrl/, true],
      ['a baseUrl that is not http', imageService({ baseUrl: 'ftp://images.internal' }), /baseUrl/, false],
      ['tasks that are not an array', imageService({ tasks: { id: 'a' } }), /\btasks\b/, false],
      ['a baseUrl with a user and password', imageService({ baseUrl: 'http://admin:pw@images.internal:8080' }), /baseUrl must not carry credentials/, true],
      ['a baseUrl with a user only', imageService({ baseUrl: 'https://admin@images.internal' }), /baseUrl must not carry credentials/, false],
      ['a baseUrl with a query', imageService({ baseUrl: 'http://images.internal/api?key=1' }), /baseUrl must not have a query/, true],
      ['a baseUrl with an empty query', imageService({ baseUrl: 'http://images.internal/api?' }), /baseUrl must not have a query/, false],
      ['a baseUrl with a fragment', imageService({ baseUrl: 'http://images.internal/api#v2' }), /baseUrl must not have a fragment/, false],
      ['a task of another service', { id: 'other', version: '1', baseUrl: 'http://x', tasks: [{ id: 'new-one' }, { id: 'resize' }] }, /resize.*images/, true],
    ]

    it.each(cases)('%s', async (_what, manifest, field, cli) => {
      const before = await snapshot()
      const error = await registerService(api, manifest).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(UsageError)
      expect((error as UsageError).message).toMatch(field)
      expect(await snapshot()).toEqual(before)
      if (!cli) return
      const result = await register(manifest, '--json')
      expect(result.code).toBe(2)
      expect(json(result)).toMatchObject({ error: { message: expect.stringMatching(field) }, exitCode: 2 })
      expect(await snapshot()).toEqual(before)
    })

    it('a baseUrl with credentials: the message masks the password, for a person and in --json', async () => {
      const before = await snapshot()
      const manifest = imageService({ baseUrl: 'http://admin:hunter2@images.internal:8080/api' })
      const human = await register(manifest)
      expect(human.code).toBe(2)
      expect(human.stderr).toMatch(/^error: invalid service manifest: baseUrl must not carry credentials \(http:\/\/admin:\*\*\*\*@images\.internal:8080\/api\)/)
      const machine = await register(manifest, '--json')
      expect(machine.code).toBe(2)
      for (const result of [human, machine]) expect(result.stdout + result.stderr).not.toContain('hunter2')
      expect(await snapshot()).toEqual(before)
    })

    it('reports every problem of the manifest at once, and writes nothing', async () => {
      const before = await snapshot()
      const manifest = imageService({ version: 2, baseUrl: 'http://u:p@images.internal', owner: 'team-a' }, { retries: '3', retryBackoff: 'linear' })
      ;(manifest.tasks as Array<Record<string, unknown>>).push({ id: 'resize' }, { codeHash: 'x' })
      const problems = [/"owner" is not a manifest field/, /\bversion must be a string/, /baseUrl must not carry credentials/,
        /tasks\[0\]\.retries must be/, /tasks\[0\]\.retryBackoff must be/, /tasks\[2\]\.id repeats/, /tasks\[3\]\.id is required/]
      const error = await registerService(api, manifest).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(UsageError)
      for (const problem of problems) expect((error as UsageError).message).toMatch(problem)

      const human = await register(manifest)
      expect(human.code).toBe(2)
      expect(human.stdout).toBe('')
      expect(human.stderr.trim().split('\n')).toHaveLength(1)
      for (const problem of problems) expect(human.stderr).toMatch(problem)
      const machine = await register(manifest, '--json')
      expect(machine.code).toBe(2)
      for (const problem of problems) expect(json<{ error: { message: string } }>(machine).error.message).toMatch(problem)
      expect(await snapshot()).toEqual(before)
    })

    it('names every task owned by another service', async () => {
      const before = await snapshot()
      const error = await registerService(api, { id: 'other', version: '1', baseUrl: 'http://x', tasks: [{ id: 'resize' }, { id: 'thumbnail' }] }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(UsageError)
      expect((error as UsageError).message).toMatch(/"resize".*"images"/)
      expect((error as UsageError).message).toMatch(/"thumbnail".*"images"/)
      expect(await snapshot()).toEqual(before)
    })

    it('malformed JSON', async () => {
      const result = await register('{"id": "svc", ', '--json')
      expect(result.code).toBe(2)
      expect(json(result)).toMatchObject({ error: { code: 'INVALID_JSON', message: expect.stringMatching(/not valid JSON/) }, exitCode: 2 })
    })

    it('for a person: one line on stderr naming the field, nothing on stdout', async () => {
      const before = await snapshot()
      const result = await register(imageService({}, { priority: 1.5 }))
      expect(result.code).toBe(2)
      expect(result.stdout).toBe('')
      expect(result.stderr).toMatch(/^error: invalid service manifest: tasks\[0\]\.priority must be a whole number.*nothing was written\n$/)
      expect(await snapshot()).toEqual(before)
    })

    it('a file that does not exist', async () => {
      const result = await runCli(['services:register', path.join(scratch, 'missing.json')], { env: db.env })
      expect(result.code).toBe(2)
      expect(result.stderr).toMatch(/cannot read .*missing\.json/)
    })
  })
})

describe('services:list', () => {
  it('--json prints { services: [...] } with each service\'s tasks in manifest terms', async () => {
    await register({ id: 'empty', version: '0.1.0', baseUrl: 'http://empty.internal', tasks: [] })
    const result = await runCli(['services:list', '--json'], { env: db.env })
    expect(result.code).toBe(0)
    const body = json<{ services: Array<Record<string, unknown> & { tasks: Array<Record<string, unknown>> }> }>(result)
    expect(Object.keys(body)).toEqual(['services'])
    expect(body.services.map((s) => s.id)).toEqual(['empty', 'images'])
    expect(body.services[0]).toEqual({
      id: 'empty', version: '0.1.0', baseUrl: 'http://empty.internal', registeredAt: expect.any(String), updatedAt: expect.any(String),
      // Flow control (SPEC §7): not paused, the breaker closed.
      paused: null, breaker: { state: 'closed', failures: 0, openUntil: null, openedAt: null, expiresAt: null, cooldownMs: null }, tasks: [],
    })
    expect(body.services[1].tasks.map((t) => t.id)).toEqual(['resize', 'thumbnail'])
    expect(body.services[1].tasks[0]).toEqual({
      id: 'resize', codeHash: 'sha256:aaa', codeVersion: 3, timeout: 30, retries: 5, retryBackoff: 'fixed', retryDelayMs: 2000,
      maxRetryDelayMs: 60000, heartbeatIntervalMs: 10000, concurrency: 4, priority: 10, idempotencyTTL: 3600,
      allowedNext: ['thumbnail'], description: 'Resize an image',
      rateLimit: null, paused: null, effectiveRateLimit: null, rateLimitSource: 'manifest',
    })

    const human = await runCli(['services:list'], { env: db.env })
    expect(human.code).toBe(0)
    expect(human.stdout).toMatch(/images/)
    expect(human.stdout).toMatch(/resize/)
  })
})
