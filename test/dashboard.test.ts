/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
/**
 * The dashboard in a real browser (SPEC §8, issue 13 acceptance 1–3): Debian's chromium driven by
 * playwright-core, a real `pipeweave dashboard` and a real `pipeweave run` on real PostgreSQL.
 *
 *   1. While `run` drains 2,000 runs, the overview shows at two instants the queue depth per task
 *      that the database holds at those instants (the drain is held still at each: the stub worker
 *      holds every request, so nothing is claimed), the throughput chart fills, and the page logs
 *      no console error.
 *   2. maintenance:request typed in a terminal shows on the first refresh after it; request and
 *      exit from the dashboard (with the token) are recorded with the actor `dashboard`; without
 *      the token there are no buttons and the POST answers 403.
 *   3. A run's page shows every attempt with its error and its follow-ups; a DLQ retry from the
 *      page creates a fresh run, and is refused (the message shown) when the mode is not running.
 */
import type { Browser, Page } from 'playwright-core'
import { ALL_RUNS, createTestDatabase, type TestDatabase } from './helpers/db'
import { consoleErrors, describeWithBrowser, launchBrowser } from './helpers/browser'
import { runCli } from './helpers/cli'
import { type DashboardProcess, startDashboard } from './helpers/dashboard'
import { enqueueMany, enqueueOne, finished, registerTasks, startRun } from './helpers/orchestrator'
import { type StubWorker, fail, hold, ok, startWorker } from './helpers/worker'
import { waitFor } from './helpers/wait'

const TOKEN = 'dashboard-test-token-6d1f0c'
const REFRESH_MS = 1000
const CONCURRENCY = 4

let db: TestDatabase
let worker: StubWorker
let dashboard: DashboardProcess
let browser: Browser
/** While true, the stub worker holds every request it gets: the drain stands still. */
let frozen = false

