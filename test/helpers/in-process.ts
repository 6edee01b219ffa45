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
import { type Scope, currentTest, registerLeakCheck } from './leaks'
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
  const entry: Live = { stop, label: `orchestrator ${orchestrator.id}`, startedIn: currentTest() }
  live.add(entry)
  try {
    await orchestrator.start()
  } catch (error) {
    live.delete(entry)
    await stop()
    throw error
  }
  return {
    orchestrator,
    db,
    log: logger.lines,
    waitForLog: (predicate, opts = {}) => waitFor(() => logger.lines.find(predicate), { timeoutMs: opts.timeoutMs, what: opts.what ?? 'a log line' }),
    stop: () => {
      live.delete(entry)
      return stop()
    },
  }
}

interface Live {
  stop(): Promise<unknown>
  label: string
  /** The test that started it; undefined for a beforeAll. */
  startedIn: string | undefined
}

const live = new Set<Live>()
/** Stopped by stopLeftoverOrchestrators(), not by their test: the leak check still reports them. */
const stoppedLeftovers: Live[] = []

/**
 * For a file's afterEach, before it drops the database the orchestrators use: stop whatever
 * orchestrator a test left running (gracefully; the pool closed after). This is not a pass: the
 * leak check (helpers/leaks.ts) fails the test that left it, naming it. A test stops its own
 * orchestrators (`expect(await p.stop()).toEqual({ exitCode: 0 })`).
 */
export async function stopLeftoverOrchestrators(): Promise<number> {
  const left = [...live]
  live.clear()
  await Promise.all(left.map((l) => l.stop().catch(() => undefined)))
  stoppedLeftovers.push(...left)
  return left.length
}

registerLeakCheck(async (scope: Scope) => {
  const inScope = (l: Live) => 'file' in scope || l.startedIn === scope.test
  const left = [...live].filter(inScope)
  for (const l of left) live.delete(l)
  await Promise.all(left.map((l) => l.stop().catch(() => undefined)))
  const earlier = stoppedLeftovers.filter(inScope)
  for (const l of earlier) stoppedLeftovers.splice(stoppedLeftovers.indexOf(l), 1)
  const all = [...earlier, ...left]
  if (all.length === 0) return undefined
  const them = all.length === 1 ? 'it' : 'them'
  return {
    kind: ['in-process orchestrator', 'in-process orchestrators'],
    action: left.length === 0 ? `the file's stopLeftoverOrchestrators() stopped ${them}`
      : earlier.length === 0 ? `the leak check stopped ${them}`
        : `the file's stopLeftoverOrchestrators() stopped ${earlier.map((l) => l.label).join(', ')}, the leak check the others`,
    items: all.map((l) => l.label),
  }
})
