/**
 * The leak check: after each test, and after each file, whatever a test started and did not stop
 * (a child process, an in-process orchestrator) is stopped here and the test fails, naming it.
 * A cleanup in the test file's own afterEach that quietly killed leftovers would hide the leak.
 *
 * Registries (helpers/processes.ts, helpers/in-process.ts) register a check here when they load.
 * leak-environment.ts (the suite's jest environment) calls the checks once a test is done, after
 * every afterEach hook of the file has run, and once the file is done, after every afterAll hook:
 * hooks of a setupFilesAfterEnv file would run before the file's own top-level hooks, and would
 * count as leaked what the file's afterEach or afterAll stops as it should.
 */

/** Where in the file something was started: during a test (with its name), or in a beforeAll. */
export type Scope = { test: string } | { file: true }

/**
 * A registry's check: stop what was started in `scope` and is still running, and describe each
 * (`run --concurrency 5 (pid 123)`). For `{ file: true }`: everything still running.
 */
export type LeakCheck = (scope: Scope) => Promise<LeakReport | undefined>

export interface LeakReport {
  /** The kind of thing that was left, for one and for many: ['process', 'processes']. */
  kind: [string, string]
  /** What was done about them, as the end of the message ("the leak check killed them (SIGKILL)"). */
  action: string
  items: string[]
}

const checks = new Set<LeakCheck>()

export function registerLeakCheck(check: LeakCheck): void {
  checks.add(check)
}

/** The name of the test running now (describe names and its own), or undefined in a beforeAll/afterAll. */
export function currentTest(): string | undefined {
  return (globalThis as GlobalWithLeaks)[TEST_KEY]
}

/** Run every check for `scope`; an Error naming what was left, or undefined. */
async function checkLeaks(scope: Scope): Promise<Error | undefined> {
  const reports: LeakReport[] = []
  for (const check of checks) {
    const report = await check(scope)
    if (report && report.items.length > 0) reports.push(report)
  }
  if (reports.length === 0) return undefined
  const who = 'test' in scope ? 'this test' : 'this file (in beforeAll/afterAll hooks, outside any test)'
  const lines = reports.map((r) => `${who} left ${r.items.length} ${r.kind[r.items.length === 1 ? 0 : 1]} running: ${r.items.join(', ')}; ${r.action}.`)
  const hint = 'test' in scope
    ? 'A test stops what it starts (e.g. `expect((await run.stop()).code).toBe(0)`, `await orchestrator.stop()`).'
    : 'Stop what a beforeAll starts in the matching afterAll.'
  const error = new Error(`${lines.join('\n')}\n${hint}`)
  error.stack = error.message // the stack of the check itself says nothing about the test
  return error
}

// ---------------------------------------------------------------------------------------------
// The bridge to leak-environment.ts, which lives outside the test's module registry.

export const BRIDGE_KEY = '__pipeweaveLeakCheck'
export const TEST_KEY = '__pipeweaveCurrentTest'

export interface LeakBridge {
  check(scope: Scope): Promise<Error | undefined>
}

interface GlobalWithLeaks {
  [BRIDGE_KEY]?: LeakBridge
  [TEST_KEY]?: string
}

;(globalThis as GlobalWithLeaks)[BRIDGE_KEY] = { check: checkLeaks }