describeWithBrowser(__filename)('the dashboard in a real browser', () => {
  beforeAll(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    worker.otherwise((r) => (frozen ? hold() : ok({ n: (r.body.input as { n?: number } | null)?.n ?? null })))
    worker.behave('flaky', (r) => (r.attempt < 3
      ? fail(503, { error: `<script>alert("pwned")</script> attempt ${r.attempt} failed`, code: 'FLAKY', retryable: true })
      : ok({ done: true }, ['child'])))
    worker.behave('doomed', () => fail(400, { error: 'bad input: <img src=x onerror=alert(1)>', code: 'BAD_INPUT' }))
    await registerTasks(db.url, worker.url, [
      { id: 'alpha' }, { id: 'beta' },
      { id: 'flaky', retries: 3, retryBackoff: 'fixed', retryDelayMs: 0, allowedNext: ['child'] },
      { id: 'child' }, { id: 'doomed', retries: 0 },
    ])
    dashboard = await startDashboard({ ...db.env, PIPEWEAVE_DASHBOARD_TOKEN: TOKEN }, ['--refresh-interval', String(REFRESH_MS)])
    browser = await launchBrowser()
  })

  afterAll(async () => {
    await browser?.close()
    await dashboard?.stop()
    await worker?.close()
    await db?.drop()
  })

  /** Due pending runs per task, as the database holds them now. */
  async function dueByTask(): Promise<Record<string, number>> {
    const { rows } = await db.pool.query<{ task_id: string; n: number }>(
      `SELECT task_id, count(*)::int AS n FROM task_runs WHERE status = 'pending' AND due_at <= now() GROUP BY task_id`)
    return Object.fromEntries(rows.map((r) => [r.task_id, r.n]))
  }

  async function completedCount(): Promise<number> {
    const { rows: [row] } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM task_run_history WHERE status = 'completed'`)
    return row.n
  }

  /** What the overview shows: the snapshot's time, the due runs per task, the chart's total, the mode. */
  function readOverview(page: Page) {
    return page.evaluate(() => {
      const main = document.getElementById('main')!
      const due: Record<string, number> = {}
      for (const row of document.querySelectorAll<HTMLElement>('table.queue tr[data-task]')) {
        due[row.dataset.task!] = Number(row.querySelector('[data-field="due"]')!.textContent!.replace(/,/g, ''))
      }
      const chart = document.querySelector<SVGElement>('svg.chart')
      const mode = document.getElementById('mode')
      return {
        takenAt: main.dataset.takenAt ? Date.parse(main.dataset.takenAt) : 0,
        due,
        chartCompleted: chart ? Number(chart.dataset.totalCompleted) : -1,
        bars: document.querySelectorAll('svg.chart g.bar rect.completed').length,
        mode: mode?.dataset.mode,
        reason: document.getElementById('mode-reason')?.textContent ?? null,
      }
    })
  }

  /** The overview once its page has refreshed itself with a snapshot taken after `since` (ms). */
  async function overviewAfter(page: Page, since: number) {
    return waitFor(async () => {
      const view = await readOverview(page)
      return view.takenAt > since ? view : undefined
    }, { timeoutMs: 20 * REFRESH_MS, what: 'the overview to refresh itself' })
  }

  /** Hold the drain still: every dispatch slot holds a request, every other result is written. */
  async function freeze(): Promise<number> {
    frozen = true
    await waitFor(async () => {
      if (worker.held().length !== CONCURRENCY) return false
      const { rows: [row] } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM task_runs WHERE status = 'running'`)
      return row.n === CONCURRENCY
    }, { timeoutMs: 60_000, what: 'the drain to stand still' })
    return Date.now()
  }

  /** Click a form's button and wait for the page its POST leads to (a 303 back to where it was). */
  async function submit(page: Page, selector: string): Promise<void> {
    await Promise.all([page.waitForNavigation(), page.click(selector)])
  }

  function thaw(): void {
    frozen = false
    worker.releaseAll(ok({ n: null }))
  }

  it('acceptance 1: at two instants of a drain of 2,000 runs the overview shows the queue the database holds, the chart fills, no console error', async () => {
    await enqueueMany(db.pool, 'alpha', 1200)
    await enqueueMany(db.pool, 'beta', 800)
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
    const errors = consoleErrors(page)
    await page.goto(`${dashboard.url}/`)
    const run = startRun({ ...db.env, POLL_INTERVAL_MS: '200' }, ['--log-format', 'json', '--concurrency', String(CONCURRENCY)])
    try {
      const instants: Array<{ db: Record<string, number>; page: Record<string, number>; completed: number; chart: number; bars: number }> = []
      for (const mark of [400, 1300]) {
        await waitFor(async () => (await completedCount()) >= mark, { timeoutMs: 90_000, what: `${mark} runs completed` })
        const still = await freeze()
        const inDb = await dueByTask()
        const completed = await completedCount()
        const shown = await overviewAfter(page, still)
        instants.push({ db: { alpha: inDb.alpha ?? 0, beta: inDb.beta ?? 0 }, page: { alpha: shown.due.alpha, beta: shown.due.beta }, completed, chart: shown.chartCompleted, bars: shown.bars })
        thaw()
      }
      for (const instant of instants) {
        expect(instant.page).toEqual(instant.db)
        expect(instant.chart).toBe(instant.completed) // counted in the statement that completes the runs
        expect(instant.bars).toBeGreaterThan(0)
      }
      // The two instants are two points of the drain, and the chart filled between them.
      expect(instants[1].db.alpha + instants[1].db.beta).toBeLessThan(instants[0].db.alpha + instants[0].db.beta)
      expect(instants[1].chart).toBeGreaterThan(instants[0].chart)

      await waitFor(async () => (await completedCount()) === 2000, { timeoutMs: 120_000, what: 'the drain to finish' })
      const end = await overviewAfter(page, Date.now())
      expect({ due: end.due, chart: end.chartCompleted }).toEqual({ due: { alpha: 0, beta: 0, child: 0, doomed: 0, flaky: 0 }, chart: 2000 })
    } finally {
      thaw()
      expect((await run.stop()).code).toBe(0)
    }
    expect(errors).toEqual([])
    await page.close()
  })

  it('acceptance 2: maintenance:request typed in a terminal shows on the next refresh; request and exit from the dashboard record the actor dashboard', async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
    const errors = consoleErrors(page)
    await page.goto(`${dashboard.url}/`)
    expect((await readOverview(page)).mode).toBe('running')
    const typed = await runCli(['maintenance:request', '--reason', 'deploy 7 from a terminal'], { env: db.env })
    expect(typed.code).toBe(0)
    const after = Date.now()
    // The first refresh whose snapshot was taken after the command shows it.
    const shown = await overviewAfter(page, after)
    expect({ mode: shown.mode, reason: shown.reason }).toEqual({ mode: 'maintenance', reason: 'deploy 7 from a terminal' })

    // Signed out: no buttons.
    expect(await page.locator('form.request-maintenance, form.exit-maintenance').count()).toBe(0)
    // Sign in with the token (a form POST), then act.
    await page.goto(`${dashboard.url}/login`)
    await page.fill('input[name="token"]', TOKEN)
    await submit(page, 'form.login button')
    expect(await page.getAttribute('#access', 'data-access')).toBe('session')

    await submit(page, 'form.exit-maintenance button')
    expect(await page.locator('#flash.ok').count()).toBe(1)
    expect(await page.textContent('#flash')).toContain('Back to running')
    expect((await readOverview(page)).mode).toBe('running')

    await page.fill('form.request-maintenance input[name="reason"]', 'from the dashboard')
    await submit(page, 'form.request-maintenance button')
    expect(await page.locator('#flash.ok').count()).toBe(1)
    expect((await readOverview(page)).mode).toBe('maintenance')
    await submit(page, 'form.exit-maintenance button')
    expect(await page.locator('#flash.ok').count()).toBe(1)

    const { rows } = await db.pool.query<{ from_mode: string; to_mode: string; actor: string; reason: string | null }>(
      'SELECT from_mode, to_mode, actor, reason FROM maintenance_events ORDER BY id')
    expect(rows.slice(-4)).toEqual([
      { from_mode: 'maintenance', to_mode: 'running', actor: 'dashboard', reason: null },
      { from_mode: 'running', to_mode: 'waiting_for_maintenance', actor: 'dashboard', reason: 'from the dashboard' },
      { from_mode: 'waiting_for_maintenance', to_mode: 'maintenance', actor: 'dashboard', reason: 'from the dashboard' },
      { from_mode: 'maintenance', to_mode: 'running', actor: 'dashboard', reason: null },
    ])
    expect(errors).toEqual([])
    await page.close()
  })

  it('pause and resume a task from the dashboard (SPEC §7, §8): recorded with the actor dashboard, shown on the overview', async () => {
    const page = await browser.newPage({ viewport: { width: 390, height: 900 } })
    const errors = consoleErrors(page)
    await page.goto(`${dashboard.url}/login`)
    await page.fill('input[name="token"]', TOKEN)
    await submit(page, 'form.login button')
    await submit(page, 'tr[data-task="beta"] form.pause-task button')
    expect(await page.textContent('#flash.ok')).toMatch(/task beta paused/i)
    expect(await page.locator('tr[data-task="beta"] .badge', { hasText: 'paused' }).count()).toBe(1)
    expect(await page.textContent('#paused-tasks')).toContain('beta')
    await submit(page, 'tr[data-task="beta"] form.resume-task button')
    expect(await page.textContent('#flash.ok')).toMatch(/task beta resumed/i)
    expect(await page.locator('tr[data-task="beta"] form.pause-task').count()).toBe(1)
    const { rows } = await db.pool.query<{ action: string; actor: string }>(
      `SELECT action, actor FROM control_events WHERE target = 'task:beta' ORDER BY id`)
    expect(rows.slice(-2)).toEqual([{ action: 'paused', actor: 'dashboard' }, { action: 'resumed', actor: 'dashboard' }])
    const { rows: [beta] } = await db.pool.query<{ paused_at: Date | null }>(`SELECT paused_at FROM tasks WHERE id = 'beta'`)
    expect(beta.paused_at).toBeNull()
    expect(errors).toEqual([])
    await page.close()
  })

  it('the overview lists schedules with their next tick, as schedules:list computes it', async () => {
    const set = await runCli(['schedules:set', 'nightly-beta', '--cron', '30 2 * * *', '--timezone', 'Europe/Berlin', '--task', 'beta'], { env: db.env })
    expect(set.code).toBe(0)
    const listed = await runCli(['schedules:list', '--json'], { env: db.env })
    const [schedule] = (JSON.parse(listed.stdout) as { schedules: Array<{ name: string; nextTick: string }> }).schedules.filter((x) => x.name === 'nightly-beta')
    expect(schedule.nextTick).toMatch(/T0[01]:30:00/) // 02:30 in Berlin is 00:30 or 01:30 UTC
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
    try {
      await page.goto(`${dashboard.url}/`)
      const row = page.locator('#schedules tr', { hasText: 'nightly-beta' })
      await waitFor(async () => (await row.count()) === 1, { timeoutMs: 20 * REFRESH_MS, what: 'the schedule on the overview' })
      expect(await row.locator('td[data-label="Next tick"] time').getAttribute('datetime')).toBe(schedule.nextTick)
    } finally {
      await page.close()
      expect((await runCli(['schedules:remove', 'nightly-beta'], { env: db.env })).code).toBe(0)
    }
  })

  it('acceptance 2: without the token the dashboard is read-only, says so, has no buttons, and its POST endpoints answer 403', async () => {
    const readOnly = await startDashboard(db.env, ['--refresh-interval', String(REFRESH_MS)])
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
      const errors = consoleErrors(page)
      await page.goto(`${readOnly.url}/`)
      expect(await page.textContent('#access')).toContain('Read-only')
      expect(await page.locator('form.action').count()).toBe(0)
      await page.goto(`${readOnly.url}/dlq?all=1`)
      expect(await page.locator('form.action').count()).toBe(0)
      // Inputs and outputs are for a signed-in browser (or --show-payloads) only.
      const { rows: [some] } = await db.pool.query<{ id: string }>(`SELECT id FROM task_run_history WHERE input IS NOT NULL LIMIT 1`)
      for (const url of [readOnly.url, dashboard.url]) {
        await page.goto(`${url}/runs/${some.id}`)
        expect(await page.locator('.hidden-payload').count()).toBe(2)
        expect(await page.locator('#input, #output').count()).toBe(0)
        expect(await page.textContent('main')).not.toContain('"n":')
      }
      expect(errors).toEqual([])
      await page.close()
      for (const action of ['/actions/maintenance/request', '/actions/maintenance/exit', '/actions/dlq/retry', '/actions/runs/cancel', '/actions/tasks/pause', '/actions/tasks/resume', '/actions/services/resume', '/login']) {
        const response = await fetch(`${readOnly.url}${action}`, {
          method: 'POST', redirect: 'manual', body: 'reason=x&id=y&token=z',
          headers: { origin: readOnly.url, 'content-type': 'application/x-www-form-urlencoded' },
        })
        expect({ action, status: response.status }).toEqual({ action, status: 403 })
      }
      const { rows: [state] } = await db.pool.query<{ mode: string }>(`SELECT mode FROM orchestrator_state`)
      expect(state.mode).toBe('running')
    } finally {
      await readOnly.stop()
    }
  })

  it('acceptance 3: a run\'s page shows every attempt with its error and its follow-ups; a DLQ retry creates a fresh run, and is refused when the mode is not running', async () => {
    const flaky = (await enqueueOne(db.pool, 'flaky', { input: { order: 42 } })).runId
    const doomed = [(await enqueueOne(db.pool, 'doomed', { input: { n: 1 } })).runId, (await enqueueOne(db.pool, 'doomed', { input: { n: 2 } })).runId]
    const run = startRun({ ...db.env, POLL_INTERVAL_MS: '200' }, ['--log-format', 'json', '--until-idle'])
    expect((await run.done).code).toBe(0)
    expect((await finished(db.pool, flaky)).status).toBe('completed')
    const { rows: [child] } = await db.pool.query<{ id: string }>(`SELECT id FROM ${ALL_RUNS} AS r WHERE parent_run_id = $1`, [flaky])
    // The throughput counts the orchestrator wrote with these results: 2 attempts retried, 2 runs failed for good.
    const { rows: [tally] } = await db.pool.query<{ failed: number; retried: number }>(
      `SELECT sum(failed)::int AS failed, sum(retried)::int AS retried FROM throughput_minutes WHERE task_id IN ('flaky', 'doomed')`)
    expect(tally).toEqual({ failed: 2, retried: 2 })

    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
    const page = await context.newPage()
    const errors = consoleErrors(page)
    const dialogs: string[] = []
    page.on('dialog', (dialog) => { dialogs.push(dialog.message()); void dialog.dismiss() })
    await page.goto(`${dashboard.url}/login`)
    await page.fill('input[name="token"]', TOKEN)
    await submit(page, 'form.login button')

    await page.goto(`${dashboard.url}/runs/${flaky}`)
    const attempts = await page.$$eval('table.attempts tr.attempt', (rows) => rows.map((r) => ({
      attempt: Number((r as HTMLElement).dataset.attempt),
      outcome: r.querySelector('td[data-label="Outcome"]')!.textContent!.trim(),
      code: r.querySelector('td[data-label="Code"]')!.textContent!.trim(),
      error: r.querySelector('td[data-label="Error"]')!.textContent!.trim(),
    })))
    expect(attempts).toEqual([
      { attempt: 1, outcome: 'failed', code: 'FLAKY', error: '<script>alert("pwned")</script> attempt 1 failed' },
      { attempt: 2, outcome: 'failed', code: 'FLAKY', error: '<script>alert("pwned")</script> attempt 2 failed' },
      { attempt: 3, outcome: 'completed', code: '', error: '' },
    ])
    // The worker's <script> is text: no script element but the dashboard's own, no dialog.
    expect(await page.$$eval('script', (s) => s.map((e) => e.getAttribute('src')))).toEqual(['/assets/app.js'])
    expect(await page.textContent('#output')).toContain('"done": true')
    expect(await page.textContent('#input')).toContain('"order": 42')
    expect(await page.$$eval('#follow-ups tr[data-run]', (rows) => rows.map((r) => (r as HTMLElement).dataset.run))).toEqual([child.id])
    await page.click(`#follow-ups a[href="/runs/${child.id}"]`)
    expect(await page.getAttribute('#parent', 'href')).toBe(`/runs/${flaky}`)

    // The DLQ: retry one entry from the page.
    const { rows: entries } = await db.pool.query<{ id: string; task_run_id: string }>('SELECT id, task_run_id FROM dlq ORDER BY id')
    expect(entries.map((e) => e.task_run_id)).toEqual(doomed)
    await page.goto(`${dashboard.url}/dlq`)
    expect(await page.textContent(`tr[data-entry="${entries[0].id}"] td.error`)).toContain('<img src=x onerror=alert(1)>')
    await submit(page, `tr[data-entry="${entries[0].id}"] form.retry-dlq button`)
    expect(await page.locator('#flash.ok').count()).toBe(1)
    const { rows: [retried] } = await db.pool.query<{ retry_run_id: string | null }>('SELECT retry_run_id FROM dlq WHERE id = $1', [entries[0].id])
    expect(retried.retry_run_id).not.toBeNull()
    expect(await page.textContent('#flash')).toContain(`retried as run ${retried.retry_run_id}`)
    const { rows: [fresh] } = await db.pool.query<{ status: string; input: unknown; task_id: string }>(
      `SELECT status, input, task_id FROM ${ALL_RUNS} AS r WHERE id = $1`, [retried.retry_run_id])
    expect(fresh).toMatchObject({ task_id: 'doomed', input: { n: 1 } })

    // Not running: refused, and the refusal shown.
    expect((await runCli(['maintenance:request', '--reason', 'refuse retries'], { env: db.env })).code).toBe(0)
    await page.goto(`${dashboard.url}/dlq`)
    await submit(page, `tr[data-entry="${entries[1].id}"] form.retry-dlq button`)
    expect(await page.locator('#flash.error').count()).toBe(1)
    expect(await page.textContent('#flash')).toMatch(/Refused: .*maintenance/)
    const { rows: [refused] } = await db.pool.query<{ retried_at: Date | null }>('SELECT retried_at FROM dlq WHERE id = $1', [entries[1].id])
    expect(refused.retried_at).toBeNull()
    expect((await runCli(['maintenance:exit'], { env: db.env })).code).toBe(0)

    expect(dialogs).toEqual([])
    expect(errors).toEqual([])
    await context.close()
  })

  it('fits 390 px and 1280 px without horizontal scrolling, on every page', async () => {
    const { rows: [some] } = await db.pool.query<{ id: string }>(`SELECT task_run_id AS id FROM dlq ORDER BY id LIMIT 1`)
    for (const width of [390, 1280]) {
      const page = await browser.newPage({ viewport: { width, height: 800 } })
      const errors = consoleErrors(page)
      for (const path of ['/', '/runs', '/runs?status=failed', `/runs/${some.id}`, '/dlq?all=1', '/login']) {
        await page.goto(`${dashboard.url}${path}`)
        const { scroll, inner } = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: window.innerWidth }))
        expect({ width, path, fits: scroll <= inner }).toEqual({ width, path, fits: true })
      }
      expect(errors).toEqual([])
      await page.close()
    }
  })
})
