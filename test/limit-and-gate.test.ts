/**
 * Two races the claim must survive (SPEC §5): a task's concurrency limit changing while runs of
 * it are enqueued, and the maintenance gate held open (a runbook's transaction on
 * orchestrator_state) while orchestrators claim.
 */
import type { PoolClient } from 'pg'
import { createTestDatabase, type TestDatabase } from './helpers/db'
import { enqueueMany, killLeftoverRuns, quickEnv, registerTasks, startRun, statusCounts, allIn } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { ok, startWorker, type StubWorker } from './helpers/worker'

const GATE = '7020304957001'

/** Wait until some backend of this database is waiting for a lock. */
async function someoneWaitsForALock(db: TestDatabase): Promise<void> {
  await waitFor(async () => {
    const { rows } = await db.pool.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`)
    return rows[0].n > 0
  }, { what: 'a backend to wait for a lock' })
}

describe('a limit changed while runs of its task are enqueued', () => {
  let db: TestDatabase
  beforeAll(async () => {
    db = await createTestDatabase({ migrated: true })
    await registerTasks(db.url, 'http://127.0.0.1:1', [{ id: 'flip', concurrency: 2 }])
    await db.pool.query(`INSERT INTO orchestrators (id, host, pid, version) VALUES ('o', 'h', 1, 'v')`)
  })
  afterAll(async () => { await db.drop() })

  it.each([
    ['removed (2 → 0)', 0, false],
    ['added (0 → 2)', 2, true],
  ])('limit %s: a run enqueued during the change is classified by the new limit and can be claimed', async (_what, to, limited) => {
    await db.pool.query(`UPDATE tasks SET concurrency = $1 WHERE id = 'flip'`, [to === 0 ? 2 : 0])
    const register: PoolClient = await db.pool.connect()
    try {
      // The registration's side, as services:register does it: the task row locked, the limit changed.
      await register.query('BEGIN')
      await register.query(`SELECT id FROM tasks WHERE id = 'flip' FOR NO KEY UPDATE`)
      await register.query(`UPDATE tasks SET concurrency = $1 WHERE id = 'flip'`, [to])
      // An enqueue meanwhile, which must not read the old limit.
      const enqueued = db.pool.query<{ run_id: string }>(`SELECT run_id FROM pipeweave_enqueue('flip', NULL, NULL, NULL, 0, NULL, NULL)`)
      await someoneWaitsForALock(db)
      await register.query('COMMIT')
      const runId = (await enqueued).rows[0].run_id
      const { rows: [row] } = await db.pool.query(`SELECT limited FROM task_runs WHERE id = $1`, [runId])
      expect(row.limited).toBe(limited)
      const { rows: claimed } = await db.pool.query(`SELECT id FROM pipeweave_claim_runs('o', 10)`)
      expect(claimed.map((r) => r.id)).toContain(runId)
      await db.pool.query(`UPDATE task_runs SET status = 'completed', completed_at = now() WHERE status = 'running'`)
    } finally {
      await register.query('ROLLBACK').catch(() => undefined)
      register.release()
    }
  })
})

describe('the maintenance gate held open', () => {
  let db: TestDatabase
  let worker: StubWorker
  beforeAll(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    worker.behave('job', () => ok('done'))
    await registerTasks(db.url, worker.url, [{ id: 'job', retries: 0 }])
  })
  afterEach(async () => { await killLeftoverRuns() })
  afterAll(async () => {
    await worker.close()
    await db.drop()
  })

  it('a claim gives up after its lock timeout instead of waiting past its client', async () => {
    const holder = await db.pool.connect()
    try {
      await holder.query('BEGIN')
      await holder.query(`SELECT pg_advisory_xact_lock(${GATE})`)
      await expect(db.pool.query(`SELECT * FROM pipeweave_claim_runs('o', 1)`)).rejects.toMatchObject({ code: '55P03' })
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined)
      holder.release()
    }
  })

  it('an orchestrator says the gate is held, claims nothing meanwhile, and carries on when it opens', async () => {
    const ids = await enqueueMany(db.pool, 'job', 3)
    const holder = await db.pool.connect()
    const run = startRun(quickEnv({ DATABASE_URL: db.url }), ['--log-format', 'json', '--poll-interval', '200'])
    try {
      await holder.query('BEGIN')
      await holder.query(`SELECT pg_advisory_xact_lock(${GATE})`)
      await run.started()
      await run.waitForLog((l) => l.event === 'gate-held', { timeoutMs: 20_000, what: 'the held gate to be logged' })
      expect(await statusCounts(db.pool)).toEqual({ pending: 3 })
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined)
      holder.release()
    }
    await waitFor(() => allIn(db.pool, ['completed'], ids), { timeoutMs: 20_000, what: 'the runs to complete once the gate opens' })
    expect((await run.stop('SIGTERM')).code).toBe(0)
  })
})
