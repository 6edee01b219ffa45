/**
 * A stub worker service: a real node:http server on 127.0.0.1:0 that speaks the worker side of
 * the protocol (SPEC §5) as the test scripts it. Each request is recorded (run, task, attempt,
 * headers, raw body, arrival time) and answered by the behaviour the test set for its task:
 * a reply, an error status with a JSON body, a garbled body, a dropped socket, or a hold that
 * the test releases by hand. It tracks, per task, how many requests are in flight at once.
 */
import { EventEmitter } from 'node:events'
import * as http from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

export type Action =
  /** Answer with `status` (200) and `body` as JSON (`undefined` = empty body), or `raw` text as is. */
  | { kind: 'reply'; status?: number; body?: unknown; raw?: string; delayMs?: number }
  /** Keep the request open until the test calls release() (or the client goes away). */
  | { kind: 'hold' }
  /** Destroy the socket without answering. */
  | { kind: 'destroy' }

export const ok = (output?: unknown, runNext?: string[]): Action =>
  ({ kind: 'reply', status: 200, body: runNext ? { output, runNext } : { output } })
export const fail = (status: number, body?: unknown): Action => ({ kind: 'reply', status, body })
/** Any status with `body` as JSON (`undefined` = an empty body). */
export const reply = (status: number, body?: unknown): Action => ({ kind: 'reply', status, body })
export const garbled = (status = 200): Action => ({ kind: 'reply', status, raw: '{"output": tru' })
export const hold = (): Action => ({ kind: 'hold' })
export const destroy = (): Action => ({ kind: 'destroy' })

export interface WorkerRequest {
  seq: number
  path: string
  runId: string
  taskId: string
  attempt: number
  body: Record<string, unknown>
  rawBody: Buffer
  headers: http.IncomingHttpHeaders
  /** Date.now() when the request body had arrived. */
  arrivedAt: number
  /** Date.now() when it was answered, or undefined. */
  answeredAt?: number
  /** Date.now() when the client went away before an answer (abort, timeout, killed orchestrator). */
  abandonedAt?: number
  held: boolean
  /** Answer a held request. */
  release(action?: Action): void
}

export type Behaviour = (request: WorkerRequest) => Action | Promise<Action>

export class StubWorker extends EventEmitter {
  readonly requests: WorkerRequest[] = []
  /** Highest number of requests of one task in flight at once. */
  readonly maxInFlight = new Map<string, number>()
  private readonly inFlight = new Map<string, number>()
  private inFlightTotal = 0
  /** Highest number of requests, all tasks together, in flight at once. */
  maxInFlightTotal = 0
  private readonly behaviours = new Map<string, Behaviour>()
  private fallback: Behaviour = (r) => ok({ echo: r.body.input ?? null })
  private readonly server: http.Server
  private readonly sockets = new Set<Socket>()
  connections = 0
  url = ''

  constructor() {
    super()
    this.setMaxListeners(0)
    this.server = http.createServer((req, res) => this.handle(req, res))
    this.server.on('connection', (socket) => {
      this.connections += 1
      this.sockets.add(socket)
      socket.on('close', () => this.sockets.delete(socket))
    })
  }

  /** The port it listens on (127.0.0.1), once started. */
  get port(): number {
    return Number(new URL(this.url).port)
  }

  /** A service manifest for this worker: `serviceManifest(this.url, tasks, id)`. */
  manifest(tasks: ManifestTask[], id = 'stub'): ServiceManifest {
    return serviceManifest(this.url, tasks, id)
  }

