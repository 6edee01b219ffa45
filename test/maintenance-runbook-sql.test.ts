/**
 * A mode change made directly in SQL (SPEC §4): the runbook's one-liner, run by psql, is honoured,
 * moves mode_changed_at and is recorded in maintenance_events with the database user (and
 * application_name) as actor, without inheriting the previous reason.
 */
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import { Client } from 'pg'
import { createTestDatabase, type TestDatabase } from './helpers/db'
import { json, runCli } from './helpers/cli'
import { addPendingRun, addTask, claim, eventsAfter, heartbeat, lastEventId, mode, resetTo } from './helpers/maintenance-fixtures'

const PSQL = '/usr/bin/psql'

let db: TestDatabase
let dbUser: string

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  await addTask(db.pool, 'work')
  dbUser = decodeURIComponent(new URL(db.url).username)
})
afterAll(async () => { await db.drop() })

/**
 * Run SQL the way an operator's runbook does: with psql where it is installed (CI has it), else a
 * plain session that introduces itself as psql does (`npm test` needs nothing but Node and npm).
 */
async function psql(sql: string): Promise<void> {
  if (fs.existsSync(PSQL)) {
    const env = { ...process.env }
    delete env.PGAPPNAME // psql's own application_name, `psql`
    const result = spawnSync(PSQL, [db.url, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql], { encoding: 'utf8', env })
    expect({ status: result.status, stderr: result.stderr }).toEqual({ status: 0, stderr: '' })
    return
  }
  const client = new Client({ connectionString: db.url, application_name: 'psql' })
  await client.connect()
  try {
    await client.query(sql)
  } finally {
    await client.end()
  }
}

it('UPDATE … SET mode = \'running\' by psql in maintenance: status shows running, the new Mode changed at, the database user as actor', async () => {
  await resetTo(db.pool, 'running')
  await addPendingRun(db.pool, 'work')
  expect((await runCli(['maintenance:enter', '--reason', 'restore'], { env: db.env })).code).toBe(0)
  const entered = await mode(db.pool)
  expect(entered).toMatchObject({ mode: 'maintenance', reason: 'restore' })
  const before = await lastEventId(db.pool)

  await psql(`UPDATE orchestrator_state SET mode = 'running' WHERE id = 'singleton'`)

  const events = await eventsAfter(db.pool, before)
  expect(events).toEqual([expect.objectContaining({ from_mode: 'maintenance', to_mode: 'running', actor: `${dbUser} (psql)`, reason: null })])
  const state = await mode(db.pool)
  expect(state.modeChangedAt).toEqual(events[0].at)
  expect(state.modeChangedAt.getTime()).toBeGreaterThan(entered.modeChangedAt.getTime())

  const status = await runCli(['maintenance:status'], { env: db.env })
  expect(status.code).toBe(0)
  const lines = status.stdout.split('\n')
  expect(lines).toContain('Mode: running')
  expect(lines).toContain(`Mode changed at: ${events[0].at.toISOString()}`)
  expect(lines.some((l) => l.startsWith('Reason:'))).toBe(false)
  expect(json(await runCli(['maintenance:status', '--json'], { env: db.env }))).toMatchObject({
    mode: 'running', modeChangedAt: events[0].at.toISOString(), reason: null,
  })

  // Honoured: orchestrators claim again at once.
  await heartbeat(db.pool, 'orch')
  expect(await claim(db.pool, 'orch', 5)).toHaveLength(1)
})

it('a runbook UPDATE that sets the reason keeps it; one that changes nothing records nothing', async () => {
  await resetTo(db.pool, 'running')
  const before = await lastEventId(db.pool)
  await psql(`UPDATE orchestrator_state SET mode = 'maintenance', reason = 'disk full' WHERE id = 'singleton'`)
  await psql(`UPDATE orchestrator_state SET mode = 'maintenance' WHERE id = 'singleton'`)
  await psql(`UPDATE orchestrator_state SET reason = 'still disk full' WHERE id = 'singleton'`)
  expect((await eventsAfter(db.pool, before)).map((e) => [e.from_mode, e.to_mode, e.actor, e.reason])).toEqual([
    ['running', 'maintenance', `${dbUser} (psql)`, 'disk full'],
  ])
  expect(json(await runCli(['maintenance:status', '--json'], { env: db.env }))).toMatchObject({ mode: 'maintenance', reason: 'still disk full' })
})
