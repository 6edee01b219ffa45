/**
 * `pipeweave run` (SPEC §5): claim due runs, dispatch them to workers, record the results; retry,
 * dead-letter, recover runs of dead orchestrators, take part in the drain, shut down gracefully.
 * Any number of these run side by side against one PostgreSQL: every rule that spans them is
 * enforced in the database (migration 002), never in this process.
 */
import * as crypto from 'node:crypto'
import * as os from 'node:os'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { diffSchema, getAppliedMigrations, readMigrationFiles, refuseSchemaAhead, runMigrations } from '../api/migrations'
import { ORCHESTRATION_DEFAULTS } from '../api/settings'
import type { Database } from '../db/database'
import { SQLSTATE, isConnectionLoss } from '../db/errors'
import { RefusedError } from '../errors'
import { type Logger, silentLogger } from '../logger'
import { defaultActor, drainCheck, type DrainCheckResult, type Mode } from '../maintenance/maintenance'
import * as sql from '../sql/migrations'
import { type ClaimAlong, CompletionWriter, type Reservation } from './completions'
import { type DispatchResult, Dispatcher } from './dispatcher'
import { Listener } from './listener'
import { type ClaimedRun, type Failure, type Repository, createRepository } from './repository'
import { Wakeup, delay } from './wakeup'

export type RunOutcome = 'completed' | 'cached' | 'retried' | 'failed' | 'timeout'

/** Observers for metrics and health (the operator surface); all optional. */
export interface OrchestratorHooks {
  onOutcome?(taskId: string, outcome: RunOutcome): void
  onDispatch?(taskId: string, seconds: number): void
  onInFlight?(count: number): void
  onMode?(mode: Mode): void
}

export interface OrchestratorOptions {
  db: Database
  concurrency?: number
  pollIntervalMs?: number
  maintenanceCheckIntervalMs?: number
  shutdownTimeoutMs?: number
  /** ORCHESTRATOR_STALE_MS: heartbeats older than this mark an orchestrator dead. */
  staleMs?: number
  heartbeatIntervalMs?: number
  autoMigrate?: boolean
  /** Stop (exit 0) once there is no due pending and no running run. */
  untilIdle?: boolean
  /** LISTEN/NOTIFY for prompt pickup; false relies on polling alone (PgBouncer transaction pooling). */
  listen?: boolean
  /** PIPEWEAVE_SECRET_KEY: sign dispatches. */
  secretKey?: string
  logger?: Logger
  hooks?: OrchestratorHooks
  id?: string
}

export interface Orchestrator {
  readonly id: string
  /** Check the schema (migrating with autoMigrate), register, and start the loops. */
  start(): Promise<void>
  /** Stop claiming, let in-flight runs finish within the shutdown timeout, hand back the rest. */
  stop(options?: { force?: boolean }): Promise<{ exitCode: number }>
  /** Resolves when the orchestrator has stopped, for whatever reason. */
  readonly done: Promise<{ exitCode: number }>
  /** Registered, schema current, not shutting down. */
  isReady(): boolean
  mode(): Mode | undefined
  inFlight(): number
}

export function createOrchestrator(options: OrchestratorOptions): Orchestrator {
  return new RunLoop(options)
}

interface InFlight {
  run: ClaimedRun
  /** Stop its dispatch (shutdown); a run not yet dispatched is then not dispatched at all. */
  abort(): void
  promise: Promise<void>
  /** Shutdown aborted its dispatch: hand it back to pending. */
  aborted: boolean
  /** performance.now() at the claim. */
  startedAt: number
  /** Its slot was filled by the claim that went with its completion: no need to wake the loop. */
  refilled: boolean
  abortRequested?: boolean
  /** Cancels the dispatch in flight. */
  cancel?: () => void
}

class RunLoop implements Orchestrator {
  readonly id: string
  readonly done: Promise<{ exitCode: number }>
  private resolveDone!: (value: { exitCode: number }) => void

