/**
 * The dashboard's pages (SPEC §8), rendered on the server as HTML: overview, runs, a run, the DLQ,
 * and the token form. Every value goes through `html` (escaped); the only script is
 * /assets/app.js (the refresh), the only style /assets/app.css.
 */
import type { DlqEntry } from '../api/dlq'
import type { Overview, OverviewTask } from '../api/overview'
import type { TaskRun } from '../api/runs'
import { throughputChart } from './chart'
import { type Html, html } from './html'
import type { Session } from './sessions'

/** What the viewer may see and do. */
export interface View {
  /** read-only: no token configured; locked: a token is configured, this browser has not presented it; session: it has. */
  access: 'read-only' | 'locked' | 'session'
  /** Inputs and outputs shown (a token session, or --show-payloads). */
  payloads: boolean
  refreshMs: number
  /** The page's own path and query (where an action comes back to). */
  path: string
  flash?: Session['flash']
}

const NAV = [
  { href: '/', label: 'Overview' },
  { href: '/runs', label: 'Runs' },
  { href: '/dlq', label: 'DLQ' },
]

export function layout(view: View, title: string, main: Html, options: { snapshot?: number; takenAt?: string; status?: string } = {}): string {
  const current = view.path.split('?')[0]
  const active = (href: string) => (href === '/' ? current === '/' : current.startsWith(href))
  return `<!doctype html>${html`<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} · pipeweave</title>
<link rel="icon" href="/favicon.ico" type="image/svg+xml">
<link rel="stylesheet" href="/assets/app.css">
<script src="/assets/app.js" defer></script>
</head>
<body data-refresh-ms="${view.refreshMs}">
<header class="top">
  <a class="brand" href="/">pipeweave</a>
  <nav>${NAV.map((n) => html`<a href="${n.href}"${active(n.href) ? html` aria-current="page"` : ''}>${n.label}</a>`)}</nav>
  ${access(view)}
</header>
${view.flash ? html`<div id="flash" class="flash ${view.flash.kind}" role="status">${view.flash.text}${view.flash.link ? html` <a href="${view.flash.link.href}">${view.flash.link.label}</a>` : ''}</div>` : html`<div id="flash"></div>`}
<main id="main" data-snapshot="${options.snapshot ?? ''}" data-taken-at="${options.takenAt ?? ''}">
${options.status ? html`<p class="flash error" role="alert">${options.status}</p>` : ''}
${main}
</main>
<footer>Refreshes every ${seconds(view.refreshMs)}${options.takenAt ? html` · as of <time datetime="${options.takenAt}">${when(options.takenAt)}</time>` : ''}</footer>
</body>
</html>
`}`
}

function access(view: View): Html {
  switch (view.access) {
    case 'read-only':
      return html`<p id="access" class="access" data-access="read-only">Read-only: actions need PIPEWEAVE_DASHBOARD_TOKEN</p>`
    case 'locked':
      return html`<p id="access" class="access" data-access="locked">Read-only · <a href="/login">Sign in with the token</a></p>`
    case 'session':
      return html`<form id="access" class="access" data-access="session" method="post" action="/logout">Signed in: actions enabled <button class="link">Sign out</button></form>`
  }
}

/** A form that POSTs an action, coming back to this page. */
function action(view: View, path: string, label: string, fields: Record<string, string> = {}, extra: Html = html``, cls = ''): Html {
  return html`<form class="action ${cls}" method="post" action="${path}">
  <input type="hidden" name="back" value="${view.path}">
  ${Object.entries(fields).map(([k, v]) => html`<input type="hidden" name="${k}" value="${v}">`)}
  ${extra}<button>${label}</button>
</form>`
}

// ---------------------------------------------------------------------------------------------
// Formatting

/** `2026-03-01 10:00:03Z` */
export function when(iso: string | null | undefined): string {
  if (!iso) return '—'
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}Z`
}

function time(iso: string | null | undefined): Html {
  return iso ? html`<time datetime="${iso}">${when(iso)}</time>` : html`—`
}

function seconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`
}

