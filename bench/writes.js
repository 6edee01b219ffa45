'use strict'
/**
 * WAL and writes per run (issue 10): what the server writes for each run, enqueue and drain
 * measured apart, for pipeweave and for graphile-worker 0.17.3 (default settings, and its batching
 * preset) on the same server, one after another:
 *
 *   enqueue  pipeweave: enqueueTasks of all the runs in one call; graphile: WorkerUtils.addJobs
 *            in batches of 1,000.
 *   drain    pipeweave: one `pipeweave run --concurrency 10` POSTing each run to a loopback no-op
 *            worker; graphile: its runner at concurrency 10 with a no-op task. Then a VACUUM of the
 *            system's queue tables, measured on its own: pipeweave VACUUMs task_runs itself while
 *            it drains (every 5,000 runs) and graphile leaves its dead tuples to autovacuum, so
 *            "drain + VACUUM" is the figure that charges both for removing what they leave behind.
 *
 * WAL bytes: pg_current_wal_lsn() after − before, divided by the runs (a CHECKPOINT just before each
 * phase, so each starts with the same full-page-image debt; the WAL position is the whole
 * server's: nothing else should run on it meanwhile).
 * Writes: pg_stat_user_tables n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del of each table of the
 * system's schema, after − before, read once every process that wrote has exited (its backends
 * flush their counts at exit), with pg_stat_force_next_flush() (PG15+) and pg_stat_clear_snapshot().
 * Transactions per run (the drain's commits and rollbacks: pg_stat_database, less this script's polls).
 * Index entries: pg_stat_user_indexes has no insert counter, so they are counted as
 *   inserts × (indexes whose predicate matches an inserted row) + non-HOT updates × (indexes whose
 *   predicate matches the updated row); a HOT update adds no index entry, a delete none.
 * "Matches" is each index's own predicate (pg_index.indpred) evaluated on a real row: for inserts
 * a row read right after it was written (queue rows after the enqueue, history rows after the
 * drain), for updates a row caught mid-drain in the state the claim leaves it (pipeweave: status
 * running; graphile: locked). A table with partial indexes and no such row counts every index (*).
 *
 *   node bench/writes.js
 * Environment (defaults in brackets):
 *   BENCH_WRITES_RUNS [50000]    runs (jobs) per system
 *   BENCH_GRAPHILE_BATCH [1000]  jobs per addJobs call
 *   BENCH_CONCURRENCY [10]
 *   BENCH_GRAPHILE_LOCAL_QUEUE_SIZE [concurrency + 1], BENCH_GRAPHILE_COMPLETE_BATCH_DELAY [0]
 */
const lib = require('./lib')
const graphile = require('./graphile')

const RUNS = Number(process.env.BENCH_WRITES_RUNS || 50_000)
const GRAPHILE_BATCH = Number(process.env.BENCH_GRAPHILE_BATCH || 1000)
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY || 10)

/** Each index of the tables of `schema`: its table, name and predicate (null: every row). */
async function indexesOf(client, schema) {
  const { rows } = await client.query(`
    SELECT c.relname AS "table", i.relname AS name, pg_get_expr(x.indpred, x.indrelid) AS predicate
      FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 ORDER BY 1, 2`, [schema])
  return rows
}

/** A real row of `schema.table` (to_jsonb), or undefined. */
async function sampleRow(client, schema, table, where = 'true') {
  const { rows } = await client.query(`SELECT to_jsonb(t) AS row FROM "${schema}"."${table}" t WHERE ${where} LIMIT 1`)
  return rows[0]?.row
}

/** Whether `predicate` (an index's, over the table's columns) holds for `row`. */
async function matches(client, schema, table, predicate, row) {
  if (!predicate) return true
  const { rows: [r] } = await client.query(`SELECT COALESCE((${predicate}), false) AS ok FROM jsonb_populate_record(NULL::"${schema}"."${table}", $1::jsonb) AS t`, [row])
  return r.ok
}

/**
 * Index entries per table: for each table written, which indexes its inserts and its non-HOT
 * updates reach (from the sample rows) and the entries that makes.
 */
