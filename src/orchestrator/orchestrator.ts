/**
 * `pipeweave run` (SPEC §5): claim due runs, dispatch them to workers, record the results; retry,
 * dead-letter, recover runs of dead orchestrators, take part in the drain, shut down gracefully.
 * Any number of these run side by side against one PostgreSQL: every rule that spans them is
 * enforced in the database, never in this process.
 *
 * Each concern has its room, wired together here:
 *   claimer.ts   claiming and capacity            runner.ts    a dispatch to its recorded result
 *   writer.ts    batched writes of results        liveness.ts  heartbeat, lease, outages
 *   watch.ts     mode, drain, schema, upkeep      shutdown.ts  the stop sequence, signals
 *   repository.ts  every statement the loop runs (handed in: tests wrap it)
 */
import * as crypto from 'node:crypto'
import * as os from 'node:os'
import { diffSchema, getAppliedMigrations, readMigrationFiles, refuseChanged, refuseSchemaAhead, runMigrations } from '../api/migrations'
import { BREAKER_DEFAULTS, ORCHESTRATION_DEFAULTS } from '../api/settings'
import type { Database } from '../db/database'
import { RefusedError } from '../errors'
import { type Logger, silentLogger } from '../logger'
import { defaultActor, type Mode } from '../maintenance/maintenance'
import { Claimer } from './claimer'
import { Dispatcher, type DispatcherOptions } from './dispatcher'
import { Listener } from './listener'
import { Liveness } from './liveness'
import { type BreakerSettings, type Repository, createRepository } from './repository'
import { type OrchestratorHooks, Runner } from './runner'
import { type ScheduleStore, Scheduler, createScheduleStore } from './scheduler'
import { shutDown } from './shutdown'
import { Watch } from './watch'
import { ResultWriter } from './writer'

export type { OrchestratorHooks, RunOutcome } from './runner'
export type { BreakerSettings } from './repository'

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
  /**
   * The statements the loop runs: by default createRepository(db, id). A test hands in a wrapped
   * one (a write that fails on purpose, a claim held back) to drive the real loop.
   */
  repository?: (db: Database, orchestratorId: string) => Repository
  /** Dispatcher settings beyond the secret key (tests: agents that break sockets on purpose). */
  dispatcher?: Omit<DispatcherOptions, 'secretKey' | 'maxSockets'>
  /** Batches of results written at once (default 1). */
  writers?: number
  /** The statements of the schedule loop: by default createScheduleStore(db, id) (tests wrap it). */
  scheduleStore?: (db: Database, orchestratorId: string) => ScheduleStore
  /**
   * The service breaker (SPEC §7): the cool-down of a breaker that opens (doubled on each
   * reopening, at most 5 min) and its longest open time; PIPEWEAVE_BREAKER_COOLDOWN_MS and
   * PIPEWEAVE_BREAKER_MAX_OPEN_MS for `run`. Default 30 s and 1 h.
   */
  breaker?: Partial<BreakerSettings>
}

export interface Orchestrator {
  readonly id: string
  /** Check the schema (migrating with autoMigrate), register, and start the loops. */
  start(): Promise<void>
  /** Stop claiming, let in-flight runs finish within the shutdown timeout, hand back the rest. */
  stop(options?: { force?: boolean }): Promise<{ exitCode: number }>
  /** Resolves when the orchestrator has stopped, for whatever reason. */
  readonly done: Promise<{ exitCode: number }>
  /** Registered, schema current, not shutting down, database reachable. */
  isReady(): boolean
  mode(): Mode | undefined
  /** Runs awaiting a worker's answer. */
  inFlight(): number
  /** For /healthz: Date.now() of the last heartbeat that reached the database, and whether it fails now. */
  health(): { lastHeartbeat?: number; databaseDown: boolean }
}

export function createOrchestrator(options: OrchestratorOptions): Orchestrator {
  return new Loop(options)
}

/** What the shutdown sequence works on (shutdown.ts). */
export interface Parts {
  log: Logger
  repo: Repository
  runner: Runner
  writer: ResultWriter
  liveness: Liveness
  watch: Watch
  dispatcher: Dispatcher
  listener?: Listener
  scheduler?: Scheduler
  forced: AbortController
  shutdownTimeoutMs: number
  registered: boolean
  loopDone?: Promise<void>
  timers: NodeJS.Timeout[]
}

