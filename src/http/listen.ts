/**
 * Listening on a port, for the health server (`run --http-port`) and the dashboard's own server:
 * a port that cannot be had is a setting to change (exit 2 with the caller's hint), not a bug in
 * pipeweave; once listening, a failed accept (EMFILE) does not crash the process.
 */
import type * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { UsageError } from '../errors'

export interface Listening {
  port: number
  close(): Promise<void>
}

export interface ListenOptions {
  port: number
  host: string
  /** The UsageError's code and what the server serves ("cannot serve WHAT on port N: …"). */
  code: string
  what: string
  hint: string
}

export function listen(server: http.Server, options: ListenOptions): Promise<Listening> {
  server.keepAliveTimeout = 5000
  return new Promise((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => reject(listenError(error, options)))
    server.listen(options.port, options.host, () => {
      server.removeAllListeners('error')
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

function listenError(error: NodeJS.ErrnoException, options: ListenOptions): Error {
  const why = error.code === 'EADDRINUSE' ? 'it is already in use'
    : error.code === 'EACCES' ? 'permission denied (ports below 1024 need privileges)'
      : error.code === 'EADDRNOTAVAIL' ? 'the address is not available on this machine'
        : undefined
  if (!why) return error
  return new UsageError(options.code, `cannot serve ${options.what} on port ${options.port}: ${why}`, { hint: options.hint })
}
