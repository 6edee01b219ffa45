'use strict'
/**
 * Claim cost (issue 5): the claim statement `SELECT * FROM pipeweave_claim_runs($1, 10)`, as `run`
 * sends it, over a small pending set (BENCH_CLAIM_PENDING runs of a task without a limit and
 * BENCH_CLAIM_LIMITED of a task with concurrency 2), on a table that also holds 1,000,000 finished
 * runs, beside the same on a table without history. Each claim runs in a transaction that is rolled
 * back, so every claim sees the same pending set; the two databases alternate, claim by claim.
 * Goal: flat, the median within 2× of the empty table's.
 *
 * The history is seeded with INSERT … SELECT generate_series (completed, failed, timeout and
 * cancelled runs over 30 days), then both tables are vacuumed and analysed.
 *
 *   node bench/claim.js
 *   BENCH_CLAIM_FINISHED=1000000 BENCH_CLAIM_PENDING=100 BENCH_CLAIM_LIMITED=20 BENCH_CLAIM_SAMPLES=500
 */
const lib = require('./lib')

const FINISHED = Number(process.env.BENCH_CLAIM_FINISHED || 1_000_000)
const PENDING = Number(process.env.BENCH_CLAIM_PENDING || 100)
const LIMITED = Number(process.env.BENCH_CLAIM_LIMITED || 20)
const SAMPLES = Number(process.env.BENCH_CLAIM_SAMPLES || 500)
const BATCH = 10
const TARGET_RATIO = 2

/** Finished history: mostly completed, some failed / timed out / cancelled, spread over 30 days. */
const SEED_HISTORY = `
  INSERT INTO task_runs (task_id, status, attempt, input, output, error, error_code, created_at, started_at,
                         completed_at, heartbeat_at, orchestrator_id)
  SELECT CASE WHEN i % 5 = 0 THEN 'limited' ELSE 'plain' END, s.status, 1, jsonb_build_object('i', i),
         CASE WHEN s.status = 'completed' THEN jsonb_build_object('ok', true) END,
         CASE WHEN s.status <> 'completed' THEN 'bench history' END,
         CASE WHEN s.status <> 'completed' THEN 'BENCH' END,
         t.at, t.at, t.at + interval '50 ms', t.at + interval '50 ms', 'bench-history'
    FROM generate_series(1, $1::int) AS i,
         LATERAL (SELECT now() - interval '30 days' + i * (interval '30 days' / $1::int) AS at) AS t,
         LATERAL (SELECT CASE WHEN i % 100 = 1 THEN 'failed' WHEN i % 100 = 2 THEN 'timeout'
                              WHEN i % 100 = 3 THEN 'cancelled' ELSE 'completed' END AS status) AS s`

async function prepare(url, finished, log) {
  await lib.registerService(url, 'http://127.0.0.1:9/', [{ id: 'plain' }, { id: 'limited', concurrency: 2 }])
  const client = await lib.connect(url)
  if (finished > 0) {
    const seeded = await lib.timeAsync(() => client.query(SEED_HISTORY, [finished]))
    log(`claim: seeded ${lib.fmt(finished)} finished runs in ${lib.fmt(seeded.ms / 1000, 1)} s`)
  }
  await client.query(`INSERT INTO task_runs (task_id, input) SELECT 'plain', jsonb_build_object('p', i) FROM generate_series(1, $1::int) AS i`, [PENDING])
  await client.query(`INSERT INTO task_runs (task_id, input) SELECT 'limited', jsonb_build_object('p', i) FROM generate_series(1, $1::int) AS i`, [LIMITED])
  await client.query('VACUUM (ANALYZE) task_runs')
  const { rows: [{ size }] } = await client.query(`SELECT pg_size_pretty(pg_total_relation_size('task_runs')) AS size`)
  return { client, size }
}

async function claimOnce(client) {
  await client.query('BEGIN')
  try {
    const started = performance.now()
    const { rows } = await client.query('SELECT * FROM pipeweave_claim_runs($1, $2)', ['bench-claimer', BATCH])
    const ms = performance.now() - started
    if (rows.length !== BATCH) throw new Error(`the claim returned ${rows.length} runs, expected ${BATCH}`)
    return ms
  } finally {
    await client.query('ROLLBACK')
  }
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const empty = await lib.createDatabase(server, { migrated: true })
  const full = await lib.createDatabase(server, { migrated: true })
  const opened = []
  try {
    const sides = [
      { key: 'empty', title: 'no finished runs', ...(await prepare(empty.url, 0, log)) },
      { key: 'full', title: `${lib.fmt(FINISHED)} finished runs`, ...(await prepare(full.url, FINISHED, log)) },
    ]
    opened.push(...sides.map((s) => s.client))
    const loads = [lib.load()]
    // Warm both (plan caches of the function, buffers) before counting.
    for (const side of sides) for (let i = 0; i < 20; i++) await claimOnce(side.client)
    const samples = { empty: [], full: [] }
    for (let i = 0; i < SAMPLES; i++) {
      for (const side of lib.rotate(sides, i)) samples[side.key].push(await claimOnce(side.client))
    }
    loads.push(lib.load())
    process.stdout.write(`${report(sides, samples, loads)}\n`)
    return samples
  } finally {
    for (const client of opened) await client.end()
    await empty.drop()
    await full.drop()
  }
}

function report(sides, samples, loads) {
  const lines = [lib.heading(`Claim cost: pipeweave_claim_runs(…, ${BATCH}) with and without history`)]
  lines.push(`pending: ${PENDING} runs of a task without a limit + ${LIMITED} of a task with concurrency 2; ${SAMPLES} claims on each, alternating, each rolled back; round trip ms as \`run\` sees it`)
  lines.push(`${loads[0]} before, ${loads[loads.length - 1]} after`)
  lines.push(lib.table([
    { title: 'task_runs', align: 'left' }, { title: 'table size', align: 'right' }, { title: 'median ms', align: 'right' },
    { title: 'p10', align: 'right' }, { title: 'p90', align: 'right' }, { title: 'max', align: 'right' },
  ], sides.map((side) => {
    const s = lib.summary(samples[side.key])
    return [side.title, side.size, lib.fmt(s.median, 2), lib.fmt(s.p10, 2), lib.fmt(s.p90, 2), lib.fmt(s.max, 2)]
  })))
  lines.push('')
  const ratio = lib.median(samples.full) / lib.median(samples.empty)
  lines.push(`target flat, median with history ≤ ${TARGET_RATIO}× without: ${lib.fmt(ratio, 2)}× — ${ratio <= TARGET_RATIO ? 'met' : 'NOT met'}`)
  return lines.join('\n')
}

module.exports = { name: 'claim cost', run }

if (require.main === module) lib.runAlone((server) => run(server))
