import type { Queryable } from '../db/database'
import * as sql from '../sql/orchestrator-state'
import { orchestratorStaleMs } from './settings'

export type Mode = 'running' | 'waiting_for_maintenance' | 'maintenance'

/** The mode and the live orchestrators, or null when the schema does not exist yet. */
export async function getModeAndLiveOrchestrators(db: Queryable, staleMs = orchestratorStaleMs()): Promise<{ mode: Mode; liveOrchestrators: number } | null> {
  const { rows: [schema] } = await db.query<{ present: boolean }>(sql.schemaPresent)
  if (!schema.present) return null
  const { rows: [row] } = await db.query<{ mode: Mode; live: number }>(sql.modeAndLiveOrchestrators, [staleMs])
  return { mode: row.mode, liveOrchestrators: row.live }
}
