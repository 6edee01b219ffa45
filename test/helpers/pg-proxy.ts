/**
 * A TCP proxy in front of PostgreSQL that counts the statements its clients send: simple-protocol
 * Query ('Q') and extended-protocol Execute ('E') messages of the frontend stream. What a process
 * costs the database, whatever it is (a real `pipeweave dashboard`), with nothing inside it
 * instrumented. Plain connections only (sslmode=disable): the proxy reads the protocol.
 */
import * as net from 'node:net'

export interface CountingProxy {
  port: number
  /** Query and Execute messages so far, over every connection. */
  statements(): number
  /** `url` (a postgres:// URL) pointed at the proxy instead. */
  urlFor(url: string): string
  close(): Promise<void>
}

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104

export async function startCountingProxy(target: { host: string; port: number }): Promise<CountingProxy> {
  let statements = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host)
    sockets.add(client).add(upstream)
    let buffer = Buffer.alloc(0)
    let startup = true
    client.on('data', (chunk: Buffer) => {
      upstream.write(chunk)
      buffer = Buffer.concat([buffer, chunk])
      for (;;) {
        if (startup) {
          // Untyped: length, then the protocol version or a request code.
          if (buffer.length < 8) return
          const length = buffer.readInt32BE(0)
          if (buffer.length < length) return
          const code = buffer.readInt32BE(4)
          buffer = buffer.subarray(length)
          if (code !== SSL_REQUEST && code !== GSSENC_REQUEST) startup = false
          continue
        }
        if (buffer.length < 5) return
        const length = buffer.readInt32BE(1)
        if (buffer.length < 1 + length) return
        const type = String.fromCharCode(buffer[0])
        if (type === 'Q' || type === 'E') statements += 1
        buffer = buffer.subarray(1 + length)
      }
    })
    upstream.on('data', (chunk) => client.write(chunk))
    const end = () => { client.destroy(); upstream.destroy() }
    client.on('close', end).on('error', end)
    upstream.on('close', end).on('error', end)
    client.on('close', () => sockets.delete(client))
    upstream.on('close', () => sockets.delete(upstream))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  return {
    port,
    statements: () => statements,
    urlFor: (url) => {
      const u = new URL(url)
      u.hostname = '127.0.0.1'
      u.port = String(port)
      u.searchParams.set('sslmode', 'disable')
      return u.toString()
    },
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy()
      server.close(() => resolve())
    }),
  }
}
