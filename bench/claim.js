'use strict'
/**
 * Claim cost (issue 10, acceptance 3): the claim statement (claimRuns, dist/sql/task-runs) as
 * `pipeweave run` sends it — through the repository, `createRepository(db, id).claim(10, leaseMs)`
 * after registering with `heartbeat()` — in five states of the queue, each in a database of its own
 * on one server:
 *
 *   empty          only the runs to claim (BENCH_CLAIM_PENDING runs of task `plain`);
 *   finished       + BENCH_CLAIM_FINISHED finished runs in task_run_history: all but
 *                  BENCH_CLAIM_REAL_FINISHED of them bulk-inserted (INSERT … SELECT, time-ordered ids
 *                  over 30 days, 1 in 100 failed / timed out / cancelled), the rest enqueued with
 *                  enqueueTasks and drained for real by a `pipeweave run` process (HTTP worker) just
 *                  before measuring, so task_runs carries the dead tuples a real drain leaves (and
 *                  whatever the orchestrator's own VACUUM and autovacuum, at their defaults, removed);
 *   due retries    + BENCH_CLAIM_BACKLOG pending retries of task `flaky`, due now: BENCH_CLAIM_REAL_BACKLOG
 *                  of them made for real (enqueued, claimed and failed with a retry through the
 *                  repository, delay 0), the rest bulk-inserted as retries due within the last hour;
 *   future retries + BENCH_CLAIM_BACKLOG retries of task `flaky` scheduled 1–25 hours ahead (made the
 *                  same two ways, delay ≥ 1 hour);
 *   at its limit   + BENCH_CLAIM_BACKLOG pending runs of task `limited` (concurrency 2), enqueued with
 *                  enqueueTasks, and 2 of its runs running (claimed for real by another registered
 *                  orchestrator, which keeps them).
 *
 * No VACUUM before measuring (ANALYZE only, as autovacuum's analyze would after such inserts);
 * autovacuum runs at its defaults throughout. Each claim runs in a transaction that is rolled back
 * (BEGIN and ROLLBACK outside the timing), so every claim of a state sees the same queue; the
 * states alternate claim by claim. Figures: the median round trip of each round, and their
 * median; and, from EXPLAIN (ANALYZE, BUFFERS) of the same statement (also rolled back), the
 * buffers it touches and its planning and execution time. Goal: flat — each state's median within
 * 2× of the empty queue's (the acceptance test holds buffers to 2× at ~10,000 rows of each kind).
 *
 *   node bench/claim.js
 * Environment (defaults in brackets):
 *   BENCH_CLAIM_FINISHED [1000000]      finished runs in the history
 *   BENCH_CLAIM_REAL_FINISHED [50000]   of which drained for real by `pipeweave run`
 *   BENCH_CLAIM_BACKLOG [200000]        due retries / future retries / runs at the limit
 *   BENCH_CLAIM_REAL_BACKLOG [10000]    retries made through claim + fail (of the backlog)
 *   BENCH_CLAIM_PENDING [100]           runs to claim (task `plain`, no limit)
 *   BENCH_CLAIM_SAMPLES [300]           claims per state and round
 *   BENCH_CLAIM_ROUNDS [3]              rounds; the figure is the median of the rounds' medians
 *   BENCH_CLAIM_EXPLAINS [5]            EXPLAIN (ANALYZE, BUFFERS) runs per state (median)
 */
const lib = require('./lib')

const FINISHED = Number(process.env.BENCH_CLAIM_FINISHED || 1_000_000)
const REAL_FINISHED = Math.min(FINISHED, Number(process.env.BENCH_CLAIM_REAL_FINISHED || 50_000))
const BACKLOG = Number(process.env.BENCH_CLAIM_BACKLOG || 200_000)
const REAL_BACKLOG = Math.min(BACKLOG, Number(process.env.BENCH_CLAIM_REAL_BACKLOG || 10_000))
const PENDING = Number(process.env.BENCH_CLAIM_PENDING || 100)
const SAMPLES = Number(process.env.BENCH_CLAIM_SAMPLES || 300)
const ROUNDS = Number(process.env.BENCH_CLAIM_ROUNDS || 3)
const EXPLAINS = Number(process.env.BENCH_CLAIM_EXPLAINS || 5)
const BATCH = 10
const LIMIT = 2
const TARGET_RATIO = 2
const CLAIMER = 'bench-claimer'

