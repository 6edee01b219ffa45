'use strict'
/**
 * Shared by every benchmark in bench/: a PostgreSQL server (PIPEWEAVE_BENCH_DATABASE_URL, or a
 * dedicated embedded server in a temporary directory), fresh databases on it, process timing, and
 * the statistics and table printer the scripts report with.
 *
 * Plain CommonJS on purpose: the scripts run without a compile step and use the built CLI (dist/).
 */
const { spawnSync } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
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

/** The current environment without any connection setting, plus `extra`. */
function cleanEnv(extra = {}) {
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
 */
function timeInterleaved(commands, { runs, warmup = 1, onRound } = {}) {
  const samples = Object.fromEntries(commands.map((c) => [c.name, []]))
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

module.exports = {
  ROOT, DIST, CLI, requireDist,
  cleanEnv, tempHome,
  acquireServer, createDatabase, migrate, connect, openDatabase, urlFor, maskUrl,
  timeProcess, timeInterleaved, timeAsync, percentile, median, summary,
  fmt, table, heading, runAlone,
}
