/**
 * dlq:list and dlq:retry against entries this test writes directly (issue 6, acceptance 3):
 * { entries } reflects the table exactly; a retry queues a fresh run with the failed run's input
 * and stamps the entry with retried_at and retry_run_id; refused (exit 4, nothing changed) unless
 * the mode is running; an entry is retried once; unknown ids exit 2.
 */
import { ALL_RUNS } from './helpers/db'
import type { Pool } from 'pg'
import { json, runCli } from './helpers/cli'
import type { TestDatabase } from './helpers/db'
import { migratedTestDatabase } from './helpers/surface'

const iso = (value: Date | null) => (value === null ? null : value.toISOString())

/** What dlq:list --json must print for an entry, mapped here independently of src/api/dlq.ts. */
async function expectedEntry(pool: Pool, id: string): Promise<Record<string, unknown>> {
  const { rows: [d] } = await pool.query('SELECT * FROM dlq WHERE id = $1', [id])
  return {
    id: d.id,
    taskRunId: d.task_run_id,
    taskId: d.task_id,
    error: d.error,
    errorCode: d.error_code,
    attempts: d.attempts,
    previousAttempts: (d.previous_attempts as Array<Record<string, unknown>>).map((a) => ({ ...a, at: new Date(a.at as string).toISOString() })),
    failedAt: iso(d.failed_at),
    retriedAt: iso(d.retried_at),
    retryRunId: d.retry_run_id,
  }
}

let serial = 0

/** A failed run (in the history) and its DLQ entry, as a failed last attempt leaves them. */
async function deadLetter(pool: Pool, options: {
  task: string; input?: unknown; priority?: number; failedAt: string; retriedAt?: string; inputPath?: string; pipelineRunId?: string
}): Promise<{ entryId: string; runId: string }> {
  serial += 1
  const runId = `failed-run-${serial}`
  const entryId = `entry-${serial}`
  const attempts = [
    { attempt: 1, error: 'first try', errorCode: 'E1', at: '2026-03-01T09:00:00.25+00:00' },
    { attempt: 2, error: `gave up ${serial}`, errorCode: 'E2', at: options.failedAt },
  ]
  await pool.query(
    `INSERT INTO task_run_history (id, task_id, status, attempt, priority, input, input_path, pipeline_run_id, error, error_code, previous_attempts, created_at, completed_at)
     VALUES ($1, $2, 'failed', 2, $3, $4, $5, $6, $7, 'E2', $8, $9::timestamptz - interval '1 minute', $9)`,
    [runId, options.task, options.priority ?? 100, options.input === undefined ? null : JSON.stringify(options.input),
      options.inputPath ?? null, options.pipelineRunId ?? null, `gave up ${serial}`, JSON.stringify(attempts.slice(0, 1)), options.failedAt],
  )
  await pool.query(
    `INSERT INTO dlq (id, task_run_id, task_id, error, error_code, attempts, previous_attempts, failed_at, retried_at)
     VALUES ($1, $2, $3, $4, 'E2', 2, $5, $6, $7)`,
    [entryId, runId, options.task, `gave up ${serial}`, JSON.stringify(attempts), options.failedAt, options.retriedAt ?? null],
  )
  return { entryId, runId }
}

