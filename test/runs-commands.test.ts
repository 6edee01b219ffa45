/**
 * runs:list, runs:show and runs:cancel against rows this test writes directly (issue 6,
 * acceptance 3): the JSON reflects the database exactly, the filters and the order hold, unknown
 * ids exit 2, and only pending runs can be cancelled (exit 4 otherwise).
 */
import { ALL_RUNS } from './helpers/db'
import type { Pool } from 'pg'
import { json, runCli } from './helpers/cli'
import type { TestDatabase } from './helpers/db'
import { migratedTestDatabase } from './helpers/surface'

const iso = (value: Date | null) => (value === null ? null : value.toISOString())

/** What runs:show --json must print for a row, mapped here independently of src/api/runs.ts. */
async function expectedRun(pool: Pool, id: string): Promise<Record<string, unknown>> {
  const { rows: [r] } = await pool.query(`SELECT * FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [id])
  if (!r) throw new Error(`no run ${id}`)
  return {
    id: r.id,
    taskId: r.task_id,
    pipelineRunId: r.pipeline_run_id,
    parentRunId: r.parent_run_id,
    status: r.status,
    attempt: r.attempt,
    priority: r.priority,
    input: r.input,
    output: r.output,
    inputPath: r.input_path,
    outputPath: r.output_path,
    error: r.error,
    errorCode: r.error_code,
    idempotencyKey: r.idempotency_key,
    // Timestamps inside the JSON column come out in the same ISO form as every other timestamp.
    previousAttempts: (r.previous_attempts as Array<Record<string, unknown>>).map((a) => ({ ...a, at: new Date(a.at as string).toISOString() })),
    scheduledFor: iso(r.scheduled_for),
    createdAt: iso(r.created_at),
    startedAt: iso(r.started_at),
    completedAt: iso(r.completed_at),
    heartbeatAt: iso(r.heartbeat_at),
    orchestratorId: r.orchestrator_id,
  }
}

interface Fixture {
  id: string
  task: string
  status: string
  /** Minutes before the base time: larger is older. */
  age: number
  extra?: Record<string, unknown>
}

// Newest first, as runs:list must print them. Ids sort as pipeweave's time-ordered ids do:
// runs:list is newest first by id.
const FIXTURES: Fixture[] = [
  { id: 'run-8-pending-new', task: 'alpha', status: 'pending', age: 1, extra: { input: { text: 'héllo ✓', nested: { list: [1, 2, null] } }, idempotency_key: 'key-1' } },
  { id: 'run-7-retry-scheduled', task: 'beta', status: 'pending', age: 2, extra: {
    attempt: 2, error: 'upstream 503', error_code: 'HTTP_503', scheduled_for: '2099-01-01T00:00:00.000Z',
    previous_attempts: JSON.stringify([{ attempt: 1, error: 'upstream 503', errorCode: 'HTTP_503', at: '2026-03-01T10:00:00.123456+00:00' }]),
  } },
  { id: 'run-6-running', task: 'alpha', status: 'running', age: 3, extra: {
    started_at: '2026-03-01T10:01:00Z', heartbeat_at: '2026-03-01T10:01:05.5Z', orchestrator_id: 'host-1-abc', input: JSON.stringify('just a string'),
  } },
  { id: 'run-5-completed', task: 'beta', status: 'completed', age: 4, extra: {
    input: JSON.stringify([1, 'two']), output: JSON.stringify({ words: 3 }), started_at: '2026-03-01T10:02:00Z', completed_at: '2026-03-01T10:02:01.25Z',
    orchestrator_id: 'host-2-def', pipeline_run_id: 'pipe-1', parent_run_id: 'run-3-failed', input_path: 's3://in/1', output_path: 's3://out/1', priority: 5,
  } },
  // A retry that succeeded: the database keeps the last failure's error beside the output.
  { id: 'run-4-completed-retried', task: 'beta', status: 'completed', age: 4.5, extra: {
    attempt: 2, error: 'warming up', error_code: 'WARMING_UP', output: JSON.stringify({ ok: true }), completed_at: '2026-03-01T10:02:30Z',
    previous_attempts: JSON.stringify([{ attempt: 1, error: 'warming up', errorCode: 'WARMING_UP', at: '2026-03-01T10:02:10+00:00' }]),
  } },
  { id: 'run-3-failed', task: 'alpha', status: 'failed', age: 5, extra: {
    attempt: 3, error: 'boom', error_code: 'BOOM', completed_at: '2026-03-01T10:03:00Z', pipeline_run_id: 'pipe-1',
    previous_attempts: JSON.stringify([
      { attempt: 1, error: 'first', errorCode: null, at: '2026-03-01T10:00:01+00:00' },
      { attempt: 2, error: 'second', errorCode: 'E2', at: '2026-03-01T10:00:02.5+00:00' },
    ]),
  } },
  { id: 'run-2-timeout', task: 'gamma', status: 'timeout', age: 6, extra: { error: 'no answer within 30 s', error_code: 'TIMEOUT', completed_at: '2026-03-01T10:04:00Z' } },
  { id: 'run-1-cancelled', task: 'gamma', status: 'cancelled', age: 7, extra: { error: 'cancelled', error_code: 'CANCELLED', completed_at: '2026-03-01T10:05:00Z' } },
]

async function insertRun(pool: Pool, fixture: Fixture, base: Date): Promise<void> {
  const row: Record<string, unknown> = {
    id: fixture.id, task_id: fixture.task, status: fixture.status,
    created_at: new Date(base.getTime() - fixture.age * 60_000).toISOString(),
    ...fixture.extra,
  }
  if (row.input !== undefined && typeof row.input !== 'string') row.input = JSON.stringify(row.input)
  const columns = Object.keys(row)
  // Live runs are in task_runs, finished ones in the history (where a finished run moves).
  const table = ['pending', 'running', 'waiting'].includes(fixture.status) ? 'task_runs' : 'task_run_history'
  await pool.query(
    `INSERT INTO ${table} (${columns.join(', ')}) VALUES (${columns.map((_, i) => `$${i + 1}`).join(', ')})`,
    columns.map((c) => row[c]),
  )
}

describe('runs:list, runs:show, runs:cancel', () => {
  let db: TestDatabase
  const base = new Date('2026-03-02T12:00:00.000Z')

  beforeAll(async () => {
    db = await migratedTestDatabase('pw_runs_cmds')
    await db.pool.query(`INSERT INTO services (id, version, base_url) VALUES ('svc', '1', 'http://127.0.0.1:9')`)
    await db.pool.query(`INSERT INTO tasks (id, service_id) VALUES ('alpha', 'svc'), ('beta', 'svc'), ('gamma', 'svc'), ('bulk', 'svc')`)
    await db.pool.query(`INSERT INTO pipeline_runs (id) VALUES ('pipe-1')`)
    for (const fixture of FIXTURES) await insertRun(db.pool, fixture, base)
  })
  afterAll(async () => {
    await db.drop()
  })

  const cli = (args: string[]) => runCli(args, { env: db.env })
  const listIds = async (args: string[]) => {
    const result = await cli(['runs:list', '--json', ...args])
    expect(result.code).toBe(0)
    return json<{ runs: Array<{ id: string }> }>(result).runs.map((r) => r.id)
  }

  it('runs:list --json prints { runs } newest first, every field as in the database', async () => {
    const result = await cli(['runs:list', '--json'])
    expect(result.code).toBe(0)
    const body = json<{ runs: Array<Record<string, unknown>> }>(result)
    expect(Object.keys(body)).toEqual(['runs'])
    const expected = await Promise.all(FIXTURES.map((f) => expectedRun(db.pool, f.id)))
    expect(body.runs).toEqual(expected)
    for (const run of body.runs) expect(Object.keys(run).sort()).toEqual(Object.keys(expected[0]).sort())
    // Spot checks of the mapping itself, so that a wrong expectedRun() cannot hide a wrong API.
    const completed = body.runs.find((r) => r.id === 'run-5-completed')!
    expect(completed).toMatchObject({ input: [1, 'two'], output: { words: 3 }, priority: 5, pipelineRunId: 'pipe-1', completedAt: '2026-03-01T10:02:01.250Z' })
    expect(body.runs.find((r) => r.id === 'run-7-retry-scheduled')!.previousAttempts).toEqual([
      { attempt: 1, error: 'upstream 503', errorCode: 'HTTP_503', at: '2026-03-01T10:00:00.123Z' },
    ])
    expect(body.runs.find((r) => r.id === 'run-6-running')!.input).toBe('just a string')
  })

  it('filters by --status and --task, alone and together, and --limit keeps the newest', async () => {
    expect(await listIds(['--status', 'pending'])).toEqual(['run-8-pending-new', 'run-7-retry-scheduled'])
    expect(await listIds(['--task', 'alpha'])).toEqual(['run-8-pending-new', 'run-6-running', 'run-3-failed'])
    expect(await listIds(['--task', 'alpha', '--status', 'failed'])).toEqual(['run-3-failed'])
    expect(await listIds(['--task', 'no-such-task'])).toEqual([])
    expect(await listIds(['--limit', '2'])).toEqual(['run-8-pending-new', 'run-7-retry-scheduled'])
    expect(await listIds(['--task', 'gamma', '--limit', '1'])).toEqual(['run-2-timeout'])
  })

  it('refuses a bad --status or --limit with exit 2', async () => {
    for (const args of [['--status', 'done'], ['--limit', '0']]) {
      const result = await cli(['runs:list', '--json', ...args])
      expect({ args, code: result.code }).toEqual({ args, code: 2 })
      // (The error code of a bad flag value is being fixed from EXIT to BAD_USAGE in the base command, elsewhere.)
      expect(json<{ error: { code: string }; exitCode: number }>(result)).toMatchObject({ error: { code: expect.stringMatching(/^[A-Z_]+$/) }, exitCode: 2 })
    }
  })

  it('shows 50 runs unless --limit says otherwise', async () => {
    await db.pool.query(`INSERT INTO task_runs (id, task_id, status, created_at)
      SELECT 'bulk-' || lpad(i::text, 3, '0'), 'bulk', 'completed', timestamptz '2020-01-01' + i * interval '1 second'
        FROM generate_series(1, 60) AS i`)
    const ids = await listIds(['--task', 'bulk'])
    expect(ids).toHaveLength(50)
    expect(ids[0]).toBe('bulk-060')
    expect(ids[49]).toBe('bulk-011')
    expect(await listIds(['--task', 'bulk', '--limit', '100'])).toHaveLength(60)
  })

  it('runs:show --json prints the run exactly; the human form shows input, output and every attempt', async () => {
    // runs:list --json above compared every fixture; here the ones with every field set.
    for (const fixture of FIXTURES.filter((f) => ['run-5-completed', 'run-3-failed'].includes(f.id))) {
      const result = await cli(['runs:show', fixture.id, '--json'])
      expect(result.code).toBe(0)
      expect(json(result)).toEqual(await expectedRun(db.pool, fixture.id))
    }
    const human = await cli(['runs:show', 'run-3-failed'])
    expect(human.code).toBe(0)
    expect(human.stdout).toMatch(/^Status: failed$/m)
    expect(human.stdout).toMatch(/^Error: BOOM: boom$/m)
    expect(human.stdout).toMatch(/^Previous attempts:$/m)
    expect(human.stdout).toMatch(/\| 1 +\| 2026-03-01T10:00:01.000Z \| +\| first +\|/)
    expect(human.stdout).toMatch(/\| 2 +\| 2026-03-01T10:00:02.500Z \| E2 +\| second +\|/)
    // A completed run is not shown with an "Error:": its earlier failure is under "Previous attempts".
    const retried = await cli(['runs:show', 'run-4-completed-retried'])
    expect(retried.stdout).toMatch(/^Status: completed$/m)
    expect(retried.stdout).not.toMatch(/^Error:/m)
    expect(retried.stdout).toMatch(/\| 1 +\| 2026-03-01T10:02:10.000Z \| WARMING_UP \| warming up \|/)
    const table = await cli(['runs:list', '--task', 'beta', '--wide'])
    expect(table.stdout.split('\n').find((l) => l.includes('run-4-completed-retried'))).not.toMatch(/WARMING_UP|warming up/)
    expect(table.stdout.split('\n').find((l) => l.includes('run-7-retry-scheduled'))).toMatch(/HTTP_503: upstream 503/)
    const completed = await cli(['runs:show', 'run-5-completed'])
    expect(completed.stdout).toMatch(/^Output: {"words":3}$/m)
    expect(completed.stdout).toMatch(/^Input: \[1,"two"\]$/m)
  })

  it('runs:show of an unknown id exits 2', async () => {
    const result = await cli(['runs:show', 'no-such-run', '--json'])
    expect(result.code).toBe(2)
    expect(json(result)).toMatchObject({ error: { code: 'UNKNOWN_RUN' }, exitCode: 2 })
    const human = await cli(['runs:show', 'no-such-run'])
    expect(human.code).toBe(2)
    expect(human.stdout).toBe('')
    expect(human.stderr).toMatch(/no task run with id "no-such-run"/)
  })

  describe('runs:list as a table (issue 11: ~190 columns wrapped unreadably at 80)', () => {
    const uuid = 'f3c1a9e4-5b6d-4c7e-8f90-a1b2c3d4e5f6'
    const longError = `the worker answered 503 ${'and explained at length, '.repeat(12)}"quoted", finally`
    beforeAll(async () => {
      const now = Date.now()
      await db.pool.query(`INSERT INTO tasks (id, service_id) VALUES ('a-task-with-a-rather-long-name', 'svc')`)
      await db.pool.query(
        `INSERT INTO task_runs (id, task_id, status, attempt, error, error_code, created_at, scheduled_for, previous_attempts)
         VALUES ($1, 'a-task-with-a-rather-long-name', 'pending', 2, $2, 'HTTP_503', $3, $4, '[]')`,
        [uuid, `${longError}\nsecond line`, new Date(now - 5 * 60_000 - 10_000), new Date(now + 10 * 60_000 + 30_000)])
      await db.pool.query(
        `INSERT INTO task_runs (id, task_id, status, created_at, started_at, completed_at, orchestrator_id, previous_attempts)
         VALUES ('0193a1b2c3d4e5f60718', 'a-task-with-a-rather-long-name', 'completed', $1, $1, $2, 'host-9', '[]')`,
        [new Date(now - 3 * 3600_000 - 60_000), new Date(now - 2 * 3600_000 - 60_000)])
    })
    const list = (args: string[], env: Record<string, string> = {}) => runCli(['runs:list', '--task', 'a-task-with-a-rather-long-name', ...args], { env: { ...db.env, ...env } })
    const widest = (text: string) => Math.max(...text.split('\n').map((l) => [...l].length))

    it('fits 80 columns off a terminal: short ids, relative times, errors cut with …, no borders', async () => {
      const result = await list([])
      expect(result.code).toBe(0)
      expect(widest(result.stdout)).toBeLessThanOrEqual(80)
      const [header, first, second] = result.stdout.trimEnd().split('\n')
      expect(header.split(/\s{2,}/)).toEqual(['Run', 'Task', 'Status', 'Try', 'Created', 'Finished', 'Error'])
      // A UUID is cut to its first 8 characters; a 20-character time-ordered id stays whole.
      // At 80 columns the error gets what the other columns leave (runs:show has it whole).
      expect(first).toMatch(/^f3c1a9e4… +a-task-\S*… +pending +2 +5m ago +due in 10m +HTTP_503:.*…$/)
      expect(first).not.toContain('second line')
      expect(second).toMatch(/^0193a1b2c3d4e5f60718 +a-task-\S* +completed +1 +3h ago +2h ago *$/)
    })

    it('fits the width COLUMNS gives, giving the room to the error', async () => {
      const errorCell = (text: string) => /HTTP_503:.*$/m.exec(text)![0]
      const [at80, narrow, wide] = await Promise.all([list([]), list([], { COLUMNS: '100' }), list([], { COLUMNS: '160' })])
      expect(widest(narrow.stdout)).toBeLessThanOrEqual(100)
      expect(errorCell(narrow.stdout).length).toBeGreaterThan(errorCell(at80.stdout).length)
      expect(widest(wide.stdout)).toBeLessThanOrEqual(160)
      expect(widest(wide.stdout)).toBeGreaterThan(130)
      expect(wide.stdout).toContain('a-task-with-a-rather-long-name')
    })

    it('--wide shows every column whole: whole ids, ISO times, the whole error', async () => {
      const result = await list(['--wide'])
      expect(result.code).toBe(0)
      expect(result.stdout).toContain(uuid)
      expect(result.stdout).toMatch(/\| Priority +\|/)
      expect(result.stdout).toMatch(/\| Orchestrator +\|/)
      expect(result.stdout).toMatch(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/)
      expect(result.stdout).toContain('host-9')
      expect(result.stdout.replace(/\s+\|\s+/g, ' ')).toContain('"quoted", finally')
    })

    it('--columns picks the columns and their order; an unknown one exits 2 before connecting', async () => {
      const result = await list(['--columns', 'status,id,error'])
      expect(result.code).toBe(0)
      expect(result.stdout.split('\n')[0].split(/\s{2,}/)).toEqual(['Status', 'Run', 'Error'])
      expect(result.stdout).toMatch(/^pending +f3c1a9e4… +HTTP_503: /m)
      const wide = await list(['--columns', 'id,orchestrator', '--wide'])
      expect(wide.stdout).toMatch(/\| 0193a1b2c3d4e5f60718 +\| host-9 +\|/)

      // Nothing listens on port 1: a connection attempt would be exit 3.
      const bad = await runCli(['runs:list', '--columns', 'id,stauts', '--json'], { env: { DATABASE_URL: 'postgres://u@127.0.0.1:1/x' } })
      expect(bad.code).toBe(2)
      expect(json(bad)).toEqual({ error: { code: 'UNKNOWN_COLUMN', message: 'unknown column "stauts"; did you mean "status"?', hint: expect.stringContaining('id, task, status') }, exitCode: 2 })
    })

    it('--output csv prints every column whole, quoted as RFC 4180; --output json is --json', async () => {
      const csv = await list(['--output', 'csv'])
      expect(csv.code).toBe(0)
      const lines = csv.stdout.split('\r\n')
      expect(lines[0]).toBe('id,task,status,attempt,priority,created,due,started,finished,orchestrator,pipeline,parent,key,error')
      expect(lines[1].startsWith(`${uuid},a-task-with-a-rather-long-name,pending,2,100,`)).toBe(true)
      expect(csv.stdout).toContain(`,"HTTP_503: ${longError.replace(/"/g, '""')}\nsecond line"\r\n0193a1b2c3d4e5f60718,`)
      const picked = await list(['--output', 'csv', '--columns', 'id,status'])
      expect(picked.stdout.trim()).toBe(`id,status\r\n${uuid},pending\r\n0193a1b2c3d4e5f60718,completed`)

      const [asOutput, asJson] = await Promise.all([list(['--output', 'json']), list(['--json'])])
      expect(asOutput.code).toBe(0)
      expect(JSON.parse(asOutput.stdout)).toEqual(JSON.parse(asJson.stdout))
      // A failure under --output json is the error document too.
      const refused = await runCli(['runs:list', '--output', 'json', '--limit', '0'], { env: db.env })
      expect(json(refused)).toMatchObject({ exitCode: 2 })
    })
  })

  describe('runs:cancel', () => {
    const statusOf = async (id: string) => (await db.pool.query(`SELECT status, completed_at FROM ${ALL_RUNS} AS task_runs WHERE id = $1`, [id])).rows[0]
    let n = 0
    const pendingRun = async () => {
      const id = `cancel-me-${++n}`
      await insertRun(db.pool, { id, task: 'gamma', status: 'pending', age: 100 + n }, base)
      return id
    }

    it('cancels pending runs', async () => {
      const [a, b] = [await pendingRun(), await pendingRun()]
      const result = await cli(['runs:cancel', a, b, '--json'])
      expect(result.code).toBe(0)
      expect(json(result)).toEqual({ cancelled: [a, b], refused: [] })
      for (const id of [a, b]) {
        const row = await statusOf(id)
        expect(row.status).toBe('cancelled')
        expect(row.completed_at).toBeInstanceOf(Date)
      }
      const human = await cli(['runs:cancel', await pendingRun()])
      expect(human.code).toBe(0)
      expect(human.stdout).toMatch(/^cancelled cancel-me-3$/m)
    })

    it('refuses running and finished runs with exit 4 and changes nothing of them', async () => {
      for (const id of ['run-6-running', 'run-5-completed', 'run-1-cancelled']) {
        const before = await expectedRun(db.pool, id)
        const result = await cli(['runs:cancel', id, '--json'])
        expect({ id, code: result.code }).toEqual({ id, code: 4 })
        expect(json(result)).toMatchObject({ error: { code: 'NOT_CANCELLABLE' }, exitCode: 4 })
        expect(await expectedRun(db.pool, id)).toEqual(before)
      }
    })

    it('all or nothing: with a pending run and a running or finished one, cancels nothing and exits 4 naming the others', async () => {
      for (const other of ['run-6-running', 'run-5-completed']) {
        const pending = await pendingRun()
        const result = await cli(['runs:cancel', pending, other])
        expect({ other, code: result.code }).toEqual({ other, code: 4 })
        expect(result.stderr).toMatch(new RegExp(`${other} is ${other.replace(/^run-\d-/, '')}.*nothing was cancelled`))
        expect((await statusOf(pending)).status).toBe('pending')
      }
      expect((await statusOf('run-6-running')).status).toBe('running')
    })

    it('all or nothing: an unknown id is exit 2 even beside a running one (input before state), and cancels nothing', async () => {
      const pending = await pendingRun()
      const result = await cli(['runs:cancel', pending, 'run-6-running', 'no-such-run', '--json'])
      expect(result.code).toBe(2)
      expect(json(result)).toMatchObject({ error: { code: 'UNKNOWN_RUN' }, exitCode: 2 })
      expect((await statusOf(pending)).status).toBe('pending')
    })

    it('says the rule in --help', async () => {
      const result = await runCli(['runs:cancel', '--help'])
      expect(result.code).toBe(0)
      expect(result.stdout.replace(/\s+/g, ' ')).toMatch(/all or nothing/i)
    })

    it('exits 2 for an unknown id and then cancels nothing at all', async () => {
      const pending = await pendingRun()
      const result = await cli(['runs:cancel', pending, 'no-such-run', '--json'])
      expect(result.code).toBe(2)
      expect(json(result)).toMatchObject({ error: { code: 'UNKNOWN_RUN' }, exitCode: 2 })
      expect((await statusOf(pending)).status).toBe('pending')
    })

    it('exits 2 without any id', async () => {
      expect((await cli(['runs:cancel'])).code).toBe(2)
    })
  })
})
