/**
 * Every query on task_runs is served by an index (STYLE.md): the plans of the claim, the drain
 * check, the status counts and the listings, with sequential scans off, name the indexes the
 * migrations create for them. Statements inside the SQL functions are seen through auto_explain,
 * whose plans arrive as notices.
 */
import type { PoolClient } from 'pg'
import { createTestDatabase, type TestDatabase } from './helpers/db'
import * as dlq from '../src/sql/dlq'
import * as runs from '../src/sql/task-runs'
import * as state from '../src/sql/orchestrator-state'

describe('query plans', () => {
  let db: TestDatabase
  let client: PoolClient
  const notices: string[] = []

  beforeAll(async () => {
    db = await createTestDatabase({ migrated: true })
    await db.pool.query(`INSERT INTO services (id, version, base_url) VALUES ('s', '1', 'http://127.0.0.1:1')`)
    await db.pool.query(`INSERT INTO tasks (id, service_id, concurrency) VALUES ('plain', 's', 0), ('limited', 's', 2), ('rare', 's', 0)`)
    await db.pool.query(`INSERT INTO orchestrators (id, host, pid, version) VALUES ('o', 'h', 1, 'v')`)
    // Some of everything: finished history, due, scheduled, limited, running.
    await db.pool.query(`INSERT INTO task_runs (task_id, status, completed_at) SELECT 'plain', 'completed', now() FROM generate_series(1, 2000)`)
    await db.pool.query(`INSERT INTO task_runs (task_id, status, completed_at) SELECT 'plain', 'failed', now() FROM generate_series(1, 20)`)
    await db.pool.query(`INSERT INTO task_runs (task_id) SELECT 'plain' FROM generate_series(1, 50)`)
    await db.pool.query(`INSERT INTO task_runs (task_id, scheduled_for) SELECT 'plain', now() + interval '1 hour' FROM generate_series(1, 50)`)
    await db.pool.query(`INSERT INTO task_runs (task_id) SELECT 'limited' FROM generate_series(1, 50)`)
    await db.pool.query(`INSERT INTO task_runs (task_id, status, completed_at) SELECT 'rare', 'completed', now() FROM generate_series(1, 5)`)
    await db.pool.query(`ANALYZE task_runs`)
    client = await db.pool.connect()
    client.on('notice', (n) => { notices.push(String(n.message)) })
    await client.query(`LOAD 'auto_explain'`)
    await client.query(`SET auto_explain.log_min_duration = 0`)
    await client.query(`SET auto_explain.log_nested_statements = on`)
    await client.query(`SET auto_explain.log_level = notice`)
    await client.query(`SET client_min_messages = notice`)
    await client.query(`SET enable_seqscan = off`)
  })

  afterAll(async () => {
    client?.release(true)
    await db.drop()
  })

  /** The plans of a statement and of every statement it runs inside functions. */
  async function plans(text: string, values: unknown[] = []): Promise<string> {
    notices.length = 0
    await client.query('BEGIN')
    try {
      await client.query(text, values)
    } finally {
      await client.query('ROLLBACK')
    }
    return notices.join('\n')
  }

  it('the claim takes due, due-after-a-backoff and limited runs from their partial indexes', async () => {
    const plan = await plans(`SELECT * FROM pipeweave_claim_runs('o', 10)`)
    expect(plan).toContain('task_runs_claim_idx')
    expect(plan).toContain('task_runs_claim_scheduled_idx')
    expect(plan).toContain('task_runs_claim_task_idx')
    expect(plan).not.toMatch(/Seq Scan on task_runs/)
  })

  it('the drain check and the status counts use the live-runs index', async () => {
    for (const text of [`SELECT * FROM pipeweave_drain_check(30000, 'test')`]) {
      const plan = await plans(text)
      expect(plan).toContain('task_runs_active_idx')
      expect(plan).not.toMatch(/Seq Scan on task_runs/)
    }
    const status = await plans(state.status.text, [30000])
    expect(status).toContain('task_runs_active_idx')
    expect(status).not.toMatch(/Seq Scan on task_runs/)
    const queue = await plans(runs.queueStats.text)
    expect(queue).toContain('task_runs_active_idx')
  })

  it('completing and failing a run find it by primary key, not by walking the running runs', async () => {
    // Statistics (ANALYZE above) that count no running run: the planner's favourite case for
    // walking task_runs_active_idx, which after a busy drain holds an entry for every run completed
    // since the last vacuum.
    const { rows } = await db.pool.query<{ id: string }>(
      `INSERT INTO task_runs (task_id, status, orchestrator_id, started_at) SELECT 'plain', 'running', 'o', now() FROM generate_series(1, 3) RETURNING id`)
    try {
      const results = JSON.stringify(rows.map(({ id }) => ({ id, output: null, runNext: [], fromCache: false })))
      const complete = await plans(`SELECT * FROM pipeweave_complete_runs('o', $1)`, [results])
      expect(complete).toMatch(/Update on task_runs[\s\S]*task_runs_pkey/)
      expect(complete).not.toContain('task_runs_active_idx')

      const fail = await plans(`SELECT * FROM pipeweave_fail_run($1, 'o', 'boom', 'E', true, false)`, [rows[0].id])
      expect(fail).toMatch(/on task_runs r[\s\S]*task_runs_pkey/)
      expect(fail).not.toContain('task_runs_active_idx')
    } finally {
      await db.pool.query(`DELETE FROM task_runs WHERE id = ANY ($1::text[])`, [rows.map((r) => r.id)])
    }
  })

  it('listings and cleanup use their indexes', async () => {
    expect(await plans(runs.list.text, ['failed', null, 50])).toContain('task_runs_unsuccessful_idx')
    expect(await plans(runs.list.text, [null, 'rare', 50])).toContain('task_runs_task_created_idx')
    expect(await plans(runs.list.text, [null, null, 50])).toContain('task_runs_created_at_idx')
    expect(await plans(runs.deleteFinishedBatch.text, [new Date(), '-infinity', '', 100])).toContain('task_runs_finished_idx')
    expect(await plans(dlq.list.text, [null, false, 50])).toContain('dlq_failed_at_idx')
  })
})
