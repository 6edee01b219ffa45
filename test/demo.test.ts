/**
 * `pipeweave run --demo` as a newcomer meets it (issue 6, acceptance 1): nothing configured, a
 * fresh directory; the demo runs reach completed, retried-then-completed and dead-lettered; exit 0;
 * no PostgreSQL left behind — also with DATABASE_URL set, and on Ctrl-C at any moment.
 *
 * The tests share one PIPEWEAVE_HOME (initdb once): the first meets it empty, the others reuse it.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { runMigrations } from '../src/api/migrations'
import { createDatabase } from '../src/db/database'
import { acquireEmbeddedServer } from '../src/db/embedded'
import { type CliResult, json, runCli, startCli } from './helpers/cli'
import { TEST_SCHEMA, createTestDatabase } from './helpers/db'
import { expectNoServerLeft, logLines, postmasterPid } from './helpers/surface'
import { waitFor } from './helpers/wait'

interface DemoRow {
  Task: string
  Status: string
  Attempts: string
  'What happened': string
  Result: string
}

/** The rows of the "The demo runs:" table on stdout (plain ASCII: NO_COLOR, not a TTY). */
function demoTable(stdout: string): DemoRow[] {
  const lines = stdout.split('\n')
  const start = lines.findIndex((l) => l.startsWith('The demo runs:'))
  if (start < 0) throw new Error(`no demo table in stdout:\n${stdout}`)
  const rows: string[][] = []
  for (const line of lines.slice(start + 1)) {
    if (line.startsWith('+')) continue
    if (!line.startsWith('|')) break
    rows.push(line.split('|').slice(1, -1).map((cell) => cell.trim()))
  }
  const [head, ...body] = rows
  return body.map((cells) => Object.fromEntries(head.map((h, i) => [h, cells[i]])) as unknown as DemoRow)
}

function row(rows: DemoRow[], task: string): DemoRow {
  const found = rows.filter((r) => r.Task === task)
  expect(found).toHaveLength(1)
  return found[0]
}

