/**
 * The web dashboard (SPEC §8): `pipeweave dashboard`, and `run --http-port N --dashboard` beside
 * /healthz and /metrics. Server-rendered pages (pages.ts) and one small script that refreshes them
 * (assets/dashboard/app.js); no framework, no build step, nothing fetched from elsewhere.
 *
 * Cost: every read goes through SharedReads, one per key per refresh interval whatever the number
 * of viewers, on the dashboard's own pool (2 connections with a statement timeout: the caller's
 * Database). The overview is one statement.
 *
 * Security: actions only with PIPEWEAVE_DASHBOARD_TOKEN (sessions.ts); POSTs only from this
 * dashboard's own pages (Origin); on a loopback address, requests must name a loopback host (a DNS
 * rebinding page cannot read it); `Content-Security-Policy: default-src 'self'` on every response;
 * every value escaped (html.ts). The token, session ids and database passwords are never written
 * to a page, a log line or a URL.
 */
import * as fs from 'node:fs'
import * as http from 'node:http'
import * as path from 'node:path'
import { type DlqEntry, dlqEntriesOfRun, listDlq, retryDlq } from '../api/dlq'
import { type PauseTarget, pauseTasks, resumeTasks } from '../api/flow-control'
import { type Overview, getOverview } from '../api/overview'
import { type TaskRun, cancelRuns, getRun, listFollowUps, listRuns } from '../api/runs'
import type { Database } from '../db/database'
import { PipeweaveError, UsageError } from '../errors'
import type { Logger } from '../logger'
import { exitMaintenance, requestMaintenance } from '../maintenance/maintenance'
import { listen } from '../http/listen'
import { redact } from '../redact'
import { html } from './html'
import { type RunDetail, type View, STATUSES, dlqPage, layout, loginPage, messagePage, overviewPage, runPage, runsPage } from './pages'
import { type Session, Sessions, clearedCookie, sameOrigin, sessionCookie } from './sessions'
import { SharedReads } from './shared-reads'

/** SPEC §8: on every response, pages, assets and refusals alike. */
export const CONTENT_SECURITY_POLICY = "default-src 'self'"

export const DASHBOARD_DEFAULTS = {
  port: 8080,
  host: '127.0.0.1',
  /** How often pages refresh themselves, and how long one read is shared. */
  refreshMs: 3000,
  /** The dashboard's pool: what ten browsers cost the database is what one costs. */
  poolMax: 2,
  /** statement_timeout of the dashboard's connections (DB_STATEMENT_TIMEOUT_MS replaces it). */
  statementTimeoutMs: 5000,
} as const

const RUNS_PAGE_SIZE = 100
const DLQ_PAGE_SIZE = 50
const MAX_BODY = 16 * 1024

/** The package's assets: assets/dashboard at its root (dist/dashboard/ and src/dashboard/ alike). */
export const ASSETS_DIR = path.resolve(__dirname, '..', '..', 'assets', 'dashboard')
const ASSET_TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
}

export interface DashboardOptions {
  /** The dashboard's own database (a pool of 2 with a statement timeout). */
  db: Database
  /** PIPEWEAVE_DASHBOARD_TOKEN: without it, read-only. */
  token?: string
  /** Show inputs and outputs to every viewer (--show-payloads), not only to token sessions. */
  showPayloads?: boolean
  refreshMs?: number
  /** ORCHESTRATOR_STALE_MS: orchestrators whose heartbeat is older are shown stale. */
  staleMs?: number
  logger: Logger
}

export interface Dashboard {
  /** Answer one request (every path: unknown ones get a 404 page). */
  handle(req: http.IncomingMessage, res: http.ServerResponse): void
  readonly reads: SharedReads
  readonly refreshMs: number
}

type Reply = { status: number; body: string; type?: string; headers?: Record<string, string | string[]> }