class Loop implements Orchestrator {
  readonly id: string
  readonly done: Promise<{ exitCode: number }>
  private resolveDone!: (value: { exitCode: number }) => void
  private readonly log: Logger
  private readonly hooks: OrchestratorHooks
  private readonly parts: Parts
  private readonly claimer: Claimer
  private readonly staleMs: number
  private starting?: Promise<void>
  private started = false
  private stopping?: Promise<{ exitCode: number }>
  private exitCode = 0
  private currentMode?: Mode

  constructor(private readonly options: OrchestratorOptions) {
    this.log = options.logger ?? silentLogger
    this.hooks = options.hooks ?? {}
    const concurrency = options.concurrency ?? ORCHESTRATION_DEFAULTS.concurrency
    this.staleMs = options.staleMs ?? ORCHESTRATION_DEFAULTS.orchestratorStaleMs
    this.id = options.id ?? `${os.hostname()}-${process.pid}-${crypto.randomBytes(3).toString('hex')}`
    const repo = options.repository?.(options.db, this.id) ?? createRepository(options.db, this.id, { concurrency })
    const forced = new AbortController()
    const liveness = new Liveness(repo, {
      staleMs: this.staleMs,
      // Several heartbeats per stale period, so one slow or lost heartbeat never looks like a death.
      heartbeatIntervalMs: options.heartbeatIntervalMs ?? Math.max(100, Math.min(5000, Math.floor(this.staleMs / 4))),
      log: this.log,
      onBack: () => {
        this.parts.listener?.kick()
        this.parts.scheduler?.changed()
      },
    })
    const stopping = () => this.stopping !== undefined
    const watch = new Watch({
      repo, liveness, log: this.log, actor: defaultActor(),
      onMode: (mode) => this.observeMode(mode),
      onSchemaAhead: () => { this.exitCode = 4; this.started = false; void this.stop() },
      isStopping: stopping,
    })
    const writer = new ResultWriter(repo, () => this.claimer.resultsWritten(), options.writers ?? 1, undefined, {
      cooldownMs: options.breaker?.cooldownMs ?? BREAKER_DEFAULTS.cooldownMs, maxOpenMs: options.breaker?.maxOpenMs ?? BREAKER_DEFAULTS.maxOpenMs,
    })
    const dispatcher = new Dispatcher({ ...options.dispatcher, secretKey: options.secretKey, maxSockets: concurrency })
    const runner = new Runner({
      repo, dispatcher, writer, liveness, log: this.log, hooks: this.hooks, forced: forced.signal,
      isStopping: stopping,
      slotFreed: () => this.claimer.slotFreed(),
      workDue: () => this.claimer.workDue(),
      drainMayBeDone: () => watch.drainMayBeDone(),
      heldUnknown: () => this.claimer.heldUnknown(),
    })
    this.claimer = new Claimer({
      repo, liveness, log: this.log, concurrency,
      pollIntervalMs: options.pollIntervalMs ?? ORCHESTRATION_DEFAULTS.pollIntervalMs,
      untilIdle: Boolean(options.untilIdle), forced: forced.signal, isStopping: stopping,
      load: () => ({ dispatching: runner.dispatching, unwritten: writer.size }),
      heldIds: () => runner.heldIds(),
      start: (run) => runner.start(run),
      claimed: (n) => watch.claimed(n),
      onMode: (mode) => this.observeMode(mode),
      onRateLimited: (taskId) => this.hooks.onRateLimited?.(taskId),
      onIdle: () => {
        this.log.info('no due or running task runs left (--until-idle): stopping', { event: 'idle' })
        void this.stop()
      },
    })
    this.parts = {
      log: this.log, repo, runner, writer, liveness, watch, dispatcher, forced,
      shutdownTimeoutMs: options.shutdownTimeoutMs ?? ORCHESTRATION_DEFAULTS.shutdownTimeoutMs,
      registered: false, timers: [],
    }
    this.done = new Promise((resolve) => { this.resolveDone = resolve })
  }

  isReady(): boolean {
    return this.started && !this.stopping && !this.parts.liveness.isDown()
  }

  mode(): Mode | undefined {
    return this.currentMode
  }

  inFlight(): number {
    return this.parts.runner.dispatching
  }

  health(): { lastHeartbeat?: number; databaseDown: boolean } {
    return { lastHeartbeat: this.parts.liveness.lastHeartbeat(), databaseDown: this.parts.liveness.isDown() }
  }

  start(): Promise<void> {
    if (!this.starting) this.starting = this.startUp()
    return this.starting
  }