/** A duration for people: 850 ms, 4.2 s, 3 min 5 s, 2 h 10 min, 3 d 4 h. */
export function age(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`
  const s = ms / 1000
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`
  const h = Math.floor(m / 60)
  if (h < 48) return `${h} h ${m % 60} min`
  return `${Math.floor(h / 24)} d ${h % 24} h`
}

const count = (n: number) => n.toLocaleString('en-US')

function statusBadge(status: string): Html {
  return html`<span class="badge s-${status}">${status}</span>`
}

/** A worker's payload as indented JSON, escaped; cut past 100 kB. */
function payload(value: unknown): Html {
  if (value === null || value === undefined) return html`<p class="muted">none</p>`
  let text = JSON.stringify(value, null, 2) ?? String(value)
  const LIMIT = 100_000
  const cut = text.length > LIMIT
  if (cut) text = text.slice(0, LIMIT)
  return html`<pre class="payload">${text}</pre>${cut ? html`<p class="muted">(cut at 100 kB)</p>` : ''}`
}

function hiddenPayload(view: View): Html {
  return html`<p class="muted hidden-payload">Hidden: ${view.access === 'locked' ? html`<a href="/login">sign in with the token</a>` : 'set PIPEWEAVE_DASHBOARD_TOKEN and sign in'}, or start the dashboard with --show-payloads.</p>`
}

// ---------------------------------------------------------------------------------------------
// Overview

const MODE_TEXT: Record<string, string> = {
  running: 'Accepting and dispatching tasks.',
  waiting_for_maintenance: 'Draining: new tasks are refused; the runs in flight and due finish.',
  maintenance: 'In maintenance: nothing is dispatched.',
}

function taskState(t: OverviewTask, takenAt: string): Html {
  const states: Html[] = []
  if (t.pausedAt) states.push(html`<span class="badge warn" title="${t.pauseReason ?? ''}">paused</span>`)
  if (t.servicePausedAt) states.push(html`<span class="badge warn">service paused</span>`)
  if (t.breakerOpenUntil) {
    states.push(t.breakerOpenUntil > takenAt ? html`<span class="badge bad">breaker open</span>` : html`<span class="badge warn">breaker half-open</span>`)
  }
  return states.length > 0 ? html`${states}` : html`<span class="muted">—</span>`
}

