/**
 * Bulk enqueue (SPEC §3, issue 10 item 8): `tasks:enqueue TASK --jsonl FILE` and `enqueueTasks`.
 * 100,000 runs in one call, in order; one bad line rejects the whole file naming its line, before
 * the gate; idempotency keys deduplicate within the file and against live runs and the cache; the
 * size limits are checked before anything connects; standard input works.
 */
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { enqueueTask, enqueueTasks } from '../src/api/enqueue'
import { MAX_JSONL_BYTES, readEnqueueJsonl } from '../src/api/enqueue-jsonl'
import type { Database } from '../src/db/database'
import { UsageError } from '../src/errors'
import { apiDatabase, createTestDatabase, type TestDatabase } from './helpers/db'
import { BIN, cleanEnv, json, runCli, type CliResult } from './helpers/cli'
import { addTask, claim, complete, countRuns, heartbeat, resetTo } from './helpers/maintenance-fixtures'
import { track } from './helpers/processes'

let db: TestDatabase
let api: Database
let scratch: string

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  await addTask(db.pool, 'work')
  await db.pool.query(`UPDATE tasks SET priority = 50, idempotency_ttl_seconds = 3600 WHERE id = 'work'`)
  api = await apiDatabase(db.url)
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-bulk-'))
})
afterAll(async () => {
  await api.close()
  await db.drop()
  fs.rmSync(scratch, { recursive: true, force: true })
})
beforeEach(async () => { await resetTo(db.pool, 'running') })

const pipeweave = (args: string[], input?: string) => runCli(args, { env: db.env, input })
/** Nothing listens on port 1: a command that got as far as connecting would exit 3. */
const UNREACHABLE = { DATABASE_URL: 'postgres://pipeweave@127.0.0.1:1/none', PGCONNECT_TIMEOUT: '2' }

let files = 0
function writeLines(lines: string[]): string {
  const file = path.join(scratch, `input-${++files}.jsonl`)
  fs.writeFileSync(file, lines.map((l) => `${l}\n`).join(''))
  return file
}

/** `{"n":1}` … `{"n":count}`, one per line. */
function numbered(count: number): string[] {
  return Array.from({ length: count }, (_, i) => JSON.stringify({ n: i + 1 }))
}

interface Bulk { runIds: Array<string | null>; deduplicated: number }

/** Every run of `work`, by id: its input, priority, key, and how far ahead it was scheduled. */
async function runsById(): Promise<Map<string, { input: unknown; priority: number; key: string | null; aheadMs: number | null }>> {
  const { rows } = await db.pool.query(
    `SELECT id, input, priority, idempotency_key AS key,
            (extract(epoch FROM scheduled_for - created_at) * 1000)::int AS "aheadMs"
       FROM task_runs WHERE task_id = 'work'`)
  return new Map(rows.map((r) => [r.id, r]))
}

/** The runs carry the lines' inputs, line i+1 → runIds[i], and were created in line order. */
async function expectInOrder(runIds: Array<string | null>, count: number) {
  expect(runIds).toHaveLength(count)
  const runs = await runsById()
  expect(runs.size).toBe(count)
  for (let i = 0; i < count; i++) {
    const run = runs.get(runIds[i]!)
    if ((run?.input as { n?: number } | undefined)?.n !== i + 1) throw new Error(`runIds[${i}] = ${runIds[i]} holds ${JSON.stringify(run?.input)}, not line ${i + 1}'s input`)
  }
  // Ids are time-ordered and claims break ties by id: same-priority runs are taken in line order.
  expect([...runIds].sort()).toEqual(runIds)
}

