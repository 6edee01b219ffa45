import type { Database } from '../db/database'

export interface PingResult {
  target: string
  embedded: boolean
  serverVersion: string
  roundTripMs: number
  tls: boolean
}

const PING = { name: 'ping', text: 'SELECT 1' }
const SERVER = {
  name: 'server_info',
  text: `SELECT current_setting('server_version') AS version,
                COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false) AS tls`,
}

/** Connect, then time a round trip (median of three) and ask the server whether TLS is in use. */
export async function ping(db: Database): Promise<PingResult> {
  const { rows: [info] } = await db.query<{ version: string; tls: boolean }>(SERVER)
  const times: number[] = []
  for (let i = 0; i < 3; i++) {
    const started = performance.now()
    await db.query(PING)
    times.push(performance.now() - started)
  }
  times.sort((a, b) => a - b)
  return {
    target: db.description,
    embedded: db.embeddedDataDir !== undefined,
    serverVersion: info.version,
    roundTripMs: Math.round(times[1] * 100) / 100,
    tls: info.tls,
  }
}