const leaseMs = lib.claimLeaseMs

const TASKS = [{ id: 'plain', retries: 0 }, { id: 'flaky', retries: 5 }, { id: 'limited', retries: 0, concurrency: LIMIT }]

/**
 * Finished history, bulk: time-ordered ids (12 hex ms + 8 hex, as pipeweave_new_id) over the last
 * 30 days, 1 in 100 failed, timed out or cancelled, the three tasks mixed.
 */
const SEED_HISTORY = `
  INSERT INTO task_run_history (id, task_id, status, attempt, priority, input, output, error, error_code,
                                created_at, started_at, completed_at, heartbeat_at, orchestrator_id, due_at)
  SELECT lpad(to_hex((extract(epoch FROM t.at) * 1000)::bigint), 12, '0') || lpad(to_hex(i), 8, '0'),
         (ARRAY['plain', 'flaky', 'limited'])[i % 3 + 1], s.status, 1, 100, jsonb_build_object('i', i),
         CASE WHEN s.status = 'completed' THEN jsonb_build_object('ok', true) END,
         CASE WHEN s.status <> 'completed' THEN 'bench history' END,
         CASE WHEN s.status <> 'completed' THEN 'BENCH' END,
         t.at, t.at, t.at + interval '50 ms', t.at + interval '50 ms', 'bench-history', t.at
    FROM generate_series(1, $1::int) AS i,
         LATERAL (SELECT now() - interval '30 days' + i * (interval '30 days' / $1::int) AS at) AS t,
         LATERAL (SELECT CASE WHEN i % 100 = 1 THEN 'failed' WHEN i % 100 = 2 THEN 'timeout'
                              WHEN i % 100 = 3 THEN 'cancelled' ELSE 'completed' END AS status) AS s`

/**
 * Retries of `flaky`, bulk: pending, attempt 2, one failed attempt recorded, due at now() + the
 * offset $2 + i × $3 (negative: due already).
 */
const SEED_RETRIES = `
  INSERT INTO task_runs (task_id, status, attempt, priority, input, error, error_code, previous_attempts, scheduled_for, created_at)
  SELECT 'flaky', 'pending', 2, 100, jsonb_build_object('i', i), 'bench: worker unavailable', 'HTTP_503',
         jsonb_build_array(jsonb_build_object('attempt', 1, 'error', 'bench: worker unavailable', 'errorCode', 'HTTP_503', 'at', now() - interval '2 hours')),
         now() + $2::interval + i * $3::interval, now() - interval '2 hours'
    FROM generate_series(1, $1::int) AS i`

/**
 * Retries made for real: `count` runs of flaky enqueued, each claimed and failed with a retry after
 * `delayMs`, with `run`'s own upkeep of task_runs (a VACUUM every VACUUM_EVERY_CLAIMS runs claimed).
 */
async function realRetries(db, count, delayMs) {
  await lib.enqueueBulk(db.url, 'flaky', count)
  const repo = lib.requireDist('orchestrator/repository').createRepository(db.pw, 'bench-failer')
  const { VACUUM_EVERY_CLAIMS } = lib.requireDist('orchestrator/watch')
  await repo.heartbeat()
  let done = 0
  let sinceVacuum = 0
  while (done < count) {
    const { state, runs } = await repo.claim(Math.min(100, count - done), leaseMs())
    if (state !== 'running' || runs.length === 0) throw new Error(`a claim of the retry set returned ${state} with ${runs.length} runs after ${done}`)
    const results = await repo.fail(runs.map((r, i) => ({
      runId: r.id, attempt: r.attempt, error: 'bench: worker unavailable', code: 'HTTP_503', retry: true,
      delayMs: delayMs + ((done + i) % 1000), status: 'failed',
    })))
    if (results.some((r) => r.outcome !== 'retried')) throw new Error(`a failure was not retried: ${JSON.stringify(results)}`)
    done += runs.length
    sinceVacuum += runs.length
    if (sinceVacuum >= VACUUM_EVERY_CLAIMS) {
      await repo.vacuum()
      sinceVacuum = 0
    }
  }
  await repo.deregister()
}