async function indexEntries(client, schema, delta, samples) {
  const indexes = await indexesOf(client, schema)
  const out = {}
  for (const [qualified, d] of Object.entries(delta)) {
    const table = qualified.slice(schema.length + 1)
    const own = indexes.filter((i) => i.table === table)
    const partial = own.some((i) => i.predicate)
    const count = async (row) => {
      if (!partial) return { n: own.length, exact: true }
      if (!row) return { n: own.length, exact: false }
      let n = 0
      for (const i of own) if (await matches(client, schema, table, i.predicate, row)) n += 1
      return { n, exact: true }
    }
    const onInsert = d.ins > 0 ? await count(samples.insert[table]) : { n: 0, exact: true }
    const onUpdate = d.upd - d.hot > 0 ? await count(samples.update[table]) : { n: 0, exact: true }
    out[qualified] = {
      indexes: own.length, onInsert, onUpdate,
      entries: d.ins * onInsert.n + (d.upd - d.hot) * onUpdate.n,
    }
  }
  return out
}

async function checkpoint(client) {
  await client.query('CHECKPOINT').catch(() => undefined) // needs a superuser (or pg_checkpoint)
}

/**
 * One phase: CHECKPOINT, WAL position and counters before, `work()`, then after (counters once
 * settled); the sample rows wanted, and the index entries.
 */
async function measure(client, schema, work) {
  await checkpoint(client)
  const before = await lib.settledCounters(client, [schema])
  const xactsBefore = await transactions(client)
  const ownBefore = client.queryCount
  const walBefore = await lib.walPosition(client)
  const extra = await work()
  const walAfter = await lib.walPosition(client)
  const after = await lib.settledCounters(client, [schema])
  // The database's transactions, less this script's own statements (polls, samples) meanwhile.
  const xacts = (await transactions(client)) - xactsBefore - (client.queryCount - ownBefore)
  return { wal: Number(walAfter - walBefore), delta: lib.counterDelta(before, after), xacts, extra }
}

/** Committed and rolled-back transactions of this database so far (call after the stats settled). */
async function transactions(client) {
  const { rows: [r] } = await client.query(`SELECT (xact_commit + xact_rollback)::bigint AS n FROM pg_stat_database WHERE datname = current_database()`)
  return Number(r.n)
}

/** A client that counts its statements (each one a transaction of its own). */
async function countingClient(url) {
  const client = Object.assign(await lib.connect(url), { queryCount: 0 })
  /** @type {(...args: unknown[]) => any} */
  const query = client.query.bind(client)
  client.query = (/** @type {unknown[]} */ ...args) => { client.queryCount += 1; return query(...args) }
  return client
}

/** Poll until `done()`; meanwhile catch a row in the updated state. */
async function drainWatching(client, schema, table, busy, done) {
  let row
  const deadline = Date.now() + 3_600_000
  for (;;) {
    if (!row) row = await sampleRow(client, schema, table, busy)
    if (await done()) return row
    if (Date.now() > deadline) throw new Error('the drain did not finish within an hour')
    await lib.sleep(row ? 50 : 5)
  }
}

async function pipeweave(database, client, worker) {
  const schema = 'public'
  await lib.clearRuns(client)
  await client.query('VACUUM (ANALYZE) task_runs, task_run_history')
  const samples = { insert: {}, update: {} }
  const enqueue = await measure(client, schema, () => lib.enqueueBulk(database.url, 'noop', RUNS))
  samples.insert.task_runs = await sampleRow(client, schema, 'task_runs')
  const empty = async () => (await client.query(lib.RUNS_LEFT)).rows.length === 0
  const drain = await measure(client, schema, async () => {
    const run = lib.startRun(database.url, { concurrency: CONCURRENCY })
    try {
      await run.started
      samples.update.task_runs = await drainWatching(client, schema, 'task_runs', `status = 'running'`, empty)
    } finally {
      const code = await run.stop()
      if (code !== 0) throw new Error(`pipeweave run exited ${code} after SIGTERM`)
    }
  })
  samples.insert.task_run_history = await sampleRow(client, schema, 'task_run_history')
  const { rows: [{ n }] } = await client.query(`SELECT count(*)::int AS n FROM task_run_history WHERE status = 'completed'`)
  if (n !== RUNS) throw new Error(`pipeweave completed ${n} runs of ${RUNS}`)
  const vacuum = await measure(client, schema, () => client.query('VACUUM task_runs, task_run_history'))
  return { schema, enqueue, drain, vacuum, samples }
}

