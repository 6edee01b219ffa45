import { ORCHESTRATION_DEFAULTS, orchestratorStaleMs } from '../api/settings'
import { BaseCommand, Flags } from '../base-command'
import { optionalInt, resolveConnection } from '../db/config'
import type { Database } from '../db/database'
import type { DemoRunSummary } from '../demo/demo'
import type { Logger } from '../logger'
import { createOrchestrator, type Orchestrator, type OrchestratorHooks, type RunOutcome } from '../orchestrator/orchestrator'
import { processLogger } from '../output'

interface RunResult {
  /** null when a signal stopped `run` before its orchestrator started. */
  orchestratorId: string | null
  exitCode: number
  outcomes: Record<RunOutcome, number>
  demo?: DemoRunSummary[]
}

/** Timers take at most 2^31 − 1 ms (a longer one fires at once): a day bounds every interval. */
const DAY_MS = 86_400_000

/** The environment without any connection setting: what `--demo` connects with (the embedded database). */
function embeddedOnly(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([key]) => !/^(DATABASE_URL|DB_|PG)/.test(key)))
}

export default class Run extends BaseCommand<typeof Run, RunResult> {
  static summary = 'Run the orchestrator in the foreground: claim queued task runs and dispatch them to workers.'
  static description = `Several \`run\` processes on several machines can share one database. SIGTERM or SIGINT stops claiming,
lets runs in flight finish within --shutdown-timeout, hands the rest back to pending and exits 0; a second
SIGINT stops at once. Logs go to stderr: pretty on a terminal, JSON lines otherwise.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Dispatch with the defaults (10 at a time).' },
    { command: 'MAX_CONCURRENCY=50 <%= config.bin %> <%= command.id %> --auto-migrate --log-format json', description: 'In a container: migrate if needed, JSON logs.' },
    { command: '<%= config.bin %> <%= command.id %> --until-idle', description: 'A batch job: exit once nothing is due or running.' },
    { command: '<%= config.bin %> <%= command.id %> --http-port 9090', description: 'Serve /healthz, /readyz and /metrics for Kubernetes probes and Prometheus.' },
    { command: '<%= config.bin %> <%= command.id %> --demo', description: 'Try it out: a demo worker and a few demo runs on the embedded database; ends by itself.' },
  ]
  static flags = {
    concurrency: Flags.integer({ summary: 'Runs in flight at once.', env: 'MAX_CONCURRENCY', default: ORCHESTRATION_DEFAULTS.concurrency, min: 1, max: 10_000 }),
    'poll-interval': Flags.integer({ summary: 'Milliseconds between polls when idle.', env: 'POLL_INTERVAL_MS', default: ORCHESTRATION_DEFAULTS.pollIntervalMs, min: 1, max: DAY_MS }),
    'maintenance-check-interval': Flags.integer({ summary: 'Milliseconds between drain checks.', env: 'MAINTENANCE_CHECK_INTERVAL_MS', default: ORCHESTRATION_DEFAULTS.maintenanceCheckIntervalMs, min: 1, max: DAY_MS }),
    'shutdown-timeout': Flags.integer({ summary: 'Milliseconds to let runs finish on SIGTERM.', env: 'SHUTDOWN_TIMEOUT_MS', default: ORCHESTRATION_DEFAULTS.shutdownTimeoutMs, min: 0, max: DAY_MS }),
    'auto-migrate': Flags.boolean({ summary: 'Apply pending migrations at start instead of refusing.', env: 'AUTO_MIGRATE' }),
    'until-idle': Flags.boolean({ summary: 'Exit 0 once no run is due or running.' }),
    'log-format': Flags.string({ summary: 'pretty (default on a terminal) or json (default otherwise).', options: ['pretty', 'json'] }),
    'no-listen': Flags.boolean({ summary: 'Poll only, no LISTEN/NOTIFY (behind PgBouncer transaction pooling).', env: 'PIPEWEAVE_NO_LISTEN' }),
    'http-port': Flags.integer({ summary: 'Serve /healthz, /readyz and /metrics on this port.', env: 'PIPEWEAVE_HTTP_PORT', min: 0, max: 65535 }),
    demo: Flags.boolean({ summary: 'Run a built-in demo worker and a few demo tasks on the embedded database, then exit.' }),
  }

  protected handlesSignals = false
  private orchestrator?: Orchestrator
  /** The first SIGTERM/SIGINT, also when it came before the orchestrator existed. */
  private stopRequested?: NodeJS.Signals
  /** The connection setting --demo ignored, to say so beside "Try next". */
  private ignoredConnection?: string

  protected get logger(): Logger {
    const format = (this.flags?.['log-format'] as 'pretty' | 'json' | undefined) ?? (process.stderr.isTTY ? 'pretty' : 'json')
    return processLogger(process.stderr, format, this.flags?.verbose, process.env, { batched: true })
  }

  protected async execute(): Promise<RunResult> {
    const log = this.logger
    const demo = this.flags.demo
    // Signals are ours from the first moment: a Ctrl-C while the embedded database starts (initdb
    // takes seconds on a fresh clone) must still end with the server stopped and exit 0.
    this.installSignalHandlers(log)
    if (demo) log.info('starting the demo: the embedded database, a demo worker and a few runs (Ctrl-C stops it)', { event: 'demo-start' })
    const db = await this.runDatabase(demo)
    const session = demo && !this.stopRequested
      ? await lazy<typeof import('../demo/demo')>('../demo/demo').prepareDemo(db, log)
      : undefined
    if (session) this.onRelease(() => session.worker.close())

    const outcomes: Record<RunOutcome, number> = { completed: 0, cached: 0, retried: 0, failed: 0, timeout: 0 }
    let orchestratorId: string | null = null
    let exitCode = 0
    if (!this.stopRequested) {
      const orchestrator = await this.startOrchestrator(db, demo, outcomes)
      orchestratorId = orchestrator.id
      if (session) {
        const stopWatching = new AbortController()
        void orchestrator.done.then(() => stopWatching.abort())
        void session.finished(stopWatching.signal).then(() => {
          if (!stopWatching.signal.aborted) {
            log.info('every demo run has finished: stopping', { event: 'demo-done' })
            void orchestrator.stop()
          }
        }, (error: Error) => {
          log.error(`the demo could not follow its runs: ${error.message}`)
          void orchestrator.stop()
        })
      }
      exitCode = (await orchestrator.done).exitCode
    } else {
      log.info('stopped before the orchestrator started', { event: 'stopped', exitCode: 0 })
    }
    if (exitCode !== 0) this.resultExitCode = exitCode
    if (session) await session.cancelUnfinished()
    return { orchestratorId, exitCode, outcomes, ...(session ? { demo: await session.summary() } : {}) }
  }

  private async startOrchestrator(db: Database, demo: boolean, outcomes: Record<RunOutcome, number>): Promise<Orchestrator> {
    const log = this.logger
    const hooks: OrchestratorHooks[] = [{ onOutcome: (_task, outcome) => { outcomes[outcome] += 1 } }]
    let registry: import('prom-client').Registry | undefined
    if (this.flags['http-port'] !== undefined) {
      const { createMetrics } = lazy<typeof import('../http/metrics')>('../http/metrics')
      const metrics = createMetrics(db)
      hooks.push(metrics.hooks)
      registry = metrics.registry
    }
    const orchestrator = createOrchestrator({
      db,
      concurrency: demo ? 4 : this.flags.concurrency,
      pollIntervalMs: demo ? 250 : this.flags['poll-interval'],
      maintenanceCheckIntervalMs: demo ? 1000 : this.flags['maintenance-check-interval'],
      shutdownTimeoutMs: this.flags['shutdown-timeout'],
      staleMs: orchestratorStaleMs(),
      autoMigrate: this.flags['auto-migrate'],
      untilIdle: this.flags['until-idle'],
      listen: !this.flags['no-listen'],
      secretKey: process.env.PIPEWEAVE_SECRET_KEY || undefined,
      logger: log,
      hooks: combineHooks(hooks),
    })
    if (registry) {
      const { startHealthServer } = lazy<typeof import('../http/health')>('../http/health')
      const health = await startHealthServer({ port: this.flags['http-port']!, db, isReady: () => orchestrator.isReady(), registry })
      log.info(`health and metrics on http://0.0.0.0:${health.port} (/healthz, /readyz, /metrics)`, { event: 'http', port: health.port })
      this.onRelease(() => health.close())
    }
    try {
      await orchestrator.start()
    } catch (error) {
      await orchestrator.stop().catch(() => undefined)
      throw error
    }
    // Only a started orchestrator is handed to the signal handlers: stop() during start() would
    // race the loops start() is about to create. A signal that came meanwhile is acted on now.
    this.orchestrator = orchestrator
    if (this.stopRequested) void orchestrator.stop()
    return orchestrator
  }

  protected async runDatabase(demo: boolean): Promise<Database> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { createDatabase } = require('../db/database') as typeof import('../db/database')
    const config = this.databaseConfig({ command: demo ? 'run --demo' : 'run', logSlowQueries: true })
    // The loop's statements take milliseconds; one that gets no answer in a minute is on a dead
    // connection (or past DB_STATEMENT_TIMEOUT_MS, which then answers first).
    const statementTimeout = optionalInt(process.env, 'DB_STATEMENT_TIMEOUT_MS') ?? 0
    config.queryTimeoutMs = optionalInt(process.env, 'DB_QUERY_TIMEOUT_MS', 1) ?? Math.max(60_000, statementTimeout + 10_000)
    if (demo) {
      // The demo never reaches a real deployment's orchestrators: always the embedded database.
      let source: string | undefined
      try {
        const configured = resolveConnection(config.flags ?? {}, process.env)
        if (configured.kind !== 'embedded') source = configured.source
      } catch {
        source = 'the configured database (it is not valid either)' // a malformed setting is ignored too
      }
      if (source) {
        this.logger.info(`--demo uses the embedded database; ignoring ${source}`)
        // Only a setting in the environment follows the commands of "Try next".
        if (['DATABASE_URL', 'DB_*', 'PG*'].includes(source)) this.ignoredConnection = source
      }
      config.flags = {}
      config.env = embeddedOnly(process.env)
    }
    const db = await createDatabase(config)
    this.onRelease(() => db.close())
    return db
  }

  private installSignalHandlers(log: Logger): void {
    let interrupts = 0
    const onSignal = (signal: NodeJS.Signals) => {
      interrupts += 1
      const orchestrator = this.orchestrator
      if (interrupts === 1) {
        this.stopRequested = signal
        log.info(`${signal} received: stopping${orchestrator ? '' : ' once start-up is done'} (a second SIGINT stops at once)`, { event: 'signal', signal })
        if (orchestrator) void orchestrator.stop()
      } else if (signal === 'SIGINT' || interrupts > 2) {
        if (orchestrator) {
          void orchestrator.stop({ force: true })
        } else {
          // Still starting (waiting on the database): nothing to hand back, leave now.
          log.warn(`${signal} again: exiting before start-up finished`, { event: 'signal', signal })
          process.exit(130)
        }
      }
    }
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
    this.onRelease(async () => {
      process.off('SIGTERM', onSignal)
      process.off('SIGINT', onSignal)
    })
  }

  protected render(result: RunResult): void {
    if (result.demo) renderDemo(this.out, result.demo, this.config.bin, this.ignoredConnection)
    const o = result.outcomes
    const who = result.orchestratorId ? `Orchestrator ${result.orchestratorId}` : 'Stopped before the orchestrator started;'
    this.out.line(`${who}${result.orchestratorId ? ' stopped:' : ''} ${o.completed} completed, ${o.cached} from cache, ${o.retried} retried, ${o.failed} failed, ${o.timeout} timed out.`)
  }
}

