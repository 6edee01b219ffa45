/**
 * A real PgBouncer (Debian's, /usr/sbin/pgbouncer) in front of the test server, for
 * pgbouncer.test.ts: transaction pooling, a small server pool, SCRAM against the server with the
 * password from a userlist, and an admin console (database `pgbouncer`) for SHOW CLIENTS / POOLS.
 * Runs in the foreground as a child of the test (as `postgres` when the tests run as root: it
 * refuses root), so its pid is known; stop() ends it, and every start is tracked by the leak check
 * (helpers/processes.ts).
 */
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { Client } from 'pg'
import { runningProcesses, spawnTracked } from './processes'
import { waitFor } from './wait'

export const PGBOUNCER = '/usr/sbin/pgbouncer'
/** How its processes are named in the registry of helpers/processes.ts. */
const LABEL = 'pgbouncer'

export interface PgBouncerOptions {
  /** The server, as a postgres:// URL with the user and password PgBouncer logs in with. */
  serverUrl: string
  /** Alias → database name on the server. */
  databases: Record<string, string>
  /** Server connections per (database, user): fewer than the clients, so they must share. */
  defaultPoolSize: number
  maxClientConn?: number
  /** More `[pgbouncer]` settings. */
  settings?: Record<string, string | number>
}

export interface PgBouncer {
  readonly pid: number
  readonly port: number
  readonly version: string
  readonly dir: string
  /** A URL for `alias` through PgBouncer, with the server's user and password. */
  url(alias: string): string
  /** One command on the admin console (simple protocol, rows as objects). */
  admin<R = Record<string, unknown>>(command: string): Promise<R[]>
  /** PgBouncer's own log (connections, errors). */
  log(): string
  stop(): Promise<void>
}

/** The settings that make PgBouncer usable by pipeweave in transaction pooling (README). */
export const IGNORED_STARTUP_PARAMETERS = 'extra_float_digits,options,statement_timeout,idle_in_transaction_session_timeout'

export async function startPgBouncer(options: PgBouncerOptions): Promise<PgBouncer> {
  const server = new URL(options.serverUrl)
  const user = decodeURIComponent(server.username)
  const password = decodeURIComponent(server.password)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-pgbouncer-'))
  const port = await freePort()
  const quote = (s: string) => `"${s.replace(/"/g, '""')}"`
  fs.writeFileSync(path.join(dir, 'userlist.txt'), `${quote(user)} ${quote(password)}\n`, { mode: 0o600 })
  const settings: Record<string, string | number> = {
    listen_addr: '127.0.0.1',
    listen_port: port,
    unix_socket_dir: '',
    auth_type: 'scram-sha-256',
    auth_file: path.join(dir, 'userlist.txt'),
    admin_users: user,
    pool_mode: 'transaction',
    default_pool_size: options.defaultPoolSize,
    max_client_conn: options.maxClientConn ?? 500,
    ignore_startup_parameters: IGNORED_STARTUP_PARAMETERS,
    logfile: path.join(dir, 'pgbouncer.log'),
    pidfile: path.join(dir, 'pgbouncer.pid'),
    ...options.settings,
  }
  const databases = Object.entries(options.databases)
    .map(([alias, name]) => `${alias} = host=${server.hostname} port=${server.port || 5432} dbname=${name}`)
  const ini = path.join(dir, 'pgbouncer.ini')
  fs.writeFileSync(ini, [
    '[databases]', ...databases, '',
    '[pgbouncer]', ...Object.entries(settings).map(([k, v]) => `${k} = ${v}`), '',
  ].join('\n'))

  // PgBouncer refuses to run as root: as root, run it as postgres (who must own its files).
  let ids: { uid: number; gid: number } | undefined
  if (process.getuid?.() === 0) {
    ids = { uid: Number(execFileSync('id', ['-u', 'postgres']).toString()), gid: Number(execFileSync('id', ['-g', 'postgres']).toString()) }
    for (const f of [dir, ...fs.readdirSync(dir).map((f) => path.join(dir, f))]) fs.chownSync(f, ids.uid, ids.gid)
  }
  const child = spawnTracked(PGBOUNCER, [ini], { ...ids, stdio: ['ignore', 'pipe', 'pipe'] }, `${LABEL} ${ini}`)
  let output = ''
  child.stdout!.on('data', (c) => { output += c })
  child.stderr!.on('data', (c) => { output += c })
  let exited = false
  const exit = new Promise<void>((resolve) => child.on('exit', () => { exited = true; resolve() }))
  const readLog = () => {
    try {
      return fs.readFileSync(settings.logfile as string, 'utf8')
    } catch {
      return output
    }
  }

  const url = (alias: string) => {
    const u = new URL(options.serverUrl)
    u.hostname = '127.0.0.1'
    u.port = String(port)
    u.pathname = `/${alias}`
    u.search = ''
    return u.toString()
  }
  const admin = async <R>(command: string): Promise<R[]> => {
    const client = new Client({ connectionString: url('pgbouncer') })
    client.on('error', () => undefined)
    await client.connect()
    try {
      return (await client.query(command)).rows as R[]
    } finally {
      await client.end().catch(() => undefined)
    }
  }
  const stop = async () => {
    if (!exited) {
      child.kill('SIGTERM') // immediate shutdown
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exit
      clearTimeout(timer)
    }
    fs.rmSync(dir, { recursive: true, force: true })
  }

  try {
    const [row] = await waitFor(async () => {
      if (exited) throw new Error(`pgbouncer exited at start:\n${output}${readLog()}`)
      return admin<{ version: string }>('SHOW VERSION')
    }, { timeoutMs: 15_000, what: 'PgBouncer to accept connections' })
    return { pid: child.pid!, port, version: row.version, dir, url, admin, log: readLog, stop }
  } catch (error) {
    await stop()
    throw new Error(`${(error as Error).message}\n${output}${readLog()}`)
  }
}

/** PgBouncer processes started here that have not exited. */
export function runningPgBouncers(): number[] {
  return runningProcesses().filter((p) => p.label.startsWith(`${LABEL} `)).map((p) => p.pid)
}

/** Is a process with this pid still there (a PgBouncer that outlived its child handle)? */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo
      s.close(() => resolve(port))
    })
  })
}
