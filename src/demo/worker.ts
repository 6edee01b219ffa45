/**
 * The built-in demo worker of `run --demo`: a tiny worker service on a loopback port with a task
 * for each thing worth seeing — a pipeline, a retry that succeeds, a failure that ends in the DLQ
 * and a slow run. (examples/worker is the standalone worker to copy for your own.)
 */
import * as http from 'node:http'
import type { AddressInfo } from 'node:net'

export const DEMO_SERVICE = 'pipeweave-demo'

/** The demo's service manifest, pointed at the worker's port. */
export function demoManifest(baseUrl: string) {
  return {
    id: DEMO_SERVICE,
    version: '1.0.0',
    baseUrl,
    tasks: [
      { id: 'demo.greet', description: 'Says hello, then hands over to demo.shout (a pipeline).', timeout: 10, allowedNext: ['demo.shout'] },
      { id: 'demo.shout', description: 'Shouts what demo.greet said.', timeout: 10 },
      { id: 'demo.flaky', description: 'Fails once (503), then succeeds on its retry.', timeout: 10, retries: 2, retryBackoff: 'fixed', retryDelayMs: 1000 },
      { id: 'demo.broken', description: 'Always fails: retried once, then dead-lettered.', timeout: 10, retries: 1, retryBackoff: 'fixed', retryDelayMs: 500 },
      { id: 'demo.slow', description: 'Takes three seconds.', timeout: 10 },
    ],
  }
}

type Handler = (run: { runId: string; attempt: number; input: unknown }) => Promise<{ status: number; body: unknown }>

const handlers: Record<string, Handler> = {
  'demo.greet': async ({ input }) => {
    const name = (input as { name?: string } | null)?.name ?? 'world'
    return { status: 200, body: { output: { greeting: `Hello, ${name}` }, runNext: ['demo.shout'] } }
  },
  'demo.shout': async ({ input }) => ({ status: 200, body: { output: { shouted: `${(input as { greeting?: string } | null)?.greeting ?? ''}!`.toUpperCase() } } }),
  'demo.flaky': async ({ attempt }) => (attempt === 1
    ? { status: 503, body: { error: 'the demo service is warming up', code: 'WARMING_UP' } }
    : { status: 200, body: { output: { ok: true, attempt } } }),
  'demo.broken': async () => ({ status: 500, body: { error: 'the demo database is on fire', code: 'ON_FIRE' } }),
  'demo.slow': async () => {
    await new Promise((resolve) => setTimeout(resolve, 3000))
    return { status: 200, body: { output: { tookMs: 3000 } } }
  },
}

export interface DemoWorker {
  baseUrl: string
  close(): Promise<void>
}

export function startDemoWorker(): Promise<DemoWorker> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const taskId = decodeURIComponent((req.url ?? '').replace(/^\/tasks\//, ''))
      const handler = handlers[taskId]
      const send = (status: number, body: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' })
        res.end(JSON.stringify(body))
      }
      if (req.method !== 'POST' || !handler) return send(404, { error: `no demo task ${taskId}`, code: 'NOT_FOUND' })
      let run: { runId: string; attempt: number; input: unknown }
      try {
        run = JSON.parse(Buffer.concat(chunks).toString('utf8'))
      } catch {
        return send(400, { error: 'the request body is not JSON', code: 'BAD_REQUEST' })
      }
      handler(run).then(({ status, body }) => send(status, body), (error: Error) => send(500, { error: error.message }))
    })
  })
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo
      resolve({
        baseUrl: `http://127.0.0.1:${port}`,
        close: () => new Promise((done) => { server.close(() => done()); server.closeAllConnections() }),
      })
    })
  })
}