export function overviewPage(view: View, o: Overview): Html {
  const takenMs = new Date(o.takenAt).getTime()
  const pausedTasks = o.tasks.filter((t) => t.pausedAt)
  const live = o.orchestrators.filter((x) => x.live)
  const lastHour = o.throughput.reduce((n, m) => n + m.completed + m.failed, 0)
  return html`
<h1>Overview</h1>
<section class="card mode-card">
  <h2>Mode</h2>
  <p class="mode"><span id="mode" class="badge m-${o.mode}" data-mode="${o.mode}">${o.mode}</span>
    since ${time(o.modeChangedAt)} (${age(takenMs - new Date(o.modeChangedAt).getTime())} ago)</p>
  <p>${MODE_TEXT[o.mode] ?? ''}${o.reason ? html` Reason: <q id="mode-reason">${o.reason}</q>` : ''}</p>
  ${view.access === 'session' ? html`<div class="actions">
    ${o.mode === 'running' ? action(view, '/actions/maintenance/request', 'Request maintenance', {}, html`<label class="inline">Reason <input name="reason" maxlength="500" autocomplete="off"></label>`, 'request-maintenance') : ''}
    ${o.mode !== 'running' ? action(view, '/actions/maintenance/exit', o.mode === 'maintenance' ? 'Exit maintenance' : 'Withdraw the request (back to running)', {}, html``, 'exit-maintenance') : ''}
  </div>` : ''}
  <details${o.history.length > 0 ? html` open` : ''}>
    <summary>History (newest first)</summary>
    ${o.history.length === 0 ? html`<p class="muted">No mode change yet.</p>` : html`<table class="history">
      <thead><tr><th>At</th><th>Change</th><th>Actor</th><th>Reason</th></tr></thead>
      <tbody>${o.history.map((e) => html`<tr>
        <td data-label="At">${time(e.at)}</td>
        <td data-label="Change">${e.fromMode} → ${e.toMode}</td>
        <td data-label="Actor" class="actor">${e.actor}</td>
        <td data-label="Reason">${e.reason ?? ''}</td></tr>`)}</tbody></table>`}
  </details>
</section>

<section class="card">
  <h2>Queue by task</h2>
  ${o.tasks.length === 0 ? html`<p class="muted">No task is registered (pipeweave services:register).</p>` : html`<table class="queue">
    <thead><tr><th>Task</th><th class="num">Due</th><th class="num">Oldest due</th><th class="num">Scheduled</th><th class="num">Running</th><th>State</th></tr></thead>
    <tbody>${o.tasks.map((t) => html`<tr data-task="${t.taskId}">
      <td data-label="Task"><a href="/runs?task=${encodeURIComponent(t.taskId)}">${t.taskId}</a></td>
      <td data-label="Due" class="num" data-field="due">${count(t.due)}</td>
      <td data-label="Oldest due" class="num" data-field="oldest">${t.due > 0 ? age(t.oldestDueAgeSeconds * 1000) : '—'}</td>
      <td data-label="Scheduled" class="num" data-field="scheduled">${count(t.scheduled)}</td>
      <td data-label="Running" class="num" data-field="running">${count(t.running)}</td>
      <td data-label="State">${taskState(t, o.takenAt)}${view.access === 'session'
        ? (t.pausedAt
          ? action(view, '/actions/tasks/resume', 'Resume', { id: t.taskId }, html``, 'resume-task')
          : action(view, '/actions/tasks/pause', 'Pause', { id: t.taskId }, html``, 'pause-task'))
        : ''}</td></tr>`)}</tbody></table>`}
</section>

<section class="card">
  <h2>Throughput</h2>
  <p>${count(lastHour)} runs finished in the last hour; per minute:
    <span class="key completed">completed</span> <span class="key retried">retried</span> <span class="key failed">failed</span></p>
  ${throughputChart(o.throughput)}
</section>

<section class="card">
  <h2>Orchestrators</h2>
  <p>${count(live.length)} live of ${count(o.orchestrators.length)} registered.</p>
  ${o.orchestrators.length === 0 ? html`<p class="muted">No orchestrator is running (pipeweave run).</p>` : html`<table class="orchestrators">
    <thead><tr><th>Id</th><th>Host</th><th class="num">Pid</th><th>Version</th><th class="num">Heartbeat</th><th>Started</th></tr></thead>
    <tbody>${o.orchestrators.map((x) => html`<tr data-orchestrator="${x.id}">
      <td data-label="Id" class="id">${x.id}</td>
      <td data-label="Host">${x.host}</td>
      <td data-label="Pid" class="num">${x.pid}</td>
      <td data-label="Version">${x.version}</td>
      <td data-label="Heartbeat" class="num">${age(x.heartbeatAgeMs)} ago ${x.live ? '' : html`<span class="badge bad">stale</span>`}</td>
      <td data-label="Started">${time(x.startedAt)}</td></tr>`)}</tbody></table>`}
</section>

<section class="card">
  <h2>Flow control</h2>
  <h3>Paused tasks</h3>
  ${pausedTasks.length === 0 ? html`<p class="muted" id="paused-tasks">None.</p>` : html`<ul id="paused-tasks">${pausedTasks.map((t) => html`<li><b>${t.taskId}</b> since ${time(t.pausedAt)}${t.pausedBy ? html` by ${t.pausedBy}` : ''}${t.pauseReason ? html`: ${t.pauseReason}` : ''}</li>`)}</ul>`}
  <h3>Paused services and open breakers</h3>
  ${o.services.length === 0 ? html`<p class="muted" id="services">None.</p>` : html`<ul id="services">${o.services.map((v) => html`<li><b>${v.id}</b>:
    ${v.pausedAt ? html`paused since ${time(v.pausedAt)}${v.pausedBy ? html` by ${v.pausedBy}` : ''}${v.pauseReason ? html` (${v.pauseReason})` : ''}` : ''}
    ${v.pausedAt && v.breakerOpenUntil ? '; ' : ''}
    ${v.breakerOpenUntil ? (v.breakerOpenUntil > o.takenAt ? html`breaker open until ${time(v.breakerOpenUntil)}` : html`breaker half-open (a probe run may go)`) : ''}
    ${v.breakerOpenUntil && v.breakerFailures > 0 ? html` after ${v.breakerFailures} failed connection(s)` : ''}
    ${v.pausedAt && view.access === 'session' ? action(view, '/actions/services/resume', 'Resume the service', { id: v.id }, html``, 'resume-service') : ''}</li>`)}</ul>`}
  <h3>Schedules</h3>
  ${o.schedules.length === 0 ? html`<p class="muted" id="schedules">None.</p>` : html`<table id="schedules" class="schedules">
    <thead><tr><th>Name</th><th>Task</th><th>Cron</th><th>Last tick</th><th>Next tick</th></tr></thead>
    <tbody>${o.schedules.map((c) => html`<tr>
      <td data-label="Name">${c.name}</td>
      <td data-label="Task">${c.taskId}</td>
      <td data-label="Cron"><code>${c.cron}</code> ${c.timezone}</td>
      <td data-label="Last tick">${time(c.lastTick)}</td>
      <td data-label="Next tick">${c.nextTick ? time(c.nextTick) : html`<span class="muted">—</span>`}</td></tr>`)}</tbody></table>`}
</section>

<section class="card">
  <h2>Dead-letter queue</h2>
  <p><a href="/dlq" id="dlq-count" data-count="${o.dlqEntries}">${count(o.dlqEntries)} entr${o.dlqEntries === 1 ? 'y' : 'ies'} not yet retried</a></p>
</section>`
}

