/**
 * The dashboard's overview (SPEC §8) as data: the mode with its history, each task's queue, the
 * orchestrators, the throughput of the last hour, flow control (SPEC §7) and the DLQ. Read in one
 * statement (src/sql/dashboard.ts overview): one snapshot of the database.
 */
import type { Queryable } from '../db/database'
import type { Mode } from '../maintenance/maintenance'
import * as sql from '../sql/dashboard'
import { nextScheduleTick } from './schedules'
import { orchestratorStaleMs } from './settings'

export interface OverviewTask {
  taskId: string
  serviceId: string
  /** 0 = unlimited. */
  concurrency: number
  /** Due pending runs (the queue depth). */
  due: number
  /** Age of the oldest due pending run in seconds (0 when none). */
  oldestDueAgeSeconds: number
  /** Pending runs scheduled for later (retries waiting out a backoff, delayed runs). */
  scheduled: number
  running: number
  pausedAt: string | null
  pausedBy: string | null
  pauseReason: string | null
  servicePausedAt: string | null
  breakerOpenUntil: string | null
}

export interface OverviewOrchestrator {
  id: string
  host: string
  pid: number
  version: string
  concurrency: number
  startedAt: string
  heartbeatAt: string
  heartbeatAgeMs: number
  live: boolean
}

export interface ThroughputMinute {
  /** The minute's start (ISO). */
  minute: string
  completed: number
  failed: number
  retried: number
}

export interface OverviewService {
  id: string
  pausedAt: string | null
  pausedBy: string | null
  pauseReason: string | null
  breakerOpenUntil: string | null
  breakerOpenedAt: string | null
  breakerFailures: number
}

export interface OverviewSchedule {
  name: string
  taskId: string
  cron: string
  timezone: string
  overlap: string
  serviceId: string | null
  lastTick: string | null
  lastRunId: string | null
  /** The next tick (nextScheduleTick), as schedules:list shows it. */
  nextTick: string | null
}

export interface Overview {
  /** The database's clock when the snapshot was read. */
  takenAt: string
  mode: Mode
  modeChangedAt: string
  reason: string | null
  history: Array<{ fromMode: Mode; toMode: Mode; at: string; actor: string; reason: string | null }>
  tasks: OverviewTask[]
  orchestrators: OverviewOrchestrator[]
  /** The last 60 minutes, oldest first, every minute present (zeros where nothing finished). */
  throughput: ThroughputMinute[]
  /** Paused services and open breakers. */
  services: OverviewService[]
  schedules: OverviewSchedule[]
  /** DLQ entries not yet retried. */
  dlqEntries: number
}

interface OverviewRow {
  taken_at: Date
  state: { mode: Mode; mode_changed_at: string; reason: string | null }
  history: Array<{ from_mode: Mode; to_mode: Mode; at: string; actor: string; reason: string | null }>
  tasks: Array<{
    task_id: string; service_id: string; concurrency: number; paused_at: string | null; paused_by: string | null; pause_reason: string | null
    service_paused_at: string | null; breaker_open_until: string | null; due: number; oldest_due_at: string | null; scheduled: number; running: number
  }>
  orchestrators: Array<{
    id: string; host: string; pid: number; version: string; concurrency: number; started_at: string; heartbeat_at: string
    heartbeat_age_ms: number; live: boolean
  }>
  throughput: Array<{ minute: string; completed: number; failed: number; retried: number }>
  services: Array<{
    id: string; paused_at: string | null; paused_by: string | null; pause_reason: string | null; breaker_open_until: string | null
    breaker_opened_at: string | null; breaker_failures: number
  }>
  schedules: Array<{
    name: string; task_id: string; cron: string; timezone: string; overlap: string; service_id: string | null; last_tick: string | null
    last_run_id: string | null; created_at: string
  }>
  dlq_entries: number
}

/** Timestamps inside JSON come back as PostgreSQL wrote them: give them the ISO form of the others. */
const iso = (text: string | null): string | null => (text === null ? null : new Date(text).toISOString())

const MINUTE_MS = 60_000

export async function getOverview(db: Queryable, options: { history?: number; staleMs?: number } = {}): Promise<Overview> {
  const { rows: [row] } = await db.query<OverviewRow>(sql.overview, [options.history ?? 10, options.staleMs ?? orchestratorStaleMs()])
  const takenAt = row.taken_at
  const counted = new Map(row.throughput.map((m) => [new Date(m.minute).getTime(), m]))
  const thisMinute = Math.floor(takenAt.getTime() / MINUTE_MS) * MINUTE_MS
  const throughput: ThroughputMinute[] = []
  for (let i = 59; i >= 0; i -= 1) {
    const at = thisMinute - i * MINUTE_MS
    const m = counted.get(at)
    throughput.push({ minute: new Date(at).toISOString(), completed: m?.completed ?? 0, failed: m?.failed ?? 0, retried: m?.retried ?? 0 })
  }
  return {
    takenAt: takenAt.toISOString(),
    mode: row.state.mode,
    modeChangedAt: iso(row.state.mode_changed_at)!,
    reason: row.state.reason,
    history: row.history.map((e) => ({ fromMode: e.from_mode, toMode: e.to_mode, at: iso(e.at)!, actor: e.actor, reason: e.reason })),
    tasks: row.tasks.map((t) => ({
      taskId: t.task_id, serviceId: t.service_id, concurrency: t.concurrency, due: t.due, scheduled: t.scheduled, running: t.running,
      oldestDueAgeSeconds: t.oldest_due_at ? Math.max(0, (takenAt.getTime() - new Date(t.oldest_due_at).getTime()) / 1000) : 0,
      pausedAt: iso(t.paused_at), pausedBy: t.paused_by, pauseReason: t.pause_reason,
      servicePausedAt: iso(t.service_paused_at), breakerOpenUntil: iso(t.breaker_open_until),
    })),
    orchestrators: row.orchestrators.map((o) => ({
      id: o.id, host: o.host, pid: o.pid, version: o.version, concurrency: o.concurrency, startedAt: iso(o.started_at)!,
      heartbeatAt: iso(o.heartbeat_at)!, heartbeatAgeMs: Number(o.heartbeat_age_ms), live: o.live,
    })),
    throughput,
    services: row.services.map((v) => ({
      id: v.id, pausedAt: iso(v.paused_at), pausedBy: v.paused_by, pauseReason: v.pause_reason,
      breakerOpenUntil: iso(v.breaker_open_until), breakerOpenedAt: iso(v.breaker_opened_at), breakerFailures: v.breaker_failures,
    })),
    schedules: row.schedules.map((c) => {
      const next = nextScheduleTick({ cron: c.cron, timezone: c.timezone, lastTick: c.last_tick ? new Date(c.last_tick) : null, createdAt: new Date(c.created_at) })
      return {
        name: c.name, taskId: c.task_id, cron: c.cron, timezone: c.timezone, overlap: c.overlap, serviceId: c.service_id,
        lastTick: iso(c.last_tick), lastRunId: c.last_run_id, nextTick: next ? next.toISOString() : null,
      }
    }),
    dlqEntries: row.dlq_entries,
  }
}
