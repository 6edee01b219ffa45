/**
 * SPEC §4 atomicity, under load: 16 connections enqueue in a tight loop while the mode changes,
 * and orchestrators (here: loops that run the drain check, claim and complete the way `run` does)
 * claim side by side. Afterwards no run may have been created after the recorded moment the mode
 * left `running`, and none may have started after the mode became `maintenance`.
 *
 * Two ways the mode changes: `pipeweave maintenance:request` from another process, the drain then
 * completed by the claimers' drain checks (the scenario of the issue); and a runbook's SQL UPDATE
 * straight to `maintenance`, sent just as a claim is on its way, many times. Checked to fail, every
 * time, with any one gate lock commented out (migrations 001 and 002): the trigger's (runs created late in
 * every request round, and late runs or starts in the runbook test), the enqueue's (runs created
 * late) or the claim's (runs started in maintenance in about half the flips of the runbook test; a
 * request's drain alone cannot show it: a claim can only race the drain for a run that falls due in
 * the instant between the drain check's count and its change).
 */
import { Client } from 'pg'
import { enqueueTask } from '../src/api/enqueue'
import type { Database } from '../src/db/database'
import { MaintenanceModeError } from '../src/errors'
import { drainCheck, exitMaintenance } from '../src/maintenance/maintenance'
import { createRepository } from '../src/orchestrator/repository'
import { createTestDatabase, type TestDatabase, ALL_RUNS, TEST_SCHEMA } from './helpers/db'
import { clientDatabase } from './helpers/orchestrator'
import { runCli } from './helpers/cli'
import { deferred, waitFor } from './helpers/wait'
import { addTask, heartbeat, maintenanceViolations, mode } from './helpers/maintenance-fixtures'

const ENQUEUERS = 16
/** Orchestrators: each runs the drain check, claims and completes on its own loop, side by side. */
const CLAIMERS = 3
const COMPLETERS_EACH = 2
/** The backlog the enqueuers may build before they wait for a claim cycle (keeps each drain short). */
const BACKLOG = 600
const ORCHESTRATOR = 'race-orchestrator'
const REQUEST_ROUNDS = 5
const RUNBOOK_FLIPS = 20

/**
 * Most runs are due at once; one in four is delayed by up to 200 ms, so that runs fall due while a
 * drain is being decided.
 */
function delayMs(i: number): number {
  return i % 4 === 0 ? (i * 37) % 200 : 0
}

let db: TestDatabase
let clients: Client[] = []

beforeAll(async () => {
  db = await createTestDatabase({ migrated: true })
  await addTask(db.pool, 'race')
  for (let i = 0; i < ENQUEUERS + CLAIMERS * (1 + COMPLETERS_EACH); i++) {
    const client = new Client({ connectionString: db.url, application_name: `race-${i}`, options: `-c search_path=${TEST_SCHEMA}` })
    client.on('error', () => undefined)
    await client.connect()
    clients.push(client)
  }
})
afterAll(async () => {
  await Promise.all(clients.map((c) => c.end().catch(() => undefined)))
  clients = []
  await db.drop()
})

interface Stats {
  enqueued: number
  refused: number
  claimed: number
  /** Claim cycles that found the mode `maintenance` and claimed nothing. */
  emptyClaimsInMaintenance: number
}

interface Load {
  stats: Stats
  failures: unknown[]
  /** Resolves when a claimer is about to send its next claim. */
  claimStarting(): Promise<void>
  stop(): Promise<void>
}

/** Start the enqueuers and the claimers; they run until stop(). */
async function startLoad(): Promise<Load> {
  const stats: Stats = { enqueued: 0, refused: 0, claimed: 0, emptyClaimsInMaintenance: 0 }
  const failures: unknown[] = []
  let stopped = false
  await heartbeat(db.pool, ORCHESTRATOR)

  // Resolved after every claim cycle. An enqueuer waits for one when the backlog is full, and,
  // after a refusal, before its next try: it goes on racing the mode without starving the
  // claimers of the 2 cores (a refusal only repeats what is already decided).
  let cycle = deferred()
  const cycleDone = () => { const done = cycle; cycle = deferred(); done.resolve() }
  let claiming = deferred()

  const enqueuer = async (client: Client, index: number) => {
    let refusedLast = false
    for (let i = index; !stopped; i += ENQUEUERS) {
      if (refusedLast || stats.enqueued - stats.claimed > BACKLOG) await cycle.promise
      if (stopped) break
      try {
        await enqueueTask(clientDatabase(client), { taskId: 'race', input: {}, delayMs: delayMs(i) })
        stats.enqueued++
        refusedLast = false
      } catch (error) {
        if (!(error instanceof MaintenanceModeError)) { failures.push(error); return }
        stats.refused++
        refusedLast = true
      }
    }
  }

  // As `run` does on its loop: the drain check, a claim, the completions (concurrently, as
  // dispatches are).
  const claimer = async (client: Client, completers: Client[]) => {
    const repo = createRepository(clientDatabase(client) as unknown as Database, ORCHESTRATOR)
    const completing = completers.map((c) => createRepository(clientDatabase(c) as unknown as Database, ORCHESTRATOR))
    while (!stopped) {
      try {
        const check = await drainCheck(clientDatabase(client), { staleMs: 30_000, actor: 'race-claimer' })
        const claim = repo.claim(20, 2_000_000_000)
        const starting = claiming
        claiming = deferred()
        starting.resolve()
        const { runs: rows } = await claim
        stats.claimed += rows.length
        await Promise.all(completing.map(async (completer, k) => {
          for (let j = k; j < rows.length; j += completing.length) {
            await completer.complete([{ runId: rows[j].id, attempt: rows[j].attempt, output: {}, runNext: [], fromCache: false }])
          }
        }))
        if (check.mode === 'maintenance' && rows.length === 0) stats.emptyClaimsInMaintenance++
      } catch (error) {
        failures.push(error)
        return
      } finally {
        cycleDone()
      }
    }
  }

  const loops = clients.slice(0, ENQUEUERS).map((c, i) => enqueuer(c, i))
  for (let k = 0; k < CLAIMERS; k++) {
    const base = ENQUEUERS + k * (1 + COMPLETERS_EACH)
    loops.push(claimer(clients[base], clients.slice(base + 1, base + 1 + COMPLETERS_EACH)))
  }
  return {
    stats,
    failures,
    claimStarting: () => claiming.promise,
    stop: async () => {
      stopped = true
      cycle.resolve()
      claiming.resolve()
      await Promise.all(loops)
    },
  }
}