// ---------------------------------------------------------------------------------------------
// Runs

export const STATUSES = ['pending', 'running', 'completed', 'failed', 'timeout', 'cancelled', 'waiting']

export function runsPage(view: View, filter: { status?: string; taskId?: string; before?: string }, runs: TaskRun[], pageSize: number, tasks: string[]): Html {
  const query = (extra: Record<string, string | undefined>) => {
    const p = new URLSearchParams()
    for (const [k, v] of Object.entries({ status: filter.status, task: filter.taskId, ...extra })) if (v) p.set(k, v)
    const q = p.toString()
    return q ? `/runs?${q}` : '/runs'
  }
  const older = runs.length === pageSize ? runs[runs.length - 1].id : undefined
  return html`
<h1>Runs</h1>
<form class="filters" method="get" action="/runs">
  <label>Status <select name="status"><option value="">any</option>${STATUSES.map((s) => html`<option${s === filter.status ? html` selected` : ''}>${s}</option>`)}</select></label>
  <label>Task <input name="task" list="task-ids" value="${filter.taskId ?? ''}" autocomplete="off"></label>
  <datalist id="task-ids">${tasks.map((t) => html`<option value="${t}"></option>`)}</datalist>
  <button>Show</button>
</form>
<p class="muted">Newest first${filter.before ? html`, older than ${filter.before}` : ''}.</p>
${runs.length === 0 ? html`<p class="muted">No run${filter.before ? ' older than that' : ''}.</p>` : html`<table class="runs">
  <thead><tr><th>Run</th><th>Task</th><th>Status</th><th class="num">Attempt</th><th>Created</th><th>Finished</th><th>Error</th></tr></thead>
  <tbody>${runs.map((r) => html`<tr data-run="${r.id}">
    <td data-label="Run" class="id"><a href="/runs/${encodeURIComponent(r.id)}">${r.id}</a></td>
    <td data-label="Task">${r.taskId}</td>
    <td data-label="Status">${statusBadge(r.status)}</td>
    <td data-label="Attempt" class="num">${r.attempt}</td>
    <td data-label="Created">${time(r.createdAt)}</td>
    <td data-label="Finished">${time(r.completedAt)}</td>
    <td data-label="Error" class="error">${r.error ? short(r.error, 200) : ''}</td></tr>`)}</tbody></table>`}
<nav class="pager">
  ${filter.before ? html`<a href="${query({})}">Newest</a>` : ''}
  ${older ? html`<a rel="next" id="older" href="${query({ before: older })}">Older →</a>` : ''}
</nav>`
}

