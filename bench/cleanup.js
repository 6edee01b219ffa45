'use strict'
/**
 * db:cleanup (issues 3 and 10): runCleanup (dist/api/cleanup, the code behind `pipeweave
 * db:cleanup`), timing every batch statement through its onBatch callback, beside one plain DELETE
 * of the same rows, on two tables:
 *
 *   idempotency_cache  1,000,000 expired entries (+ 50,000 live ones that must stay), beside
 *                      `DELETE FROM idempotency_cache WHERE expires_at < now()`;
 *   task_run_history   1,000,000 finished runs completed 31–60 days ago, deleted with
 *                      --runs-retention-days 30 (cleanup walks task_run_history by id: ids are
 *                      time-ordered, 12 hex digits of ms + 8 hex), beside one
 *                      `DELETE … WHERE completed_at < now() − 30 days AND NOT EXISTS (a DLQ entry)`.
 *                      Kept by both: 50,000 runs finished within the last day, and 1,000 old
 *                      failed runs whose DLQ entries are kept (DLQ retention 90 days).
 *
 * The table is re-seeded, vacuumed and checkpointed before each run, so both methods start alike;
 * the order alternates by round. Targets: at least half the plain DELETE's rate, and no statement
 * over 250 ms.
 *
 *   node bench/cleanup.js
 * Environment (defaults in brackets):
 *   BENCH_CLEANUP_ROWS [1000000]        expired idempotency_cache rows
 *   BENCH_CLEANUP_LIVE_ROWS [50000]     live idempotency_cache rows (kept)
 *   BENCH_CLEANUP_RUNS [1000000]        finished runs past the retention
 *   BENCH_CLEANUP_LIVE_RUNS [50000]     recent finished runs (kept)
 *   BENCH_CLEANUP_DLQ_RUNS [1000]       old failed runs held by a DLQ entry (kept)
 *   BENCH_CLEANUP_ROUNDS [2]            runs of each method on each table
 *   BENCH_CLEANUP_BATCH_SIZE [runCleanup's default]
 */
const lib = require('./lib')

const ROWS = Number(process.env.BENCH_CLEANUP_ROWS || 1_000_000)
const LIVE_ROWS = Number(process.env.BENCH_CLEANUP_LIVE_ROWS || 50_000)
const RUNS = Number(process.env.BENCH_CLEANUP_RUNS || 1_000_000)
const LIVE_RUNS = Number(process.env.BENCH_CLEANUP_LIVE_RUNS || 50_000)
const DLQ_RUNS = Number(process.env.BENCH_CLEANUP_DLQ_RUNS || 1000)
const ROUNDS = Number(process.env.BENCH_CLEANUP_ROUNDS || 2)
const BATCH_SIZE = process.env.BENCH_CLEANUP_BATCH_SIZE ? Number(process.env.BENCH_CLEANUP_BATCH_SIZE) : undefined
const RUNS_RETENTION_DAYS = 30
const DLQ_RETENTION_DAYS = 90
const TARGET_RATE_SHARE = 0.5
const TARGET_MAX_STATEMENT_MS = 250

// ---------------------------------------------------------------------------------------------
// idempotency_cache

/**
 * Expired rows as a cache fills up: cached over 20 days, in time order, with a TTL of 1, 24 or 72
 * hours by task, so expiry follows insertion order only loosely. Then the live rows.
 */
const SEED_CACHE = `
  INSERT INTO idempotency_cache (task_id, idempotency_key, output, cached_at, expires_at)
  SELECT 'task-' || (i % 12), 'key-' || i, jsonb_build_object('status', 'ok', 'value', i),
         c.cached_at, c.cached_at + (ARRAY[interval '1 hour', interval '24 hours', interval '72 hours'])[i % 3 + 1]
    FROM generate_series(1, $1::int) AS i,
         LATERAL (SELECT now() - interval '30 days' + i * (interval '20 days' / $1::int) AS cached_at) AS c`