describe('100,000 runs in one call', () => {
  it('tasks:enqueue --jsonl FILE: every line a run, in order, runIds lined up with the lines', async () => {
    const file = writeLines(numbered(100_000))
    const result = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file, '--json'], undefined)
    expect(result.code).toBe(0)
    const body = json<Bulk>(result)
    expect(body.deduplicated).toBe(0)
    await expectInOrder(body.runIds, 100_000)
    expect(await countRuns(db.pool, `priority = 50 AND status = 'pending' AND scheduled_for IS NULL`)).toBe(100_000)
  })

  it('enqueueTasks through the API', async () => {
    const items = Array.from({ length: 100_000 }, (_, i) => ({ input: { n: i + 1 } }))
    const { runIds, deduplicated } = await enqueueTasks(api, 'work', items)
    expect(deduplicated).toBe(0)
    await expectInOrder(runIds, 100_000)
  })
})

describe('one bad line rejects the whole call, naming it (exit 2), nothing written', () => {
  it('malformed JSON on line 73,412 of 100,000', async () => {
    await enqueueTask(api, { taskId: 'work', input: { before: true } })
    const before = await countRuns(db.pool)
    const lines = numbered(100_000)
    lines[73_411] = '{"n":73412,}'
    const file = writeLines(lines)

    const machine = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file, '--json'])
    expect(machine.code).toBe(2)
    expect(json(machine)).toMatchObject({
      error: { code: 'INVALID_JSON', message: expect.stringMatching(new RegExp(`^line 73412 of ${file}: not valid JSON`)) }, exitCode: 2,
    })
    const human = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file])
    expect(human.code).toBe(2)
    expect(human.stdout).toBe('')
    expect(human.stderr).toMatch(/^error: line 73412 of .*: not valid JSON/)
    expect(await countRuns(db.pool)).toBe(before)
  })

  it.each([
    ['a line that is not an object', '[1,2]', 'INVALID_ENVELOPE', /line 3 of .*: with --envelope each line must be an object .* not an array/],
    ['an unknown key', '{"input":{},"idempotency_key":"k"}', 'INVALID_ENVELOPE', /line 3 of .*: unknown key "idempotency_key"/],
    ['no input', '{"priority":5}', 'INVALID_ENVELOPE', /line 3 of .*: the envelope has no "input"/],
    ['a priority given as a string', '{"input":{},"priority":"5"}', 'INVALID_PRIORITY', /line 3 of .*: priority must be a whole number, not a string/],
    ['a fractional priority', '{"input":{},"priority":1.5}', 'INVALID_PRIORITY', /line 3 of .*: priority must be a whole number from/],
    ['a negative delay', '{"input":{},"delayMs":-1}', 'INVALID_DELAY', /line 3 of .*: delay must be a whole number of milliseconds/],
    ['a key that is not a string', '{"input":{},"idempotencyKey":7}', 'INVALID_IDEMPOTENCY_KEY', /line 3 of .*: idempotencyKey must be a string/],
    ['a key too long to index', JSON.stringify({ input: {}, idempotencyKey: 'k'.repeat(5000) }), 'IDEMPOTENCY_KEY_TOO_LONG', /line 3 of .*: the idempotency key is 5000 bytes long/],
  ])('--envelope: %s', async (_what, bad, code, message) => {
    const file = writeLines(['{"input":{"n":1}}', '{"input":{"n":2},"idempotencyKey":"a"}', bad, '{"input":{"n":4}}'])
    const result = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file, '--envelope', '--json'])
    expect(result.code).toBe(2)
    expect(json(result)).toMatchObject({ error: { code, message: expect.stringMatching(message) }, exitCode: 2 })
    expect(await countRuns(db.pool)).toBe(0)
  })

  it('blank lines are skipped but counted: the line named is the file\'s', async () => {
    const file = writeLines(['{"n":1}', '', '   ', '{"n":2}', '{bad'])
    const bad = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file, '--json'])
    expect(bad.code).toBe(2)
    expect(json(bad)).toMatchObject({ error: { message: expect.stringMatching(/^line 5 of /) } })
    const good = await pipeweave(['tasks:enqueue', 'work', '--jsonl', writeLines(['{"n":1}', '', '   ', '{"n":2}', '']), '--json'])
    expect(good.code).toBe(0)
    await expectInOrder(json<Bulk>(good).runIds, 2)
  })

  it.each([
    ['--jsonl with --input', ['--jsonl', 'x.jsonl', '--input', '{}']],
    ['--jsonl with --input-file', ['--jsonl', 'x.jsonl', '--input-file', 'x.json']],
    ['--jsonl with --idempotency-key', ['--jsonl', 'x.jsonl', '--idempotency-key', 'k']],
    ['--envelope without --jsonl', ['--envelope', '--input', '{}']],
    ['--ids without --jsonl', ['--ids']],
  ])('%s is bad usage', async (_what, args) => {
    const result = await runCli(['tasks:enqueue', 'work', ...args, '--json'], { env: UNREACHABLE })
    expect(result.code).toBe(2)
    expect(json(result)).toMatchObject({ error: { code: 'BAD_USAGE' }, exitCode: 2 })
  })

  it('a file that cannot be read', async () => {
    for (const file of [path.join(scratch, 'missing.jsonl'), scratch]) {
      const result = await runCli(['tasks:enqueue', 'work', '--jsonl', file, '--json'], { env: UNREACHABLE })
      expect(result.code).toBe(2)
      expect(json(result)).toMatchObject({ error: { code: 'INPUT_FILE_UNREADABLE', message: expect.stringContaining(`cannot read ${file}`) } })
    }
  })
})

