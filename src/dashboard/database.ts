/**
 * The dashboard's own database handle (SPEC §8): a pool of 2 connections whose statements time out
 * (DB_STATEMENT_TIMEOUT_MS, else 5 s), whatever DB_POOL_MAX says for the rest of the process. Under
 * `run --dashboard` it sits beside the orchestrator's pool, so that no viewer can take a
 * connection the claim needs, and a slow page cannot hold one for long.
 */
import { assertSchemaReady } from '../api/migrations'
import { optionalInt } from '../db/config'
import { type Database, type DatabaseConfig, createDatabase } from '../db/database'
import { DASHBOARD_DEFAULTS } from './server'

export async function openDashboardDatabase(config: DatabaseConfig): Promise<Database> {
  const env = config.env ?? process.env
  const db = await createDatabase({
    ...config,
    pool: {
      ...config.pool,
      max: DASHBOARD_DEFAULTS.poolMax,
      min: 0,
      statementTimeoutMs: optionalInt(env, 'DB_STATEMENT_TIMEOUT_MS') ?? DASHBOARD_DEFAULTS.statementTimeoutMs,
    },
  })
  try {
    await assertSchemaReady(db)
  } catch (error) {
    await db.close()
    throw error
  }
  return db
}
