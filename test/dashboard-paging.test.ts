/**
 * Paging the run lists by keyset (SPEC §8, issue 13 acceptance 4): the 50th page of 100 reads as
 * many buffers as the first, for every filter the lists offer over the finished runs (where the
 * millions are), because each page starts at its cursor in an index (`id < cursor ORDER BY id DESC`)
 * instead of skipping the pages before it. Measured with EXPLAIN (ANALYZE, BUFFERS) of the very
 * statements runs:list and the dashboard run; an OFFSET of 49 pages is shown reading far more.
 */
import { listRuns } from '../src/api/runs'
import type { Database } from '../src/db/database'
import { schemaOf } from '../src/sql/schema'
import * as runs from '../src/sql/task-runs'
import { apiDatabase, createTestDatabase, type TestDatabase, TEST_SCHEMA } from './helpers/db'

const PAGE = 100
let db: TestDatabase
let api: Database

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  // 220,000 finished runs of two tasks, one in twenty of them failed (all of task a: 110 pages of them, so
  // that page 50 lies mid-way and not at the oldest end, where the planner may walk the primary key), interleaved in
  // time (ids are time-ordered), and some live ones newer than all of them.
  await db.pool.query(`INSERT INTO task_run_history (id, task_id, status, error, completed_at)
    SELECT pipeweave_new_id(), CASE WHEN i % 3 = 0 AND i % 20 <> 1 THEN 'b' ELSE 'a' END,
           CASE WHEN i % 20 = 1 THEN 'failed' ELSE 'completed' END, CASE WHEN i % 20 = 1 THEN 'boom' END, now()
      FROM generate_series(1, 220000) AS i`)
  await db.pool.query(`INSERT INTO task_runs (task_id) SELECT 'a' FROM generate_series(1, 200)`)
  await db.pool.query('VACUUM ANALYZE task_run_history')
  await db.pool.query('VACUUM ANALYZE task_runs')
  api = await apiDatabase(db.url)
})

afterAll(async () => {
  await api?.close()
  await db?.drop()
})

interface Buffers { hit: number; read: number; total: number; rows: number }

/** Shared buffers the whole statement touched (hit + read), as its warm second run reports them. */
async function buffers(text: string, values: unknown[]): Promise<Buffers> {
  const client = await db.pool.connect()
  try {
    let last: Buffers | undefined
    for (let i = 0; i < 2; i += 1) {
      const { rows: [row] } = await client.query<{ 'QUERY PLAN': Array<{ Plan: Record<string, number> }> }>(
        `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${text}`, values)
      const plan = row['QUERY PLAN'][0].Plan
      const hit = plan['Shared Hit Blocks']
      const read = plan['Shared Read Blocks']
      last = { hit, read, total: hit + read, rows: plan['Actual Rows'] }
      if (process.env.DEBUG_PLANS && i === 1) console.log(JSON.stringify(plan, (k, v) => (['Output', 'Sort Key', 'Parallel Aware', 'Async Capable', 'Plan Width', 'Startup Cost'].includes(k) ? undefined : v)).replace(/\n\s*/g, ' '))
    }
    return last!
  } finally {
    client.release()
  }
}

const filters: Array<{ name: string; filter: { status?: string; taskId?: string } }> = [
  { name: 'every run', filter: {} },
  { name: '--task a', filter: { taskId: 'a' } },
  { name: '--status completed', filter: { status: 'completed' } },
  { name: '--status failed', filter: { status: 'failed' } },
  { name: '--task a --status completed', filter: { taskId: 'a', status: 'completed' } },
  { name: '--task a --status failed', filter: { taskId: 'a', status: 'failed' } },
]

describe('keyset paging of the run lists', () => {
  for (const { name, filter } of filters) {
    it(`${name}: the 50th page of 100 reads as many buffers as the first`, async () => {
      // Walk 49 pages through the API (what runs:list and the dashboard do): each strictly older.
      const cursors: string[] = []
      let before: string | undefined
      const seen = new Set<string>()
      for (let page = 1; page < 50; page += 1) {
        const rows = await listRuns(api, { ...filter, before, limit: PAGE, payloads: false })
        expect(rows).toHaveLength(PAGE)
        for (const r of rows) {
          expect(seen.has(r.id)).toBe(false)
          seen.add(r.id)
          if (before !== undefined) expect(r.id < before).toBe(true)
        }
        before = rows[rows.length - 1].id
        cursors.push(before)
      }
      const { kind, values } = runs.runPageFor(filter)
      const text = runs.runPages[kind].summary(schemaOf(TEST_SCHEMA)).text
      const first = await buffers(text, [null, PAGE, ...values])
      const second = await buffers(text, [cursors[0], PAGE, ...values])
      const fiftieth = await buffers(text, [cursors[48], PAGE, ...values])
      expect({ first: first.rows, second: second.rows, fiftieth: fiftieth.rows }).toEqual({ first: PAGE, second: PAGE, fiftieth: PAGE })
      // A page is a descent of each index to its cursor, then the next 100 entries and their rows:
      // the same wherever the cursor stands (one leaf page either way when the 100 straddle a
      // boundary). The first page, which has no cursor, may be planned on the other index that
      // hands the rows in id order (the primary key, filtered, where the filter is not selective):
      // a few heap pages either way, never the pages before it.
      const report = { name, first: first.total, second: second.total, fiftieth: fiftieth.total }
      expect({ ...report, sameAsSecond: Math.abs(fiftieth.total - second.total) <= 1, closeToFirst: fiftieth.total <= first.total + 3 })
        .toEqual({ ...report, sameAsSecond: true, closeToFirst: true })

      // What OFFSET would cost: the 49 pages before, read and thrown away.
      const offsetText = text.replace(/LIMIT \$2::int\)/g, 'LIMIT 5000)').replace(/LIMIT \$2::int\s*$/, 'LIMIT $2::int OFFSET 4900')
      const offset = await buffers(offsetText, [null, PAGE, ...values])
      expect({ name, offset: offset.total, more: offset.total > 10 * fiftieth.total }).toEqual({ name, offset: offset.total, more: true })
    })
  }
})