describe('refused unless the mode is running (exit 4), nothing written; input errors first', () => {
  it.each(['waiting_for_maintenance', 'maintenance'] as const)('%s', async (mode) => {
    const file = writeLines(numbered(20_000))
    await enqueueTask(api, { taskId: 'work', input: { before: true } })
    await db.pool.query(`UPDATE orchestrator_state SET mode = $1 WHERE id = 'singleton'`, [mode])
    const before = await countRuns(db.pool)

    const machine = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file, '--json'])
    expect(machine.code).toBe(4)
    expect(json(machine)).toMatchObject({ error: { code: 'MAINTENANCE_MODE', message: expect.stringContaining(`the mode is ${mode}`) }, exitCode: 4 })
    const human = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file])
    expect(human.code).toBe(4)
    expect(human.stdout).toBe('')
    expect(await countRuns(db.pool)).toBe(before)

    // Malformed and refused: the input error is reported, not the mode.
    const lines = numbered(20_000)
    lines[19_999] = '{"n":'
    const malformed = await pipeweave(['tasks:enqueue', 'work', '--jsonl', writeLines(lines), '--json'])
    expect(malformed.code).toBe(2)
    expect(json(malformed)).toMatchObject({ error: { code: 'INVALID_JSON', message: expect.stringMatching(/^line 20000 of /) } })
    expect(await countRuns(db.pool)).toBe(before)

    // An empty file gets the same answer: nothing to write is no reason to say yes.
    const empty = await pipeweave(['tasks:enqueue', 'work', '--jsonl', writeLines([]), '--json'])
    expect(empty.code).toBe(4)
    expect(json(empty)).toMatchObject({ error: { code: 'MAINTENANCE_MODE' } })
    await db.pool.query(`UPDATE orchestrator_state SET mode = 'running' WHERE id = 'singleton'`)
  })
})

