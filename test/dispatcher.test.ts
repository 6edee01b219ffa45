/**
 * The worker protocol seen from the dispatcher alone (SPEC §5): the result rules, keep-alive,
 * the task timeout, aborts, the signature. Real HTTP against the stub worker, no database.
 */
import * as crypto from 'node:crypto'
import * as http from 'node:http'
import * as net from 'node:net'
import { classify, Dispatcher, type DispatchRequest, sign } from '../src/orchestrator/dispatcher'
import { deferred } from './helpers/wait'
import { destroy, fail, garbled, hold, ok, startWorker, type StubWorker } from './helpers/worker'

const request = (over: Partial<DispatchRequest> = {}): DispatchRequest => ({
  runId: crypto.randomUUID(), taskId: 'task', pipelineRunId: null, attempt: 1, codeVersion: 1, codeHash: null,
  input: { n: 1 }, inputPath: null, previousAttempts: [], timeoutMs: 10_000, idempotencyKey: null, ...over,
})
const body = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value))

describe('classify: the result rules', () => {
  it.each([
    [200, '', { kind: 'completed', output: null, runNext: [] }],
    [204, '', { kind: 'completed', output: null, runNext: [] }],
    [200, { output: { a: 1 }, runNext: ['next', 3] }, { kind: 'completed', output: { a: 1 }, runNext: ['next'] }],
    [201, { output: 0 }, { kind: 'completed', output: 0 }],
    [200, '{"output": tru', { kind: 'failed', code: 'INVALID_RESPONSE', retryable: true, timedOut: false }],
    [200, '[1, 2]', { kind: 'failed', code: 'INVALID_RESPONSE', retryable: true }],
    [400, '', { kind: 'failed', code: 'HTTP_400', retryable: false }],
    [404, 'no such task', { kind: 'failed', code: 'HTTP_404', retryable: false }],
    [422, { error: 'bad field' }, { kind: 'failed', code: 'HTTP_422', error: 'bad field', retryable: false }],
    [408, '', { kind: 'failed', code: 'HTTP_408', retryable: true }],
    [429, '', { kind: 'failed', code: 'HTTP_429', retryable: true }],
    [500, '', { kind: 'failed', code: 'HTTP_500', retryable: true }],
    [503, '<html>down</html>', { kind: 'failed', code: 'HTTP_503', retryable: true }],
    [500, { error: 'never', code: 'E_BAD', retryable: false }, { kind: 'failed', error: 'never', code: 'E_BAD', retryable: false }],
    [400, { error: 'later', retryable: true }, { kind: 'failed', error: 'later', code: 'HTTP_400', retryable: true }],
    [500, { error: { message: 'nested' } }, { kind: 'failed', error: 'nested', retryable: true }],
    [302, '', { kind: 'failed', code: 'HTTP_302', retryable: true }],
  ])('%i %j', (status, answer, expected) => {
    expect(classify(status, '', body(answer))).toMatchObject(expected)
  })

  it('keeps a non-JSON error body in the message, shortened', () => {
    const result = classify(502, 'Bad Gateway', body('x'.repeat(2000)))
    expect(result).toMatchObject({ kind: 'failed', code: 'HTTP_502' })
    expect((result as { error: string }).error.length).toBeLessThan(600)
  })
})

