/**
 * Helpers of the operator-surface tests: a migrated test database, the processes of an embedded
 * PostgreSQL data directory, the JSON log lines of `run`, and its health server. (The stub worker
 * is helpers/worker.ts; the registry of child processes, helpers/processes.ts.)
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import { runMigrations } from '../../src/api/migrations'
import type { RunningCli } from './cli'
import { apiDatabase, createTestDatabase, type TestDatabase } from './db'
import { waitFor } from './wait'

// ---------------------------------------------------------------------------------------------
// A migrated test database. (createTestDatabase({ migrated: true }) loads the migrator with a
// dynamic import(), which ts-jest under module nodenext cannot run without
// --experimental-vm-modules; the fix to helpers/db.ts is being made in other branches, so these
// tests migrate on their own and do not touch that file.)

export async function migratedTestDatabase(prefix: string): Promise<TestDatabase> {
  const testDb = await createTestDatabase({ prefix })
  const db = await apiDatabase(testDb.url)
  try {
    await runMigrations(db)
  } finally {
    await db.close()
  }
  return testDb
}

// ---------------------------------------------------------------------------------------------
// Processes of a data directory (from /proc): the postmaster started on it and its children.
// Zombies (<defunct>) are ignored: this sandbox's PID 1 does not reap orphans.

interface Proc {
  pid: number
  ppid: number
  state: string
  cmdline: string
}

function readProcs(): Proc[] {
  const procs: Proc[] = []
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8')
      // pid (comm) state ppid …: comm may hold spaces and parentheses, so split after the last ')'.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ').trim()
      procs.push({ pid: Number(entry), ppid: Number(rest[1]), state: rest[0], cmdline })
    } catch {
      // the process ended while we looked
    }
  }
  return procs
}

/**
 * Live (not zombie) processes that belong to the server of `dataDir`: any whose command line names
 * the directory (postgres -D, pg_ctl), the postmaster pids given, and every descendant of those.
 */
export function serverProcesses(dataDir: string, knownPostmasters: number[] = []): Array<{ pid: number; cmdline: string }> {
  const procs = readProcs()
  const roots = new Set<number>(knownPostmasters)
  for (const p of procs) if (p.cmdline.includes(dataDir)) roots.add(p.pid)
  const belongs = new Set<number>(roots)
  let grew = true
  while (grew) {
    grew = false
    for (const p of procs) {
      if (!belongs.has(p.pid) && belongs.has(p.ppid)) {
        belongs.add(p.pid)
        grew = true
      }
    }
  }
  return procs.filter((p) => belongs.has(p.pid) && p.state !== 'Z').map((p) => ({ pid: p.pid, cmdline: p.cmdline }))
}

/** The pid in <dataDir>/postmaster.pid, if the file is there. */
export function postmasterPid(dataDir: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0])
    return pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/** Wait until nothing of the server of `dataDir` is left running (a fast stop takes a moment). */
export async function expectNoServerLeft(dataDir: string, knownPostmasters: number[] = []): Promise<void> {
  await waitFor(() => serverProcesses(dataDir, knownPostmasters).length === 0, {
    timeoutMs: 15_000,
    what: `no PostgreSQL process of ${dataDir} (left: ${JSON.stringify(serverProcesses(dataDir, knownPostmasters))})`,
  })
  expect(fs.existsSync(path.join(dataDir, 'postmaster.pid'))).toBe(false)
}

// ---------------------------------------------------------------------------------------------
// The JSON log lines `run` writes on stderr when it is not on a terminal.

export interface LogLine {
  level: string
  msg: string
  event?: string
  [key: string]: unknown
}

export function logLines(stderr: string): LogLine[] {
  const lines: LogLine[] = []
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue
    try {
      lines.push(JSON.parse(line) as LogLine)
    } catch {
      // a partial last line
    }
  }
  return lines
}

/** The port `run --http-port 0` reports in its "health and metrics on …" log line. */
export async function httpPortOf(cli: RunningCli): Promise<number> {
  const line = await waitFor(() => {
    if (cli.child.exitCode !== null || cli.child.signalCode !== null) throw new Error(`run ended (${cli.child.exitCode ?? cli.child.signalCode}): ${cli.stderr()}`)
    return logLines(cli.stderr()).find((l) => l.event === 'http')
  }, { what: 'the health server to listen' })
  return line.port as number
}

export async function httpGet(url: string): Promise<{ status: number; body: string; contentType: string }> {
  const response = await fetch(url)
  return { status: response.status, body: await response.text(), contentType: response.headers.get('content-type') ?? '' }
}
