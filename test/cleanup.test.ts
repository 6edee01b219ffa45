/**
 * db:cleanup (SPEC §3): exactly the expired cache rows, the DLQ rows past retention and (when
 * asked) old finished runs; never a live run; batches; --dry-run; one cleanup at a time.
 */
import { runCleanup } from '../src/api/cleanup'
import { json, runCli } from './helpers/cli'
import { apiDatabase, createTestDatabase, type TestDatabase } from './helpers/db'

const DAY = 86_400_000

/** Runs: [id, status, completed days ago (null = not completed)]. */
const RUNS: Array<[string, string, number | null]> = [
  ['pending-old', 'pending', null],
  ['running-old', 'running', null],
  ['waiting-old', 'waiting', null],
  // Live statuses with an old completed_at all the same (a retried run keeps its old one, say).
  ['pending-odd', 'pending', 100],
  ['running-odd', 'running', 100],
  ['waiting-odd', 'waiting', 100],
  ['done-old-1', 'completed', 100],
  ['done-old-2', 'completed', 99],
  ['done-old-3', 'completed', 98],
  ['done-old-4', 'completed', 97],
  ['done-old-5', 'completed', 96],
  ['timeout-old', 'timeout', 95],
  ['cancelled-old', 'cancelled', 94],
  ['failed-held', 'failed', 100], // a recent DLQ entry points to it: kept
  ['failed-released', 'failed', 100], // only old DLQ entries point to it: they go first, then it goes
  ['done-recent', 'completed', 1],
]
const DELETABLE_RUNS = ['done-old-1', 'done-old-2', 'done-old-3', 'done-old-4', 'done-old-5', 'timeout-old', 'cancelled-old', 'failed-released']

/** DLQ entries: [id, run, failed days ago, retry run]. */
const DLQ: Array<[string, string, number, string | null]> = [
  ['dlq-old-1', 'failed-released', 40, null],
  ['dlq-old-2', 'failed-released', 35, null],
  ['dlq-old-3', 'failed-released', 31, null],
  ['dlq-old-4', 'done-old-1', 60, null],
  ['dlq-old-retried', 'failed-held', 45, 'done-recent'],
  ['dlq-recent', 'failed-held', 1, null],
  ['dlq-almost', 'failed-held', 29, null],
]

/** Cache entries: [key, run, expires in ms (negative = expired)]. */
const CACHE: Array<[string, string | null, number]> = [
  ['k-exp-1', 'done-old-1', -3_600_000],
  ['k-exp-2', null, -DAY],
  ['k-exp-3', 'pending-old', -60_000],
  ['k-exp-4', null, -30 * DAY],
  ['k-exp-5', 'done-recent', -1000],
  ['k-live-1', 'done-old-2', DAY], // its run goes: the entry stays, pointing nowhere
  ['k-live-2', 'pending-old', DAY],
  ['k-live-3', null, 3_600_000],
]

interface CleanupJson {
  idempotencyCache: number
  dlq: number
  taskRuns: number
  dryRun: boolean
}

