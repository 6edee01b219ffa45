/**
 * Every query on task_runs is served by an index (STYLE.md): for each statement of
 * src/sql/task-runs.ts (and the maintenance status counts) that reads or writes task_runs or
 * task_run_history, the plan names the indexes its comment names. Plans are taken with
 * `enable_seqscan = off`, so that the planner, free to read a table this small whole, shows the
 * index it would use on a big one; a statement with no usable index still shows its Seq Scan and
 * fails. Plans are read from EXPLAIN's JSON, every node (CTEs, sub-plans, arbiters of ON CONFLICT).
 *
 * pipeweave_task_room_v1 and pipeweave_task_room_v2 count a task's running runs inside plpgsql,
 * where EXPLAIN of the claim cannot see: the count query, taken from each function's own source,
 * is explained on its own.
 */
import type { PoolClient } from 'pg'
import type { SchemaStatement } from '../src/db/database'
import { schemaOf } from '../src/sql/schema'
import * as dashboard from '../src/sql/dashboard'
import * as state from '../src/sql/orchestrator-state'
import * as runs from '../src/sql/task-runs'
import { createTestDatabase, type TestDatabase, TEST_SCHEMA } from './helpers/db'

const schema = schemaOf(TEST_SCHEMA)
/** Tables whose scans the expectations name. */
const WATCHED = ['task_runs', 'task_run_history', 'dlq']

let db: TestDatabase
let client: PoolClient
/** The indexes of the watched tables. */
let watchedIndexes: Set<string>
let newest: string
/** A few run ids of each kind, for the statements that take ids. */
const ids: Record<'pending' | 'running' | 'completed' | 'failed', string[]> = { pending: [], running: [], completed: [], failed: [] }

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  const q = (text: string) => db.pool.query(text)
  await q(`INSERT INTO services (id, version, base_url) VALUES ('s', '1', 'http://127.0.0.1:1')`)
  await q(`INSERT INTO tasks (id, service_id, concurrency, idempotency_ttl_seconds, allowed_next)
           VALUES ('plain', 's', 0, 60, '{plain}'), ('limited', 's', 2, NULL, '{}'), ('rare', 's', 0, NULL, '{}'), ('backlog', 's', 0, NULL, '{}')`)
  await q(`INSERT INTO orchestrators (id, host, pid, version) VALUES ('o', 'h', 1, 'v')`)
  // Some of everything live: due, scheduled for later, limited, running (two of them by an
  // orchestrator that has no row any more).
  await q(`INSERT INTO task_runs (task_id, idempotency_key) SELECT 'plain', 'k' || i FROM generate_series(1, 200) i`)
  await q(`INSERT INTO task_runs (task_id, scheduled_for) SELECT 'plain', now() + interval '1 hour' FROM generate_series(1, 200)`)
  await q(`INSERT INTO task_runs (task_id) SELECT 'limited' FROM generate_series(1, 50)`)
  // A task's backlog: its page of pending runs walks task_runs_task_idx from the cursor, where
  // the claim index would sort them all.
  await q(`INSERT INTO task_runs (task_id) SELECT 'backlog' FROM generate_series(1, 1000)`)
  await q(`INSERT INTO task_runs (task_id, status, orchestrator_id, started_at, heartbeat_at)
           SELECT t, 'running', o, now(), now() FROM (VALUES ('limited', 'o'), ('limited', 'o'), ('plain', 'o'), ('plain', 'gone'), ('plain', 'gone')) AS v(t, o)`)
  // A busy fleet: runs held by other orchestrators (with a handful running, the planner may read
  // every running run rather than look up the batch by key).
  await q(`INSERT INTO task_runs (task_id, status, orchestrator_id, started_at, heartbeat_at)
           SELECT 'plain', 'running', 'other' || (i % 8), now(), now() FROM generate_series(1, 2000) i`)
  // Finished history, a few of them failed (with their DLQ entries), and a rare task.
  await q(`INSERT INTO task_run_history (id, task_id, status, completed_at, created_at)
           SELECT pipeweave_new_id(), 'plain', 'completed', now() - interval '2 days', now() - interval '2 days' FROM generate_series(1, 5000)`)
  await q(`INSERT INTO task_run_history (id, task_id, status, error, completed_at, created_at)
           SELECT pipeweave_new_id(), 'plain', 'failed', 'boom', now() - interval '2 days', now() - interval '2 days' FROM generate_series(1, 20)`)
  await q(`INSERT INTO task_run_history (id, task_id, status, completed_at) SELECT pipeweave_new_id(), 'rare', 'completed', now() FROM generate_series(1, 5)`)
  await q(`INSERT INTO dlq (task_run_id, task_id, error, attempts) SELECT id, task_id, error, 1 FROM task_run_history WHERE status = 'failed'`)
  await q(`ANALYZE`)
  const pick = async (sql: string) => (await db.pool.query<{ id: string }>(sql)).rows.map((r) => r.id)
  ids.pending = await pick(`SELECT id FROM task_runs WHERE status = 'pending' ORDER BY id LIMIT 3`)
  ids.running = await pick(`SELECT id FROM task_runs WHERE status = 'running' AND orchestrator_id = 'o' ORDER BY id`)
  ids.completed = await pick(`SELECT id FROM task_run_history WHERE status = 'completed' ORDER BY id LIMIT 3`)
  ids.failed = await pick(`SELECT id FROM task_run_history WHERE status = 'failed' ORDER BY id LIMIT 3`)
  // A cursor with (almost) every run below it: a page walks its index from there.
  newest = (await pick(`SELECT max(id) AS id FROM task_run_history`))[0]
  const { rows } = await db.pool.query<{ name: string }>(
    `SELECT indexname AS name FROM pg_indexes WHERE schemaname = $1 AND tablename = ANY ($2::text[])`, [TEST_SCHEMA, WATCHED])
  watchedIndexes = new Set(rows.map((r) => r.name))
  client = await db.pool.connect()
})