describe('dlq:list and dlq:retry', () => {
  let db: TestDatabase
  const cli = (args: string[]) => runCli(args, { env: db.env })
  const count = async (sql: string, values: unknown[] = []) => (await db.pool.query(sql, values)).rows[0].n as number
  const runCount = () => count(`SELECT count(*)::int AS n FROM ${ALL_RUNS} AS task_runs`)
  const setMode = (mode: string) => db.pool.query(`UPDATE orchestrator_state SET mode = $1 WHERE id = 'singleton'`, [mode])

  beforeAll(async () => {
    db = await migratedTestDatabase('pw_dlq_cmds')
    await db.pool.query(`INSERT INTO services (id, version, base_url) VALUES ('svc', '1', 'http://127.0.0.1:9')`)
    await db.pool.query(`INSERT INTO tasks (id, service_id, priority) VALUES ('mail', 'svc', 100), ('resize', 'svc', 100), ('report', 'svc', 100)`)
    await db.pool.query(`INSERT INTO pipeline_runs (id) VALUES ('pipe-9')`)
  })
  afterAll(async () => {
    await db.drop()
  })

  describe('dlq:list', () => {
    const entries: string[] = []
    beforeAll(async () => {
      // Written oldest to newest; the list shows newest first.
      entries.push((await deadLetter(db.pool, { task: 'mail', input: { to: 'a@example.com' }, failedAt: '2026-03-01T10:00:00.000Z' })).entryId)
      entries.push((await deadLetter(db.pool, { task: 'resize', input: null, failedAt: '2026-03-01T11:00:00.500Z', retriedAt: '2026-03-01T12:00:00Z' })).entryId)
      entries.push((await deadLetter(db.pool, { task: 'mail', input: ['x'], failedAt: '2026-03-01T12:30:00.000Z' })).entryId)
    })
    afterAll(async () => {
      await db.pool.query('DELETE FROM dlq')
    })
    const ids = async (args: string[]) => json<{ entries: Array<{ id: string }> }>(await cli(['dlq:list', '--json', ...args])).entries.map((e) => e.id)

    it('prints { entries } newest first, every field as in the table', async () => {
      const result = await cli(['dlq:list', '--json'])
      expect(result.code).toBe(0)
      const body = json<{ entries: Array<Record<string, unknown>> }>(result)
      expect(Object.keys(body)).toEqual(['entries'])
      expect(body.entries).toEqual(await Promise.all([...entries].reverse().map((id) => expectedEntry(db.pool, id))))
      // Spot checks of the mapping itself.
      expect(body.entries[1]).toMatchObject({
        taskId: 'resize', attempts: 2, errorCode: 'E2', failedAt: '2026-03-01T11:00:00.500Z', retriedAt: '2026-03-01T12:00:00.000Z', retryRunId: null,
      })
      expect(body.entries[2].previousAttempts).toEqual([
        { attempt: 1, error: 'first try', errorCode: 'E1', at: '2026-03-01T09:00:00.250Z' },
        { attempt: 2, error: 'gave up 1', errorCode: 'E2', at: '2026-03-01T10:00:00.000Z' },
      ])
    })

    it('filters by --task, --pending (not yet retried) and --limit', async () => {
      expect(await ids(['--task', 'mail'])).toEqual([entries[2], entries[0]])
      expect(await ids(['--pending'])).toEqual([entries[2], entries[0]])
      expect(await ids(['--task', 'resize', '--pending'])).toEqual([])
      expect(await ids(['--limit', '1'])).toEqual([entries[2]])
    })

    it('shows a table fitted to 80 columns, or says the DLQ is empty', async () => {
      const table = await cli(['dlq:list'])
      expect(table.code).toBe(0)
      const lines = table.stdout.trimEnd().split('\n')
      expect(Math.max(...lines.map((l) => [...l].length))).toBeLessThanOrEqual(80)
      expect(lines[0].split(/\s{2,}/)).toEqual(['Entry', 'Task', 'Run', 'Tries', 'Failed', 'Error', 'Retried as'])
      expect(lines[3]).toMatch(new RegExp(`^${entries[0]} +mail +failed-run-\\d+ +2 +\\d+d ago +E2: gave up \\d+$`))
      const empty = await cli(['dlq:list', '--task', 'nothing-here'])
      expect(empty.stdout.trim()).toBe('The DLQ is empty.')
    })

    it('--wide shows every column whole; --columns picks; --output csv and json', async () => {
      const wide = await cli(['dlq:list', '--wide'])
      expect(wide.stdout).toMatch(new RegExp(`\\| ${entries[0]} +\\| mail +\\| failed-run-\\d+ +\\| 2 +\\| 2026-03-01T10:00:00.000Z \\| E2: gave up \\d+ +\\| +\\| +\\|`))
      expect(wide.stdout).toMatch(new RegExp(`\\| ${entries[1]} +\\| resize .*\\| 2026-03-01T12:00:00.000Z \\| +\\|`))
      const picked = await cli(['dlq:list', '--columns', 'task,id'])
      expect(picked.stdout.trim().split('\n')).toEqual(['Task    Entry', `mail    ${entries[2]}`, `resize  ${entries[1]}`, `mail    ${entries[0]}`])
      const csv = await cli(['dlq:list', '--output', 'csv', '--limit', '1'])
      expect(csv.stdout.trim()).toBe(`id,task,run,attempts,failed,error,retried,retry-run\r\n${entries[2]},mail,failed-run-3,2,2026-03-01T12:30:00.000Z,E2: gave up 3,,`)
      expect(JSON.parse((await cli(['dlq:list', '--output', 'json'])).stdout)).toEqual(JSON.parse((await cli(['dlq:list', '--json'])).stdout))
    })
  })

  describe('dlq:retry', () => {
    afterEach(async () => {
      await setMode('running')
    })

    it('queues a fresh run with the failed run\'s input and stamps the entry', async () => {
      const { entryId, runId: failedRun } = await deadLetter(db.pool, {
        task: 'report', input: { day: '2026-11-23', nested: [1, { a: 'ü' }] }, priority: 7, inputPath: 's3://in/7', pipelineRunId: 'pipe-9',
        failedAt: '2026-03-02T08:00:00Z',
      })
      const before = new Date()
      const result = await cli(['dlq:retry', entryId, '--json'])
      expect(result.code).toBe(0)
      const body = json<{ retried: Array<{ id: string; runId: string }>; refused: unknown[] }>(result)
      expect(body).toEqual({ retried: [{ id: entryId, runId: expect.any(String) }], refused: [] })
      const newRun = body.retried[0].runId
      expect(newRun).not.toBe(failedRun)

      const { rows: [run] } = await db.pool.query(`SELECT * FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [newRun])
      expect(run).toMatchObject({
        task_id: 'report', status: 'pending', attempt: 1, priority: 7, input: { day: '2026-11-23', nested: [1, { a: 'ü' }] },
        input_path: 's3://in/7', pipeline_run_id: 'pipe-9', output: null, error: null, previous_attempts: [], scheduled_for: null, started_at: null,
      })
      const entry = await expectedEntry(db.pool, entryId)
      expect(entry.retryRunId).toBe(newRun)
      expect(new Date(entry.retriedAt as string).getTime()).toBeGreaterThanOrEqual(before.getTime() - 5_000)
      // The failed run itself is left as it was.
      expect((await db.pool.query('SELECT status FROM task_run_history WHERE id = $1', [failedRun])).rows[0].status).toBe('failed')
      // dlq:list shows the stamp.
      const listed = json<{ entries: Array<Record<string, unknown>> }>(await cli(['dlq:list', '--json', '--task', 'report'])).entries
      expect(listed.find((e) => e.id === entryId)).toEqual(entry)
    })

    it('is refused with exit 4 unless the mode is running, and changes nothing', async () => {
      const { entryId } = await deadLetter(db.pool, { task: 'mail', input: { n: 1 }, failedAt: '2026-03-02T09:00:00Z' })
      for (const mode of ['waiting_for_maintenance', 'maintenance']) {
        await setMode(mode)
        const runsBefore = await runCount()
        const entryBefore = await expectedEntry(db.pool, entryId)
        for (const args of mode === 'maintenance' ? [[entryId], ['--all']] : [[entryId]]) {
          const result = await cli(['dlq:retry', ...args, '--json'])
          expect({ mode, args, code: result.code }).toEqual({ mode, args, code: 4 })
          expect(json(result)).toMatchObject({ error: { code: 'MAINTENANCE_MODE' }, exitCode: 4 })
        }
        expect(await runCount()).toBe(runsBefore)
        expect(await expectedEntry(db.pool, entryId)).toEqual(entryBefore)
      }
      await setMode('running')
      expect((await cli(['dlq:retry', entryId])).code).toBe(0)
    })

    it('retries an entry only once: a second retry is refused with exit 4', async () => {
      const { entryId } = await deadLetter(db.pool, { task: 'mail', input: { n: 2 }, failedAt: '2026-03-02T10:00:00Z' })
      const first = await cli(['dlq:retry', entryId])
      expect(first.code).toBe(0)
      const runId = /as run (\S+)/.exec(first.stdout)?.[1]
      expect(first.stdout.trim()).toBe(`retried ${entryId} as run ${runId}`)
      const runsBefore = await runCount()
      const entryBefore = await expectedEntry(db.pool, entryId)
      const second = await cli(['dlq:retry', entryId, '--json'])
      expect(second.code).toBe(4)
      expect(json<{ error: { code: string; message: string } }>(second).error).toMatchObject({
        code: 'NOT_RETRIABLE', message: expect.stringContaining(`already retried as run ${runId}`),
      })
      expect(await runCount()).toBe(runsBefore)
      expect(await expectedEntry(db.pool, entryId)).toEqual(entryBefore)
    })

    it('with an entry already retried beside a fresh one, retries the fresh one and says which run it became', async () => {
      const done = await deadLetter(db.pool, { task: 'mail', input: { n: 3 }, failedAt: '2026-03-02T11:00:00Z' })
      expect((await cli(['dlq:retry', done.entryId])).code).toBe(0)
      const fresh = await deadLetter(db.pool, { task: 'mail', input: { n: 4 }, failedAt: '2026-03-02T11:30:00Z' })
      const result = await cli(['dlq:retry', done.entryId, fresh.entryId, '--json'])
      expect(result.code).toBe(4)
      const entry = await expectedEntry(db.pool, fresh.entryId)
      expect(entry.retryRunId).toEqual(expect.any(String))
      // The refusal must not swallow the id of the run that was queued.
      expect(json<{ error: { message: string } }>(result).error.message).toContain(`retried ${fresh.entryId} as run ${entry.retryRunId}`)
    })

    it('exits 2 for an unknown id, and then retries nothing', async () => {
      const { entryId } = await deadLetter(db.pool, { task: 'mail', input: { n: 5 }, failedAt: '2026-03-02T12:00:00Z' })
      const runsBefore = await runCount()
      const result = await cli(['dlq:retry', entryId, 'no-such-entry', '--json'])
      expect(result.code).toBe(2)
      expect(json(result)).toMatchObject({ error: { code: 'UNKNOWN_DLQ_ENTRY' }, exitCode: 2 })
      expect(await runCount()).toBe(runsBefore)
      expect((await expectedEntry(db.pool, entryId)).retriedAt).toBeNull()
      await cli(['dlq:retry', entryId]) // leave nothing pending for --all below
    })

    it('exits 2 without ids and without --all, and with both', async () => {
      expect((await cli(['dlq:retry'])).code).toBe(2)
      expect((await cli(['dlq:retry', 'entry-1', '--all'])).code).toBe(2)
    })

    it('--all retries every entry not yet retried, each with its own input, then finds nothing to retry', async () => {
      await db.pool.query('DELETE FROM dlq WHERE retried_at IS NULL')
      const a = await deadLetter(db.pool, { task: 'mail', input: { n: 'a' }, failedAt: '2026-03-03T08:00:00Z' })
      const b = await deadLetter(db.pool, { task: 'resize', input: { n: 'b' }, failedAt: '2026-03-03T09:00:00Z' })
      const old = await deadLetter(db.pool, { task: 'report', input: { n: 'old' }, failedAt: '2026-03-03T10:00:00Z', retriedAt: '2026-03-03T11:00:00Z' })
      const result = await cli(['dlq:retry', '--all', '--json'])
      expect(result.code).toBe(0)
      const { retried, refused } = json<{ retried: Array<{ id: string; runId: string }>; refused: unknown[] }>(result)
      expect(refused).toEqual([])
      expect(retried.map((r) => r.id)).toEqual([a.entryId, b.entryId])
      for (const [entry, n, task] of [[a, 'a', 'mail'], [b, 'b', 'resize']] as const) {
        const runId = retried.find((r) => r.id === entry.entryId)!.runId
        const { rows: [run] } = await db.pool.query(`SELECT task_id, status, input FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [runId])
        expect(run).toEqual({ task_id: task, status: 'pending', input: { n } })
        expect((await expectedEntry(db.pool, entry.entryId)).retryRunId).toBe(runId)
      }
      expect((await expectedEntry(db.pool, old.entryId)).retryRunId).toBeNull()

      const again = await cli(['dlq:retry', '--all'])
      expect(again.code).toBe(0)
      expect(again.stdout.trim()).toBe('Nothing to retry.')
    })
  })
})
