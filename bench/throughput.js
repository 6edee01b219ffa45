'use strict'
/**
 * Drain throughput (issue 10): 50,000 no-op runs drained by one `pipeweave run` (the real CLI
 * process, --concurrency 10, JSON logs) that POSTs each to a keep-alive loopback worker (a
 * node:http server answering {"output":null}: 10 requests in flight), beside graphile-worker 0.17.3
 * in a process of its own on the same server draining 50,000 no-op jobs at concurrency 10:
 *   - with its default settings (each worker fetches its own job and completes it alone);
 *   - with its batching preset (preset.worker.localQueue.size = concurrency + 1, batched
 *     completions with completeJobBatchDelay 0: bench/graphile.js batchingPreset);
 *   - with its default settings and a task that makes the same HTTP POST per job to the same worker
 *     (the fairness line: the same work per job as pipeweave).
 * Goal: pipeweave ≥ 2× graphile-worker's default (no-op). The ratio is printed whatever it is.
 *
 * For each: the queue is filled in one statement and vacuumed before the process starts; the clock
 * starts when the process says it is consuming (pipeweave's "started" log line, graphile's first
 * worker) and stops when a poll (every BENCH_POLL_MS) finds nothing left to do. Rounds interleave
 * the four, rotating their order; figures are medians of the rounds.
 *
 *   node bench/throughput.js
 * Environment (defaults in brackets):
 *   BENCH_THROUGHPUT_RUNS [50000]        runs (jobs) per drain
 *   BENCH_THROUGHPUT_ROUNDS [3]          rounds; the figure is the median
 *   BENCH_CONCURRENCY [10]               pipeweave --concurrency and graphile's concurrency
 *   BENCH_POLL_MS [10]                   how often the end of a drain is polled for
 *   BENCH_THROUGHPUT_TIMEOUT_MS [600000] longest drain
 *   BENCH_GRAPHILE_LOCAL_QUEUE_SIZE [concurrency + 1], BENCH_GRAPHILE_COMPLETE_BATCH_DELAY [0]
 */
const lib = require('./lib')
const graphile = require('./graphile')

const RUNS = Number(process.env.BENCH_THROUGHPUT_RUNS || 50_000)
const ROUNDS = Number(process.env.BENCH_THROUGHPUT_ROUNDS || 3)
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY || 10)
const POLL_MS = Number(process.env.BENCH_POLL_MS || 10)
const TIMEOUT_MS = Number(process.env.BENCH_THROUGHPUT_TIMEOUT_MS || 600_000)
const TARGET_RATIO = 2

async function pipeweaveRound(database, client, worker) {
  await lib.clearRuns(client)
  await lib.seedRuns(client, 'noop', RUNS)
  const before = worker.requests
  const run = lib.startRun(database.url, { concurrency: CONCURRENCY })
  try {
    const start = await run.started
    const end = await lib.waitUntilEmpty(client, lib.RUNS_LEFT, { intervalMs: POLL_MS, timeoutMs: TIMEOUT_MS, what: 'pipeweave draining its runs' })
    const { rows: [counts] } = await client.query(`SELECT count(*) FILTER (WHERE status = 'completed')::int AS completed, count(*)::int AS total FROM task_run_history`)
    if (counts.completed !== RUNS || counts.total !== RUNS) throw new Error(`pipeweave left ${JSON.stringify(counts)} in task_run_history, expected ${RUNS} completed runs`)
    if (worker.requests - before !== RUNS) throw new Error(`the worker received ${worker.requests - before} requests for ${RUNS} runs`)
    return end - start
  } finally {
    const code = await run.stop()
    if (code !== 0) throw new Error(`pipeweave run exited ${code} after SIGTERM`)
  }
}

async function graphileRound(database, client, worker, task, batching) {
  await client.query('DELETE FROM graphile_worker._private_jobs')
  await graphile.seedJobs(client, 'noop', RUNS)
  const before = worker.requests
  const runner = graphile.startRunner(database.url, { concurrency: CONCURRENCY, task, workerUrl: worker.url, batching })
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
  const batching = graphile.batchingPreset(CONCURRENCY)
  try {
    await lib.registerService(database.url, worker.url, [{ id: 'noop', retries: 0 }])
    await graphile.migrate(database.url)
    const systems = [
      { key: 'pipeweave', title: `pipeweave run --concurrency ${CONCURRENCY}, HTTP POST per run`, round: () => pipeweaveRound(database, client, worker) },
      { key: 'graphile', title: `graphile-worker 0.17.3 default, concurrency ${CONCURRENCY}, no-op task`, round: () => graphileRound(database, client, worker, 'noop', null) },
      { key: 'graphileBatched', title: `graphile-worker 0.17.3 batching (${graphile.describeBatching(batching)}), no-op task`, round: () => graphileRound(database, client, worker, 'noop', batching) },
      { key: 'graphileHttp', title: `graphile-worker 0.17.3 default, task POSTs to the worker`, round: () => graphileRound(database, client, worker, 'http', null) },
    ]
    const samples = /** @type {Record<string, number[]>} */ (Object.fromEntries(systems.map((s) => [s.key, []])))
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
  const lines = [lib.heading(`Drain throughput: ${lib.fmt(RUNS)} no-op runs, concurrency ${CONCURRENCY}`)]
  lines.push(`queue filled and vacuumed before the clock; clock from the consumer's start to the poll (every ${POLL_MS} ms) that finds nothing left; ${ROUNDS} rounds, interleaved, median`)
  lines.push(`${loads[0]} before, ${loads[loads.length - 1]} after`)
  lines.push(lib.table([
    { title: 'consumer', align: 'left' }, { title: 'median runs/s', align: 'right' }, { title: 'runs/s of each round', align: 'right' },
    { title: 'median s', align: 'right' }, { title: 'vs graphile default', align: 'right' },
  ], systems.map((s) => [
    s.title, lib.fmt(median[s.key]), samples[s.key].map((ms) => lib.fmt(rate(ms))).join(' / '),
    lib.fmt(lib.median(samples[s.key]) / 1000, 2), `${lib.fmt(median[s.key] / median.graphile, 2)}×`,
  ])))
  lines.push('')
  const ratio = median.pipeweave / median.graphile
  lines.push(`goal pipeweave (HTTP hop) ≥ ${TARGET_RATIO}× graphile-worker default (no-op): ${lib.fmt(ratio, 2)}× — ${ratio >= TARGET_RATIO ? 'met' : 'NOT met'}`)
  lines.push(`(beside graphile-worker's batching preset: ${lib.fmt(median.pipeweave / median.graphileBatched, 2)}×; ` +
    `fairness, vs graphile-worker with the same HTTP POST per job: ${lib.fmt(median.pipeweave / median.graphileHttp, 2)}×)`)
  return lines.join('\n')
}

module.exports = { name: 'throughput', run }

if (require.main === module) lib.runAlone((server) => run(server))
