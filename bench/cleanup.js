'use strict'
/**
 * db:cleanup (issue 3): runCleanup (dist/api/cleanup, the code behind `pipeweave db:cleanup`) on
 * 1,000,000 expired idempotency_cache rows, timing every batch statement through its onBatch
 * callback, beside one plain `DELETE FROM idempotency_cache WHERE expires_at < now()` of the same
 * rows. The table is re-seeded, vacuumed and checkpointed before each, so both start alike.
 * Target: at least half the plain DELETE's rate, and no statement over 250 ms.
 *
 * The table also holds 50,000 entries that have not expired: both must leave exactly those.
 *
 *   node bench/cleanup.js
 *   BENCH_CLEANUP_ROWS=1000000 BENCH_CLEANUP_LIVE_ROWS=50000 BENCH_CLEANUP_ROUNDS=2 BENCH_CLEANUP_BATCH_SIZE=(default)
 */
const lib = require('./lib')

const ROWS = Number(process.env.BENCH_CLEANUP_ROWS || 1_000_000)
const LIVE_ROWS = Number(process.env.BENCH_CLEANUP_LIVE_ROWS || 50_000)
const ROUNDS = Number(process.env.BENCH_CLEANUP_ROUNDS || 2)
const BATCH_SIZE = process.env.BENCH_CLEANUP_BATCH_SIZE ? Number(process.env.BENCH_CLEANUP_BATCH_SIZE) : undefined
const TARGET_RATE_SHARE = 0.5
const TARGET_MAX_STATEMENT_MS = 250

/**
 * Expired rows as a cache fills up: cached over 20 days, in time order, with a TTL of 1, 24 or 72
 * hours by task, so expiry follows insertion order only loosely. Then the live rows.
 */
const SEED = `
  INSERT INTO idempotency_cache (task_id, idempotency_key, output, cached_at, expires_at)
  SELECT 'task-' || (i % 12), 'key-' || i, jsonb_build_object('status', 'ok', 'value', i),
         c.cached_at, c.cached_at + (ARRAY[interval '1 hour', interval '24 hours', interval '72 hours'])[i % 3 + 1]
    FROM generate_series(1, $1::int) AS i,
         LATERAL (SELECT now() - interval '30 days' + i * (interval '20 days' / $1::int) AS cached_at) AS c`
const SEED_LIVE = `
  INSERT INTO idempotency_cache (task_id, idempotency_key, output, cached_at, expires_at)
  SELECT 'task-' || (i % 12), 'live-' || i, jsonb_build_object('status', 'ok', 'value', i), now(), now() + interval '1 day'
    FROM generate_series(1, $1::int) AS i`

async function seed(client) {
  await client.query('TRUNCATE idempotency_cache')
  await client.query(SEED, [ROWS])
  if (LIVE_ROWS > 0) await client.query(SEED_LIVE, [LIVE_ROWS])
  // Start from a settled table: hint bits set, visibility map and statistics fresh, no checkpoint due.
  await client.query('VACUUM (ANALYZE) idempotency_cache')
  await client.query('CHECKPOINT').catch(() => undefined) // needs a superuser (or pg_checkpoint)
}

async function assertLeft(client, what) {
  const { rows: [{ expired, live }] } = await client.query(
    'SELECT count(*) FILTER (WHERE expires_at < now())::int AS expired, count(*) FILTER (WHERE expires_at >= now())::int AS live FROM idempotency_cache')
  if (expired !== 0 || live !== LIVE_ROWS) throw new Error(`${what} left ${expired} expired and ${live} live rows (expected 0 and ${LIVE_ROWS})`)
}

async function plainDelete(client) {
  const { ms, value } = await lib.timeAsync(() => client.query('DELETE FROM idempotency_cache WHERE expires_at < now()'))
  if (value.rowCount !== ROWS) throw new Error(`the plain DELETE deleted ${value.rowCount} rows, expected ${ROWS}`)
  await assertLeft(client, 'the plain DELETE')
  return { ms, rows: value.rowCount }
}