const SEED_CACHE_LIVE = `
  INSERT INTO idempotency_cache (task_id, idempotency_key, output, cached_at, expires_at)
  SELECT 'task-' || (i % 12), 'live-' || i, jsonb_build_object('status', 'ok', 'value', i), now(), now() + interval '1 day'
    FROM generate_series(1, $1::int) AS i`

// ---------------------------------------------------------------------------------------------
// task_run_history

/**
 * $1 finished runs spread evenly between $2 and $3 ago (intervals), ids time-ordered like
 * pipeweave_new_id() (12 hex digits of the creation ms, then 8 of a counter from $4), 1 in 100
 * failed (with a DLQ entry only when $5).
 */
const SEED_RUNS = `
  INSERT INTO task_run_history (id, task_id, status, attempt, priority, input, output, error, error_code,
                                created_at, started_at, completed_at, heartbeat_at, orchestrator_id, due_at)
  SELECT lpad(to_hex((extract(epoch FROM t.at) * 1000)::bigint), 12, '0') || lpad(to_hex($4::int + i), 8, '0'),
         'task-' || (i % 12), CASE WHEN $5 THEN 'failed' ELSE 'completed' END, 1, 100, jsonb_build_object('i', i),
         CASE WHEN NOT $5 THEN jsonb_build_object('ok', true, 'value', i) END,
         CASE WHEN $5 THEN 'bench: failed' END, CASE WHEN $5 THEN 'BENCH' END,
         t.at, t.at, t.at + interval '50 ms', t.at + interval '50 ms', 'bench', t.at
    FROM generate_series(1, $1::int) AS i,
         LATERAL (SELECT now() - $2::interval + i * (($2::interval - $3::interval) / $1::int) AS at) AS t`
const SEED_DLQ = `
  INSERT INTO dlq (task_run_id, task_id, error, error_code, attempts, failed_at)
  SELECT h.id, h.task_id, h.error, h.error_code, h.attempt, h.completed_at FROM task_run_history h WHERE h.status = 'failed'`

const PLAIN_RUNS_DELETE = `
  DELETE FROM task_run_history h
   WHERE h.completed_at < now() - ${RUNS_RETENTION_DAYS} * interval '1 day'
     AND NOT EXISTS (SELECT 1 FROM dlq d WHERE d.task_run_id = h.id)`

async function settle(client, table) {
  // Start from a settled table: hint bits set, visibility map and statistics fresh, no checkpoint due.
  await client.query(`VACUUM (ANALYZE) ${table}`)
  await client.query('CHECKPOINT').catch(() => undefined) // needs a superuser (or pg_checkpoint)
}

