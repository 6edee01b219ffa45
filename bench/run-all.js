'use strict'
/**
 * `npm run bench`: every benchmark in bench/, one after another, on one PostgreSQL server
 * (PIPEWEAVE_BENCH_DATABASE_URL, or a dedicated embedded server started here and stopped at the end).
 * Results go to stdout, progress to stderr.
 *
 *   npm run bench                      build, then every benchmark
 *   node bench/run-all.js cleanup      only the benchmarks whose name contains "cleanup"
 *
 * Each script documents its sizes at its top, every one overridable by an environment variable
 * (BENCH_*), e.g. BENCH_THROUGHPUT_RUNS=2000 for a quick check. The names a filter matches:
 * cold start, cleanup, enqueue rate, throughput, sustained drain, writes per run, pickup latency,
 * drain latency, claim cost, flow control, dashboard.
 */
const os = require('node:os')
const lib = require('./lib')

/** In running order. A new benchmark exports { name, run(server, { log }) } and is listed here. */
const BENCHMARKS = ['./cold-start', './cleanup', './enqueue', './throughput', './sustained', './writes', './pickup', './drain', './claim', './flow', './dashboard']

async function main() {
  const only = process.argv.slice(2)
  const selected = BENCHMARKS.map((file) => require(file))
    .filter((b) => only.length === 0 || only.some((word) => b.name.includes(word)))
  if (selected.length === 0) throw new Error(`no benchmark matches ${only.join(' ')}`)

  const started = Date.now()
  const log = (message) => process.stderr.write(`${message}\n`)
  const server = await lib.acquireServer({ log })
  const failures = []
  try {
    const admin = await lib.connect(server.adminUrl)
    const { rows: [{ server_version: version }] } = await admin.query('SHOW server_version')
    await admin.end()
    process.stdout.write(`pipeweave benchmarks — Node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? 'unknown'}), load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}\n`)
    process.stdout.write(`PostgreSQL ${version}: ${server.describe}\n`)
    for (const benchmark of selected) {
      log(`\n— ${benchmark.name}`)
      try {
        await benchmark.run(server, { log })
      } catch (error) {
        failures.push(benchmark.name)
        process.stdout.write(`\n${benchmark.name}: FAILED: ${error && error.message ? error.message : error}\n`)
        log(error && error.stack ? error.stack : String(error))
      }
    }
  } finally {
    await server.release()
  }
  process.stdout.write(`\n${selected.length} benchmark(s) in ${((Date.now() - started) / 1000).toFixed(0)} s, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} at the end` +
    `${failures.length ? `; failed: ${failures.join(', ')}` : ''}\n`)
  if (failures.length > 0) process.exitCode = 1
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`)
  process.exitCode = 1
})
