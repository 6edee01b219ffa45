'use strict'
/**
 * Shared by every benchmark in bench/: a PostgreSQL server (PIPEWEAVE_BENCH_DATABASE_URL, or a
 * dedicated embedded server in a temporary directory), fresh databases on it, process timing, and
 * the statistics and table printer the scripts report with.
 *
 * Plain CommonJS on purpose: the scripts run without a compile step and use the built CLI (dist/).
 */
const { spawn, spawnSync } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const http = require('node:http')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..')
const DIST = path.join(ROOT, 'dist')
const CLI = path.join(ROOT, 'bin', 'run.js')

function requireDist(module) {
  const file = path.join(DIST, module)
  try {
    return require(file)
  } catch (error) {
    if (error && error.code === 'MODULE_NOT_FOUND' && !fs.existsSync(`${file}.js`)) {
      throw new Error(`${path.relative(ROOT, file)}.js is missing: run \`npm run build\` first (npm run bench does)`)
    }
    throw error
  }
}

// ---------------------------------------------------------------------------------------------
// Environment

/** Variables that select a database (SPEC §1): removed so that a child uses exactly what we give it. */
const CONNECTION_VARIABLES = /^(DATABASE_URL|DB_.*|PG.*|PIPEWEAVE_HOME|PIPEWEAVE_EMBEDDED|NODE_ENV)$/

/**
 * The current environment without any connection setting, plus `extra`.
 * @param {NodeJS.ProcessEnv} [extra]
 * @returns {NodeJS.ProcessEnv}
 */
function cleanEnv(extra = {}) {
  /** @type {NodeJS.ProcessEnv} */
  const env = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (!CONNECTION_VARIABLES.test(key) && value !== undefined) env[key] = value
  }
  return { ...env, ...extra }
}

/** A private temporary directory the embedded server's `postgres` user can pass through. */
function tempHome(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  fs.chmodSync(dir, 0o755)
  return dir
}

// ---------------------------------------------------------------------------------------------
// The server

/**
 * The benchmarks' PostgreSQL server: PIPEWEAVE_BENCH_DATABASE_URL when set (used as the admin
 * connection: it must be allowed to CREATE DATABASE), otherwise a dedicated embedded server that
 * `release()` stops and removes.
 */
async function acquireServer(options = {}) {
  const log = options.log ?? ((message) => process.stderr.write(`${message}\n`))
  const external = process.env.PIPEWEAVE_BENCH_DATABASE_URL
  if (external) {
    return { kind: 'external', adminUrl: external, describe: maskUrl(external), release: async () => undefined }
  }
  const { acquireEmbeddedServer } = requireDist('db/embedded')
  const home = tempHome('pipeweave-bench-')
  log(`starting a dedicated embedded PostgreSQL in ${home}`)
  let handle
  try {
    handle = await acquireEmbeddedServer({
      env: { PIPEWEAVE_HOME: home }, cwd: home, applicationName: 'pipeweave-bench', log,
      serverSettings: options.serverSettings,
    })
  } catch (error) {
    fs.rmSync(home, { recursive: true, force: true })
    throw error
  }
  const { server } = handle
  const adminUrl = `postgres://${server.user}:${encodeURIComponent(server.password)}@${server.host}:${server.port}/postgres`
  return {
    kind: 'embedded',
    adminUrl,
    describe: `embedded PostgreSQL at ${server.dataDir}`,
    release: async () => {
      try {
        await handle.release({ stop: 'always' })
      } finally {
        fs.rmSync(home, { recursive: true, force: true })
      }
    },
  }
}

