'use strict'
/**
 * Enqueue rate (issues 4 and 10), two figures:
 *
 * 1. Bulk enqueue: 100,000 runs of one task, runs per second, median of BENCH_BULK_ROUNDS,
 *    interleaved, on one server:
 *    - pipeweave's enqueueTasks (dist/api/enqueue): one call with all the items (one transaction,
 *      the maintenance gate, statements of 5,000); the items are built before the clock;
 *    - `pipeweave tasks:enqueue T --jsonl FILE` (the whole CLI process, a file of one input per
 *      line) — only when the built CLI has a --jsonl flag (oclif.manifest.json); until then the row
 *      says TODO (the flag is being added on another branch);
 *    - graphile-worker 0.17.3's WorkerUtils.addJobs in batches of 1,000, one after another from
 *      one client (each batch one statement and one commit).
 *    Goal: pipeweave's bulk enqueue ≥ 1× graphile-worker's addJobs.
 *
 * 2. Single enqueues: enqueueTask (the code behind `pipeweave tasks:enqueue`) from one process
 *    with 16 concurrent callers, each enqueueing its next run as soon as the last returns, for
 *    BENCH_ENQUEUE_SECONDS; with the default pool (DB_POOL_MAX 10: six callers wait for a
 *    connection at any moment) and with a pool of 16. No target: a figure to report.
 *
 * Every run goes through the maintenance gate and is notified, as in production. No consumer runs;
 * the tables are emptied and vacuumed between rounds.
 *
 *   node bench/enqueue.js
 * Environment (defaults in brackets):
 *   BENCH_BULK_RUNS [100000]      runs per bulk enqueue
 *   BENCH_BULK_ROUNDS [3]         rounds of the bulk figures; the figure is the median
 *   BENCH_GRAPHILE_BATCH [1000]   jobs per addJobs call
 *   BENCH_ENQUEUE_CALLERS [16]    concurrent callers of enqueueTask
 *   BENCH_ENQUEUE_SECONDS [3]     length of a single-enqueue round
 *   BENCH_ENQUEUE_ROUNDS [3]      rounds of the single-enqueue figures
 */
const fs = require('node:fs')
const path = require('node:path')
const lib = require('./lib')
const graphile = require('./graphile')

const BULK_RUNS = Number(process.env.BENCH_BULK_RUNS || 100_000)
const BULK_ROUNDS = Number(process.env.BENCH_BULK_ROUNDS || 3)
const GRAPHILE_BATCH = Number(process.env.BENCH_GRAPHILE_BATCH || 1000)
const CALLERS = Number(process.env.BENCH_ENQUEUE_CALLERS || 16)
const SECONDS = Number(process.env.BENCH_ENQUEUE_SECONDS || 3)
const ROUNDS = Number(process.env.BENCH_ENQUEUE_ROUNDS || 3)
const TARGET_BULK_RATIO = 1

/** Whether the built CLI's tasks:enqueue has --jsonl (the bulk form, being added on another branch). */
function cliHasJsonl() {
  try {
    const manifest = JSON.parse(fs.readFileSync(path.join(lib.ROOT, 'oclif.manifest.json'), 'utf8'))
    return Boolean(manifest.commands?.['tasks:enqueue']?.flags?.jsonl)
  } catch {
    return false
  }
}

// ---------------------------------------------------------------------------------------------
// Bulk

async function countPending(client) {
  const { rows: [{ n }] } = await client.query(`SELECT count(*)::int AS n FROM task_runs WHERE status = 'pending'`)
  return n
}

async function resetTables(client) {
  await lib.clearRuns(client)
  await client.query('TRUNCATE graphile_worker._private_jobs')
  await client.query('VACUUM (ANALYZE) task_runs')
  await client.query('VACUUM (ANALYZE) graphile_worker._private_jobs')
}

