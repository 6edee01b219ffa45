/**
 * The mode, drain and schema watch (SPEC §4, §5), and the upkeep of the live table:
 *   - every maintenance check interval: the drain check (runs of dead orchestrators handed back,
 *     a drain finished), the schema version (a newer pipeweave migrated it: finish and exit 4),
 *     and the sweep of finished runs a runbook left in task_runs;
 *   - right after a run finishes while the mode is waiting_for_maintenance: the drain check, so
 *     the end of a drain is seen at once;
 *   - every VACUUM_EVERY_CLAIMS runs claimed: VACUUM of task_runs. Each claim leaves the run's
 *     pending entry dead at the head of the claim index (and a finish, dead entries in the others)
 *     until a vacuum removes them; the claim reads them, and autovacuum looks at a table at most
 *     once a minute. A short live table is cheap to vacuum. And at each maintenance check, the
 *     tail of a burst (runs claimed since the last VACUUM, fewer than VACUUM_EVERY_CLAIMS): an
 *     idle queue's next claim does not read them, at the price of one VACUUM per interval.
 */
import type { Logger } from '../logger'
import type { DrainCheckResult, Mode } from '../maintenance/maintenance'
import type { Liveness } from './liveness'
import type { Repository } from './repository'

/**
 * Runs claimed by this orchestrator between two VACUUMs of task_runs: dead entries at the head of
 * a task's group in the claim index cost the claim about a buffer per 130, read twice (the skip
 * scan and the head). claim-cost.test.ts holds the claim within 2× of an empty queue with it.
 */
export const VACUUM_EVERY_CLAIMS = 2000

export interface WatchDeps {
  repo: Pick<Repository, 'drainCheck' | 'schemaVersion' | 'sweep' | 'vacuum'>
  liveness: Liveness
  log: Logger
  actor: string
  onMode(mode: Mode): void
  /** The schema is ahead of this binary: stop claiming, finish, exit 4. */
  onSchemaAhead(): void
  isStopping(): boolean
}

export class Watch {
  /** The newest migration this binary knows (set at start). */
  knownVersion = 0
  private checking?: Promise<void>
  private again = false
  private claimedSinceVacuum = 0
  private vacuuming?: Promise<void>
  private ticking?: Promise<void>

  constructor(private readonly deps: WatchDeps) {}

  /** The interval's work (one at a time: a tick still running when the next is due skips it). */
  tick(): Promise<void> {
    if (!this.ticking) this.ticking = this.tickOnce().finally(() => { this.ticking = undefined })
    return this.ticking
  }

  private async tickOnce(): Promise<void> {
    const { deps } = this
    try {
      await this.drainCheck()
      const version = await deps.repo.schemaVersion()
      if (version > this.knownVersion && !deps.isStopping()) {
        deps.log.error(`the database schema (migration ${version}) is newer than this pipeweave knows (${this.knownVersion}): finishing the runs in flight, then exiting 4 so the platform restarts the new version`, { event: 'schema-ahead' })
        deps.onSchemaAhead()
        return
      }
      const swept = await deps.repo.sweep()
      if (swept > 0) deps.log.info(`moved ${swept} finished run(s) found among the live ones (a runbook's UPDATE?) to the history`, { event: 'swept', count: swept })
      this.settle()
    } catch (error) {
      deps.liveness.trouble(error, 'maintenance check')
    }
  }

  /** A burst's tail: VACUUM the runs claimed since the last VACUUM, however few (each check). */
  settle(): void {
    if (this.claimedSinceVacuum > 0 && !this.vacuuming) this.vacuum(0)
  }

  /** Hand back runs of dead orchestrators, finish a drain; log what it found. */
  async drainCheck(): Promise<DrainCheckResult> {
    const check = await this.deps.repo.drainCheck(this.deps.liveness.reapStaleMs(), this.deps.actor)
    this.deps.liveness.back()
    this.deps.onMode(check.mode)
    this.logRecovered(check)
    return check
  }

  /** After a run finishes while draining: check now (once at a time, again if asked meanwhile). */
  drainMayBeDone(): void {
    if (this.checking) {
      this.again = true
      return
    }
    this.checking = (async () => {
      do {
        this.again = false
        try {
          await this.drainCheck()
        } catch (error) {
          this.deps.liveness.trouble(error, 'drain check')
        }
      } while (this.again && !this.deps.isStopping())
    })().finally(() => { this.checking = undefined })
  }

  /** Count claimed runs; VACUUM task_runs every VACUUM_EVERY_CLAIMS of them. */
  claimed(count: number): void {
    this.claimedSinceVacuum += count
    if (!this.vacuuming) this.vacuum(VACUUM_EVERY_CLAIMS)
  }

  /**
   * VACUUM once `mark` runs were claimed since the last one. One VACUUM at a time. The runs
   * claimed while one ran count towards the next, which starts as soon as it ends if they reach
   * VACUUM_EVERY_CLAIMS: a burst that ends during a VACUUM leaves no more than that many dead
   * entries behind, and the next maintenance check (settle) takes those.
   */
  private vacuum(mark: number): void {
    if (this.claimedSinceVacuum < mark || this.deps.isStopping()) return
    this.vacuuming = (async () => {
      do {
        this.claimedSinceVacuum = 0
        try {
          await this.deps.repo.vacuum()
        } catch (error) {
          this.deps.log.debug(`VACUUM of task_runs failed: ${(error as Error).message}`)
          return
        }
      } while (this.claimedSinceVacuum >= VACUUM_EVERY_CLAIMS && !this.deps.isStopping())
    })().finally(() => { this.vacuuming = undefined })
  }

  /** Resolves when no check, tick or vacuum of this watch is running (the shutdown waits for them). */
  async stopped(): Promise<void> {
    await Promise.all([this.ticking, this.checking, this.vacuuming])
  }

  /** The runs a drain check took back from dead orchestrators: a count, then a line for each. */
  private logRecovered(check: DrainCheckResult): void {
    if (check.lostRuns === 0) return
    const { log } = this.deps
    log.warn(`returned ${check.lostRuns} run(s) held by dead orchestrators`, { event: 'recovered', count: check.lostRuns })
    for (const r of check.lost) {
      const fields = { event: 'run', runId: r.id, taskId: r.taskId, attempt: r.attempt, durationMs: null, errorCode: 'ORCHESTRATOR_LOST' }
      if (r.outcome === 'retried') {
        log.info(`run ${r.id} handed back to pending: its orchestrator was lost (attempt ${r.attempt} counted)`, { ...fields, status: 'pending' })
      } else {
        log.error(`run ${r.id} ${r.outcome === 'timeout' ? 'timed out' : 'failed'}: its orchestrator was lost on its last attempt (${r.attempt}); moved to the DLQ`, { ...fields, status: r.outcome })
      }
    }
  }
}
