/**
 * Prometheus metrics for `run --http-port` (names are relied on by dashboards; SPEC §5 and the
 * operator-surface issue). Counters come from the orchestrator's hooks; queue figures are read
 * from the database at scrape time, once per scrape.
 */
import * as client from 'prom-client'
import type { Queryable } from '../db/database'
import { MODES, type Mode } from '../maintenance/maintenance'
import type { OrchestratorHooks, RunOutcome } from '../orchestrator/orchestrator'
import * as dlq from '../sql/dlq'
import * as state from '../sql/orchestrator-state'
import * as services from '../sql/services'
import * as runs from '../sql/task-runs'

/** Queue figures are read at most this often, whatever the number of scrapes. */
export const REFRESH_MS = 3000

export interface Metrics {
  registry: client.Registry
  hooks: OrchestratorHooks
}

interface Snapshot {
  depth: number
  oldest: number
  dlq: number
  mode: Mode
  /** Every task: 1 while paused (its own pause or its service's). */
  paused: Array<{ id: string; active: boolean }>
  /** Every service: 1 while its breaker holds runs back (open or half-open). */
  breakers: Array<{ id: string; active: boolean }>
}

export function createMetrics(db: Queryable): Metrics {
  const registry = new client.Registry()
  client.collectDefaultMetrics({ register: registry })

  // One round of queries per few seconds, shared by every scrape and every gauge in that time:
  // scrapers (and the probes beside them) can never load the pool.
  let snapshot: Promise<Snapshot | undefined> | undefined
  let takenAt = 0
  const read = () => {
    if (snapshot && Date.now() - takenAt < REFRESH_MS) return snapshot
    takenAt = Date.now()
    snapshot = (async () => {
      try {
        const [queue, entries, mode, flow] = await Promise.all([
          db.query<{ depth: number; oldest_age_seconds: number }>(runs.queueStats),
          db.query<{ n: number }>(dlq.countNotRetried),
          db.query<{ mode: Mode }>(state.currentMode),
          db.query<{ kind: 'task' | 'service'; id: string; active: boolean }>(services.flowGauges),
        ])
        return {
          depth: queue.rows[0].depth, oldest: queue.rows[0].oldest_age_seconds, dlq: entries.rows[0].n, mode: mode.rows[0].mode,
          paused: flow.rows.filter((r) => r.kind === 'task'), breakers: flow.rows.filter((r) => r.kind === 'service'),
        }
      } catch {
        takenAt = 0 // database down: keep the last values, ask again at the next scrape
        return undefined
      }
    })()
    return snapshot
  }

  const runsTotal = new client.Counter({
    name: 'pipeweave_runs_total', help: 'Task run attempts by outcome (completed, cached, retried, failed, timeout; deferred: a connect failure held by the service breaker, no attempt used).',
    labelNames: ['task', 'outcome'] as const, registers: [registry],
  })
  const dispatchDuration = new client.Histogram({
    name: 'pipeweave_dispatch_duration_seconds', help: 'Time from dispatch to the worker\'s answer.',
    labelNames: ['task'] as const, buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [registry],
  })
  const scheduleTicks = new client.Counter({
    name: 'pipeweave_schedule_ticks_total', help: 'Schedule ticks this orchestrator decided, by outcome (enqueued; skipped: maintenance or overlap; missed: ranges).',
    labelNames: ['schedule', 'outcome'] as const, registers: [registry],
  })
  const inFlight = new client.Gauge({ name: 'pipeweave_runs_in_flight', help: 'Runs this orchestrator is dispatching now.', registers: [registry] })
  new client.Gauge({
    name: 'pipeweave_queue_depth', help: 'Due pending runs.', registers: [registry],
    async collect() { const s = await read(); if (s) this.set(s.depth) },
  })
  new client.Gauge({
    name: 'pipeweave_queue_oldest_age_seconds', help: 'Age of the oldest due pending run (0 when none).', registers: [registry],
    async collect() { const s = await read(); if (s) this.set(s.oldest) },
  })
  new client.Gauge({
    name: 'pipeweave_dlq_entries', help: 'DLQ entries not yet retried.', registers: [registry],
    async collect() { const s = await read(); if (s) this.set(s.dlq) },
  })
  const maintenanceMode = new client.Gauge({
    name: 'pipeweave_maintenance_mode', help: '1 for the current maintenance mode, 0 for the others.',
    labelNames: ['mode'] as const, registers: [registry],
    async collect() { const s = await read(); if (s) setMode(s.mode) },
  })
  const setMode = (mode: Mode) => { for (const m of MODES) maintenanceMode.set({ mode: m }, m === mode ? 1 : 0) }
  // Flow control (SPEC §7). A task or service that is gone (db:reset) leaves its series: reset first.
  new client.Gauge({
    name: 'pipeweave_task_paused', help: '1 while the task is paused (tasks:pause, or its service\'s pause), else 0.',
    labelNames: ['task'] as const, registers: [registry],
    async collect() {
      const s = await read()
      if (!s) return
      this.reset()
      for (const t of s.paused) this.set({ task: t.id }, t.active ? 1 : 0)
    },
  })
  new client.Gauge({
    name: 'pipeweave_service_breaker_open', help: '1 while the service\'s breaker holds its runs back (open or half-open), else 0.',
    labelNames: ['service'] as const, registers: [registry],
    async collect() {
      const s = await read()
      if (!s) return
      this.reset()
      for (const b of s.breakers) this.set({ service: b.id }, b.active ? 1 : 0)
    },
  })
  // The orchestrator tells of each claim that a task's rate limit held back (hooks.onRateLimited).
  const rateLimited = new client.Counter({
    name: 'pipeweave_task_rate_limited_total', help: 'Claims by this orchestrator in which a task\'s rate limit held back due runs.',
    labelNames: ['task'] as const, registers: [registry],
  })
  for (const m of MODES) maintenanceMode.set({ mode: m }, 0)
  inFlight.set(0)

  return {
    registry,
    hooks: {
      onOutcome: (task: string, outcome: RunOutcome) => runsTotal.inc({ task, outcome }),
      onDispatch: (task: string, seconds: number) => dispatchDuration.observe({ task }, seconds),
      onInFlight: (count: number) => inFlight.set(count),
      onMode: setMode,
      onScheduleTick: (schedule: string, _tickMs: number, outcome: 'enqueued' | 'skipped' | 'missed') => scheduleTicks.inc({ schedule, outcome }),
      onRateLimited: (task: string) => rateLimited.inc({ task }),
    },
  }
}