  private readonly db: Database
  private readonly log: Logger
  private readonly hooks: OrchestratorHooks
  private readonly concurrency: number
  private readonly pollIntervalMs: number
  private readonly maintenanceCheckIntervalMs: number
  private readonly shutdownTimeoutMs: number
  private readonly staleMs: number
  private readonly heartbeatIntervalMs: number
  private readonly actor = defaultActor()
  private readonly repo: Repository
  private readonly completions: CompletionWriter
  private readonly dispatcher: Dispatcher
  private readonly wakeup = new Wakeup()
  private readonly forced = new AbortController()
  private readonly running = new Map<string, InFlight>()
  private listener?: Listener
  private timers: NodeJS.Timeout[] = []
  private loopDone?: Promise<void>
  private starting?: Promise<void>
  private started = false
  private stopping?: Promise<{ exitCode: number }>
  private exitCode = 0
  private knownVersion = 0
  private currentMode?: Mode
  private outage = false
  private gateBlocked = false
  private deregistered = false
  private heartbeating?: Promise<void>
  private outageStartedAt?: number
  private outageLastedMs = 0
  private outageGraceUntil = 0
  private drainChecking = false
  private drainAgain = false
  /**
   * A claim failed with the connection: it may have committed on the server, its answer lost.
   * Those runs are `running` under our id, unknown to us, and no crash recovery will take them
   * back while we heartbeat: hand them back before the next claim.
   */
  private claimInDoubt = false
  /** In `orchestrators`: only then is there anything to hand back or deregister at stop. */
  private registered = false
  /** Slots promised to claims sent and not yet answered (the loop's, or one going with completions). */
  private claimsInFlight = 0
  /** Claims that went with batches of completions and have no answer yet: settle when they do (or fail). */
  private readonly claimsAlong = new Set<Promise<void>>()

  constructor(private readonly options: OrchestratorOptions) {
    this.db = options.db
    this.log = options.logger ?? silentLogger
    this.hooks = options.hooks ?? {}
    this.concurrency = options.concurrency ?? ORCHESTRATION_DEFAULTS.concurrency
    this.pollIntervalMs = options.pollIntervalMs ?? ORCHESTRATION_DEFAULTS.pollIntervalMs
    this.maintenanceCheckIntervalMs = options.maintenanceCheckIntervalMs ?? ORCHESTRATION_DEFAULTS.maintenanceCheckIntervalMs
    this.shutdownTimeoutMs = options.shutdownTimeoutMs ?? ORCHESTRATION_DEFAULTS.shutdownTimeoutMs
    this.staleMs = options.staleMs ?? ORCHESTRATION_DEFAULTS.orchestratorStaleMs
    // Several heartbeats per stale period, so one slow or lost heartbeat never looks like a death.
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? Math.max(100, Math.min(5000, Math.floor(this.staleMs / 4)))
    this.id = options.id ?? `${os.hostname()}-${process.pid}-${crypto.randomBytes(3).toString('hex')}`
    this.repo = createRepository(this.db, this.id, this.concurrency)
    this.completions = new CompletionWriter(this.repo, this.claimAlong())
    this.dispatcher = new Dispatcher({ secretKey: options.secretKey, maxSockets: this.concurrency })
    this.done = new Promise((resolve) => { this.resolveDone = resolve })
  }

  isReady(): boolean {
    return this.started && !this.stopping && !this.outage
  }

  mode(): Mode | undefined {
    return this.currentMode
  }

  inFlight(): number {
    return this.running.size
  }

  // ------------------------------------------------------------------------------------------
  // Start

  start(): Promise<void> {
    if (!this.starting) this.starting = this.startUp()
    return this.starting
  }

