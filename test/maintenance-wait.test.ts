/**
 * Waiting for a drain (SPEC §4): `maintenance:request --wait [--timeout]`, and the deploy-script
 * loop that polls `maintenance:status`. No orchestrator process runs here: the run is put in
 * `running` and completed from the test, and the CLI's own drain checks must finish the drain.
 */
import { spawn } from 'node:child_process'
import type { Pool } from 'pg'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { BIN, cleanEnv, json, runCli, startCli } from './helpers/cli'
import { track } from './helpers/processes'
import { waitFor } from './helpers/wait'
import { addTask, eventsAfter, heartbeat, lastEventId, mode, resetTo, startRun, complete } from './helpers/maintenance-fixtures'

const ORCHESTRATOR = 'heartbeating-orchestrator'
/** Short, so that the run would be handed back if the test stopped heartbeating for it. */
const STALE_MS = '3000'

let db: TestDatabase
let heartbeats: NodeJS.Timeout | undefined

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  await addTask(db.pool, 'work')
})
afterEach(() => {
  if (heartbeats) clearInterval(heartbeats)
  heartbeats = undefined
})
afterAll(async () => { await db.drop() })

/** A run in `running`, held by an orchestrators row that the test keeps alive. */
async function runningRunWithLiveHolder(): Promise<string> {
  await resetTo(db.pool, 'running')
  const runId = await startRun(db.pool, 'work', ORCHESTRATOR)
  heartbeats = setInterval(() => { heartbeat(db.pool, ORCHESTRATOR).catch(() => undefined) }, 250)
  return runId
}

/** Complete the run and remove its orchestrator in one transaction: from then on nothing is alive. */
async function completeAndLeave(runId: string): Promise<void> {
  if (heartbeats) clearInterval(heartbeats)
  heartbeats = undefined
  const client = await db.pool.connect()
  try {
    await client.query('BEGIN')
    expect(await complete(client as unknown as Pool, runId, ORCHESTRATOR)).toBe(true)
    await client.query('DELETE FROM orchestrators WHERE id = $1', [ORCHESTRATOR])
    await client.query('COMMIT')
  } finally {
    client.release()
  }
}

