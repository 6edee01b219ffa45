/**
 * The README walkthrough "Your own worker, step by step" with examples/worker, as written
 * (issue 6, acceptance 2): the commands are read from the README itself and run one by one, so the
 * test fails when the README and the product drift apart. Also signed requests
 * (PIPEWEAVE_SECRET_KEY on both sides) and a mismatched key (the worker's 401 is a permanent failure).
 *
 * Differences from a person at a terminal, and why: the worker listens on a free port instead of
 * 4000 (tests run side by side), so a copy of the manifest with that baseUrl is registered; and
 * the commands use a fresh database on the test server (DATABASE_URL) instead of the embedded one
 * (demo.test.ts covers the embedded database), which keeps this file fast.
 */
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { json, runCli } from './helpers/cli'
import { enqueueOne } from './helpers/orchestrator'
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { unusedPort } from './helpers/fake-server'
import { spawnTracked } from './helpers/processes'
import { migratedTestDatabase } from './helpers/surface'
import { waitFor } from './helpers/wait'

const ROOT = path.resolve(__dirname, '..')
const WORKER = path.join(ROOT, 'examples', 'worker', 'worker.js')
const MANIFEST = path.join(ROOT, 'examples', 'worker', 'service.json')
const KEY = 'correct horse battery staple'

/** The README's walkthrough: the worker command, the CLI steps, and the output it promises. */
function readWalkthrough(): { workerLine: string; steps: string[]; promisedOutput: string } {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('## Your own worker, step by step'))
  const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1])
  const lines = (block: string) => block.split('\n').map((l) => l.replace(/\s+#.*$/, '').trim()).filter(Boolean)
  const promised = /`runs:show` prints `([^`]+)`/.exec(section)
  if (blocks.length < 2 || !promised) throw new Error('README: the walkthrough section lost its shape')
  return { workerLine: lines(blocks[0])[0], steps: lines(blocks[1]), promisedOutput: promised[1] }
}

/** Split a shell line into words: single and double quotes, "$VAR" from vars. Enough for the README. */
function shellWords(line: string, vars: Record<string, string>): string[] {
  const words: string[] = []
  const re = /'([^']*)'|"([^"]*)"|(\S+)/g
  for (const m of line.matchAll(re)) {
    const word = m[1] ?? (m[2] ?? m[3]).replace(/\$(\w+)/g, (_, name: string) => vars[name] ?? '')
    words.push(word)
  }
  return words
}

interface ExampleWorker {
  baseUrl: string
  manifestCopy: string
  output(): string
  stop(): Promise<void>
}

/** Start examples/worker/worker.js on a free port (PORT), with a manifest copy pointing at it. */
async function startExampleWorker(scratch: string, env: Record<string, string> = {}): Promise<ExampleWorker> {
  const port = await unusedPort()
  const child = spawnTracked(process.execPath, [WORKER], {
    env: { PATH: process.env.PATH, PORT: String(port), ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  }, 'examples/worker/worker.js')
  let output = ''
  child.stdout!.on('data', (chunk) => { output += chunk })
  child.stderr!.on('data', (chunk) => { output += chunk })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  await waitFor(() => {
    if (child.exitCode !== null) throw new Error(`the example worker exited: ${output}`)
    return output.includes(`example worker on http://127.0.0.1:${port}`)
  }, { what: 'the example worker to listen' })
  const baseUrl = `http://127.0.0.1:${port}`
  const manifest = JSON.parse(fs.readFileSync(MANIFEST, 'utf8'))
  manifest.baseUrl = baseUrl
  const manifestCopy = path.join(scratch, `service-${port}.json`)
  fs.writeFileSync(manifestCopy, JSON.stringify(manifest, null, 2))
  return {
    baseUrl,
    manifestCopy,
    output: () => output,
    stop: async () => {
      child.kill('SIGTERM')
      await exited
    },
  }
}

