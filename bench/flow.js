'use strict'
/**
 * Flow control (issue 12, "Figures"), three sections, each on databases of its own:
 *
 *   claim cost        the claim statement (claimRuns, dist/sql/task-runs) through the repository,
 *                     claim(10, lease), in each state: empty (only the runs to claim,
 *                     BENCH_FLOW_PENDING of task `plain`); + BENCH_FLOW_BACKLOG pending runs of a
 *                     paused task; + BENCH_FLOW_BACKLOG pending runs of a task at its rate limit
 *                     (2 per hour, both used); both backlogs together. Each claim in a transaction
 *                     rolled back; the states alternate claim by claim. Goal flat: each state's
 *                     median within 2× of the empty queue's.
 *   throttled backlog the drain rate of an unthrottled task (BENCH_FLOW_FREE_RUNS runs of `free`)
 *                     by one `pipeweave run` (--concurrency 50, HTTP worker answering at once),
 *                     alone, then while a throttled task (20 per second) has BENCH_FLOW_THROTTLED
 *                     pending runs. Goal: ≥ 0.9× its rate alone.
 *   rate drain        BENCH_FLOW_RATE_RUNS runs of a task limited to 20 per 1,000 ms, drained by
 *                     three `pipeweave run` processes (--concurrency 50): wall time from the first
 *                     start to the last completion (started_at, completed_at). Goal: at most 10%
 *                     more than the limit needs (runs / 20 seconds: 1,000 runs ≤ 55 s); and no
 *                     window of 1,000 ms of started_at holds more than 20.
 *
 *   node bench/flow.js
 * Environment (defaults in brackets):
 *   BENCH_FLOW_BACKLOG [100000]      pending runs of the paused / the rate-limited task
 *   BENCH_FLOW_PENDING [100]         runs to claim (task `plain`)
 *   BENCH_FLOW_SAMPLES [300]         claims per state and round
 *   BENCH_FLOW_ROUNDS [3]            rounds; the figure is the median of the rounds' medians
 *   BENCH_FLOW_FREE_RUNS [20000]     runs of the unthrottled task, per drain
 *   BENCH_FLOW_THROTTLED [100000]    the throttled task's backlog during the second drain
 *   BENCH_FLOW_RATE_RUNS [1000]      runs drained at 20 per 1,000 ms
 */
const lib = require('./lib')

const BACKLOG = Number(process.env.BENCH_FLOW_BACKLOG || 100_000)
const PENDING = Number(process.env.BENCH_FLOW_PENDING || 100)
const SAMPLES = Number(process.env.BENCH_FLOW_SAMPLES || 300)
const ROUNDS = Number(process.env.BENCH_FLOW_ROUNDS || 3)
const FREE_RUNS = Number(process.env.BENCH_FLOW_FREE_RUNS || 20_000)
const THROTTLED = Number(process.env.BENCH_FLOW_THROTTLED || 100_000)
const RATE_RUNS = Number(process.env.BENCH_FLOW_RATE_RUNS || 1000)
const BATCH = 10
const RATE = { limit: 20, periodMs: 1000 }
const CLAIMER = 'bench-flow-claimer'

const leaseMs = lib.claimLeaseMs

/** `count` pending runs of `taskId`, bulk (INSERT … SELECT: the queue filled before the clock starts). */
async function seed(client, taskId, count) {
  await client.query(`INSERT INTO task_runs (task_id, input) SELECT $1, jsonb_build_object('i', i) FROM generate_series(1, $2::int) AS i`, [taskId, count])
}

// ---------------------------------------------------------------------------------------------
// Claim cost

const CLAIM_TASKS = [{ id: 'plain', retries: 0 }, { id: 'paused', retries: 0 }, { id: 'limited', retries: 0 }]

/** The paused task, and the rate-limited one at its limit: 2 per hour, both slots used by a real claim. */
async function pauseAndLimit(db, { paused, limited }) {
  await db.client.query(`UPDATE tasks SET paused_at = now(), paused_by = 'bench' WHERE id = 'paused'`)
  await db.client.query(`UPDATE tasks SET rate_limit = 2, rate_period_ms = 3600000 WHERE id = 'limited'`)
  if (paused) await seed(db.client, 'paused', BACKLOG)
  if (limited) {
    await seed(db.client, 'limited', BACKLOG)
    const holder = lib.requireDist('orchestrator/repository').createRepository(db.pw, 'bench-holder')
    await holder.heartbeat()
    const { runs } = await holder.claim(BATCH, leaseMs())
    if (runs.length !== 2 || runs.some((r) => r.taskId !== 'limited')) throw new Error(`the holder claimed ${runs.length} runs, expected 2 of limited`)
  }
}

