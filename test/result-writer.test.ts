/**
 * The result writer's batch splitting (writer.ts), reached on purpose (issue 10: "the
 * batch-splitting path of completions is reached on purpose, not by chance"). Results that arrive
 * while a write is in flight go together in the next statement; when the database refuses such a
 * batch for its data (SQLSTATE class 22), the writer writes its results again one by one, so that
 * only the result at fault fails: RESULT_REJECTED, retried as the run's next attempt.
 *
 * In-process (createOrchestrator with a wrapped repository, real database, real HTTP worker): the
 * wrapper holds the first write until every other answer is in hand, so that they queue behind it
 * and go as one batch; the refusal itself is the database's own (a NUL character in one output).
 */
import type { Completion } from '../src/orchestrator/repository'
import { createRepository } from '../src/orchestrator/repository'
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { startInProcess, stopLeftoverOrchestrators } from './helpers/in-process'
import { allIn, enqueueMany, registerTasks } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { hold, ok, startWorker, type StubWorker } from './helpers/worker'

describe('the result writer', () => {
  let db: TestDatabase
  let worker: StubWorker

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
    worker = await startWorker()
    await registerTasks(db.url, worker.url, [{ id: 'job', retries: 2, retryBackoff: 'fixed', retryDelayMs: 0 }])
  })

  afterEach(async () => {
    await stopLeftoverOrchestrators()
    await worker.close()
    await db.drop()
  })

  it('writes a batch the database refuses one result at a time: the poisoned result fails alone (RESULT_REJECTED, retried), the others complete', async () => {
    const ids = await enqueueMany(db.pool, 'job', 6)
    const poisoned = ids[3]
    worker.behave('job', (r) => (r.attempt === 1 ? hold() : ok('clean')))

    const writes: Array<{ items: Array<Pick<Completion, 'runId' | 'attempt'>>; error?: string }> = []
    let answers = 0
    const p = await startInProcess(db.url, {
      concurrency: 6, pollIntervalMs: 100,
      hooks: { onDispatch: () => { answers += 1 } },
      repository: (database, id) => {
        const real = createRepository(database, id, { concurrency: 6 })
        return {
          ...real,
          async complete(completions) {
            const write: (typeof writes)[number] = { items: completions.map((c) => ({ runId: c.runId, attempt: c.attempt })) }
            writes.push(write)
            // The first write waits until the 5 other answers are in hand: they queue behind it.
            if (writes.length === 1) await waitFor(() => answers >= 6, { what: 'every answer of attempt 1' })
            try {
              return await real.complete(completions)
            } catch (error) {
              write.error = (error as { code?: string }).code ?? String(error)
              throw error
            }
          },
        }
      },
    })

    await worker.until(() => worker.held().length === 6, { what: '6 runs sent' })
    const lead = worker.held().find((r) => r.runId !== poisoned)!
    lead.release(ok({ n: lead.body.input }))
    await waitFor(() => writes.length === 1, { what: 'the first write' })
    for (const r of worker.held()) r.release(r.runId === poisoned ? ok('NUL \u0000 inside') : ok({ n: r.body.input }))
    await waitFor(() => allIn(db.pool, ['completed'], ids), { what: 'every run to complete' })

    const rest = ids.filter((id) => id !== lead.runId)
    const attempt1 = (runIds: string[]) => runIds.map((runId) => ({ runId, attempt: 1 }))
    const byId = (a: { runId: string }, b: { runId: string }) => a.runId.localeCompare(b.runId)
    // The lead alone; the 5 others together, refused by the database for the poisoned output.
    expect(writes[0]).toEqual({ items: attempt1([lead.runId]) })
    expect(writes[1].items.slice().sort(byId)).toEqual(attempt1(rest).sort(byId))
    expect(writes[1].error).toMatch(/^22/)
    // Then one by one: only the poisoned result is refused.
    const singles = writes.slice(2, 7)
    expect(singles.map((w) => w.items)).toEqual(writes[1].items.map((item) => [item]))
    expect(singles.filter((w) => w.error).map((w) => [w.items[0].runId, w.error])).toEqual([[poisoned, writes[1].error]])
    // Its next attempt, with a clean answer, is written like any other.
    expect(writes.slice(7)).toEqual([{ items: [{ runId: poisoned, attempt: 2 }] }])

    const { rows } = await db.pool.query<{ id: string; status: string; attempt: number; output: unknown; previous_attempts: Array<Record<string, unknown>> }>(
      `SELECT id, status, attempt, output, previous_attempts FROM ${ALL_RUNS} AS r`)
    expect(rows).toHaveLength(6)
    for (const row of rows) {
      if (row.id === poisoned) {
        expect(row).toMatchObject({ status: 'completed', attempt: 2, output: 'clean' })
        expect(row.previous_attempts).toEqual([expect.objectContaining({ attempt: 1, errorCode: 'RESULT_REJECTED' })])
      } else {
        expect(row).toMatchObject({ status: 'completed', attempt: 1, output: { n: { n: ids.indexOf(row.id) + 1 } }, previous_attempts: [] })
      }
    }
    expect(p.log.filter((l) => l.errorCode === 'RESULT_REJECTED').map((l) => [l.runId, l.status, l.attempt])).toEqual([[poisoned, 'pending', 1]])
    expect(worker.requestsFor(poisoned).map((r) => r.attempt)).toEqual([1, 2])
    expect(await p.stop()).toEqual({ exitCode: 0 })
  })
})