afterAll(async () => {
  client?.release()
  await db?.drop()
})

interface PlanNode {
  'Node Type': string
  'Relation Name'?: string
  'Index Name'?: string
  'Conflict Arbiter Indexes'?: string[]
  Plans?: PlanNode[]
}

/**
 * What the plan of `text` reads task_runs, task_run_history and dlq with: the indexes (scans and
 * ON CONFLICT arbiters), and `Seq Scan on <table>` for a table read whole. Sorted, no repeats.
 */
async function accessPaths(text: string, values: unknown[] = []): Promise<string[]> {
  await client.query('BEGIN')
  try {
    await client.query('SET LOCAL enable_seqscan = off')
    const { rows: [row] } = await client.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(`EXPLAIN (FORMAT JSON) ${text}`, values)
    const found = new Set<string>()
    const walk = (node: PlanNode) => {
      // A Bitmap Index Scan names its index but not its table.
      for (const index of [node['Index Name'] ?? [], node['Conflict Arbiter Indexes'] ?? []].flat()) {
        if (watchedIndexes.has(index)) found.add(index)
      }
      const table = node['Relation Name']
      if (table && WATCHED.includes(table) && node['Node Type'] === 'Seq Scan') found.add(`Seq Scan on ${table}`)
      for (const child of node.Plans ?? []) walk(child)
    }
    walk(row['QUERY PLAN'][0].Plan)
    return [...found].sort()
  } finally {
    await client.query('ROLLBACK')
  }
}

/**
 * Access paths with task_runs_task_idx read as task_runs_claim_idx, for the statements that count
 * queued runs (a task's, or all of them). Such a count reads task_runs_claim_idx (index only) or
 * task_runs_task_idx (queued runs by task, status and due time checked in the heap): both hold the
 * queued runs only, never the running ones or the history. Which one the planner takes
 * depends on the table's size and visibility (PostgreSQL 18 takes the smaller index on these small
 * tables); either way no table is read whole.
 */
