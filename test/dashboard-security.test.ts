/// <reference lib="dom" />
/**
 * The dashboard's security and cost (SPEC §8, issue 13 acceptance 5), in a real browser against a
 * real `pipeweave dashboard` and `pipeweave run --dashboard`:
 *   - the token (and the database password) never appears in a page, a log line or a URL;
 *   - the token becomes an HttpOnly, SameSite=Strict session cookie;
 *   - a cross-site POST is refused (another origin's form, with the session cookie sent along);
 *   - a worker error holding <script> is shown as text;
 *   - every response carries Content-Security-Policy: default-src 'self';
 *   - under `run --dashboard` the pages answer on loopback only unless --dashboard-host;
 *   - one snapshot per refresh for all viewers: ten open browsers cost the database what one costs
 *     (statements counted by a proxy in front of PostgreSQL), on a pool of 2 connections.
 */
import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Browser, Page, Response } from 'playwright-core'
import { openDashboardDatabase } from '../src/dashboard/database'
import { consoleErrors, describeWithBrowser, launchBrowser } from './helpers/browser'
import { createTestDatabase, type TestDatabase, TEST_SCHEMA } from './helpers/db'
import { type DashboardProcess, jsonLines, startDashboard } from './helpers/dashboard'
import { startCountingProxy } from './helpers/pg-proxy'
import { startRun } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'

const TOKEN = 'secret-token-9f2a71c4e0'
const CSP = "default-src 'self'"
const REFRESH_MS = 1000

let db: TestDatabase
let browser: Browser
/** A run whose recorded error is a worker's <script>. */
const SCRIPT_RUN = '0190000000000000beef'

