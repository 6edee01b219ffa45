/**
 * `tasks:enqueue` and `enqueueTask` (SPEC §5, §6): bad input exits 2 and writes nothing; the input,
 * priority, delay and idempotency key land in the row; a key is deduplicated, also under
 * concurrent enqueues; and nothing is accepted unless the mode is `running` (exit 4, a typed error).
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { enqueueTask } from '../src/api/enqueue'
import { createDatabase, type Database } from '../src/db/database'
import { MaintenanceModeError, UsageError } from '../src/errors'
import { createTestDatabase, type TestDatabase, ALL_RUNS, TEST_SCHEMA } from './helpers/db'
import { json, runCli } from './helpers/cli'
import { addTask, countRuns, heartbeat, claim, resetTo, complete } from './helpers/maintenance-fixtures'

let db: TestDatabase
let api: Database
let scratch: string

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  await addTask(db.pool, 'work')
  await db.pool.query(`UPDATE tasks SET priority = 50, idempotency_ttl_seconds = 3600 WHERE id = 'work'`)
  await addTask(db.pool, 'uncached')
  api = await createDatabase({ flags: { url: db.url }, env: {}, command: 'test', pool: { max: 20 }, schema: TEST_SCHEMA })
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-enqueue-'))
})
afterAll(async () => {
  await api.close()
  await db.drop()
  fs.rmSync(scratch, { recursive: true, force: true })
})
beforeEach(async () => { await resetTo(db.pool, 'running') })

const pipeweave = (args: string[], input?: string) => runCli(args, { env: db.env, input })

async function row(id: string) {
  const { rows: [r] } = await db.pool.query(
    `SELECT task_id, status, attempt, priority, input, idempotency_key, scheduled_for, created_at FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [id])
  return r
}

describe('bad input: exit 2, nothing written', () => {
  // The flag-value cases (oclif's own parser) are only held to the exit code: base-command's
  // classify() reports them as code "EXIT" with the message cut to "Parsing --delay-ms " (reported).
  it.each([
    ['an unknown task', ['tasks:enqueue', 'no-such-task', '--input', '{}'], 'UNKNOWN_TASK', /unknown task "no-such-task"/],
    ['an unknown task whose name says ssl (not a TLS failure)', ['tasks:enqueue', 'ssl-renew'], 'UNKNOWN_TASK', /unknown task "ssl-renew"/],
    ['a priority out of range', ['tasks:enqueue', 'work', '--priority', '99999999999'], 'BAD_USAGE', /--priority/],
    ['a delay out of range', ['tasks:enqueue', 'work', '--delay-ms', '99999999999999999'], 'BAD_USAGE', /--delay-ms/],
    ['malformed JSON', ['tasks:enqueue', 'work', '--input', '{"a":'], 'INVALID_JSON', /not valid JSON/],
    ['a missing input file', ['tasks:enqueue', 'work', '--input-file', '/nonexistent/input.json'], 'INPUT_FILE_UNREADABLE', /cannot read/],
    ['both --input and --input-file', ['tasks:enqueue', 'work', '--input', '{}', '--input-file', 'x.json'], 'BAD_USAGE', /./],
    ['a negative --delay-ms', ['tasks:enqueue', 'work', '--delay-ms', '-5'], expect.any(String), /--delay-ms/],
    ['a fractional --priority', ['tasks:enqueue', 'work', '--priority', '1.5'], expect.any(String), /--priority/],
  ])('%s', async (_what, args, code, message) => {
    const machine = await pipeweave([...args, '--json'])
    expect(machine.code).toBe(2)
    expect(json(machine)).toMatchObject({ error: { code, message: expect.stringMatching(message) }, exitCode: 2 })
    expect(await countRuns(db.pool)).toBe(0)
  })

  it('for a person: one line on stderr, nothing on stdout', async () => {
    const human = await pipeweave(['tasks:enqueue', 'no-such-task', '--input', '{}'])
    expect(human.code).toBe(2)
    expect(human.stdout).toBe('')
    expect(human.stderr).toMatch(/^error: unknown task "no-such-task".*services:register.*\n$/)
    expect(await countRuns(db.pool)).toBe(0)
  })

  it('malformed JSON in the input file', async () => {
    const file = path.join(scratch, 'bad.json')
    fs.writeFileSync(file, '{"trailing": 1,}')
    const result = await pipeweave(['tasks:enqueue', 'work', '--input-file', file])
    expect(result.code).toBe(2)
    expect(result.stderr).toMatch(/not valid JSON/)
    expect(await countRuns(db.pool)).toBe(0)
  })
})

describe('what lands in the row', () => {
  it('prints the run id; the input inline; the task\'s priority by default', async () => {
    const result = await pipeweave(['tasks:enqueue', 'work', '--input', '{"url":"https://example.com/a.png","n":[1,2]}'])
    expect(result.code).toBe(0)
    const runId = result.stdout.trim()
    expect(result.stdout).toBe(`${runId}\n`)
    expect(await row(runId)).toMatchObject({
      task_id: 'work', status: 'pending', attempt: 1, priority: 50, input: { url: 'https://example.com/a.png', n: [1, 2] },
      idempotency_key: null, scheduled_for: null,
    })
  })

  it('--json prints { runId, deduplicated }', async () => {
    const result = await pipeweave(['tasks:enqueue', 'work', '--json'])
    expect(result.code).toBe(0)
    const body = json<{ runId: string; deduplicated: boolean }>(result)
    expect(body).toEqual({ runId: expect.any(String), deduplicated: false })
    expect(await row(body.runId)).toMatchObject({ task_id: 'work', input: null })
  })

  it('--input-file FILE and --input-file - (standard input)', async () => {
    const file = path.join(scratch, 'input.json')
    fs.writeFileSync(file, JSON.stringify({ from: 'file' }))
    const [fromFile, fromStdin] = (await Promise.all([
      pipeweave(['tasks:enqueue', 'work', '--input-file', file, '--json']),
      pipeweave(['tasks:enqueue', 'work', '--input-file', '-', '--json'], '{"from":"stdin"}'),
    ])).map((r) => json<{ runId: string }>(r))
    expect((await row(fromFile.runId)).input).toEqual({ from: 'file' })
    expect((await row(fromStdin.runId)).input).toEqual({ from: 'stdin' })
  })

  it('--priority overrides the task\'s, and claims follow it', async () => {
    const [low, high] = (await Promise.all([
      pipeweave(['tasks:enqueue', 'work', '--json']),
      pipeweave(['tasks:enqueue', 'work', '--priority', '-10', '--json']),
    ])).map((r) => json<{ runId: string }>(r))
    expect((await row(high.runId)).priority).toBe(-10)
    expect((await row(low.runId)).priority).toBe(50)
    await heartbeat(db.pool, 'orch')
    expect(await claim(db.pool, 'orch', 1)).toEqual([high.runId])
  })

  it('--delay-ms sets scheduled_for that far ahead; the run is scheduled, not due', async () => {
    const result = json<{ runId: string }>(await pipeweave(['tasks:enqueue', 'work', '--delay-ms', '60000', '--json']))
    const r = await row(result.runId)
    const ahead = r.scheduled_for.getTime() - r.created_at.getTime()
    expect(ahead).toBeGreaterThanOrEqual(59_000)
    expect(ahead).toBeLessThanOrEqual(61_000)
    const status = json(await runCli(['maintenance:status', '--json'], { env: db.env }))
    expect(status).toMatchObject({ pendingTasks: 0, scheduledTasks: 1 })
    await heartbeat(db.pool, 'orch')
    expect(await claim(db.pool, 'orch', 5)).toEqual([])
  })
})

describe('idempotency keys', () => {
  it('a second enqueue with the key returns the same run, deduplicated, and creates nothing', async () => {
    const first = await pipeweave(['tasks:enqueue', 'work', '--idempotency-key', 'report-2026-11-23', '--json'])
    const second = await pipeweave(['tasks:enqueue', 'work', '--idempotency-key', 'report-2026-11-23', '--input', '{"other":1}', '--json'])
    expect([first.code, second.code]).toEqual([0, 0])
    const a = json<{ runId: string; deduplicated: boolean }>(first)
    expect(a.deduplicated).toBe(false)
    expect(json(second)).toEqual({ runId: a.runId, deduplicated: true })
    expect(await countRuns(db.pool)).toBe(1)
    // The human form prints the id, and says on stderr that it was deduplicated.
    const third = await pipeweave(['tasks:enqueue', 'work', '--idempotency-key', 'report-2026-11-23'])
    expect(third.stdout).toBe(`${a.runId}\n`)
    expect(third.stderr).toMatch(/deduplicated/)
  })

  it('a key belongs to its task', async () => {
    const a = await enqueueTask(api, { taskId: 'work', idempotencyKey: 'shared' })
    const b = await enqueueTask(api, { taskId: 'uncached', idempotencyKey: 'shared' })
    expect(b.runId).not.toBe(a.runId)
    expect(b.deduplicated).toBe(false)
  })

  it('a completed run\'s cached result holds the key; without a cache entry a finished run does not', async () => {
    await heartbeat(db.pool, 'orch')
    const cached = await enqueueTask(api, { taskId: 'work', idempotencyKey: 'k1' })
    const plain = await enqueueTask(api, { taskId: 'uncached', idempotencyKey: 'k1' })
    const claimed = await claim(db.pool, 'orch', 10)
    expect(claimed.sort()).toEqual([cached.runId, plain.runId].sort())
    for (const id of claimed) await complete(db.pool, id, 'orch', { done: true })

    expect(await enqueueTask(api, { taskId: 'work', idempotencyKey: 'k1' })).toEqual({ runId: cached.runId, deduplicated: true })
    const again = await enqueueTask(api, { taskId: 'uncached', idempotencyKey: 'k1' })
    expect(again.deduplicated).toBe(false)
    expect(again.runId).not.toBe(plain.runId)
  })

  it('concurrent enqueues with one key create exactly one run', async () => {
    const CALLERS = 16
    for (let round = 0; round < 5; round++) {
      const key = `concurrent-${round}`
      const results = await Promise.all(Array.from({ length: CALLERS }, () => enqueueTask(api, { taskId: 'uncached', idempotencyKey: key })))
      const ids = new Set(results.map((r) => r.runId))
      expect(ids.size).toBe(1)
      expect(results.filter((r) => !r.deduplicated)).toHaveLength(1)
      expect(await countRuns(db.pool, 'idempotency_key = $1', [key])).toBe(1)
    }
    // And through the CLI, several processes at once.
    const cli = await Promise.all(Array.from({ length: 4 }, () => pipeweave(['tasks:enqueue', 'uncached', '--idempotency-key', 'cli-key', '--json'])))
    expect(cli.map((r) => r.code)).toEqual([0, 0, 0, 0])
    expect(new Set(cli.map((r) => json<{ runId: string }>(r).runId)).size).toBe(1)
    expect(await countRuns(db.pool, 'idempotency_key = $1', ['cli-key'])).toBe(1)
  })
})

describe('refused unless the mode is running', () => {
  it.each(['waiting_for_maintenance', 'maintenance'] as const)('%s: exit 4, a typed error from the API, nothing written', async (m) => {
    await resetTo(db.pool, m)
    const [human, machine] = await Promise.all([
      pipeweave(['tasks:enqueue', 'work', '--input', '{}']),
      pipeweave(['tasks:enqueue', 'work', '--idempotency-key', 'k', '--json']),
    ])
    expect(human.code).toBe(4)
    expect(human.stdout).toBe('')
    expect(human.stderr).toContain(`the mode is ${m}`)
    expect(machine.code).toBe(4)
    expect(json(machine)).toMatchObject({ error: { code: 'MAINTENANCE_MODE' }, exitCode: 4 })

    const error = await enqueueTask(api, { taskId: 'work' }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(MaintenanceModeError)
    expect((error as MaintenanceModeError).mode).toBe(m)
    expect((error as MaintenanceModeError).exitCode).toBe(4)
    expect(await countRuns(db.pool)).toBe(0)
  })

  it('an unknown task from the API is a UsageError (exit 2)', async () => {
    const error = await enqueueTask(api, { taskId: 'nope' }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(UsageError)
  })
})

describe('an idempotency key served from the cache after db:cleanup removed its run', () => {
  it('reports the hit with no run id, exit 0, and creates nothing', async () => {
    await db.pool.query(`INSERT INTO idempotency_cache (task_id, idempotency_key, task_run_id, output, expires_at)
                         VALUES ('work', 'cleaned-up', NULL, '{"done":true}', now() + interval '1 hour')`)
    const before = await countRuns(db.pool)
    const machine = await pipeweave(['tasks:enqueue', 'work', '--idempotency-key', 'cleaned-up', '--json'])
    expect(machine.code).toBe(0)
    expect(json(machine)).toEqual({ runId: null, deduplicated: true })
    const human = await pipeweave(['tasks:enqueue', 'work', '--idempotency-key', 'cleaned-up'])
    expect(human.code).toBe(0)
    expect(human.stdout).toBe('')
    expect(human.stderr).toContain('served from the idempotency cache')
    expect(await countRuns(db.pool)).toBe(before)
  })
})
