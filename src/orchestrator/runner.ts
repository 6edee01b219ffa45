/**
 * Running a claimed run to its recorded result (SPEC §5): the lease check, the dispatch, the
 * retry policy, the write, and one log line per state change. Slots: a run holds a dispatch slot
 * from its claim until the worker answers; its answer then waits for the batched write without
 * one (ResultWriter), so the claimer refills the slot at once.
 */
import type { Logger } from '../logger'
import type { Mode } from '../maintenance/maintenance'
import type { DispatchResult, Dispatcher } from './dispatcher'
import type { Liveness } from './liveness'
import { decideFailure } from './retry-policy'
import type { ClaimedRun, CompleteResult, DeferOutcome, FailResult, FailureRecord, Repository } from './repository'
import { delay } from './wakeup'
import type { ResultWriter } from './writer'

/**
 * `deferred`: a connect failure of a breaker-enabled service, back to pending with its attempt
 * kept (SPEC §7); not an attempt's outcome.
 */
export type RunOutcome = 'completed' | 'cached' | 'retried' | 'failed' | 'timeout' | 'deferred'

/** Observers for metrics and health (the operator surface); all optional. */
export interface OrchestratorHooks {
  onOutcome?(taskId: string, outcome: RunOutcome): void
  onDispatch?(taskId: string, seconds: number): void
  onInFlight?(count: number): void
  onMode?(mode: Mode): void
  /** A tick this orchestrator decided: enqueued, skipped (mode or overlap) or missed (a range ending at `tickMs`). */
  onScheduleTick?(schedule: string, tickMs: number, outcome: 'enqueued' | 'skipped' | 'missed'): void
  /**
   * A claim found due runs of `taskId` that its rate limit held back (SPEC §7: the counter
   * pipeweave_task_rate_limited_total{task}). Called once per such task per claim.
   */
  onRateLimited?(taskId: string): void
}

interface Flight {
  run: ClaimedRun
  /** Holds a dispatch slot: claimed, and no answer yet. */
  dispatching: boolean
  /** Stop its dispatch (shutdown): a run not sent yet is then not sent at all. */
  abort(): void
  abortRequested: boolean
  cancel?: () => void
  startedAt: number
  promise: Promise<void>
}

export interface RunnerDeps {
  repo: Pick<Repository, 'release' | 'breakerReached'>
  dispatcher: Dispatcher
  writer: ResultWriter
  liveness: Liveness
  log: Logger
  hooks: OrchestratorHooks
  /** Aborted by a forced stop: writes waiting for the database give up. */
  forced: AbortSignal
  isStopping(): boolean
  /** A slot freed, or new work became due (follow-ups): the claimer may claim. */
  slotFreed(): void
  workDue(): void
  /** A run finished while the mode is waiting_for_maintenance: check the drain now. */
  drainMayBeDone(): void
  /** A run may be `running` under this orchestrator in the database though nothing here holds it. */
  heldUnknown(): void
}

export class Runner {
  /** Every flight, from its claim until its result is written. One run may have two (start()). */
  private readonly held = new Set<Flight>()
  /** The newest flight of each run. */
  private readonly latest = new Map<string, Flight>()
  private dispatchingCount = 0

  constructor(private readonly deps: RunnerDeps) {}

  /** Runs awaiting a worker's answer (the dispatch slots in use). */
  get dispatching(): number {
    return this.dispatchingCount
  }

  /** Every run this process holds `running`, from its claim until its result is written. */
  heldIds(): string[] {
    return [...this.latest.keys()]
  }

  get size(): number {
    return this.held.size
  }

  /** What shutdown waits for: the runs still awaiting a worker. */
  inFlight(): ClaimedRun[] {
    return [...this.held].filter((f) => f.dispatching).map((f) => f.run)
  }

  /** Resolves when every run held now is settled. */
  settled(): Promise<void> {
    return Promise.all([...this.held].map((f) => f.promise)).then(() => undefined)
  }

  dispatchesSettled(): Promise<void> {
    return Promise.all([...this.held].filter((f) => f.dispatching).map((f) => f.promise)).then(() => undefined)
  }

  /** Stop every dispatch in flight (shutdown timeout, forced stop). */
  abortAll(): number {
    let n = 0
    for (const flight of this.held) {
      if (!flight.dispatching) continue
      flight.abort()
      n += 1
    }
    return n
  }

