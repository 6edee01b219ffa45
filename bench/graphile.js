'use strict'
/**
 * graphile-worker 0.17.3 (a devDependency, the last release that allows Node 20) beside pipeweave
 * in the orchestrator benchmarks: its schema (graphile_worker) in the benchmark's database, jobs
 * queued in bulk, and a runner in a child process of its own (bench/graphile-runner.js).
 * Not a benchmark itself.
 */
const { fork } = require('node:child_process')
const path = require('node:path')
const lib = require('./lib')

/** graphile-worker's own migrations, into the `graphile_worker` schema of `url`. */
async function migrate(url) {
  const { runMigrations } = require('graphile-worker')
  await runMigrations({ connectionString: url, logger: quietLogger() })
}

function quietLogger() {
  const { Logger } = require('graphile-worker')
  return new Logger(() => () => undefined)
}

/** `count` jobs of `identifier` in one add_jobs call (graphile's own batch insert), then VACUUM (ANALYZE). */
async function seedJobs(client, identifier, count) {
  await client.query(`SELECT count(*) FROM graphile_worker.add_jobs(array(
                        SELECT json_populate_record(null::graphile_worker.job_spec,
                                 json_build_object('identifier', $1::text, 'payload', json_build_object('i', i)))
                          FROM generate_series(1, $2::int) AS i))`, [identifier, count])
  await client.query('VACUUM (ANALYZE) graphile_worker._private_jobs')
}

/** Whether any job is left (graphile deletes a job when it completes): one row, or none. */
const JOBS_LEFT = 'SELECT id FROM graphile_worker._private_jobs ORDER BY id LIMIT 1'

/**
 * A graphile-worker runner in a child process. `ready` resolves with the wall clock at which its
 * first worker was created; `onStart(ms, payload)` receives the task-start reports (report: true).
 */
function startRunner(url, options = {}) {
  const config = {
    connectionString: url,
    concurrency: options.concurrency ?? 10,
    task: options.task ?? 'noop',
    workerUrl: options.workerUrl,
    report: Boolean(options.onStart),
    identifier: options.identifier ?? 'noop',
    batching: options.batching ?? null,
  }
  const child = fork(path.join(__dirname, 'graphile-runner.js'), [JSON.stringify(config)], {
    cwd: lib.ROOT,
    env: lib.cleanEnv(),
    // Its console logger writes a line per job: read and thrown away, like pipeweave's logs.
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  })
  let tail = ''
  const keep = (chunk) => { tail = (tail + chunk.toString('utf8')).slice(-4000) }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  let exited
  const exit = new Promise((resolve) => child.on('exit', (code, signal) => { exited = { code, signal }; resolve(exited) }))
  const ready = new Promise((resolve, reject) => {
    child.on('message', (/** @type {any} */ message) => {
      if (message.ready) resolve(message.ready)
      else if (message.started && options.onStart) options.onStart(message.started, message.payload)
    })
    void exit.then(({ code, signal }) => reject(new Error(`graphile-worker runner exited (${signal ?? code}):\n${lib.maskUrl(tail.trim())}`)))
  })
  return {
    ready,
    stop: async () => {
      if (!exited) child.send({ stop: true })
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
      await exit
      clearTimeout(timer)
    },
  }
}

/** addJob and addJobs from this process (graphile's WorkerUtils). `release()` ends it. */
async function workerUtils(url) {
  const { makeWorkerUtils } = require('graphile-worker')
  const utils = await makeWorkerUtils({ connectionString: url, logger: quietLogger() })
  return {
    addJob: (identifier, payload) => utils.addJob(identifier, payload),
    addJobs: (specs) => utils.addJobs(specs),
    release: () => utils.release(),
  }
}

/**
 * `count` jobs of `identifier` through WorkerUtils.addJobs in batches of `batch` (one statement
 * and one commit each, graphile's bulk path), one after another from one client. Returns the ms.
 */
async function addJobsInBatches(utils, identifier, count, batch = 1000) {
  const started = performance.now()
  for (let start = 0; start < count; start += batch) {
    const specs = []
    for (let i = start; i < Math.min(count, start + batch); i++) specs.push({ identifier, payload: { i } })
    const jobs = await utils.addJobs(specs)
    if (jobs.length !== specs.length) throw new Error(`addJobs returned ${jobs.length} jobs for ${specs.length} specs`)
  }
  return performance.now() - started
}

/**
 * graphile-worker's batching, as its documentation recommends it for 0.17: a local queue of
 * concurrency + 1 jobs (worker.graphile.org/docs/performance, "a good starting point is often
 * concurrentJobs + 1") and batched completions and failures with no added delay (0, as the
 * performance page's configuration has it). BENCH_GRAPHILE_LOCAL_QUEUE_SIZE and
 * BENCH_GRAPHILE_COMPLETE_BATCH_DELAY override the two.
 */
function batchingPreset(concurrency) {
  const delay = Number(process.env.BENCH_GRAPHILE_COMPLETE_BATCH_DELAY ?? 0)
  return {
    localQueueSize: Number(process.env.BENCH_GRAPHILE_LOCAL_QUEUE_SIZE || concurrency + 1),
    completeJobBatchDelay: delay,
    failJobBatchDelay: delay,
  }
}

function describeBatching(b) {
  return `localQueue.size ${b.localQueueSize}, completeJobBatchDelay ${b.completeJobBatchDelay}`
}

module.exports = { migrate, seedJobs, JOBS_LEFT, startRunner, workerUtils, addJobsInBatches, batchingPreset, describeBatching }