const CLAIM_STATES = [
  { key: 'empty', title: 'empty queue (only the runs to claim)', backlog: {} },
  { key: 'paused', title: `${lib.fmt(BACKLOG)} pending runs of a paused task`, backlog: { paused: true } },
  { key: 'limited', title: `${lib.fmt(BACKLOG)} pending runs of a task at its rate limit`, backlog: { limited: true } },
  { key: 'both', title: `both backlogs (${lib.fmt(2 * BACKLOG)} runs)`, backlog: { paused: true, limited: true } },
]

async function prepareClaimState(server, state, worker) {
  const database = await lib.createDatabase(server, { migrated: true })
  const db = { database }
  try {
    await lib.registerService(database.url, worker.url, CLAIM_TASKS)
    db.client = await lib.connect(database.url)
    db.pw = await lib.openDatabase(database.url, 'bench-flow')
    await pauseAndLimit(db, state.backlog)
    await seed(db.client, 'plain', PENDING)
    await db.client.query('VACUUM (ANALYZE) task_runs')
    db.repo = lib.requireDist('orchestrator/repository').createRepository(db.pw, CLAIMER)
    await db.repo.heartbeat()
    return db
  } catch (error) {
    await lib.closeClaimDatabase(db)
    throw error
  }
}

async function claimOnce(db, lease) {
  const { ms, result } = await lib.timedClaim(db.pw, CLAIMER, BATCH, lease)
  if (result.state !== 'running' || result.runs.length !== BATCH || result.runs.some((r) => r.taskId !== 'plain')) {
    throw new Error(`the claim answered ${result.state} with ${result.runs.length} runs, expected running with ${BATCH} of plain`)
  }
  return ms
}

async function explainBuffers(db, lease) {
  const { Plan: plan } = await lib.explainClaim(db.pw, CLAIMER, BATCH, lease)
  return plan['Shared Hit Blocks'] + plan['Shared Read Blocks']
}

async function claimCost(server, log) {
  const worker = await lib.startWorker()
  const dbs = {}
  try {
    for (const state of CLAIM_STATES) {
      dbs[state.key] = await prepareClaimState(server, state, worker)
      log(`flow claim: ${state.key} ready`)
    }
    const lease = leaseMs()
    for (const state of CLAIM_STATES) for (let i = 0; i < 20; i++) await claimOnce(dbs[state.key], lease)
    const buffers = {}
    for (const state of CLAIM_STATES) {
      const b = []
      for (let i = 0; i < 3; i++) b.push(await explainBuffers(dbs[state.key], lease))
      buffers[state.key] = lib.median(b)
    }
    const rounds = /** @type {Record<string, number[]>} */ (Object.fromEntries(CLAIM_STATES.map((s) => [s.key, []])))
    for (let round = 0; round < ROUNDS; round++) {
      for (const state of CLAIM_STATES) await dbs[state.key].repo.heartbeat()
      const samples = /** @type {Record<string, number[]>} */ (Object.fromEntries(CLAIM_STATES.map((s) => [s.key, []])))
      for (let i = 0; i < SAMPLES; i++) {
        if (i > 0 && i % 100 === 0) for (const state of CLAIM_STATES) await dbs[state.key].repo.heartbeat()
        for (const state of lib.rotate(CLAIM_STATES, i)) samples[state.key].push(await claimOnce(dbs[state.key], lease))
      }
      for (const state of CLAIM_STATES) rounds[state.key].push(lib.median(samples[state.key]))
      log(`flow claim round ${round + 1}/${ROUNDS}: ${CLAIM_STATES.map((s) => `${s.key} ${lib.fmt(lib.median(samples[s.key]), 2)} ms`).join(', ')}, ${lib.load()}`)
    }
    const median = (key) => lib.median(rounds[key])
    const lines = [lib.heading(`Flow control — claim cost: claim(${BATCH}) with paused and rate-limited backlogs`)]
    lines.push(`${PENDING} runs of task plain to claim in every state; ${ROUNDS} rounds × ${SAMPLES} claims per state, alternating, each rolled back; ${lib.load()}`)
    lines.push(lib.table([
      { title: 'state', align: 'left' }, { title: 'median ms', align: 'right' }, { title: 'medians of the rounds', align: 'right' },
      { title: '÷ empty', align: 'right' }, { title: 'buffers', align: 'right' }, { title: '÷ empty', align: 'right' },
    ], CLAIM_STATES.map((s) => [
      s.title, lib.fmt(median(s.key), 2), rounds[s.key].map((m) => lib.fmt(m, 2)).join(' / '),
      `${lib.fmt(median(s.key) / median('empty'), 2)}×`, lib.fmt(buffers[s.key]), `${lib.fmt(buffers[s.key] / buffers.empty, 2)}×`,
    ])))
    const worst = Math.max(...CLAIM_STATES.map((s) => median(s.key) / median('empty')))
    lines.push('')
    lines.push(`goal flat, every state's median ≤ 2× the empty queue's: worst ${lib.fmt(worst, 2)}× — ${worst <= 2 ? 'met' : 'NOT met'}`)
    return lines.join('\n')
  } finally {
    for (const db of Object.values(dbs)) await lib.closeClaimDatabase(db)
    await worker.close()
  }
}