describe('Dispatcher against a worker', () => {
  let worker: StubWorker
  let dispatcher: Dispatcher

  beforeEach(async () => {
    worker = await startWorker()
    dispatcher = new Dispatcher({ maxSockets: 4 })
  })

  afterEach(async () => {
    dispatcher.close()
    await worker.close()
  })

  it('POSTs the run to {baseUrl}/tasks/{taskId} as JSON and reads the answer', async () => {
    worker.otherwise(() => ok({ done: true }, ['b']))
    const result = await dispatcher.dispatch(`${worker.url}/prefix/`, request({ taskId: 'resize image/v2' }))
    expect(result).toEqual({ kind: 'completed', output: { done: true }, runNext: ['b'], status: 200 })
    const [seen] = worker.requests
    expect(seen.path).toBe('/prefix/tasks/resize%20image%2Fv2')
    expect(seen.headers['content-type']).toBe('application/json')
    expect(seen.headers['x-pipeweave-signature']).toBeUndefined()
  })

  it('reuses one keep-alive connection for runs one after another', async () => {
    for (let i = 0; i < 20; i++) expect((await dispatcher.dispatch(worker.url, request())).kind).toBe('completed')
    expect(worker.connections).toBe(1)
  })

  it('gives up at the task timeout, as a retryable timeout, and hangs up on the worker', async () => {
    worker.otherwise(() => hold())
    const result = await dispatcher.dispatch(worker.url, request({ timeoutMs: 300 }))
    expect(result).toMatchObject({ kind: 'failed', code: 'TIMEOUT', retryable: true, timedOut: true })
    await worker.until(() => worker.requests[0]?.abandonedAt !== undefined, { what: 'the hang-up' })
  })

  it('treats a dropped connection, a garbled body and a refused connection as retryable', async () => {
    worker.behave('drop', () => destroy())
    worker.behave('garble', () => garbled())
    expect(await dispatcher.dispatch(worker.url, request({ taskId: 'drop' }))).toMatchObject({ kind: 'failed', retryable: true, timedOut: false })
    expect(await dispatcher.dispatch(worker.url, request({ taskId: 'garble' }))).toMatchObject({ kind: 'failed', code: 'INVALID_RESPONSE', retryable: true })
    const closed = net.createServer()
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
    const port = (closed.address() as net.AddressInfo).port
    await new Promise<void>((resolve) => closed.close(() => resolve()))
    expect(await dispatcher.dispatch(`http://127.0.0.1:${port}`, request())).toMatchObject({ kind: 'failed', code: 'ECONNREFUSED', retryable: true })
  })

  it('reports an abort (shutdown) as aborted, not as the worker\'s failure', async () => {
    worker.otherwise(() => hold())
    const controller = new AbortController()
    const arrived = deferred()
    worker.once('request', () => arrived.resolve())
    const pending = dispatcher.dispatch(worker.url, request(), controller.signal)
    await arrived.promise
    controller.abort()
    // The request was written: the worker may have seen it (its attempt is spent, SPEC §5).
    expect(await pending).toEqual({ kind: 'aborted', sent: true })
    await worker.until(() => worker.requests[0].abandonedAt !== undefined, { what: 'the hang-up' })
  })

  it('fails a run whose base URL is unusable instead of throwing', async () => {
    for (const baseUrl of ['http://exa mple:99999', 'ftp://127.0.0.1/x', 'not a url']) {
      expect(await dispatcher.dispatch(baseUrl, request())).toMatchObject({ kind: 'failed', code: 'INVALID_URL', retryable: false })
    }
  })

  it('refuses an answer larger than its limit', async () => {
    const small = new Dispatcher({ maxResponseBytes: 1024 })
    try {
      worker.otherwise(() => ok('x'.repeat(5000)))
      expect(await small.dispatch(worker.url, request())).toMatchObject({ kind: 'failed', code: 'RESPONSE_TOO_LARGE', retryable: false })
    } finally {
      small.close()
    }
  })

  it('signs "<timestamp>./tasks/<taskId>.<body>" with HMAC-SHA256 when given a secret, without the baseUrl prefix', async () => {
    const signed = new Dispatcher({ secretKey: 'k3y' })
    try {
      await signed.dispatch(`${worker.url}/prefix/`, request({ taskId: 'resize image/v2', input: { unicode: 'é ✓', n: 1.5 } }))
      const [seen] = worker.requests
      expect(seen.path).toBe('/prefix/tasks/resize%20image%2Fv2')
      const timestamp = String(seen.headers['x-pipeweave-timestamp'])
      expect(timestamp).toMatch(/^\d{13}$/)
      // The task path as SPEC §5 writes it, without the service's /prefix (a proxy may strip it).
      const signedString = `${timestamp}./tasks/resize%20image%2Fv2.${seen.rawBody.toString('utf8')}`
      const hmac = crypto.createHmac('sha256', 'k3y').update(signedString).digest('hex')
      expect(seen.headers['x-pipeweave-signature']).toBe(`sha256=${hmac}`)
      expect(sign('k3y', timestamp, 'resize image/v2', seen.rawBody)).toBe(`sha256=${hmac}`)
      // The same body and timestamp signed for another task do not verify: the path is bound.
      expect(sign('k3y', timestamp, 'other', seen.rawBody)).not.toBe(`sha256=${hmac}`)
    } finally {
      signed.close()
    }
  })

  it('answers a worker error with its JSON body', async () => {
    worker.otherwise(() => fail(503, { error: 'overloaded', code: 'BUSY' }))
    expect(await dispatcher.dispatch(worker.url, request())).toMatchObject({ kind: 'failed', error: 'overloaded', code: 'BUSY', retryable: true, status: 503 })
  })
})