async function cleanup(client, url) {
  const { runCleanup } = lib.requireDist('api/cleanup')
  const db = await lib.openDatabase(url, 'bench-cleanup')
  try {
    const statements = []
    const { ms, value } = await lib.timeAsync(() => runCleanup(db, {
      ...(BATCH_SIZE ? { batchSize: BATCH_SIZE } : {}),
      onBatch: (table, deleted, statementMs) => statements.push({ table, deleted, ms: statementMs }),
    }))
    if (value.idempotencyCache !== ROWS || value.skipped) throw new Error(`runCleanup returned ${JSON.stringify(value)}, expected ${ROWS} idempotency cache rows`)
    await assertLeft(client, 'runCleanup')
    return { ms, rows: value.idempotencyCache, statements }
  } finally {
    await db.close()
  }
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const database = await lib.createDatabase(server, { migrated: true })
  const client = await lib.connect(database.url)
  const plain = []
  const batched = []
  try {
    // A B B A …: whichever runs second in a pair does not always meet the same machine state.
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? ['plain', 'cleanup'] : ['cleanup', 'plain']
      for (const which of order) {
        log(`cleanup round ${round + 1}/${ROUNDS}: seeding ${lib.fmt(ROWS)} expired + ${lib.fmt(LIVE_ROWS)} live rows`)
        const seeded = await lib.timeAsync(() => seed(client))
        log(`  seeded in ${lib.fmt(seeded.ms / 1000, 1)} s; ${which === 'plain' ? 'plain DELETE' : 'runCleanup'}`)
        if (which === 'plain') plain.push(await plainDelete(client))
        else batched.push(await cleanup(client, database.url))
      }
    }
    const { rows: [{ size }] } = await client.query(
      `SELECT pg_size_pretty(pg_total_relation_size('idempotency_cache')) AS size`)
    process.stdout.write(`${report(plain, batched, size)}\n`)
    return { plain, batched }
  } finally {
    await client.end()
    await database.drop()
  }
}

function report(plain, batched, size) {
  const rate = (r) => r.rows / (r.ms / 1000)
  const plainRate = lib.median(plain.map(rate))
  const batchedRate = lib.median(batched.map(rate))
  const all = batched.flatMap((r) => r.statements)
  const cache = all.filter((s) => s.table === 'idempotencyCache')
  const longest = Math.max(...all.map((s) => s.ms))
  const statementStats = lib.summary(cache.map((s) => s.ms))
  const batchSize = BATCH_SIZE ?? lib.requireDist('api/cleanup').CLEANUP_DEFAULTS.batchSize

  const lines = [lib.heading('Cleanup: expired idempotency_cache rows')]
  lines.push(`${lib.fmt(ROWS)} expired rows (+ ${lib.fmt(LIVE_ROWS)} live ones kept), re-seeded, vacuumed and checkpointed before each run; ${ROUNDS} run(s) of each; table ${size} after the last`)
  const each = (runs) => runs.map((r) => lib.fmt(rate(r))).join(' / ')
  lines.push(lib.table([
    { title: 'method', align: 'left' }, { title: 'rows', align: 'right' }, { title: 'median ms', align: 'right' },
    { title: 'median rows/s', align: 'right' }, { title: 'rows/s of each run', align: 'right' },
    { title: 'statements', align: 'right' }, { title: 'longest statement ms', align: 'right' },
  ], [
    ['plain DELETE … WHERE expires_at < now()', lib.fmt(ROWS), lib.fmt(lib.median(plain.map((r) => r.ms))), lib.fmt(plainRate), each(plain),
      '1', lib.fmt(Math.max(...plain.map((r) => r.ms)), 1)],
    [`runCleanup (db:cleanup), batches of ${lib.fmt(batchSize)}`, lib.fmt(ROWS), lib.fmt(lib.median(batched.map((r) => r.ms))), lib.fmt(batchedRate), each(batched),
      lib.fmt(all.length / batched.length), lib.fmt(longest, 1)],
  ]))
  lines.push(`idempotency_cache statements, ms: median ${lib.fmt(statementStats.median, 1)}, p90 ${lib.fmt(statementStats.p90, 1)}, max ${lib.fmt(statementStats.max, 1)}` +
    ` (first ${lib.fmt(cache[0]?.ms, 1)}, last ${lib.fmt(cache[cache.length - 1]?.ms, 1)} deleting ${lib.fmt(cache[cache.length - 1]?.deleted)} rows)`)
  lines.push('')
  const share = batchedRate / plainRate
  lines.push(`target rate ≥ ${TARGET_RATE_SHARE} × plain DELETE: ${lib.fmt(share, 2)} × — ${share >= TARGET_RATE_SHARE ? 'met' : 'NOT met'}`)
  lines.push(`target no statement over ${TARGET_MAX_STATEMENT_MS} ms: longest ${lib.fmt(longest, 1)} ms — ${longest <= TARGET_MAX_STATEMENT_MS ? 'met' : 'NOT met'}`)
  return lines.join('\n')
}

module.exports = { name: 'cleanup', run }

if (require.main === module) lib.runAlone((server) => run(server))
