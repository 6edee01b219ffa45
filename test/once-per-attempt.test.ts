/**
 * Once per attempt (SPEC §5, issue 10 acceptance 6): a request that may have reached the worker is
 * never sent again within the same attempt. A reset on a reused keep-alive socket after the
 * request was written fails the attempt (CONNECTION_DROPPED, retryable) and is recorded; only a
 * request that provably never left is sent again (the positive case is unit-tested in
 * dispatcher.test.ts). At shutdown, an aborted request that was written comes back as a new
 * attempt (SHUTDOWN_ABORTED); a run never sent keeps its attempt (run-shutdown.test.ts has the
 * process side; the run claimed but not yet written is reached here in-process).
 */
import * as http from 'node:http'
import type * as net from 'node:net'
import type { Duplex } from 'node:stream'
import { createTestDatabase, type TestDatabase, ALL_RUNS } from './helpers/db'
import { startInProcess, stopLeftoverOrchestrators } from './helpers/in-process'
import { enqueueMany, quickEnv, registerTasks, type RunRow, startRun, statusCounts } from './helpers/orchestrator'
import { waitFor } from './helpers/wait'
import { hold, startWorker, type StubWorker } from './helpers/worker'

interface Reception {
  runId: string
  attempt: number
  socket: number
  /** The how-manieth request of its socket. */
  nth: number
  /** Answered, or the socket destroyed on receipt (FIN) or reset (RST). */
  fate: 'answered' | 'destroyed' | 'reset'
}

/**
 * A worker (node:http) that counts the requests of each keep-alive socket and, on receipt of some
 * requests that are the 2nd or later of their socket, destroys that socket without answering.
 */
async function startDroppingWorker(drop: (request: { runId: string; attempt: number; nth: number }) => Reception['fate']) {
  const receptions: Reception[] = []
  const sockets = new Map<net.Socket, { id: number; requests: number }>()
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const socket = sockets.get(req.socket)!
      socket.requests += 1
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { runId: string; attempt: number }
      const nth = socket.requests
      const fate = nth >= 2 ? drop({ runId: body.runId, attempt: body.attempt, nth }) : 'answered'
      receptions.push({ runId: body.runId, attempt: body.attempt, socket: socket.id, nth, fate })
      if (fate === 'destroyed') req.socket.destroy()
      else if (fate === 'reset') req.socket.resetAndDestroy()
      else res.end(JSON.stringify({ output: { attempt: body.attempt } }))
    })
  })
  server.on('connection', (socket: net.Socket) => {
    sockets.set(socket, { id: sockets.size + 1, requests: 0 })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    receptions,
    /** Requests carried by each socket. */
    requestsPerSocket: () => [...sockets.values()].map((s) => s.requests),
    close: () => new Promise<void>((resolve) => {
      for (const socket of sockets.keys()) socket.destroy()
      server.close(() => resolve())
    }),
  }
}