async function graphileSystem(database, client, batching) {
  const schema = 'graphile_worker'
  await client.query('TRUNCATE graphile_worker._private_jobs')
  await client.query('VACUUM (ANALYZE) graphile_worker._private_jobs')
  const samples = { insert: {}, update: {} }
  const enqueue = await measure(client, schema, async () => {
    const utils = await graphile.workerUtils(database.url)
    try {
      await graphile.addJobsInBatches(utils, 'noop', RUNS, GRAPHILE_BATCH)
    } finally {
      await utils.release()
    }
  })
  samples.insert._private_jobs = await sampleRow(client, schema, '_private_jobs')
  const empty = async () => (await client.query(graphile.JOBS_LEFT)).rows.length === 0
  const drain = await measure(client, schema, async () => {
    const runner = graphile.startRunner(database.url, { concurrency: CONCURRENCY, task: 'noop', batching })
    try {
      await runner.ready
      samples.update._private_jobs = await drainWatching(client, schema, '_private_jobs', 'locked_at IS NOT NULL', empty)
    } finally {
      await runner.stop()
    }
  })
  const vacuum = await measure(client, schema, () => client.query('VACUUM graphile_worker._private_jobs'))
  return { schema, enqueue, drain, vacuum, samples }
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const database = await lib.createDatabase(server, { migrated: true })
  const worker = await lib.startWorker()
  const client = await countingClient(database.url)
  const batching = graphile.batchingPreset(CONCURRENCY)
  const loads = [lib.load()]
  try {
    await lib.registerService(database.url, worker.url, [{ id: 'noop', retries: 0 }])
    await graphile.migrate(database.url)
    const systems = [
      { key: 'pipeweave', title: `pipeweave (enqueueTasks; run --concurrency ${CONCURRENCY}, HTTP)`, measure: () => pipeweave(database, client, worker) },
      { key: 'graphile', title: `graphile-worker default (addJobs ×${lib.fmt(GRAPHILE_BATCH)}; concurrency ${CONCURRENCY})`, measure: () => graphileSystem(database, client, null) },
      { key: 'graphileBatched', title: `graphile-worker batching (${graphile.describeBatching(batching)})`, measure: () => graphileSystem(database, client, batching) },
    ]
    const results = {}
    for (const system of systems) {
      log(`writes: ${system.key}, ${lib.fmt(RUNS)} runs`)
      const r = await system.measure()
      for (const phase of ['enqueue', 'drain', 'vacuum']) r[phase].entries = await indexEntries(client, r.schema, r[phase].delta, r.samples)
      results[system.key] = r
      log(`writes: ${system.key}: enqueue ${lib.fmt(r.enqueue.wal / RUNS)} B/run, drain ${lib.fmt(r.drain.wal / RUNS)} B/run, VACUUM ${lib.fmt(r.vacuum.wal / RUNS)} B/run, ${lib.load()}`)
    }
    loads.push(lib.load())
    process.stdout.write(`${report(systems, results, loads)}\n`)
    return results
  } finally {
    await client.end()
    await worker.close()
    await database.drop()
  }
}

function sumOf(phase, field) {
  return Object.values(phase.delta).reduce((s, d) => s + d[field], 0)
}

function entriesOf(phase) {
  return Object.values(phase.entries).reduce((s, e) => s + e.entries, 0)
}