const perTask = (paths: string[]) => [...new Set(paths.map((p) => p === 'task_runs_task_idx' ? 'task_runs_claim_idx' : p))].sort()

/** The node types of a statement's plan (as accessPaths explains it). */
async function nodeTypes(text: string, values: unknown[] = []): Promise<string[]> {
  await client.query('BEGIN')
  try {
    await client.query('SET LOCAL enable_seqscan = off')
    const { rows: [row] } = await client.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(`EXPLAIN (FORMAT JSON) ${text}`, values)
    const types: string[] = []
    const walk = (node: PlanNode) => {
      types.push(String(node['Node Type']))
      for (const child of node.Plans ?? []) walk(child)
    }
    walk(row['QUERY PLAN'][0].Plan)
    return types
  } finally {
    await client.query('ROLLBACK')
  }
}

/** The statements explained so far (the last test checks that none was left out). */
const explained = new Set<string>()

const plan = (st: SchemaStatement, values: unknown[] = []) => {
  explained.add(st.statementName)
  return accessPaths(st(schema).text, values)
}

/** A JSON batch of completions or failures of the runs `o` holds. */
const held = (extra: Record<string, unknown>) => JSON.stringify(ids.running.map((id) => ({ id, attempt: 1, ...extra })))

describe('the hot path', () => {
  it('claimRuns: the (task, priority) groups and their heads from task_runs_claim_idx, the claimed rows by their tuple ids', async () => {
    expect(await plan(runs.claimRuns, ['o', 10, 30_000])).toEqual(['task_runs_claim_idx'])
    expect(await nodeTypes(runs.claimRuns(schemaOf(TEST_SCHEMA)).text, ['o', 10, 30_000])).toContain('Tid Scan')
  })

  it.each(['pipeweave_task_room_v1', 'pipeweave_task_room_v2'])("%s: a task's running runs counted from task_runs_running_idx", async (name) => {
    // The count as the function runs it: its own text, its argument a parameter (what plpgsql does).
    const { rows: [fn] } = await db.pool.query<{ src: string }>(
      `SELECT prosrc AS src FROM pg_proc WHERE proname = $2 AND pronamespace = $1::regnamespace`, [TEST_SCHEMA, name])
    const count = /\(SELECT count\(\*\) FROM task_runs r[\s\S]*?p_task_id\)/.exec(fn.src)
    expect(count).not.toBeNull()
    const text = count![0].slice(1, -1).replace(/--[^\n]*/g, '').replace('p_task_id', '$1::text')
    expect(await accessPaths(text, ['limited'])).toEqual(['task_runs_running_idx'])
  })

  it('completeRuns: the runs by task_runs_pkey', async () => {
    expect(await plan(runs.completeRuns, ['o', held({ output: { ok: true }, next: ['plain'], cached: false })])).toEqual(['task_runs_pkey'])
  })

  it('failRuns: the retried and the dead by task_runs_pkey', async () => {
    const failures = held({ orchestrator: 'o', error: 'boom', code: 'E', retry: true, delayMs: 0, status: 'failed' })
    expect(await plan(runs.failRuns, [failures])).toEqual(['task_runs_pkey'])
  })

  it('deferRuns: the runs by task_runs_pkey', async () => {
    expect(await plan(runs.deferRuns, ['o', held({}), 30_000, 3_600_000])).toEqual(['task_runs_pkey'])
  })

  it('releaseHeld: the running runs from task_runs_running_idx', async () => {
    expect(await plan(runs.releaseHeld, ['o', [ids.running[0]], null])).toEqual(['task_runs_running_idx'])
  })

  it('workRemains: task_runs_running_idx, then the groups and their due heads from task_runs_claim_idx', async () => {
    expect(await plan(runs.workRemains)).toEqual(['task_runs_claim_idx', 'task_runs_running_idx'])
  })
})

