/**
 * The worker protocol (SPEC §5): POST {baseUrl}/tasks/{taskId} with the run as JSON, optionally
 * signed, aborted after the task's timeout, over keep-alive connections. Classifies the answer,
 * and tells a failure to connect (the worker cannot have seen the request: the service breaker's
 * business, SPEC §7) from the rest; knows nothing of the database.
 */
import * as crypto from 'node:crypto'
import * as http from 'node:http'
import * as https from 'node:https'
import type * as net from 'node:net'
import { urlToHttpOptions } from 'node:url'

export interface DispatchRequest {
  runId: string
  taskId: string
  pipelineRunId: string | null
  attempt: number
  codeVersion: number
  codeHash: string | null
  input: unknown
  inputPath: string | null
  previousAttempts: unknown[]
  timeoutMs: number
  idempotencyKey: string | null
}

export type DispatchResult =
  | { kind: 'completed'; output: unknown; runNext: string[]; status: number }
  /**
   * `connect`: true when it failed before a connection to the worker was made (refused, DNS, TLS
   * handshake, connect timeout); false when the connection was made (the worker is reachable,
   * whatever it answered); absent when nothing was attempted (an unusable URL).
   */
  | { kind: 'failed'; error: string; code: string; retryable: boolean; timedOut: boolean; status?: number; connect?: boolean }
  /**
   * Stopped by shutdown before an answer. `sent`: the request may have reached the worker (it was
   * written), so the attempt is spent (SHUTDOWN_ABORTED); otherwise the run keeps its attempt.
   */
  | { kind: 'aborted'; sent: boolean }

export interface DispatcherOptions {
  /** PIPEWEAVE_SECRET_KEY: sign each request (x-pipeweave-timestamp, x-pipeweave-signature). */
  secretKey?: string
  /** Sockets per worker origin; the orchestrator's concurrency is the natural bound. */
  maxSockets?: number
  /** Largest answer read from a worker. */
  maxResponseBytes?: number
  /** Agents to send through (tests: an agent that breaks a reused socket on purpose). */
  agents?: { http?: http.Agent; https?: https.Agent }
  /** A new connection not up (TCP, and TLS over https) within this is a connect failure (default 10 s). */
  connectTimeoutMs?: number
}

const CONNECT_TIMEOUT_MS = 10_000

const MAX_RESPONSE_BYTES = 32 * 1024 * 1024
/** Parsed worker URLs kept at most (one per service and task). */
const MAX_TARGETS = 10_000

interface Target {
  url: URL
  /** What http.request takes, from the URL (host, port, path, auth). */
  options: http.RequestOptions
  isHttps: boolean
}

/**
 * The signature a worker recomputes (SPEC §5): hex HMAC-SHA256 of
 * "<timestamp>./tasks/<encodeURIComponent(taskId)>.<exact body bytes>". The task path binds the
 * signature to its task (a signed body replayed to another task does not verify); it is the path
 * without the service's baseUrl prefix, which a proxy in front of the worker may strip.
 */
export function sign(secretKey: string, timestamp: string, taskId: string, body: Buffer): string {
  return `sha256=${crypto.createHmac('sha256', secretKey).update(`${timestamp}./tasks/${encodeURIComponent(taskId)}.`).update(body).digest('hex')}`
}

export class Dispatcher {
  private readonly http: http.Agent
  private readonly https: https.Agent

  constructor(private readonly options: DispatcherOptions = {}) {
    // Idle sockets close after 4 s, before Node's default server keep-alive (5 s) can close them
    // under a request we are about to send.
    const agentOptions = { keepAlive: true, maxSockets: options.maxSockets ?? 64, timeout: 4000, scheduling: 'lifo' as const }
    this.http = options.agents?.http ?? new http.Agent(agentOptions)
    this.https = options.agents?.https ?? new https.Agent(agentOptions)
  }

  /**
   * Where a task's runs go, parsed once per (base URL, task): a busy orchestrator sends thousands
   * of runs a second to a handful of URLs, and parsing each again costs more than the send.
   */
  private readonly targets = new Map<string, Target | { error: string }>()