/** The drain of `count` runs by a real `pipeweave run` (HTTP worker), history kept. */
async function realDrain(db, worker, count, log) {
  await lib.enqueueBulk(db.url, 'plain', count)
  const run = lib.startRun(db.url, { concurrency: 10 })
  try {
    const start = await run.started
    const end = await lib.waitUntilEmpty(db.client, lib.RUNS_LEFT, { intervalMs: 50, timeoutMs: 3_600_000, what: 'pipeweave draining the real part of the history' })
    log(`claim: drained ${lib.fmt(count)} runs for real in ${lib.fmt((end - start) / 1000, 1)} s`)
  } finally {
    const code = await run.stop()
    if (code !== 0) throw new Error(`pipeweave run exited ${code} after SIGTERM`)
  }
}

const STATES = [
  { key: 'empty', title: 'empty queue (only the runs to claim)', prepare: async () => undefined },
  {
    key: 'finished',
    title: `${lib.fmt(FINISHED)} finished runs (${lib.fmt(REAL_FINISHED)} drained for real)`,
    prepare: async (db, worker, log) => {
      if (FINISHED > REAL_FINISHED) {
        const seeded = await lib.timeAsync(() => db.client.query(SEED_HISTORY, [FINISHED - REAL_FINISHED]))
        log(`claim: bulk-inserted ${lib.fmt(FINISHED - REAL_FINISHED)} finished runs in ${lib.fmt(seeded.ms / 1000, 1)} s`)
        await db.client.query('ANALYZE task_run_history')
      }
      if (REAL_FINISHED > 0) await realDrain(db, worker, REAL_FINISHED, log)
    },
  },
  {
    key: 'dueRetries',
    title: `${lib.fmt(BACKLOG)} due retries (${lib.fmt(REAL_BACKLOG)} made by claim + fail, with run's VACUUM)`,
    prepare: async (db) => {
      if (REAL_BACKLOG > 0) await realRetries(db, REAL_BACKLOG, 0)
      if (BACKLOG > REAL_BACKLOG) await db.client.query(SEED_RETRIES, [BACKLOG - REAL_BACKLOG, '-1 hour', `${3_600_000 / BACKLOG} ms`])
    },
  },
  {
    key: 'futureRetries',
    title: `${lib.fmt(BACKLOG)} retries due in 1–25 h (${lib.fmt(REAL_BACKLOG)} made by claim + fail, with run's VACUUM)`,
    prepare: async (db) => {
      if (REAL_BACKLOG > 0) await realRetries(db, REAL_BACKLOG, 3_600_000)
      if (BACKLOG > REAL_BACKLOG) await db.client.query(SEED_RETRIES, [BACKLOG - REAL_BACKLOG, '1 hour', `${86_400_000 / BACKLOG} ms`])
    },
  },
  {
    key: 'limited',
    title: `${lib.fmt(BACKLOG)} pending runs of a task at its limit (${LIMIT} running)`,
    prepare: async (db) => {
      await lib.enqueueBulk(db.url, 'limited', BACKLOG)
      const holder = lib.requireDist('orchestrator/repository').createRepository(db.pw, 'bench-holder')
      await holder.heartbeat()
      const { runs } = await holder.claim(BATCH, leaseMs())
      if (runs.length !== LIMIT || runs.some((r) => r.taskId !== 'limited')) throw new Error(`the holder claimed ${runs.length} runs, expected ${LIMIT} of limited`)
    },
  },
]

