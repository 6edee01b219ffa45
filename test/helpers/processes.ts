/**
 * The one registry of the child processes tests start: CLI processes (helpers/cli.ts startCli, so
 * runCli and startRun too), PgBouncer (helpers/pgbouncer.ts), and whatever a test spawns itself
 * (spawnTracked, or track(spawn(…))). Each remembers the test that started it. The leak check
 * (helpers/leaks.ts) kills, once a test is done, every process that test started and left
 * running, and fails the test naming them; once the file is done, whatever is left from its
 * beforeAll hooks.
 */
import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process'
import * as path from 'node:path'
import { currentTest, registerLeakCheck } from './leaks'

interface Tracked {
  child: ChildProcess
  label: string
  /** The test that started it; undefined for a beforeAll (or a module's top level). */
  startedIn: string | undefined
}

const tracked = new Set<Tracked>()

/** Has not exited yet (an exit code or a signal is set once it has). */
export function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null
}

/**
 * Remember `child` for the leak check, under `label` (by default its command line, shortened):
 * the label names it when a test leaves it running.
 */
export function track<C extends ChildProcess>(child: C, label?: string): C {
  // A spawn that failed (ENOENT) has no pid and never runs: its 'error' is the caller's to handle.
  if (child.pid === undefined) return child
  const entry: Tracked = { child, label: shorten(label ?? commandLine(child)), startedIn: currentTest() }
  tracked.add(entry)
  child.once('exit', () => tracked.delete(entry))
  return child
}

/** spawn(), tracked. */
export function spawnTracked(command: string, args: readonly string[], options: SpawnOptions = {}, label?: string): ChildProcess {
  return track(spawn(command, args, options), label)
}

function commandLine(child: ChildProcess): string {
  const [file, ...args] = child.spawnargs
  return [path.basename(file ?? '?'), ...args].join(' ')
}

function shorten(label: string): string {
  const line = label.replace(/\s+/g, ' ')
  return line.length > 120 ? `${line.slice(0, 117)}...` : line
}

/** The tracked processes still running, by label and pid. */
export function runningProcesses(): Array<{ label: string; pid: number }> {
  return [...tracked].filter((e) => running(e.child)).map((e) => ({ label: e.label, pid: e.child.pid! }))
}

/** SIGKILL and wait for the exit (not forever: a process of another user may refuse the signal). */
async function kill(child: ChildProcess): Promise<void> {
  if (!running(child)) return
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 10_000)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
    if (!child.kill('SIGKILL') && !running(child)) {
      clearTimeout(timer)
      resolve()
    }
  })
}

registerLeakCheck(async (scope) => {
  const left = [...tracked].filter((e) => running(e.child) && ('file' in scope || e.startedIn === scope.test))
  if (left.length === 0) return undefined
  await Promise.all(left.map((e) => kill(e.child)))
  return {
    kind: ['process', 'processes'],
    action: `the leak check killed ${left.length === 1 ? 'it' : 'them'} (SIGKILL)`,
    items: left.map((e) => `${e.label} (pid ${e.child.pid})`),
  }
})
