'use strict'
/**
 * Cold start (issues 3, 4 and 10): `pipeweave db:status --json` and `pipeweave maintenance:status --json`
 * as whole processes against a running, migrated server, beside `node -e 0` and `psql -c 'select 1'`
 * in the same run, interleaved. Target: each within 3× `node -e 0`.
 *
 * Node reads the NODE_EXTRA_CA_CERTS bundle at every start (≈ 70 ms here), so every command is
 * timed twice: with the environment as it is, and with NODE_EXTRA_CA_CERTS unset. Then the same
 * command on the embedded database with its server stopped (data directory initialised): that run
 * pays for starting the server, and for stopping it again when it ends (SPEC §1.1).
 *
 *   node bench/cold-start.js            (a dedicated embedded server, or PIPEWEAVE_BENCH_DATABASE_URL)
 * Environment (defaults in brackets):
 *   BENCH_COLD_START_RUNS [20]   runs of each command against the running server
 *   BENCH_EMBEDDED_RUNS [5]      runs of db:status on the stopped embedded database
 *   BENCH_PSQL [/usr/bin/psql]
 */
const fs = require('node:fs')
const path = require('node:path')
const lib = require('./lib')

const RUNS = Number(process.env.BENCH_COLD_START_RUNS || 20)
const EMBEDDED_RUNS = Number(process.env.BENCH_EMBEDDED_RUNS || 5)
const TARGET_RATIO = 3
const PSQL = process.env.BENCH_PSQL || '/usr/bin/psql'

/** The two environments every command runs in. */
function variants(extra) {
  const asIs = lib.cleanEnv(extra)
  const noCa = { ...asIs }
  delete noCa.NODE_EXTRA_CA_CERTS
  return [
    { key: 'asIs', label: process.env.NODE_EXTRA_CA_CERTS ? 'NODE_EXTRA_CA_CERTS set' : 'environment as is (NODE_EXTRA_CA_CERTS not set)', env: asIs },
    { key: 'noCa', label: 'NODE_EXTRA_CA_CERTS unset', env: noCa },
  ]
}

function checkStatus(expectInitialized) {
  return (stdout) => {
    let status
    try {
      status = JSON.parse(stdout)
    } catch {
      throw new Error(`db:status --json printed something that is not one JSON document:\n${stdout}`)
    }
    if (status.initialized !== expectInitialized || !Array.isArray(status.pending) || status.pending.length !== 0) {
      throw new Error(`db:status --json says ${JSON.stringify(status)}: expected a migrated database`)
    }
  }
}

function checkMaintenanceStatus(stdout) {
  let status
  try {
    status = JSON.parse(stdout)
  } catch {
    throw new Error(`maintenance:status --json printed something that is not one JSON document:\n${stdout}`)
  }
  if (status.mode !== 'running' || typeof status.pendingTasks !== 'number') {
    throw new Error(`maintenance:status --json says ${JSON.stringify(status)}: expected the mode running`)
  }
}

/**
 * The pipeweave commands timed against the running server: [key, title, args, check].
 * @type {Array<[key: string, title: string, args: string[], check: (stdout: string) => void]>}
 */
const PIPEWEAVE_COMMANDS = [
  ['dbStatus', 'pipeweave db:status --json', ['db:status', '--json'], checkStatus(true)],
  ['maintenanceStatus', 'pipeweave maintenance:status --json', ['maintenance:status', '--json'], checkMaintenanceStatus],
]

async function runningServer(server, log) {
  const database = await lib.createDatabase(server, { migrated: true })
  try {
    const envs = variants({ DATABASE_URL: database.url })
    const commands = []
    for (const v of envs) {
      commands.push(
        { name: `node|${v.key}`, command: process.execPath, args: ['-e', '0'], env: v.env },
        { name: `psql|${v.key}`, command: PSQL, args: ['-X', '-q', '-c', 'select 1', database.url], env: v.env },
        ...PIPEWEAVE_COMMANDS.map(([key, , args, check]) => ({ name: `${key}|${v.key}`, command: process.execPath, args: [lib.CLI, ...args], env: v.env, check })),
      )
    }
    if (!fs.existsSync(PSQL)) throw new Error(`${PSQL} not found (set BENCH_PSQL)`)
    log(`cold start: ${commands.length} commands × ${RUNS} runs, interleaved`)
    const samples = lib.timeInterleaved(commands, {
      runs: RUNS,
      onRound: (round) => { if (round % 5 === 0) log(`  round ${round}/${RUNS}`) },
    })
    return { envs, samples }
  } finally {
    await database.drop()
  }
}