describe('upkeep and counts', () => {
  it('lostRuns: the running runs from task_runs_running_idx', async () => {
    expect(await plan(runs.lostRuns)).toEqual(['task_runs_running_idx'])
  })

  it('sweepFinished: the stray finished runs found and deleted by task_runs_stray_finished_idx, moved into task_run_history_pkey', async () => {
    expect(await plan(runs.sweepFinished, [1000])).toEqual(['task_run_history_pkey', 'task_runs_stray_finished_idx'])
  })

  it('maintenance status: due, running and scheduled counted from task_runs_claim_idx and task_runs_running_idx', async () => {
    expect(perTask(await plan(state.status, [30_000]))).toEqual(['task_runs_claim_idx', 'task_runs_running_idx'])
  })

  it('queueStats: the due pending runs from task_runs_claim_idx', async () => {
    expect(perTask(await plan(runs.queueStats))).toEqual(['task_runs_claim_idx'])
  })
})

describe('enqueue and cancel', () => {
  it('enqueueRuns: a held key decided by task_runs_idempotency_active_uidx (ON CONFLICT)', async () => {
    expect(await plan(runs.enqueueRuns, ['plain', JSON.stringify([{ input: 1, key: 'k1' }]), null, null])).toEqual(['task_runs_idempotency_active_uidx'])
  })

  it('resolveActiveKeys: task_runs_idempotency_active_uidx', async () => {
    expect(await plan(runs.resolveActiveKeys, ['plain', ['k1', 'k2']])).toEqual(['task_runs_idempotency_active_uidx'])
  })

  it('cancelRuns: both primary keys', async () => {
    expect(await plan(runs.cancelRuns, [[...ids.pending, ids.completed[0]]])).toEqual(['task_run_history_pkey', 'task_runs_pkey'])
  })
})

describe('reading runs', () => {
  // Every page of runs (runs:list and the dashboard) reads the indexes RUN_PAGE_PARTS names for its
  // filter (migration 004 lists them), with payloads and without, from the newest and from a cursor.
  const filters: Record<runs.RunPageKind, string[]> = {
    all: [], live: ['pending'], running: [], completed: [], unsuccessful: ['failed'], ofTask: ['rare'],
    ofTaskLive: ['pending', 'backlog'], ofTaskRunning: ['limited'], ofTaskCompleted: ['rare'], ofTaskUnsuccessful: ['failed', 'plain'],
  }
  for (const kind of Object.keys(filters) as runs.RunPageKind[]) {
    it(`page of runs "${kind}": ${runs.RUN_PAGE_PARTS[kind].indexes.join(', ')}`, async () => {
      for (const variant of ['summary', 'full'] as const) {
        for (const cursor of [null, newest]) {
          expect({ variant, cursor, paths: await plan(runs.runPages[kind][variant], [cursor, 100, ...filters[kind]]) })
            .toEqual({ variant, cursor, paths: runs.RUN_PAGE_PARTS[kind].indexes })
        }
      }
    })
  }

  it('runPageFor: each filter has the page kind whose parameters it gives', () => {
    expect(runs.runPageFor({})).toEqual({ kind: 'all', values: [] })
    expect(runs.runPageFor({ status: 'waiting' })).toEqual({ kind: 'live', values: ['waiting'] })
    expect(runs.runPageFor({ status: 'running' })).toEqual({ kind: 'running', values: [] })
    expect(runs.runPageFor({ status: 'completed' })).toEqual({ kind: 'completed', values: [] })
    expect(runs.runPageFor({ status: 'timeout' })).toEqual({ kind: 'unsuccessful', values: ['timeout'] })
    expect(runs.runPageFor({ taskId: 't' })).toEqual({ kind: 'ofTask', values: ['t'] })
    expect(runs.runPageFor({ taskId: 't', status: 'pending' })).toEqual({ kind: 'ofTaskLive', values: ['pending', 't'] })
    expect(runs.runPageFor({ taskId: 't', status: 'running' })).toEqual({ kind: 'ofTaskRunning', values: ['t'] })
    expect(runs.runPageFor({ taskId: 't', status: 'completed' })).toEqual({ kind: 'ofTaskCompleted', values: ['t'] })
    expect(runs.runPageFor({ taskId: 't', status: 'cancelled' })).toEqual({ kind: 'ofTaskUnsuccessful', values: ['cancelled', 't'] })
  })

  it('followUps: task_runs_parent_idx and task_run_history_parent_idx', async () => {
    expect(await plan(runs.followUps, [ids.completed[0], 100])).toEqual(['task_run_history_parent_idx', 'task_runs_parent_idx'])
  })

  it('showRun: both primary keys', async () => {
    expect(await plan(runs.showRun, [ids.completed[0]])).toEqual(['task_run_history_pkey', 'task_runs_pkey'])
  })
})

