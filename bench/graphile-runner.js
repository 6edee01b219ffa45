'use strict'
/**
 * Not a benchmark: the child process in which bench/graphile.js runs graphile-worker (a
 * devDependency used only by the benchmarks), so that it has a process of its own, as `pipeweave
 * run` has. Settings are graphile-worker's defaults (LISTEN/NOTIFY, poll interval, pool size, its
 * console logger) except the concurrency, and no signal handling (the parent stops it).
 *
 * Configured by one JSON argument: { connectionString, concurrency, task, workerUrl, report, batching }
 *   task    'noop'  the task function returns at once
 *           'http'  the task function POSTs the job to workerUrl/tasks/<identifier> over a
 *                   keep-alive node:http Agent and reads the JSON answer, as pipeweave dispatches
 *   report  true    send { started: wallclock ms, payload } to the parent as each task function starts
 *   identifier      the task identifier it serves (default 'noop')
 *   batching        null: graphile-worker's defaults (each worker fetches its own job, completes it
 *                   alone). { localQueueSize, completeJobBatchDelay, failJobBatchDelay }: its
 *                   batching settings, as `preset: { worker: { localQueue: { size },
 *                   completeJobBatchDelay, failJobBatchDelay } }` (0.17's documented preset).
 * Messages to the parent: { ready: wallclock ms } once its first worker exists (it looks for a job
 * at once), { stopped: true } after `stop`.
 */
const http = require('node:http')
const { EventEmitter } = require('node:events')
const { run } = require('graphile-worker')

if (!process.send) throw new Error('bench/graphile-runner.js is the child of bench/graphile.js: it needs the IPC channel of fork()')
const send = process.send.bind(process)
const config = JSON.parse(process.argv[2])
const identifier = config.identifier ?? 'noop'
const wallNow = () => performance.timeOrigin + performance.now()

const agent = new http.Agent({ keepAlive: true, maxSockets: config.concurrency })

function post(job) {
  const body = Buffer.from(JSON.stringify({ runId: String(job.id), taskId: identifier, attempt: job.attempts, input: job.payload }))
  return new Promise((resolve, reject) => {
    const req = http.request(`${config.workerUrl}/tasks/${identifier}`, {
      method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': body.length },
    }, (res) => {
      const chunks = []
      res.on('data', (chunk) => chunks.push(chunk))
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`worker answered ${res.statusCode}`))
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')))
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}

async function main() {
  const events = new EventEmitter()
  events.once('worker:create', () => send({ ready: wallNow() }))
  const task = async (payload, helpers) => {
    if (config.report) send({ started: wallNow(), payload })
    if (config.task === 'http') await post(helpers.job)
  }
  const batching = config.batching
  const runner = await run({
    connectionString: config.connectionString,
    concurrency: config.concurrency,
    noHandleSignals: true,
    taskList: { [identifier]: task },
    events,
    ...(batching ? {
      preset: {
        worker: {
          localQueue: { size: batching.localQueueSize },
          completeJobBatchDelay: batching.completeJobBatchDelay,
          failJobBatchDelay: batching.failJobBatchDelay,
        },
      },
    } : {}),
  })
  process.on('message', async (/** @type {any} */ message) => {
    if (message && message.stop) {
      await runner.stop()
      agent.destroy()
      send({ stopped: true }, () => process.exit(0))
    }
  })
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`)
  process.exit(1)
})
