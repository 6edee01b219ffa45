/**
 * Issue 12, acceptance 3 (SPEC §7, rate limits): a limit of 20 starts per 1,000 ms, three real
 * `pipeweave run` processes with concurrency 50 each, 400 runs, a real HTTP worker that answers
 * at once. No window of 1,000 ms of `started_at` (the server's clock, both ends included) holds
 * more than 20 starts. Changing the limit at runtime (the override columns, as `tasks:limit`
 * writes them; SQL here until the command exists) takes effect within one poll interval: raised
 * to 60, the new room is used at once; lowered to 5, no later window holds more than 5; cleared
 * (back to the manifest's 20), no later window holds more than 20. Fails without the rate limit:
 * the 400 runs start within a second.
 */
import { createTestDatabase, type TestDatabase } from './helpers/db'
import { allIn, enqueueMany, quickEnv, registerTasks, type RunProcess, startRun } from './helpers/orchestrator'
import { startInProcess } from './helpers/in-process'
import { waitFor } from './helpers/wait'
import { startWorker, type StubWorker } from './helpers/worker'

const POLL_MS = 300

describe('rate limits across orchestrators (issue 12, acceptance 3)', () => {
  let db: TestDatabase
  let worker: StubWorker
  const started: RunProcess[] = []

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [{ id: 'rated', retries: 0 }, { id: 'free', retries: 0 }])
    await db.pool.query(`UPDATE tasks SET rate_limit = 20, rate_period_ms = 1000 WHERE id = 'rated'`)
  })

  afterEach(async () => {
    await Promise.all(started.splice(0).map((r) => r.stop()))
    await worker.close()
    await db.drop()
  })

  /** Runs of `rated` started so far (the worker answers at once: started ≈ seen by the worker). */
  const startedCount = async () => (await db.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM (SELECT started_at FROM task_runs WHERE task_id = 'rated' AND started_at IS NOT NULL
                                     UNION ALL SELECT started_at FROM task_run_history WHERE task_id = 'rated') AS s`)).rows[0].n

  /**
   * Change the runtime limit (null: back to the manifest's). Returns the server's clock just
   * before the change commits, to the microsecond (ISO, UTC): every claim that sees the change
   * starts its runs later.
   */
  const setOverride = async (limit: number | null) => (await db.pool.query<{ at: string }>(`
    UPDATE tasks SET rate_override = $1::int IS NOT NULL, rate_override_limit = $1::int,
                     rate_override_period_ms = CASE WHEN $1::int IS NULL THEN NULL ELSE 1000 END
     WHERE id = 'rated'
    RETURNING to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at`, [limit])).rows[0].at

  /**
   * The most starts of `rated` within any window [s, s + 1000 ms] (s a start, both ends included),
   * counting only the starts in [from, to).
   */
  const busiestWindow = async (from: string | null, to: string | null) => (await db.pool.query<{ n: number }>(`
    SELECT COALESCE(max(n), 0)::int AS n FROM (
      SELECT count(*) OVER (ORDER BY started_at RANGE BETWEEN CURRENT ROW AND interval '1000 ms' FOLLOWING) AS n
        FROM task_run_history
       WHERE task_id = 'rated' AND ($1::timestamptz IS NULL OR started_at >= $1) AND ($2::timestamptz IS NULL OR started_at < $2)) AS w`,
  [from, to])).rows[0].n

  const startsBetween = async (from: string, to: string) => (await db.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM task_run_history WHERE task_id = 'rated' AND started_at > $1 AND started_at <= $2`, [from, to])).rows[0].n

  /** `at` plus `ms` milliseconds, to the microsecond (the server's arithmetic). */
  const later = async (at: string, ms: number) => (await db.pool.query<{ at: string }>(
    `SELECT to_char(($1::timestamptz + $2::int * interval '1 millisecond') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at`, [at, ms])).rows[0].at

  it('20 per 1,000 ms across 3 orchestrators of concurrency 50; a change takes effect within one poll interval', async () => {
    const procs = [0, 1, 2].map(() => startRun(quickEnv({ ...db.env, POLL_INTERVAL_MS: String(POLL_MS) }), ['--log-format', 'json', '--concurrency', '50']))
    started.push(...procs)
    await Promise.all(procs.map((p) => p.started()))
    const ids = await enqueueMany(db.pool, 'rated', 400)

    await waitFor(async () => (await startedCount()) >= 100, { timeoutMs: 30_000, what: '100 runs started at 20/s' })
    const raised = await setOverride(60)
    await waitFor(async () => (await startedCount()) >= 300, { timeoutMs: 30_000, what: '300 runs started' })
    const lowered = await setOverride(5)
    const atLowered = await startedCount()
    await waitFor(async () => (await startedCount()) >= atLowered + 15, { timeoutMs: 30_000, what: '15 more runs at 5/s' })
    const cleared = await setOverride(null)
    await waitFor(() => allIn(db.pool, ['completed'], ids), { timeoutMs: 60_000, what: 'all 400 runs to complete' })

    // Each run reached the worker once.
    expect(worker.requests).toHaveLength(400)
    expect(new Set(worker.requests.map((r) => r.runId)).size).toBe(400)
    // At 20 / 1,000 ms, before the first change.
    expect(await busiestWindow(null, raised)).toBe(20)
    // Raised to 60: the 40 new slots are used by a claim within one poll interval.
    expect(await startsBetween(raised, await later(raised, POLL_MS + 200))).toBeGreaterThanOrEqual(40)
    expect(await busiestWindow(null, lowered)).toBeLessThanOrEqual(60)
    // Lowered to 5: from one poll interval after the change, no window holds more than 5.
    expect(await busiestWindow(await later(lowered, POLL_MS), cleared)).toBeLessThanOrEqual(5)
    expect(await startsBetween(await later(lowered, POLL_MS), cleared)).toBeGreaterThanOrEqual(10)
    // Back to the manifest's 20.
    expect(await busiestWindow(await later(cleared, POLL_MS), null)).toBeLessThanOrEqual(20)
    expect(await busiestWindow(null, null)).toBeLessThanOrEqual(60)

    // The three took part (which one takes a window's slots is up to the race).
    const { rows } = await db.pool.query<{ n: number }>(`SELECT count(DISTINCT orchestrator_id)::int AS n FROM task_run_history`)
    expect(rows[0].n).toBeGreaterThanOrEqual(2)
    const exits = await Promise.all(procs.map((p) => p.stop()))
    expect(exits.map((e) => e.code)).toEqual([0, 0, 0])
  })

  it('a held-back run starts as soon as its window allows, not at the next poll; claims held back are counted per task (onRateLimited)', async () => {
    // A poll interval far longer than the period: only the claim's own word can wake it in time.
    await db.pool.query(`UPDATE tasks SET rate_limit = 5, rate_period_ms = 500 WHERE id = 'rated'`)
    const held = new Map<string, number>()
    const orchestrator = await startInProcess(db.url, {
      concurrency: 20, pollIntervalMs: 60_000, listen: true,
      hooks: { onRateLimited: (task) => held.set(task, (held.get(task) ?? 0) + 1) },
    })
    try {
      const ids = await enqueueMany(db.pool, 'rated', 30)
      await enqueueMany(db.pool, 'free', 5)
      const begun = Date.now()
      await waitFor(() => allIn(db.pool, ['completed'], ids), { timeoutMs: 20_000, what: 'the 30 runs at 5 per 500 ms' })
      // Six windows' worth: 5 at once, then 5 every 500 ms: about 2.5 s (not 6 polls of 60 s).
      expect(Date.now() - begun).toBeLessThan(6000)
      expect(await busiestWindow(null, null)).toBeLessThanOrEqual(10) // 1,000 ms holds two windows of 500
      expect(held.get('rated')).toBeGreaterThanOrEqual(1)
      expect(held.has('free')).toBe(false)
    } finally {
      expect(await orchestrator.stop()).toEqual({ exitCode: 0 })
    }
  })
})
