'use strict'
/**
 * Drain latency (issues 5 and 10): with `pipeweave run` (the real CLI process, --concurrency 10, default
 * intervals) alive and busy on a queue of runs that each take BENCH_DRAIN_TASK_MS at the worker,
 * maintenance is requested (requestMaintenance, as `maintenance:request` does) half-way through;
 * the figure is the time from the last run completing (its completed_at in task_run_history) to the mode becoming
 * `maintenance` (the maintenance_events row's `at`), both stamped by the database. Then
 * `maintenance:exit` and the same process goes on with the next round. Goal: ≤ 1 s, every round.
 *
 *   node bench/drain.js
 * Environment (defaults in brackets):
 *   BENCH_DRAIN_ROUNDS [5]      maintenance requests, one per round
 *   BENCH_DRAIN_RUNS [300]      runs queued per round
 *   BENCH_DRAIN_TASK_MS [20]    how long the worker takes to answer each run
 */
const lib = require('./lib')

const ROUNDS = Number(process.env.BENCH_DRAIN_ROUNDS || 5)
const RUNS = Number(process.env.BENCH_DRAIN_RUNS || 300)
const TASK_MS = Number(process.env.BENCH_DRAIN_TASK_MS || 20)
const TARGET_MS = 1000

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const database = await lib.createDatabase(server, { migrated: true })
  const worker = await lib.startWorker({ delayMs: TASK_MS })
  const client = await lib.connect(database.url)
  const db = await lib.openDatabase(database.url, 'bench-maintenance')
  const { requestMaintenance, exitMaintenance } = lib.requireDist('maintenance/maintenance')
  let pipeweave
  const loads = [lib.load()]
  try {
    await lib.registerService(database.url, worker.url, [{ id: 'work', retries: 0 }])
    pipeweave = lib.startRun(database.url, { concurrency: 10 })
    await pipeweave.started
    const samples = []
    for (let round = 0; round < ROUNDS; round++) {
      await lib.seedRuns(client, 'work', RUNS)
      // Finished runs leave task_runs for task_run_history in the statement that finishes them.
      const completed = async () => (await client.query(`SELECT count(*)::int AS n FROM task_run_history WHERE status = 'completed'`)).rows[0].n
      const doneBefore = await completed()
      await lib.waitFor(async () => (await completed()) - doneBefore >= RUNS / 2, { intervalMs: 20, what: 'half of the runs to complete' })
      const requested = await requestMaintenance(db, { reason: 'bench: drain latency' })
      if (requested.mode === 'maintenance') throw new Error('the queue had drained before the request: raise BENCH_DRAIN_RUNS or BENCH_DRAIN_TASK_MS')
      const { rows: [{ id: eventBefore }] } = await client.query(`SELECT COALESCE(max(id), 0) AS id FROM maintenance_events`)
      await lib.waitFor(async () => (await client.query(`SELECT mode FROM orchestrator_state`)).rows[0].mode === 'maintenance',
        { intervalMs: 20, timeoutMs: 120_000, what: 'the mode to become maintenance' })
      const { rows: [r] } = await client.query(`
        SELECT extract(epoch FROM e.at - (SELECT max(completed_at) FROM task_run_history)) * 1000 AS latency_ms,
               e.actor, (SELECT count(*)::int FROM task_runs) AS unfinished,
               (SELECT count(*)::int FROM task_run_history WHERE status <> 'completed') AS unsuccessful
          FROM maintenance_events e
         WHERE e.to_mode = 'maintenance' AND e.id >= $1
         ORDER BY e.id DESC LIMIT 1`, [eventBefore])
      if (r.unfinished !== 0) throw new Error(`${r.unfinished} runs still live (task_runs) at maintenance`)
      if (r.unsuccessful !== 0) throw new Error(`${r.unsuccessful} runs finished otherwise than completed`)
      samples.push({ ms: Number(r.latency_ms), actor: r.actor })
      log(`drain round ${round + 1}/${ROUNDS}: ${lib.fmt(Number(r.latency_ms), 1)} ms (${r.actor}), ${lib.load()}`)
      await exitMaintenance(db, { reason: 'bench: next round' })
    }
    loads.push(lib.load())
    process.stdout.write(`${report(samples, loads)}\n`)
    return samples
  } finally {
    if (pipeweave) await pipeweave.stop()
    await db.close()
    await client.end()
    await worker.close()
    await database.drop()
  }
}

function report(samples, loads) {
  const ms = samples.map((s) => s.ms)
  const s = lib.summary(ms)
  const byRun = samples.filter((x) => !x.actor.endsWith(` ${process.pid}`)).length
  const lines = [lib.heading('Drain latency: last run completed → mode maintenance, `run` alive and busy')]
  lines.push(`${ROUNDS} rounds of ${RUNS} runs of ${TASK_MS} ms at concurrency 10, maintenance requested half-way; database timestamps (completed_at → maintenance_events.at); ${loads[0]} before, ${loads[loads.length - 1]} after`)
  lines.push(lib.table([
    { title: 'rounds', align: 'right' }, { title: 'median ms', align: 'right' }, { title: 'min ms', align: 'right' },
    { title: 'max ms', align: 'right' }, { title: 'ms of each round', align: 'right' }, { title: 'drain seen by', align: 'left' },
  ], [[String(s.n), lib.fmt(s.median, 1), lib.fmt(s.min, 1), lib.fmt(s.max, 1), ms.map((v) => lib.fmt(v, 1)).join(' / '),
    `the orchestrator in ${byRun} of ${s.n} rounds`]]))
  lines.push('')
  lines.push(`target ≤ ${TARGET_MS} ms in every round: max ${lib.fmt(s.max, 1)} ms — ${s.max <= TARGET_MS ? 'met' : 'NOT met'}`)
  return lines.join('\n')
}

module.exports = { name: 'drain latency', run }

if (require.main === module) lib.runAlone((server) => run(server))