function short(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text
}

export interface RunDetail {
  run: TaskRun
  followUps: TaskRun[]
  dlq: DlqEntry[]
}

export function runPage(view: View, d: RunDetail): Html {
  const r = d.run
  const finished = ['completed', 'failed', 'timeout', 'cancelled'].includes(r.status)
  const current = r.status === 'completed' ? html`completed`
    : r.status === 'running' ? html`running (since ${time(r.startedAt)})`
      : r.status === 'pending' || r.status === 'waiting' ? html`not started yet${r.scheduledFor ? html` (due ${time(r.scheduledFor)})` : ''}`
        : html`${r.status}`
  const field = (label: string, value: Html | string) => html`<div><dt>${label}</dt><dd>${value}</dd></div>`
  return html`
<h1>Run <span class="id">${r.id}</span></h1>
<section class="card">
  <dl class="fields">
    ${field('Status', statusBadge(r.status))}
    ${field('Task', html`<a href="/runs?task=${encodeURIComponent(r.taskId)}">${r.taskId}</a>`)}
    ${field('Attempt', String(r.attempt))}
    ${field('Priority', String(r.priority))}
    ${field('Created', time(r.createdAt))}
    ${field('Started', time(r.startedAt))}
    ${field(finished ? 'Finished' : 'Heartbeat', time(finished ? r.completedAt : r.heartbeatAt))}
    ${r.scheduledFor ? field('Due', time(r.scheduledFor)) : ''}
    ${field('Parent', r.parentRunId ? html`<a id="parent" href="/runs/${encodeURIComponent(r.parentRunId)}">${r.parentRunId}</a>` : '—')}
    ${r.pipelineRunId ? field('Pipeline run', r.pipelineRunId) : ''}
    ${r.idempotencyKey ? field('Idempotency key', r.idempotencyKey) : ''}
    ${r.orchestratorId ? field('Orchestrator', r.orchestratorId) : ''}
  </dl>
  ${view.access === 'session' && r.status === 'pending' ? html`<div class="actions">${action(view, '/actions/runs/cancel', 'Cancel this run', { id: r.id }, html``, 'cancel-run')}</div>` : ''}
</section>

<section class="card">
  <h2>Attempts</h2>
  <table class="attempts">
    <thead><tr><th class="num">#</th><th>Outcome</th><th>Code</th><th>Error</th><th>At</th></tr></thead>
    <tbody>
      ${r.previousAttempts.map((a) => html`<tr class="attempt failed-attempt" data-attempt="${a.attempt}">
        <td data-label="#" class="num">${a.attempt}</td><td data-label="Outcome">failed</td>
        <td data-label="Code"><code>${a.errorCode ?? ''}</code></td>
        <td data-label="Error" class="error"><pre class="error-text">${a.error}</pre></td>
        <td data-label="At">${time(a.at)}</td></tr>`)}
      ${r.previousAttempts.some((a) => a.attempt === r.attempt) ? '' : html`<tr class="attempt current-attempt" data-attempt="${r.attempt}">
        <td data-label="#" class="num">${r.attempt}</td><td data-label="Outcome">${current}</td>
        <td data-label="Code">${r.status !== 'completed' && r.errorCode ? html`<code>${r.errorCode}</code>` : ''}</td>
        <td data-label="Error" class="error">${finished && r.status !== 'completed' && r.error ? html`<pre class="error-text">${r.error}</pre>` : ''}</td>
        <td data-label="At">${time(r.completedAt ?? r.startedAt)}</td></tr>`}
    </tbody>
  </table>
</section>

<section class="card">
  <h2>Input</h2>
  ${view.payloads ? html`<div id="input">${payload(r.input)}</div>` : hiddenPayload(view)}
  <h2>Output</h2>
  ${view.payloads ? html`<div id="output">${payload(r.output)}</div>` : hiddenPayload(view)}
</section>

<section class="card">
  <h2>Follow-ups</h2>
  ${d.followUps.length === 0 ? html`<p class="muted" id="follow-ups">None.</p>` : html`<table id="follow-ups" class="runs">
    <thead><tr><th>Run</th><th>Task</th><th>Status</th><th>Created</th></tr></thead>
    <tbody>${d.followUps.map((f) => html`<tr data-run="${f.id}">
      <td data-label="Run" class="id"><a href="/runs/${encodeURIComponent(f.id)}">${f.id}</a></td>
      <td data-label="Task">${f.taskId}</td><td data-label="Status">${statusBadge(f.status)}</td>
      <td data-label="Created">${time(f.createdAt)}</td></tr>`)}</tbody></table>`}
</section>
${d.dlq.length > 0 ? html`<section class="card">
  <h2>Dead-letter queue</h2>
  ${dlqTable(view, d.dlq)}
</section>` : ''}`
}