  start(run: ClaimedRun): void {
    const flight: Flight = {
      run, dispatching: true, abortRequested: false, startedAt: performance.now(), promise: Promise.resolve(),
      abort: () => { flight.abortRequested = true; flight.cancel?.() },
    }
    // Its previous attempt may still be settling here: a retry due at once can be claimed again
    // (by this claim, which waited for the failure's row lock) before the failure's write has
    // been answered. That attempt finishes first (its log line, its bookkeeping), then this one.
    // Not so a previous attempt still awaiting its worker: this orchestrator was taken for dead
    // and the run came back to it as its next attempt. That request may stay out until the task's
    // timeout and its answer is fenced by its attempt: this one starts now, and both are held
    // (a shutdown aborts both).
    const previous = this.latest.get(run.id)
    const after = previous && !(previous.dispatching && previous.run.attempt < run.attempt) ? previous : undefined
    this.held.add(flight)
    this.latest.set(run.id, flight)
    this.dispatchingCount += 1
    this.deps.hooks.onInFlight?.(this.dispatchingCount)
    const begin = () => {
      // durationMs: null: nothing has been measured yet (the key is there on every state change).
      this.deps.log.info(`run ${run.id} started`, { event: 'run', runId: run.id, taskId: run.taskId, attempt: run.attempt, status: 'running', durationMs: null })
      return this.execute(flight)
    }
    flight.promise = (after ? after.promise.then(begin) : begin())
      .catch(async (error) => {
        // A bug or an unforeseen failure between claim and record: record it as a failed attempt
        // rather than leave the run `running` under a live orchestrator that will never finish it.
        this.deps.log.error(`run ${run.id}: ${(error as Error).message}`, { runId: run.id, taskId: run.taskId })
        this.answered(flight)
        await this.recordFailure(flight, { error: `pipeweave failed to run it: ${(error as Error).message}`, code: 'INTERNAL_ERROR', retryable: true, timedOut: false }, 0)
          .catch(() => undefined)
      })
      .finally(() => {
        this.answered(flight)
        this.held.delete(flight)
        if (this.latest.get(run.id) === flight) this.latest.delete(run.id)
      })
  }

  /** The run's dispatch slot is free: its answer is in hand (or it will not be sent). */
  private answered(flight: Flight): void {
    if (!flight.dispatching) return
    flight.dispatching = false
    this.dispatchingCount -= 1
    this.deps.hooks.onInFlight?.(this.dispatchingCount)
    this.deps.slotFreed()
  }

