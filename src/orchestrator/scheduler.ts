/**
 * The schedule loop of `pipeweave run` (SPEC §7): every orchestrator runs one, and each tick of
 * each schedule is decided once fleet-wide by a compare-and-set on the schedule's `last_tick` in
 * the transaction that enqueues its run (through the maintenance gate and the enqueue statement of
 * src/sql/task-runs.ts). No leader, and no table of ticks: losers of the race see last_tick moved
 * and go on to the next tick.
 *
 * A pass reads every schedule (and the server's clock), decides the ticks that are due, and arms
 * one timer for the earliest next tick of any schedule; a change (NOTIFY 'schedules', a database
 * that is back) or the re-read interval starts a pass early. What a due tick becomes:
 *   missed    it fell while no orchestrator ran (none registered before it) and is older than the
 *             schedule's backfill, or it is later than both the backfill and the stale time: not
 *             enqueued; each range of them is one control_events row ('missed');
 *   skipped   the mode was not `running` (read under the gate), or overlap `skip` found the
 *             previous tick's run still pending or running: one control_events row per range
 *             ('skipped'), extended tick by tick;
 *   enqueued  a run of the task with the schedule's input, idempotency key `schedule:NAME@TICK`.
 * So a short outage while orchestrators live catches up within the stale time, and a fleet that
 * was stopped enqueues late only what --backfill allows.
 */
import { enqueueTask } from '../api/enqueue'
import { type CronSchedule } from '../api/cron'
import { compiledOf } from '../api/schedules'
import type { Database, TransactionClient } from '../db/database'
import type { Logger } from '../logger'
import * as sql from '../sql/schedules'

/** Ticks of one schedule decided in one pass at most (a long backfill goes on in the next pass). */
const TICKS_PER_PASS = 500
/** Counting the ticks of a missed range stops here (a busy expression missed for days). */
const MAX_COUNTED = 10_000
/** After a failed pass (database unreachable), the next one is tried after at most this. */
const RETRY_MS = 1000

export interface ScheduleRow {
  name: string
  cron: string
  timezone: string
  backfillMs: number
  /** ms; null: never decided (a runbook's INSERT), the creation counts. */
  lastTickMs: number | null
  createdMs: number
}

export interface ScheduleSnapshot {
  /** The server's clock when read. */
  nowMs: number
  /** When the longest-registered orchestrator registered (null: none). */
  fleetSinceMs: number | null
  schedules: ScheduleRow[]
}

export type MissCause = 'no-orchestrator' | 'late'

export type TickOutcome =
  | { outcome: 'enqueued'; runId: string | null; deduplicated: boolean }
  | { outcome: 'skipped'; cause: 'mode'; mode: string }
  | { outcome: 'skipped'; cause: 'overlap'; runId: string }
  /** Another orchestrator decided it, or the schedule changed or went. */
  | { outcome: 'lost' }
  /** Not due yet by the server's clock. */
  | { outcome: 'early'; nowMs: number }

/** The statements of the loop (handed in, like the repository: a test may wrap them). */
export interface ScheduleStore {
  read(): Promise<ScheduleSnapshot>
  /** Decide tick `tickMs` of `schedule`, whose last_tick was `schedule.lastTickMs`. */
  tick(schedule: ScheduleRow, tickMs: number): Promise<TickOutcome>
  /**
   * Record ticks `fromMs`…`toMs` as missed and move last_tick to `toMs`; false: lost. `no-orchestrator`:
   * none ran then; `late`: one did, but they are older than the stale time (the database was out of reach).
   */
  miss(schedule: ScheduleRow, fromMs: number, toMs: number, count: number | null, cause: MissCause): Promise<boolean>
}

