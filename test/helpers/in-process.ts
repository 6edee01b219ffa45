/**
 * The orchestrator loop in the test's own process, against the real database and a real HTTP
 * worker, through createOrchestrator: for what a real `pipeweave run` cannot be made to do on
 * purpose (a claim whose answer arrives late, a batch of results the database refuses). The
 * statements are pipeweave's own (createRepository), wrapped by the test.
 */
import type { Database } from '../../src/db/database'
import type { LogFields, Logger } from '../../src/logger'
import { type Orchestrator, type OrchestratorOptions, createOrchestrator } from '../../src/orchestrator/orchestrator'
import { apiDatabase } from './db'
import type { LogLine } from './orchestrator'
import { waitFor } from './wait'

/** A logger that keeps every line as the JSON log format would print it. */
export function captureLogger(): Logger & { lines: LogLine[] } {
  const lines: LogLine[] = []
  const at = (level: LogLine['level']) => (msg: string, fields: LogFields = {}) => {
    lines.push({ time: new Date().toISOString(), level, msg, ...fields } as LogLine)
  }
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }
}

export interface InProcess {
  orchestrator: Orchestrator
  db: Database
  log: LogLine[]
  waitForLog(predicate: (line: LogLine) => boolean, options?: { timeoutMs?: number; what?: string }): Promise<LogLine>
  /** Stop the orchestrator (graceful) and close its pool. */
  stop(): Promise<{ exitCode: number }>
}

/** Start an orchestrator in this process on the test database at `url`. */
export async function startInProcess(url: string, options: Omit<OrchestratorOptions, 'db' | 'logger'>): Promise<InProcess> {
  const db = await apiDatabase(url)
  const logger = captureLogger()
  const orchestrator = createOrchestrator({ listen: false, ...options, db, logger })
  let stopped: Promise<{ exitCode: number }> | undefined
  const stop = () => {
    stopped ??= orchestrator.stop().finally(() => db.close())
    return stopped
  }
  live.add(stop)
  try {
    await orchestrator.start()
  } catch (error) {
    await stop()
    throw error
  }
  return {
    orchestrator,
    db,
    log: logger.lines,
    waitForLog: (predicate, opts = {}) => waitFor(() => logger.lines.find(predicate), { timeoutMs: opts.timeoutMs, what: opts.what ?? 'a log line' }),
    stop: () => {
      live.delete(stop)
      return stop()
    },
  }
}

const live = new Set<() => Promise<unknown>>()

/** For afterEach: stop whatever orchestrator a test left running. */
export async function stopLeftoverOrchestrators(): Promise<number> {
  const left = [...live]
  live.clear()
  await Promise.all(left.map((stop) => stop().catch(() => undefined)))
  return left.length
}