describe('idempotency keys with --envelope', () => {
  it('deduplicate against each other, an active run and a cached result; runIds line up with the lines', async () => {
    // A completed run whose result is cached under "cached" (the task keeps results an hour).
    const cached = await enqueueTask(api, { taskId: 'work', idempotencyKey: 'cached' })
    await heartbeat(db.pool, 'orch')
    expect(await claim(db.pool, 'orch', 1)).toEqual([cached.runId])
    expect(await complete(db.pool, cached.runId!, 'orch', { done: true })).toBe(true)
    expect(await countRuns(db.pool, `id = $1 AND status = 'completed'`, [cached.runId])).toBe(1)
    // A pending run holding "held".
    const held = await enqueueTask(api, { taskId: 'work', idempotencyKey: 'held', input: { old: true } })

    // 5,010 lines: "twice" on lines 1 and 2, "far" on lines 3 and 5,005 (two statements of 5,000 apart).
    const lines = Array.from({ length: 5010 }, (_, i) => JSON.stringify({ input: { n: i + 1 } }))
    lines[0] = JSON.stringify({ input: { n: 1 }, idempotencyKey: 'twice' })
    lines[1] = JSON.stringify({ input: { n: 2 }, idempotencyKey: 'twice' })
    lines[2] = JSON.stringify({ input: { n: 3 }, idempotencyKey: 'far', priority: 7, delayMs: 60_000 })
    lines[3] = JSON.stringify({ input: { n: 4 }, idempotencyKey: 'held' })
    lines[4] = JSON.stringify({ input: { n: 5 }, idempotencyKey: 'cached' })
    lines[5] = JSON.stringify({ input: { n: 6 }, idempotencyKey: null, priority: null, delayMs: null })
    lines[5004] = JSON.stringify({ input: { n: 5005 }, idempotencyKey: 'far' })
    const result = await pipeweave(['tasks:enqueue', 'work', '--jsonl', writeLines(lines), '--envelope', '--json'])
    expect(result.code).toBe(0)
    const { runIds, deduplicated } = json<Bulk>(result)

    expect(runIds).toHaveLength(5010)
    expect(deduplicated).toBe(4)
    expect(runIds[1]).toBe(runIds[0])
    expect(runIds[5004]).toBe(runIds[2])
    expect(runIds[3]).toBe(held.runId)
    expect(runIds[4]).toBe(cached.runId)
    expect(new Set(runIds).size).toBe(5008) // lines 2 and 5,005 repeat the ids of lines 1 and 3

    const runs = await runsById()
    // The new runs: every line but the four deduplicated ones, each with its own line's input.
    const created = runIds.filter((id, i) => ![1, 3, 4, 5004].includes(i))
    expect(created).toHaveLength(5006)
    created.forEach((id) => expect(runs.get(id!)).toBeDefined())
    runIds.forEach((id, i) => {
      if (![3, 4, 5004, 1].includes(i)) expect(runs.get(id!)?.input).toEqual({ n: i + 1 })
    })
    expect(runs.get(held.runId!)?.input).toEqual({ old: true })
    expect(runs.get(runIds[0]!)).toMatchObject({ key: 'twice', priority: 50, aheadMs: null })
    expect(runs.get(runIds[2]!)).toMatchObject({ key: 'far', priority: 7 })
    expect(runs.get(runIds[2]!)!.aheadMs).toBeGreaterThanOrEqual(59_000)
    expect(runs.get(runIds[5]!)).toMatchObject({ key: null, priority: 50, aheadMs: null })
    // 5,006 new runs, the held one, and the completed one (in history).
    expect(await countRuns(db.pool)).toBe(5008)
    expect(await countRuns(db.pool, `idempotency_key = 'twice'`)).toBe(1)
    expect(await countRuns(db.pool, `idempotency_key = 'far'`)).toBe(1)
  })

  it('--ids: one line per input; a key served from the cache whose run is gone is an empty line', async () => {
    await db.pool.query(`INSERT INTO idempotency_cache (task_id, idempotency_key, task_run_id, output, expires_at)
                         VALUES ('work', 'cleaned-up', NULL, '{"done":true}', now() + interval '1 hour')`)
    const file = writeLines([
      '{"input":{"n":1},"idempotencyKey":"x"}', '{"input":{"n":2},"idempotencyKey":"cleaned-up"}', '{"input":{"n":3},"idempotencyKey":"x"}', '{"input":{"n":4}}',
    ])
    const human = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file, '--envelope', '--ids'])
    expect(human.code).toBe(0)
    const ids = human.stdout.split('\n')
    expect(ids).toHaveLength(5) // four lines and the final newline
    expect(ids[0]).toMatch(/^[0-9a-f]{20}$/)
    expect(ids.slice(1)).toEqual(['', ids[0], expect.stringMatching(/^[0-9a-f]{20}$/), ''])
    expect(human.stderr).toContain('queued 2 runs, 2 deduplicated')

    const machine = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file, '--envelope', '--json'])
    expect(json(machine)).toEqual({ runIds: [ids[0], null, ids[0], expect.any(String)], deduplicated: 3 })
    expect(await countRuns(db.pool)).toBe(3)
  })
})