  private target(baseUrl: string, taskId: string): Target | { error: string } {
    const key = `${baseUrl}\u0000${taskId}`
    let target = this.targets.get(key)
    if (target === undefined) {
      try {
        const url = new URL(`${baseUrl.replace(/\/+$/, '')}/tasks/${encodeURIComponent(taskId)}`)
        if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`unsupported protocol ${url.protocol}`)
        target = { url, options: urlToHttpOptions(url), isHttps: url.protocol === 'https:' }
      } catch (error) {
        // Registration validates the URL, SQL does not: a failure of the run, not of the loop.
        target = { error: `the service's base URL "${baseUrl}" is not usable: ${(error as Error).message}` }
      }
      if (this.targets.size >= MAX_TARGETS) this.targets.clear() // services re-registered many times over
      this.targets.set(key, target)
    }
    return target
  }

  /** POST one run to its worker. `signal` aborts it (shutdown); the task timeout aborts it too. */
  dispatch(baseUrl: string, request: DispatchRequest, signal?: AbortSignal): Promise<DispatchResult> {
    if (!signal) return this.send(baseUrl, request).result
    if (signal.aborted) return Promise.resolve({ kind: 'aborted', sent: false })
    const { result, cancel } = this.send(baseUrl, request)
    signal.addEventListener('abort', cancel, { once: true })
    return result.finally(() => signal.removeEventListener('abort', cancel))
  }

  /**
   * dispatch() with a cancel function instead of an AbortSignal: what the orchestrator uses for
   * every run (an AbortController and its listener cost more than a third of a no-op dispatch).
   * cancel() settles the result as `aborted` unless it has settled already.
   */
  send(baseUrl: string, request: DispatchRequest): { result: Promise<DispatchResult>; cancel: () => void } {
    let cancel: () => void = () => undefined
    const result = this.post(baseUrl, request, (onCancel) => { cancel = onCancel })
    return { result, cancel: () => cancel() }
  }

  private post(baseUrl: string, request: DispatchRequest, onCancel: (cancel: () => void) => void): Promise<DispatchResult> {
    const target = this.target(baseUrl, request.taskId)
    if ('error' in target) {
      return Promise.resolve({ kind: 'failed', error: target.error, code: 'INVALID_URL', retryable: false, timedOut: false })
    }
    const { url, isHttps } = target
    const body = Buffer.from(JSON.stringify(request))
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/json',
      'content-length': body.length,
      'user-agent': 'pipeweave',
    }
    if (this.options.secretKey) {
      const timestamp = String(Date.now())
      headers['x-pipeweave-timestamp'] = timestamp
      headers['x-pipeweave-signature'] = sign(this.options.secretKey, timestamp, request.taskId, body)
    }
    const transport = isHttps ? https : http
    const requestOptions: http.RequestOptions = { ...target.options, method: 'POST', headers, agent: isHttps ? this.https : this.http }
    const limit = this.options.maxResponseBytes ?? MAX_RESPONSE_BYTES
    const connectTimeoutMs = this.options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS

    return new Promise<DispatchResult>((resolve) => {
      let settled = false
      /**
       * Once per attempt (SPEC §5): a request that may have reached the worker is never sent
       * again. It may have once any of its bytes were handed to a connected socket (Node counts
       * bytes queued on the socket too: counting those as sent errs on the safe side).
       */
      let sent = false
      let req: http.ClientRequest | undefined
      let watchSocket: (() => void) | undefined
      /**
       * The current request's connection is up: TCP connected and, over https, the TLS handshake
       * done (no byte of the request can reach the worker before). A reused socket is.
       */
      let established = false
      let connectTimer: NodeJS.Timeout | undefined
      const finish = (result: DispatchResult) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        if (connectTimer) clearTimeout(connectTimer)
        // Every failure past this point came after the connection was made.
        resolve(result.kind === 'failed' && result.connect === undefined ? { ...result, connect: false } : result)
      }
      const connectFailed = (error: string, code: string, timedOut: boolean) =>
        finish({ kind: 'failed', error, code, retryable: true, timedOut, connect: true })
      const timer = setTimeout(() => {
        if (!established) connectFailed(`could not connect to ${url.origin} within the task timeout (${request.timeoutMs} ms)`, 'CONNECT_TIMEOUT', true)
        else finish({ kind: 'failed', error: `no answer within the task timeout (${request.timeoutMs} ms)`, code: 'TIMEOUT', retryable: true, timedOut: true })
        req?.destroy()
      }, request.timeoutMs)
      onCancel(() => {
        if (settled) return
        watchSocket?.()
        finish({ kind: 'aborted', sent })
        req?.destroy()
      })

      const attempt = (resent: boolean) => {
        let answered = false
        let socket: net.Socket | undefined
        let before = 0
        let connected = false
        // Bytes handed over on this request's socket since it got it, and whether that socket had
        // connected (a connection that never came up carried nothing).
        watchSocket = () => {
          if (socket && connected && socket.bytesWritten > before) sent = true
        }
        const current = transport.request(requestOptions, (res) => {
          answered = true
          sent = true
          const chunks: Buffer[] = []
          let size = 0
          res.on('data', (chunk: Buffer) => {
            size += chunk.length
            if (size > limit) {
              finish({ kind: 'failed', error: `the worker's answer is larger than ${limit} bytes`, code: 'RESPONSE_TOO_LARGE', retryable: false, timedOut: false })
              current.destroy()
              return
            }
            chunks.push(chunk)
          })
          res.on('aborted', () => {
            finish({ kind: 'failed', error: 'the worker closed the connection mid-answer', code: 'CONNECTION_DROPPED', retryable: true, timedOut: false })
          })
          res.on('error', (error: NodeJS.ErrnoException) => {
            finish({ kind: 'failed', error: `reading the worker's answer failed: ${error.message}`, code: 'CONNECTION_DROPPED', retryable: true, timedOut: false })
          })
          res.on('end', () => finish(classify(res.statusCode ?? 0, res.statusMessage ?? '', chunks.length === 1 ? chunks[0] : Buffer.concat(chunks))))
        })
        req = current
        established = false
        current.on('socket', (s: net.Socket) => {
          socket = s
          before = s.bytesWritten ?? 0
          connected = !s.connecting
          if (!connected) s.once('connect', () => { connected = true })
          if (current.reusedSocket || (!isHttps && connected)) {
            established = true
            return
          }
          s.once(isHttps ? 'secureConnect' : 'connect', () => {
            established = true
            if (connectTimer) clearTimeout(connectTimer)
          })
          if (connectTimeoutMs < request.timeoutMs && !connectTimer) {
            connectTimer = setTimeout(() => {
              if (established || settled) return
              connectFailed(`could not connect to ${url.origin} within ${connectTimeoutMs} ms`, 'CONNECT_TIMEOUT', false)
              current.destroy()
            }, connectTimeoutMs)
          }
        })
        current.on('error', (error: NodeJS.ErrnoException) => {
          watchSocket?.()
          if (settled) return
          if (!established && !answered) {
            // Refused, DNS, TLS handshake: no connection, so the worker cannot have seen it.
            connectFailed(`could not connect to ${url.origin}: ${error.message}`, error.code ?? 'CONNECT_FAILED', false)
            return
          }
          if (!sent && !answered && !resent && current.reusedSocket) {
            // A kept-alive socket that failed before this request was written to it: the worker
            // never saw it. Send it again, once (Node's guidance for reused sockets).
            attempt(true)
            return
          }
          if (sent) {
            // The request may have reached the worker: this attempt is spent, never resent.
            finish({ kind: 'failed', error: `the connection to ${url.origin} dropped after the request was sent (${error.message})`, code: 'CONNECTION_DROPPED', retryable: true, timedOut: false })
            return
          }
          finish({ kind: 'failed', error: `request to ${url.origin} failed: ${error.message}`, code: error.code ?? 'NETWORK_ERROR', retryable: true, timedOut: false })
        })
        current.end(body)
      }
      attempt(false)
    })
  }

  close(): void {
    this.http.destroy()
    this.https.destroy()
  }
}

