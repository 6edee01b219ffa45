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

export const Client: typeof PgModule.Client = pg.Client
export type Client = PgModule.Client
export const Pool: typeof PgModule.Pool = pg.Pool
export type Pool = PgModule.Pool
export const escapeIdentifier: typeof PgModule.escapeIdentifier = pg.escapeIdentifier
