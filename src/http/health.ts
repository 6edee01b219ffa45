/**
 * The health endpoints of `run --http-port` for container platforms (SPEC §5):
 *   /healthz  the orchestrator reached the database lately: answered from its last heartbeat,
 *             never a query per request, so probes cannot load the pool
 *   /readyz   registered, migrations current, not shutting down, database reachable
 *   /metrics  Prometheus text format (queue figures refreshed at most every few seconds)
 */
import * as http from 'node:http'
import type { Registry } from 'prom-client'
import { type Listening, listen } from './listen'

export interface HealthServerOptions {
  port: number
  /** PIPEWEAVE_HTTP_HOST / --http-host (default 0.0.0.0). */
  host?: string
  isReady: () => boolean
  /** The orchestrator's own view: its last heartbeat, and whether the database is failing it now. */
  health: () => { lastHeartbeat?: number; databaseDown: boolean }
  /** A heartbeat older than this is unhealthy (ORCHESTRATOR_STALE_MS). */
  staleMs: number
  registry: Registry
  /**
   * `run --dashboard`: every other path goes to the dashboard, for connections it admits (its
   * address gate: loopback unless --dashboard-host); others get a 403 that says why.
   */
  dashboard?: {
    handle(req: http.IncomingMessage, res: http.ServerResponse): void
    admits(req: http.IncomingMessage): boolean
    host: string
  }
}

/** On every response of this server, the dashboard's policy (SPEC §8) included. */
const HEADERS = { 'cache-control': 'no-store', 'content-security-policy': "default-src 'self'", 'x-content-type-options': 'nosniff' }

const HEALTH_PATHS = new Set(['/healthz', '/readyz', '/metrics'])

export type HealthServer = Listening

export function startHealthServer(options: HealthServerOptions): Promise<HealthServer> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    const reply = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { ...HEADERS, 'content-type': type })
      res.end(body)
    }
    const { dashboard } = options
    if (dashboard && !HEALTH_PATHS.has(path)) {
      if (dashboard.admits(req)) return dashboard.handle(req, res)
      return reply(403, `the dashboard answers on ${dashboard.host} only (run --dashboard-host chooses the address); /healthz, /readyz and /metrics answer here\n`)
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, 'method not allowed\n')
    switch (path) {
      case '/healthz': {
        const { lastHeartbeat, databaseDown } = options.health()
        const age = lastHeartbeat === undefined ? undefined : Date.now() - lastHeartbeat
        if (!databaseDown && age !== undefined && age < options.staleMs) return reply(200, `ok (last heartbeat ${age} ms ago)\n`)
        if (age === undefined) return reply(503, 'no heartbeat has reached the database yet\n')
        return reply(503, `database unavailable: the last heartbeat reached it ${age} ms ago\n`)
      }
      case '/readyz':
        return options.isReady() ? reply(200, 'ready\n') : reply(503, 'not ready\n')
      case '/metrics':
        options.registry.metrics()
          .then((text) => reply(200, text, options.registry.contentType))
          .catch((error: Error) => reply(500, `metrics failed: ${error.message}\n`))
        return
      default:
        return reply(404, 'not found: try /healthz, /readyz or /metrics\n')
    }
  })
  return listen(server, {
    port: options.port, host: options.host ?? '0.0.0.0', code: 'HTTP_PORT_UNAVAILABLE', what: 'health and metrics',
    hint: 'choose another --http-port (PIPEWEAVE_HTTP_PORT), or 0 for any free port',
  })
}