  /**
   * A stop() may come at any await below (a SIGTERM during the migrations): then nothing more is
   * started, and the shutdown, which waits for this, undoes what was.
   */
  private async startUp(): Promise<void> {
    const { parts } = this
    await this.checkSchemaAtStart()
    if (this.stopping) return
    await parts.liveness.register()
    parts.registered = true
    // Recover runs of orchestrators that died while none was watching (SPEC §5: "the next start").
    await parts.watch.drainCheck()
    if (this.options.listen !== false) {
      parts.listener = new Listener(this.options.db, [this.options.db.schema.channel], (payload) => {
        if (payload === 'mode') this.log.debug('mode change notified')
        // '' after a (re)connect: anything may have been missed.
        if (payload === 'schedules' || payload === '') parts.scheduler?.changed()
        if (payload !== 'schedules') this.claimer.workDue()
      }, this.log)
      await parts.listener.start()
    }
    if (this.stopping) return
    parts.liveness.start()
    const maintenanceCheckIntervalMs = this.options.maintenanceCheckIntervalMs ?? ORCHESTRATION_DEFAULTS.maintenanceCheckIntervalMs
    parts.scheduler = new Scheduler({
      store: (this.options.scheduleStore ?? createScheduleStore)(this.options.db, this.id),
      log: this.log, staleMs: this.staleMs, rereadMs: maintenanceCheckIntervalMs,
      trouble: (error) => parts.liveness.trouble(error, 'schedule loop'),
      back: () => parts.liveness.back(),
      onTick: (schedule, tickMs, result) => {
        if (result.outcome === 'enqueued' || result.outcome === 'skipped' || result.outcome === 'missed') this.hooks.onScheduleTick?.(schedule, tickMs, result.outcome)
      },
    })
    parts.scheduler.start()
    this.every(maintenanceCheckIntervalMs, () => parts.watch.tick())
    this.started = true
    this.log.info(`orchestrator ${this.id} started`, {
      event: 'started', orchestratorId: this.id, concurrency: this.options.concurrency ?? ORCHESTRATION_DEFAULTS.concurrency,
      mode: this.currentMode, listen: this.options.listen !== false, schema: this.options.db.schema.name,
    })
    parts.loopDone = this.claimer.loop().catch((error) => {
      this.log.error(`the claim loop failed: ${(error as Error).message}`)
      this.exitCode = 1
      void this.stop()
    })
  }

  private async checkSchemaAtStart(): Promise<void> {
    const { files } = readMigrationFiles()
    this.parts.watch.knownVersion = Math.max(0, ...files.map((f) => f.id))
    const { pending, unknown, changed } = diffSchema(files, (await getAppliedMigrations(this.options.db)) ?? [])
    refuseSchemaAhead(unknown, 'run the pipeweave version that applied them')
    refuseChanged(changed, 'refusing to start')
    if (pending.length === 0) return
    if (!this.options.autoMigrate) {
      throw new RefusedError('MIGRATIONS_PENDING', `refusing to start: ${pending.length} migration(s) pending (${pending.map((f) => f.fileName).join(', ')})`, {
        hint: 'run `pipeweave db:migrate` first, or start with --auto-migrate (AUTO_MIGRATE=true)',
      })
    }
    this.log.info(`applying ${pending.length} pending migration(s) (--auto-migrate)`)
    await runMigrations(this.options.db, { logger: this.log })
  }

  private every(ms: number, fn: () => Promise<void>): void {
    let busy = false
    const timer = setInterval(() => {
      if (busy) return
      busy = true
      void fn().finally(() => { busy = false })
    }, ms)
    this.parts.timers.push(timer)
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

  stop(options: { force?: boolean } = {}): Promise<{ exitCode: number }> {
    const { parts } = this
    if (options.force && !parts.forced.signal.aborted) {
      this.log.warn(`forced stop: aborting ${parts.runner.dispatching} run(s) in flight and handing them back`)
      parts.forced.abort()
      parts.runner.abortAll()
    }
    if (!this.stopping) {
      this.stopping = (async () => {
        this.claimer.wakeup.notify()
        // Stopped while starting: let start() reach a point where it sees the stop, or fail.
        await this.starting?.catch(() => undefined)
        await shutDown(parts)
        const result = { exitCode: this.exitCode }
        this.resolveDone(result)
        return result
      })()
    }
    return this.stopping
  }
}