async function prepareState(server, state, worker, log) {
  const database = await lib.createDatabase(server, { migrated: true })
  const db = { url: database.url, database }
  try {
    await lib.registerService(database.url, worker.url, TASKS)
    db.client = await lib.connect(database.url)
    db.pw = await lib.openDatabase(database.url, 'bench-claim')
    await state.prepare(db, worker, log)
    // The runs every claim takes (or, with due retries, passes over for older due work).
    await lib.enqueueBulk(database.url, 'plain', PENDING)
    await db.client.query('ANALYZE task_runs')
    const { rows: [info] } = await db.client.query(`
      SELECT pg_size_pretty(pg_total_relation_size('task_runs')) AS live_size,
             pg_size_pretty(pg_total_relation_size('task_run_history')) AS history_size,
             (SELECT count(*)::int FROM task_runs) AS live_rows,
             (SELECT n_dead_tup::int FROM pg_stat_user_tables WHERE relid = 'task_runs'::regclass) AS dead,
             (SELECT (vacuum_count + autovacuum_count)::int FROM pg_stat_user_tables WHERE relid = 'task_runs'::regclass) AS vacuums`)
    db.info = info
    db.repo = lib.requireDist('orchestrator/repository').createRepository(db.pw, CLAIMER)
    await db.repo.heartbeat()
    log(`claim: ${state.key} ready: task_runs ${info.live_rows} rows (${info.live_size}, ~${info.dead} dead, vacuumed ${info.vacuums}×), history ${info.history_size}`)
    return db
  } catch (error) {
    await lib.closeClaimDatabase(db)
    throw error
  }
}

/** One claim through the repository, in a transaction rolled back afterwards; its round trip in ms. */
async function claimOnce(db, lease) {
  const { ms, result } = await lib.timedClaim(db.pw, CLAIMER, BATCH, lease)
  if (result.state !== 'running' || result.runs.length !== BATCH) {
    throw new Error(`the claim answered ${result.state} with ${result.runs.length} runs, expected running with ${BATCH}`)
  }
  return ms
}

/** EXPLAIN (ANALYZE, BUFFERS) of the claim, rolled back: buffers touched, planning and execution ms. */
async function explainOnce(db, lease) {
  const plan = await lib.explainClaim(db.pw, CLAIMER, BATCH, lease)
  const top = plan.Plan
  return {
    buffers: top['Shared Hit Blocks'] + top['Shared Read Blocks'],
    planningBuffers: (plan.Planning?.['Shared Hit Blocks'] ?? 0) + (plan.Planning?.['Shared Read Blocks'] ?? 0),
    planningMs: plan['Planning Time'],
    executionMs: plan['Execution Time'],
    rows: top['Actual Rows'],
  }
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const worker = await lib.startWorker()
  const dbs = {}
  try {
    for (const state of STATES) dbs[state.key] = await prepareState(server, state, worker, log)
    const lease = leaseMs()
    // Preparing the other states takes longer than the lease: register each again before claiming.
    for (const state of STATES) await dbs[state.key].repo.heartbeat()
    const loads = [lib.load()]
    // Warm each (catalog caches, buffers) before counting.
    for (const state of STATES) for (let i = 0; i < 20; i++) await claimOnce(dbs[state.key], lease)
    const explains = /** @type {Record<string, Array<Awaited<ReturnType<typeof explainOnce>>>>} */ (Object.fromEntries(STATES.map((s) => [s.key, []])))
    for (let i = 0; i < EXPLAINS; i++) for (const state of STATES) explains[state.key].push(await explainOnce(dbs[state.key], lease))
    const rounds = /** @type {Record<string, number[][]>} */ (Object.fromEntries(STATES.map((s) => [s.key, []])))
    for (let round = 0; round < ROUNDS; round++) {
      for (const state of STATES) await dbs[state.key].repo.heartbeat()
      const samples = /** @type {Record<string, number[]>} */ (Object.fromEntries(STATES.map((s) => [s.key, []])))
      for (let i = 0; i < SAMPLES; i++) {
        if (i > 0 && i % 100 === 0) for (const state of STATES) await dbs[state.key].repo.heartbeat()
        for (const state of lib.rotate(STATES, i)) samples[state.key].push(await claimOnce(dbs[state.key], lease))
      }
      for (const state of STATES) rounds[state.key].push(samples[state.key])
      log(`claim round ${round + 1}/${ROUNDS}: ${STATES.map((s) => `${s.key} ${lib.fmt(lib.median(samples[s.key]), 2)} ms`).join(', ')}, ${lib.load()}`)
    }
    loads.push(lib.load())
    process.stdout.write(`${report(dbs, rounds, explains, loads)}\n`)
    return { rounds, explains }
  } finally {
    for (const db of Object.values(dbs)) await lib.closeClaimDatabase(db)
    await worker.close()
  }
}