async function bulkApi(url, client) {
  const { enqueueTasks } = lib.requireDist('api/enqueue')
  const db = await lib.openDatabase(url, 'bench-bulk')
  try {
    await db.query('SELECT 1')
    const items = Array.from({ length: BULK_RUNS }, (_, i) => ({ input: { i } }))
    const { ms, value } = await lib.timeAsync(() => enqueueTasks(db, 'enqueued', items))
    if (value.runIds.length !== BULK_RUNS || value.deduplicated !== 0) throw new Error(`enqueueTasks returned ${value.runIds.length} ids, ${value.deduplicated} deduplicated`)
    const n = await countPending(client)
    if (n !== BULK_RUNS) throw new Error(`enqueueTasks of ${BULK_RUNS} left ${n} pending runs`)
    return ms
  } finally {
    await db.close()
  }
}

async function bulkCli(url, client, file) {
  // TODO(--jsonl): written against the flag's planned form (`tasks:enqueue T --jsonl FILE`, one
  // input per line, --json prints { runIds }); check it once the flag lands on main.
  const ms = lib.timeProcess(process.execPath, [lib.CLI, 'tasks:enqueue', 'enqueued', '--jsonl', file], {
    env: lib.cleanEnv({ DATABASE_URL: url }), timeoutMs: 300_000,
  })
  const n = await countPending(client)
  if (n !== BULK_RUNS) throw new Error(`tasks:enqueue --jsonl of ${BULK_RUNS} lines left ${n} pending runs`)
  return ms
}

async function bulkGraphile(utils, client) {
  const ms = await graphile.addJobsInBatches(utils, 'enqueued', BULK_RUNS, GRAPHILE_BATCH)
  const { rows: [{ n }] } = await client.query('SELECT count(*)::int AS n FROM graphile_worker._private_jobs')
  if (n !== BULK_RUNS) throw new Error(`addJobs of ${BULK_RUNS} left ${n} jobs`)
  return ms
}