const TABLES = {
  cache: {
    title: 'idempotency_cache: expired entries',
    rows: ROWS,
    kept: LIVE_ROWS,
    counter: 'idempotencyCache',
    async seed(client) {
      await client.query('TRUNCATE idempotency_cache, task_run_history, dlq')
      await client.query(SEED_CACHE, [ROWS])
      if (LIVE_ROWS > 0) await client.query(SEED_CACHE_LIVE, [LIVE_ROWS])
      await settle(client, 'idempotency_cache')
    },
    plain: 'DELETE FROM idempotency_cache WHERE expires_at < now()',
    plainTitle: 'plain DELETE … WHERE expires_at < now()',
    options: {},
    async left(client) {
      const { rows: [r] } = await client.query(
        'SELECT count(*) FILTER (WHERE expires_at < now())::int AS gone, count(*) FILTER (WHERE expires_at >= now())::int AS kept FROM idempotency_cache')
      return r
    },
  },
  history: {
    title: `task_run_history: runs finished over ${RUNS_RETENTION_DAYS} days ago`,
    rows: RUNS,
    kept: LIVE_RUNS + DLQ_RUNS,
    counter: 'taskRuns',
    async seed(client) {
      await client.query('TRUNCATE idempotency_cache, task_run_history, dlq')
      // In id order: the old failed runs (held by the DLQ) among the old ones, then the recent.
      await client.query(SEED_RUNS, [RUNS, '60 days', `${RUNS_RETENTION_DAYS + 1} days`, 0, false])
      if (DLQ_RUNS > 0) await client.query(SEED_RUNS, [DLQ_RUNS, '59 days', `${RUNS_RETENTION_DAYS + 2} days`, RUNS, true])
      if (LIVE_RUNS > 0) await client.query(SEED_RUNS, [LIVE_RUNS, '1 day', '1 minute', RUNS + DLQ_RUNS, false])
      await client.query(SEED_DLQ)
      await settle(client, 'task_run_history')
      await client.query('VACUUM (ANALYZE) dlq')
    },
    plain: PLAIN_RUNS_DELETE,
    plainTitle: `plain DELETE … WHERE completed_at < now() − ${RUNS_RETENTION_DAYS} d AND no DLQ entry`,
    options: { runsRetentionDays: RUNS_RETENTION_DAYS, dlqRetentionDays: DLQ_RETENTION_DAYS },
    async left(client) {
      const { rows: [r] } = await client.query(`
        SELECT count(*) FILTER (WHERE completed_at < now() - ${RUNS_RETENTION_DAYS} * interval '1 day'
                                  AND NOT EXISTS (SELECT 1 FROM dlq d WHERE d.task_run_id = h.id))::int AS gone,
               count(*) FILTER (WHERE completed_at >= now() - ${RUNS_RETENTION_DAYS} * interval '1 day'
                                  OR EXISTS (SELECT 1 FROM dlq d WHERE d.task_run_id = h.id))::int AS kept
          FROM task_run_history h`)
      return r
    },
  },
}

async function assertLeft(client, t, what) {
  const { gone, kept } = await t.left(client)
  if (gone !== 0 || kept !== t.kept) throw new Error(`${what} left ${gone} rows it should have deleted and ${kept} of the ${t.kept} it must keep`)
}

async function plainDelete(client, t) {
  const { ms, value } = await lib.timeAsync(() => client.query(t.plain))
  if (value.rowCount !== t.rows) throw new Error(`the plain DELETE deleted ${value.rowCount} rows, expected ${t.rows}`)
  await assertLeft(client, t, 'the plain DELETE')
  return { ms, rows: value.rowCount }
}

async function cleanup(client, url, t) {
  const { runCleanup } = lib.requireDist('api/cleanup')
  const db = await lib.openDatabase(url, 'bench-cleanup')
  try {
    const statements = []
    const { ms, value } = await lib.timeAsync(() => runCleanup(db, {
      ...t.options,
      ...(BATCH_SIZE ? { batchSize: BATCH_SIZE } : {}),
      onBatch: (table, deleted, statementMs) => statements.push({ table, deleted, ms: statementMs }),
    }))
    if (value[t.counter] !== t.rows || value.skipped) throw new Error(`runCleanup returned ${JSON.stringify(value)}, expected ${t.rows} ${t.counter}`)
    await assertLeft(client, t, 'runCleanup')
    return { ms, rows: value[t.counter], statements }
  } finally {
    await db.close()
  }
}