describe('once per attempt (SPEC §5): a kept-alive connection that fails', () => {
  /** A raw HTTP server: each connection answers its requests unless `reset(connection, nth)` says to reset instead. */
  async function rawServer(reset: (connection: number, nth: number) => boolean) {
    let connections = 0
    const seen: Array<{ connection: number; nth: number; body: string }> = []
    const server = net.createServer((socket) => {
      const id = ++connections
      let requests = 0
      let buffered = ''
      socket.on('data', (chunk) => {
        buffered += chunk.toString('latin1')
        if (!buffered.includes('\r\n\r\n') || !/\}$/.test(buffered)) return
        const body = buffered.slice(buffered.indexOf('\r\n\r\n') + 4)
        buffered = ''
        requests += 1
        seen.push({ connection: id, nth: requests, body })
        if (reset(id, requests)) {
          socket.resetAndDestroy()
          return
        }
        const answer = JSON.stringify({ output: `connection ${id}` })
        socket.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${answer.length}\r\nconnection: keep-alive\r\n\r\n${answer}`)
      })
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    return {
      url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
      seen,
      close: () => new Promise((resolve) => server.close(resolve)),
    }
  }

  it('is not sent again when the reused socket is reset after the request reached the worker: the attempt fails, retryable', async () => {
    // Connection 1 answers its first request and keeps the socket; the worker resets the
    // connection on receiving the second one (it may have started it: it is not sent again).
    const server = await rawServer((connection, nth) => connection === 1 && nth === 2)
    const dispatcher = new Dispatcher()
    try {
      expect(await dispatcher.dispatch(server.url, request())).toMatchObject({ kind: 'completed', output: 'connection 1' })
      expect(await dispatcher.dispatch(server.url, request())).toMatchObject({ kind: 'failed', code: 'CONNECTION_DROPPED', retryable: true })
      expect(server.seen.map((r) => r.connection)).toEqual([1, 1])
    } finally {
      dispatcher.close()
      await server.close()
    }
  })

  it('is sent again, once, on a new connection when the reused socket failed before the request was written', async () => {
    // An agent whose kept-alive socket dies just as it is handed to the next request, before a
    // byte of it is written (the worker closed it while idle, and we learn it only now).
    class BreakingAgent extends http.Agent {
      breakNext = false
      reuseSocket(socket: net.Socket, req: http.ClientRequest): void {
        super.reuseSocket(socket, req)
        if (this.breakNext) {
          this.breakNext = false
          // Next tick: after the agent hands it over, before the request writes to it.
          process.nextTick(() => socket.destroy(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })))
        }
      }
    }
    const agent = new BreakingAgent({ keepAlive: true, maxSockets: 1 })
    const server = await rawServer(() => false)
    const dispatcher = new Dispatcher({ agents: { http: agent } })
    try {
      expect(await dispatcher.dispatch(server.url, request({ runId: 'first' }))).toMatchObject({ kind: 'completed', output: 'connection 1' })
      agent.breakNext = true
      expect(await dispatcher.dispatch(server.url, request({ runId: 'second' }))).toMatchObject({ kind: 'completed', output: 'connection 2' })
      // The worker saw the second run once, on the new connection.
      expect(server.seen.map((r) => [r.connection, JSON.parse(r.body).runId])).toEqual([[1, 'first'], [2, 'second']])
    } finally {
      dispatcher.close()
      await server.close()
    }
  })

  it('a request that never reached a worker (connection refused) fails without being resent', async () => {
    const closed = net.createServer()
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
    const port = (closed.address() as net.AddressInfo).port
    await new Promise<void>((resolve) => closed.close(() => resolve()))
    const dispatcher = new Dispatcher()
    try {
      expect(await dispatcher.dispatch(`http://127.0.0.1:${port}`, request())).toMatchObject({ kind: 'failed', code: 'ECONNREFUSED', retryable: true })
    } finally {
      dispatcher.close()
    }
  })
})

describe('connect failures (SPEC §7): the worker cannot have seen the request', () => {
  let worker: StubWorker
  let dispatcher: Dispatcher

  beforeEach(async () => {
    worker = await startWorker()
    dispatcher = new Dispatcher({ maxSockets: 4, connectTimeoutMs: 300 })
  })

  afterEach(async () => {
    dispatcher.close()
    await worker.close()
  })

  /** A port of 127.0.0.1 with nothing listening. */
  async function closedPort(): Promise<number> {
    const closed = net.createServer()
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
    const port = (closed.address() as net.AddressInfo).port
    await new Promise<void>((resolve) => closed.close(() => resolve()))
    return port
  }

  it('a refused connection, a name that does not resolve, and a TLS handshake that fails are connect failures', async () => {
    expect(await dispatcher.dispatch(`http://127.0.0.1:${await closedPort()}`, request()))
      .toMatchObject({ kind: 'failed', code: 'ECONNREFUSED', retryable: true, connect: true })
    const unresolved = await dispatcher.dispatch('http://pipeweave-no-such-host.invalid', request())
    expect(unresolved).toMatchObject({ kind: 'failed', retryable: true, connect: true })
    expect(['ENOTFOUND', 'EAI_AGAIN', 'CONNECT_TIMEOUT']).toContain((unresolved as { code: string }).code)
    // https to a plain HTTP worker: TCP connects, the handshake fails, nothing reaches the worker.
    const handshake = await dispatcher.dispatch(worker.url.replace('http:', 'https:'), request())
    expect(handshake).toMatchObject({ kind: 'failed', retryable: true, connect: true })
    expect(worker.requests).toHaveLength(0)
  })

  it('a connection that does not come up within the connect timeout is a connect failure (CONNECT_TIMEOUT)', async () => {
    // Accepts TCP and says nothing: a TLS client waits for the server's hello that never comes.
    const silent = net.createServer(() => undefined)
    const sockets = new Set<net.Socket>()
    silent.on('connection', (s) => sockets.add(s))
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
    try {
      const port = (silent.address() as net.AddressInfo).port
      const started = Date.now()
      expect(await dispatcher.dispatch(`https://127.0.0.1:${port}`, request({ timeoutMs: 10_000 })))
        .toMatchObject({ kind: 'failed', code: 'CONNECT_TIMEOUT', retryable: true, timedOut: false, connect: true })
      expect(Date.now() - started).toBeLessThan(5000)
    } finally {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => silent.close(() => resolve()))
    }
  })

  it('any failure after the connection came up is not one: an error answer, a dropped connection, a task timeout', async () => {
    worker.behave('error', () => fail(500, { error: 'boom' }))
    worker.behave('drop', () => destroy())
    worker.behave('slow', () => hold())
    expect(await dispatcher.dispatch(worker.url, request({ taskId: 'error' }))).toMatchObject({ kind: 'failed', code: 'HTTP_500', connect: false })
    expect(await dispatcher.dispatch(worker.url, request({ taskId: 'drop' }))).toMatchObject({ kind: 'failed', retryable: true, connect: false })
    expect(await dispatcher.dispatch(worker.url, request({ taskId: 'slow', timeoutMs: 300 }))).toMatchObject({ kind: 'failed', code: 'TIMEOUT', connect: false })
    expect(await dispatcher.dispatch('not a url', request())).not.toHaveProperty('connect')
  })
})