describe('for a person, and flags for every line', () => {
  it('prints one summary line on stdout', async () => {
    const file = writeLines(['{"input":1,"idempotencyKey":"k"}', '{"input":2,"idempotencyKey":"k"}', '{"input":3}'])
    const result = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file, '--envelope'])
    expect(result.code).toBe(0)
    expect(result.stdout).toBe('queued 2 runs, 1 deduplicated\n')
    const one = await pipeweave(['tasks:enqueue', 'work', '--jsonl', writeLines(['"just one"'])])
    expect(one.stdout).toBe('queued 1 run\n')
  })

  it('--priority and --delay-ms apply to every line that sets none', async () => {
    const file = writeLines(['{"input":{"n":1}}', '{"input":{"n":2},"priority":3,"delayMs":0}'])
    const result = await pipeweave(['tasks:enqueue', 'work', '--jsonl', file, '--envelope', '--priority', '200', '--delay-ms', '60000', '--json'])
    expect(result.code).toBe(0)
    const { runIds } = json<Bulk>(result)
    const runs = await runsById()
    expect(runs.get(runIds[0]!)).toMatchObject({ priority: 200 })
    expect(runs.get(runIds[0]!)!.aheadMs).toBeGreaterThanOrEqual(59_000)
    expect(runs.get(runIds[1]!)).toMatchObject({ priority: 3, aheadMs: null })
  })

  it('an unknown task is exit 2 and writes nothing', async () => {
    const result = await pipeweave(['tasks:enqueue', 'nope', '--jsonl', writeLines(['{}']), '--json'])
    expect(result.code).toBe(2)
    expect(json(result)).toMatchObject({ error: { code: 'UNKNOWN_TASK' } })
    expect(await countRuns(db.pool)).toBe(0)
    // With no line at all, too.
    const empty = await pipeweave(['tasks:enqueue', 'nope', '--jsonl', writeLines([]), '--json'])
    expect(empty.code).toBe(2)
    expect(json(empty)).toMatchObject({ error: { code: 'UNKNOWN_TASK' } })
  })
})

describe('size limits: exit 2 before connecting', () => {
  it('1,000,000 inputs are read (then the connection fails: exit 3); 1,000,001 are refused (exit 2)', async () => {
    const million = path.join(scratch, 'million.jsonl')
    fs.writeFileSync(million, '{}\n'.repeat(1_000_000) + '\n\n')
    const read = await runCli(['tasks:enqueue', 'work', '--jsonl', million, '--json'], { env: UNREACHABLE })
    expect(read.code).toBe(3)

    fs.appendFileSync(million, '{}\n')
    const refused = await runCli(['tasks:enqueue', 'work', '--jsonl', million, '--json'], { env: UNREACHABLE })
    expect(refused.code).toBe(2)
    expect(json(refused)).toMatchObject({
      error: { code: 'TOO_MANY_ITEMS', message: expect.stringMatching(/more than 1,000,000 inputs.*line 1000003/) }, exitCode: 2,
    })
  })

  it('a file over 256 MiB is refused unread; on standard input, as soon as the count passes it', async () => {
    const big = path.join(scratch, 'big.jsonl')
    fs.closeSync(fs.openSync(big, 'w'))
    fs.truncateSync(big, MAX_JSONL_BYTES + 1) // sparse: no disk, no time
    const file = await runCli(['tasks:enqueue', 'work', '--jsonl', big, '--json'], { env: UNREACHABLE })
    expect(file.code).toBe(2)
    expect(json(file)).toMatchObject({ error: { code: 'INPUT_TOO_LARGE', message: expect.stringContaining('larger than 256 MiB') } })

    const piped = await runWithStdinFrom(big, ['tasks:enqueue', 'work', '--jsonl', '-', '--json'], UNREACHABLE)
    expect(piped.code).toBe(2)
    expect(json(piped)).toMatchObject({ error: { code: 'INPUT_TOO_LARGE', message: expect.stringContaining('standard input is larger than 256 MiB') } })
    fs.rmSync(big)
  })
})