export function createDashboard(options: DashboardOptions): Dashboard {
  const { db, logger } = options
  const refreshMs = options.refreshMs ?? DASHBOARD_DEFAULTS.refreshMs
  const reads = new SharedReads(refreshMs)
  const sessions = new Sessions(options.token)
  const assets = loadAssets()

  const overview = () => reads.get('overview', async (seq) => ({ seq, data: await getOverview(db, { staleMs: options.staleMs }) }))
  const taskIds = async () => {
    try {
      return (await overview()).data.tasks.map((t) => t.taskId)
    } catch {
      return []
    }
  }

  const viewOf = (req: http.IncomingMessage, session: Session | undefined, refresh: boolean): View => {
    const flash = session?.flash
    // A refresh leaves the message where the first view showed it (app.js keeps #flash).
    if (session && !refresh) session.flash = undefined
    return {
      access: !sessions.enabled ? 'read-only' : session ? 'session' : 'locked',
      payloads: Boolean(options.showPayloads || session),
      refreshMs,
      path: req.url ?? '/',
      flash: refresh ? undefined : flash,
    }
  }

  const page = (view: View, title: string, main: ReturnType<typeof html>, extra: Parameters<typeof layout>[3] = {}, status = 200): Reply =>
    ({ status, body: layout(view, title, main, extra) })

  /** A page whose read failed: the reason, in a page that keeps refreshing (200 for a refresh: no console error). */
  const unavailable = (view: View, title: string, error: unknown, refresh: boolean): Reply => {
    const message = error instanceof PipeweaveError ? error.message : redact(String((error as Error)?.message ?? error))
    logger.debug(`dashboard: ${title} could not be read: ${message}`)
    return page(view, title, html``, { status: `The database could not be read: ${message}` }, refresh ? 200 : 503)
  }

  async function get(req: http.IncomingMessage, url: URL, session: Session | undefined): Promise<Reply> {
    const refresh = req.headers['x-pipeweave-refresh'] === '1'
    const view = viewOf(req, session, refresh)
    const p = url.pathname
    if (p === '/') {
      try {
        const { seq, data } = await overview()
        return page(view, 'Overview', overviewPage(view, data as Overview), { snapshot: seq, takenAt: data.takenAt })
      } catch (error) {
        return unavailable(view, 'Overview', error, refresh)
      }
    }
    if (p === '/runs') {
      const status = url.searchParams.get('status') || undefined
      const taskId = url.searchParams.get('task') || undefined
      const before = url.searchParams.get('before') || undefined
      if (status !== undefined && !STATUSES.includes(status)) return page(view, 'Runs', messagePage('Runs', `Unknown status "${status}".`), {}, 400)
      if ((taskId?.length ?? 0) > 200 || (before?.length ?? 0) > 100) return page(view, 'Runs', messagePage('Runs', 'That filter is too long.'), {}, 400)
      try {
        const key = `runs\u0000${status ?? ''}\u0000${taskId ?? ''}\u0000${before ?? ''}`
        const { seq, data } = await reads.get(key, async (seq) => ({
          seq, data: await listRuns(db, { status, taskId, before, limit: RUNS_PAGE_SIZE, payloads: false }),
        }))
        return page(view, 'Runs', runsPage(view, { status, taskId, before }, data as TaskRun[], RUNS_PAGE_SIZE, await taskIds()), { snapshot: seq })
      } catch (error) {
        return unavailable(view, 'Runs', error, refresh)
      }
    }
    if (p.startsWith('/runs/')) {
      const id = decodeURIComponent(p.slice('/runs/'.length))
      if (!id || id.length > 100) return page(view, 'Run', messagePage('Run', 'No such run.'), {}, 404)
      try {
        const { seq, data } = await reads.get(`run\u0000${id}`, async (seq) => {
          const run = await getRun(db, id)
          const [followUps, dlq] = await Promise.all([listFollowUps(db, id), dlqEntriesOfRun(db, id)])
          return { seq, data: { run, followUps, dlq } satisfies RunDetail }
        })
        return page(view, `Run ${id}`, runPage(view, data), { snapshot: seq })
      } catch (error) {
        if (error instanceof UsageError && error.code === 'UNKNOWN_RUN') return page(view, 'Run', messagePage('Run', `No run with id "${id}" (db:cleanup may have removed it).`), {}, 404)
        return unavailable(view, 'Run', error, refresh)
      }
    }
    if (p === '/dlq') {
      const all = url.searchParams.get('all') === '1'
      const before = url.searchParams.get('before') || undefined
      if ((before?.length ?? 0) > 100) return page(view, 'DLQ', messagePage('DLQ', 'That cursor is too long.'), {}, 400)
      try {
        const { seq, data } = await reads.get(`dlq\u0000${all}\u0000${before ?? ''}`, async (seq) => ({
          seq, data: await listDlq(db, { pending: !all, before, limit: DLQ_PAGE_SIZE }),
        }))
        return page(view, 'DLQ', dlqPage(view, { all, before }, data as DlqEntry[], DLQ_PAGE_SIZE), { snapshot: seq })
      } catch (error) {
        return unavailable(view, 'DLQ', error, refresh)
      }
    }
    if (p === '/login') {
      if (!sessions.enabled) return page(view, 'Sign in', messagePage('Sign in', 'This dashboard is read-only: PIPEWEAVE_DASHBOARD_TOKEN is not set where it runs.'), {}, 404)
      return page(view, 'Sign in', loginPage(view, false))
    }
    return page(view, 'Not found', messagePage('Not found', 'There is no such page.'), {}, 404)
  }

  async function post(req: http.IncomingMessage, url: URL, session: Session | undefined): Promise<Reply> {
    const view = viewOf(req, session, true)
    const refuse = (text: string): Reply => page(view, 'Refused', messagePage('Refused', text), {}, 403)
    if (!sessions.enabled) return refuse('This dashboard is read-only: PIPEWEAVE_DASHBOARD_TOKEN is not set where it runs.')
    if (!sameOrigin(req)) {
      logger.warn('dashboard: refused a POST from another origin', { event: 'dashboard-refused', path: url.pathname })
      return refuse('Refused: this request did not come from a page of this dashboard.')
    }
    const form = await readForm(req)
    if (url.pathname === '/login') {
      if (!sessions.matches(form.get('token') ?? '')) {
        logger.warn('dashboard: a wrong token was presented', { event: 'dashboard-login-refused' })
        await new Promise((resolve) => setTimeout(resolve, 300)) // guessing is slow
        return page(view, 'Sign in', loginPage({ ...view, access: 'locked' }, true), {}, 403)
      }
      const fresh = sessions.create()
      logger.info('dashboard: a browser signed in with the token', { event: 'dashboard-login' })
      return { status: 303, body: '', headers: { location: '/', 'set-cookie': sessionCookie(req, fresh) } }
    }
    if (url.pathname === '/logout') {
      if (session) sessions.end(session)
      return { status: 303, body: '', headers: { location: '/', 'set-cookie': clearedCookie(req) } }
    }
    if (!session) return refuse('Sign in with the token first (actions need PIPEWEAVE_DASHBOARD_TOKEN).')
    const back = localPath(form.get('back'))
    const done = (flash: NonNullable<Session['flash']>): Reply => {
      session.flash = flash
      reads.clear()
      return { status: 303, body: '', headers: { location: back } }
    }
    try {
      switch (url.pathname) {
        case '/actions/maintenance/request': {
          const reason = (form.get('reason') ?? '').trim().slice(0, 500) || undefined
          const result = await requestMaintenance(db, { actor: 'dashboard', reason, staleMs: options.staleMs })
          logger.info(`dashboard: maintenance requested; the mode is ${result.mode}`, { event: 'dashboard-action', action: 'maintenance:request', mode: result.mode })
          return done({ kind: 'ok', text: result.changed ? `Maintenance requested: the mode is now ${result.mode}.` : `Nothing to do: the mode is already ${result.mode}.` })
        }
        case '/actions/maintenance/exit': {
          const result = await exitMaintenance(db, { actor: 'dashboard', staleMs: options.staleMs })
          logger.info(`dashboard: maintenance exited; the mode is ${result.mode}`, { event: 'dashboard-action', action: 'maintenance:exit', mode: result.mode })
          return done({ kind: 'ok', text: result.changed ? 'Back to running.' : 'Nothing to do: the mode is already running.' })
        }
        case '/actions/dlq/retry': {
          const id = form.get('id') ?? ''
          const result = await retryDlq(db, { ids: [id] })
          const retried = result.retried[0]
          if (!retried) return done({ kind: 'error', text: `Not retried: ${result.refused.map((r) => r.reason).join('; ')}.` })
          logger.info(`dashboard: DLQ entry ${id} retried as run ${retried.runId}`, { event: 'dashboard-action', action: 'dlq:retry', entry: id, runId: retried.runId })
          return done({
            kind: 'ok', text: `DLQ entry ${id} retried as run ${retried.runId ?? '(cached)'}.`,
            ...(retried.runId ? { link: { href: `/runs/${encodeURIComponent(retried.runId)}`, label: 'Show the new run' } } : {}),
          })
        }
        case '/actions/tasks/pause':
        case '/actions/tasks/resume':
        case '/actions/services/resume': {
          const id = form.get('id') ?? ''
          const target: PauseTarget = url.pathname.startsWith('/actions/services/') ? { service: id } : { tasks: [id] }
          const pause = url.pathname === '/actions/tasks/pause'
          const reason = (form.get('reason') ?? '').trim().slice(0, 500) || undefined
          const result = await (pause ? pauseTasks : resumeTasks)(db, target, { actor: 'dashboard', reason })
          const message = result.changes.map((c) => c.message).join('; ')
          logger.info(`dashboard: ${message}`, { event: 'dashboard-action', action: pause ? 'tasks:pause' : 'tasks:resume', target: id })
          return done({ kind: 'ok', text: `${message.charAt(0).toUpperCase()}${message.slice(1)}.` })
        }
        case '/actions/runs/cancel': {
          const id = form.get('id') ?? ''
          await cancelRuns(db, [id])
          logger.info(`dashboard: run ${id} cancelled`, { event: 'dashboard-action', action: 'runs:cancel', runId: id })
          return done({ kind: 'ok', text: `Run ${id} cancelled.` })
        }
        default:
          return page(view, 'Not found', messagePage('Not found', 'There is no such action.'), {}, 404)
      }
    } catch (error) {
      // The CLI's refusals (exit 4 there: not running, not pending, already retried), shown as messages.
      if (error instanceof PipeweaveError) return done({ kind: 'error', text: `Refused: ${error.message}${error.hint ? ` (${error.hint})` : ''}` })
      throw error
    }
  }

  function handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const send = (reply: Reply) => {
      if (res.headersSent) return
      res.writeHead(reply.status, {
        ...SECURITY_HEADERS,
        'content-type': reply.type ?? 'text/html; charset=utf-8',
        'cache-control': 'no-store',
        ...reply.headers,
      })
      res.end(reply.body)
    }
    let url: URL
    try {
      url = new URL(req.url ?? '/', 'http://dashboard.invalid')
    } catch {
      return send({ status: 400, body: 'bad request\n', type: 'text/plain; charset=utf-8' })
    }
    if (!hostAllowed(req)) {
      return send({ status: 421, body: 'This dashboard answers to a loopback host name only (localhost, 127.0.0.1, [::1]).\n', type: 'text/plain; charset=utf-8' })
    }
    const asset = assetFor(url.pathname)
    if (asset) {
      const file = assets.get(asset)
      if (!file || (req.method !== 'GET' && req.method !== 'HEAD')) return send({ status: 404, body: 'not found\n', type: 'text/plain; charset=utf-8' })
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': file.type, 'cache-control': 'public, max-age=300' })
      res.end(file.body)
      return
    }
    const session = sessions.of(req)
    const work = req.method === 'GET' || req.method === 'HEAD' ? get(req, url, session)
      : req.method === 'POST' ? post(req, url, session)
        : Promise.resolve<Reply>({ status: 405, body: 'method not allowed\n', type: 'text/plain; charset=utf-8', headers: { allow: 'GET, HEAD, POST' } })
    work.then(send, (error: unknown) => {
      logger.error(`dashboard: ${redact(String((error as Error)?.message ?? error))}`, { event: 'dashboard-error' })
      send({ status: 500, body: 'The dashboard failed to answer; its log says why.\n', type: 'text/plain; charset=utf-8' })
    })
  }

  return { handle, reads, refreshMs }
}

