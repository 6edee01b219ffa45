/**
 * When the claimer looks again (SPEC §5 "new work is noticed within one poll interval; LISTEN/NOTIFY
 * may make it immediate"; SPEC §7 "runs held back are taken as soon as the window allows"): a
 * notification that arrives while a claim is in flight is not lost when that claim, whose snapshot
 * predates the enqueue, comes back empty. In-process, against the real database and a real HTTP
 * worker, with a poll interval of a minute: only the notification can explain a prompt claim.
 * Fails on bfffcef (the empty claim's answer cleared the notified work; the run waited for the poll).
 */
import { createRepository } from '../src/orchestrator/repository'
import { createTestDatabase, type TestDatabase } from './helpers/db'
import { startInProcess } from './helpers/in-process'
import { allIn, enqueueMany, registerTasks } from './helpers/orchestrator'
import { deferred, waitFor } from './helpers/wait'
import { startWorker, type StubWorker } from './helpers/worker'

describe('the claimer and notifications', () => {
  let db: TestDatabase
  let worker: StubWorker

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [{ id: 'job', retries: 0 }])
  })

  afterEach(async () => {
    await worker.close()
    await db.drop()
  })

  it('work notified while a claim is in flight is claimed at once, though that claim came back empty', async () => {
    let holdNext = false
    const entered = deferred()
    const release = deferred()
    const p = await startInProcess(db.url, {
      concurrency: 4, pollIntervalMs: 60_000, listen: true,
      repository: (database, id) => {
        const real = createRepository(database, id, { concurrency: 4 })
        return {
          ...real,
          async claim(limit, leaseMs) {
            const hold = holdNext
            holdNext = false
            // The claim runs (and commits, empty) before the enqueue; its answer arrives after the
            // enqueue's notification.
            const result = await real.claim(limit, leaseMs)
            if (hold) {
              entered.resolve()
              await release.promise
            }
            return result
          },
        }
      },
    })
    try {
      // An idle orchestrator (its first claims done), then one more claim, held after it ran.
      await waitFor(() => p.log.some((l) => l.event === 'started'), { what: 'the start' })
      // The claimer is idle until notified: a notification of our own starts the held claim.
      holdNext = true
      await db.pool.query(`SELECT pg_notify('pipeweave.' || current_schema(), 'runs')`)
      await entered.promise
      const [id] = await enqueueMany(db.pool, 'job', 1)
      // Time for the enqueue's notification to cross the orchestrator's LISTEN session (nothing
      // in the process can be observed receiving it) before the empty answer arrives.
      await new Promise((resolve) => setTimeout(resolve, 300))
      const sentAt = Date.now()
      release.resolve()
      await waitFor(() => allIn(db.pool, ['completed'], [id]), { timeoutMs: 10_000, what: 'the notified run to complete (poll interval 60 s)' })
      expect(Date.now() - sentAt).toBeLessThan(5000)
    } finally {
      release.resolve()
      expect(await p.stop()).toEqual({ exitCode: 0 })
    }
  })
})
