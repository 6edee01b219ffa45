/**
 * The worker protocol and what `run` makes of each answer (SPEC §5): the dispatch body and its
 * signature, the result rules, retries with the exact backoff, the DLQ written with the final
 * failure, the idempotency cache, and pipeline follow-ups. One `run` process serves the file;
 * each test has tasks of its own, scripted per attempt on one stub worker.
 */
import * as crypto from 'node:crypto'
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import {
  dlqFor, enqueueOne, finished, getRun, quickEnv, registerTasks, type RunProcess, startRun,
} from './helpers/orchestrator'
import { type Action, destroy, fail, garbled, hold, ok, startWorker, type StubWorker, type WorkerRequest } from './helpers/worker'

const SECRET = 'test-secret-Key-0123456789'

describe('pipeweave run: worker answers, retries and the DLQ', () => {
  let db: TestDatabase
  let worker: StubWorker
  let run: RunProcess

  /** Answer attempt n with script[n - 1] (the last entry repeats). */
  const script = (...actions: Array<Action | ((r: WorkerRequest) => Action | Promise<Action>)>) =>
    (r: WorkerRequest) => {
      const step = actions[Math.min(r.attempt, actions.length) - 1]
      return typeof step === 'function' ? step(r) : step
    }

  beforeAll(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [
      { id: 'flaky', retries: 2, retryBackoff: 'fixed', retryDelayMs: 400 },
      { id: 'bad-input', retries: 3, retryBackoff: 'fixed', retryDelayMs: 0 },
      { id: 'slow', timeout: 1, retries: 1, retryBackoff: 'fixed', retryDelayMs: 0 },
      { id: 'garbled', retries: 1, retryBackoff: 'fixed', retryDelayMs: 0 },
      { id: 'dropper', retries: 1, retryBackoff: 'fixed', retryDelayMs: 0 },
      { id: 'throttled', retries: 2, retryBackoff: 'fixed', retryDelayMs: 0 },
      { id: 'doomed', retries: 2, retryBackoff: 'fixed', retryDelayMs: 50 },
      { id: 'says-stop', retries: 3, retryBackoff: 'fixed', retryDelayMs: 0 },
      { id: 'says-go', retries: 1, retryBackoff: 'fixed', retryDelayMs: 0 },
      { id: 'backoff', retries: 3, retryBackoff: 'exponential', retryDelayMs: 150, maxRetryDelayMs: 400 },
      { id: 'shape', timeout: 7, codeHash: 'abc123' },
      { id: 'cached', idempotencyTTL: 60 },
      { id: 'parent', allowedNext: ['child'] },
      { id: 'child' },
      { id: 'other' },
      { id: 'nul-output', retries: 0 },
      { id: 'nul-error', retries: 0 },
    ])
    run = startRun(quickEnv({ ...db.env, PIPEWEAVE_SECRET_KEY: SECRET }), ['--log-format', 'json', '--concurrency', '10'])
    await run.started()
  })

  afterAll(async () => {
    // No assertion here: a failure in afterAll is reported apart from any test (the last test
    // checks that a `run` stops with exit 0 on SIGTERM, on its own process).
    await run.stop('SIGTERM')
    await worker.close()
    await db.drop()
  })

  it('retries a 500 after the task\'s delay and completes on attempt 2', async () => {
    worker.behave('flaky', script(fail(500, { error: 'boom' }), ok({ fine: true })))
    const { runId } = await enqueueOne(db.pool, 'flaky', { input: { a: 1 } })
    const done = await finished(db.pool, runId)
    expect(done).toMatchObject({ status: 'completed', attempt: 2, output: { fine: true } })
    expect(done.previous_attempts).toEqual([{ attempt: 1, error: 'boom', errorCode: 'HTTP_500', at: expect.any(String) }])
    // Attempt 2 started no sooner than retry_delay_ms after attempt 1 failed.
    const failedAt = new Date(done.previous_attempts[0].at).getTime()
    expect(done.started_at!.getTime() - failedAt).toBeGreaterThanOrEqual(400)
    expect(worker.requestsFor(runId).map((r) => r.attempt)).toEqual([1, 2])
    // The second dispatch carries the first failure.
    expect(worker.requestsFor(runId)[1].body.previousAttempts).toEqual(done.previous_attempts)
    expect(await dlqFor(db.pool, runId)).toEqual([])
  })

  it('fails a 400 at once, without retrying, into the DLQ', async () => {
    worker.behave('bad-input', () => fail(400))
    const { runId } = await enqueueOne(db.pool, 'bad-input')
    const done = await finished(db.pool, runId)
    expect(done).toMatchObject({ status: 'failed', attempt: 1, error_code: 'HTTP_400' })
    expect(worker.requestsFor(runId)).toHaveLength(1)
    const dlq = await dlqFor(db.pool, runId)
    expect(dlq).toHaveLength(1)
    expect(dlq[0]).toMatchObject({ task_id: 'bad-input', attempts: 1, error_code: 'HTTP_400' })
  })

  it('aborts a dispatch at the task timeout, retries it, and ends `timeout` in the DLQ', async () => {
    worker.behave('slow', () => hold())
    const { runId } = await enqueueOne(db.pool, 'slow')
    const done = await finished(db.pool, runId)
    expect(done).toMatchObject({ status: 'timeout', attempt: 2, error_code: 'TIMEOUT' })
    const requests = worker.requestsFor(runId)
    expect(requests.map((r) => r.attempt)).toEqual([1, 2])
    // The orchestrator hung up on the worker each time, and not before the timeout (1 s): each
    // attempt's logged duration, measured by the orchestrator around the dispatch, is ≥ 1 s.
    for (const r of requests) expect(r.abandonedAt).toBeDefined()
    const attempts = await Promise.all([1, 2].map((attempt) => run.waitForLog((l) => l.event === 'run' && l.runId === runId && l.attempt === attempt && l.errorCode === 'TIMEOUT')))
    expect(attempts.map((l) => l.status)).toEqual(['pending', 'timeout'])
    for (const l of attempts) expect(l.durationMs).toBeGreaterThanOrEqual(990)
    expect(done.previous_attempts).toEqual([expect.objectContaining({ attempt: 1, errorCode: 'TIMEOUT' })])
    const dlq = await dlqFor(db.pool, runId)
    expect(dlq).toHaveLength(1)
    expect(dlq[0]).toMatchObject({ attempts: 2, error_code: 'TIMEOUT' })
  })

  it('retries a garbled 200 body and a dropped connection', async () => {
    worker.behave('garbled', script(garbled(), ok('second time')))
    worker.behave('dropper', script(destroy(), ok('second time')))
    const a = await enqueueOne(db.pool, 'garbled')
    const b = await enqueueOne(db.pool, 'dropper')
    const garbledRun = await finished(db.pool, a.runId)
    const droppedRun = await finished(db.pool, b.runId)
    expect(garbledRun).toMatchObject({ status: 'completed', attempt: 2, output: 'second time' })
    expect(garbledRun.previous_attempts[0]).toMatchObject({ attempt: 1, errorCode: 'INVALID_RESPONSE' })
    expect(droppedRun).toMatchObject({ status: 'completed', attempt: 2, output: 'second time' })
    expect(droppedRun.previous_attempts).toHaveLength(1)
  })

  it('retries 429 and 408', async () => {
    worker.behave('throttled', script(fail(429), fail(408), ok()))
    const { runId } = await enqueueOne(db.pool, 'throttled')
    const done = await finished(db.pool, runId)
    expect(done).toMatchObject({ status: 'completed', attempt: 3 })
    expect(done.previous_attempts.map((p) => p.errorCode)).toEqual(['HTTP_429', 'HTTP_408'])
  })

  it('ends an exhausted run `failed` with exactly one DLQ row, written in the same transaction', async () => {
    worker.behave('doomed', () => fail(503, { error: 'down for good' }))
    const { runId } = await enqueueOne(db.pool, 'doomed', { input: { keep: 'me' } })
    const done = await finished(db.pool, runId)
    expect(done).toMatchObject({ status: 'failed', attempt: 3, error: 'down for good', error_code: 'HTTP_503' })
    expect(worker.requestsFor(runId)).toHaveLength(3)
    const dlq = await dlqFor(db.pool, runId)
    expect(dlq).toHaveLength(1)
    expect(dlq[0]).toMatchObject({ task_id: 'doomed', attempts: 3, error: 'down for good', error_code: 'HTTP_503' })
    expect(dlq[0].previous_attempts.map((p) => p.attempt)).toEqual([1, 2, 3])
    // One timestamp for the run's end and the DLQ row: one statement, one transaction.
    expect(dlq[0].failed_at.toISOString()).toBe(done.completed_at!.toISOString())
    const { rows: [raw] } = await db.pool.query<{ same: boolean }>(
      `SELECT d.failed_at = r.completed_at AND d.xmin = r.xmin AS same FROM dlq d JOIN task_run_history r ON r.id = d.task_run_id WHERE r.id = $1`, [runId])
    expect(raw.same).toBe(true)
    await run.waitForLog((l) => l.event === 'run' && l.runId === runId && l.status === 'failed')
  })

  it('lets a JSON error body set the error, the code and whether to retry', async () => {
    worker.behave('says-stop', () => fail(500, { error: 'input can never work', code: 'BAD_INPUT', retryable: false }))
    worker.behave('says-go', script(fail(400, { error: 'try again', code: 'LATER', retryable: true }), ok('ok now')))
    const stop = await enqueueOne(db.pool, 'says-stop')
    const go = await enqueueOne(db.pool, 'says-go')
    const stopped = await finished(db.pool, stop.runId)
    expect(stopped).toMatchObject({ status: 'failed', attempt: 1, error: 'input can never work', error_code: 'BAD_INPUT' })
    expect(await dlqFor(db.pool, stop.runId)).toHaveLength(1)
    const went = await finished(db.pool, go.runId)
    expect(went).toMatchObject({ status: 'completed', attempt: 2, output: 'ok now' })
    expect(went.previous_attempts).toEqual([expect.objectContaining({ error: 'try again', errorCode: 'LATER' })])
  })

  it('schedules retries by min(max_retry_delay_ms, retry_delay_ms × 2^(attempt−1))', async () => {
    const seen: Array<{ attempt: number; delayMs: number; startedLate: boolean }> = []
    worker.behave('backoff', async (r) => {
      if (r.attempt > 1) {
        const row = await getRun(db.pool, r.runId)
        const failedAt = new Date(row.previous_attempts[r.attempt - 2].at).getTime()
        seen.push({
          attempt: r.attempt,
          delayMs: Math.round(row.scheduled_for!.getTime() - failedAt),
          startedLate: row.started_at!.getTime() >= row.scheduled_for!.getTime(),
        })
      }
      return r.attempt < 4 ? fail(503) : ok('at last')
    })
    const { runId } = await enqueueOne(db.pool, 'backoff')
    const done = await finished(db.pool, runId)
    expect(done).toMatchObject({ status: 'completed', attempt: 4 })
    // 150 × 2^0, 150 × 2^1, then 150 × 2^2 = 600 capped at 400.
    expect(seen).toEqual([
      { attempt: 2, delayMs: 150, startedLate: true },
      { attempt: 3, delayMs: 300, startedLate: true },
      { attempt: 4, delayMs: 400, startedLate: true },
    ])
  })

  it('sends exactly the fields of the protocol, signed with PIPEWEAVE_SECRET_KEY', async () => {
    await db.pool.query(`INSERT INTO pipeline_runs (id) VALUES ('pr-shape')`)
    worker.behave('shape', (r) => {
      const ts = String(r.headers['x-pipeweave-timestamp'])
      const expected = `sha256=${crypto.createHmac('sha256', SECRET).update(`${ts}./tasks/shape.`).update(r.rawBody).digest('hex')}`
      return r.headers['x-pipeweave-signature'] === expected ? ok('verified') : fail(401, { error: 'bad signature' })
    })
    const { runId } = await enqueueOne(db.pool, 'shape', {
      input: { photo: 'a.png', sizes: [1, 2] }, inputPath: 's3://bucket/in.json', idempotencyKey: 'shape-key', pipelineRunId: 'pr-shape',
    })
    const done = await finished(db.pool, runId)
    expect(done).toMatchObject({ status: 'completed', output: 'verified' })

    const [request] = worker.requestsFor(runId)
    expect(request.path).toBe('/tasks/shape')
    expect(request.headers['content-type']).toMatch(/^application\/json/)
    expect(request.body).toEqual({
      runId, taskId: 'shape', pipelineRunId: 'pr-shape', attempt: 1, codeVersion: 1, codeHash: 'abc123',
      input: { photo: 'a.png', sizes: [1, 2] }, inputPath: 's3://bucket/in.json', previousAttempts: [], timeoutMs: 7000,
      idempotencyKey: 'shape-key',
    })
    // The timestamp is the send time in unix milliseconds, and the signature covers the exact bytes.
    const ts = Number(request.headers['x-pipeweave-timestamp'])
    expect(Math.abs(ts - request.arrivedAt)).toBeLessThan(5 * 60_000)
    expect(request.headers['x-pipeweave-signature']).toMatch(/^sha256=[0-9a-f]{64}$/)
    // Every dispatch of this file was signed.
    expect(worker.requests.every((r) => typeof r.headers['x-pipeweave-signature'] === 'string')).toBe(true)
  })

  it('fills the idempotency cache on completion, and completes a run whose key is cached without a dispatch', async () => {
    worker.behave('cached', (r) => ok({ computed: (r.body.input as { v: number }).v * 2 }))
    const first = await enqueueOne(db.pool, 'cached', { input: { v: 21 }, idempotencyKey: 'fill-me' })
    const done = await finished(db.pool, first.runId)
    expect(done).toMatchObject({ status: 'completed', output: { computed: 42 } })
    const { rows: [entry] } = await db.pool.query(
      `SELECT task_run_id, output, expires_at - cached_at AS ttl FROM idempotency_cache WHERE task_id = 'cached' AND idempotency_key = 'fill-me'`)
    expect(entry).toMatchObject({ task_run_id: first.runId, output: { computed: 42 }, ttl: { minutes: 1 } })
    expect(await enqueueOne(db.pool, 'cached', { input: { v: 21 }, idempotencyKey: 'fill-me' })).toEqual({ runId: first.runId, deduplicated: true })

    // A run queued before its key's result was cached (the entry arrives in the same transaction,
    // as from another writer): the claim finds the entry and completes the run from it.
    const client = await db.pool.connect()
    let runId: string
    try {
      await client.query('BEGIN')
      runId = (await enqueueOne(client, 'cached', { input: { v: 1 }, idempotencyKey: 'hit-me' })).runId
      await client.query(`INSERT INTO idempotency_cache (task_id, idempotency_key, output, expires_at)
                          VALUES ('cached', 'hit-me', '{"from": "cache"}', now() + interval '1 hour')`)
      await client.query('COMMIT')
    } finally {
      client.release()
    }
    const hit = await finished(db.pool, runId)
    expect(hit).toMatchObject({ status: 'completed', attempt: 1, output: { from: 'cache' } })
    expect(worker.requestsFor(runId)).toEqual([])
    await run.waitForLog((l) => l.runId === runId && l.status === 'completed' && l.cached === true)
  })

  it('creates the allowed follow-ups of runNext with the parent\'s output as input', async () => {
    await db.pool.query(`INSERT INTO pipeline_runs (id) VALUES ('pr-1')`)
    worker.behave('parent', () => ok({ step: 1, items: ['a', 'b'] }, ['child', 'other', 'no-such-task']))
    worker.behave('child', (r) => ok({ got: r.body.input }))
    const { runId } = await enqueueOne(db.pool, 'parent', { input: { start: true }, pipelineRunId: 'pr-1' })
    await finished(db.pool, runId)
    const { rows: children } = await db.pool.query<{ id: string; task_id: string }>(
      `SELECT id, task_id FROM ${ALL_RUNS} AS task_runs WHERE parent_run_id = $1`, [runId])
    expect(children.map((c) => c.task_id)).toEqual(['child'])
    const child = await finished(db.pool, children[0].id)
    expect(child).toMatchObject({
      status: 'completed', input: { step: 1, items: ['a', 'b'] }, pipeline_run_id: 'pr-1', output: { got: { step: 1, items: ['a', 'b'] } },
    })
    const [request] = worker.requestsFor(child.id)
    expect(request.body).toMatchObject({ pipelineRunId: 'pr-1', input: { step: 1, items: ['a', 'b'] } })
    expect(worker.requests.filter((r) => r.taskId === 'other')).toEqual([])
    await run.waitForLog((l) => l.runId === runId && /other/.test(l.msg) && /no-such-task/.test(l.msg), { what: 'the ignored follow-ups' })
  })

  it('never leaves a run `running` when its result cannot be stored (a NUL in the output or the error)', async () => {
    // PostgreSQL refuses \u0000 in jsonb and text; the orchestrator must still finish the run.
    worker.behave('nul-output', () => ok({ text: 'a\u0000b' }))
    worker.behave('nul-error', () => fail(500, { error: 'bad\u0000thing', code: 'NUL\u0000CODE' }))
    const a = await enqueueOne(db.pool, 'nul-output')
    const b = await enqueueOne(db.pool, 'nul-error')
    const outputRun = await finished(db.pool, a.runId, 15_000)
    expect(outputRun).toMatchObject({ status: 'failed', error_code: 'RESULT_REJECTED' })
    expect(await dlqFor(db.pool, a.runId)).toHaveLength(1)
    const errorRun = await finished(db.pool, b.runId, 15_000)
    expect(errorRun.status).toBe('failed')
    expect(errorRun.error).toContain('bad')
    expect(errorRun.error).not.toContain('\u0000')
    expect(await dlqFor(db.pool, b.runId)).toHaveLength(1)
  })

  it('never leaves a run `running` when its service\'s base URL is unusable', async () => {
    // Registration validates the URL; a runbook's SQL does not.
    await registerTasks(db.url, worker.url, [{ id: 'misrouted', retries: 0 }], 'misrouted-service')
    await db.pool.query(`UPDATE services SET base_url = 'http://exa mple:99999' WHERE id = 'misrouted-service'`)
    const { runId } = await enqueueOne(db.pool, 'misrouted')
    const done = await finished(db.pool, runId, 15_000)
    expect(done).toMatchObject({ status: 'failed', error_code: 'INVALID_URL' })
    expect(done.error).toContain('exa mple')
    expect(await dlqFor(db.pool, runId)).toHaveLength(1)
  })

  it('logs one JSON line per run state change with runId, taskId, attempt, status and durationMs', async () => {
    // Self-contained: its own database, tasks and `run` process, so it neither needs the tests
    // above (it runs alone with -t) nor shares their logs.
    const own = await createTestDatabase({ migrated: true })
    try {
      await registerTasks(own.url, worker.url, [
        { id: 'logged-retried', retries: 1, retryBackoff: 'fixed', retryDelayMs: 0 },
        { id: 'logged-refused', retries: 3 },
      ], 'logged')
      worker.behave('logged-retried', script(fail(503, { error: 'warming up' }), ok('done')))
      worker.behave('logged-refused', () => fail(400, { error: 'never' }))
      const ownRun = startRun(quickEnv({ ...own.env, PIPEWEAVE_SECRET_KEY: SECRET }), ['--log-format', 'json'])
      await ownRun.started()
      const retried = (await enqueueOne(own.pool, 'logged-retried')).runId
      const refused = (await enqueueOne(own.pool, 'logged-refused')).runId
      expect(await finished(own.pool, retried)).toMatchObject({ status: 'completed', attempt: 2 })
      expect(await finished(own.pool, refused)).toMatchObject({ status: 'failed', attempt: 1 })
      await ownRun.waitForLog((l) => l.event === 'run' && l.runId === retried && l.status === 'completed')
      await ownRun.waitForLog((l) => l.event === 'run' && l.runId === refused && l.status === 'failed')
      const exit = await ownRun.stop('SIGTERM')
      expect(exit.code).toBe(0)

      // Every line is JSON; each run state change is one line with the fields of SPEC §5.
      expect(ownRun.otherLines()).toEqual([])
      const changes = ownRun.logs().filter((l) => l.event === 'run')
      for (const line of changes) {
        expect(line).toEqual(expect.objectContaining({
          runId: expect.any(String), taskId: expect.any(String), attempt: expect.any(Number), status: expect.any(String),
        }))
        expect(line).toHaveProperty('durationMs')
      }
      const of = (runId: string) => changes.filter((l) => l.runId === runId).map((l) => [l.taskId, l.attempt, l.status])
      expect(of(retried)).toEqual([
        ['logged-retried', 1, 'running'], ['logged-retried', 1, 'pending'], ['logged-retried', 2, 'running'], ['logged-retried', 2, 'completed'],
      ])
      expect(of(refused)).toEqual([['logged-refused', 1, 'running'], ['logged-refused', 1, 'failed']])
      // Finished dispatches carry how long they took.
      const ended = changes.filter((l) => l.status !== 'running')
      expect(ended).toHaveLength(3)
      for (const line of ended) expect({ line, durationMs: typeof line.durationMs === 'number' && line.durationMs >= 0 }).toEqual({ line, durationMs: true })
      // The secret and the database password appear nowhere.
      const password = new URL(own.url).password
      expect(ownRun.stderr()).not.toContain(SECRET)
      if (password) expect(ownRun.stderr()).not.toContain(decodeURIComponent(password))
    } finally {
      await own.drop()
    }
  })
})