const SECURITY_HEADERS = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'same-origin',
}

function loadAssets(): Map<string, { type: string; body: Buffer }> {
  const files = new Map<string, { type: string; body: Buffer }>()
  for (const name of fs.readdirSync(ASSETS_DIR)) {
    const type = ASSET_TYPES[path.extname(name)]
    if (type) files.set(name, { type, body: fs.readFileSync(path.join(ASSETS_DIR, name)) })
  }
  return files
}

/** /assets/NAME (a plain file name) and /favicon.ico (the SVG icon). */
function assetFor(pathname: string): string | undefined {
  if (pathname === '/favicon.ico') return 'favicon.svg'
  const m = /^\/assets\/([a-z0-9-]+\.[a-z]+)$/.exec(pathname)
  return m?.[1]
}

/** Where an action comes back to: a path of this dashboard, never another site (`//evil`). */
function localPath(back: string | null): string {
  if (!back || !back.startsWith('/') || back.startsWith('//') || back.startsWith('/\\') || back.length > 2000) return '/'
  return back
}

function readForm(req: http.IncomingMessage): Promise<URLSearchParams> {
  return new Promise((resolve, reject) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (chunk: string) => {
      body += chunk
      if (body.length > MAX_BODY) {
        reject(new UsageError('BODY_TOO_LARGE', 'the form is too large'))
        req.destroy()
      }
    })
    req.on('end', () => resolve(new URLSearchParams(body)))
    req.on('error', reject)
  })
}

