/**
 * A mode change made directly in SQL (SPEC §4): the runbook's one-liner, run by psql, is honoured,
 * moves mode_changed_at and is recorded in maintenance_events with the database user (and
 * application_name) as actor, without inheriting the previous reason.
 */
import { TEST_SCHEMA, createTestDatabase, type TestDatabase } from './helpers/db'
import { json, runCli } from './helpers/cli'
import { addPendingRun, addTask, claim, eventsAfter, heartbeat, lastEventId, mode, resetTo } from './helpers/maintenance-fixtures'
import { psql } from './helpers/psql'

let db: TestDatabase
let dbUser: string

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  await addTask(db.pool, 'work')
  dbUser = decodeURIComponent(new URL(db.url).username)
})
afterAll(async () => { await db.drop() })

/** The runbook's SQL by psql, with the suite's schema on the search_path (README: Schema). */
const runbook = (sql: string) => psql(db.url, sql, { schema: TEST_SCHEMA })

it('UPDATE … SET mode = \'running\' by psql in maintenance: status shows running, the new Mode changed at, the database user as actor', async () => {
  await resetTo(db.pool, 'running')
  await addPendingRun(db.pool, 'work')
  expect((await runCli(['maintenance:enter', '--reason', 'restore'], { env: db.env })).code).toBe(0)
  const entered = await mode(db.pool)
  expect(entered).toMatchObject({ mode: 'maintenance', reason: 'restore' })
  const before = await lastEventId(db.pool)

  await runbook(`UPDATE orchestrator_state SET mode = 'running' WHERE id = 'singleton'`)

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
  await runbook(`UPDATE orchestrator_state SET mode = 'maintenance', reason = 'disk full' WHERE id = 'singleton'`)
  await runbook(`UPDATE orchestrator_state SET mode = 'maintenance' WHERE id = 'singleton'`)
  await runbook(`UPDATE orchestrator_state SET reason = 'still disk full' WHERE id = 'singleton'`)
  expect((await eventsAfter(db.pool, before)).map((e) => [e.from_mode, e.to_mode, e.actor, e.reason])).toEqual([
    ['running', 'maintenance', `${dbUser} (psql)`, 'disk full'],
  ])
  expect(json(await runCli(['maintenance:status', '--json'], { env: db.env }))).toMatchObject({ mode: 'maintenance', reason: 'still disk full' })
})
