/**
 * Issue 10, acceptance 3 (SPEC §3 "what the hot path may cost"): finished history, retries due or
 * waiting out a backoff, and runs of a task at its concurrency limit must not slow the claim; nor,
 * with issue 12 (SPEC §7), runs of a paused task or of a task at its rate limit. The
 * figure: the shared buffers (hit + read) of the claim's top plan node, from
 * EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) of claimRuns in a transaction that is rolled back, so that
 * every measurement sees the same state. Each queue below holds ~10,000 rows of one kind besides
 * the runs the claim takes, and must cost at most twice what the claim costs on a queue holding
 * only those runs.
 *
 * Rows are arranged the way pipeweave leaves them: runs enqueued by the bulk enqueue statement,
 * claimed, completed and failed by the orchestrator's own repository, and pipeweave's own upkeep
 * applied as `run` applies it (src/orchestrator/watch.ts: a VACUUM of task_runs every
 * VACUUM_EVERY_CLAIMS runs claimed, counted as the claimer counts them, and the next maintenance
 * check's VACUUM of a burst's tail; "(a) … just before the next VACUUM" shows the claim before it). Autovacuum runs at its
 * defaults, which in a test this short usually means not at all. Statistics are brought up to
 * date (ANALYZE) before each measurement, as autovacuum's analyze would, so that the plan is the
 * one a busy queue gets.
 *
 * A figure over the bound prints the claim's plan with its buffers and the figure after a VACUUM,
 * so the output shows which node reads them.
 */
import type { Database } from '../src/db/database'
import { silentLogger } from '../src/logger'
import { type Repository, createRepository } from '../src/orchestrator/repository'
import { VACUUM_EVERY_CLAIMS, Watch } from '../src/orchestrator/watch'
import { schemaOf } from '../src/sql/schema'
import * as runs from '../src/sql/task-runs'
import { createTestDatabase, type TestDatabase, TEST_SCHEMA } from './helpers/db'
import { addTask, heartbeat } from './helpers/maintenance-fixtures'
import { enqueueMany, queryable } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'

/** Rows of each kind. */
const KIND = 10_000
/** The claim measured: up to LIMIT of the FRESH due runs of task A. */
const LIMIT = 10
const FRESH = 20
/** Runs an arranging claim takes at a time. */
const BATCH = 100
const ORCHESTRATOR = 'o'
/** Claims here do not test the lease. */
const ANY_LEASE_MS = 2_000_000_000
const claimText = runs.claimRuns(schemaOf(TEST_SCHEMA)).text

let db: TestDatabase
let repo: Repository
let baseline: number
const figures: Array<[string, number]> = []

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  await addTask(db.pool, 'A')
  await addTask(db.pool, 'L', { concurrency: 2 })
  // A paused task, and a task limited to 2 starts an hour (its two slots are used by (f)).
  await addTask(db.pool, 'P')
  await db.pool.query(`UPDATE tasks SET paused_at = now(), paused_by = 'claim-cost' WHERE id = 'P'`)
  await addTask(db.pool, 'R')
  await db.pool.query(`UPDATE tasks SET rate_limit = 2, rate_period_ms = 3600000 WHERE id = 'R'`)
  repo = createRepository(queryable(db.pool) as unknown as Database, ORCHESTRATOR)
  await emptyQueue()
  await enqueueMany(db.pool, 'A', FRESH)
  baseline = await claimBuffers()
  figures.push(['baseline (only the runs the claim takes)', baseline])
})

afterAll(async () => {
  // eslint-disable-next-line no-console
  console.log(`claim buffers (shared hit + read of the top plan node; claim of ${LIMIT} among ${FRESH} due runs):\n${
    figures.map(([what, n]) => `  ${what}: ${n}${what.startsWith('baseline') ? '' : ` (${(n / baseline).toFixed(2)}×)`}`).join('\n')}`)
  await db?.drop()
})

async function emptyQueue(): Promise<void> {
  await db.pool.query(`TRUNCATE task_runs, task_run_history, dlq, idempotency_cache, task_rate_slots`)
  await heartbeat(db.pool, ORCHESTRATOR)
}

interface PlanNode {
  'Shared Hit Blocks': number
  'Shared Read Blocks': number
}

/**
 * The claim's shared buffers, the median of three measurements on one connection (the first on
 * a connection also fills its caches).
 */
async function claimBuffers(): Promise<number> {
  await db.pool.query(`ANALYZE task_runs`)
  const client = await db.pool.connect()
  try {
    const found: number[] = []
    for (let i = 0; i < 3; i++) {
      await client.query('BEGIN')
      try {
        const { rows: [row] } = await client.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
          `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${claimText}`, [ORCHESTRATOR, LIMIT, ANY_LEASE_MS])
        const top = row['QUERY PLAN'][0].Plan
        found.push(top['Shared Hit Blocks'] + top['Shared Read Blocks'])
      } finally {
        await client.query('ROLLBACK')
      }
    }
    return found.sort((a, b) => a - b)[1]
  } finally {
    client.release()
  }
}