  /**
   * A stop() may come at any await below (a SIGTERM during the migrations): then nothing more is
   * started, and the shutdown, which waits for this, undoes what was.
   */
  private async startUp(): Promise<void> {
    await this.checkSchemaAtStart()
    if (this.stopping) return
    await this.repo.heartbeat()
    this.registered = true
    // Recover runs of orchestrators that died while none was watching (SPEC §5: "the next start").
    const check = await drainCheck(this.db, { staleMs: this.staleMs, actor: this.actor })
    this.observeMode(check.mode)
    this.logRecovered(check)
    if (this.options.listen !== false) {
      this.listener = new Listener(this.db, ['pipeweave_runs', 'pipeweave_mode'], (channel) => {
        if (channel === 'pipeweave_mode') this.log.debug('mode change notified')
        this.wakeup.notify()
      }, this.log)
      await this.listener.start()
    }
    if (this.stopping) return
    this.every(this.heartbeatIntervalMs, () => this.heartbeat())
    this.every(this.maintenanceCheckIntervalMs, () => this.maintenanceTick())
    this.started = true
    this.log.info(`orchestrator ${this.id} started`, {
      event: 'started', orchestratorId: this.id, concurrency: this.concurrency, mode: this.currentMode,
      listen: this.options.listen !== false,
    })
    this.loopDone = this.loop().catch((error) => {
      this.log.error(`the claim loop failed: ${(error as Error).message}`)
      this.exitCode = 1
      void this.stop()
    })
  }

  private async checkSchemaAtStart(): Promise<void> {
    const { files } = readMigrationFiles()
    this.knownVersion = Math.max(0, ...files.map((f) => f.id))
    const { pending, unknown } = diffSchema(files, (await getAppliedMigrations(this.db)) ?? [])
    refuseSchemaAhead(unknown, 'run the pipeweave version that applied them')
    if (pending.length === 0) return
    if (!this.options.autoMigrate) {
      throw new RefusedError('MIGRATIONS_PENDING', `refusing to start: ${pending.length} migration(s) pending (${pending.map((f) => f.fileName).join(', ')})`, {
        hint: 'run `pipeweave db:migrate` first, or start with --auto-migrate (AUTO_MIGRATE=true)',
      })
    }
    this.log.info(`applying ${pending.length} pending migration(s) (--auto-migrate)`)
    await runMigrations(this.db, { logger: this.log })
  }

  private every(ms: number, fn: () => Promise<void>): void {
    let busy = false
    const timer = setInterval(() => {
      if (busy) return
      busy = true
      void fn().finally(() => { busy = false })
    }, ms)
    this.timers.push(timer)
  }

  // ------------------------------------------------------------------------------------------
  // The claim loop

  private async loop(): Promise<void> {
    let backoff = 250
    while (!this.stopping) {
      // Claim in the next turn of the event loop, not now: runs whose results were written
      // together free their slots one after another in this turn, and one claim then fills them all.
      await nextTurn()
      if (this.stopping) break
      const capacity = this.concurrency - this.running.size - this.claimsInFlight
      let claimed = 0
      if (capacity > 0) {
        this.claimsInFlight += capacity
        try {
          if (this.claimInDoubt) await this.releaseUnknownClaims()
          const runs = await this.repo.claim(capacity)
          this.claimsInFlight -= capacity
          this.databaseBack()
          this.gateBlocked = false
          backoff = 250
          claimed = runs.length
          for (const run of runs) this.startRun(run)
        } catch (error) {
          this.claimsInFlight -= capacity
          if (isConnectionLoss(error)) this.claimInDoubt = true
          if ((error as { code?: string }).code === SQLSTATE.LOCK_NOT_AVAILABLE) {
            // The maintenance gate stayed held past the claim's lock_timeout (migration 002):
            // someone holds a mode change open. Nothing was claimed; try again shortly.
            if (!this.gateBlocked) this.log.warn('the maintenance gate is held by an open mode change (a transaction on orchestrator_state?); claims wait for it', { event: 'gate-held' })
            this.gateBlocked = true
          } else {
            this.databaseTrouble(error, 'claiming runs')
          }
          await delay(backoff, this.forced.signal)
          backoff = Math.min(backoff * 2, 5000)
          continue
        }
      }
      if (this.stopping) break
      if (claimed > 0 && claimed === capacity) continue // more may be due: claim as slots free
      if (this.options.untilIdle && claimed === 0 && this.running.size === 0) {
        try {
          if (!(await this.repo.workRemains())) {
            this.log.info('no due or running task runs left (--until-idle): stopping', { event: 'idle' })
            void this.stop()
            break
          }
        } catch (error) {
          this.databaseTrouble(error, 'checking for work')
        }
      }
      await this.wakeup.wait(this.pollIntervalMs)
    }
  }

