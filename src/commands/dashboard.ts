import { orchestratorStaleMs } from '../api/settings'
import { BaseCommand, Flags } from '../base-command'
import type { Logger } from '../logger'
import { processLogger } from '../output'

interface DashboardResult {
  url: string
}

export default class Dashboard extends BaseCommand<typeof Dashboard, DashboardResult> {
  static summary = 'Serve the web dashboard: queue, throughput, orchestrators, runs, the DLQ and maintenance.'
  static description = `Pages rendered by the server, refreshed every few seconds; one read of the database per refresh
whatever the number of viewers, on a pool of 2 connections with a statement timeout (DB_STATEMENT_TIMEOUT_MS, default
5000). Read-only unless PIPEWEAVE_DASHBOARD_TOKEN is set: then a browser that presents the token once may request and
exit maintenance, retry DLQ entries and cancel pending runs (recorded with the actor "dashboard"). Inputs and outputs
are shown to such a browser only, or to everyone with --show-payloads. Runs until Ctrl-C or SIGTERM.
--host and --port are the dashboard's: the database comes from --url, DATABASE_URL, DB_* or PG*.
\`pipeweave run --http-port N --dashboard\` serves the same pages beside /healthz and /metrics.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Read-only, on http://127.0.0.1:8080 (this machine only).' },
    { command: 'PIPEWEAVE_DASHBOARD_TOKEN=$(openssl rand -hex 24) <%= config.bin %> <%= command.id %> --port 9000', description: 'With actions: present the token once in the browser.' },
    { command: '<%= config.bin %> <%= command.id %> --host 0.0.0.0 --show-payloads', description: 'Reachable from other machines (put it behind your own access control), inputs and outputs shown.' },
  ]
  static flags = {
    port: Flags.integer({ summary: 'Port to serve on (0: any free port).', default: 8080, min: 0, max: 65535 }),
    host: Flags.string({ summary: 'Address to bind (default 127.0.0.1: this machine only).', default: '127.0.0.1' }),
    'show-payloads': Flags.boolean({ summary: 'Show run inputs and outputs to every viewer, not only to a browser that presented the token.' }),
    'refresh-interval': Flags.integer({ summary: 'Milliseconds between refreshes (and how long one read is shared).', env: 'PIPEWEAVE_DASHBOARD_REFRESH_MS', default: 3000, min: 250, max: 600_000 }),
    'log-format': Flags.string({ summary: 'pretty (default on a terminal) or json (default otherwise).', options: ['pretty', 'json'] }),
  }

  protected handlesSignals = false

  protected get logger(): Logger {
    const format = (this.flags?.['log-format'] as 'pretty' | 'json' | undefined) ?? (process.stderr.isTTY ? 'pretty' : 'json')
    return processLogger(process.stderr, format, this.flags?.verbose, process.env)
  }

  protected async execute(): Promise<DashboardResult> {
    const log = this.logger
    const staleMs = orchestratorStaleMs()
    // Stop on the first signal, whenever it comes (before the server is up too).
    let stop!: () => void
    const stopped = new Promise<void>((resolve) => { stop = resolve })
    const onSignal = () => stop()
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
    this.onRelease(async () => {
      process.removeListener('SIGINT', onSignal)
      process.removeListener('SIGTERM', onSignal)
    })
    const { openDashboardDatabase } = lazy<typeof import('../dashboard/database')>('../dashboard/database')
    // --host and --port are the dashboard's own here (SPEC §8): the database comes from --url or the
    // environment (DATABASE_URL, DB_*, PG*).
    const config = this.databaseConfig({ command: 'dashboard', logSlowQueries: true })
    config.flags = { ...config.flags, host: undefined, port: undefined }
    const db = await openDashboardDatabase(config)
    this.onRelease(() => db.close())
    const { createDashboard, startDashboardServer } = lazy<typeof import('../dashboard/server')>('../dashboard/server')
    const token = process.env.PIPEWEAVE_DASHBOARD_TOKEN || undefined
    const dashboard = createDashboard({
      db, token, showPayloads: this.flags['show-payloads'], refreshMs: this.flags['refresh-interval'], staleMs, logger: log,
    })
    const server = await startDashboardServer(dashboard, { port: this.flags.port ?? 8080, host: this.flags.host ?? '127.0.0.1' })
    this.onRelease(() => server.close())
    const url = `http://${server.host.includes(':') ? `[${server.host}]` : server.host}:${server.port}`
    log.info(`dashboard on ${url} (${token ? 'actions with the token' : 'read-only: set PIPEWEAVE_DASHBOARD_TOKEN to allow actions'}${this.flags['show-payloads'] ? ', payloads shown' : ''}); Ctrl-C stops it`,
      { event: 'dashboard', url, port: server.port, host: server.host, actions: Boolean(token) })
    await stopped
    log.info('dashboard stopped', { event: 'stopped' })
    return { url }
  }

  protected render(): void {
    // Everything was said on stderr while it ran.
  }
}

/** The server's modules only when it starts (--help stays quick). */
function lazy<T>(id: string): T {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(id) as T
}