describe('db:cleanup', () => {
  let db: TestDatabase
  beforeAll(async () => { db = await createTestDatabase({ migrated: true }) })
  afterAll(async () => { await db.drop() })

  /** The runs' ids by name: time-ordered like pipeweave's own (their creation time, then a counter). */
  const idOf = new Map<string, string>()
  const nameOf = (id: string) => [...idOf].find(([, v]) => v === id)?.[0] ?? id
  const LIVE = new Set(['pending', 'running', 'waiting'])

  beforeEach(async () => {
    await db.pool.query('TRUNCATE idempotency_cache, dlq, task_runs, task_run_history, tasks, services, leases CASCADE')
    await db.pool.query(`INSERT INTO services (id, version, base_url) VALUES ('svc', '1', 'http://127.0.0.1:1')`)
    await db.pool.query(`INSERT INTO tasks (id, service_id) VALUES ('t', 'svc')`)
    idOf.clear()
    for (const [n, [name, status, daysAgo]] of RUNS.entries()) {
      // Live runs are in task_runs, finished ones in the history (where a finished run moves).
      const { rows: [row] } = await db.pool.query<{ id: string }>(
        `INSERT INTO ${LIVE.has(status) ? 'task_runs' : 'task_run_history'} (id, task_id, status, attempt, priority, created_at, completed_at)
         SELECT lpad(to_hex((extract(epoch FROM c.at) * 1000)::bigint), 12, '0') || lpad(to_hex($4::int), 8, '0'),
                't', $1, 1, 100, c.at, CASE WHEN $2::int IS NULL THEN NULL ELSE now() - make_interval(days => $2::int) END
           FROM (SELECT now() - interval '200 days' + $3::int * interval '1 second' AS at) AS c
         RETURNING id`,
        [status, daysAgo, n, n + 1])
      idOf.set(name, row.id)
    }
    for (const [id, run, daysAgo, retry] of DLQ) {
      await db.pool.query(
        `INSERT INTO dlq (id, task_run_id, task_id, error, attempts, failed_at, retried_at, retry_run_id)
         VALUES ($1, $2, 't', 'boom', 3, now() - make_interval(days => $3::int), CASE WHEN $4::text IS NULL THEN NULL ELSE now() END, $4)`,
        [id, idOf.get(run), daysAgo, retry === null ? null : idOf.get(retry)])
    }
    for (const [key, run, expiresInMs] of CACHE) {
      await db.pool.query(
        `INSERT INTO idempotency_cache (task_id, idempotency_key, task_run_id, output, expires_at)
         VALUES ('t', $1, $2, '{"ok":true}', now() + make_interval(secs => $3::float8 / 1000))`,
        [key, run === null ? null : idOf.get(run), expiresInMs])
    }
  })

  const ids = async (sql: string) => (await db.pool.query<{ id: string }>(sql)).rows.map((r) => r.id).sort()
  const runIds = async () => (await ids('SELECT id FROM task_runs UNION ALL SELECT id FROM task_run_history')).map(nameOf).sort()
  const dlqIds = () => ids('SELECT id FROM dlq')
  const cacheKeys = () => ids('SELECT idempotency_key AS id FROM idempotency_cache')

  it('deletes exactly the expired cache entries and the DLQ entries past retention, and no run without --runs-retention-days', async () => {
    const result = await runCli(['db:cleanup', '--json'], { env: db.env })
    expect(result.code).toBe(0)
    expect(json(result)).toEqual({ idempotencyCache: 5, dlq: 5, taskRuns: 0, dryRun: false })
    expect(await cacheKeys()).toEqual(['k-live-1', 'k-live-2', 'k-live-3'])
    expect(await dlqIds()).toEqual(['dlq-almost', 'dlq-recent'])
    expect(await runIds()).toEqual(RUNS.map(([id]) => id).sort())
  })

  it('with --runs-retention-days deletes old finished runs only, keeping live runs and runs a DLQ entry holds, in batches of --batch-size', async () => {
    const result = await runCli(['db:cleanup', '--json', '--runs-retention-days', '30', '--batch-size', '2'], { env: db.env })
    expect(result.code).toBe(0)
    expect(json(result)).toEqual({ idempotencyCache: 5, dlq: 5, taskRuns: DELETABLE_RUNS.length, dryRun: false })
    expect(await runIds()).toEqual(RUNS.map(([id]) => id).filter((id) => !DELETABLE_RUNS.includes(id)).sort())
    expect(await dlqIds()).toEqual(['dlq-almost', 'dlq-recent'])

    // The cache entry of a deleted run stays valid until it expires, pointing nowhere.
    const { rows } = (await db.pool.query('SELECT idempotency_key, task_run_id FROM idempotency_cache ORDER BY 1'))
    for (const row of rows) row.task_run_id = row.task_run_id === null ? null : nameOf(row.task_run_id)
    expect(rows).toEqual([
      { idempotency_key: 'k-live-1', task_run_id: null },
      { idempotency_key: 'k-live-2', task_run_id: 'pending-old' },
      { idempotency_key: 'k-live-3', task_run_id: null },
    ])
  })

  it('prints only the counts (cron-friendly)', async () => {
    const result = await runCli(['db:cleanup', '--runs-retention-days', '30'], { env: db.env })
    expect(result.code).toBe(0)
    expect(result.stdout).toBe(`deleted: idempotency cache 5, dlq 5, task runs ${DELETABLE_RUNS.length}\n`)
    expect(result.stderr).toBe('')
  })

  it('--dry-run deletes nothing and reports what the same cleanup would delete', async () => {
    const before = [await runIds(), await dlqIds(), await cacheKeys()]
    const dry = await runCli(['db:cleanup', '--json', '--dry-run', '--runs-retention-days', '30'], { env: db.env })
    expect(dry.code).toBe(0)
    expect([await runIds(), await dlqIds(), await cacheKeys()]).toEqual(before)

    const real = await runCli(['db:cleanup', '--json', '--runs-retention-days', '30'], { env: db.env })
    expect(json(dry)).toEqual({ ...json<CleanupJson>(real), dryRun: true })
    expect(json(dry)).toEqual({ idempotencyCache: 5, dlq: 5, taskRuns: DELETABLE_RUNS.length, dryRun: true })

    const human = await runCli(['db:cleanup', '--dry-run'], { env: db.env })
    expect(human.stdout).toBe('would delete: idempotency cache 0, dlq 0, task runs 0\n')
  })

  it('honours --dlq-retention-days', async () => {
    const result = await runCli(['db:cleanup', '--json', '--dlq-retention-days', '0', '--dry-run'], { env: db.env })
    expect(json<CleanupJson>(result).dlq).toBe(DLQ.length)
    const week = await runCli(['db:cleanup', '--json', '--dlq-retention-days', '7'], { env: db.env })
    expect(json<CleanupJson>(week).dlq).toBe(6)
    expect(await dlqIds()).toEqual(['dlq-recent'])
  })

  it('works through the API in batches: no statement deletes more than the batch size', async () => {
    const api = await apiDatabase(db.url)
    try {
      const batches: Array<[string, number]> = []
      const result = await runCleanup(api, { batchSize: 2, runsRetentionDays: 30, onBatch: (table, deleted) => batches.push([table, deleted]) })
      expect(result).toEqual({ idempotencyCache: 5, dlq: 5, taskRuns: DELETABLE_RUNS.length, dryRun: false })
      for (const [, deleted] of batches) expect(deleted).toBeLessThanOrEqual(2)
      expect(batches.filter(([table]) => table === 'idempotencyCache').map(([, n]) => n)).toEqual([2, 2, 1])
    } finally {
      await api.close()
    }
  })

  it('a second cleanup while one runs exits 0, says so, and deletes nothing', async () => {
    // The other cleanup holds the lease (a row, renewed by each of its batches).
    await db.pool.query(`INSERT INTO leases (name, holder, expires_at) VALUES ('db:cleanup', 'another cleanup', now() + interval '1 minute')`)
    try {
      const human = await runCli(['db:cleanup', '--runs-retention-days', '30'], { env: db.env })
      expect(human.code).toBe(0)
      expect(human.stdout).toBe('')
      expect(human.stderr).toMatch(/another db:cleanup is running/)

      const machine = await runCli(['db:cleanup', '--json'], { env: db.env })
      expect(machine.code).toBe(0)
      expect(json(machine)).toMatchObject({ idempotencyCache: 0, dlq: 0, taskRuns: 0, dryRun: false })
      expect((await cacheKeys()).length).toBe(CACHE.length)
      expect((await runIds()).length).toBe(RUNS.length)
    } finally {
      await db.pool.query(`DELETE FROM leases`)
    }
  })

  it('takes over the lease of a cleanup that died (its lease lapsed)', async () => {
    await db.pool.query(`INSERT INTO leases (name, holder, expires_at) VALUES ('db:cleanup', 'a crashed cleanup', now() - interval '1 second')`)
    const result = await runCli(['db:cleanup', '--json'], { env: db.env })
    expect(result.code).toBe(0)
    expect(json(result)).toEqual({ idempotencyCache: 5, dlq: 5, taskRuns: 0, dryRun: false })
    // Released at the end: nothing is left held.
    expect((await db.pool.query('SELECT * FROM leases')).rows).toEqual([])
  })

  it('refuses a batch size below 1 (exit 2, saying why)', async () => {
    const result = await runCli(['db:cleanup', '--batch-size', '0'], { env: db.env })
    expect(result.code).toBe(2)
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(result.stderr).toMatch(/--batch-size.*(greater than or equal to 1|at least 1)/)
  })

  it('on a database that was never initialized: exit 4 saying to run db:init, not "a bug"', async () => {
    const empty = await createTestDatabase()
    try {
      const result = await runCli(['db:cleanup', '--json'], { env: empty.env })
      expect(result.code).toBe(4)
      expect(json(result)).toEqual({ error: { code: 'NOT_INITIALIZED', message: expect.stringContaining('not initialized'), hint: expect.stringContaining('pipeweave db:init') }, exitCode: 4 })
    } finally {
      await empty.drop()
    }
  })
})