/** db:status on the embedded database whose server is stopped: each run starts it and stops it. */
async function stoppedEmbedded(log) {
  const home = lib.tempHome('pipeweave-bench-cold-')
  const pidFile = path.join(home, 'pgdata', 'postmaster.pid')
  const envs = variants({ PIPEWEAVE_HOME: home })
  try {
    log('cold start, embedded: initialising a data directory (db:init)')
    lib.timeProcess(process.execPath, [lib.CLI, 'db:init'], { env: envs[0].env, cwd: home, timeoutMs: 120_000 })
    const samples = { asIs: [], noCa: [] }
    for (let round = 0; round < EMBEDDED_RUNS; round++) {
      for (const v of envs) {
        if (fs.existsSync(pidFile)) throw new Error(`the embedded server in ${home} is still running before a cold run`)
        samples[v.key].push(lib.timeProcess(process.execPath, [lib.CLI, 'db:status', '--json'], {
          env: v.env, cwd: home, timeoutMs: 120_000, check: checkStatus(true),
        }))
      }
    }
    return { envs, samples }
  } finally {
    if (fs.existsSync(pidFile)) {
      // A failed run left the server up: stop it.
      const handle = await lib.requireDist('db/embedded').acquireEmbeddedServer({ env: { PIPEWEAVE_HOME: home }, cwd: home, applicationName: 'pipeweave-bench' })
      await handle.release({ stop: 'always' })
    }
    fs.rmSync(home, { recursive: true, force: true })
  }
}

function report(running, embedded) {
  const lines = [lib.heading('Cold start: pipeweave db:status --json and maintenance:status --json (whole process, wall ms)')]
  const rows = []
  for (const v of running.envs) {
    const node = lib.median(running.samples[`node|${v.key}`])
    for (const [name, title] of [['node', 'node -e 0'], ['psql', "psql -X -q -c 'select 1'"], ...PIPEWEAVE_COMMANDS]) {
      const s = lib.summary(running.samples[`${name}|${v.key}`])
      rows.push([v.label, title, lib.fmt(s.median, 1), lib.fmt(s.min, 1), lib.fmt(s.p90, 1), `${lib.fmt(s.median / node, 2)}×`])
    }
  }
  lines.push(`running server, migrated database (DATABASE_URL); ${RUNS} runs of each, interleaved; pipeweave is \`node bin/run.js\``)
  lines.push(lib.table([
    { title: 'environment', align: 'left' }, { title: 'command', align: 'left' },
    { title: 'median', align: 'right' }, { title: 'min', align: 'right' }, { title: 'p90', align: 'right' },
    { title: 'vs node -e 0', align: 'right' },
  ], rows))
  lines.push('')
  for (const [key, title] of PIPEWEAVE_COMMANDS) {
    for (const v of running.envs) {
      const ratio = lib.median(running.samples[`${key}|${v.key}`]) / lib.median(running.samples[`node|${v.key}`])
      lines.push(`target ${title.replace('pipeweave ', '')} ≤ ${TARGET_RATIO}× node -e 0, ${v.label}: ${lib.fmt(ratio, 2)}× — ${ratio <= TARGET_RATIO ? 'met' : 'NOT met'}`)
    }
  }

  lines.push('')
  lines.push(`embedded database, server stopped (data directory initialised and migrated); ${EMBEDDED_RUNS} runs of each`)
  lines.push('each run starts the server, queries, and stops it again as the last pipeweave process')
  lines.push(lib.table([
    { title: 'environment', align: 'left' }, { title: 'command', align: 'left' },
    { title: 'median', align: 'right' }, { title: 'min', align: 'right' }, { title: 'max', align: 'right' },
  ], embedded.envs.map((v) => {
    const s = lib.summary(embedded.samples[v.key])
    return [v.label, 'pipeweave db:status --json', lib.fmt(s.median, 1), lib.fmt(s.min, 1), lib.fmt(s.max, 1)]
  })))
  return lines.join('\n')
}

async function run(server, options = {}) {
  const log = options.log ?? ((m) => process.stderr.write(`${m}\n`))
  const running = await runningServer(server, log)
  const embedded = await stoppedEmbedded(log)
  const text = report(running, embedded)
  process.stdout.write(`${text}\n`)
  return { running, embedded }
}

module.exports = { name: 'cold start', run }

if (require.main === module) lib.runAlone((server) => run(server))