function report(dbs, rounds, explains, loads) {
  const lines = [lib.heading(`Claim cost: claimRuns through the repository, claim(${BATCH}, lease), in each state of acceptance 3`)]
  lines.push(`each state in a database of its own; ${PENDING} runs of task plain to claim in every state; no VACUUM before measuring (ANALYZE only), autovacuum at its defaults`)
  lines.push(`${ROUNDS} rounds × ${SAMPLES} claims per state, alternating, each in a transaction rolled back; round trip ms as \`run\` sees it (median of the rounds' medians)`)
  lines.push(`EXPLAIN (ANALYZE, BUFFERS) of the same statement, ${EXPLAINS} times each (median): shared buffers hit + read by the execution`)
  lines.push(`${loads[0]} before, ${loads[loads.length - 1]} after`)
  const medianOf = (key) => lib.median(rounds[key].map((s) => lib.median(s)))
  const empty = medianOf('empty')
  const emptyBuffers = lib.median(explains.empty.map((e) => e.buffers))
  lines.push(lib.table([
    { title: 'state', align: 'left' }, { title: 'task_runs', align: 'right' }, { title: 'history', align: 'right' },
    { title: 'median ms', align: 'right' }, { title: 'medians of the rounds', align: 'right' }, { title: 'p90', align: 'right' },
    { title: '÷ empty', align: 'right' }, { title: 'buffers', align: 'right' }, { title: '÷ empty', align: 'right' },
    { title: 'plan ms', align: 'right' }, { title: 'exec ms', align: 'right' },
  ], STATES.map((state) => {
    const all = rounds[state.key].flat()
    const e = explains[state.key]
    const buffers = lib.median(e.map((x) => x.buffers))
    const info = dbs[state.key].info
    return [
      state.title, `${lib.fmt(info.live_rows)} rows, ${info.live_size}`, info.history_size,
      lib.fmt(medianOf(state.key), 2), rounds[state.key].map((s) => lib.fmt(lib.median(s), 2)).join(' / '), lib.fmt(lib.percentile(all, 90), 2),
      `${lib.fmt(medianOf(state.key) / empty, 2)}×`, lib.fmt(buffers), `${lib.fmt(buffers / emptyBuffers, 2)}×`,
      lib.fmt(lib.median(e.map((x) => x.planningMs)), 2), lib.fmt(lib.median(e.map((x) => x.executionMs)), 2),
    ]
  })))
  lines.push(`task_runs at the start of measuring: ${STATES.map((s) => `${s.key} ~${lib.fmt(dbs[s.key].info.dead)} dead tuples (vacuumed ${dbs[s.key].info.vacuums}×)`).join(', ')}`)
  lines.push('')
  const worst = STATES.filter((s) => s.key !== 'empty').map((s) => ({ s, ratio: medianOf(s.key) / empty })).sort((a, b) => b.ratio - a.ratio)[0]
  const flat = STATES.every((s) => medianOf(s.key) / empty <= TARGET_RATIO)
  lines.push(`goal flat, every state's median ≤ ${TARGET_RATIO}× the empty queue's: worst ${worst.s.key} ${lib.fmt(worst.ratio, 2)}× — ${flat ? 'met' : 'NOT met'}`)
  const buffersOf = (key) => lib.median(explains[key].map((e) => e.buffers))
  const worstBuffers = STATES.filter((s) => s.key !== 'empty').map((s) => ({ s, ratio: buffersOf(s.key) / emptyBuffers })).sort((a, b) => b.ratio - a.ratio)[0]
  lines.push(`goal flat, every state's buffers ≤ ${TARGET_RATIO}× the empty queue's: worst ${worstBuffers.s.key} ${lib.fmt(worstBuffers.ratio, 2)}× — ${worstBuffers.ratio <= TARGET_RATIO ? 'met' : 'NOT met'}`)
  return lines.join('\n')
}

module.exports = { name: 'claim cost', run }

if (require.main === module) lib.runAlone((server) => run(server))