function combineHooks(list: OrchestratorHooks[]): OrchestratorHooks {
  return {
    onOutcome: (task, outcome) => list.forEach((h) => h.onOutcome?.(task, outcome)),
    onDispatch: (task, seconds) => list.forEach((h) => h.onDispatch?.(task, seconds)),
    onInFlight: (count) => list.forEach((h) => h.onInFlight?.(count)),
    onMode: (mode) => list.forEach((h) => h.onMode?.(mode)),
  }
}

function renderDemo(out: import('../output').Output, runs: DemoRunSummary[], bin: string, ignoredConnection?: string): void {
  out.line(out.style.bold('The demo runs:'))
  out.table(['Task', 'Status', 'Attempts', 'What happened', 'Result'], runs.map((r) => [r.taskId, r.status, r.attempts, r.happened, r.result.slice(0, 60)]))
  const dead = runs.find((r) => r.status === 'failed' || r.status === 'timeout')
  out.line('')
  out.line(out.style.bold('Try next:'))
  if (ignoredConnection) {
    // Every other command would go to the configured database, not to the demo's.
    out.line(`  (${ignoredConnection} is set, and these commands would use it: unset it first to look at the demo's database)`)
  }
  out.line(`  npx ${bin} runs:list                  the runs, newest first`)
  out.line(`  npx ${bin} runs:show ${runs[0]?.runId ?? 'RUN_ID'}   one run with its input, output and attempts`)
  out.line(`  npx ${bin} dlq:list                   what failed for good${dead ? ` (${dead.taskId} is there)` : ''}`)
  out.line(`  npx ${bin} maintenance:status         the maintenance mode`)
  out.line('  README: "Your own worker" walks you from here to a task of your own.')
}

/** Modules only some runs need (the demo, prom-client) stay off the start-up path. */
function lazy<T>(id: string): T {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(id) as T
}