  /**
   * Claiming along with completions (CompletionWriter): the slots a batch frees, and any others
   * free and not yet being claimed, are claimed in the batch's own statement. Not while stopping,
   * nor while a lost claim answer is in doubt (the loop hands those runs back first).
   */
  private claimAlong(): ClaimAlong {
    type Held = Reservation & { settle: () => void }
    return {
      reserve: (freed) => {
        if (this.stopping || !this.started || this.claimInDoubt) return undefined
        const count = this.concurrency - this.running.size + freed - this.claimsInFlight
        if (count <= 0) return undefined
        this.claimsInFlight += count
        let settle!: () => void
        const done = new Promise<void>((resolve) => { settle = resolve })
        this.claimsAlong.add(done)
        return { count, settle: () => { this.claimsAlong.delete(done); settle() } } satisfies Held
      },
      claimed: (reservation, runs, batch) => {
        this.claimsInFlight -= reservation.count
        this.databaseBack()
        for (const run of runs) this.startRun(run)
        if (runs.length === reservation.count) {
          // Every free slot is filled: the completed runs need not wake the loop to claim again.
          // (A shorter answer wakes it as usual: a limit, a queue gone empty, --until-idle.)
          for (const c of batch) {
            const entry = this.running.get(c.runId)
            if (entry) entry.refilled = true
          }
        }
        ;(reservation as Held).settle()
      },
      failed: (reservation, error) => {
        this.claimsInFlight -= reservation.count
        if (isConnectionLoss(error)) this.claimInDoubt = true
        ;(reservation as Held).settle()
      },
    }
  }

  /** Runs we hold in the database but not in memory (a claim whose answer was lost) go back. */
  private async releaseUnknownClaims(): Promise<void> {
    // A claim that went with completions and is still out: its runs are ours once it answers.
    while (this.claimsAlong.size > 0) await Promise.all([...this.claimsAlong])
    const released = await this.repo.releaseHeld([...this.running.keys()])
    this.claimInDoubt = false
    if (released.length === 0) return
    this.log.warn(`handed back ${released.length} run(s) claimed while the database connection failed (the claim committed, its answer was lost)`, { event: 'released', count: released.length })
    for (const r of released) {
      this.log.info(`run ${r.id} handed back to pending (attempt ${r.attempt} kept)`, { event: 'run', runId: r.id, taskId: r.taskId, attempt: r.attempt, status: 'pending', durationMs: null })
    }
  }

  private startRun(run: ClaimedRun): void {
    const entry: InFlight = {
      run, promise: Promise.resolve(), aborted: false, startedAt: performance.now(), refilled: false,
      abort: () => { entry.abortRequested = true; entry.cancel?.() },
    }
    this.running.set(run.id, entry)
    this.hooks.onInFlight?.(this.running.size)
    // durationMs: null: nothing has been measured yet (the key is there on every state change).
    this.log.info(`run ${run.id} started`, { event: 'run', runId: run.id, taskId: run.taskId, attempt: run.attempt, status: 'running', durationMs: null })
    entry.promise = this.execute(entry)
      .catch(async (error) => {
        // A bug or an unforeseen failure between claim and record: record it as a failed attempt
        // rather than leave the run `running` under a live orchestrator that will never finish it.
        this.log.error(`run ${run.id}: ${(error as Error).message}`, { runId: run.id, taskId: run.taskId })
        await this.recordFailure(run, { error: `pipeweave failed to run it: ${(error as Error).message}`, code: 'INTERNAL_ERROR', retryable: true, timedOut: false },
          Math.round(performance.now() - entry.startedAt)).catch(() => undefined)
      })
      .finally(() => {
        this.running.delete(run.id)
        this.hooks.onInFlight?.(this.running.size)
        // A freed slot: claim again (a task at its concurrency limit may have room now), unless
        // the claim that went with its completion has filled it already.
        if (!entry.refilled) this.wakeup.notify()
      })
  }