describe('standard input', () => {
  it('--jsonl - reads the lines from standard input', async () => {
    const result = await pipeweave(['tasks:enqueue', 'work', '--jsonl', '-', '--json'], numbered(1000).join('\n'))
    expect(result.code).toBe(0)
    await expectInOrder(json<Bulk>(result).runIds, 1000)
  })

  it('a bad line on standard input names its line', async () => {
    const result = await pipeweave(['tasks:enqueue', 'work', '--jsonl', '-', '--envelope', '--json'], '{"input":1}\n{"input":2,"extra":true}\n')
    expect(result.code).toBe(2)
    expect(json(result)).toMatchObject({ error: { message: expect.stringMatching(/^line 2 of standard input: unknown key "extra"/) } })
    expect(await countRuns(db.pool)).toBe(0)
  })
})

describe('readEnqueueJsonl (the reader, chunk by chunk)', () => {
  async function* chunks(...parts: Array<string | Buffer>) {
    for (const part of parts) yield typeof part === 'string' ? Buffer.from(part) : part
  }

  it('lines split across chunks, a character split across chunks, CRLF, a BOM, no final newline', async () => {
    const euro = Buffer.from('{"s":"€"}\r\n')
    const { items, lines } = await readEnqueueJsonl(chunks(
      Buffer.from('\ufeff{"a"'), ':1}\n\n{"b":', '2}\r', '\n', euro.subarray(0, 7), euro.subarray(7), '{"c":3}',
    ), { source: 'test' })
    expect(items).toEqual([{ input: { a: 1 } }, { input: { b: 2 } }, { input: { s: '€' } }, { input: { c: 3 } }])
    expect(lines).toEqual([1, 3, 4, 5])
  })

  it('a line longer than many chunks', async () => {
    const long = 'x'.repeat(100_000)
    const parts = `"${long}"\n1\n`.match(/[\s\S]{1,1000}/g)!
    const { items } = await readEnqueueJsonl(chunks(...parts), { source: 'test' })
    expect(items).toEqual([{ input: long }, { input: 1 }])
  })

  it('stops reading at the first bad line and at the limits', async () => {
    let read = 0
    async function* endless() {
      for (;;) { read++; yield Buffer.from('{}\n{}\n') }
    }
    await expect(readEnqueueJsonl(endless(), { source: 's', maxItems: 10 })).rejects.toMatchObject({ code: 'TOO_MANY_ITEMS' })
    expect(read).toBe(6)
    read = 0
    await expect(readEnqueueJsonl(endless(), { source: 's', maxBytes: 30 })).rejects.toMatchObject({ code: 'INPUT_TOO_LARGE' })
    expect(read).toBe(6)
    const error = await readEnqueueJsonl(chunks('1\n2\n{\n4\n'), { source: 's' }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(UsageError)
    expect((error as UsageError).message).toMatch(/^line 3 of s: not valid JSON/)
  })
})

/** The CLI with its standard input read from a file (a pipe a test need not fill itself). */
function runWithStdinFrom(file: string, args: string[], env: Record<string, string>): Promise<CliResult> {
  const fd = fs.openSync(file, 'r')
  const started = Date.now()
  const child = track(spawn(process.execPath, [BIN, ...args], { env: cleanEnv(env), cwd: os.tmpdir(), stdio: [fd, 'pipe', 'pipe'] }), `pipeweave ${args.join(' ')} < ${file}`)
  fs.closeSync(fd)
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (chunk) => { stdout += chunk })
  child.stderr!.on('data', (chunk) => { stderr += chunk })
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  return new Promise((resolve) => child.on('close', (code, signal) => {
    clearTimeout(timer)
    resolve({ code, signal, stdout, stderr, ms: Date.now() - started })
  }))
}
