#!/usr/bin/env node
// An example pipeweave worker: plain node:http, no framework, no dependencies. Copy it to start your own.
//
// The orchestrator POSTs each run to /tasks/<taskId> with a JSON body:
//   { runId, taskId, pipelineRunId, attempt, codeVersion, codeHash, input, inputPath,
//     previousAttempts, timeoutMs, idempotencyKey }
// Answer 2xx with { "output": ..., "runNext"?: [...] } to complete the run; 4xx (not 408/429) fails it for
// good; 408, 429 and 5xx are retried. A JSON error body { "error", "code", "retryable" } explains a failure.
//
// When PIPEWEAVE_SECRET_KEY is set (the same value as the orchestrator's), every request must carry
// x-pipeweave-timestamp (unix ms) and x-pipeweave-signature = sha256=<hex HMAC-SHA256 of
// "<timestamp>./tasks/<encodeURIComponent(taskId)>.<body>">; requests older than five minutes are
// rejected. The task path is signed, so a body signed for one task cannot be replayed to another.
// Whatever the key, the body's taskId must match the path, and a (runId, attempt) already accepted
// in the last five minutes is answered 409 { "retryable": true } without running it again: a
// replayed request cannot run a task twice.
'use strict'
const crypto = require('node:crypto')
const http = require('node:http')

const PORT = Number(process.env.PORT || 4000)
const HOST = process.env.HOST || '127.0.0.1'
const SECRET = process.env.PIPEWEAVE_SECRET_KEY || ''
const WINDOW_MS = 5 * 60 * 1000

// The tasks this worker runs: each takes the run's input and returns its output (or throws).
const tasks = {
  // { "text": "..." } → { "words": n, "longest": "..." }
  'example.word-count': async ({ input }) => {
    const text = String((input && input.text) || '')
    const words = text.split(/\s+/).filter(Boolean)
    const longest = words.reduce((a, w) => (w.length > a.length ? w : a), '')
    return { output: { words: words.length, longest }, runNext: ['example.shout'] }
  },
  // Gets example.word-count's output as its input (a two-step pipeline).
  'example.shout': async ({ input }) => ({ output: { shouted: String((input && input.longest) || '').toUpperCase() } }),
}

class TaskError extends Error {
  constructor(message, code, status = 400, retryable = false) {
    super(message)
    Object.assign(this, { code, status, retryable })
  }
}

// The signed path is /tasks/<encodeURIComponent(taskId)>, without any prefix of the service's baseUrl.
function verifySignature(req, taskId, body) {
  if (!SECRET) return
  const timestamp = req.headers['x-pipeweave-timestamp']
  const signature = req.headers['x-pipeweave-signature']
  if (!timestamp || !signature) throw new TaskError('missing signature headers', 'UNSIGNED', 401)
  // Number('yesterday') is NaN, and NaN > anything is false: check that it is a number at all.
  const age = Date.now() - Number(timestamp)
  if (!Number.isFinite(age) || Math.abs(age) > WINDOW_MS) throw new TaskError('request too old or from the future', 'STALE_REQUEST', 401)
  const expected = 'sha256=' + crypto.createHmac('sha256', SECRET)
    .update(`${timestamp}./tasks/${encodeURIComponent(taskId)}.`).update(body).digest('hex')
  const a = Buffer.from(String(signature))
  const b = Buffer.from(expected)
  if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) throw new TaskError('bad signature', 'BAD_SIGNATURE', 401)
}

// (runId, attempt) → when it was accepted. A signature only proves who sent a request, not that it
// is the first time: an identical request replayed within the window is refused here. Entries
// older than the window are dropped (a Map keeps insertion order, so the oldest come first); a
// replay older than the window fails the timestamp check instead.
const accepted = new Map()

function acceptOnce(run) {
  const now = Date.now()
  for (const [key, at] of accepted) {
    if (now - at <= WINDOW_MS) break
    accepted.delete(key)
  }
  const key = JSON.stringify([run.runId, run.attempt])
  if (accepted.has(key)) {
    throw new TaskError(`run ${run.runId} attempt ${run.attempt} was accepted already`, 'ALREADY_ACCEPTED', 409, true)
  }
  accepted.set(key, now)
}

function decodePath(segment) {
  try {
    return decodeURIComponent(segment)
  } catch {
    throw new TaskError('malformed task path', 'NOT_FOUND', 404)
  }
}

function parseRun(body, taskId) {
  let run
  try {
    run = JSON.parse(body.toString('utf8'))
  } catch {
    throw new TaskError('the body is not JSON', 'BAD_REQUEST', 400)
  }
  if (!run || typeof run !== 'object' || typeof run.runId !== 'string' || !Number.isInteger(run.attempt)) {
    throw new TaskError('the body has no runId and attempt', 'BAD_REQUEST', 400)
  }
  if (run.taskId !== taskId) throw new TaskError(`the body is for task ${run.taskId}, not ${taskId}`, 'TASK_MISMATCH', 400)
  return run
}

function send(res, status, body) {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

const server = http.createServer((req, res) => {
  const chunks = []
  req.on('data', (chunk) => chunks.push(chunk))
  req.on('end', async () => {
    const body = Buffer.concat(chunks)
    const match = /^\/tasks\/([^/?]+)$/.exec(req.url || '')
    try {
      if (req.method === 'GET' && req.url === '/healthz') return send(res, 200, { ok: true })
      if (req.method !== 'POST' || !match) throw new TaskError(`no route ${req.method} ${req.url}`, 'NOT_FOUND', 404)
      const taskId = decodePath(match[1])
      verifySignature(req, taskId, body)
      const task = tasks[taskId]
      if (!task) throw new TaskError(`this worker has no task ${taskId}`, 'UNKNOWN_TASK', 404)
      const run = parseRun(body, taskId)
      acceptOnce(run)
      console.log(`run ${run.runId} ${taskId} attempt ${run.attempt}`)
      send(res, 200, await task(run))
    } catch (error) {
      const status = error.status || 500
      send(res, status, { error: error.message, code: error.code || 'WORKER_ERROR', retryable: error.retryable ?? status >= 500 })
    }
  })
})

server.listen(PORT, HOST, () => console.log(`example worker on http://${HOST}:${PORT}${SECRET ? ' (signatures required)' : ''}`))
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)))