describe('the dashboard', () => {
  it('overview: each task\'s queue from task_runs_claim_idx and task_runs_running_idx, the DLQ count, no table read whole', async () => {
    const paths = await accessPaths(dashboard.overview(schema).text, [10, 30_000])
    expect(perTask(paths.filter((p) => p !== 'Seq Scan on dlq'))).toEqual(['task_runs_claim_idx', 'task_runs_running_idx'])
  })

  it('overview: the throughput of the last hour is a range of throughput_minutes_pkey', async () => {
    const text = dashboard.overview(schema).text
    await client.query('BEGIN')
    try {
      await client.query('SET LOCAL enable_seqscan = off')
      const { rows: [row] } = await client.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(`EXPLAIN (FORMAT JSON) ${text}`, [10, 30_000])
      expect(JSON.stringify(row['QUERY PLAN'])).toContain('"Index Name":"throughput_minutes_pkey"')
    } finally {
      await client.query('ROLLBACK')
    }
  })

  it('completeRuns and failRuns add their counts to throughput_minutes by its primary key (ON CONFLICT)', async () => {
    for (const text of [runs.completeRuns(schema).text, runs.failRuns(schema).text]) {
      expect(text).toContain('ON CONFLICT (minute, task_id, orchestrator_id)')
    }
  })
})

describe('db:cleanup', () => {
  it('deleteFinishedBatch: the walk on task_run_history_pkey, DLQ entries by dlq_task_run_id_idx', async () => {
    expect(await plan(runs.deleteFinishedBatch, [new Date(Date.now() - 86_400_000), '', 500])).toEqual(['dlq_task_run_id_idx', 'task_run_history_pkey'])
  })

  it('countFinishedDeletable: task_run_history_pkey below the id bound, DLQ entries by dlq_task_run_id_idx', async () => {
    expect(await plan(runs.countFinishedDeletable, [new Date(Date.now() - 86_400_000), new Date(Date.now() - 30 * 86_400_000)])).toEqual(['dlq_task_run_id_idx', 'task_run_history_pkey'])
  })
})

describe('run --demo', () => {
  it('unfinishedOfTasks: task_runs_claim_idx and task_runs_running_idx', async () => {
    expect(perTask(await plan(runs.unfinishedOfTasks, [['plain', 'rare']]))).toEqual(['task_runs_claim_idx', 'task_runs_running_idx'])
  })

  it('summaryOfTasks: the history by task_run_history_task_idx, and no table read whole', async () => {
    // Its comment names no index for the live part (pending, running and waiting runs of the tasks).
    const paths = await plan(runs.summaryOfTasks, [['plain', 'rare'], new Date(Date.now() - 60_000)])
    expect({ history: paths.includes('task_run_history_task_idx'), seqScans: paths.filter((p) => p.startsWith('Seq Scan')) })
      .toEqual({ history: true, seqScans: [] })
  })
})

it('every statement of src/sql/task-runs.ts on task_runs or task_run_history has its plan checked above', () => {
  const pages = Object.values(runs.runPages).flatMap((p) => [p.summary, p.full])
  const onRuns = [...Object.values(runs), ...pages]
    .filter((v): v is SchemaStatement => typeof v === 'function' && 'statementName' in v)
    .filter((st) => /\.task_run(s|_history)\b/.test(st(schema).text))
    .map((st) => st.statementName)
  expect(onRuns.filter((name) => !explained.has(name))).toEqual([])
})