function maskUrl(url) {
  return url.replace(/(postgres(?:ql)?:\/\/[^:/?#@\s]*):([^@\s]*)@/gi, '$1:****@')
}

function urlFor(adminUrl, database) {
  const url = new URL(adminUrl)
  url.pathname = `/${database}`
  return url.toString()
}

/** A plain pg client on `url`, connected. */
async function connect(url) {
  const { Client } = require('pg')
  const client = new Client({ connectionString: url, application_name: 'pipeweave-bench' })
  client.on('error', () => undefined)
  await client.connect()
  return client
}

/**
 * A new empty database on the server (pipeweave's migrations applied with `migrated`);
 * `drop()` removes it.
 */
async function createDatabase(server, options = {}) {
  const name = `pw_bench_${crypto.randomBytes(5).toString('hex')}`
  const admin = await connect(server.adminUrl)
  try {
    await admin.query(`CREATE DATABASE ${name}`)
  } finally {
    await admin.end()
  }
  const url = urlFor(server.adminUrl, name)
  if (options.migrated) await migrate(url)
  return {
    name,
    url,
    drop: async () => {
      const client = await connect(server.adminUrl)
      try {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      } finally {
        await client.end()
      }
    },
  }
}

/** Apply pipeweave's migrations through its own API. */
async function migrate(url) {
  const db = await openDatabase(url, 'bench-migrate')
  try {
    await requireDist('api/migrations').runMigrations(db)
  } finally {
    await db.close()
  }
}

/** pipeweave's own Database (dist/db/database) on `url`, as the API functions take it. */
function openDatabase(url, command = 'bench') {
  return requireDist('db/database').createDatabase({ flags: { url }, env: {}, command })
}

// ---------------------------------------------------------------------------------------------
// Timing

/** Wall time of one process run, in ms; throws when it fails (a benchmark of an error is no benchmark). */
function timeProcess(command, args, options = {}) {
  const started = process.hrtime.bigint()
  const result = spawnSync(command, args, {
    env: options.env ?? process.env,
    cwd: options.cwd ?? ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 60_000,
    maxBuffer: 16 * 1024 * 1024,
  })
  const ms = Number(process.hrtime.bigint() - started) / 1e6
  if (result.error || result.status !== 0) {
    const why = result.error ? result.error.message : `exit ${result.status}${result.signal ? ` (${result.signal})` : ''}`
    throw new Error(`${[command, ...args].join(' ')} failed: ${why}\n${maskUrl((result.stderr || '').trim())}`)
  }
  if (options.check) options.check(result.stdout, result.stderr)
  return ms
}

/**
 * Run several commands `runs` times each, interleaved (A B C A B C …) after `warmup` rounds, so
 * that a drift in the machine's speed touches every command alike. Returns the samples by name.
 * @param {Array<{ name: string, command: string, args: string[], env?: NodeJS.ProcessEnv, check?: (stdout: string, stderr: string) => void }>} commands
 * @param {{ runs: number, warmup?: number, onRound?: (round: number, runs: number) => void }} options
 */
function timeInterleaved(commands, { runs, warmup = 1, onRound }) {
  const samples = /** @type {Record<string, number[]>} */ (Object.fromEntries(commands.map((c) => [c.name, []])))
  for (let round = -warmup; round < runs; round++) {
    for (const c of commands) {
      const ms = timeProcess(c.command, c.args, c)
      if (round >= 0) samples[c.name].push(ms)
    }
    if (round >= 0 && onRound) onRound(round + 1, runs)
  }
  return samples
}

function sorted(values) {
  return [...values].sort((a, b) => a - b)
}

/** The p-th percentile (0–100), linear between the closest ranks. */
function percentile(values, p) {
  if (values.length === 0) return NaN
  const s = sorted(values)
  const rank = (p / 100) * (s.length - 1)
  const low = Math.floor(rank)
  const high = Math.ceil(rank)
  return s[low] + (s[high] - s[low]) * (rank - low)
}

const median = (values) => percentile(values, 50)

function summary(values) {
  const s = sorted(values)
  return { n: s.length, min: s[0], p10: percentile(s, 10), median: median(s), p90: percentile(s, 90), max: s[s.length - 1] }
}

/** Wall time of an async function, ms. */
async function timeAsync(fn) {
  const started = performance.now()
  const value = await fn()
  return { ms: performance.now() - started, value }
}

// ---------------------------------------------------------------------------------------------
// Printing

/** Fixed-point with thousands separators: fmt(1234.5, 1) → "1,234.5". */
function fmt(value, digits = 0) {
  if (value === undefined || value === null || Number.isNaN(value)) return '–'
  return Number(value).toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

/**
 * A plain-text table: `columns` are { title, align: 'left'|'right' }, `rows` arrays of strings.
 * Returns the lines (joined with newlines).
 */
function table(columns, rows) {
  const cells = rows.map((row) => row.map((cell) => (cell === undefined || cell === null ? '' : String(cell))))
  const widths = columns.map((c, i) => Math.max(c.title.length, ...cells.map((row) => (row[i] ?? '').length)))
  const pad = (text, i) => (columns[i].align === 'left' ? text.padEnd(widths[i]) : text.padStart(widths[i]))
  const line = (row) => row.map((cell, i) => pad(cell ?? '', i)).join('  ').trimEnd()
  return [line(columns.map((c) => c.title)), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line)].join('\n')
}

/** A heading, then the report of one benchmark. */
function heading(text) {
  return `\n${text}\n${'='.repeat(text.length)}`
}

// ---------------------------------------------------------------------------------------------
// Orchestrator benchmarks: a worker service, the `run` process, a seeded queue

/** "load 1.23 0.98 0.87" (1, 5 and 15 minute averages): printed beside every figure. */
function load() {
  return `load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`
}

/** Wall clock in ms with sub-millisecond precision, comparable across processes on this machine. */
function wallNow() {
  return performance.timeOrigin + performance.now()
}

const NO_OP_ANSWER = Buffer.from('{"output":null}')

/**
 * A worker service on loopback: a plain node:http server (keep-alive, Node's defaults) that answers
 * every POST with `{"output":null}`, after `delayMs` when given. `onRequest(req, receivedAt)` is
 * called as each request arrives (headers read, wallNow()); with `keepBodies` the bodies are kept,
 * parsed, in `bodies`.
 */
async function startWorker(options = {}) {
  const bodies = []
  let requests = 0
  const sockets = new Set()
  const server = http.createServer((req, res) => {
    const receivedAt = wallNow()
    requests += 1
    if (options.onRequest) options.onRequest(req, receivedAt)
    const chunks = []
    if (options.keepBodies) req.on('data', (chunk) => chunks.push(chunk))
    else req.resume()
    req.on('end', () => {
      if (options.keepBodies) bodies.push(JSON.parse(Buffer.concat(chunks).toString('utf8')))
      const answer = () => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': NO_OP_ANSWER.length })
        res.end(NO_OP_ANSWER)
      }
      if (options.delayMs) setTimeout(answer, options.delayMs)
      else answer()
    })
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(undefined)))
  return {
    url: `http://127.0.0.1:${/** @type {import('node:net').AddressInfo} */ (server.address()).port}`,
    bodies,
    get requests() { return requests },
    close: () => new Promise((resolve) => {
      for (const socket of sockets) socket.destroy()
      server.close(() => resolve(undefined))
    }),
  }
}

/** Register the service `bench` at `baseUrl` with `tasks` (manifest entries) through the API. */
async function registerService(url, baseUrl, tasks) {
  const db = await openDatabase(url, 'bench-register')
  try {
    await requireDist('api/services').registerService(db, { id: 'bench', version: '1', baseUrl, tasks })
  } finally {
    await db.close()
  }
}

/**
 * `count` pending runs of `taskId` in one INSERT … SELECT (bypassing enqueue: a queue filled
 * before the clock starts; ids from pipeweave_new_id(), the column's default), then VACUUM (ANALYZE)
 * so that every benchmark starts from a settled table.
 */
async function seedRuns(client, taskId, count) {
  await client.query(`INSERT INTO task_runs (task_id, input)
                      SELECT $1, jsonb_build_object('i', i) FROM generate_series(1, $2::int) AS i`, [taskId, count])
  await client.query('VACUUM (ANALYZE) task_runs')
}

/**
 * `count` pending runs of `taskId` through pipeweave's own bulk enqueue (enqueueTasks: one
 * transaction, the gate, batches of 5,000), as an application would queue them.
 */
async function enqueueBulk(url, taskId, count, makeInput = (i) => ({ i })) {
  const { enqueueTasks } = requireDist('api/enqueue')
  const db = await openDatabase(url, 'bench-enqueue')
  try {
    const items = Array.from({ length: count }, (_, i) => ({ input: makeInput(i) }))
    const result = await enqueueTasks(db, taskId, items)
    if (result.runIds.length !== count || result.deduplicated !== 0) throw new Error(`enqueueTasks returned ${result.runIds.length} ids (${result.deduplicated} deduplicated) for ${count} items`)
    return result
  } finally {
    await db.close()
  }
}

/** Every run, live and finished, and what refers to runs, gone (between rounds). */
async function clearRuns(client) {
  await client.query('TRUNCATE task_runs, task_run_history, dlq, idempotency_cache, pipeline_runs')
}

/** Live runs left (task_runs holds pending, running and waiting runs only): none means drained. */
const RUNS_LEFT = 'SELECT id FROM task_runs ORDER BY id LIMIT 1'

// ---------------------------------------------------------------------------------------------
// What the server wrote: WAL position and the cumulative statistics of tables

/** The server's major version number (15, 18, …). */
async function serverMajor(client) {
  const { rows: [{ v }] } = await client.query(`SELECT current_setting('server_version_num')::int AS v`)
  return Math.floor(v / 10000)
}

/** The current WAL insert position as a BigInt of bytes (pg_current_wal_lsn() − '0/0'). */
async function walPosition(client) {
  const { rows: [{ lsn }] } = await client.query(`SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::text AS lsn`)
  return BigInt(lsn.split('.')[0])
}

/**
 * Cumulative statistics as of now: this backend's pending counts flushed (PG15+:
 * pg_stat_force_next_flush), the snapshot cleared, then read. Other backends flush their own
 * counts at transaction end at most once a second, and at exit: stop the processes whose writes
 * you count (and wait for `settleMs`) before reading.
 */
async function freshStats(client) {
  if ((await serverMajor(client)) >= 15) await client.query('SELECT pg_stat_force_next_flush()')
  await client.query('SELECT pg_stat_clear_snapshot()')
}

/**
 * n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del (and n_dead_tup) of every table of `schemas`,
 * keyed by "schema.table". Call freshStats first.
 */
async function tableCounters(client, schemas) {
  const { rows } = await client.query(`
    SELECT schemaname || '.' || relname AS name, n_tup_ins::bigint AS ins, n_tup_upd::bigint AS upd,
           n_tup_hot_upd::bigint AS hot, n_tup_del::bigint AS del, n_dead_tup::bigint AS dead
      FROM pg_stat_user_tables WHERE schemaname = ANY ($1::text[])`, [schemas])
  return Object.fromEntries(rows.map((r) => [r.name, { ins: Number(r.ins), upd: Number(r.upd), hot: Number(r.hot), del: Number(r.del), dead: Number(r.dead) }]))
}

/** Counters read until two reads `settleMs` apart agree (stats of exited backends arriving). */
async function settledCounters(client, schemas, { settleMs = 600, attempts = 10 } = {}) {
  let last
  for (let i = 0; i < attempts; i++) {
    await freshStats(client)
    const now = await tableCounters(client, schemas)
    if (last && JSON.stringify(stripDead(now)) === JSON.stringify(stripDead(last))) return now
    last = now
    await sleep(settleMs)
  }
  return last
}

function stripDead(counters) {
  return Object.fromEntries(Object.entries(counters).map(([k, v]) => [k, { ...v, dead: 0 }]))
}

/** after − before, per table, leaving out tables nothing was written to. */
function counterDelta(before, after) {
  const out = {}
  for (const [name, a] of Object.entries(after)) {
    const b = before[name] ?? { ins: 0, upd: 0, hot: 0, del: 0 }
    const d = { ins: a.ins - b.ins, upd: a.upd - b.upd, hot: a.hot - b.hot, del: a.del - b.del }
    if (d.ins || d.upd || d.hot || d.del) out[name] = d
  }
  return out
}

/**
 * The real `pipeweave run` as a child process (node bin/run.js run …) with JSON logs on a pipe
 * that is read and thrown away, as a container platform would read them. `started` resolves with
 * wallNow() when its "started" line arrives: its claim loop starts right after that line.
 * `stop()` sends SIGTERM and resolves with the exit code. `nodeArgs` go to node (--cpu-prof, say).
 */
function startRun(url, options = {}) {
  const args = [...(options.nodeArgs ?? []), CLI, 'run', '--log-format', 'json', '--concurrency', String(options.concurrency ?? 10), ...(options.args ?? [])]
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: cleanEnv({ DATABASE_URL: url, ...(options.env ?? {}) }),
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let tail = ''
  let exited
  const exit = new Promise((resolve) => child.on('exit', (code, signal) => { exited = { code, signal }; resolve(exited) }))
  const started = new Promise((resolve, reject) => {
    let seen = false
    child.stderr.on('data', (chunk) => {
      if (seen) return
      tail = (tail + chunk.toString('utf8')).slice(-20_000)
      if (tail.includes('"event":"started"')) {
        seen = true
        resolve(wallNow())
      }
    })
    void exit.then(({ code, signal }) => {
      if (!seen) reject(new Error(`pipeweave run exited (${signal ?? code}) before it started:\n${maskUrl(tail.trim())}`))
    })
  })
  return {
    child,
    started,
    stop: async () => {
      if (!exited) child.kill('SIGTERM')
      const { code, signal } = await exit
      return code ?? signal
    },
  }
}

/**
 * Poll `sql` every `intervalMs` until it returns no row; resolves with wallNow() at the first empty
 * answer. Bounded by `timeoutMs`.
 */
async function waitUntilEmpty(client, sql, { intervalMs = 10, timeoutMs = 120_000, what = sql } = {}) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const { rows } = await client.query(sql)
    if (rows.length === 0) return wallNow()
    if (Date.now() > deadline) throw new Error(`still not done after ${timeoutMs / 1000} s: ${what}`)
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

/** Wait for `predicate()` (sync or async) to be true, polling; bounded. */
async function waitFor(predicate, { intervalMs = 10, timeoutMs = 60_000, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

/** The order of `items` rotated by `round`: A B C, B C A, C A B … */
function rotate(items, round) {
  const k = round % items.length
  return [...items.slice(k), ...items.slice(0, k)]
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------------------------
// Running

/** Run `main(server)` on a server of its own when the script is started alone. */
function runAlone(main) {
  ;(async () => {
    const server = await acquireServer()
    try {
      await main(server)
    } finally {
      await server.release()
    }
  })().catch((error) => {
    process.stderr.write(`${error && error.stack ? error.stack : error}\n`)
    process.exitCode = 1
  })
}

// ---------------------------------------------------------------------------------------------
// The claim, measured (bench/claim.js, bench/flow.js)

/** The lease `run` passes with the default stale time (liveness.ts: staleMs − staleMs/4). */
function claimLeaseMs() {
  const stale = requireDist('api/settings').orchestratorStaleMs({})
  return stale - Math.max(1, Math.floor(stale / 4))
}

const ROLLBACK = new Error('rollback')

/** `fn(tx)` in a transaction of `pw` (openDatabase) that is rolled back afterwards; what it returned. */
async function rolledBack(pw, fn) {
  /** @type {any} */
  let out
  await pw.withTransaction(async (tx) => {
    out = await fn(tx)
    throw ROLLBACK
  }).catch((error) => { if (error !== ROLLBACK) throw error })
  return out
}

/**
 * One claim(batch, lease) through the repository as `claimer`, in a transaction rolled back
 * afterwards (BEGIN and ROLLBACK outside the timing): its round trip in ms and its result.
 */
async function timedClaim(pw, claimer, batch, lease) {
  return rolledBack(pw, async (tx) => {
    const repo = requireDist('orchestrator/repository').createRepository({ schema: tx.schema, query: (s, v) => tx.query(s, v) }, claimer)
    const started = performance.now()
    const result = await repo.claim(batch, lease)
    return { ms: performance.now() - started, result }
  })
}

/** EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) of the claim statement, rolled back: the plan's JSON. */
async function explainClaim(pw, claimer, batch, lease) {
  const text = requireDist('sql/task-runs').claimRuns(pw.schema).text
  return rolledBack(pw, async (tx) => (await tx.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${text}`, [claimer, batch, lease])).rows[0]['QUERY PLAN'][0])
}

/** Close what a claim bench prepared for a state: `{ database, client?, pw? }`. */
async function closeClaimDatabase(db) {
  if (db.pw) await db.pw.close().catch(() => undefined)
  if (db.client) await db.client.end().catch(() => undefined)
  await db.database.drop()
}

module.exports = {
  ROOT, DIST, CLI, requireDist,
  cleanEnv, tempHome,
  acquireServer, createDatabase, migrate, connect, openDatabase, urlFor, maskUrl,
  timeProcess, timeInterleaved, timeAsync, percentile, median, summary,
  fmt, table, heading, runAlone,
  load, wallNow, startWorker, registerService, seedRuns, enqueueBulk, clearRuns, RUNS_LEFT, startRun, waitUntilEmpty, waitFor, rotate, sleep,
  serverMajor, walPosition, freshStats, tableCounters, settledCounters, counterDelta,
  claimLeaseMs, timedClaim, explainClaim, closeClaimDatabase,
}