describe('run --demo', () => {
  let home: string
  let dataDir: string
  const env = () => ({ PIPEWEAVE_HOME: home })

  beforeAll(() => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-demo-'))
    fs.chmodSync(home, 0o755)
    dataDir = path.join(home, 'pgdata')
  })

  afterAll(async () => {
    // A failed test may have left the server up: stop it the way pipeweave does, then remove all.
    if (postmasterPid(dataDir)) {
      const handle = await acquireEmbeddedServer({ env: env(), cwd: home, applicationName: 'pipeweave-test-cleanup' })
      await handle.release({ stop: 'always' })
    }
    fs.rmSync(home, { recursive: true, force: true })
  })

  /** Set the maintenance mode of the demo's (embedded) database, migrating it first if need be. */
  async function setEmbeddedMode(mode: string): Promise<void> {
    // In the suite's schema: the demo's process gets it too (PIPEWEAVE_SCHEMA, helpers/cli.ts).
    const db = await createDatabase({ env: env(), cwd: home, command: 'test', schema: TEST_SCHEMA })
    try {
      await runMigrations(db)
      await db.query(`UPDATE ${db.schema.q}.orchestrator_state SET mode = $1 WHERE id = 'singleton'`, [mode])
    } finally {
      await db.close()
    }
  }

  /** Run the demo to its end, noting the postmaster's pid while it runs. */
  async function demo(extraEnv: Record<string, string> = {}): Promise<{ result: CliResult; postmasters: number[] }> {
    const cli = startCli(['run', '--demo'], { cwd: home, env: { ...env(), ...extraEnv }, timeoutMs: 90_000 })
    const postmasters: number[] = []
    await waitFor(() => {
      const pid = postmasterPid(dataDir)
      if (pid) postmasters.push(pid)
      return pid !== undefined || cli.child.exitCode !== null
    }, { timeoutMs: 60_000, what: 'the embedded server to start' })
    return { result: await cli.done, postmasters }
  }

  it('with nothing configured, shows every path, exits 0 and leaves no PostgreSQL running', async () => {
    expect(fs.readdirSync(home)).toEqual([])
    const { result, postmasters } = await demo()
    expect({ code: result.code, signal: result.signal }).toEqual({ code: 0, signal: null })

    const rows = demoTable(result.stdout)
    expect(row(rows, 'demo.greet')).toMatchObject({ Status: 'completed', Attempts: '1' })
    expect(row(rows, 'demo.shout')).toMatchObject({ Status: 'completed', Attempts: '1', Result: '{"shouted":"HELLO, PIPEWEAVE!"}' })
    expect(row(rows, 'demo.slow')).toMatchObject({ Status: 'completed', Attempts: '1' })
    const flaky = row(rows, 'demo.flaky')
    expect(flaky).toMatchObject({ Status: 'completed', Attempts: '2' })
    expect(flaky['What happened']).toMatch(/retried.*completed/)
    const broken = row(rows, 'demo.broken')
    expect(broken).toMatchObject({ Status: 'failed', Attempts: '2' })
    expect(broken['What happened']).toMatch(/dead-lettered/)
    expect(result.stdout).toMatch(/Try next:/)
    expect(result.stdout).toMatch(/stopped: 4 completed, 0 from cache, 2 retried, 1 failed, 0 timed out/)

    const logs = logLines(result.stderr)
    expect(logs.filter((l) => l.msg.startsWith(`using embedded PostgreSQL at ${dataDir}`))).toHaveLength(1)
    expect(logs.some((l) => l.event === 'demo-done')).toBe(true)
    expect(logs.filter((l) => l.level === 'error' && l.event !== 'run')).toEqual([])

    await expectNoServerLeft(dataDir, postmasters)

    // "Try next" as printed: the same directory reaches the demo's database again.
    const dlq = await runCli(['dlq:list', '--json'], { cwd: home, env: env() })
    expect(dlq.code).toBe(0)
    const { entries } = json<{ entries: Array<Record<string, unknown>> }>(dlq)
    expect(entries).toEqual([expect.objectContaining({ taskId: 'demo.broken', attempts: 2, errorCode: 'ON_FIRE', retriedAt: null })])
    await expectNoServerLeft(dataDir)
  })

  it('ignores DATABASE_URL: it says so, runs on the embedded database and leaves the configured one untouched', async () => {
    const db = await createTestDatabase({ prefix: 'pw_demo_url' })
    try {
      const { result, postmasters } = await demo({ DATABASE_URL: db.url })
      expect(result.code).toBe(0)
      const logs = logLines(result.stderr)
      expect(logs.some((l) => /--demo uses the embedded database; ignoring DATABASE_URL/.test(l.msg))).toBe(true)
      expect(logs.some((l) => l.msg.startsWith(`using embedded PostgreSQL at ${dataDir}`))).toBe(true)
      expect(row(demoTable(result.stdout), 'demo.flaky')).toMatchObject({ Status: 'completed', Attempts: '2' })
      // "Try next" would reach DATABASE_URL, not the demo's database: the output says so.
      expect(result.stdout).toMatch(/DATABASE_URL/)
      // Nothing reached the configured database, and its password appears nowhere.
      const { rows: [tables] } = await db.pool.query(`SELECT count(*)::int AS n FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`)
      expect(tables.n).toBe(0)
      expect(result.stdout + result.stderr).not.toContain(new URL(db.url).password)
      await expectNoServerLeft(dataDir, postmasters)
    } finally {
      await db.drop()
    }
  })

  it('refuses (exit 4) on a database left in maintenance, says how to leave it, and does not hang', async () => {
    await setEmbeddedMode('maintenance')
    try {
      // A hang ends in SIGKILL after 30 s (the refusal itself takes a second or two).
      const result = await startCli(['run', '--demo'], { cwd: home, env: env(), timeoutMs: 30_000 }).done
      expect({ code: result.code, signal: result.signal }).toEqual({ code: 4, signal: null })
      expect(result.stderr).toMatch(/in maintenance mode.*maintenance:exit/)
      await expectNoServerLeft(dataDir)
    } finally {
      await setEmbeddedMode('running')
    }
  })

  it('on Ctrl-C mid-demo, stops gracefully with exit 0, leaves no run queued and no server running', async () => {
    const cli = startCli(['run', '--demo'], { cwd: home, env: env(), timeoutMs: 90_000 })
    await waitFor(() => logLines(cli.stderr()).find((l) => l.taskId === 'demo.slow' && l.status === 'running'), {
      timeoutMs: 60_000, what: 'demo.slow to be in flight',
    })
    const postmaster = postmasterPid(dataDir)
    cli.child.kill('SIGINT')
    const result = await cli.done
    expect({ code: result.code, signal: result.signal }).toEqual({ code: 0, signal: null })
    expect(logLines(result.stderr).some((l) => l.event === 'signal')).toBe(true)
    // The slow run was in flight: the graceful stop let it finish.
    expect(row(demoTable(result.stdout), 'demo.slow')).toMatchObject({ Status: 'completed' })
    await expectNoServerLeft(dataDir, postmaster ? [postmaster] : [])

    // Nothing of this demo waits for a worker that is gone: a later `run` here must not pick it up.
    // (The table is read from the database after the demo ended.)
    const rows = demoTable(result.stdout)
    expect(rows.filter((r) => r.Status === 'pending' || r.Status === 'running')).toEqual([])
    expect(rows.filter((r) => r.Status === 'cancelled').every((r) => /stopped/.test(r['What happened']))).toBe(true)
  })

  it('on Ctrl-C while the database is still starting, exits 0 once it can and leaves no server running', async () => {
    // Hold the embedded server's lock, so the demo is stuck in "starting the database" for as long
    // as we like (a fresh clone spends seconds in initdb there, where a person may well press Ctrl-C).
    const lock = path.join(home, 'embedded.lock')
    fs.writeFileSync(lock, String(process.pid), { flag: 'wx' })
    try {
      const cli = startCli(['run', '--demo'], { cwd: home, env: env(), timeoutMs: 90_000 })
      await waitFor(() => logLines(cli.stderr()).find((l) => l.event === 'demo-start'), { what: 'the demo to begin' })
      cli.child.kill('SIGINT')
      await waitFor(() => logLines(cli.stderr()).find((l) => l.event === 'signal'), { what: 'the demo to see the signal' })
      expect(postmasterPid(dataDir)).toBeUndefined()
      fs.rmSync(lock)
      const result = await cli.done
      expect({ code: result.code, signal: result.signal }).toEqual({ code: 0, signal: null })
      expect(logLines(result.stderr).some((l) => l.event === 'started')).toBe(false)
      await expectNoServerLeft(dataDir)
    } finally {
      fs.rmSync(lock, { force: true })
    }
  })
})
