/**
 * Two races the claim must survive (SPEC §5): a task's concurrency limit changing while runs of
 * it are enqueued, and the maintenance gate held open (a runbook's transaction on
 * orchestrator_state) while orchestrators claim.
 */
import type { PoolClient } from 'pg'
import { schemaOf } from '../src/sql/schema'
import { createTestDatabase, type TestDatabase, TEST_SCHEMA } from './helpers/db'
import { claim, complete, heartbeat } from './helpers/maintenance-fixtures'
import { enqueueMany, enqueueOne, quickEnv, registerTasks, startRun, statusCounts, allIn } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { ok, startWorker, type StubWorker } from './helpers/worker'

/** The maintenance gate's advisory-lock key, as SQL (src/sql/schema.ts). */
const GATE = schemaOf(TEST_SCHEMA).gateKey

describe('a limit changed while runs of its task are enqueued and claimed', () => {
  let db: TestDatabase
  beforeAll(async () => {
    db = await createTestDatabase({ migrated: true })
    await registerTasks(db.url, 'http://127.0.0.1:1', [{ id: 'flip', concurrency: 2 }])
    await heartbeat(db.pool, 'o')
  })
  afterAll(async () => { await db.drop() })

  it.each([
    ['removed (2 → 0)', 2, 0, 5],
    ['added (0 → 2)', 0, 2, 2],
  ])('limit %s: an enqueue does not wait for the registration, and the next claim obeys the new limit', async (_what, from, to, claimable) => {
    await db.pool.query(`DELETE FROM task_runs`)
    await db.pool.query(`UPDATE tasks SET concurrency = $1 WHERE id = 'flip'`, [from])
    const register: PoolClient = await db.pool.connect()
    try {
      // The registration's side, as services:register does it: the task row locked, the limit changed.
      await register.query('BEGIN')
      await register.query(`SELECT id FROM tasks WHERE id = 'flip' FOR NO KEY UPDATE`)
      await register.query(`UPDATE tasks SET concurrency = $1 WHERE id = 'flip'`, [to])
      // Enqueues meanwhile finish at once: the claim, not the enqueue, reads the limit.
      const enqueued = await Promise.all([1, 2, 3, 4, 5].map(() => enqueueOne(db.pool, 'flip')))
      await register.query('COMMIT')
      const claimed = await claim(db.pool, 'o', 10)
      expect(claimed).toHaveLength(claimable)
      expect(enqueued.map((e) => e.runId)).toEqual(expect.arrayContaining(claimed))
      for (const id of claimed) await complete(db.pool, id, 'o')
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
  afterAll(async () => {
    await worker.close()
    await db.drop()
  })

  it('a claim gives up after its lock timeout instead of waiting past its client', async () => {
    await heartbeat(db.pool, 'o')
    const holder = await db.pool.connect()
    try {
      await holder.query('BEGIN')
      await holder.query(`SELECT pg_advisory_xact_lock(${GATE})`)
      await expect(claim(db.pool, 'o', 1)).rejects.toMatchObject({ code: '55P03' })
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined)
      holder.release()
    }
  })

  it('an orchestrator says the gate is held, claims nothing meanwhile, and carries on when it opens', async () => {
    const ids = await enqueueMany(db.pool, 'job', 3)
    const holder = await db.pool.connect()
    const run = startRun(quickEnv(db.env), ['--log-format', 'json', '--poll-interval', '200'])
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
