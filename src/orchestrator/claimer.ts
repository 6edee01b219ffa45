/**
 * Claiming and capacity (SPEC §5). `--concurrency` bounds the dispatches awaiting a worker's
 * answer; an answer in hand waits for its batched write without a slot, and at most
 * `concurrency` of those wait (beyond that, answers keep their slots). One claim is in flight at a
 * time: it asks for every free slot, and the slots that free while it runs go to the next one.
 *
 * A claim runs when slots are free and work may be due: the last claim filled every slot it
 * asked for, work was notified (LISTEN, a follow-up, a retry due at once), a poll interval
 * passed since the queue last looked empty, or the moment came that the last claim named for work
 * it held back by time (a rate limit's next free slot, an open breaker's end: SPEC §7, such runs
 * are taken as soon as the window allows, not at the next poll).
 */
import { setImmediate as nextTurn } from 'node:timers/promises'
import { SQLSTATE, isConnectionLoss } from '../db/errors'
import type { Logger } from '../logger'
import type { Mode } from '../maintenance/maintenance'
import type { Liveness } from './liveness'
import type { ClaimedRun, Repository } from './repository'
import { Wakeup, delay } from './wakeup'

export interface ClaimerDeps {
  repo: Pick<Repository, 'claim' | 'release' | 'workRemains'>
  liveness: Liveness
  log: Logger
  concurrency: number
  pollIntervalMs: number
  untilIdle: boolean
  forced: AbortSignal
  isStopping(): boolean
  /** Runs awaiting a worker, and answers awaiting their write. */
  load(): { dispatching: number; unwritten: number }
  /** Every run this process holds `running` (kept when runs held unknowingly are handed back). */
  heldIds(): string[]
  start(run: ClaimedRun): void
  /** Runs claimed (the upkeep of the live table counts them). */
  claimed(count: number): void
  onMode(mode: Mode): void
  /** --until-idle found nothing due or running. */
  onIdle(): void
  /** A claim found due runs of this task held back by its rate limit (/metrics). */
  onRateLimited?(taskId: string): void
}

/**
 * Past the moment a claim named, by this much: a rate slot frees strictly after its time plus
 * the period, and the server's clock reads it a round trip after ours.
 */
const WAKE_MARGIN_MS = 2

export class Claimer {
  readonly wakeup = new Wakeup()
  /** Slots promised to the claim in flight. */
  private reserved = 0
  private due = true
  /**
   * Bumped whenever work may have become due (workDue, resultsWritten): a claim that took less
   * than it asked for concludes "nothing more is due" only if nothing was notified while it ran
   * (its snapshot may predate the enqueue that notified).
   */
  private dueSeq = 0
  private lastLookedEmpty = 0
  /** performance.now() when work held back by time may be claimable (the last claim's word). */
  private wakeAt: number | undefined
  /**
   * A claim failed with the connection: it may have committed on the server, its answer lost.
   * Those runs are `running` under our id, unknown to us, and no crash recovery will take them
   * back while we heartbeat: hand them back before the next claim.
   */
  private inDoubt = false
  private gateBlocked = false

  constructor(private readonly deps: ClaimerDeps) {}

  /** New work may be due (a notification, a follow-up, a retry due at once). */
  workDue(): void {
    this.due = true
    this.dueSeq += 1
    this.wakeup.notify()
  }

  /** A slot freed: claim for it if work may be due. */
  slotFreed(): void {
    if (this.due) this.wakeup.notify()
  }

  /**
   * Results were written: a task at its concurrency limit may have room now (its runs counted as
   * running until their results were in), answers that held slots free them, and --until-idle may
   * be done.
   */
  resultsWritten(): void {
    this.due = true
    this.dueSeq += 1
    this.wakeup.notify()
  }

  /** Runs may be held in the database without this process knowing: hand them back first. */
  heldUnknown(): void {
    this.inDoubt = true
  }

  private freeSlots(): number {
    const { dispatching, unwritten } = this.deps.load()
    const c = this.deps.concurrency
    return c - dispatching - this.reserved - Math.max(0, unwritten - c)
  }