  /** Listen on 127.0.0.1, on `port` (a worker coming back where it was) or any free one. */
  async start(port = 0): Promise<this> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(port, '127.0.0.1', () => {
        this.server.off('error', reject)
        resolve()
      })
    })
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`
    return this
  }

  /** How requests for `taskId` are answered (default: 200 with `{ output: { echo: input } }`). */
  behave(taskId: string, behaviour: Behaviour): this {
    this.behaviours.set(taskId, behaviour)
    return this
  }

  /** The behaviour of every task without one of its own. */
  otherwise(behaviour: Behaviour): this {
    this.fallback = behaviour
    return this
  }

  /** Requests for one run, in arrival order. */
  requestsFor(runId: string): WorkerRequest[] {
    return this.requests.filter((r) => r.runId === runId)
  }

  /** How many times each runId arrived. */
  arrivals(): Map<string, number> {
    const counts = new Map<string, number>()
    for (const r of this.requests) counts.set(r.runId, (counts.get(r.runId) ?? 0) + 1)
    return counts
  }

  held(): WorkerRequest[] {
    return this.requests.filter((r) => r.held && r.answeredAt === undefined && r.abandonedAt === undefined)
  }

  /** Answer every request held right now. */
  releaseAll(action: Action = ok()): number {
    const held = this.held()
    for (const r of held) r.release(action)
    return held.length
  }

  /** Resolve once `condition` holds, re-checked at every request and every answer. */
  until(condition: () => boolean, options: { timeoutMs?: number; what?: string } = {}): Promise<void> {
    if (condition()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!condition()) return
        cleanup()
        resolve()
      }
      const timer = setTimeout(() => {
        cleanup()
        reject(new Error(`stub worker: timed out waiting for ${options.what ?? 'a condition'} (${this.requests.length} request(s) so far)`))
      }, options.timeoutMs ?? 30_000)
      const cleanup = () => {
        clearTimeout(timer)
        this.off('request', check)
        this.off('settled', check)
      }
      this.on('request', check)
      this.on('settled', check)
    })
  }

  /** Wait for the n-th request (1-based) overall. */
  async nthRequest(n: number, timeoutMs?: number): Promise<WorkerRequest> {
    await this.until(() => this.requests.length >= n, { timeoutMs, what: `request #${n}` })
    return this.requests[n - 1]
  }

  async close(): Promise<void> {
    for (const r of this.held()) r.release(destroy())
    for (const socket of this.sockets) socket.destroy()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const rawBody = Buffer.concat(chunks)
      let body: Record<string, unknown> = {}
      try {
        body = JSON.parse(rawBody.toString('utf8')) as Record<string, unknown>
      } catch { /* recorded raw; the test may check it */ }
      const taskId = String(body.taskId ?? decodeURIComponent((req.url ?? '').replace(/^\/tasks\//, '')))
      let settled = false
      const settle = () => {
        if (settled) return false
        settled = true
        this.inFlight.set(taskId, (this.inFlight.get(taskId) ?? 1) - 1)
        this.inFlightTotal -= 1
        return true
      }
      const request: WorkerRequest = {
        seq: this.requests.length + 1,
        path: req.url ?? '',
        runId: String(body.runId ?? ''),
        taskId,
        attempt: Number(body.attempt ?? 0),
        body,
        rawBody,
        headers: req.headers,
        arrivedAt: Date.now(),
        held: false,
        release: (action = ok()) => {
          if (request.answeredAt !== undefined || request.abandonedAt !== undefined) return
          void this.perform(request, res, action, settle)
        },
      }
      // The client went away before we answered: an abort, a task timeout or a killed orchestrator.
      res.on('close', () => {
        if (request.answeredAt === undefined && !res.writableFinished) {
          request.abandonedAt = Date.now()
          if (settle()) this.emit('settled', request)
        }
      })
      const now = (this.inFlight.get(taskId) ?? 0) + 1
      this.inFlight.set(taskId, now)
      if (now > (this.maxInFlight.get(taskId) ?? 0)) this.maxInFlight.set(taskId, now)
      this.inFlightTotal += 1
      this.maxInFlightTotal = Math.max(this.maxInFlightTotal, this.inFlightTotal)
      this.requests.push(request)
      const behaviour = this.behaviours.get(taskId) ?? this.fallback
      Promise.resolve()
        .then(() => behaviour(request))
        .then((action) => {
          if (action.kind === 'hold') request.held = true
          this.emit('request', request)
          if (action.kind === 'hold') return
          return this.perform(request, res, action, settle)
        })
        .catch((error) => {
          this.emit('request', request)
          void this.perform(request, res, fail(599, { error: `stub worker behaviour threw: ${(error as Error).message}` }), settle)
        })
    })
  }

  private async perform(request: WorkerRequest, res: http.ServerResponse, action: Action, settle: () => boolean): Promise<void> {
    if (action.kind === 'reply' && action.delayMs) await new Promise((resolve) => setTimeout(resolve, action.delayMs))
    if (request.abandonedAt !== undefined) return
    if (action.kind === 'destroy') {
      request.answeredAt = Date.now()
      settle()
      res.socket?.destroy()
      this.emit('settled', request)
      return
    }
    if (action.kind === 'hold') {
      request.held = true
      return
    }
    const text = action.raw ?? (action.body === undefined ? '' : JSON.stringify(action.body))
    request.answeredAt = Date.now()
    // Counted as done before the answer leaves: the orchestrator may claim the next run of the
    // task as soon as it reads this answer.
    settle()
    res.writeHead(action.status ?? 200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
    res.end(text)
    this.emit('settled', request)
  }
}

export async function startWorker(port?: number): Promise<StubWorker> {
  return new StubWorker().start(port)
}

/** A port of 127.0.0.1 with nothing listening on it (for now): connections to it are refused. */
export async function closedPort(): Promise<number> {
  const server = http.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

export type ManifestTask = Record<string, unknown> & { id: string }

export interface ServiceManifest {
  id: string
  version: string
  baseUrl: string
  tasks: ManifestTask[]
}

/**
 * A service manifest (the file `services:register` reads) for a worker at `baseUrl`. Each task
 * gets fast, few retries unless it says otherwise: timeout 30 s, no retry, fixed backoff of 0 ms.
 */
export function serviceManifest(baseUrl: string, tasks: ManifestTask[], id = 'stub'): ServiceManifest {
  return {
    id,
    version: '1.0.0',
    baseUrl,
    tasks: tasks.map((t) => ({ timeout: 30, retries: 0, retryBackoff: 'fixed', retryDelayMs: 0, ...t })),
  }
}