  private async execute(flight: Flight): Promise<void> {
    const { run } = flight
    const { deps } = this
    if (run.cached) {
      // An unexpired idempotency entry holds this key's result: complete without a dispatch.
      this.answered(flight)
      const done = await this.persist(run, () => deps.writer.complete({ runId: run.id, attempt: run.attempt, output: run.cachedOutput, runNext: [], fromCache: true }))
      if (done.ok && done.value.completed) {
        deps.hooks.onOutcome?.(run.taskId, 'cached')
        deps.log.info(`run ${run.id} completed from the idempotency cache`, { event: 'run', runId: run.id, taskId: run.taskId, attempt: run.attempt, status: 'completed', cached: true, durationMs: 0 })
        this.afterWrite(done.value.mode)
      }
      return
    }
    // Never sent: the shutdown hands it back with its attempt (releaseHeld).
    if (flight.abortRequested || deps.isStopping()) return
    if (!deps.liveness.leaseValid()) {
      // Our heartbeat is too old: we may have been taken for dead, and the run handed to another
      // orchestrator. Do not send it; hand it back (a no-op if it was handed on already).
      await this.handBack(flight)
      return
    }
    const started = performance.now()
    const sent = deps.dispatcher.send(run.baseUrl, {
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
    flight.cancel = sent.cancel
    const result: DispatchResult = await sent.result
    flight.cancel = undefined
    const durationMs = Math.round(performance.now() - started)
    this.answered(flight)

    if (result.kind === 'aborted') {
      if (!result.sent) return // the shutdown hands it back with its attempt
      // The request may have reached the worker: this attempt is spent (SPEC §5 once per attempt).
      await this.recordFailure(flight, { error: 'the orchestrator stopped before the worker answered', code: 'SHUTDOWN_ABORTED', retryable: true, timedOut: false, dueNow: true }, durationMs)
      return
    }
    deps.hooks.onDispatch?.(run.taskId, durationMs / 1000)
    if (result.kind === 'completed' || result.connect === false) this.reached(run)
    if (result.kind === 'failed') {
      if (result.connect === true && run.breaker && await this.deferred(flight, result, durationMs)) return
      await this.recordFailure(flight, result, durationMs)
      return
    }

    const written = await this.persist(run, () => deps.writer.complete({ runId: run.id, attempt: run.attempt, output: result.output, runNext: result.runNext, fromCache: false }))
    if (!written.ok) {
      if (!written.error) return // forced stop during an outage: the shutdown hands the run back
      // The database refused the worker's answer itself (a NUL character in the output, say):
      // record that as this attempt's failure rather than leave the run `running` for ever.
      await this.recordFailure(flight, {
        error: `the worker's result could not be stored: ${(written.error as Error).message}`,
        code: 'RESULT_REJECTED', retryable: true, timedOut: false,
      }, durationMs)
      return
    }
    const done = written.value
    const fields = { runId: run.id, taskId: run.taskId, attempt: run.attempt }
    if (!done.completed) {
      deps.log.warn(`run ${run.id} finished, but it was no longer this orchestrator's (handed to another after this one looked dead, or cancelled); result discarded`, { event: 'fenced', ...fields })
      return
    }
    deps.hooks.onOutcome?.(run.taskId, 'completed')
    deps.log.info(`run ${run.id} completed`, { event: 'run', ...fields, status: 'completed', durationMs })
    if (done.ignoredNext.length > 0) {
      deps.log.warn(`run ${run.id} asked for follow-ups its task does not allow: ${done.ignoredNext.join(', ')} (ignored)`, fields)
    }
    followUpTasks(result.runNext, done.ignoredNext).forEach((taskId, i) => {
      const followUp = done.followUps[i]
      if (followUp) deps.log.info(`run ${followUp} queued as a follow-up of ${run.id}`, { event: 'run', runId: followUp, taskId, attempt: 1, status: 'pending', durationMs: null, parentRunId: run.id })
    })
    if (done.followUps.length > 0) deps.workDue()
    this.afterWrite(done.mode)
  }

  /**
   * The dispatch reached the worker: close the service's breaker if the claim saw it counting
   * failures or open (one statement per service at a time; most runs see nothing to close).
   */
  private reached(run: ClaimedRun): void {
    if (!run.breakerDirty || this.closing.has(run.serviceId)) return
    const serviceId = run.serviceId
    const closing = this.deps.repo.breakerReached(serviceId)
      .then((wasOpen) => {
        if (wasOpen) this.deps.log.info(`service ${serviceId} answered again: its breaker is closed`, { event: 'breaker', serviceId, action: 'closed' })
      })
      .catch((error) => {
        // The next run that reaches it closes it instead.
        this.deps.log.debug(`closing the breaker of service ${serviceId} failed: ${(error as Error).message}`)
      })
      .finally(() => this.closing.delete(serviceId))
    this.closing.set(serviceId, closing)
  }

  /** Services whose breaker is being closed right now. */
  private readonly closing = new Map<string, Promise<void>>()

  /**
   * A connect failure of a breaker-enabled service: the run goes back to pending with its attempt
   * (SPEC §7), unless the breaker is past its longest open time (false: record a failure).
   */
  private async deferred(flight: Flight, failure: { error: string; code: string }, durationMs: number): Promise<boolean> {
    const { run } = flight
    const written = await this.persist(run, () => this.deps.writer.defer({ runId: run.id, attempt: run.attempt }))
    if (!written.ok) return !written.error // forced stop: the shutdown hands it back; refused: record a failure
    const fields = { runId: run.id, taskId: run.taskId, attempt: run.attempt }
    switch (written.value) {
      case 'attempt':
        return false
      case 'fenced':
        this.deps.log.warn(`run ${run.id} could not reach its worker, but it was no longer this orchestrator's; nothing recorded`, { event: 'fenced', ...fields })
        return true
      default: {
        const held = written.value === 'held'
        this.deps.hooks.onOutcome?.(run.taskId, 'deferred')
        this.deps.log.warn(`run ${run.id} could not reach service ${run.serviceId} (${failure.code}: ${failure.error}); back to pending, attempt ${run.attempt} kept${held ? ': the service\'s breaker is open' : ''}`, {
          event: 'run', ...fields, status: 'pending', durationMs, errorCode: failure.code, deferred: true, serviceId: run.serviceId, breakerOpen: held,
        })
        if (!held) this.deps.workDue()
        return true
      }
    }
  }

  private afterWrite(mode: Mode): void {
    if (mode === 'waiting_for_maintenance') this.deps.drainMayBeDone()
  }

  /** Hand one run back, attempt kept (its lease lapsed before it was sent). */
  private async handBack(flight: Flight): Promise<void> {
    const { run } = flight
    try {
      const released = await this.deps.repo.release([], [run.id])
      this.deps.log.warn(`run ${run.id} not sent: this orchestrator's lease had lapsed (no confirmed heartbeat for ${this.deps.liveness.leaseMs} ms); ${released.length > 0 ? `handed back to pending (attempt ${run.attempt} kept)` : 'it had been handed to another orchestrator already'}`,
        { event: 'run', runId: run.id, taskId: run.taskId, attempt: run.attempt, status: 'pending', durationMs: null, errorCode: 'LEASE_LAPSED' })
    } catch (error) {
      // Held in the database, unknown here once this returns: the claimer hands such runs back.
      this.deps.liveness.trouble(error, `handing back run ${run.id}`)
      this.deps.heldUnknown()
    }
  }

  /** Record a failed attempt (retry or DLQ) and log it. */
  private async recordFailure(flight: Flight, failure: { error: string; code: string; retryable: boolean; timedOut: boolean; dueNow?: boolean }, durationMs: number): Promise<void> {
    const { run } = flight
    const fields = { runId: run.id, taskId: run.taskId, attempt: run.attempt }
    const record = (f: typeof failure): FailureRecord => {
      const decision = decideFailure(run.retry, run.attempt, f)
      return decision.retry
        ? { runId: run.id, attempt: run.attempt, error: f.error, code: f.code, retry: true, delayMs: f.dueNow ? 0 : decision.delayMs, status: 'failed' }
        : { runId: run.id, attempt: run.attempt, error: f.error, code: f.code, retry: false, delayMs: 0, status: decision.status }
    }
    let written = await this.persist(run, () => this.deps.writer.fail(record(failure)))
    if (!written.ok && written.error) {
      // Not even the failure could be written: write one that carries nothing from the worker.
      failure = { ...failure, error: `the worker's answer could not be recorded (${failure.code}): ${(written.error as Error).message}`, code: 'RESULT_NOT_RECORDED' }
      written = await this.persist(run, () => this.deps.writer.fail(record(failure)))
    }
    if (!written.ok) return
    const failed: FailResult = written.value
    switch (failed.outcome) {
      case 'fenced':
        this.deps.log.warn(`run ${run.id} failed, but it was no longer this orchestrator's; result discarded`, { event: 'fenced', ...fields })
        return
      case 'retried':
        this.deps.hooks.onOutcome?.(run.taskId, 'retried')
        this.deps.log.warn(`run ${run.id} attempt ${run.attempt} failed (${failure.code}: ${failure.error}); retrying${failed.scheduledFor ? ` at ${failed.scheduledFor.toISOString()}` : ''}`, {
          event: 'run', ...fields, status: 'pending', durationMs, errorCode: failure.code, retryAt: failed.scheduledFor?.toISOString(),
        })
        if (failure.dueNow) this.deps.workDue()
        break
      default:
        this.deps.hooks.onOutcome?.(run.taskId, failed.outcome)
        this.deps.log.error(`run ${run.id} ${failed.outcome === 'timeout' ? 'timed out' : 'failed'} on attempt ${run.attempt} (${failure.code}: ${failure.error}); moved to the DLQ`, {
          event: 'run', ...fields, status: failed.outcome, durationMs, errorCode: failure.code,
        })
    }
    this.afterWrite(failed.mode)
  }

  /**
   * Write a result, riding out a database outage: the worker's answer is kept in memory and
   * written when the database is back. Gives up on a forced stop (`error` undefined: the run
   * stays `running` until the shutdown, or else crash recovery, hands it back) and on an error
   * that is not the connection (`error` set: the caller decides what to record instead).
   */
  private async persist<T extends CompleteResult | FailResult | DeferOutcome>(run: ClaimedRun, write: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error?: unknown }> {
    let backoff = 250
    for (;;) {
      try {
        const value = await write()
        this.deps.liveness.back()
        return { ok: true, value }
      } catch (error) {
        // Only the data itself can be refused for good (SQLSTATE classes 22 and 23: a NUL in a
        // string, a value out of range); anything else is the database being unreachable, busy
        // or restarting, and the answer is kept and written when it is back.
        if (isDataError(error)) {
          this.deps.log.error(`could not record the result of run ${run.id}: ${(error as Error).message}`, { runId: run.id, taskId: run.taskId })
          return { ok: false, error }
        }
        this.deps.liveness.trouble(error, `recording run ${run.id}`)
        if (this.deps.forced.aborted) return { ok: false }
        await delay(backoff, this.deps.forced)
        backoff = Math.min(backoff * 2, 5000)
      }
    }
  }
}

/**
 * The tasks of the follow-ups a completion created, in order: it walks runNext and creates a run
 * for each name it does not ignore, so runNext minus the ignored names lines up with the ids.
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