describeWithBrowser(__filename)('dashboard security', () => {
  beforeAll(async () => {
    db = await createTestDatabase({ migrated: true })
    await db.pool.query(`INSERT INTO services (id, version, base_url) VALUES ('svc', '1', 'http://127.0.0.1:9')`)
    await db.pool.query(`INSERT INTO tasks (id, service_id) VALUES ('evil-task', 'svc')`)
    await db.pool.query(`INSERT INTO task_run_history (id, task_id, status, attempt, error, error_code, output, previous_attempts, completed_at)
      VALUES ($1, 'evil-task', 'failed', 2, '<script>window.__pwned = 1; alert("pwned")</script>', 'E<b>1</b>', '{"html": "</pre><script>alert(2)</script>"}',
              '[{"attempt": 1, "error": "<img src=x onerror=alert(3)>", "errorCode": "X", "at": "2026-01-01T00:00:00Z"}]', now())`, [SCRIPT_RUN])
    await db.pool.query(`INSERT INTO dlq (task_run_id, task_id, error, attempts) VALUES ($1, 'evil-task', '<script>alert(4)</script>', 2)`, [SCRIPT_RUN])
    browser = await launchBrowser()
  })

  afterAll(async () => {
    await browser?.close()
    await db?.drop()
  })

  /** Sign in through the form; the page is then on the overview. */
  async function signIn(page: Page, url: string, token = TOKEN): Promise<void> {
    await page.goto(`${url}/login`)
    await page.fill('input[name="token"]', token)
    await Promise.all([page.waitForNavigation(), page.click('form.login button')])
  }

  it('the token never appears in a page, a log line or a URL; it becomes an HttpOnly, SameSite=Strict cookie; every response carries the CSP', async () => {
    const dashboard = await startDashboard({ ...db.env, PIPEWEAVE_DASHBOARD_TOKEN: TOKEN }, ['--refresh-interval', String(REFRESH_MS)])
    try {
      const context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
      const page = await context.newPage()
      const errors = consoleErrors(page)
      const urls: string[] = []
      const responses: Response[] = []
      page.on('request', (r) => urls.push(r.url()))
      page.on('response', (r) => responses.push(r))

      // A wrong guess first: refused, and not logged either.
      await page.goto(`${dashboard.url}/login`)
      await page.fill('input[name="token"]', 'wrong-guess-5c1e')
      await Promise.all([page.waitForNavigation(), page.click('form.login button')])
      expect(await page.textContent('.flash.error')).toContain('not the token')
      expect(errors.splice(0)).toEqual(['Failed to load resource: the server responded with a status of 403 (Forbidden)'])
      await signIn(page, dashboard.url)
      expect(await page.getAttribute('#access', 'data-access')).toBe('session')
      for (const path of ['/', '/runs', `/runs/${SCRIPT_RUN}`, '/dlq?all=1', '/runs?status=failed&task=evil-task']) {
        await page.goto(`${dashboard.url}${path}`)
      }
      // Let a refresh or two happen (fetches of the page itself).
      await page.waitForResponse((r) => r.request().headers()['x-pipeweave-refresh'] === '1', { timeout: 10 * REFRESH_MS })

      const bodies: string[] = []
      for (const r of responses) bodies.push(await r.text().catch(() => ''))
      const cookies = await context.cookies()
      expect(cookies).toHaveLength(1)
      const [cookie] = cookies
      expect(cookie).toMatchObject({ name: `pipeweave_session_${dashboard.port}`, httpOnly: true, sameSite: 'Strict', path: '/' })
      expect(cookie.value).not.toContain(TOKEN)
      expect(await page.evaluate(() => document.cookie)).toBe('') // HttpOnly: no script sees it

      const password = decodeURIComponent(new URL(db.url).password)
      const secrets = [TOKEN, 'wrong-guess-5c1e', cookie.value, ...(password ? [password] : [])]
      for (const secret of secrets) {
        expect({ secret, inUrl: urls.some((u) => u.includes(secret)) }).toEqual({ secret, inUrl: false })
        expect({ secret, inPage: bodies.some((b) => b.includes(secret)) }).toEqual({ secret, inPage: false })
      }
      // Every response of the dashboard carries the policy: pages, assets, the icon, refreshes, redirects.
      const own = responses.filter((r) => r.url().startsWith(dashboard.url))
      expect(own.length).toBeGreaterThan(10)
      for (const r of own) expect({ url: r.url(), status: r.status(), csp: r.headers()['content-security-policy'] }).toEqual({ url: r.url(), status: r.status(), csp: CSP })
      const paths = own.map((r) => new URL(r.url()).pathname)
      expect(paths).toEqual(expect.arrayContaining(['/assets/app.js', '/assets/app.css', '/login', '/']))
      // And those a browser does not ask for: refusals, errors, other methods.
      for (const [method, path, headers] of [
        ['GET', '/no-such-page', {}], ['POST', '/actions/maintenance/request', {}], ['PUT', '/', {}], ['GET', '/assets/nope.js', {}],
        ['GET', '/runs?status=bogus', {}], ['GET', '/favicon.ico', {}], ['POST', '/login', { origin: dashboard.url, 'content-type': 'application/x-www-form-urlencoded' }],
      ] as Array<[string, string, Record<string, string>]>) {
        const response = await fetch(`${dashboard.url}${path}`, { method, headers, redirect: 'manual', ...(method === 'POST' ? { body: 'token=nope' } : {}) })
        expect({ method, path, csp: response.headers.get('content-security-policy') }).toEqual({ method, path, csp: CSP })
      }
      expect(errors).toEqual([])
      await context.close()
    } finally {
      await dashboard.stop()
    }
    // Its log says what happened, never the secrets.
    const log = dashboard.stderr() + dashboard.stdout()
    expect(jsonLines(dashboard.stderr()).map((l) => l.event)).toEqual(expect.arrayContaining(['dashboard-login-refused', 'dashboard-login']))
    for (const secret of [TOKEN, 'wrong-guess-5c1e']) expect({ secret, logged: log.includes(secret) }).toEqual({ secret, logged: false })
  })

  it('cross-site POSTs are refused, even with the session cookie; a POST from the dashboard\'s own page is not', async () => {
    const dashboard = await startDashboard({ ...db.env, PIPEWEAVE_DASHBOARD_TOKEN: TOKEN }, ['--refresh-interval', String(REFRESH_MS)])
    // Another origin whose page posts a form to the dashboard as soon as it loads (the browser keeps
    // the SameSite=Strict cookie to itself; the Origin check refuses it whatever the cookie).
    const evil = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' })
      res.end(`<form method="post" action="${dashboard.url}/actions/maintenance/request"><input name="reason" value="evil"></form>
        <script>document.forms[0].submit()</script>`)
    })
    await new Promise<void>((resolve) => evil.listen(0, '127.0.0.1', resolve))
    try {
      const context = await browser.newContext()
      const page = await context.newPage()
      await signIn(page, dashboard.url)
      const [response] = await Promise.all([
        page.waitForResponse((r) => r.url() === `${dashboard.url}/actions/maintenance/request`),
        page.goto(`http://127.0.0.1:${(evil.address() as AddressInfo).port}/`),
      ])
      expect(response.status()).toBe(403)
      expect(response.request().headers().origin).toBe(`http://127.0.0.1:${(evil.address() as AddressInfo).port}`)
      const [session] = await context.cookies(dashboard.url)
      await context.close()

      // The same with the session cookie sent along (a script, not a browser): the wrong origin, and
      // no origin at all.
      const post = (headers: Record<string, string>) => fetch(`${dashboard.url}/actions/maintenance/request`, {
        method: 'POST', redirect: 'manual', body: 'reason=x',
        headers: { cookie: `${session.name}=${session.value}`, 'content-type': 'application/x-www-form-urlencoded', ...headers },
      })
      expect((await post({ origin: 'http://evil.example' })).status).toBe(403)
      expect((await post({ origin: 'null' })).status).toBe(403)
      expect((await post({})).status).toBe(403)
      expect((await post({ 'sec-fetch-site': 'cross-site' })).status).toBe(403)
      const { rows: [state] } = await db.pool.query<{ mode: string }>('SELECT mode FROM orchestrator_state')
      expect(state.mode).toBe('running')
      // The dashboard's own origin, with the session: accepted (the refusals above were the origin's).
      const own = await post({ origin: dashboard.url })
      expect({ status: own.status, location: own.headers.get('location') }).toEqual({ status: 303, location: '/' })
      const { rows: [after] } = await db.pool.query<{ mode: string }>('SELECT mode FROM orchestrator_state')
      expect(after.mode).toBe('maintenance')
      await db.pool.query(`UPDATE orchestrator_state SET mode = 'running' WHERE id = 'singleton'`)
    } finally {
      await new Promise((resolve) => evil.close(resolve))
      await dashboard.stop()
    }
  })

  it('a worker\'s <script> in an error, an error code or an output is shown as text, nowhere run', async () => {
    const dashboard = await startDashboard({ ...db.env, PIPEWEAVE_DASHBOARD_TOKEN: TOKEN }, ['--show-payloads'])
    try {
      const page = await browser.newPage()
      const errors = consoleErrors(page)
      const dialogs: string[] = []
      page.on('dialog', (d) => { dialogs.push(d.message()); void d.dismiss() })
      await page.goto(`${dashboard.url}/runs/${SCRIPT_RUN}`)
      const text = await page.textContent('main')
      for (const shown of ['<script>window.__pwned = 1; alert("pwned")</script>', '<img src=x onerror=alert(3)>', 'E<b>1</b>', '</pre><script>alert(2)</script>']) {
        expect({ shown, asText: text!.includes(shown) }).toEqual({ shown, asText: true })
      }
      await page.goto(`${dashboard.url}/dlq`)
      expect(await page.textContent('main')).toContain('<script>alert(4)</script>')
      await page.goto(`${dashboard.url}/runs?task=evil-task`)
      expect(await page.textContent('main')).toContain('<script>window.__pwned')
      expect(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned)).toBeUndefined()
      expect(await page.$$eval('script', (s) => s.map((e) => e.getAttribute('src')))).toEqual(['/assets/app.js'])
      expect(await page.$$('img')).toHaveLength(0)
      expect(dialogs).toEqual([])
      expect(errors).toEqual([])
      await page.close()
    } finally {
      await dashboard.stop()
    }
  })

  it('run --dashboard answers on loopback only, beside /healthz and /metrics on 0.0.0.0, unless --dashboard-host', async () => {
    const get = (address: string, port: number, path: string, host?: string) => new Promise<{ status: number; csp?: string }>((resolve, reject) => {
      const req = http.get({ host: address, port, path, headers: host ? { host } : {} }, (res) => {
        res.resume()
        res.on('end', () => resolve({ status: res.statusCode!, csp: res.headers['content-security-policy'] as string | undefined }))
      })
      req.on('error', reject)
    })
    for (const extra of [[], ['--dashboard-host', '127.0.0.2']]) {
      const run = startRun({ ...db.env, POLL_INTERVAL_MS: '200', PIPEWEAVE_DASHBOARD_TOKEN: TOKEN },
        ['--log-format', 'json', '--http-port', '0', '--http-host', '0.0.0.0', '--dashboard', ...extra])
      try {
        const line = await run.waitForLog((l) => l.event === 'http', { what: 'the http server' })
        const port = Number(line.port)
        await run.waitForLog((l) => l.event === 'dashboard', { what: 'the dashboard line' })
        const [mine, other] = extra.length === 0 ? ['127.0.0.1', '127.0.0.2'] : ['127.0.0.2', '127.0.0.1']
        expect(await get(mine, port, '/')).toEqual({ status: 200, csp: CSP })
        expect(await get(mine, port, '/assets/app.css')).toEqual({ status: 200, csp: CSP })
        expect(await get(other, port, '/')).toEqual({ status: 403, csp: CSP })
        expect(await get(other, port, '/runs')).toEqual({ status: 403, csp: CSP })
        // The probes answer on every address.
        expect((await get(other, port, '/metrics')).status).toBe(200)
        await waitFor(async () => (await get(other, port, '/healthz')).status === 200, { what: '/healthz' })
        // On loopback, only loopback host names (a rebound DNS name gets nothing).
        expect((await get(mine, port, '/', 'evil.example')).status).toBe(421)
        expect((await get(mine, port, '/', `localhost:${port}`)).status).toBe(200)
      } finally {
        expect((await run.stop()).code).toBe(0)
      }
      expect(run.stderr()).not.toContain(TOKEN)
    }
  })

  it('one snapshot per refresh for every viewer: ten open browsers cost the database what one costs, on a pool of 2 connections with a statement timeout', async () => {
    const target = new URL(db.url)
    const proxy = await startCountingProxy({ host: target.hostname, port: Number(target.port) })
    const dashboard = await startDashboard({ ...db.env, DATABASE_URL: proxy.urlFor(db.url) }, ['--refresh-interval', String(REFRESH_MS)])
    const context = await browser.newContext()
    try {
      /** Statements the dashboard sent while `viewers` pages were open for `windowMs`, and the overviews they were served. */
      const watch = async (viewers: number, windowMs: number) => {
        const pages = await Promise.all(Array.from({ length: viewers }, () => context.newPage()))
        const errors = pages.map((p) => consoleErrors(p))
        await Promise.all(pages.map((p) => p.goto(`${dashboard.url}/`)))
        let served = 0
        for (const p of pages) p.on('response', (r) => { if (new URL(r.url()).pathname === '/') served += 1 })
        const before = proxy.statements()
        const started = Date.now()
        await new Promise((resolve) => setTimeout(resolve, windowMs))
        const statements = proxy.statements() - before
        const elapsed = Date.now() - started
        await Promise.all(pages.map((p) => p.close()))
        expect(errors.flat()).toEqual([])
        return { statements, served, elapsed }
      }
      const one = await watch(1, 5 * REFRESH_MS)
      const ten = await watch(10, 5 * REFRESH_MS)
      // One read of the overview (one statement) per refresh interval at most, however many look.
      const most = (elapsed: number) => Math.ceil(elapsed / REFRESH_MS) + 1
      expect(one.statements).toBeLessThanOrEqual(most(one.elapsed))
      expect(ten.statements).toBeLessThanOrEqual(most(ten.elapsed))
      expect(ten.statements).toBeLessThanOrEqual(one.statements + 2)
      // ... while ten pages were each served several refreshes.
      expect(ten.served).toBeGreaterThanOrEqual(10 * 2)
      expect(ten.served).toBeGreaterThan(3 * ten.statements)
      // Its own pool: at most 2 connections, whatever the viewers.
      const { rows: [conns] } = await db.pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pipeweave/% dashboard'`)
      expect(conns.n).toBeGreaterThan(0)
      expect(conns.n).toBeLessThanOrEqual(2)
    } finally {
      await context.close()
      await dashboard.stop()
      await proxy.close()
    }
    // The same pool settings in process: 2 connections, a statement timeout.
    const own = await openDashboardDatabase({ env: {}, flags: { url: db.url }, schema: TEST_SCHEMA, command: 'test' })
    try {
      const { rows: [row] } = await own.query<{ statement_timeout: string }>('SHOW statement_timeout')
      expect(row.statement_timeout).toBe('5s')
    } finally {
      await own.close()
    }
  })
})