/** The CLI process is connected (it is polling the drain, not still starting). */
async function connected(command: string): Promise<boolean> {
  const { rows: [row] } = await db.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE $1`, [`pipeweave/% ${command}`])
  return row.n > 0
}

describe('maintenance:request --wait', () => {
  it('exits 5 after --timeout while a run stays running; the request stands and maintenance:exit withdraws it', async () => {
    const runId = await runningRunWithLiveHolder()
    const before = await lastEventId(db.pool)

    const human = await runCli(['maintenance:request', '--wait', '--timeout', '2'], { env: { ...db.env, ORCHESTRATOR_STALE_MS: STALE_MS } })
    expect(human.code).toBe(5)
    expect(human.stdout).toBe('')
    expect(human.stderr).toMatch(/timed out/)
    expect(human.stderr).toMatch(/1 running/)
    expect(human.stderr).toMatch(/request stands/)
    expect(human.stderr).toMatch(/maintenance:exit` withdraws it/)
    // Off a terminal: one progress line (counts only; the next would come 10 s later), then the error.
    expect(human.stderr.trim().split('\n')).toEqual([
      'Draining: 1 running, 0 pending, 0 scheduled, 1 orchestrator(s) alive',
      expect.stringMatching(/^error: timed out/),
    ])

    expect((await mode(db.pool)).mode).toBe('waiting_for_maintenance')
    const { rows: [run] } = await db.pool.query(`SELECT status, attempt FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [runId])
    expect(run).toEqual({ status: 'running', attempt: 1 })
    expect((await eventsAfter(db.pool, before)).map((e) => e.to_mode)).toEqual(['waiting_for_maintenance'])

    // Again, already waiting, with --json: one error document, exit 5, nothing recorded.
    const again = await runCli(['maintenance:request', '--wait', '--timeout', '1', '--json'], { env: { ...db.env, ORCHESTRATOR_STALE_MS: STALE_MS } })
    expect(again.code).toBe(5)
    expect(json(again)).toEqual({
      error: { code: 'DRAIN_TIMEOUT', message: expect.stringMatching(/request stands/), hint: expect.stringMatching(/maintenance:exit/) },
      exitCode: 5,
    })
    expect((await mode(db.pool)).mode).toBe('waiting_for_maintenance')
    expect(await eventsAfter(db.pool, before)).toHaveLength(1)

    const exit = await runCli(['maintenance:exit', '--json'], { env: db.env })
    expect(json(exit)).toMatchObject({ mode: 'running', changed: true })
  })

  it('exits 0 soon after the last run completes, with no orchestrator alive', async () => {
    const runId = await runningRunWithLiveHolder()
    const before = await lastEventId(db.pool)
    const cli = startCli(['maintenance:request', '--wait', '--reason', 'deploy', '--json'], { env: { ...db.env, ORCHESTRATOR_STALE_MS: STALE_MS } })

    await waitFor(async () => (await mode(db.pool)).mode === 'waiting_for_maintenance' && await connected('maintenance:request'),
      { what: 'the request to be waiting' })
    expect(cli.child.exitCode).toBeNull()

    await completeAndLeave(runId)
    const completedAt = Date.now()
    const result = await cli.done
    const waited = Date.now() - completedAt

    expect(result.code).toBe(0)
    // stderr carries progress lines only (stdout is the one JSON document).
    expect(result.stderr).toMatch(/^(Draining: \d+ running, \d+ pending, \d+ scheduled, \d+ orchestrator\(s\) alive\n)+$/)
    expect(json(result)).toMatchObject({ mode: 'maintenance', runningTasks: 0, pendingTasks: 0, liveOrchestrators: 0, reason: 'deploy' })
    // It polls the drain itself; it must not wait for ORCHESTRATOR_STALE_MS or an orchestrator's interval.
    expect(waited).toBeLessThan(10_000)
    const events = await eventsAfter(db.pool, before)
    expect(events.map((e) => [e.from_mode, e.to_mode, e.actor])).toEqual([
      ['running', 'waiting_for_maintenance', expect.stringMatching(new RegExp(` ${cli.child.pid}$`))],
      ['waiting_for_maintenance', 'maintenance', `${os.userInfo().username}@${os.hostname()} ${cli.child.pid}`],
    ])
  })

  it('on a terminal, shows the live counts, and the timeout error starts on a line of its own', async () => {
    await runningRunWithLiveHolder()
    // script(1) gives the CLI a pseudo-terminal; colour and spinner are on (no NO_COLOR).
    const env = cleanEnv({ ...db.env, ORCHESTRATOR_STALE_MS: STALE_MS, NO_COLOR: undefined, TERM: 'xterm' })
    const command = `"${process.execPath}" "${BIN}" maintenance:request --wait --timeout 1`
    const result = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const child = track(spawn('script', ['-qec', command, '/dev/null'], { env, stdio: ['ignore', 'pipe', 'pipe'] }))
      let out = ''
      child.stdout.on('data', (chunk) => { out += chunk })
      child.on('close', (code) => resolve({ code, out }))
    })
    expect(result.code).toBe(5)
    expect(result.out).toContain('Draining: 1 running, 0 pending, 0 scheduled, 1 orchestrator(s) alive')
    // The spinner's line is cleared (ESC[2K, ESC[1G) before the error is written, not glued to it.
    const error = result.out.indexOf('error:')
    expect(error).toBeGreaterThan(0)
    expect(result.out.slice(0, error)).toMatch(/(\x1b\[2K\x1b\[1G|\n)(\x1b\[[0-9;?]*[A-Za-z])*$/)
  })

  it('on Ctrl-C exits 130 and says that the request stands until maintenance:exit', async () => {
    await runningRunWithLiveHolder()
    for (const json of [false, true]) {
      const cli = startCli(['maintenance:request', '--wait', ...(json ? ['--json'] : [])], { env: { ...db.env, ORCHESTRATOR_STALE_MS: STALE_MS } })
      await waitFor(async () => (await mode(db.pool)).mode === 'waiting_for_maintenance' && await connected('maintenance:request'),
        { what: 'the request to be waiting' })
      await waitFor(() => cli.stderr().includes('Draining:'), { what: 'a progress line' })
      cli.child.kill('SIGINT')
      const result = await cli.done
      expect({ json, code: result.code, signal: result.signal }).toEqual({ json, code: 130, signal: null })
      if (json) {
        expect(JSON.parse(result.stdout)).toEqual({
          error: { code: 'INTERRUPTED', message: expect.stringMatching(/request stands/), hint: expect.stringMatching(/maintenance:exit/) },
          exitCode: 130,
        })
      } else {
        expect(result.stdout).toBe('')
        const lines = result.stderr.trim().split('\n')
        expect(lines.slice(0, -1).every((l) => l.startsWith('Draining: '))).toBe(true)
        expect(lines[lines.length - 1]).toMatch(/^error: interrupted: the maintenance request stands .*: `pipeweave maintenance:exit` withdraws it/)
      }
      expect((await mode(db.pool)).mode).toBe('waiting_for_maintenance')
      // Its connections are closed, not left to time out.
      await waitFor(async () => !(await connected('maintenance:request')), { what: 'the interrupted command\'s connections to close' })
    }
  })

  it('stops waiting (exit 4) when someone withdraws the request', async () => {
    await runningRunWithLiveHolder()
    const cli = startCli(['maintenance:request', '--wait', '--timeout', '60'], { env: { ...db.env, ORCHESTRATOR_STALE_MS: STALE_MS } })
    await waitFor(async () => (await mode(db.pool)).mode === 'waiting_for_maintenance' && await connected('maintenance:request'),
      { what: 'the request to be waiting' })
    expect((await runCli(['maintenance:exit'], { env: db.env })).code).toBe(0)
    const result = await cli.done
    expect(result.code).toBe(4)
    expect(result.stderr).toMatch(/withdrawn/)
  })
})

describe('the deploy-script loop of SPEC §4', () => {
  let shimDir: string
  beforeAll(() => {
    shimDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-shim-'))
    // `pipeweave` on PATH, as `npm i -g` or `npx` would provide; it counts its invocations.
    fs.writeFileSync(path.join(shimDir, 'pipeweave'),
      `#!/bin/sh\necho "$*" >> "${shimDir}/calls"\nexec "${process.execPath}" "${BIN}" "$@"\n`, { mode: 0o755 })
  })
  afterAll(() => { fs.rmSync(shimDir, { recursive: true, force: true }) })

  it('ends, unchanged, after the drain completes', async () => {
    const runId = await runningRunWithLiveHolder()
    expect((await runCli(['maintenance:request'], { env: { ...db.env, ORCHESTRATOR_STALE_MS: STALE_MS } })).code).toBe(0)

    const script = `until [ "$(pipeweave maintenance:status | grep 'Mode:' | awk '{print $2}')" = maintenance ]; do sleep 1; done`
    const env = cleanEnv({ ...db.env, ORCHESTRATOR_STALE_MS: STALE_MS, PATH: `${shimDir}:${process.env.PATH}` })
    const bash = track(spawn('bash', ['-c', script], { env, stdio: ['ignore', 'pipe', 'pipe'] }))
    let stderr = ''
    bash.stderr.on('data', (chunk) => { stderr += chunk })
    const done = new Promise<number | null>((resolve) => bash.on('close', (code) => resolve(code)))
    const calls = () => (fs.existsSync(path.join(shimDir, 'calls')) ? fs.readFileSync(path.join(shimDir, 'calls'), 'utf8').trim().split('\n').length : 0)

    try {
      // The loop keeps polling while the run is running.
      await waitFor(() => calls() >= 2, { what: 'the loop to poll twice' })
      expect(bash.exitCode).toBeNull()
      expect((await mode(db.pool)).mode).toBe('waiting_for_maintenance')

      await completeAndLeave(runId)
      expect(await done).toBe(0)
      expect(stderr).toBe('')
      expect((await mode(db.pool)).mode).toBe('maintenance')
    } finally {
      if (bash.exitCode === null) bash.kill('SIGKILL')
    }
  })
})