  async loop(): Promise<void> {
    const { deps } = this
    let backoff = 250
    let unregistered = 0
    while (!deps.isStopping()) {
      // Claim in the next turn of the event loop, not now: answers read together free their
      // slots one after another in this turn, and one claim then fills them all. With nothing in
      // flight there is nothing to wait for: a run notified to an idle orchestrator goes at once.
      const load = deps.load()
      if (load.dispatching > 0 || load.unwritten > 0) await nextTurn()
      if (deps.isStopping()) break
      if (!this.due && performance.now() - this.lastLookedEmpty >= deps.pollIntervalMs) this.due = true
      if (this.wakeAt !== undefined && performance.now() >= this.wakeAt) {
        this.due = true
        this.wakeAt = undefined
      }
      const free = this.freeSlots()
      if (free > 0 && this.due) {
        const dueSeq = this.dueSeq
        this.reserved += free
        let claimed: ClaimedRun[] | undefined
        try {
          if (this.inDoubt) await this.releaseUnknown()
          const result = await deps.repo.claim(free, deps.liveness.leaseMs)
          deps.liveness.back()
          backoff = 250
          this.gateBlocked = false
          if (result.state === 'unregistered') {
            // Reaped (a pause, an outage) or our heartbeat is too old: register, then claim.
            unregistered += 1
            if (unregistered > 1) await delay(Math.min(250 * unregistered, 5000), deps.forced)
            await deps.liveness.reregister()
            continue
          }
          unregistered = 0
          deps.onMode(result.state)
          claimed = result.runs
          this.wakeAt = result.wakeInMs === null ? undefined : performance.now() + result.wakeInMs + WAKE_MARGIN_MS
          for (const taskId of result.rateHeld) deps.onRateLimited?.(taskId)
        } catch (error) {
          if (isConnectionLoss(error)) this.inDoubt = true
          if ((error as { code?: string }).code === SQLSTATE.LOCK_NOT_AVAILABLE) {
            // The maintenance gate stayed held past the claim's lock_timeout (migration 002):
            // someone holds a mode change open. Nothing was claimed; try again shortly.
            if (!this.gateBlocked) deps.log.warn('the maintenance gate is held by an open mode change (a transaction on orchestrator_state?); claims wait for it', { event: 'gate-held' })
            this.gateBlocked = true
          } else {
            deps.liveness.trouble(error, 'claiming runs')
          }
          await delay(backoff, deps.forced)
          backoff = Math.min(backoff * 2, 5000)
          continue
        } finally {
          this.reserved -= free
        }
        if (claimed.length > 0) deps.claimed(claimed.length)
        for (const run of claimed) deps.start(run)
        if (claimed.length === free) continue // every slot filled: more may be due
        if (this.dueSeq !== dueSeq) continue // notified while it ran: look again
        this.due = false
        this.lastLookedEmpty = performance.now()
      }
      if (deps.isStopping()) break
      if (deps.untilIdle && !this.due) {
        const { dispatching, unwritten } = deps.load()
        if (dispatching === 0 && unwritten === 0 && this.reserved === 0) {
          try {
            if (!(await deps.repo.workRemains())) {
              deps.onIdle()
              break
            }
          } catch (error) {
            deps.liveness.trouble(error, 'checking for work')
          }
        }
      }
      const untilPoll = this.due ? deps.pollIntervalMs : Math.max(1, deps.pollIntervalMs - (performance.now() - this.lastLookedEmpty))
      const untilWake = this.wakeAt === undefined ? untilPoll : Math.max(1, this.wakeAt - performance.now())
      await this.wakeup.wait(Math.min(untilPoll, untilWake))
    }
  }

  /** Runs we hold in the database but not in memory (a claim whose answer was lost) go back. */
  private async releaseUnknown(): Promise<void> {
    const released = await this.deps.repo.release(this.deps.heldIds())
    this.inDoubt = false
    if (released.length === 0) return
    this.deps.log.warn(`handed back ${released.length} run(s) held in the database but not here (a claim whose answer was lost with the connection)`, { event: 'released', count: released.length })
    for (const r of released) {
      this.deps.log.info(`run ${r.id} handed back to pending (attempt ${r.attempt} kept)`, { event: 'run', runId: r.id, taskId: r.taskId, attempt: r.attempt, status: 'pending', durationMs: null })
    }
  }
}
