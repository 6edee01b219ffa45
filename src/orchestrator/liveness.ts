/**
 * Health, heartbeat and outages (SPEC §5): this orchestrator's registration and the lease it
 * gives, and what a database outage changes.
 *
 * The lease: an orchestrator whose heartbeat is older than the stale time is taken for dead, its
 * row reaped and its runs handed to others. So before each dispatch it checks locally that its
 * last confirmed heartbeat (timed from when that heartbeat was sent, on the monotonic clock) is
 * younger than the stale time minus a margin; past that it hands the run back instead of sending
 * it. A claim asks the database the same (pipeweave_claim_gate_v1), and an orchestrator whose row
 * is gone registers again before it claims.
 */
import { isConnectionLoss } from '../db/errors'
import type { Logger } from '../logger'
import type { Repository } from './repository'

export interface LivenessOptions {
  staleMs: number
  heartbeatIntervalMs: number
  log: Logger
  /** The database answered again after an outage. */
  onBack?: () => void
}

export class Liveness {
  /** performance.now() when the last heartbeat that succeeded was sent; -Infinity before any. */
  private confirmedAt = -Infinity
  /** Date.now() of the last heartbeat that succeeded (/healthz). */
  private lastHeartbeatWall?: number
  private outage = false
  private outageStartedAt?: number
  private outageLastedMs = 0
  private outageGraceUntil = 0
  private beating?: Promise<void>
  private registering?: Promise<void>
  private timer?: NodeJS.Timeout
  private stopped = false
  /** Set once start-up has registered: a later insert is a re-registration worth a warning. */
  private registered = false

  constructor(private readonly repo: Pick<Repository, 'heartbeat' | 'deregister'>, private readonly options: LivenessOptions) {}

  /** How long a confirmed heartbeat is good for sending runs and claiming. */
  get leaseMs(): number {
    return this.options.staleMs - Math.max(1, Math.floor(this.options.staleMs / 4))
  }

  /** The lease holds: runs may be sent. */
  leaseValid(): boolean {
    return performance.now() - this.confirmedAt < this.leaseMs
  }

  /** Date.now() of the last successful heartbeat, for /healthz. */
  lastHeartbeat(): number | undefined {
    return this.lastHeartbeatWall
  }

  isDown(): boolean {
    return this.outage
  }

  /** Register (start-up): errors propagate. */
  async register(): Promise<void> {
    const sent = performance.now()
    await this.repo.heartbeat()
    this.confirm(sent)
    this.registered = true
  }

  /** Heartbeat on an interval from now on. */
  start(): void {
    this.timer = setInterval(() => void this.beat(), this.options.heartbeatIntervalMs)
  }

  /**
   * The claim found this orchestrator unregistered (reaped after a pause or an outage, or its
   * heartbeat too old): register again now, once however many ask.
   */
  reregister(): Promise<void> {
    if (!this.registering) {
      this.registering = this.beat().finally(() => { this.registering = undefined })
    }
    return this.registering
  }

  /** One heartbeat; an outage is recorded, never thrown. */
  beat(): Promise<void> {
    if (this.stopped) return Promise.resolve()
    if (!this.beating) {
      this.beating = (async () => {
        const sent = performance.now()
        try {
          const { inserted } = await this.repo.heartbeat()
          this.confirm(sent)
          this.back()
          if (inserted && this.registered) {
            this.options.log.warn('this orchestrator had been taken for dead (its heartbeat was older than ORCHESTRATOR_STALE_MS) and registered again', { event: 'reregistered' })
          }
        } catch (error) {
          this.trouble(error, 'heartbeat')
        } finally {
          this.beating = undefined
        }
      })()
    }
    return this.beating
  }

  /** No heartbeat after this (the row is about to be deleted: an upsert landing after would bring back a ghost). */
  async stop(): Promise<void> {
    this.stopped = true
    clearInterval(this.timer)
    await this.beating?.catch(() => undefined)
  }

  private confirm(sentAt: number): void {
    if (sentAt > this.confirmedAt) this.confirmedAt = sentAt
    this.lastHeartbeatWall = Date.now()
  }

  /** A database operation failed: note an outage when it is the connection. */
  trouble(error: unknown, doing: string): void {
    if (!isConnectionLoss(error)) {
      this.options.log.error(`${doing} failed: ${(error as Error).message}`)
      return
    }
    if (!this.outage) {
      this.outage = true
      this.outageStartedAt = Date.now()
      this.options.log.error(`database unavailable while ${doing} (${(error as Error).message}); retrying, runs in flight carry on`, { event: 'db-down' })
    }
  }

  /** A database operation succeeded. */
  back(): void {
    if (!this.outage) return
    this.outage = false
    const now = Date.now()
    this.outageLastedMs = now - (this.outageStartedAt ?? now)
    this.outageGraceUntil = now + this.options.staleMs
    this.options.log.info('database connection restored', { event: 'db-up', outageMs: this.outageLastedMs })
    // Our own heartbeat first, before any drain check of ours or of others can find it stale.
    void this.beat()
    this.options.onBack?.()
  }

  /**
   * The heartbeat age past which this orchestrator's drain checks take others for dead. No
   * heartbeat can land while the database is unreachable, so right after an outage every
   * orchestrator looks stale though all may be alive: until the others have had a full stale
   * period of a reachable database to heartbeat again, the outage does not count towards their age.
   */
  reapStaleMs(): number {
    const now = Date.now()
    if (this.outage && this.outageStartedAt !== undefined) return this.options.staleMs + (now - this.outageStartedAt)
    if (now < this.outageGraceUntil) return this.options.staleMs + this.outageLastedMs
    return this.options.staleMs
  }
}