/** The result rules of SPEC §5. */
export function classify(status: number, statusText: string, body: Buffer): DispatchResult {
  const text = body.toString('utf8')
  if (status >= 200 && status < 300) {
    if (text.trim() === '') return { kind: 'completed', output: null, runNext: [], status }
    let parsed: unknown
    try {
      parsed = JSON.parse(text)
    } catch {
      return { kind: 'failed', error: `the worker answered ${status} with a body that is not JSON`, code: 'INVALID_RESPONSE', retryable: true, timedOut: false, status }
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      return { kind: 'failed', error: `the worker answered ${status} with JSON that is not an object ({ "output": … })`, code: 'INVALID_RESPONSE', retryable: true, timedOut: false, status }
    }
    const answer = parsed as { output?: unknown; runNext?: unknown }
    const runNext = Array.isArray(answer.runNext) ? answer.runNext.filter((n): n is string => typeof n === 'string') : []
    return { kind: 'completed', output: answer.output === undefined ? null : answer.output, runNext, status }
  }

  // 408, 429 and 5xx are retryable; other 4xx are permanent; a JSON body may say otherwise.
  let retryable = !(status >= 400 && status < 500) || status === 408 || status === 429
  let error = `the worker answered ${status}${statusText ? ` ${statusText}` : ''}`
  let code = `HTTP_${status}`
  try {
    const parsed = JSON.parse(text) as { error?: unknown; code?: unknown; retryable?: unknown }
    if (parsed && typeof parsed === 'object') {
      if (typeof parsed.error === 'string' && parsed.error) error = parsed.error
      else if (parsed.error && typeof parsed.error === 'object' && typeof (parsed.error as { message?: unknown }).message === 'string') error = (parsed.error as { message: string }).message
      if (typeof parsed.code === 'string' && parsed.code) code = parsed.code
      if (typeof parsed.retryable === 'boolean') retryable = parsed.retryable
    }
  } catch {
    if (text.trim()) error = `${error}: ${text.trim().slice(0, 500)}`
  }
  return { kind: 'failed', error, code, retryable, timedOut: false, status }
}
