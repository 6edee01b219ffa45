'use strict'
/**
 * The dashboard (issue 13): a page of 100 runs with 1,000,000 runs in the database, through the
 * real server (dist/dashboard: the HTTP request, the keyset statement on the dashboard's own pool
 * of 2, the HTML), walking BENCH_DASHBOARD_PAGES pages of each filter by the page's own "Older"
 * link (each page a new cursor: no shared read answers it). Target: p50 ≤ 100 ms. Also the
 * overview's one statement (what every refresh interval costs the database, whatever the viewers).
 *
 *   node bench/dashboard.js
 * Environment (defaults in brackets):
 *   BENCH_DASHBOARD_RUNS [1000000]   finished runs (10 tasks; 2% failed, all of task-7; 0.5% timeout)
 *   BENCH_DASHBOARD_LIVE [20000]     pending runs
 *   BENCH_DASHBOARD_PAGES [50]       pages walked per filter
 */
const http = require('node:http')
const lib = require('./lib')

const RUNS = Number(process.env.BENCH_DASHBOARD_RUNS || 1_000_000)
const LIVE = Number(process.env.BENCH_DASHBOARD_LIVE || 20_000)
const PAGES = Number(process.env.BENCH_DASHBOARD_PAGES || 50)
const TARGET_P50_MS = 100

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    }).on('error', reject)
  })
}

/** @param {any} server @param {{ log?: (message: string) => void }} [options] */
async function run(server, { log = (_message) => undefined } = {}) {
  const db = await lib.createDatabase(server, { migrated: true })
  const client = await lib.connect(db.url)
  let dashboardDb
  let httpServer
  try {
    log(`dashboard: seeding ${lib.fmt(RUNS)} finished and ${lib.fmt(LIVE)} pending runs`)
    await client.query(`INSERT INTO services (id, version, base_url) VALUES ('bench', '1', 'http://127.0.0.1:9')`)
    await client.query(`INSERT INTO tasks (id, service_id) SELECT 'task-' || i, 'bench' FROM generate_series(0, 9) AS i`)
    await client.query(`INSERT INTO task_run_history (id, task_id, status, error, input, output, created_at, started_at, completed_at)
      SELECT pipeweave_new_id(), 'task-' || (i % 10),
             CASE WHEN i % 50 = 7 THEN 'failed' WHEN i % 200 = 3 THEN 'timeout' ELSE 'completed' END,
             CASE WHEN i % 50 = 7 THEN 'worker said no' WHEN i % 200 = 3 THEN 'timed out' END,
             jsonb_build_object('n', i), jsonb_build_object('ok', true), now(), now(), now()
        FROM generate_series(1, $1::int) AS i`, [RUNS])
    await client.query(`INSERT INTO task_runs (task_id, input) SELECT 'task-' || (i % 10), jsonb_build_object('n', i) FROM generate_series(1, $1::int) AS i`, [LIVE])
    await client.query('VACUUM ANALYZE task_run_history')
    await client.query('VACUUM ANALYZE task_runs')

    const { openDashboardDatabase } = lib.requireDist('dashboard/database')
    const { createDashboard, startDashboardServer } = lib.requireDist('dashboard/server')
    const { getOverview } = lib.requireDist('api/overview')
    dashboardDb = await openDashboardDatabase({ flags: { url: db.url }, env: {}, command: 'bench dashboard' })
    const logger = { debug() {}, info() {}, warn() {}, error() {} }
    const dashboard = createDashboard({ db: dashboardDb, logger, refreshMs: 3000 })
    httpServer = await startDashboardServer(dashboard, { port: 0, host: '127.0.0.1' })
    const base = `http://127.0.0.1:${httpServer.port}`

    const filters = [
      ['every run', '/runs'],
      ['--task task-3', '/runs?task=task-3'],
      ['--status completed', '/runs?status=completed'],
      ['--status failed', '/runs?status=failed'],
      ['--task task-7 --status failed', '/runs?status=failed&task=task-7'],
      ['--status pending', '/runs?status=pending'],
    ]
    const rows = []
    const targets = []
    for (const [name, first] of filters) {
      await get(`${base}${first}`) // warm: plans, buffers
      const times = []
      /** @type {string | undefined} */
      let path = first
      let walked = 0
      for (let page = 0; page < PAGES && path; page += 1) {
        const { ms, value } = await lib.timeAsync(() => get(`${base}${path}`))
        if (value.status !== 200) throw new Error(`${path} answered ${value.status}`)
        times.push(ms)
        walked += (value.body.match(/<tr data-run=/g) || []).length
        const older = /id="older" href="([^"]+)"/.exec(value.body)
        path = older ? older[1].replace(/&amp;/g, '&') : undefined
      }
      const s = lib.summary(times)
      rows.push([name, lib.fmt(times.length), lib.fmt(walked), lib.fmt(s.median, 1), lib.fmt(s.p90, 1), lib.fmt(Math.max(...times), 1)])
      targets.push(`${name}: p50 ${lib.fmt(s.median, 1)} ms — ${s.median <= TARGET_P50_MS ? 'met' : 'NOT met'}`)
      log(`dashboard: ${name}: ${times.length} pages, p50 ${lib.fmt(s.median, 1)} ms, ${lib.load()}`)
    }
    const overview = []
    for (let i = 0; i < 10; i += 1) overview.push((await lib.timeAsync(() => getOverview(dashboardDb))).ms)

    const lines = [lib.heading(`Dashboard: pages of 100 runs with ${lib.fmt(RUNS + LIVE)} runs in the database (${lib.fmt(RUNS)} finished, ${lib.fmt(LIVE)} pending)`)]
    lines.push(lib.table([
      { title: 'filter', align: 'left' }, { title: 'pages', align: 'right' }, { title: 'runs shown', align: 'right' },
      { title: 'p50 ms', align: 'right' }, { title: 'p90 ms', align: 'right' }, { title: 'max ms', align: 'right' },
    ], rows))
    lines.push('')
    lines.push(`target: a page of 100 runs in ≤ ${TARGET_P50_MS} ms p50 (HTTP request to HTML, keyset statement on the dashboard's pool):`)
    lines.push(...targets.map((t) => `  ${t}`))
    const o = lib.summary(overview)
    lines.push(`overview: one statement per refresh interval for every viewer: p50 ${lib.fmt(o.median, 1)} ms, max ${lib.fmt(Math.max(...overview), 1)} ms (${lib.fmt(LIVE)} pending runs counted)`)
    lines.push(`load: ${lib.load()}`)
    process.stdout.write(`\n${lines.join('\n')}\n`)
  } finally {
    if (httpServer) await httpServer.close()
    if (dashboardDb) await dashboardDb.close()
    await client.end()
    await db.drop()
  }
}

module.exports = { name: 'dashboard', run }

if (require.main === module) lib.runAlone((server) => run(server))
