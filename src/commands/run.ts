import { Flags } from '@oclif/core'
import { ORCHESTRATION_DEFAULTS, orchestratorStaleMs } from '../api/settings'
import { BaseCommand } from '../base-command'
import type { Database } from '../db/database'
import type { Logger } from '../logger'
import { createOrchestrator, type Orchestrator, type RunOutcome } from '../orchestrator/orchestrator'
import { processLogger } from '../output'

interface RunResult {
  orchestratorId: string
  exitCode: number
  outcomes: Record<RunOutcome, number>
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
  ]
  static flags = {
    concurrency: Flags.integer({ summary: 'Runs in flight at once.', env: 'MAX_CONCURRENCY', default: ORCHESTRATION_DEFAULTS.concurrency, min: 1 }),
    'poll-interval': Flags.integer({ summary: 'Milliseconds between polls when idle.', env: 'POLL_INTERVAL_MS', default: ORCHESTRATION_DEFAULTS.pollIntervalMs, min: 1 }),
    'maintenance-check-interval': Flags.integer({ summary: 'Milliseconds between drain checks.', env: 'MAINTENANCE_CHECK_INTERVAL_MS', default: ORCHESTRATION_DEFAULTS.maintenanceCheckIntervalMs, min: 1 }),
    'shutdown-timeout': Flags.integer({ summary: 'Milliseconds to let runs finish on SIGTERM.', env: 'SHUTDOWN_TIMEOUT_MS', default: ORCHESTRATION_DEFAULTS.shutdownTimeoutMs, min: 0 }),
    'auto-migrate': Flags.boolean({ summary: 'Apply pending migrations at start instead of refusing.', env: 'AUTO_MIGRATE' }),
    'until-idle': Flags.boolean({ summary: 'Exit 0 once no run is due or running.' }),
    'log-format': Flags.string({ summary: 'pretty (default on a terminal) or json (default otherwise).', options: ['pretty', 'json'] }),
    'no-listen': Flags.boolean({ summary: 'Poll only, no LISTEN/NOTIFY (behind PgBouncer transaction pooling).', env: 'PIPEWEAVE_NO_LISTEN' }),
  }

  protected handlesSignals = false
  private orchestrator?: Orchestrator

  protected get logger(): Logger {
    const format = (this.flags?.['log-format'] as 'pretty' | 'json' | undefined) ?? (process.stderr.isTTY ? 'pretty' : 'json')
    return processLogger(process.stderr, format, this.flags?.verbose)
  }

  protected async execute(): Promise<RunResult> {
    const log = this.logger
    const db = await this.runDatabase()
    const outcomes: Record<RunOutcome, number> = { completed: 0, cached: 0, retried: 0, failed: 0, timeout: 0 }
    const orchestrator = createOrchestrator({
      db,
      concurrency: this.flags.concurrency,
      pollIntervalMs: this.flags['poll-interval'],
      maintenanceCheckIntervalMs: this.flags['maintenance-check-interval'],
      shutdownTimeoutMs: this.flags['shutdown-timeout'],
      staleMs: orchestratorStaleMs(),
      autoMigrate: this.flags['auto-migrate'],
      untilIdle: this.flags['until-idle'],
      listen: !this.flags['no-listen'],
      secretKey: process.env.PIPEWEAVE_SECRET_KEY || undefined,
      logger: log,
      hooks: { onOutcome: (_task, outcome) => { outcomes[outcome] += 1 } },
    })
    this.orchestrator = orchestrator
    this.installSignalHandlers(orchestrator, log)
    try {
      await orchestrator.start()
    } catch (error) {
      await orchestrator.stop().catch(() => undefined)
      throw error
    }
    const { exitCode } = await orchestrator.done
    if (exitCode !== 0) this.resultExitCode = exitCode
    return { orchestratorId: orchestrator.id, exitCode, outcomes }
  }

  protected async runDatabase(): Promise<Database> {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { createDatabase } = require('../db/database') as typeof import('../db/database')
    const db = await createDatabase(this.databaseConfig({ command: 'run', logSlowQueries: true }))
    this.onRelease(() => db.close())
    return db
  }

  private installSignalHandlers(orchestrator: Orchestrator, log: Logger): void {
    let interrupts = 0
    const onSignal = (signal: NodeJS.Signals) => {
      interrupts += 1
      if (interrupts === 1) {
        log.info(`${signal} received: stopping (a second SIGINT stops at once)`, { event: 'signal', signal })
        void orchestrator.stop()
      } else if (signal === 'SIGINT' || interrupts > 2) {
        void orchestrator.stop({ force: true })
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
    const o = result.outcomes
    this.out.line(`Orchestrator ${result.orchestratorId} stopped: ${o.completed} completed, ${o.cached} from cache, ${o.retried} retried, ${o.failed} failed, ${o.timeout} timed out.`)
  }
}
