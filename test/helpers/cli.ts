/**
 * Running the built CLI (bin/run.js) as a real process, the way operators and scripts do.
 * The child gets a clean environment: no connection variable leaks in from the machine.
 * Every child is tracked (helpers/processes.ts): a test that leaves one running fails.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { track } from './processes'

export const BIN = path.resolve(__dirname, '..', '..', 'bin', 'run.js')

const CONNECTION_VARS = /^(DATABASE_URL|DB_|PG|PIPEWEAVE_|NODE_ENV$|DEBUG$|MAX_CONCURRENCY$|POLL_INTERVAL_MS$|MAINTENANCE_CHECK_INTERVAL_MS$|SHUTDOWN_TIMEOUT_MS$|AUTO_MIGRATE$|ORCHESTRATOR_STALE_MS$)/

/** The parent's environment without any connection or pipeweave setting, plus `extra`. */
export function cleanEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (!CONNECTION_VARS.test(key)) env[key] = value
  }
  env.NO_COLOR = '1'
  // An accidental embedded start must never touch the repository's .pipeweave.
  env.PIPEWEAVE_HOME = scratchHome()
  // The suite's schema (helpers/db.ts TEST_SCHEMA) follows every command, as an operator's
  // environment would carry it; a test that means another schema says so in `extra`.
  if (process.env.PIPEWEAVE_TEST_SCHEMA) env.PIPEWEAVE_SCHEMA = process.env.PIPEWEAVE_TEST_SCHEMA
  for (const [key, value] of Object.entries(extra)) {
    if (value === undefined) delete env[key]
    else env[key] = value
  }
  return env
}

let home: string | undefined
function scratchHome(): string {
  if (!home) {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-cli-home-'))
    fs.chmodSync(home, 0o755)
  }
  return home
}

export interface CliResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** Wall time from spawn to exit, for generous bounds only ("within the connect timeout"). */
  ms: number
}

export interface CliOptions {
  env?: Record<string, string | undefined>
  cwd?: string
  input?: string
  timeoutMs?: number
  /** Another executable than this checkout's bin/run.js (a throw-away install, helpers/install.ts). */
  bin?: string
}

/** Run `pipeweave <args>` to completion. */
export function runCli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  const child = startCli(args, options)
  return child.done
}

export interface RunningCli {
  child: ChildProcess
  done: Promise<CliResult>
  stdout(): string
  stderr(): string
}

/**
 * Start `pipeweave <args>` and return at once (long-running commands, signals). The test must see
 * it end (await `done`, after a signal if need be): the leak check fails a test that leaves it.
 */
export function startCli(args: string[], options: CliOptions = {}): RunningCli {
  const child = track(spawn(process.execPath, [options.bin ?? BIN, ...args], {
    env: cleanEnv(options.env),
    cwd: options.cwd ?? os.tmpdir(),
    stdio: ['pipe', 'pipe', 'pipe'],
  }), `pipeweave ${args.join(' ')}`)
  const started = Date.now()
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (chunk) => { stdout += chunk })
  child.stderr!.on('data', (chunk) => { stderr += chunk })
  if (options.input !== undefined) child.stdin!.end(options.input)
  else child.stdin!.end()
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000)
  const done = new Promise<CliResult>((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started })
    })
  })
  return { child, done, stdout: () => stdout, stderr: () => stderr }
}

/** Parse the single JSON document a --json command printed. */
export function json<T = Record<string, unknown>>(result: CliResult): T {
  try {
    return JSON.parse(result.stdout) as T
  } catch {
    throw new Error(`stdout is not one JSON document (exit ${result.code}):\n${result.stdout}\nstderr:\n${result.stderr}`)
  }
}