describe('the example worker and the README walkthrough', () => {
  let scratch: string
  const databases: TestDatabase[] = []

  beforeAll(() => {
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-example-'))
  })
  afterAll(async () => {
    await Promise.all(databases.map((db) => db.drop()))
    fs.rmSync(scratch, { recursive: true, force: true })
  })

  async function freshDatabase(): Promise<TestDatabase> {
    const db = await createTestDatabase({ prefix: 'pw_example' })
    databases.push(db)
    return db
  }

  it('agrees with itself: the manifest points where the worker listens by default', () => {
    const { workerLine } = readWalkthrough()
    expect(workerLine).toBe('node examples/worker/worker.js')
    const manifest = JSON.parse(fs.readFileSync(MANIFEST, 'utf8'))
    expect(manifest.baseUrl).toBe('http://127.0.0.1:4000')
    expect(fs.readFileSync(WORKER, 'utf8')).toMatch(/Number\(process\.env\.PORT \|\| 4000\)/)
    expect(manifest.tasks.map((t: { id: string }) => t.id)).toEqual(['example.word-count', 'example.shout'])
  })

  it('works as written, step by step: the run completes with the promised output and its follow-up', async () => {
    const db = await freshDatabase()
    const worker = await startExampleWorker(scratch)
    const { steps, promisedOutput } = readWalkthrough()
    expect(steps).toHaveLength(5)

    const vars: Record<string, string> = {}
    let lastStdout = ''
    for (const step of steps) {
      const assignment = /^(\w+)=\$\((.*)\)$/.exec(step)
      const words = shellWords(assignment ? assignment[2] : step, vars)
      expect(words.slice(0, 2)).toEqual(['npx', 'pipeweave'])
      const args = words.slice(2).map((w) => (w === 'examples/worker/service.json' ? worker.manifestCopy : w))
      const result = await runCli(args, { env: db.env, cwd: ROOT })
      if (result.code !== 0) throw new Error(`README step failed (exit ${result.code}): ${step}\n${result.stdout}\n${result.stderr}`)
      if (assignment) vars[assignment[1]] = result.stdout.trim()
      lastStdout = result.stdout
    }

    // The last step is runs:show "$RUN": it prints what the README promises.
    expect(lastStdout).toContain(promisedOutput)
    expect(lastStdout).toMatch(/^Status: completed$/m)
    const runId = vars.RUN
    expect(runId).toMatch(/^[0-9a-f]{20}$/)

    const { runs } = json<{ runs: Array<Record<string, unknown>> }>(await runCli(['runs:list', '--json'], { env: db.env }))
    expect(runs).toEqual([
      expect.objectContaining({ taskId: 'example.shout', status: 'completed', parentRunId: runId, input: { words: 3, longest: 'pipeweave' }, output: { shouted: 'PIPEWEAVE' } }),
      expect.objectContaining({ id: runId, taskId: 'example.word-count', status: 'completed', attempt: 1, output: { words: 3, longest: 'pipeweave' } }),
    ])
    expect(worker.output()).toContain(`run ${runId} example.word-count attempt 1`)
    await worker.stop()
  })

  /** A migrated database with the example service registered and one word-count run queued. */
  async function registerAndEnqueue(worker: ExampleWorker): Promise<{ db: TestDatabase; runId: string }> {
    const db = await migratedTestDatabase('pw_example')
    databases.push(db)
    expect((await runCli(['services:register', worker.manifestCopy], { env: db.env })).code).toBe(0)
    return { db, runId: await enqueue(db, { text: 'hello pipeweave world' }) }
  }

  const enqueue = async (db: TestDatabase, input: unknown) => (await enqueueOne(db.pool, 'example.word-count', { input })).runId
  const runRow = async (db: TestDatabase, id: string) =>
    (await db.pool.query(`SELECT status, attempt, output, error_code, previous_attempts FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [id])).rows[0]

  it('accepts signed requests when PIPEWEAVE_SECRET_KEY is the same on both sides', async () => {
    const worker = await startExampleWorker(scratch, { PIPEWEAVE_SECRET_KEY: KEY })
    expect(worker.output()).toContain('(signatures required)')
    const { db, runId } = await registerAndEnqueue(worker)
    const run = await runCli(['run', '--until-idle'], { env: { ...db.env, PIPEWEAVE_SECRET_KEY: KEY } })
    expect(run.code).toBe(0)
    expect(await runRow(db, runId)).toMatchObject({ status: 'completed', attempt: 1, output: { words: 3, longest: 'pipeweave' } })
    const { rows } = await db.pool.query(`SELECT status, output FROM ${ALL_RUNS} AS task_runs WHERE task_id = 'example.shout'`)
    expect(rows).toEqual([{ status: 'completed', output: { shouted: 'PIPEWEAVE' } }])

    // A replayed request — correctly signed, but not from the last five minutes — is refused,
    // and so is a timestamp that is not a number (it must not slip past the window check).
    const body = JSON.stringify({ runId: 'replayed', taskId: 'example.word-count', attempt: 1, input: { text: 'a' } })
    const fresh = await signedPost(worker, 'example.word-count', body, String(Date.now()))
    expect(fresh.status).toBe(200)
    for (const stale of [String(Date.now() - 6 * 60_000), String(Date.now() + 6 * 60_000), 'yesterday']) {
      const response = await signedPost(worker, 'example.word-count', body, stale)
      expect({ stale, status: response.status, body: await response.json() }).toEqual({ stale, status: 401, body: expect.objectContaining({ code: 'STALE_REQUEST', retryable: false }) })
    }
    await worker.stop()
  })

  /** POST `body` to /tasks/<path>, signed as SPEC §5 says: "<timestamp>./tasks/<encoded task id>.<body>". */
  function signedPost(worker: ExampleWorker, pathTask: string, body: string, timestamp: string, options: { signFor?: string; key?: string } = {}) {
    const signedPath = `/tasks/${encodeURIComponent(options.signFor ?? pathTask)}`
    const hmac = crypto.createHmac('sha256', options.key ?? KEY).update(`${timestamp}.${signedPath}.${body}`).digest('hex')
    return fetch(`${worker.baseUrl}/tasks/${encodeURIComponent(pathTask)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-pipeweave-timestamp': timestamp, 'x-pipeweave-signature': `sha256=${hmac}` },
      body,
    })
  }

  it('binds a signature to its task, checks the body\'s taskId against the path, and runs a (runId, attempt) once (409 for a replay)', async () => {
    const worker = await startExampleWorker(scratch, { PIPEWEAVE_SECRET_KEY: KEY })
    const ran = (runId: string) => worker.output().split('\n').filter((l) => l.startsWith(`run ${runId} `))
    const body = JSON.stringify({ runId: 'r-1', taskId: 'example.word-count', attempt: 1, input: { text: 'signed words' } })
    const timestamp = String(Date.now())

    // The repro: the signed word-count request sent to example.shout instead. The path is
    // part of the signed string, so the signature does not hold there.
    const moved = await signedPost(worker, 'example.shout', body, timestamp, { signFor: 'example.word-count' })
    expect({ status: moved.status, body: await moved.json() }).toEqual({ status: 401, body: expect.objectContaining({ code: 'BAD_SIGNATURE', retryable: false }) })
    // Signed for the path it was sent to, but the body names another task: refused for good.
    const mismatched = await signedPost(worker, 'example.shout', body, timestamp)
    expect({ status: mismatched.status, body: await mismatched.json() }).toEqual({ status: 400, body: expect.objectContaining({ code: 'TASK_MISMATCH', retryable: false }) })
    expect(ran('r-1')).toEqual([])

    const first = await signedPost(worker, 'example.word-count', body, timestamp)
    expect({ status: first.status, body: await first.json() }).toEqual({ status: 200, body: { output: { words: 2, longest: 'signed' }, runNext: ['example.shout'] } })
    // The identical request again, within the window: answered 409, retryable, and not run again.
    const replay = await signedPost(worker, 'example.word-count', body, timestamp)
    expect({ status: replay.status, body: await replay.json() }).toEqual({ status: 409, body: expect.objectContaining({ code: 'ALREADY_ACCEPTED', retryable: true }) })
    // A fresh timestamp does not make it a new request: the (runId, attempt) was accepted.
    const resigned = await signedPost(worker, 'example.word-count', body, String(Date.now() + 1))
    expect(resigned.status).toBe(409)
    expect(ran('r-1')).toEqual(['run r-1 example.word-count attempt 1'])
    // The next attempt of the same run is new work.
    const next = await signedPost(worker, 'example.word-count', body.replace('"attempt":1', '"attempt":2'), timestamp)
    expect(next.status).toBe(200)
    expect(ran('r-1')).toEqual(['run r-1 example.word-count attempt 1', 'run r-1 example.word-count attempt 2'])
    await worker.stop()
  })

  it('without a key, still checks the body\'s taskId against the path and answers a replay with 409', async () => {
    const worker = await startExampleWorker(scratch)
    const post = (pathTask: string, body: string) => fetch(`${worker.baseUrl}/tasks/${pathTask}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
    const body = JSON.stringify({ runId: 'r-2', taskId: 'example.word-count', attempt: 1, input: { text: 'x' } })
    expect((await post('example.shout', body)).status).toBe(400)
    expect((await post('example.word-count', body)).status).toBe(200)
    const replay = await post('example.word-count', body)
    expect({ status: replay.status, body: await replay.json() }).toEqual({ status: 409, body: expect.objectContaining({ retryable: true }) })
    expect(worker.output().split('\n').filter((l) => l.startsWith('run r-2 '))).toHaveLength(1)
    await worker.stop()
  })

  it('rejects a wrong key and a missing signature with 401: failed for good on the first attempt, into the DLQ', async () => {
    const worker = await startExampleWorker(scratch, { PIPEWEAVE_SECRET_KEY: 'the worker key' })
    const { db, runId: wrongKey } = await registerAndEnqueue(worker)
    expect((await runCli(['run', '--until-idle'], { env: { ...db.env, PIPEWEAVE_SECRET_KEY: 'another key' } })).code).toBe(0)
    const unsigned = await enqueue(db, { text: 'x' })
    expect((await runCli(['run', '--until-idle'], { env: db.env })).code).toBe(0)

    for (const [runId, code] of [[wrongKey, 'BAD_SIGNATURE'], [unsigned, 'UNSIGNED']]) {
      // example.word-count allows 3 retries: a 401 is not retried (no previous attempt).
      expect(await runRow(db, runId)).toMatchObject({ status: 'failed', attempt: 1, error_code: code, output: null, previous_attempts: [] })
    }
    const { rows } = await db.pool.query('SELECT task_run_id, error_code, attempts FROM dlq ORDER BY failed_at')
    expect(rows).toEqual([
      { task_run_id: wrongKey, error_code: 'BAD_SIGNATURE', attempts: 1 },
      { task_run_id: unsigned, error_code: 'UNSIGNED', attempts: 1 },
    ])
    expect(worker.output()).not.toMatch(/example\.word-count attempt/) // the task itself never ran
    await worker.stop()
  })
})