  private async execute(entry: InFlight): Promise<void> {
    const { run } = entry
    const fields = { runId: run.id, taskId: run.taskId, attempt: run.attempt }
    if (run.cached) {
      // An unexpired idempotency entry holds this key's result: complete without a dispatch.
      const written = await this.persist(run, () => this.completions.complete({ runId: run.id, output: run.cachedOutput, runNext: [], fromCache: true }))
      const result = written.ok ? written.value : undefined
      if (result?.completed) {
        this.hooks.onOutcome?.(run.taskId, 'cached')
        this.log.info(`run ${run.id} completed from the idempotency cache`, { event: 'run', ...fields, status: 'completed', cached: true, durationMs: 0 })
      }
      if (result?.mode === 'waiting_for_maintenance') this.scheduleDrainCheck()
      return
    }

    if (entry.abortRequested) {
      entry.aborted = true
      return
    }
    const started = performance.now()
    const sent = this.dispatcher.send(run.baseUrl, {
      runId: run.id,
      taskId: run.taskId,
      pipelineRunId: run.pipelineRunId,
      attempt: run.attempt,
      codeVersion: run.codeVersion,
      codeHash: run.codeHash,
      input: run.input,
      inputPath: run.inputPath,
      previousAttempts: run.previousAttempts,
      timeoutMs: run.timeoutSeconds * 1000,
      idempotencyKey: run.idempotencyKey,
    })
    entry.cancel = sent.cancel
    const result: DispatchResult = await sent.result
    entry.cancel = undefined
    const durationMs = Math.round(performance.now() - started)
    if (result.kind === 'aborted') {
      entry.aborted = true
      return
    }
    this.hooks.onDispatch?.(run.taskId, durationMs / 1000)

    if (result.kind === 'completed') {
      const written = await this.persist(run, () => this.completions.complete({ runId: run.id, output: result.output, runNext: result.runNext, fromCache: false }))
      if (written.ok) {
        const done = written.value
        if (!done.completed) {
          this.log.warn(`run ${run.id} finished, but it had been handed to another orchestrator (this one looked dead); result discarded`, { event: 'fenced', ...fields })
          return
        }
        this.hooks.onOutcome?.(run.taskId, 'completed')
        this.log.info(`run ${run.id} completed`, { event: 'run', ...fields, status: 'completed', durationMs })
        if (done.ignoredNext.length > 0) {
          this.log.warn(`run ${run.id} asked for follow-ups its task does not allow: ${done.ignoredNext.join(', ')} (ignored)`, { runId: run.id, taskId: run.taskId })
        }
        followUpTasks(result.runNext, done.ignoredNext).forEach((taskId, i) => {
          const followUp = done.followUps[i]
          if (followUp) this.log.info(`run ${followUp} queued as a follow-up of ${run.id}`, { event: 'run', runId: followUp, taskId, attempt: 1, status: 'pending', durationMs: null, parentRunId: run.id })
        })
        if (done.mode === 'waiting_for_maintenance') this.scheduleDrainCheck()
        return
      }
      if (!written.error) return // forced stop during an outage: the shutdown hands the run back
      // The database refused the worker's answer itself (a NUL character in the output, say):
      // record that as this attempt's failure rather than leave the run `running` for ever.
      await this.recordFailure(run, {
        error: `the worker's result could not be stored: ${(written.error as Error).message}`,
        code: 'RESULT_REJECTED', retryable: true, timedOut: false,
      }, durationMs)
      return
    }

    await this.recordFailure(run, result, durationMs)
  }