export function createScheduleStore(db: Pick<Database, 'query' | 'withTransaction'>, orchestratorId: string): ScheduleStore {
  const actor = `orchestrator:${orchestratorId}`
  return {
    async read() {
      const { rows } = await db.query<{
        name: string | null; cron: string; timezone: string; backfill_ms: number; last_tick_ms: number | null; created_ms: number
        now_ms: number; fleet_since_ms: number | null
      }>(sql.readSchedules)
      return {
        nowMs: rows[0].now_ms,
        fleetSinceMs: rows[0].fleet_since_ms,
        schedules: rows.filter((r) => r.name !== null).map((r) => ({
          name: r.name!, cron: r.cron, timezone: r.timezone, backfillMs: r.backfill_ms, lastTickMs: r.last_tick_ms, createdMs: r.created_ms,
        })),
      }
    },
    tick(schedule, tickMs) {
      return db.withTransaction(async (tx): Promise<TickOutcome> => {
        const { rows: [cas] } = await tx.query<{ taken: boolean; task_id: string; input: unknown; overlap: string; last_run_id: string | null; now_ms: number }>(
          sql.takeTick, [schedule.name, schedule.lastTickMs, tickMs, schedule.cron, schedule.timezone])
        if (!cas.taken) return cas.now_ms < tickMs ? { outcome: 'early', nowMs: cas.now_ms } : { outcome: 'lost' }
        // The gate, in a statement of its own after the row lock: held to commit, so no mode
        // change falls between this read and the enqueue below.
        const { rows: [gate] } = await tx.query<{ mode: string }>(sql.gate)
        const range = { name: schedule.name, previous: schedule.lastTickMs, from: tickMs, to: tickMs, count: 1 }
        if (gate.mode !== 'running') {
          await recordRange(tx, { ...range, action: 'skipped', cause: 'mode', reason: 'the mode was not running (maintenance requested or entered)', actor })
          return { outcome: 'skipped', cause: 'mode', mode: gate.mode }
        }
        if (cas.overlap === 'skip' && cas.last_run_id !== null) {
          const { rows: [run] } = await tx.query<{ live: boolean }>(sql.runIsLive, [cas.last_run_id])
          if (run.live) {
            await recordRange(tx, { ...range, action: 'skipped', cause: 'overlap', reason: 'the previous tick\'s run was still pending or running (overlap skip)', actor })
            return { outcome: 'skipped', cause: 'overlap', runId: cas.last_run_id }
          }
        }
        const result = await enqueueTask(tx, {
          taskId: cas.task_id, input: cas.input ?? undefined, idempotencyKey: `schedule:${schedule.name}@${new Date(tickMs).toISOString()}`,
        })
        await tx.query(sql.setLastRun, [schedule.name, result.runId])
        return { outcome: 'enqueued', runId: result.runId, deduplicated: result.deduplicated }
      })
    },
    miss(schedule, fromMs, toMs, count, cause) {
      return db.withTransaction(async (tx) => {
        const { rows: [cas] } = await tx.query<{ taken: boolean }>(sql.takeTick, [schedule.name, schedule.lastTickMs, toMs, schedule.cron, schedule.timezone])
        if (!cas.taken) return false
        await recordRange(tx, {
          name: schedule.name, previous: schedule.lastTickMs, from: fromMs, to: toMs, count, action: 'missed', cause, actor,
          reason: cause === 'late'
            ? 'an orchestrator ran, but these ticks were older than the stale time when the database could be reached, and older than the schedule\'s backfill'
            : 'no orchestrator ran at these ticks, and they are older than the schedule\'s backfill',
        })
        return true
      })
    },
  }
}

interface Range {
  name: string
  /** The tick before `from` (the range extends a row that ends there). */
  previous: number | null
  from: number
  to: number
  count: number | null
  action: 'skipped' | 'missed'
  cause: 'mode' | 'overlap' | MissCause
  reason: string
  actor: string
}

/** One control_events row per range: the newest row of the schedule is extended when it ends at the tick before. */
async function recordRange(tx: TransactionClient, r: Range): Promise<void> {
  const iso = (ms: number) => new Date(ms).toISOString()
  if (r.previous !== null) {
    const { rows } = await tx.query(sql.extendRange, [r.name, r.action, r.cause, iso(r.previous), iso(r.to), r.count])
    if (rows.length > 0) return
  }
  await tx.query(sql.recordEvent, [r.name, r.action, r.actor, r.reason, JSON.stringify({ cause: r.cause, from: iso(r.from), to: iso(r.to), count: r.count })])
}

export interface SchedulerOptions {
  store: ScheduleStore
  log: Logger
  /** ORCHESTRATOR_STALE_MS: ticks this late are caught up when an orchestrator lived at them. */
  staleMs: number
  /** Schedules are read again at least this often (changes are also notified). */
  rereadMs: number
  /** A failed pass: the database may be down (recorded by liveness, never thrown). */
  trouble(error: unknown): void
  /** A pass reached the database. */
  back(): void
  onTick?(schedule: string, tickMs: number, outcome: TickOutcome | { outcome: 'missed'; count: number | null }): void
}

export class Scheduler {
  private timer?: NodeJS.Timeout
  private passing?: Promise<void>
  private again = false
  private stopped = false
  /** The server's clock minus ours, from the last read (timers are armed on our clock). */
  private clockOffset = 0
  /** Names whose expression no longer compiles (logged once). */
  private readonly broken = new Set<string>()

  constructor(private readonly options: SchedulerOptions) {}

  start(): void {
    this.kick()
  }

  /** Something changed (a notification, the database back): a pass now. */
  changed(): void {
    this.kick()
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    await this.passing
  }

  private kick(): void {
    if (this.stopped) return
    if (this.passing) {
      this.again = true
      return
    }
    clearTimeout(this.timer)
    this.timer = undefined
    this.passing = (async () => {
      let wakeIn = this.options.rereadMs
      try {
        wakeIn = Math.min(wakeIn, await this.pass())
        this.options.back()
      } catch (error) {
        this.options.trouble(error)
        wakeIn = Math.min(wakeIn, RETRY_MS)
      }
      return wakeIn
    })().then((wakeIn) => {
      this.passing = undefined
      if (this.stopped) return
      if (this.again) {
        this.again = false
        this.kick()
        return
      }
      this.timer = setTimeout(() => this.kick(), Math.max(1, wakeIn))
    })
  }