/** The claim's plan as text, with buffers (for a figure over the bound). */
async function claimPlan(): Promise<string> {
  const client = await db.pool.connect()
  try {
    await client.query('BEGIN')
    const { rows } = await client.query<{ 'QUERY PLAN': string }>(`EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ${claimText}`, [ORCHESTRATOR, LIMIT, ANY_LEASE_MS])
    return rows.map((r) => r['QUERY PLAN']).join('\n')
  } finally {
    await client.query('ROLLBACK')
    client.release()
  }
}

/** pipeweave's own upkeep of task_runs, as `run` has it (Watch.claimed, called by the claimer). */
function upkeep(upkept: Repository = repo): Watch {
  return new Watch({
    repo: upkept, log: silentLogger, actor: 'claim-cost', liveness: undefined as never,
    onMode: () => undefined, onSchemaAhead: () => undefined, isStopping: () => false,
  })
}

/**
 * Enqueue `count` runs of A and take each through one attempt as an orchestrator does: claimed in
 * batches, then completed, or failed and retried after `retryDelayMs`. Runs due earlier are
 * claimed first, so each claim takes runs enqueued here, never a retry made here.
 */
async function attempt(count: number, outcome: { complete: true } | { retryDelayMs: number }, { settle = true } = {}): Promise<void> {
  const watch = upkeep()
  await enqueueMany(db.pool, 'A', count)
  for (let done = 0; done < count;) {
    const { runs: claimed } = await repo.claim(Math.min(BATCH, count - done), ANY_LEASE_MS)
    if (claimed.length === 0) throw new Error(`claimed nothing after ${done} of ${count} runs`)
    // What the claimer counts (claimer.ts): every run claimed leaves a dead claim-index entry.
    watch.claimed(claimed.length)
    if ('complete' in outcome) {
      const results = await repo.complete(claimed.map((r) => ({ runId: r.id, attempt: r.attempt, output: { ok: true }, runNext: [], fromCache: false })))
      expect(results.every((r) => r.completed)).toBe(true)
    } else {
      const results = await repo.fail(claimed.map((r) => ({
        runId: r.id, attempt: r.attempt, error: 'boom', code: 'WORKER_ERROR', retry: true, delayMs: outcome.retryDelayMs, status: 'failed' as const,
      })))
      expect(results.every((r) => r.outcome === 'retried')).toBe(true)
    }
    done += claimed.length
  }
  await watch.stopped()
  // The next maintenance check (Watch.settle, within --maintenance-check-interval): the burst's
  // tail, the runs claimed during or after its last VACUUM.
  if (!settle) return
  watch.settle()
  await watch.stopped()
}

/** The kinds, each arranged on a queue holding nothing of the others yet. */
const KINDS = {
  /** (a) Finished runs, history kept. */
  finished: () => attempt(KIND, { complete: true }),
  /** (b) Retries due now (failed with delay 0). */
  dueRetries: () => attempt(KIND, { retryDelayMs: 0 }),
  /** (c) Retries waiting out an hour's backoff. */
  laterRetries: () => attempt(KIND, { retryDelayMs: 3_600_000 }),
  /** (d) Pending runs of L, a task at its limit: its 2 slots taken by running runs. */
  limited: async () => {
    await enqueueMany(db.pool, 'L', KIND)
    const { runs: started } = await repo.claim(LIMIT, ANY_LEASE_MS)
    expect(started.map((r) => r.taskId)).toEqual(['L', 'L'])
  },
  /** (e) Pending runs of P, a paused task. */
  paused: async () => {
    await enqueueMany(db.pool, 'P', KIND)
    const { runs: started } = await repo.claim(LIMIT, ANY_LEASE_MS)
    expect(started).toEqual([])
  },
  /** (f) Pending runs of R, a task at its rate limit: its 2 starts of the hour made (and completed). */
  rateLimited: async () => {
    await enqueueMany(db.pool, 'R', KIND)
    const { runs: started, rateHeld } = await repo.claim(LIMIT, ANY_LEASE_MS)
    expect(started.map((r) => r.taskId)).toEqual(['R', 'R'])
    expect(rateHeld).toEqual([])
    const done = await repo.complete(started.map((r) => ({ runId: r.id, attempt: r.attempt, output: null, runNext: [], fromCache: false })))
    expect(done.every((d) => d.completed)).toBe(true)
    const again = await repo.claim(LIMIT, ANY_LEASE_MS)
    expect({ runs: again.runs, rateHeld: again.rateHeld }).toEqual({ runs: [], rateHeld: ['R'] })
    expect(again.wakeInMs).toBeGreaterThan(3_500_000)
  },
}

async function check(what: string, arrange: () => Promise<void>): Promise<void> {
  await emptyQueue()
  await arrange()
  await enqueueMany(db.pool, 'A', FRESH)
  const buffers = await claimBuffers()
  figures.push([what, buffers])
  if (buffers > 2 * baseline) {
    const plan = await claimPlan()
    await repo.vacuum()
    // eslint-disable-next-line no-console
    console.log(`${what}: ${buffers} buffers, baseline ${baseline}; after a VACUUM of task_runs: ${await claimBuffers()}. The plan before it:\n${plan}`)
  }
  expect(buffers).toBeLessThanOrEqual(2 * baseline)
}