/** 127.0.0.0/8, ::1 and IPv4-mapped 127.x. */
export function isLoopbackAddress(address: string | undefined): boolean {
  if (!address) return false
  const a = address.replace(/^::ffff:/i, '')
  return a === '::1' || /^127\.\d+\.\d+\.\d+$/.test(a)
}

/**
 * A dashboard reached on a loopback address answers only requests that name a loopback host: a
 * page of another site whose name was made to resolve to 127.0.0.1 (DNS rebinding) sends its own
 * name, and gets nothing. On other addresses (`--host 0.0.0.0`) the names it may be reached by are
 * not known here.
 */
function hostAllowed(req: http.IncomingMessage): boolean {
  if (!isLoopbackAddress(req.socket.localAddress)) return true
  const host = (req.headers.host ?? '').toLowerCase()
  const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.replace(/:\d+$/, '')
  return name === 'localhost' || name === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(name)
}

/**
 * Under `run --dashboard` the pages share the health server's port, which container probes may
 * need on 0.0.0.0: the dashboard answers only connections made to its own address (SPEC §8:
 * loopback unless --dashboard-host). `127.0.0.1` (the default) also admits ::1; `0.0.0.0` or `::`
 * admits every address.
 */
export function dashboardAddressGate(dashboardHost: string): (req: http.IncomingMessage) => boolean {
  const wanted = dashboardHost.trim().toLowerCase().replace(/^\[|\]$/g, '')
  if (wanted === '0.0.0.0' || wanted === '::') return () => true
  const loopbackDefault = wanted === '127.0.0.1' || wanted === 'localhost' || wanted === '::1'
  return (req) => {
    const local = (req.socket.localAddress ?? '').replace(/^::ffff:/i, '').toLowerCase()
    if (loopbackDefault) return local === '127.0.0.1' || local === '::1'
    return local === wanted
  }
}

export interface DashboardServer {
  port: number
  host: string
  close(): Promise<void>
}

/** `pipeweave dashboard`: the pages on their own server. */
export function startDashboardServer(dashboard: Dashboard, options: { port: number; host: string }): Promise<DashboardServer> {
  const server = http.createServer((req, res) => dashboard.handle(req, res))
  return listen(server, {
    port: options.port, host: options.host, code: 'DASHBOARD_PORT_UNAVAILABLE', what: 'the dashboard',
    hint: 'choose another --port, or 0 for any free port',
  }).then((listening) => ({ ...listening, host: options.host }))
}
