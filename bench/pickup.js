'use strict'
/**
 * Pickup latency (issues 5 and 10): from an enqueue's commit to the worker receiving the run, with an idle
 * `pipeweave run` (the real CLI process, LISTEN/NOTIFY on, default poll interval), over 200 runs
 * enqueued one at a time (enqueueTask) with a short random gap; beside graphile-worker 0.17.3
 * (default settings, a process of its own) from addJob to its task function starting, and to a
 * task that POSTs the job to the same worker receiving it. Goal: pipeweave's p50 within 1.5×
 * graphile-worker's (addJob → task function start); p99 printed beside it.
 *
 * The clock starts when the enqueue (addJob) call has returned, i.e. after its commit; it stops on
 * the wall clock of the process that sees the arrival (performance.timeOrigin + performance.now(),
 * one clock for every process on this machine). Samples interleave the three, rotating the order.
 *
 *   node bench/pickup.js
 * Environment (defaults in brackets):
 *   BENCH_PICKUP_RUNS [200]        samples of each path
 *   BENCH_PICKUP_GAP_MS [10-50]    random idle gap before each enqueue, ms
 */
const lib = require('./lib')
const graphile = require('./graphile')

const RUNS = Number(process.env.BENCH_PICKUP_RUNS || 200)
const [GAP_MIN, GAP_MAX] = (process.env.BENCH_PICKUP_GAP_MS || '10-50').split('-').map(Number)
const TARGET_RATIO = 1.5
const ARRIVAL_TIMEOUT_MS = 10_000

/** One arrival at a time: `next()` is a promise of the next arrival's wall clock. */
function arrivals() {
  const queue = []
  let waiting
  return {
    arrive(at, what) {
      if (waiting) {
        const w = waiting
        waiting = undefined
        w({ at, what })
      } else {
        queue.push({ at, what })
      }
    },
    next(label) {
      if (queue.length > 0) return Promise.resolve(queue.shift())
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { waiting = undefined; reject(new Error(`no arrival within ${ARRIVAL_TIMEOUT_MS} ms (${label})`)) }, ARRIVAL_TIMEOUT_MS)
        waiting = (value) => { clearTimeout(timer); resolve(value) }
      })
    },
    get backlog() { return queue.length },
  }
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const database = await lib.createDatabase(server, { migrated: true })
  const toPipeweave = arrivals()
  const toGraphileHttp = arrivals()
  const toGraphileTask = arrivals()
  const worker = await lib.startWorker({
    onRequest: (req, at) => (req.url.endsWith('/pickup') ? toPipeweave : toGraphileHttp).arrive(at, req.url),
  })
  const stops = []
  const loads = [lib.load()]
  try {
    await lib.registerService(database.url, worker.url, [{ id: 'pickup', retries: 0 }])
    await graphile.migrate(database.url)
    const db = await lib.openDatabase(database.url, 'bench-enqueue')
    stops.push(() => db.close())
    const utils = await graphile.workerUtils(database.url)
    stops.push(() => utils.release())
    const { enqueueTask } = lib.requireDist('api/enqueue')

    const pipeweave = lib.startRun(database.url, { concurrency: 10 })
    stops.push(() => pipeweave.stop())
    const noop = graphile.startRunner(database.url, { identifier: 'pickup_task', onStart: (at, payload) => toGraphileTask.arrive(at, payload) })
    stops.push(() => noop.stop())
    const http = graphile.startRunner(database.url, { identifier: 'pickup_http', task: 'http', workerUrl: worker.url })
    stops.push(() => http.stop())
    await Promise.all([pipeweave.started, noop.ready, http.ready])
    // Every consumer idle (listening) before the first sample.
    await lib.sleep(500)

    const systems = [
      { key: 'pipeweave', title: 'pipeweave run: enqueueTask commit → worker receives the POST',
        send: (i) => enqueueTask(db, { taskId: 'pickup', input: { i } }), arrivals: toPipeweave },
      { key: 'graphile', title: 'graphile-worker: addJob → task function starts',
        send: (i) => utils.addJob('pickup_task', { i }), arrivals: toGraphileTask },
      { key: 'graphileHttp', title: 'graphile-worker: addJob → worker receives the task\'s POST',
        send: (i) => utils.addJob('pickup_http', { i }), arrivals: toGraphileHttp },
    ]
    const samples = /** @type {Record<string, number[]>} */ (Object.fromEntries(systems.map((s) => [s.key, []])))
    for (let i = 0; i < RUNS; i++) {
      for (const system of lib.rotate(systems, i)) {
        await lib.sleep(GAP_MIN + Math.random() * (GAP_MAX - GAP_MIN))
        await system.send(i)
        const committed = lib.wallNow()
        const { at } = await system.arrivals.next(`${system.key} sample ${i + 1}`)
        samples[system.key].push(at - committed)
        if (system.arrivals.backlog > 0) throw new Error(`${system.key}: more arrivals than enqueues`)
      }
      if ((i + 1) % 50 === 0) log(`pickup: ${i + 1}/${RUNS} samples of each, ${lib.load()}`)
    }
    loads.push(lib.load())
    process.stdout.write(`${report(systems, samples, loads)}\n`)
    return samples
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined)
    await worker.close()
    await database.drop()
  }
}

function report(systems, samples, loads) {
  const lines = [lib.heading(`Pickup latency: idle consumer, ${RUNS} runs one at a time (gap ${GAP_MIN}–${GAP_MAX} ms)`)]
  lines.push(`from the enqueue call returning (committed) to the arrival, ms; samples interleaved; ${loads[0]} before, ${loads[loads.length - 1]} after`)
  lines.push(lib.table([
    { title: 'path', align: 'left' }, { title: 'p50', align: 'right' }, { title: 'p90', align: 'right' },
    { title: 'p99', align: 'right' }, { title: 'max', align: 'right' },
  ], systems.map((s) => {
    const v = samples[s.key]
    return [s.title, lib.fmt(lib.percentile(v, 50), 2), lib.fmt(lib.percentile(v, 90), 2), lib.fmt(lib.percentile(v, 99), 2), lib.fmt(Math.max(...v), 2)]
  })))
  lines.push('')
  const ratio = lib.median(samples.pipeweave) / lib.median(samples.graphile)
  const p99 = lib.percentile(samples.pipeweave, 99) / lib.percentile(samples.graphile, 99)
  lines.push(`goal pipeweave p50 ≤ ${TARGET_RATIO}× graphile-worker's (task start): ${lib.fmt(ratio, 2)}× — ${ratio <= TARGET_RATIO ? 'met' : 'NOT met'}` +
    ` (p99: ${lib.fmt(p99, 2)}×; vs graphile-worker's own POST to the worker: p50 ${lib.fmt(lib.median(samples.pipeweave) / lib.median(samples.graphileHttp), 2)}×)`)
  return lines.join('\n')
}

module.exports = { name: 'pickup latency', run }

if (require.main === module) lib.runAlone((server) => run(server))
