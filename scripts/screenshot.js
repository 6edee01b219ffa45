'use strict'
/**
 * `npm run screenshot`: the README's picture of the dashboard (docs/dashboard.png), made, not drawn.
 * A fresh database (PIPEWEAVE_BENCH_DATABASE_URL's server, or an embedded one started here and
 * stopped at the end: bench/lib.js acquireServer) gets a plausible hour of work: two services,
 * their tasks, runs finished per minute, a queue, two orchestrators, a maintenance window in the
 * history, a paused task, an open breaker, a schedule and a few DLQ entries. The real dashboard
 * (dist/dashboard) serves it, Debian's chromium (playwright-core) takes the picture at 1280 px.
 *
 *   npm run screenshot            build, then write docs/dashboard.png
 *   node scripts/screenshot.js OUT.png
 */
const path = require('node:path')
const lib = require('../bench/lib')

const OUT = path.resolve(process.argv[2] || path.join(__dirname, '..', 'docs', 'dashboard.png'))

async function seed(client) {
  await client.query(`INSERT INTO services (id, version, base_url) VALUES
    ('billing', '2.4.1', 'http://billing.internal:8080'), ('reports', '1.9.0', 'http://reports.internal:8080')`)
  await client.query(`INSERT INTO tasks (id, service_id, concurrency) VALUES
    ('charge-card', 'billing', 20), ('send-invoice', 'billing', 0), ('render-report', 'reports', 4), ('email-report', 'reports', 0)`)
  // An hour of finished runs, and the per-minute counts the orchestrators wrote for them.
  await client.query(`INSERT INTO throughput_minutes (minute, task_id, orchestrator_id, completed, failed, retried)
    SELECT date_trunc('minute', now()) - m * interval '1 minute', t.id, o.id,
           (40 + 25 * sin(m / 6.0) + (m * 7 + length(t.id) * 3) % 17)::int,
           CASE WHEN (m + length(t.id)) % 11 = 0 THEN 2 ELSE 0 END,
           CASE WHEN (m + length(t.id)) % 7 = 0 THEN 3 ELSE 0 END
      FROM generate_series(0, 59) AS m
     CROSS JOIN (VALUES ('charge-card'), ('send-invoice'), ('render-report')) AS t(id)
     CROSS JOIN (VALUES ('orch-a'), ('orch-b')) AS o(id)`)
  await client.query(`INSERT INTO task_run_history (id, task_id, status, attempt, input, output, error, error_code, previous_attempts, created_at, started_at, completed_at)
    SELECT pipeweave_new_id(), (ARRAY['charge-card', 'send-invoice', 'render-report'])[1 + i % 3],
           CASE WHEN i % 97 = 0 THEN 'failed' ELSE 'completed' END, CASE WHEN i % 97 = 0 THEN 4 ELSE 1 END,
           jsonb_build_object('order', 10000 + i), jsonb_build_object('ok', true),
           CASE WHEN i % 97 = 0 THEN 'card declined: insufficient funds' END, CASE WHEN i % 97 = 0 THEN 'DECLINED' END,
           '[]', now() - interval '1 hour' + i * interval '1 second', now() - interval '1 hour' + i * interval '1 second',
           now() - interval '1 hour' + i * interval '1 second'
      FROM generate_series(1, 3000) AS i`)
  await client.query(`INSERT INTO dlq (task_run_id, task_id, error, error_code, attempts, failed_at)
    SELECT id, task_id, error, error_code, attempt, completed_at FROM task_run_history WHERE status = 'failed' ORDER BY id DESC LIMIT 4`)
  // The queue: due runs of a few tasks, some retries waiting out their backoff, some running.
  await client.query(`INSERT INTO task_runs (task_id, input, created_at)
    SELECT (ARRAY['charge-card', 'send-invoice', 'send-invoice', 'render-report'])[1 + i % 4], jsonb_build_object('order', i),
           now() - (i % 90) * interval '1 second' FROM generate_series(1, 640) AS i`)
  await client.query(`INSERT INTO task_runs (task_id, scheduled_for) SELECT 'charge-card', now() + interval '2 minutes' FROM generate_series(1, 12)`)
  await client.query(`INSERT INTO orchestrators (id, host, pid, version, concurrency, started_at, heartbeat_at) VALUES
    ('orch-a', 'worker-7f9c2', 1, '0.1.0', 20, now() - interval '3 hours', now() - interval '1.2 seconds'),
    ('orch-b', 'worker-b81d0', 1, '0.1.0', 20, now() - interval '52 minutes', now() - interval '3.4 seconds')`)
  await client.query(`INSERT INTO task_runs (task_id, status, started_at, heartbeat_at, orchestrator_id)
    SELECT (ARRAY['charge-card', 'send-invoice', 'render-report'])[1 + i % 3], 'running', now(), now(), (ARRAY['orch-a', 'orch-b'])[1 + i % 2]
      FROM generate_series(1, 23) AS i`)
  // A maintenance window earlier today, a paused task, a breaker, a schedule.
  await client.query(`INSERT INTO maintenance_events (from_mode, to_mode, at, actor, reason) VALUES
    ('running', 'waiting_for_maintenance', now() - interval '47 minutes', 'deploy@ci-runner 4121', 'migrate 005'),
    ('waiting_for_maintenance', 'maintenance', now() - interval '46 minutes', 'deploy@ci-runner 4121', 'migrate 005'),
    ('maintenance', 'running', now() - interval '41 minutes', 'dashboard', NULL)`)
  await client.query(`UPDATE tasks SET paused_at = now() - interval '12 minutes', paused_by = 'dashboard', pause_reason = 'vendor outage' WHERE id = 'email-report'`)
  await client.query(`UPDATE services SET breaker_open_until = now() + interval '40 seconds', breaker_opened_at = now() - interval '80 seconds', breaker_failures = 5 WHERE id = 'reports'`)
  await client.query(`INSERT INTO schedules (name, task_id, cron, timezone, last_tick) VALUES ('nightly-report', 'render-report', '0 2 * * *', 'Europe/Berlin', date_trunc('day', now()) + interval '1 hour')`)
  await client.query('ANALYZE')
}

async function main() {
  const server = await lib.acquireServer({ log: (m) => process.stderr.write(`${m}\n`) })
  const db = await lib.createDatabase(server, { migrated: true })
  const client = await lib.connect(db.url)
  let dashboardDb
  let http
  let browser
  try {
    await seed(client)
    const { openDashboardDatabase } = lib.requireDist('dashboard/database')
    const { createDashboard, startDashboardServer } = lib.requireDist('dashboard/server')
    dashboardDb = await openDashboardDatabase({ flags: { url: db.url }, env: {}, command: 'screenshot' })
    const logger = { debug() {}, info() {}, warn() {}, error() {} }
    http = await startDashboardServer(createDashboard({ db: dashboardDb, logger, token: 'screenshot' }), { port: 0, host: '127.0.0.1' })
    const { chromium } = require('playwright-core')
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] })
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 })
    await page.goto(`http://127.0.0.1:${http.port}/`)
    await page.screenshot({ path: OUT, fullPage: true })
    process.stdout.write(`wrote ${path.relative(process.cwd(), OUT)}\n`)
  } finally {
    if (browser) await browser.close()
    if (http) await http.close()
    if (dashboardDb) await dashboardDb.close()
    await client.end()
    await db.drop()
    await server.release()
  }
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`)
  process.exitCode = 1
})