/** @typedef {{ ms: number, rows: number, statements?: unknown[] }} Timed one delete, plain or batched */

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const database = await lib.createDatabase(server, { migrated: true })
  const client = await lib.connect(database.url)
  const results = {}
  try {
    for (const [key, t] of Object.entries(TABLES)) {
      if (t.rows === 0) continue
      /** @type {{ plain: Timed[], batched: Timed[] }} */
      const r = { plain: [], batched: [] }
      // A B B A …: whichever runs second in a pair does not always meet the same machine state.
      for (let round = 0; round < ROUNDS; round++) {
        const order = round % 2 === 0 ? ['plain', 'cleanup'] : ['cleanup', 'plain']
        for (const which of order) {
          log(`cleanup ${key} round ${round + 1}/${ROUNDS}: seeding ${lib.fmt(t.rows)} rows to delete + ${lib.fmt(t.kept)} to keep`)
          const seeded = await lib.timeAsync(() => t.seed(client))
          log(`  seeded in ${lib.fmt(seeded.ms / 1000, 1)} s; ${which === 'plain' ? 'plain DELETE' : 'runCleanup'}`)
          if (which === 'plain') r.plain.push(await plainDelete(client, t))
          else r.batched.push(await cleanup(client, database.url, t))
        }
      }
      results[key] = r
    }
    process.stdout.write(`${report(results)}\n`)
    return results
  } finally {
    await client.end()
    await database.drop()
  }
}

function report(results) {
  const rate = (r) => r.rows / (r.ms / 1000)
  const batchSize = BATCH_SIZE ?? lib.requireDist('api/cleanup').CLEANUP_DEFAULTS.batchSize
  const lines = [lib.heading('Cleanup: db:cleanup (runCleanup) beside one plain DELETE')]
  lines.push(`each run on a freshly seeded, vacuumed and checkpointed table; ${ROUNDS} run(s) of each method, alternating; batches of ${lib.fmt(batchSize)}`)
  const rows = []
  const targets = []
  for (const [key, r] of Object.entries(results)) {
    const t = TABLES[key]
    const plainRate = lib.median(r.plain.map(rate))
    const batchedRate = lib.median(r.batched.map(rate))
    const own = r.batched.flatMap((x) => x.statements).filter((s) => s.table === t.counter)
    const all = r.batched.flatMap((x) => x.statements)
    const longest = Math.max(...all.map((s) => s.ms))
    const each = (runs) => runs.map((x) => lib.fmt(rate(x))).join(' / ')
    rows.push([t.title, t.plainTitle, lib.fmt(t.rows), lib.fmt(lib.median(r.plain.map((x) => x.ms))), lib.fmt(plainRate), each(r.plain), '1', lib.fmt(Math.max(...r.plain.map((x) => x.ms)), 1), ''])
    const s = lib.summary(own.map((x) => x.ms))
    rows.push(['', 'runCleanup (db:cleanup)', lib.fmt(t.rows), lib.fmt(lib.median(r.batched.map((x) => x.ms))), lib.fmt(batchedRate), each(r.batched),
      lib.fmt(all.length / r.batched.length), lib.fmt(longest, 1), `${lib.fmt(s.median, 1)} / ${lib.fmt(s.p90, 1)} (last ${lib.fmt(own[own.length - 1]?.ms, 1)})`])
    const share = batchedRate / plainRate
    targets.push(`${key}: target rate ≥ ${TARGET_RATE_SHARE} × plain DELETE: ${lib.fmt(share, 2)} × — ${share >= TARGET_RATE_SHARE ? 'met' : 'NOT met'}; ` +
      `no statement over ${TARGET_MAX_STATEMENT_MS} ms: longest ${lib.fmt(longest, 1)} ms — ${longest <= TARGET_MAX_STATEMENT_MS ? 'met' : 'NOT met'}`)
  }
  lines.push(lib.table([
    { title: 'table', align: 'left' }, { title: 'method', align: 'left' }, { title: 'rows', align: 'right' }, { title: 'median ms', align: 'right' },
    { title: 'median rows/s', align: 'right' }, { title: 'rows/s of each run', align: 'right' },
    { title: 'statements', align: 'right' }, { title: 'longest ms', align: 'right' }, { title: 'batch ms median / p90', align: 'right' },
  ], rows))
  lines.push('')
  lines.push(...targets)
  return lines.join('\n')
}

module.exports = { name: 'cleanup', run }

if (require.main === module) lib.runAlone((server) => run(server))
