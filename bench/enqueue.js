'use strict'
/**
 * Enqueue rate (issue 4): enqueueTask (dist/api/enqueue, the code behind `pipeweave tasks:enqueue`)
 * from one process with 16 concurrent callers, each enqueueing its next run as soon as the last
 * returns, for BENCH_ENQUEUE_SECONDS; runs per second, median of BENCH_ENQUEUE_ROUNDS. With the
 * default pool (DB_POOL_MAX 10: six callers wait for a connection at any moment) and with a pool
 * of 16. Every run goes through the maintenance gate and is notified, as in production. No
 * orchestrator consumes them; the table is emptied between rounds.
 *
 *   node bench/enqueue.js
 *   BENCH_ENQUEUE_CALLERS=16 BENCH_ENQUEUE_SECONDS=3 BENCH_ENQUEUE_ROUNDS=3
 */
const lib = require('./lib')

const CALLERS = Number(process.env.BENCH_ENQUEUE_CALLERS || 16)
const SECONDS = Number(process.env.BENCH_ENQUEUE_SECONDS || 3)
const ROUNDS = Number(process.env.BENCH_ENQUEUE_ROUNDS || 3)

async function oneRound(url, poolMax) {
  const { enqueueTask } = lib.requireDist('api/enqueue')
  const { createDatabase } = lib.requireDist('db/database')
  const db = await createDatabase({ flags: { url }, env: {}, command: 'bench-enqueue', pool: poolMax ? { max: poolMax } : undefined })
  try {
    // Every connection of the pool open before the clock starts.
    await Promise.all(Array.from({ length: CALLERS }, () => db.query('SELECT 1')))
    let count = 0
    const started = performance.now()
    const until = started + SECONDS * 1000
    await Promise.all(Array.from({ length: CALLERS }, async (_, caller) => {
      while (performance.now() < until) {
        await enqueueTask(db, { taskId: 'enqueued', input: { caller, n: count } })
        count += 1
      }
    }))
    const ms = performance.now() - started
    return { count, ms, rate: count / (ms / 1000) }
  } finally {
    await db.close()
  }
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const database = await lib.createDatabase(server, { migrated: true })
  const client = await lib.connect(database.url)
  const loads = [lib.load()]
  try {
    await lib.registerService(database.url, 'http://127.0.0.1:9/', [{ id: 'enqueued' }])
    const variants = [
      { key: 'default', title: `${CALLERS} callers, default pool (DB_POOL_MAX 10)`, poolMax: undefined },
      { key: 'pool16', title: `${CALLERS} callers, pool of ${CALLERS}`, poolMax: CALLERS },
    ]
    const samples = { default: [], pool16: [] }
    for (let round = 0; round < ROUNDS; round++) {
      for (const variant of lib.rotate(variants, round)) {
        await lib.clearRuns(client)
        await client.query('VACUUM (ANALYZE) task_runs')
        const result = await oneRound(database.url, variant.poolMax)
        const { rows: [{ n }] } = await client.query(`SELECT count(*)::int AS n FROM task_runs WHERE status = 'pending'`)
        if (n !== result.count) throw new Error(`${result.count} enqueues returned, ${n} pending runs in the table`)
        samples[variant.key].push(result)
        log(`enqueue round ${round + 1}/${ROUNDS}: ${variant.key} ${lib.fmt(result.rate)} runs/s, ${lib.load()}`)
      }
    }
    loads.push(lib.load())
    process.stdout.write(`${report(variants, samples, loads)}\n`)
    return samples
  } finally {
    await client.end()
    await database.drop()
  }
}

function report(variants, samples, loads) {
  const lines = [lib.heading(`Enqueue rate: enqueueTask, one process, ${CALLERS} concurrent callers`)]
  lines.push(`${SECONDS} s per round, ${ROUNDS} rounds, interleaved; ${loads[0]} before, ${loads[loads.length - 1]} after`)
  lines.push(lib.table([
    { title: 'callers and pool', align: 'left' }, { title: 'median runs/s', align: 'right' }, { title: 'runs/s of each round', align: 'right' },
    { title: 'median ms per enqueue', align: 'right' },
  ], variants.map((v) => {
    const rates = samples[v.key].map((r) => r.rate)
    const rate = lib.median(rates)
    return [v.title, lib.fmt(rate), rates.map((r) => lib.fmt(r)).join(' / '), lib.fmt(CALLERS / rate * 1000, 2)]
  })))
  lines.push('(no target: a figure to report)')
  return lines.join('\n')
}

module.exports = { name: 'enqueue rate', run }

if (require.main === module) lib.runAlone((server) => run(server))
