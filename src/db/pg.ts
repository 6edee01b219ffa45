/**
 * node-postgres, loaded for the whole program through this module (values; `import type` from
 * 'pg' stays fine).
 *
 * Why: when pg loads, pg/lib/stream.js asks whether it runs in a Cloudflare Worker. It looks at
 * `navigator.userAgent` and, where there is no `navigator` (Node 20 has none; Node 21+ has one),
 * constructs a `Response`, which makes Node load its whole fetch implementation (undici): about
 * 15–20 ms of every command's start-up (bench/cold-start.js). A `navigator` like the one Node 21+
 * defines, present only while pg loads, answers the question without it.
 */
import type * as PgModule from 'pg'

function loadPg(): typeof PgModule {
  const global = globalThis as { navigator?: unknown }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  if (global.navigator !== undefined) return require('pg') as typeof PgModule
  Object.defineProperty(global, 'navigator', {
    value: { userAgent: `Node.js/${process.versions.node.split('.')[0]}` },
    configurable: true,
    writable: true,
    enumerable: false,
  })
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('pg') as typeof PgModule
  } finally {
    delete global.navigator
  }
}

const pg = loadPg()

type ConnectCallback = (error: Error | null, client?: PgModule.Client) => void

/**
 * A client that closes its socket when connecting fails. node-postgres leaves it open after a
 * failure it finds itself during the login (no password to answer the server's SCRAM challenge):
 * the server then waits out its authentication_timeout (60 s) with the socket open, which kept a
 * failed command alive until its exit timer. pg-pool does not end a client whose connect failed.
 */
class ClosingClient extends pg.Client {
  connect(): Promise<PgModule.Client>
  connect(callback: ConnectCallback): void
  connect(callback?: ConnectCallback): Promise<PgModule.Client> | void {
    if (!callback) {
      return new Promise<PgModule.Client>((resolve, reject) => { this.connect((error) => (error ? reject(error) : resolve(this))) })
    }
    super.connect((error: Error | null) => {
      if (error) (this as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy()
      callback(error, this)
    })
  }
}

/** Every pool's clients are ClosingClients too. */
class ClosingPool extends pg.Pool {
  constructor(config?: PgModule.PoolConfig) {
    super({ Client: ClosingClient, ...config } as PgModule.PoolConfig)
  }
}

export const Client: typeof PgModule.Client = ClosingClient
export type Client = PgModule.Client
export const Pool: typeof PgModule.Pool = ClosingPool
export type Pool = PgModule.Pool
export const escapeIdentifier: typeof PgModule.escapeIdentifier = pg.escapeIdentifier