// ---------------------------------------------------------------------------------------------
// Drain of an unthrottled task, alone and beside a throttled backlog

async function drainFree(server, worker, throttled, log) {
  const database = await lib.createDatabase(server, { migrated: true })
  const client = await lib.connect(database.url)
  let run
  try {
    await lib.registerService(database.url, worker.url, [{ id: 'free', retries: 0 }, { id: 'throttled', retries: 0 }])
    await client.query(`UPDATE tasks SET rate_limit = $1, rate_period_ms = $2 WHERE id = 'throttled'`, [RATE.limit, RATE.periodMs])
    if (throttled > 0) await seed(client, 'throttled', throttled)
    await seed(client, 'free', FREE_RUNS)
    await client.query('VACUUM (ANALYZE) task_runs')
    run = lib.startRun(database.url, { concurrency: 50 })
    const start = await run.started
    // The poll reads free's runs in claim-index order (and the running index): a plain
    // `task_id =` filter was planned as a scan through the throttled backlog (13 ms a poll, a
    // third of a core at 50 polls a second), which slowed the drain it measures.
    const end = await lib.waitUntilEmpty(client, `(SELECT 1 FROM task_runs WHERE status = 'pending' AND task_id = 'free' ORDER BY task_id, priority, due_at, id LIMIT 1)
      UNION ALL (SELECT 1 FROM task_runs WHERE status = 'running' AND task_id = 'free' LIMIT 1)`, { intervalMs: 20, timeoutMs: 600_000, what: 'the free runs to drain' })
    const { rows: [t] } = await client.query(`SELECT count(*)::int AS n FROM task_run_history WHERE task_id = 'throttled'`)
    const seconds = (end - start) / 1000
    log(`flow throttled backlog: ${lib.fmt(FREE_RUNS)} free runs in ${lib.fmt(seconds, 2)} s with ${lib.fmt(throttled)} throttled pending (${t.n} of them ran meanwhile)`)
    return { seconds, rate: FREE_RUNS / seconds, throttledRan: t.n }
  } finally {
    if (run) {
      const code = await run.stop()
      if (code !== 0) throw new Error(`pipeweave run exited ${code} after SIGTERM`)
    }
    await client.end()
    await database.drop()
  }
}

