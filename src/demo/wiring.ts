/**
 * How `run --demo` is put together around the orchestrator: the embedded database whatever is
 * configured (a demo never reaches a real deployment's orchestrators), the demo session, the stop
 * once every demo run has finished, and the summary with what to try next.
 */
import { resolveConnection } from '../db/config'
import type { DatabaseConfig } from '../db/database'
import type { Logger } from '../logger'
import type { Orchestrator } from '../orchestrator/orchestrator'
import type { Output } from '../output'
import type { DemoRunSummary, DemoSession } from './demo'

/**
 * The configuration `--demo` connects with: the embedded database. Returns the connection setting
 * it ignored, when one that the "Try next" commands would follow is set in the environment.
 */
export function demoDatabaseConfig(config: DatabaseConfig, log: Logger): { config: DatabaseConfig; ignored?: string } {
  let source: string | undefined
  try {
    const configured = resolveConnection(config.flags ?? {}, config.env ?? process.env)
    if (configured.kind !== 'embedded') source = configured.source
  } catch {
    source = 'the configured database (it is not valid either)' // a malformed setting is ignored too
  }
  if (source) log.info(`--demo uses the embedded database; ignoring ${source}`)
  const env = Object.fromEntries(Object.entries(config.env ?? process.env).filter(([key]) => !/^(DATABASE_URL|DB_|PG)/.test(key)))
  return {
    config: { ...config, flags: {}, env },
    // Only a setting in the environment follows the commands of "Try next".
    ignored: source && ['DATABASE_URL', 'DB_*', 'PG*'].includes(source) ? source : undefined,
  }
}

/** Stop the orchestrator once every demo run has finished (or following them failed). */
export function stopWhenDemoDone(session: DemoSession, orchestrator: Orchestrator, log: Logger): void {
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

export function renderDemo(out: Output, runs: DemoRunSummary[], bin: string, ignoredConnection?: string): void {
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