  /** Record a failed attempt (retry or DLQ) and log it. */
  private async recordFailure(run: ClaimedRun, failure: Failure, durationMs: number): Promise<void> {
    const fields = { runId: run.id, taskId: run.taskId, attempt: run.attempt }
    let written = await this.persist(run, () => this.repo.fail(run.id, failure))
    if (!written.ok && written.error) {
      // Not even the failure could be written: write one that carries nothing from the worker.
      failure = { error: `the worker's answer could not be recorded (${failure.code}): ${(written.error as Error).message}`, code: 'RESULT_NOT_RECORDED', retryable: failure.retryable, timedOut: failure.timedOut }
      written = await this.persist(run, () => this.repo.fail(run.id, failure))
    }
    if (!written.ok) return
    const failed = written.value
    switch (failed.outcome) {
      case 'fenced':
        this.log.warn(`run ${run.id} failed, but it had been handed to another orchestrator; result discarded`, { event: 'fenced', ...fields })
        return
      case 'retried':
        this.hooks.onOutcome?.(run.taskId, 'retried')
        this.log.warn(`run ${run.id} attempt ${run.attempt} failed (${failure.code}: ${failure.error}); retrying${failed.scheduledFor ? ` at ${failed.scheduledFor.toISOString()}` : ''}`, {
          event: 'run', ...fields, status: 'pending', durationMs, errorCode: failure.code, retryAt: failed.scheduledFor?.toISOString(),
        })
        break
      default:
        this.hooks.onOutcome?.(run.taskId, failed.outcome)
        this.log.error(`run ${run.id} ${failed.outcome === 'timeout' ? 'timed out' : 'failed'} on attempt ${run.attempt} (${failure.code}: ${failure.error}); moved to the DLQ`, {
          event: 'run', ...fields, status: failed.outcome, durationMs, errorCode: failure.code,
        })
    }
    if (failed.mode === 'waiting_for_maintenance') this.scheduleDrainCheck()
  }

