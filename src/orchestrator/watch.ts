/**
 * The mode, drain and schema watch (SPEC §4, §5), and the upkeep of the live table:
 *   - every maintenance check interval: the drain check (runs of dead orchestrators handed back,
 *     a drain finished), the schema version (a newer pipeweave migrated it: finish and exit 4),
 *     and the sweep of finished runs a runbook left in task_runs;
 *   - right after a run finishes while the mode is waiting_for_maintenance: the drain check, so
 *     the end of a drain is seen at once;
 *   - every VACUUM_EVERY_RUNS finished runs: VACUUM of task_runs. Each claim and each finish
 *     leaves dead entries at the head of the claim index until a vacuum removes them, and
 *     autovacuum looks at a table at most once a minute; a short live table is cheap to vacuum.
 */
import type { Logger } from '../logger'
import type { DrainCheckResult, Mode } from '../maintenance/maintenance'
import type { Liveness } from './liveness'
import type { Repository } from './repository'

/** Finished runs between two VACUUMs of task_runs by this orchestrator. */
export const VACUUM_EVERY_RUNS = 5000

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
  private checking = false
  private again = false
  private finishedSinceVacuum = 0
  private vacuuming?: Promise<void>

  constructor(private readonly deps: WatchDeps) {}

  /** The interval's work. */
  async tick(): Promise<void> {
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
    } catch (error) {
      deps.liveness.trouble(error, 'maintenance check')
    }
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
    this.checking = true
    void (async () => {
      do {
        this.again = false
        try {
          await this.drainCheck()
        } catch (error) {
          this.deps.liveness.trouble(error, 'drain check')
        }
      } while (this.again)
      this.checking = false
    })()
  }

  /** Count finished runs; VACUUM task_runs every VACUUM_EVERY_RUNS of them. */
  finished(count: number): void {
    this.finishedSinceVacuum += count
    if (this.finishedSinceVacuum < VACUUM_EVERY_RUNS || this.vacuuming) return
    this.finishedSinceVacuum = 0
    this.vacuuming = this.deps.repo.vacuum()
      .catch((error) => this.deps.log.debug(`VACUUM of task_runs failed: ${(error as Error).message}`))
      .finally(() => { this.vacuuming = undefined })
  }

  async stopped(): Promise<void> {
    await this.vacuuming
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
