import type { Database } from '../db/database'
import * as server from '../sql/server'

export interface PingResult {
  target: string
  embedded: boolean
  serverVersion: string
  roundTripMs: number
  tls: boolean
}


/** Connect, then time a round trip (median of three) and ask the server whether TLS is in use. */
export async function ping(db: Database): Promise<PingResult> {
  const { rows: [info] } = await db.query<{ version: string; tls: boolean }>(server.serverInfo)
  const times: number[] = []
  for (let i = 0; i < 3; i++) {
    const started = performance.now()
    await db.query(server.ping)
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