  /**
   * Record a result, riding out a database outage: the worker's answer is kept in memory and
   * written when the database is back. Gives up on a forced stop (`error` undefined: the run
   * stays `running` until the shutdown, or else crash recovery, hands it back) and on an error
   * that is not the connection (`error` set: the caller decides what to record instead).
   */
  private async persist<T>(run: ClaimedRun, write: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error?: unknown }> {
    let backoff = 250
    for (;;) {
      try {
        const value = await write()
        this.databaseBack()
        return { ok: true, value }
      } catch (error) {
        // Only the data itself can be refused for good (SQLSTATE classes 22 and 23: a NUL in a
        // string, a value out of range); anything else is the database being unreachable, busy
        // or restarting, and the answer is kept and written when it is back.
        if (isDataError(error)) {
          this.log.error(`could not record the result of run ${run.id}: ${(error as Error).message}`, { runId: run.id, taskId: run.taskId })
          return { ok: false, error }
        }
        this.databaseTrouble(error, `recording run ${run.id}`)
        if (this.forced.signal.aborted) return { ok: false }
        await delay(backoff, this.forced.signal)
        backoff = Math.min(backoff * 2, 5000)
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // Heartbeat, drain check, schema check

  private async heartbeat(): Promise<void> {
    if (this.deregistered) return
    this.heartbeating = (async () => {
      try {
        await this.heartbeatOnce()
      } finally {
        this.heartbeating = undefined
      }
    })()
    return this.heartbeating
  }

  private async heartbeatOnce(): Promise<void> {
    try {
      const { inserted } = await this.repo.heartbeat()
      this.databaseBack()
      if (inserted && this.started) {
        this.log.warn('this orchestrator had been taken for dead (its heartbeat was older than ORCHESTRATOR_STALE_MS) and registered again', { event: 'reregistered' })
      }
    } catch (error) {
      this.databaseTrouble(error, 'heartbeat')
    }
  }

  private async maintenanceTick(): Promise<void> {
    try {
      await this.runDrainCheck()
      const { rows: [row] } = await this.db.query<{ version: number | null }>(sql.currentVersion)
      if ((row.version ?? 0) > this.knownVersion && !this.stopping) {
        this.log.error(`the database schema (migration ${row.version}) is newer than this pipeweave knows (${this.knownVersion}): finishing the runs in flight, then exiting 4 so the platform restarts the new version`, { event: 'schema-ahead' })
        this.exitCode = 4
        this.started = false
        void this.stop()
      }
    } catch (error) {
      this.databaseTrouble(error, 'maintenance check')
    }
  }

  private async runDrainCheck(): Promise<void> {
    const check = await drainCheck(this.db, { staleMs: this.reapStaleMs(), actor: this.actor })
    this.databaseBack()
    this.observeMode(check.mode)
    this.logRecovered(check)
  }

  /** The runs a drain check took back from dead orchestrators: a count, then a line for each. */
  private logRecovered(check: DrainCheckResult): void {
    if (check.lostRuns === 0) return
    this.log.warn(`returned ${check.lostRuns} run(s) held by dead orchestrators`, { event: 'recovered', count: check.lostRuns })
    for (const r of check.lost) {
      const fields = { event: 'run', runId: r.id, taskId: r.taskId, attempt: r.attempt, durationMs: null, errorCode: 'ORCHESTRATOR_LOST' }
      if (r.outcome === 'retried') {
        this.log.info(`run ${r.id} handed back to pending: its orchestrator was lost (attempt ${r.attempt} counted)`, { ...fields, status: 'pending' })
      } else {
        this.log.error(`run ${r.id} ${r.outcome === 'timeout' ? 'timed out' : 'failed'}: its orchestrator was lost on its last attempt (${r.attempt}); moved to the DLQ`, { ...fields, status: r.outcome })
      }
    }
  }

  /** After a run finishes while draining: check now, so the end of a drain is seen at once. */
  private scheduleDrainCheck(): void {
    if (this.drainChecking) {
      this.drainAgain = true
      return
    }
    this.drainChecking = true
    void (async () => {
      do {
        this.drainAgain = false
        try {
          await this.runDrainCheck()
        } catch (error) {
          this.databaseTrouble(error, 'drain check')
        }
      } while (this.drainAgain)
      this.drainChecking = false
    })()
  }

  private observeMode(mode: Mode): void {
    if (mode === this.currentMode) return
    const before = this.currentMode
    this.currentMode = mode
    this.hooks.onMode?.(mode)
    if (before === undefined) return
    const says = {
      running: 'mode is running: dispatching',
      waiting_for_maintenance: 'maintenance requested: new tasks are refused, finishing the due work',
      maintenance: 'in maintenance: idle until maintenance:exit',
    }[mode]
    this.log.info(says, { event: 'mode', mode })
  }

  /**
   * The heartbeat age past which the drain check takes an orchestrator for dead. No heartbeat can
   * land while the database is unreachable, so right after an outage every orchestrator looks
   * stale though all may be alive: until the others have had a full stale period of a reachable
   * database to heartbeat again, the outage does not count towards their age.
   */
  private reapStaleMs(): number {
    const now = Date.now()
    if (this.outage && this.outageStartedAt !== undefined) return this.staleMs + (now - this.outageStartedAt)
    if (now < this.outageGraceUntil) return this.staleMs + this.outageLastedMs
    return this.staleMs
  }

  private databaseTrouble(error: unknown, doing: string): void {
    if (!isConnectionLoss(error)) {
      this.log.error(`${doing} failed: ${(error as Error).message}`)
      return
    }
    if (!this.outage) {
      this.outage = true
      this.outageStartedAt = Date.now()
      this.log.error(`database unavailable while ${doing} (${(error as Error).message}); retrying, runs in flight carry on`, { event: 'db-down' })
    }
  }

  private databaseBack(): void {
    if (this.outage) {
      this.outage = false
      const now = Date.now()
      this.outageLastedMs = now - (this.outageStartedAt ?? now)
      this.outageGraceUntil = now + this.staleMs
      this.log.info('database connection restored', { event: 'db-up', outageMs: this.outageLastedMs })
      this.listener?.kick()
      // Our own heartbeat first, before any drain check of ours or of others can find it stale.
      void this.heartbeat()
    }
  }

  // ------------------------------------------------------------------------------------------
  // Shutdown

  stop(options: { force?: boolean } = {}): Promise<{ exitCode: number }> {
    if (options.force && !this.forced.signal.aborted) {
      this.log.warn(`forced stop: aborting ${this.running.size} run(s) in flight and handing them back`)
      this.forced.abort()
      for (const entry of this.running.values()) entry.abort()
    }
    if (!this.stopping) this.stopping = this.shutdown()
    return this.stopping
  }

  private async shutdown(): Promise<{ exitCode: number }> {
    this.wakeup.notify()
    // Stopped while starting: let start() reach a point where it sees the stop, or fail.
    await this.starting?.catch(() => undefined)
    await this.loopDone
    if (this.running.size > 0) {
      this.log.info(`stopping: no new claims; waiting up to ${this.shutdownTimeoutMs} ms for ${this.running.size} run(s) in flight`, { event: 'stopping', inFlight: this.running.size })
      const deadline = Date.now() + this.shutdownTimeoutMs
      while (this.running.size > 0 && Date.now() < deadline && !this.forced.signal.aborted) {
        const waitingFor = [...this.running.values()].map((e) => `${e.run.taskId} ${e.run.id}`)
        this.log.info(`waiting for ${waitingFor.length} run(s): ${waitingFor.slice(0, 5).join(', ')}${waitingFor.length > 5 ? ', …' : ''}`, { event: 'stopping', inFlight: waitingFor.length })
        await Promise.race([
          Promise.all([...this.running.values()].map((e) => e.promise)),
          delay(Math.min(5000, Math.max(0, deadline - Date.now())), this.forced.signal),
        ])
      }
      if (this.running.size > 0) {
        this.log.warn(`shutdown timeout: aborting ${this.running.size} run(s) and handing them back to pending`, { event: 'stopping' })
        for (const entry of this.running.values()) entry.abort()
        // Results still waiting for the database (an outage) are given up as well: the platform
        // kills what outlives its grace period anyway, and crash recovery returns those runs.
        this.forced.abort()
      }
    }
    const aborted = [...this.running.values()]
    await Promise.all(aborted.map((e) => e.promise))
    for (const timer of this.timers) clearInterval(timer)
    if (!this.registered) {
      // start() was refused (pending migrations, schema ahead, no database): nothing to undo.
      const result = { exitCode: this.exitCode }
      this.resolveDone(result)
      return result
    }
    const handBack = new Map(aborted.filter((e) => e.aborted).map((e) => [e.run.id, e]))
    // Everything we still hold goes back: the runs aborted above, and any whose result could not
    // be written (a forced stop during an outage) or whose claim answer was lost.
    try {
      const released = await this.repo.releaseHeld([])
      for (const r of released) {
        const entry = handBack.get(r.id)
        this.log.info(`run ${r.id} handed back to pending (attempt ${r.attempt} kept)`, {
          event: 'run', runId: r.id, taskId: r.taskId, attempt: r.attempt, status: 'pending',
          durationMs: entry ? Math.round(performance.now() - entry.startedAt) : null,
        })
      }
    } catch (error) {
      this.log.error(`could not hand back the runs in flight (${(error as Error).message}); crash recovery will return them once this orchestrator's heartbeat is stale`)
    }
    await this.listener?.stop()
    // No heartbeat after the row is gone: an upsert landing after the delete would bring back a
    // ghost orchestrator until it went stale.
    this.deregistered = true
    await this.heartbeating?.catch(() => undefined)
    try {
      await this.repo.deregister()
    } catch (error) {
      this.log.warn(`could not deregister (${(error as Error).message}); the row expires with its heartbeat`)
    }
    this.dispatcher.close()
    this.log.info('orchestrator stopped', { event: 'stopped', exitCode: this.exitCode })
    const result = { exitCode: this.exitCode }
    this.resolveDone(result)
    return result
  }
}

/**
 * The tasks of the follow-ups pipeweave_complete_run created, in order: it walks runNext and
 * creates a run for each name it does not ignore, so runNext minus the ignored names lines up
 * with the ids it returns.
 */
function followUpTasks(runNext: string[], ignored: string[]): string[] {
  const skip = [...ignored]
  return runNext.filter((name) => {
    const i = skip.indexOf(name)
    if (i < 0) return true
    skip.splice(i, 1)
    return false
  })
}

/** The server refused the values themselves (data exception, integrity violation). */
function isDataError(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code
  return typeof code === 'string' && /^(22|23)/.test(code)
}