function report(systems, results, loads) {
  const per = (x) => lib.fmt(x / RUNS, 2)
  const lines = [lib.heading(`WAL and writes per run: ${lib.fmt(RUNS)} runs enqueued, then drained`)]
  lines.push(`${loads[0]} before, ${loads[loads.length - 1]} after`)
  lines.push(lib.table([
    { title: 'system', align: 'left' },
    { title: 'WAL B/run enqueue', align: 'right' }, { title: 'drain', align: 'right' }, { title: 'VACUUM after', align: 'right' },
    { title: 'total', align: 'right' },
    { title: 'row writes/run enqueue', align: 'right' }, { title: 'drain', align: 'right' },
    { title: 'index entries/run enqueue', align: 'right' }, { title: 'drain', align: 'right' },
    { title: 'transactions/run drain', align: 'right' },
  ], systems.map((s) => {
    const r = results[s.key]
    const rowWrites = (p) => sumOf(p, 'ins') + sumOf(p, 'upd') + sumOf(p, 'del')
    return [
      s.title, lib.fmt(r.enqueue.wal / RUNS), lib.fmt(r.drain.wal / RUNS), lib.fmt(r.vacuum.wal / RUNS),
      lib.fmt((r.enqueue.wal + r.drain.wal + r.vacuum.wal) / RUNS),
      per(rowWrites(r.enqueue)), per(rowWrites(r.drain)), per(entriesOf(r.enqueue)), per(entriesOf(r.drain)), per(r.drain.xacts),
    ]
  })))
  const p = results.pipeweave
  const g = results.graphile
  const total = (r) => r.enqueue.wal + r.drain.wal + r.vacuum.wal
  lines.push(`pipeweave ÷ graphile-worker default: WAL ${lib.fmt(total(p) / total(g), 2)}× (drain alone ${lib.fmt(p.drain.wal / g.drain.wal, 2)}×), ` +
    `index entries ${lib.fmt((entriesOf(p.enqueue) + entriesOf(p.drain)) / (entriesOf(g.enqueue) + entriesOf(g.drain)), 2)}× (no target: figures to report)`)
  lines.push('')
  lines.push(`per table: row counts for the ${lib.fmt(RUNS)} runs (ins / upd (of which HOT) / del), and index entries per run = (ins × indexes an insert reaches + non-HOT upd × indexes an update reaches) ÷ runs`)
  const rows = []
  for (const s of systems) {
    const r = results[s.key]
    for (const phase of ['enqueue', 'drain', 'vacuum']) {
      for (const [table, d] of Object.entries(r[phase].delta)) {
        const e = r[phase].entries[table]
        const reach = (x) => `${x.n}/${e.indexes}${x.exact ? '' : '*'}`
        rows.push([s.key, phase, table, lib.fmt(d.ins), `${lib.fmt(d.upd)} (${lib.fmt(d.hot)})`, lib.fmt(d.del),
          d.ins ? reach(e.onInsert) : '', d.upd - d.hot ? reach(e.onUpdate) : '', per(e.entries)])
      }
    }
  }
  lines.push(lib.table([
    { title: 'system', align: 'left' }, { title: 'phase', align: 'left' }, { title: 'table', align: 'left' },
    { title: 'ins', align: 'right' }, { title: 'upd (HOT)', align: 'right' }, { title: 'del', align: 'right' },
    { title: 'idx/insert', align: 'right' }, { title: 'idx/update', align: 'right' }, { title: 'index entries/run', align: 'right' },
  ], rows))
  lines.push('method: counters from pg_stat_user_tables after every writer exited (pg_stat_force_next_flush, pg_stat_clear_snapshot); WAL from pg_current_wal_lsn(), CHECKPOINT before each phase;')
  lines.push('  transactions/run: pg_stat_database xact_commit + xact_rollback over the drain, less this script\'s own polls (claims, completions, heartbeats, LISTEN wake-ups: the round trips that commit);')
  lines.push('  idx/insert, idx/update = indexes whose predicate holds for a real inserted / updated row (caught mid-drain) out of the table\'s indexes; * = no such row, every index counted')
  return lines.join('\n')
}

module.exports = { name: 'writes per run', run }

if (require.main === module) lib.runAlone((server) => run(server))