async function throttledBacklog(server, log) {
  const worker = await lib.startWorker()
  try {
    const alone = []
    const beside = []
    for (let round = 0; round < ROUNDS; round++) {
      alone.push(await drainFree(server, worker, 0, log))
      beside.push(await drainFree(server, worker, THROTTLED, log))
    }
    const rateAlone = lib.median(alone.map((r) => r.rate))
    const rateBeside = lib.median(beside.map((r) => r.rate))
    const ratio = rateBeside / rateAlone
    const lines = [lib.heading('Flow control — drain rate of an unthrottled task beside a throttled backlog')]
    lines.push(`${lib.fmt(FREE_RUNS)} runs of free by one \`pipeweave run\` (--concurrency 50, worker answering at once), alone and with ${lib.fmt(THROTTLED)} pending runs of a task limited to ${RATE.limit} per ${RATE.periodMs} ms; ${ROUNDS} rounds each, alternating; ${lib.load()}`)
    lines.push(lib.table([
      { title: 'drain', align: 'left' }, { title: 'median runs/s', align: 'right' }, { title: 'runs/s of each round', align: 'right' },
    ], [
      ['free alone', lib.fmt(rateAlone, 0), alone.map((r) => lib.fmt(r.rate, 0)).join(' / ')],
      [`free beside ${lib.fmt(THROTTLED)} throttled`, lib.fmt(rateBeside, 0), beside.map((r) => lib.fmt(r.rate, 0)).join(' / ')],
    ]))
    lines.push('')
    lines.push(`goal ≥ 0.9× its rate alone: ${lib.fmt(ratio, 2)}× — ${ratio >= 0.9 ? 'met' : 'NOT met'}`)
    return lines.join('\n')
  } finally {
    await worker.close()
  }
}

// ---------------------------------------------------------------------------------------------
// 1,000 runs at 20 per second

async function rateDrain(server, log) {
  const worker = await lib.startWorker()
  const database = await lib.createDatabase(server, { migrated: true })
  const client = await lib.connect(database.url)
  const runs = []
  try {
    await lib.registerService(database.url, worker.url, [{ id: 'limited', retries: 0 }])
    await client.query(`UPDATE tasks SET rate_limit = $1, rate_period_ms = $2 WHERE id = 'limited'`, [RATE.limit, RATE.periodMs])
    for (let i = 0; i < 3; i++) runs.push(lib.startRun(database.url, { concurrency: 50 }))
    await Promise.all(runs.map((r) => r.started))
    await lib.enqueueBulk(database.url, 'limited', RATE_RUNS)
    const needS = (RATE_RUNS / RATE.limit) * (RATE.periodMs / 1000)
    await lib.waitUntilEmpty(client, lib.RUNS_LEFT, { intervalMs: 100, timeoutMs: Math.max(120_000, needS * 3000), what: 'the rate-limited runs to drain' })
    const { rows: [r] } = await client.query(`
      SELECT extract(epoch FROM max(completed_at) - min(started_at)) AS seconds, count(*)::int AS n,
             (SELECT max(w.n) FROM (SELECT count(*) OVER (ORDER BY started_at RANGE BETWEEN CURRENT ROW AND interval '1000 ms' FOLLOWING) AS n
                                      FROM task_run_history) AS w)::int AS busiest
        FROM task_run_history WHERE status = 'completed'`)
    if (r.n !== RATE_RUNS) throw new Error(`${r.n} runs completed, expected ${RATE_RUNS}`)
    const seconds = Number(r.seconds)
    log(`flow rate drain: ${RATE_RUNS} runs in ${lib.fmt(seconds, 2)} s, busiest window ${r.busiest}`)
    const target = needS * 1.1
    const lines = [lib.heading(`Flow control — ${lib.fmt(RATE_RUNS)} runs at ${RATE.limit} per ${RATE.periodMs} ms, three \`pipeweave run\` (--concurrency 50)`)]
    lines.push(`first started_at → last completed_at, database timestamps; ${lib.load()}`)
    lines.push(lib.table([
      { title: 'runs', align: 'right' }, { title: 'seconds', align: 'right' }, { title: 'the limit needs', align: 'right' },
      { title: 'busiest 1,000 ms window', align: 'right' },
    ], [[lib.fmt(RATE_RUNS), lib.fmt(seconds, 2), `${lib.fmt(needS, 0)} s`, String(r.busiest)]]))
    lines.push('')
    const met = seconds <= target && r.busiest <= RATE.limit
    lines.push(`goal ≤ ${lib.fmt(target, 1)} s (10% over what the limit needs), no window over ${RATE.limit}: ${lib.fmt(seconds, 2)} s, busiest ${r.busiest} — ${met ? 'met' : 'NOT met'}`)
    return lines.join('\n')
  } finally {
    for (const run of runs) await run.stop()
    await client.end()
    await database.drop()
    await worker.close()
  }
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  process.stdout.write(`${await claimCost(server, log)}\n`)
  process.stdout.write(`${await throttledBacklog(server, log)}\n`)
  process.stdout.write(`${await rateDrain(server, log)}\n`)
}

module.exports = { name: 'flow control', run }

if (require.main === module) lib.runAlone((server) => run(server))
