/**
 * Stand-ins for servers that misbehave, on loopback ports: one that accepts TCP and never answers
 * (a black hole: the connect timeout must fire), and one that speaks just enough of PostgreSQL's
 * protocol to start TLS (certificate checks), then hangs up. Each counts the connections it saw,
 * so a test can show that a command refused *before* connecting.
 */
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import * as tls from 'node:tls'

export interface FakeServer {
  port: number
  /** TCP connections accepted so far. */
  connections(): number
  /** TLS handshakes that completed (the client accepted the certificate). */
  handshakes(): number
  close(): Promise<void>
}

const FIXTURES = path.resolve(__dirname, '..', 'fixtures', 'tls')
export const TLS_CA_FILE = path.join(FIXTURES, 'server.crt')

/** PostgreSQL's SSLRequest code (protocol 1234.5679). */
const SSL_REQUEST = 80877103

function listen(onSocket: (socket: net.Socket) => void, counters: { connections: number; handshakes: number }): Promise<FakeServer> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    counters.connections += 1
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => undefined)
    onSocket(socket)
  })
  return new Promise((resolve, reject) => {
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port
      // `localhost` may resolve to ::1 first: answer there too when the machine has IPv6.
      const v6 = net.createServer((socket) => server.emit('connection', socket))
      v6.on('error', () => undefined)
      v6.listen(port, '::1')
      resolve({
        port,
        connections: () => counters.connections,
        handshakes: () => counters.handshakes,
        close: () => new Promise((done) => {
          for (const socket of sockets) socket.destroy()
          v6.close(() => undefined)
          server.close(() => done())
        }),
      })
    })
  })
}

/** Accepts connections and never says a word. */
export function blackHoleServer(): Promise<FakeServer> {
  return listen(() => undefined, { connections: 0, handshakes: 0 })
}

/** Answers an SSLRequest with 'S', completes TLS with the fixture certificate, then hangs up. */
export function tlsServer(): Promise<FakeServer> {
  const counters = { connections: 0, handshakes: 0 }
  const context = tls.createSecureContext({
    key: fs.readFileSync(path.join(FIXTURES, 'server.key')),
    cert: fs.readFileSync(path.join(FIXTURES, 'server.crt')),
  })
  return listen((socket) => {
    socket.once('data', (buffer) => {
      if (buffer.length < 8 || buffer.readInt32BE(4) !== SSL_REQUEST) {
        socket.destroy()
        return
      }
      socket.write('S')
      const secure = new tls.TLSSocket(socket, { isServer: true, secureContext: context })
      secure.on('error', () => undefined)
      secure.on('secure', () => { counters.handshakes += 1 })
      // The startup message arrives once the client trusts us: we have nothing more to say.
      secure.on('data', () => secure.destroy())
    })
  }, counters)
}

/** A loopback port that nothing listens on (bound, then released). */
export function unusedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })
}