  /** Decide every due tick; returns the milliseconds (on our clock) until the next tick of any schedule. */
  private async pass(): Promise<number> {
    const { store, log } = this.options
    const snapshot = await store.read()
    this.clockOffset = snapshot.nowMs - Date.now()
    const now = () => Date.now() + this.clockOffset
    let earliest = Infinity
    for (const schedule of snapshot.schedules) {
      if (this.stopped) break
      const compiled = this.compile(schedule)
      if (!compiled) continue
      for (let decided = 0; !this.stopped; decided++) {
        if (decided === TICKS_PER_PASS) {
          // More are due (a long backfill): the next pass goes on, after the other schedules.
          this.again = true
          break
        }
        const after = schedule.lastTickMs ?? schedule.createdMs
        const tick = compiled.nextTick(after)
        if (tick === null) break
        const at = now()
        if (tick > at) {
          earliest = Math.min(earliest, tick)
          break
        }
        // Late ticks are enqueued within the backfill; within the stale time too when an
        // orchestrator lived at them (an outage, a slow machine: the fleet was there).
        const cutoff = Math.min(at - schedule.backfillMs, Math.max(at - this.options.staleMs, snapshot.fleetSinceMs ?? Infinity))
        if (tick < cutoff) {
          const last = compiled.lastTickBefore(after, cutoff) ?? tick
          const count = countTicks(compiled, tick, last)
          // An orchestrator lived at them, but the database was out of reach for longer than the stale time.
          const late = snapshot.fleetSinceMs !== null && last >= snapshot.fleetSinceMs
          if (!(await store.miss(schedule, tick, last, count, late ? 'late' : 'no-orchestrator'))) {
            this.again = true
            break
          }
          log.warn(`schedule ${schedule.name}: ${count ?? 'many'} tick(s) from ${iso(tick)} to ${iso(last)} missed (${late ? 'later than the stale time' : 'no orchestrator ran then'}, and older than its backfill)`, {
            event: 'schedule', schedule: schedule.name, outcome: 'missed', cause: late ? 'late' : 'no-orchestrator', from: iso(tick), to: iso(last), count,
          })
          this.options.onTick?.(schedule.name, last, { outcome: 'missed', count })
          schedule.lastTickMs = last
          continue
        }
        const result = await store.tick(schedule, tick)
        if (result.outcome === 'lost') {
          this.again = true
          break
        }
        if (result.outcome === 'early') {
          this.clockOffset = result.nowMs - Date.now()
          earliest = Math.min(earliest, tick)
          break
        }
        this.logTick(schedule.name, tick, result)
        this.options.onTick?.(schedule.name, tick, result)
        schedule.lastTickMs = tick
      }
    }
    return earliest === Infinity ? Infinity : earliest - now()
  }

  private compile(schedule: ScheduleRow): CronSchedule | undefined {
    try {
      const compiled = compiledOf(schedule.cron, schedule.timezone)
      this.broken.delete(schedule.name)
      return compiled
    } catch (error) {
      if (!this.broken.has(schedule.name)) {
        this.broken.add(schedule.name)
        this.options.log.error(`schedule ${schedule.name}: ${(error as Error).message}; it does not tick until schedules:set fixes it`, { event: 'schedule', schedule: schedule.name })
      }
      return undefined
    }
  }

  private logTick(name: string, tick: number, result: TickOutcome): void {
    const fields = { event: 'schedule', schedule: name, tick: iso(tick), outcome: result.outcome }
    if (result.outcome === 'enqueued') {
      if (result.deduplicated) {
        this.options.log.error(`schedule ${name}: tick ${iso(tick)} found its run ${result.runId} already queued (enqueued twice?)`, { ...fields, runId: result.runId })
      } else {
        this.options.log.info(`schedule ${name}: tick ${iso(tick)} enqueued run ${result.runId}`, { ...fields, runId: result.runId })
      }
    } else if (result.outcome === 'skipped' && result.cause === 'mode') {
      this.options.log.info(`schedule ${name}: tick ${iso(tick)} skipped: the mode is ${result.mode}`, { ...fields, cause: 'mode', mode: result.mode })
    } else if (result.outcome === 'skipped') {
      this.options.log.info(`schedule ${name}: tick ${iso(tick)} skipped: run ${result.runId} of the previous tick is still pending or running (overlap skip)`, { ...fields, cause: 'overlap', runId: result.runId })
    }
  }
}

function countTicks(compiled: CronSchedule, from: number, to: number): number | null {
  let count = 1
  for (let t = from; t < to; count++) {
    if (count > MAX_COUNTED) return null
    const next = compiled.nextTick(t)
    if (next === null) break
    t = next
  }
  return count
}

function iso(ms: number): string {
  return new Date(ms).toISOString()
}
