/**
 * The embedded server's life: initdb, pg_ctl start (detached: it outlives the process that
 * started it) and stop, and what is running now (postmaster.pid). Called under the lock (lock.ts).
 */
import { spawn, spawnSync } from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { ConnectionError } from '../../errors'
import { type Layout, SUPERUSER } from './layout'

const START_TIMEOUT_S = 60

function command(layout: Layout, binary: string, args: string[]): { file: string; args: string[] } {
  const file = path.join(layout.binDir, binary)
  return layout.runAs
    ? { file: 'runuser', args: ['-u', layout.runAs.user, '--', file, ...args] }
    : { file, args }
}

function serverEnv(layout: Layout): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, LC_ALL: 'C', LANG: 'C', TZ: 'UTC' }
  const lib = path.join(path.dirname(layout.binDir), 'lib')
  env.LD_LIBRARY_PATH = lib
  return env
}

/** Run a binary to completion; the child gets its own session so a Ctrl-C in the terminal cannot reach it. */
function runBinary(layout: Layout, binary: string, args: string[], timeoutMs: number): Promise<{ code: number | null; output: string }> {
  const { file, args: argv } = command(layout, binary, args)
  return new Promise((resolve) => {
    const child = spawn(file, argv, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: serverEnv(layout) })
    let output = ''
    child.stdout.on('data', (chunk) => { output += chunk })
    child.stderr.on('data', (chunk) => { output += chunk })
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', (error) => {
      clearTimeout(timer)
      resolve({ code: -1, output: String(error) })
    })
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, output })
    })
  })
}

export function passwordFile(layout: Layout): string {
  return path.join(layout.stateDir, 'password')
}

export async function initialise(layout: Layout, settings: Record<string, string | number>): Promise<string> {
  fs.mkdirSync(layout.stateDir, { recursive: true, mode: 0o755 })
  const password = crypto.randomBytes(18).toString('base64url')
  fs.mkdirSync(layout.dataDir, { recursive: true, mode: 0o700 })
  if (fs.readdirSync(layout.dataDir).length > 0) {
    // A half-finished initdb (killed mid-way): start again from nothing.
    fs.rmSync(layout.dataDir, { recursive: true, force: true })
    fs.mkdirSync(layout.dataDir, { recursive: true, mode: 0o700 })
  }
  const pwfile = path.join(os.tmpdir(), `pipeweave-pw-${process.pid}-${crypto.randomBytes(4).toString('hex')}`)
  fs.writeFileSync(pwfile, `${password}\n`, { mode: 0o600 })
  try {
    if (layout.runAs) {
      fs.chownSync(layout.dataDir, layout.runAs.uid, layout.runAs.gid)
      fs.chownSync(pwfile, layout.runAs.uid, layout.runAs.gid)
    }
    const result = await runBinary(layout, 'initdb', [
      '-D', layout.dataDir, '-U', SUPERUSER, '--auth=scram-sha-256', `--pwfile=${pwfile}`,
      '-E', 'UTF8', '--no-locale', '--no-instructions',
    ], 120_000)
    if (result.code !== 0) {
      throw new ConnectionError('EMBEDDED_INIT_FAILED', `initdb failed for the embedded PostgreSQL at ${layout.dataDir}: ${lastLine(result.output)}`, {
        hint: 'remove that directory to start afresh, or set DATABASE_URL',
      })
    }
  } finally {
    fs.rmSync(pwfile, { force: true })
  }
  const conf = {
    listen_addresses: "'127.0.0.1'",
    unix_socket_directories: "''",
    max_connections: 200,
    ...settings,
  }
  fs.appendFileSync(path.join(layout.dataDir, 'postgresql.conf'),
    `\n# pipeweave embedded server\n${Object.entries(conf).map(([k, v]) => `${k} = ${v}`).join('\n')}\n`)
  fs.writeFileSync(passwordFile(layout), password, { mode: 0o600 })
  return password
}

function lastLine(text: string): string {
  const lines = text.trim().split('\n').filter(Boolean)
  return lines[lines.length - 1] ?? 'no output'
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })
}

export async function startServer(layout: Layout): Promise<void> {
  const logFile = path.join(layout.dataDir, 'server.log')
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    const result = await runBinary(layout, 'pg_ctl', [
      '-D', layout.dataDir, '-l', logFile, '-w', '-t', String(START_TIMEOUT_S), // A killed client's query (holding a lock) ends within a second instead of running on.
      '-o', `-p ${port} -c client_connection_check_interval=1000`, 'start',
    ], (START_TIMEOUT_S + 10) * 1000)
    if (result.code === 0) return
    if (attempt >= 3) {
      let tail = ''
      try {
        tail = lastLine(fs.readFileSync(logFile, 'utf8'))
      } catch { /* no log yet */ }
      throw new ConnectionError('EMBEDDED_START_FAILED', `the embedded PostgreSQL at ${layout.dataDir} did not start: ${tail || lastLine(result.output)}`, {
        hint: `see ${logFile}, or set DATABASE_URL to use your own PostgreSQL`,
      })
    }
  }
}

export async function stopServer(layout: Layout): Promise<void> {
  const result = await runBinary(layout, 'pg_ctl', ['-D', layout.dataDir, '-m', 'fast', '-w', '-t', '60', 'stop'], 70_000)
  if (result.code !== 0 && runningServer(layout.dataDir)) {
    throw new ConnectionError('EMBEDDED_STOP_FAILED', `the embedded PostgreSQL at ${layout.dataDir} did not stop: ${lastLine(result.output)}`, {
      hint: `see ${path.join(layout.dataDir, 'server.log')}; the next pipeweave command reuses it and stops it when it ends`,
    })
  }
}

/** The running postmaster's pid and port from postmaster.pid, if its process is alive. */
export function runningServer(dataDir: string): { pid: number; port: number } | undefined {
  let lines: string[]
  try {
    lines = fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')
  } catch {
    return undefined
  }
  const pid = Number(lines[0])
  const port = Number(lines[3])
  if (!pid || !port) return undefined
  try {
    process.kill(pid, 0)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return undefined
  }
  return { pid, port }
}