it(`the baseline claim takes ${LIMIT} of ${FRESH} due runs`, async () => {
  await emptyQueue()
  await enqueueMany(db.pool, 'A', FRESH)
  const { runs: claimed } = await repo.claim(LIMIT, ANY_LEASE_MS)
  expect(claimed).toHaveLength(LIMIT)
  expect(baseline).toBeGreaterThan(0)
})

it(`(a) ${KIND} finished runs, claimed and completed through the repository, with pipeweave's VACUUM: at most 2× the baseline`, async () => {
  await check(`(a) ${KIND} finished runs`, KINDS.finished)
})

it(`(a) for the record, not bounded here: ${KIND - 1} finished runs, the claim just before pipeweave's next VACUUM`, async () => {
  // Dead claim-index entries at the head of A's group short of the next VACUUM (and of the next
  // maintenance check's): the most the upkeep lets a claim walk past (printed with the others).
  await emptyQueue()
  await attempt(KIND - 1, { complete: true }, { settle: false })
  await enqueueMany(db.pool, 'A', FRESH)
  const buffers = await claimBuffers()
  figures.push([`(a) ${KIND - 1} finished runs, just before the next VACUUM (not asserted)`, buffers])
  expect(buffers).toBeGreaterThan(0)
})

it(`(b) ${KIND} due retries, failed through the repository with delay 0: at most 2× the baseline`, async () => {
  await check(`(b) ${KIND} due retries`, KINDS.dueRetries)
})

it(`(c) ${KIND} retries scheduled an hour ahead: at most 2× the baseline`, async () => {
  await check(`(c) ${KIND} retries scheduled later`, KINDS.laterRetries)
})

it(`(d) ${KIND} pending runs of a task at its concurrency limit: at most 2× the baseline`, async () => {
  await check(`(d) ${KIND} runs of a task at its limit`, KINDS.limited)
})

it(`(e) ${KIND} pending runs of a paused task: at most 2× the baseline`, async () => {
  await check(`(e) ${KIND} runs of a paused task`, KINDS.paused)
})

it(`(f) ${KIND} pending runs of a task at its rate limit: at most 2× the baseline`, async () => {
  await check(`(f) ${KIND} runs of a task at its rate limit`, KINDS.rateLimited)
})

it(`(e) and (f) together (${2 * KIND} rows): at most 2× the baseline`, async () => {
  await check(`(e) and (f) together`, async () => {
    await KINDS.paused()
    await KINDS.rateLimited()
  })
})

it(`all four kinds together (${4 * KIND} rows): at most 2× the baseline`, async () => {
  // The order keeps each arranging claim on its own runs: L first (then at its limit), the
  // finished and the later retries (never due again), the due retries last.
  await check(`all four together`, async () => {
    await KINDS.limited()
    await KINDS.finished()
    await KINDS.laterRetries()
    await KINDS.dueRetries()
  })
})

it('the upkeep: a maintenance check VACUUMs the tail of a burst (fewer than VACUUM_EVERY_CLAIMS), and nothing when no run was claimed', async () => {
  let vacuums = 0
  const counted = { ...repo, vacuum: async () => { vacuums += 1 } }
  const watch = upkeep(counted)
  watch.settle()
  await watch.stopped()
  expect(vacuums).toBe(0)
  watch.claimed(VACUUM_EVERY_CLAIMS - 1)
  await watch.stopped()
  expect(vacuums).toBe(0)
  watch.settle()
  await watch.stopped()
  expect(vacuums).toBe(1)
  watch.settle()
  await watch.stopped()
  expect(vacuums).toBe(1)
})

it(`the upkeep: runs claimed while a VACUUM runs start the next one when it ends, with no further claim`, async () => {
  // A burst that ends while a VACUUM runs must not leave its last VACUUM_EVERY_CLAIMS dead entries
  // to an idle queue (on a loaded machine the VACUUM at 8,000 claims was still running at 10,000).
  const started: Array<() => void> = []
  const vacuums: Promise<void>[] = []
  const gated = {
    ...repo,
    vacuum: () => {
      const ran = new Promise<void>((resolve) => started.push(resolve)).then(() => repo.vacuum())
      vacuums.push(ran)
      return ran
    },
  }
  const watch = upkeep(gated)
  watch.claimed(VACUUM_EVERY_CLAIMS - 1)
  expect(vacuums).toHaveLength(0)
  watch.claimed(1)
  expect(vacuums).toHaveLength(1)
  watch.claimed(VACUUM_EVERY_CLAIMS) // while the first runs
  expect(vacuums).toHaveLength(1)
  started[0]()
  await waitFor(() => vacuums.length === 2, { what: 'the second VACUUM' })
  started[1]()
  await watch.stopped()
  expect(vacuums).toHaveLength(2)
  await Promise.all(vacuums)
})
