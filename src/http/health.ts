/**
 * The health endpoints of `run --http-port` for container platforms:
 *   /healthz  the process and its database connection are alive (a query answers)
 *   /readyz   registered, migrations current, not shutting down
 *   /metrics  Prometheus text format
 */
import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Registry } from 'prom-client'
import type { Queryable } from '../db/database'
import { ping } from '../sql/server'
import { UsageError } from '../errors'

export interface HealthServerOptions {
  port: number
  host?: string
  db: Queryable
  isReady: () => boolean
  registry: Registry
}

export interface HealthServer {
  port: number
  close(): Promise<void>
}


export function startHealthServer(options: HealthServerOptions): Promise<HealthServer> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    const reply = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' })
      res.end(body)
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, 'method not allowed\n')
    switch (path) {
      case '/healthz': {
        const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no answer within 2 s')), 2000).unref())
        Promise.race([options.db.query(ping), timeout])
          .then(() => reply(200, 'ok\n'))
          .catch((error: Error) => reply(503, `database unavailable: ${error.message.split('\n')[0]}\n`))
        return
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
  server.keepAliveTimeout = 5000
  return new Promise((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => reject(listenError(error, options.port)))
    server.listen(options.port, options.host ?? '0.0.0.0', () => {
      server.removeAllListeners('error')
      // Once listening, a failed accept (EMFILE) must not crash the orchestrator over its probes.
      server.on('error', () => undefined)
      resolve({
        port: (server.address() as AddressInfo).port,
        close: () => new Promise((done) => {
          server.close(() => done())
          server.closeAllConnections()
        }),
      })
    })
  })
}

/** A port that cannot be had is a setting to change (exit 2), not a bug in pipeweave. */
function listenError(error: NodeJS.ErrnoException, port: number): Error {
  const why = error.code === 'EADDRINUSE' ? 'it is already in use'
    : error.code === 'EACCES' ? 'permission denied (ports below 1024 need privileges)'
      : error.code === 'EADDRNOTAVAIL' ? 'the address is not available on this machine'
        : undefined
  if (!why) return error
  return new UsageError('HTTP_PORT_UNAVAILABLE', `cannot serve health and metrics on port ${port}: ${why}`, {
    hint: 'choose another --http-port (PIPEWEAVE_HTTP_PORT), or 0 for any free port',
  })
}