const violations = () => maintenanceViolations(db.pool)

async function resetRuns(): Promise<void> {
  await db.pool.query(`DELETE FROM maintenance_events`)
  await db.pool.query(`DELETE FROM task_runs`)
  await db.pool.query(`DELETE FROM task_run_history`)
}

it(`maintenance:request while 16 connections enqueue and orchestrators drain: nothing created late, nothing started in maintenance (${REQUEST_ROUNDS} rounds)`, async () => {
  await resetRuns()
  let enqueued = 0
  for (let i = 0; i < REQUEST_ROUNDS; i++) {
    const load = await startLoad()
    try {
      await waitFor(() => (load.stats.enqueued >= 100 && load.stats.claimed >= 50) || load.failures.length > 0, { what: 'the enqueuers and claimers to get going' })
      const request = await runCli(['maintenance:request', '--reason', 'race'], { env: db.env })
      expect({ code: request.code, stderr: request.stderr }).toEqual({ code: 0, stderr: '' })
      await waitFor(async () => (await mode(db.pool)).mode === 'maintenance' || load.failures.length > 0, { what: 'the drain to complete' })
      // Keep everyone at the gate for a moment after the drain: refused enqueues, empty claims.
      const refused = load.stats.refused
      await waitFor(() => (load.stats.refused >= refused + ENQUEUERS * 3 && load.stats.emptyClaimsInMaintenance >= CLAIMERS * 3) || load.failures.length > 0,
        { what: 'enqueues and claims in maintenance' })
    } finally {
      await load.stop()
    }
    expect(load.failures).toEqual([])
    expect(load.stats.enqueued).toBeGreaterThan(0)
    enqueued += load.stats.enqueued
    // Back to running for the next round (what maintenance:exit does).
    const one = await db.pool.connect()
    try {
      await exitMaintenance(clientDatabase(one), { actor: 'race-test', reason: 'next round' })
    } finally {
      one.release()
    }
  }

  const found = await violations()
  expect(found).toHaveLength(REQUEST_ROUNDS)
  // The test raced for real: every round claimed while draining.
  expect(found.map((v) => v.startedWhileDraining > 0)).toEqual(found.map(() => true))
  const { rows: [{ n }] } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${ALL_RUNS} AS task_runs`)
  expect(n).toBe(enqueued)
  expect(found.map(({ createdLate, startedInMaintenance }) => ({ createdLate, startedInMaintenance })))
    .toEqual(found.map(() => ({ createdLate: 0, startedInMaintenance: 0 })))
})

it(`a runbook's UPDATE to maintenance while runs are enqueued and claimed: nothing created or started after it (${RUNBOOK_FLIPS} flips)`, async () => {
  await resetRuns()
  const runbook = new Client({ connectionString: db.url, application_name: 'runbook', options: `-c search_path=${TEST_SCHEMA}` })
  await runbook.connect()
  const load = await startLoad()
  try {
    for (let i = 0; i < RUNBOOK_FLIPS && load.failures.length === 0; i++) {
      const claimed = load.stats.claimed
      await waitFor(() => load.stats.claimed > claimed + 20 || load.failures.length > 0, { what: 'claims in running' })
      // Sent while a claim is on its way: the change lands among claims in flight.
      await load.claimStarting()
      await runbook.query(`UPDATE orchestrator_state SET mode = 'maintenance' WHERE id = 'singleton'`)
      const empty = load.stats.emptyClaimsInMaintenance
      await waitFor(() => load.stats.emptyClaimsInMaintenance >= empty + CLAIMERS || load.failures.length > 0, { what: 'claims in maintenance' })
      await runbook.query(`UPDATE orchestrator_state SET mode = 'running' WHERE id = 'singleton'`)
    }
  } finally {
    await load.stop()
    await runbook.end()
  }
  expect(load.failures).toEqual([])
  const found = await violations()
  expect(found).toHaveLength(RUNBOOK_FLIPS)
  expect(found.map(({ createdLate, startedInMaintenance }) => ({ createdLate, startedInMaintenance })))
    .toEqual(found.map(() => ({ createdLate: 0, startedInMaintenance: 0 })))
})