describe('once per attempt', () => {
  let db: TestDatabase

  beforeEach(async () => {
    db = await createTestDatabase({ migrated: true })
  })

  afterEach(async () => {
    await stopLeftoverOrchestrators()
    await db.drop()
  })

  it('a worker that drops reused sockets on receipt gets each (run, attempt) once at most, and every one it got is a recorded attempt', async () => {
    // Every third request that is the 2nd or later of its socket is dropped, by FIN or by RST in
    // turn, and no run more than twice: with 3 retries every run completes.
    let candidates = 0
    const drops = new Map<string, number>()
    const worker = await startDroppingWorker(({ runId }) => {
      candidates += 1
      if (candidates % 3 !== 0 || (drops.get(runId) ?? 0) >= 2) return 'answered'
      drops.set(runId, (drops.get(runId) ?? 0) + 1)
      return candidates % 2 === 0 ? 'destroyed' : 'reset'
    })
    try {
      await registerTasks(db.url, worker.url, [{ id: 'job', retries: 3, retryBackoff: 'fixed', retryDelayMs: 0 }])
      const ids = await enqueueMany(db.pool, 'job', 300)
      const run = startRun(quickEnv(db.env), ['--log-format', 'json', '--concurrency', '10', '--until-idle'])
      const exit = await run.done
      expect(exit.code).toBe(0)
      expect(await statusCounts(db.pool)).toEqual({ completed: 300 })

      // The worker saw what the test is about: keep-alive sockets that carried several requests,
      // and drops (both kinds) only on the 2nd or later request of a socket.
      const { receptions } = worker
      const dropped = receptions.filter((r) => r.fate !== 'answered')
      expect(dropped.length).toBeGreaterThanOrEqual(20)
      expect(new Set(dropped.map((r) => r.fate))).toEqual(new Set(['destroyed', 'reset']))
      expect(dropped.every((r) => r.nth >= 2)).toBe(true)
      expect(worker.requestsPerSocket().filter((n) => n >= 2).length).toBeGreaterThan(0)

      // Each (run, attempt) reached the worker at most once.
      const keys = receptions.map((r) => `${r.runId}/${r.attempt}`)
      expect(keys.filter((key, i) => keys.indexOf(key) !== i)).toEqual([])

      // Every reception is a recorded attempt, and every recorded attempt a reception: the one it
      // answered completed the run; each one it dropped is in previous_attempts as CONNECTION_DROPPED.
      const { rows } = await db.pool.query<RunRow>(`SELECT * FROM ${ALL_RUNS} AS r`)
      expect(rows.map((r) => r.id).sort()).toEqual([...ids].sort())
      const byRun = new Map<string, Reception[]>()
      for (const r of receptions) byRun.set(r.runId, [...(byRun.get(r.runId) ?? []), r])
      const wrong: unknown[] = []
      for (const row of rows) {
        const got = (byRun.get(row.id) ?? []).sort((a, b) => a.attempt - b.attempt)
        const expected = Array.from({ length: row.attempt }, (_, i) => ({ attempt: i + 1, fate: i + 1 === row.attempt ? 'answered' : 'dropped' }))
        const seen = got.map((r) => ({ attempt: r.attempt, fate: r.fate === 'answered' ? 'answered' : 'dropped' }))
        const recorded = row.previous_attempts.map((p) => ({ attempt: p.attempt, errorCode: p.errorCode }))
        const recordedExpected = expected.filter((e) => e.fate === 'dropped').map((e) => ({ attempt: e.attempt, errorCode: 'CONNECTION_DROPPED' }))
        if (JSON.stringify(seen) !== JSON.stringify(expected) || JSON.stringify(recorded) !== JSON.stringify(recordedExpected) || row.output === null) {
          wrong.push({ run: row.id, attempt: row.attempt, output: row.output, received: got, previous_attempts: row.previous_attempts })
        }
      }
      expect(wrong).toEqual([])
      expect(rows.filter((r) => r.attempt > 1).length).toBe(new Set(dropped.map((r) => r.runId)).size)
    } finally {
      await worker.close()
    }
  })

  describe('at shutdown', () => {
    let worker: StubWorker

    beforeEach(async () => {
      worker = await startWorker()
    })

    afterEach(async () => {
      await worker.close()
    })

    it('a written request aborted by the shutdown timeout is a new attempt (SHUTDOWN_ABORTED); a claimed run whose request never left keeps its attempt', async () => {
      // Two services: one whose worker holds the request, one whose connection never comes up
      // (an agent that never hands the request a socket: nothing of it is ever written).
      class StallingAgent extends http.Agent {
        stalled = 0
        createConnection(options: http.ClientRequestArgs, callback?: (error: Error | null, stream: Duplex) => void): Duplex | null | undefined {
          if (Number(options.port) === stallPort) {
            this.stalled += 1
            return undefined // and the callback is never called
          }
          return super.createConnection(options, callback)
        }
      }
      const stallPort = 9 // never connected to
      const agent = new StallingAgent({ keepAlive: true })
      await registerTasks(db.url, worker.url, [{ id: 'held', retries: 2, retryDelayMs: 60_000 }], 'holding')
      await registerTasks(db.url, `http://127.0.0.1:${stallPort}`, [{ id: 'stalled', retries: 2, retryDelayMs: 60_000 }], 'stalling')
      worker.behave('held', () => hold())
      const [sent] = await enqueueMany(db.pool, 'held', 1)
      const [unsent] = await enqueueMany(db.pool, 'stalled', 1)

      const p = await startInProcess(db.url, { concurrency: 4, shutdownTimeoutMs: 300, pollIntervalMs: 100, dispatcher: { agents: { http: agent } } })
      await worker.until(() => worker.held().length === 1, { what: 'the held request' })
      await waitFor(() => agent.stalled === 1, { what: 'the stalled connection' })
      const { rows: running } = await db.pool.query('SELECT id FROM task_runs WHERE status = $1 ORDER BY id', ['running'])
      expect(running.map((r) => r.id)).toEqual([sent, unsent].sort())

      expect(await p.stop()).toEqual({ exitCode: 0 })
      await worker.until(() => worker.requestsFor(sent)[0].abandonedAt !== undefined, { what: 'the held request to be hung up on' })
      const { rows } = await db.pool.query<RunRow>(`SELECT * FROM ${ALL_RUNS} AS r ORDER BY id`)
      const byId = new Map(rows.map((r) => [r.id, r]))
      // Written, so maybe seen by the worker: that attempt is spent, the next is due at once.
      expect(byId.get(sent)).toMatchObject({
        status: 'pending', attempt: 2, orchestrator_id: null, error_code: 'SHUTDOWN_ABORTED',
        previous_attempts: [expect.objectContaining({ attempt: 1, errorCode: 'SHUTDOWN_ABORTED' })],
      })
      expect(byId.get(sent)!.scheduled_for!.getTime()).toBeLessThanOrEqual(Date.now() + 1000)
      // Never written: handed back with its attempt.
      expect(byId.get(unsent)).toMatchObject({ status: 'pending', attempt: 1, orchestrator_id: null, previous_attempts: [], error_code: null })
      expect(p.log.find((l) => l.runId === unsent && l.status === 'pending')).toMatchObject({ event: 'run', attempt: 1, msg: expect.stringMatching(/attempt 1 kept/) })
      expect(p.log.find((l) => l.runId === sent && l.status === 'pending')).toMatchObject({ event: 'run', attempt: 1, errorCode: 'SHUTDOWN_ABORTED' })
    })
  })
})
