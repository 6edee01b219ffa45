'use strict'
/**
 * Throughput (issue 5): 10,000 no-op runs drained by one `pipeweave run` (the real CLI process,
 * --concurrency 10, JSON logs) that POSTs each to a keep-alive loopback worker (a node:http server
 * answering {"output":null}), beside graphile-worker 0.17.3 (default settings, concurrency 10, in a
 * process of its own) draining 10,000 no-op jobs on the same server, and graphile-worker again
 * with a task that makes the same HTTP POST to the same worker. Goal: pipeweave at least as fast
 * as graphile-worker's no-op jobs, despite its HTTP hop.
 *
 * For each: the queue is filled in one statement and vacuumed before the process starts; the clock
 * starts when the process says it is consuming (pipeweave's "started" log line, graphile's first
 * worker) and stops when a poll (every BENCH_POLL_MS) finds nothing left to do. Rounds interleave
 * the three, rotating their order; figures are medians.
 *
 *   node bench/throughput.js
 *   BENCH_THROUGHPUT_RUNS=10000 BENCH_THROUGHPUT_ROUNDS=3 BENCH_CONCURRENCY=10 BENCH_POLL_MS=10
 */
const lib = require('./lib')
const graphile = require('./graphile')

const RUNS = Number(process.env.BENCH_THROUGHPUT_RUNS || 10_000)
const ROUNDS = Number(process.env.BENCH_THROUGHPUT_ROUNDS || 3)
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY || 10)
const POLL_MS = Number(process.env.BENCH_POLL_MS || 10)
const TIMEOUT_MS = Number(process.env.BENCH_THROUGHPUT_TIMEOUT_MS || 180_000)

/** Runs pipeweave has not finished: none left means drained. */
const RUNS_LEFT = `SELECT id FROM task_runs WHERE status IN ('pending', 'running') LIMIT 1`

async function pipeweaveRound(database, client, worker) {
  await lib.clearRuns(client)
  await lib.seedRuns(client, 'noop', RUNS)
  const before = worker.requests
  const run = lib.startRun(database.url, { concurrency: CONCURRENCY })
  try {
    const start = await run.started
    const end = await lib.waitUntilEmpty(client, RUNS_LEFT, { intervalMs: POLL_MS, timeoutMs: TIMEOUT_MS, what: 'pipeweave draining its runs' })
    const { rows: [counts] } = await client.query(`SELECT count(*) FILTER (WHERE status = 'completed')::int AS completed, count(*)::int AS total FROM task_runs`)
    if (counts.completed !== RUNS || counts.total !== RUNS) throw new Error(`pipeweave left ${JSON.stringify(counts)}, expected ${RUNS} completed runs`)
    if (worker.requests - before !== RUNS) throw new Error(`the worker received ${worker.requests - before} requests for ${RUNS} runs`)
    return end - start
  } finally {
    const code = await run.stop()
    if (code !== 0) throw new Error(`pipeweave run exited ${code} after SIGTERM`)
  }
}

async function graphileRound(database, client, worker, task) {
  await client.query('DELETE FROM graphile_worker._private_jobs')
  await graphile.seedJobs(client, 'noop', RUNS)
  const before = worker.requests
  const runner = graphile.startRunner(database.url, { concurrency: CONCURRENCY, task, workerUrl: worker.url })
  try {
    const start = await runner.ready
    const end = await lib.waitUntilEmpty(client, graphile.JOBS_LEFT, { intervalMs: POLL_MS, timeoutMs: TIMEOUT_MS, what: `graphile-worker (${task}) draining its jobs` })
    const { rows: [{ failed }] } = await client.query(`SELECT count(*)::int AS failed FROM graphile_worker._private_jobs`)
    if (failed !== 0) throw new Error(`graphile-worker left ${failed} jobs`)
    if (task === 'http' && worker.requests - before !== RUNS) throw new Error(`the worker received ${worker.requests - before} requests for ${RUNS} jobs`)
    return end - start
  } finally {
    await runner.stop()
  }
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const database = await lib.createDatabase(server, { migrated: true })
  const worker = await lib.startWorker()
  const client = await lib.connect(database.url)
  const loads = [lib.load()]
  try {
    await lib.registerService(database.url, worker.url, [{ id: 'noop', retries: 0 }])
    await graphile.migrate(database.url)
    const systems = [
      { key: 'pipeweave', title: `pipeweave run --concurrency ${CONCURRENCY} (HTTP POST per run)`, round: () => pipeweaveRound(database, client, worker) },
      { key: 'graphile', title: `graphile-worker 0.17.3, concurrency ${CONCURRENCY}, no-op task`, round: () => graphileRound(database, client, worker, 'noop') },
      { key: 'graphileHttp', title: `graphile-worker 0.17.3, concurrency ${CONCURRENCY}, task POSTs to the worker`, round: () => graphileRound(database, client, worker, 'http') },
    ]
    const samples = Object.fromEntries(systems.map((s) => [s.key, []]))
    for (let round = 0; round < ROUNDS; round++) {
      for (const system of lib.rotate(systems, round)) {
        const ms = await system.round()
        samples[system.key].push(ms)
        log(`throughput round ${round + 1}/${ROUNDS}: ${system.key} ${lib.fmt(RUNS / (ms / 1000))} /s (${lib.fmt(ms)} ms), ${lib.load()}`)
      }
      loads.push(lib.load())
    }
    process.stdout.write(`${report(systems, samples, loads)}\n`)
    return samples
  } finally {
    await client.end()
    await worker.close()
    await database.drop()
  }
}

function report(systems, samples, loads) {
  const rate = (ms) => RUNS / (ms / 1000)
  const median = Object.fromEntries(systems.map((s) => [s.key, rate(lib.median(samples[s.key]))]))
  const lines = [lib.heading(`Throughput: ${lib.fmt(RUNS)} no-op runs, concurrency ${CONCURRENCY}`)]
  lines.push(`queue filled before the clock; clock from the consumer's start to the poll (every ${POLL_MS} ms) that finds nothing left; ${ROUNDS} rounds, interleaved`)
  lines.push(`${loads[0]} before, ${loads[loads.length - 1]} after`)
  lines.push(lib.table([
    { title: 'consumer', align: 'left' }, { title: 'median runs/s', align: 'right' }, { title: 'runs/s of each round', align: 'right' },
    { title: 'median s', align: 'right' }, { title: 'vs graphile no-op', align: 'right' },
  ], systems.map((s) => [
    s.title, lib.fmt(median[s.key]), samples[s.key].map((ms) => lib.fmt(rate(ms))).join(' / '),
    lib.fmt(lib.median(samples[s.key]) / 1000, 2), `${lib.fmt(median[s.key] / median.graphile, 2)}×`,
  ])))
  lines.push('')
  const ratio = median.pipeweave / median.graphile
  lines.push(`target pipeweave ≥ graphile-worker's no-op rate: ${lib.fmt(ratio, 2)}× — ${ratio >= 1 ? 'met' : 'NOT met'}`)
  lines.push(`(fairness: pipeweave vs graphile-worker with the same HTTP POST per job: ${lib.fmt(median.pipeweave / median.graphileHttp, 2)}×)`)
  return lines.join('\n')
}

module.exports = { name: 'throughput', run }

if (require.main === module) lib.runAlone((server) => run(server))