async function bulk(database, client, log) {
  const withCli = cliHasJsonl()
  const home = lib.tempHome('pipeweave-bench-jsonl-')
  const file = path.join(home, 'runs.jsonl')
  fs.writeFileSync(file, Array.from({ length: BULK_RUNS }, (_, i) => JSON.stringify({ i })).join('\n') + '\n')
  const utils = await graphile.workerUtils(database.url)
  try {
    const systems = [
      { key: 'api', title: 'pipeweave enqueueTasks, one call', round: () => bulkApi(database.url, client) },
      ...(withCli ? [{ key: 'cli', title: 'pipeweave tasks:enqueue --jsonl FILE (whole process)', round: () => bulkCli(database.url, client, file) }] : []),
      { key: 'graphile', title: `graphile-worker 0.17.3 addJobs, batches of ${lib.fmt(GRAPHILE_BATCH)}`, round: () => bulkGraphile(utils, client) },
    ]
    // Warm-up (connections, plans, the graphile task row), not counted.
    await resetTables(client)
    await graphile.addJobsInBatches(utils, 'enqueued', Math.min(GRAPHILE_BATCH, BULK_RUNS), GRAPHILE_BATCH)
    const samples = /** @type {Record<string, number[]>} */ (Object.fromEntries(systems.map((s) => [s.key, []])))
    for (let round = 0; round < BULK_ROUNDS; round++) {
      for (const system of lib.rotate(systems, round)) {
        await resetTables(client)
        const ms = await system.round()
        samples[system.key].push(ms)
        log(`bulk enqueue round ${round + 1}/${BULK_ROUNDS}: ${system.key} ${lib.fmt(BULK_RUNS / (ms / 1000))} runs/s, ${lib.load()}`)
      }
    }
    await resetTables(client)
    return { systems, samples, withCli }
  } finally {
    await utils.release()
    fs.rmSync(home, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------------------------
// Single enqueues, 16 callers

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

async function single(database, client, log) {
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
      const n = await countPending(client)
      if (n !== result.count) throw new Error(`${result.count} enqueues returned, ${n} pending runs in the table`)
      samples[variant.key].push(result)
      log(`enqueue round ${round + 1}/${ROUNDS}: ${variant.key} ${lib.fmt(result.rate)} runs/s, ${lib.load()}`)
    }
  }
  return { variants, samples }
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const database = await lib.createDatabase(server, { migrated: true })
  const client = await lib.connect(database.url)
  const loads = [lib.load()]
  try {
    await lib.registerService(database.url, 'http://127.0.0.1:9/', [{ id: 'enqueued' }])
    await graphile.migrate(database.url)
    const bulkResult = await bulk(database, client, log)
    const singleResult = await single(database, client, log)
    loads.push(lib.load())
    process.stdout.write(`${report(bulkResult, singleResult, loads)}\n`)
    return { bulk: bulkResult.samples, single: singleResult.samples }
  } finally {
    await client.end()
    await database.drop()
  }
}

function report(bulkResult, singleResult, loads) {
  const lines = [lib.heading(`Bulk enqueue: ${lib.fmt(BULK_RUNS)} runs of one task`)]
  lines.push(`${BULK_ROUNDS} rounds, interleaved, tables emptied and vacuumed before each; from the call to its return (the CLI: the whole process); ${loads[0]} before`)
  const rate = (ms) => BULK_RUNS / (ms / 1000)
  const median = Object.fromEntries(bulkResult.systems.map((s) => [s.key, rate(lib.median(bulkResult.samples[s.key]))]))
  const rows = bulkResult.systems.map((s) => [
    s.title, lib.fmt(median[s.key]), bulkResult.samples[s.key].map((ms) => lib.fmt(rate(ms))).join(' / '),
    lib.fmt(lib.median(bulkResult.samples[s.key]) / 1000, 2), `${lib.fmt(median[s.key] / median.graphile, 2)}×`,
  ])
  if (!bulkResult.withCli) rows.splice(1, 0, ['pipeweave tasks:enqueue --jsonl FILE', 'TODO', 'not in this build (--jsonl is being added on another branch)', '', ''])
  lines.push(lib.table([
    { title: 'enqueuer', align: 'left' }, { title: 'median runs/s', align: 'right' }, { title: 'runs/s of each round', align: 'right' },
    { title: 'median s', align: 'right' }, { title: 'vs graphile addJobs', align: 'right' },
  ], rows))
  lines.push('')
  const ratio = median.api / median.graphile
  lines.push(`goal pipeweave enqueueTasks ≥ ${TARGET_BULK_RATIO}× graphile-worker addJobs (batches of ${lib.fmt(GRAPHILE_BATCH)}): ${lib.fmt(ratio, 2)}× — ${ratio >= TARGET_BULK_RATIO ? 'met' : 'NOT met'}`)
  if (bulkResult.withCli) {
    const cli = median.cli / median.graphile
    lines.push(`goal pipeweave tasks:enqueue --jsonl ≥ ${TARGET_BULK_RATIO}× graphile-worker addJobs: ${lib.fmt(cli, 2)}× — ${cli >= TARGET_BULK_RATIO ? 'met' : 'NOT met'}`)
  } else {
    lines.push('TODO: tasks:enqueue --jsonl is not in this build; its row appears (and is timed) once the flag is in oclif.manifest.json')
  }

  lines.push(lib.heading(`Enqueue rate: enqueueTask, one process, ${CALLERS} concurrent callers`))
  lines.push(`${SECONDS} s per round, ${ROUNDS} rounds, interleaved; ${loads[loads.length - 1]} after`)
  lines.push(lib.table([
    { title: 'callers and pool', align: 'left' }, { title: 'median runs/s', align: 'right' }, { title: 'runs/s of each round', align: 'right' },
    { title: 'median ms per enqueue', align: 'right' },
  ], singleResult.variants.map((v) => {
    const rates = singleResult.samples[v.key].map((r) => r.rate)
    const r = lib.median(rates)
    return [v.title, lib.fmt(r), rates.map((x) => lib.fmt(x)).join(' / '), lib.fmt(CALLERS / r * 1000, 2)]
  })))
  lines.push('(no target: a figure to report)')
  return lines.join('\n')
}

module.exports = { name: 'enqueue rate', run }

if (require.main === module) lib.runAlone((server) => run(server))
