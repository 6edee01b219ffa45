'use strict'
/**
 * Sustained drain (issue 10, acceptance 4): 200,000 runs enqueued with enqueueTasks (then the
 * table vacuumed, before the clock), drained by one `pipeweave run` (the real CLI process,
 * --concurrency 10) that POSTs each to a keep-alive loopback no-op worker, history kept (finished
 * runs stay in task_run_history). The rates come from the database's completed_at: the first
 * BENCH_SUSTAINED_WINDOW runs to complete and the last as many, each (window − 1) ÷ the time from
 * its first completion to its last. Goal: last ≥ 0.8× first. Also printed: the rate of each tenth
 * of the drain, and what the orchestrator's VACUUM and autovacuum did to task_runs meanwhile.
 *
 *   node bench/sustained.js
 * Environment (defaults in brackets):
 *   BENCH_SUSTAINED_RUNS [200000]     runs drained
 *   BENCH_SUSTAINED_WINDOW [20000]    runs in the first and the last window
 *   BENCH_SUSTAINED_ROUNDS [3]        drains (each from empty tables); the ratio is the median
 *   BENCH_CONCURRENCY [10]
 */
const lib = require('./lib')

const RUNS = Number(process.env.BENCH_SUSTAINED_RUNS || 200_000)
const WINDOW = Math.min(RUNS, Number(process.env.BENCH_SUSTAINED_WINDOW || 20_000))
const ROUNDS = Number(process.env.BENCH_SUSTAINED_ROUNDS || 3)
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY || 10)
const TARGET_RATIO = 0.8
const TENTHS = 10

const RATES = `
  WITH o AS (SELECT completed_at AS at, row_number() OVER (ORDER BY completed_at, id) AS n FROM task_run_history),
       bounds AS (SELECT count(*) AS total FROM o)
  SELECT (SELECT extract(epoch FROM max(at) FILTER (WHERE n = $1) - min(at) FILTER (WHERE n = 1)) FROM o) AS first_s,
         (SELECT extract(epoch FROM max(at) FILTER (WHERE n = b.total) - min(at) FILTER (WHERE n = b.total - $1 + 1)) FROM o) AS last_s,
         (SELECT extract(epoch FROM max(at) - min(at)) FROM o) AS all_s,
         b.total::int AS total,
         ARRAY(SELECT extract(epoch FROM max(at) - min(at)) FROM o GROUP BY ((n - 1) * $2 / b.total) ORDER BY ((n - 1) * $2 / b.total)) AS tenth_s
    FROM bounds b`

async function oneDrain(database, client, worker, log) {
  await lib.clearRuns(client)
  await lib.enqueueBulk(database.url, 'noop', RUNS)
  await client.query('VACUUM (ANALYZE) task_runs')
  const { rows: [before] } = await client.query(`SELECT (vacuum_count + autovacuum_count)::int AS vacuums FROM pg_stat_user_tables WHERE relid = 'task_runs'::regclass`)
  const requests = worker.requests
  const run = lib.startRun(database.url, { concurrency: CONCURRENCY })
  let wall
  try {
    const start = await run.started
    const end = await lib.waitUntilEmpty(client, lib.RUNS_LEFT, { intervalMs: 100, timeoutMs: 3_600_000, what: 'pipeweave draining its runs' })
    wall = end - start
  } finally {
    const code = await run.stop()
    if (code !== 0) throw new Error(`pipeweave run exited ${code} after SIGTERM`)
  }
  if (worker.requests - requests !== RUNS) throw new Error(`the worker received ${worker.requests - requests} requests for ${RUNS} runs`)
  const { rows: [r] } = await client.query(RATES, [WINDOW, TENTHS])
  if (r.total !== RUNS) throw new Error(`task_run_history holds ${r.total} runs, expected ${RUNS}`)
  await lib.freshStats(client)
  const { rows: [after] } = await client.query(`
    SELECT (vacuum_count + autovacuum_count)::int AS vacuums, vacuum_count::int AS manual, n_dead_tup::int AS dead,
           pg_size_pretty(pg_total_relation_size('task_runs')) AS live_size,
           pg_size_pretty(pg_total_relation_size('task_run_history')) AS history_size
      FROM pg_stat_user_tables WHERE relid = 'task_runs'::regclass`)
  const perTenth = RUNS / TENTHS
  const result = {
    first: (WINDOW - 1) / Number(r.first_s),
    last: (WINDOW - 1) / Number(r.last_s),
    overall: (RUNS - 1) / Number(r.all_s),
    wall,
    tenths: r.tenth_s.map((s) => (perTenth - 1) / Number(s)),
    vacuums: after.vacuums - before.vacuums,
    dead: after.dead,
    liveSize: after.live_size,
    historySize: after.history_size,
  }
  result.ratio = result.last / result.first
  log(`sustained: first ${lib.fmt(result.first)} /s, last ${lib.fmt(result.last)} /s (${lib.fmt(result.ratio, 2)}×), overall ${lib.fmt(result.overall)} /s, ${lib.load()}`)
  return result
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const database = await lib.createDatabase(server, { migrated: true })
  const worker = await lib.startWorker()
  const client = await lib.connect(database.url)
  const loads = [lib.load()]
  try {
    await lib.registerService(database.url, worker.url, [{ id: 'noop', retries: 0 }])
    const results = []
    for (let round = 0; round < ROUNDS; round++) {
      log(`sustained round ${round + 1}/${ROUNDS}: enqueueing ${lib.fmt(RUNS)} runs`)
      results.push(await oneDrain(database, client, worker, log))
    }
    loads.push(lib.load())
    process.stdout.write(`${report(results, loads)}\n`)
    return results
  } finally {
    await client.end()
    await worker.close()
    await database.drop()
  }
}

function report(results, loads) {
  const lines = [lib.heading(`Sustained drain: ${lib.fmt(RUNS)} runs, one pipeweave run --concurrency ${CONCURRENCY} (HTTP hop), history kept`)]
  lines.push(`rates from task_run_history.completed_at: first and last ${lib.fmt(WINDOW)} runs to complete; ${ROUNDS} drain(s) from empty tables; ${loads[0]} before, ${loads[loads.length - 1]} after`)
  lines.push(lib.table([
    { title: 'drain', align: 'right' }, { title: `first ${lib.fmt(WINDOW)} /s`, align: 'right' }, { title: `last ${lib.fmt(WINDOW)} /s`, align: 'right' },
    { title: 'last ÷ first', align: 'right' }, { title: 'overall /s', align: 'right' }, { title: 'runs/s of each tenth', align: 'left' },
    { title: 'VACUUMs of task_runs', align: 'right' }, { title: 'task_runs after', align: 'right' }, { title: 'history after', align: 'right' },
  ], results.map((r, i) => [
    String(i + 1), lib.fmt(r.first), lib.fmt(r.last), `${lib.fmt(r.ratio, 2)}×`, lib.fmt(r.overall), r.tenths.map((t) => lib.fmt(t)).join(' '),
    String(r.vacuums), `${r.liveSize} (~${lib.fmt(r.dead)} dead)`, r.historySize,
  ])))
  lines.push('')
  const ratio = lib.median(results.map((r) => r.ratio))
  lines.push(`goal last ${lib.fmt(WINDOW)} ≥ ${TARGET_RATIO}× first ${lib.fmt(WINDOW)} (median of ${results.length}): ${lib.fmt(ratio, 2)}× — ${ratio >= TARGET_RATIO ? 'met' : 'NOT met'}`)
  return lines.join('\n')
}

module.exports = { name: 'sustained drain', run }

if (require.main === module) lib.runAlone((server) => run(server))
