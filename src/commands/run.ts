import { ORCHESTRATION_DEFAULTS, breakerSettings, orchestratorStaleMs } from '../api/settings'
import { BaseCommand, Flags } from '../base-command'
import { optionalInt } from '../db/config'
import type { Database } from '../db/database'
import type { DemoRunSummary } from '../demo/demo'
import type { Logger } from '../logger'
import type { Orchestrator, OrchestratorHooks, RunOutcome } from '../orchestrator/orchestrator'
import type { SignalPolicy } from '../orchestrator/shutdown'
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

export default class Run extends BaseCommand<typeof Run, RunResult> {
  static summary = 'Run the orchestrator in the foreground: claim queued task runs and dispatch them to workers.'
  static description = `Several \`run\` processes on several machines can share one database. SIGTERM or SIGINT stops claiming,
lets runs in flight finish within --shutdown-timeout, hands the rest back to pending and exits 0; a second
SIGINT stops at once and exits 130. It also stops when its parent process goes away. Logs go to stderr:
pretty on a terminal, JSON lines otherwise. In a container, run node_modules/.bin/pipeweave run (npx does
not pass SIGTERM on).`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Dispatch with the defaults (10 at a time).' },
    { command: 'MAX_CONCURRENCY=50 <%= config.bin %> <%= command.id %> --auto-migrate --log-format json', description: 'In a container: migrate if needed, JSON logs.' },
    { command: '<%= config.bin %> <%= command.id %> --until-idle', description: 'A batch job: exit once nothing is due or running.' },
    { command: '<%= config.bin %> <%= command.id %> --http-port 9090', description: 'Serve /healthz, /readyz and /metrics for Kubernetes probes and Prometheus.' },
    { command: '<%= config.bin %> <%= command.id %> --http-port 9090 --dashboard', description: 'The same, and the web dashboard on http://127.0.0.1:9090/ (loopback only unless --dashboard-host).' },
    { command: '<%= config.bin %> <%= command.id %> --demo', description: 'Try it out: a demo worker and a few demo runs on the embedded database; ends by itself.' },
  ]
  static flags = {
    concurrency: Flags.integer({ summary: 'Dispatches awaiting a worker\'s answer at once.', env: 'MAX_CONCURRENCY', default: ORCHESTRATION_DEFAULTS.concurrency, min: 1, max: 10_000 }),
    'poll-interval': Flags.integer({ summary: 'Milliseconds between polls when idle.', env: 'POLL_INTERVAL_MS', default: ORCHESTRATION_DEFAULTS.pollIntervalMs, min: 1, max: DAY_MS }),
    'maintenance-check-interval': Flags.integer({ summary: 'Milliseconds between drain checks.', env: 'MAINTENANCE_CHECK_INTERVAL_MS', default: ORCHESTRATION_DEFAULTS.maintenanceCheckIntervalMs, min: 1, max: DAY_MS }),
    'shutdown-timeout': Flags.integer({ summary: 'Milliseconds to let runs finish on SIGTERM.', env: 'SHUTDOWN_TIMEOUT_MS', default: ORCHESTRATION_DEFAULTS.shutdownTimeoutMs, min: 0, max: DAY_MS }),
    'auto-migrate': Flags.boolean({ summary: 'Apply pending migrations at start instead of refusing.', env: 'AUTO_MIGRATE' }),
    'until-idle': Flags.boolean({ summary: 'Exit 0 once no run is due or running.' }),
    'log-format': Flags.string({ summary: 'pretty (default on a terminal) or json (default otherwise).', options: ['pretty', 'json'] }),
    'no-listen': Flags.boolean({ summary: 'Poll only, no LISTEN/NOTIFY (behind PgBouncer transaction pooling).', env: 'PIPEWEAVE_NO_LISTEN' }),
    'http-port': Flags.integer({ summary: 'Serve /healthz, /readyz and /metrics on this port.', env: 'PIPEWEAVE_HTTP_PORT', min: 0, max: 65535 }),
    'http-host': Flags.string({ summary: 'Address the --http-port server binds (PIPEWEAVE_HTTP_HOST; default 0.0.0.0, what container probes need).', env: 'PIPEWEAVE_HTTP_HOST' }),
    dashboard: Flags.boolean({ summary: 'Serve the web dashboard on the --http-port server too (see `pipeweave dashboard`).', dependsOn: ['http-port'] }),
    'dashboard-host': Flags.string({ summary: 'The address the dashboard answers on (default 127.0.0.1: this machine only, whatever --http-host says; 0.0.0.0 for every address).', dependsOn: ['dashboard'] }),
    'show-payloads': Flags.boolean({ summary: 'With --dashboard: show run inputs and outputs to every viewer, not only to a browser that presented the token.', dependsOn: ['dashboard'] }),
    demo: Flags.boolean({ summary: 'Run a built-in demo worker and a few demo tasks on the embedded database, then exit.' }),
  }

  protected handlesSignals = false
  /** The connection setting --demo ignored, to say so beside "Try next". */
  private ignoredConnection?: string

  protected get logger(): Logger {
    const format = (this.flags?.['log-format'] as 'pretty' | 'json' | undefined) ?? (process.stderr.isTTY ? 'pretty' : 'json')
    return processLogger(process.stderr, format, this.flags?.verbose, process.env, { batched: true })
  }

  protected async execute(): Promise<RunResult> {
    const log = this.logger
    const demo = this.flags.demo
    const staleMs = orchestratorStaleMs()
    const breaker = breakerSettings()
    const { installSignalPolicy } = lazy<typeof import('../orchestrator/shutdown')>('../orchestrator/shutdown')
    const signals = installSignalPolicy(log)
    this.onRelease(async () => signals.dispose())
    if (demo) log.info('starting the demo: the embedded database, a demo worker and a few runs (Ctrl-C stops it)', { event: 'demo-start' })
    const db = await this.runDatabase(demo)
    const session = demo && !signals.requested
      ? await lazy<typeof import('../demo/demo')>('../demo/demo').prepareDemo(db, log)
      : undefined
    if (session) this.onRelease(() => session.worker.close())

    const outcomes: Record<RunOutcome, number> = { completed: 0, cached: 0, retried: 0, failed: 0, timeout: 0, deferred: 0 }
    let orchestratorId: string | null = null
    let exitCode = 0
    if (!signals.requested) {
      const orchestrator = await this.startOrchestrator(db, demo, { staleMs, breaker }, outcomes, signals)
      orchestratorId = orchestrator.id
      if (session) lazy<typeof import('../demo/wiring')>('../demo/wiring').stopWhenDemoDone(session, orchestrator, log)
      exitCode = (await orchestrator.done).exitCode
    } else {
      log.info('stopped before the orchestrator started', { event: 'stopped', exitCode: 0 })
    }
    exitCode = signals.exitCode ?? exitCode
    if (exitCode !== 0) this.resultExitCode = exitCode
    if (session) await session.cancelUnfinished()
    return { orchestratorId, exitCode, outcomes, ...(session ? { demo: await session.summary() } : {}) }
  }

  private async startOrchestrator(db: Database, demo: boolean, settings: { staleMs: number; breaker: { cooldownMs: number; maxOpenMs: number } },
    outcomes: Record<RunOutcome, number>, signals: SignalPolicy): Promise<Orchestrator> {
    const { staleMs, breaker } = settings
    const log = this.logger
    const hooks: OrchestratorHooks[] = [{ onOutcome: (_task, outcome) => { outcomes[outcome] += 1 } }]
    let metrics: import('../http/metrics').Metrics | undefined
    if (this.flags['http-port'] !== undefined) {
      metrics = lazy<typeof import('../http/metrics')>('../http/metrics').createMetrics(db)
      hooks.push(metrics.hooks)
    }
    const { createOrchestrator } = lazy<typeof import('../orchestrator/orchestrator')>('../orchestrator/orchestrator')
    const orchestrator = createOrchestrator({
      db,
      concurrency: demo ? 4 : this.flags.concurrency,
      pollIntervalMs: demo ? 250 : this.flags['poll-interval'],
      maintenanceCheckIntervalMs: demo ? 1000 : this.flags['maintenance-check-interval'],
      shutdownTimeoutMs: this.flags['shutdown-timeout'],
      staleMs,
      breaker,
      autoMigrate: this.flags['auto-migrate'],
      untilIdle: this.flags['until-idle'],
      listen: !this.flags['no-listen'],
      secretKey: process.env.PIPEWEAVE_SECRET_KEY || undefined,
      logger: log,
      hooks: combineHooks(hooks),
    })
    if (metrics) {
      const { startHealthServer } = lazy<typeof import('../http/health')>('../http/health')
      const host = this.flags['http-host'] ?? '0.0.0.0'
      const dashboard = this.flags.dashboard ? await this.startDashboard(staleMs, host) : undefined
      const health = await startHealthServer({
        port: this.flags['http-port']!, host, registry: metrics.registry, staleMs,
        isReady: () => orchestrator.isReady(), health: () => orchestrator.health(), dashboard,
      })
      log.info(`health and metrics on http://${host}:${health.port} (/healthz, /readyz, /metrics)`, { event: 'http', port: health.port, host })
      if (dashboard) {
        const where = dashboard.host.includes(':') ? `[${dashboard.host}]` : dashboard.host === '0.0.0.0' ? host : dashboard.host
        log.info(`dashboard on http://${where}:${health.port}/ (${dashboard.actions ? 'actions with the token' : 'read-only: set PIPEWEAVE_DASHBOARD_TOKEN to allow actions'})`,
          { event: 'dashboard', port: health.port, host: dashboard.host, actions: dashboard.actions })
      }
      this.onRelease(() => health.close())
    }
    try {
      await orchestrator.start()
    } catch (error) {
      await orchestrator.stop().catch(() => undefined)
      throw error
    }
    // Only a started orchestrator is handed to the signal policy: stop() during start() would race
    // the loops start() is about to create. A signal that came meanwhile is acted on now.
    signals.attach(orchestrator)
    return orchestrator
  }

  /**
   * `--dashboard`: the pages on the health server's port, on a pool of their own (2 connections),
   * answering only on the dashboard's address (SPEC §8: loopback unless --dashboard-host).
   */
  private async startDashboard(staleMs: number, httpHost: string) {
    const log = this.logger
    const dashboardHost = this.flags['dashboard-host'] ?? '127.0.0.1'
    const { openDashboardDatabase } = lazy<typeof import('../dashboard/database')>('../dashboard/database')
    const { createDashboard, dashboardAddressGate } = lazy<typeof import('../dashboard/server')>('../dashboard/server')
    const db = await openDashboardDatabase(this.databaseConfig({ command: 'run --dashboard', logSlowQueries: true }))
    this.onRelease(() => db.close())
    const token = process.env.PIPEWEAVE_DASHBOARD_TOKEN || undefined
    const refreshMs = optionalInt(process.env, 'PIPEWEAVE_DASHBOARD_REFRESH_MS', 250)
    const dashboard = createDashboard({ db, token, showPayloads: this.flags['show-payloads'], refreshMs, staleMs, logger: log })
    const loopbackOnly = !this.flags['dashboard-host']
    if (loopbackOnly && !['0.0.0.0', '::', '127.0.0.1', 'localhost', '::1'].includes(httpHost)) {
      log.warn(`the dashboard answers on 127.0.0.1 only, which --http-host ${httpHost} does not listen on: add --dashboard-host ${httpHost}`, { event: 'dashboard-unreachable' })
    }
    return { handle: dashboard.handle, admits: dashboardAddressGate(dashboardHost), host: dashboardHost, actions: Boolean(token) }
  }

  protected async runDatabase(demo: boolean): Promise<Database> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { createDatabase } = require('../db/database') as typeof import('../db/database')
    let config = this.databaseConfig({ command: demo ? 'run --demo' : 'run', logSlowQueries: true })
    // The loop's statements take milliseconds; one that gets no answer in a minute is on a dead
    // connection (or past DB_STATEMENT_TIMEOUT_MS, which then answers first).
    const statementTimeout = optionalInt(process.env, 'DB_STATEMENT_TIMEOUT_MS') ?? 0
    config.queryTimeoutMs = optionalInt(process.env, 'DB_QUERY_TIMEOUT_MS', 1) ?? Math.max(60_000, statementTimeout + 10_000)
    // Planned once per connection (planning costs more than running the claim and completion):
    // not with --no-listen, which is what a transaction pooler needs (it drops named statements).
    config.prepareStatements = !this.flags['no-listen']
    if (demo) {
      const wiring = lazy<typeof import('../demo/wiring')>('../demo/wiring').demoDatabaseConfig({ ...config, env: process.env }, this.logger)
      config = wiring.config
      this.ignoredConnection = wiring.ignored
    }
    const db = await createDatabase(config)
    this.onRelease(() => db.close())
    return db
  }

  protected render(result: RunResult): void {
    if (result.demo) lazy<typeof import('../demo/wiring')>('../demo/wiring').renderDemo(this.out, result.demo, this.config.bin, this.ignoredConnection)
    const o = result.outcomes
    const who = result.orchestratorId ? `Orchestrator ${result.orchestratorId}` : 'Stopped before the orchestrator started;'
    const deferred = o.deferred > 0 ? `, ${o.deferred} deferred (service unreachable, attempt kept)` : ''
    this.out.line(`${who}${result.orchestratorId ? ' stopped:' : ''} ${o.completed} completed, ${o.cached} from cache, ${o.retried} retried, ${o.failed} failed, ${o.timeout} timed out${deferred}.`)
  }
}

function combineHooks(list: OrchestratorHooks[]): OrchestratorHooks {
  return {
    onOutcome: (task, outcome) => list.forEach((h) => h.onOutcome?.(task, outcome)),
    onDispatch: (task, seconds) => list.forEach((h) => h.onDispatch?.(task, seconds)),
    onInFlight: (count) => list.forEach((h) => h.onInFlight?.(count)),
    onMode: (mode) => list.forEach((h) => h.onMode?.(mode)),
    onScheduleTick: (schedule, tickMs, outcome) => list.forEach((h) => h.onScheduleTick?.(schedule, tickMs, outcome)),
    onRateLimited: (task) => list.forEach((h) => h.onRateLimited?.(task)),
  }
}

/** Modules only some runs need (the demo, prom-client) stay off the start-up path. */
function lazy<T>(id: string): T {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(id) as T
}