// ---------------------------------------------------------------------------------------------
// DLQ

function dlqTable(view: View, entries: DlqEntry[]): Html {
  return html`<table class="dlq">
  <thead><tr><th>Entry</th><th>Task</th><th>Run</th><th class="num">Attempts</th><th>Error</th><th>Failed</th><th>Retried</th></tr></thead>
  <tbody>${entries.map((e) => html`<tr data-entry="${e.id}">
    <td data-label="Entry" class="id">${e.id}</td>
    <td data-label="Task">${e.taskId}</td>
    <td data-label="Run" class="id"><a href="/runs/${encodeURIComponent(e.taskRunId)}">${e.taskRunId}</a></td>
    <td data-label="Attempts" class="num">${e.attempts}</td>
    <td data-label="Error" class="error">${e.errorCode ? html`<code>${e.errorCode}</code> ` : ''}${short(e.error ?? '', 300)}</td>
    <td data-label="Failed">${time(e.failedAt)}</td>
    <td data-label="Retried">${e.retriedAt
      ? html`${time(e.retriedAt)}${e.retryRunId ? html` as <a class="retry-run" href="/runs/${encodeURIComponent(e.retryRunId)}">${e.retryRunId}</a>` : ''}`
      : view.access === 'session' ? action(view, '/actions/dlq/retry', 'Retry', { id: e.id }, html``, 'retry-dlq') : html`<span class="muted">not yet</span>`}</td></tr>`)}</tbody></table>`
}

export function dlqPage(view: View, filter: { all: boolean; before?: string }, entries: DlqEntry[], pageSize: number): Html {
  const base = filter.all ? '/dlq?all=1' : '/dlq'
  const older = entries.length === pageSize ? entries[entries.length - 1].id : undefined
  return html`
<h1>Dead-letter queue</h1>
<p>${filter.all ? html`Every entry, newest first · <a href="/dlq">only those not yet retried</a>` : html`Entries not yet retried, newest first · <a href="/dlq?all=1">every entry</a>`}</p>
${entries.length === 0 ? html`<p class="muted">No entry.</p>` : dlqTable(view, entries)}
<nav class="pager">
  ${filter.before ? html`<a href="${base}">Newest</a>` : ''}
  ${older ? html`<a rel="next" id="older" href="${base}${filter.all ? '&' : '?'}before=${encodeURIComponent(older)}">Older →</a>` : ''}
</nav>`
}

// ---------------------------------------------------------------------------------------------
// Sign in, and plain messages

export function loginPage(view: View, wrong: boolean): Html {
  return html`
<h1>Sign in</h1>
<section class="card">
  <p>Present PIPEWEAVE_DASHBOARD_TOKEN once: this browser then keeps a session (an HttpOnly cookie) for 12 hours, and its actions are recorded with the actor <code>dashboard</code>.</p>
  ${wrong ? html`<p class="flash error" role="alert">That is not the token.</p>` : ''}
  <form class="login" method="post" action="/login">
    <label>Token <input type="password" name="token" autocomplete="off" required></label>
    <button>Sign in</button>
  </form>
</section>`
}

export function messagePage(title: string, text: string): Html {
  return html`<h1>${title}</h1><section class="card"><p id="message">${text}</p><p><a href="/">Overview</a></p></section>`
}
