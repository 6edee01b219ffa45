/**
 * db:reset (SPEC §3): drop every pipeweave object, then apply the migrations again. The guards
 * run before any connection, so a refused reset leaves the database untouched.
 */
import { type ConnectionFlags, resolveConnection } from '../db/config'
import type { Database } from '../db/database'
import { RefusedError } from '../errors'
import type { Logger } from '../logger'
import { MIGRATION_LOCK_KEY } from '../sql/migrations'
import { runMigrations, type RunMigrationsResult } from './migrations'

/** The tables of SPEC §3 plus the migration bookkeeping, dependents first. */
const TABLES = [
  'idempotency_cache', 'dlq', 'task_runs', 'pipeline_runs', 'pipelines', 'task_code_history', 'tasks',
  'services', 'orchestrators', 'maintenance_events', 'orchestrator_state', 'pipeweave_migration_log', 'migrations',
]

export interface ResetGuardInput {
  flags: ConnectionFlags
  env: Record<string, string | undefined>
  force?: boolean
}

/** Why a target looks like production, or undefined. */
export function productionLooking(host: string, database: string): string | undefined {
  const h = host.toLowerCase()
  const d = database.toLowerCase()
  if (h.includes('prod')) return `the host "${host}" contains "prod"`
  if (d.includes('prod')) return `the database "${database}" contains "prod"`
  if (h.endsWith('.com')) return `the host "${host}" ends in .com`
  if (h.includes('rds.amazonaws')) return `the host "${host}" is an RDS endpoint`
  return undefined
}

/** Refuse under NODE_ENV=production always, and for a production-looking target without --force. */
export function checkResetGuards(input: ResetGuardInput): { database: string } {
  if (input.env.NODE_ENV === 'production') {
    throw new RefusedError('RESET_REFUSED_PRODUCTION', 'db:reset is never allowed with NODE_ENV=production', {
      hint: 'unset NODE_ENV on a machine where dropping the data is intended',
    })
  }
  const target = resolveConnection(input.flags, input.env)
  if (target.kind === 'embedded') return { database: 'pipeweave' }
  const why = productionLooking(target.host, target.database)
  if (why && !input.force) {
    throw new RefusedError('RESET_REFUSED_GUARD', `db:reset refused: ${why}, which looks like production`, {
      hint: 'if this really is a disposable database, add --force',
    })
  }
  return { database: target.database }
}

export async function resetDatabase(db: Database, logger?: Logger): Promise<RunMigrationsResult> {
  await db.withTransaction(async (tx) => {
    // Under the migrators' lock, so a concurrent db:migrate does not interleave with the drop.
    await tx.query({ name: 'reset_lock', text: `SELECT pg_advisory_xact_lock(${MIGRATION_LOCK_KEY})` })
    for (const table of TABLES) {
      await tx.query({ name: 'reset_drop_table', text: `DROP TABLE IF EXISTS ${table} CASCADE` })
    }
    const { rows } = await tx.query<{ signature: string }>({
      name: 'reset_list_functions',
      text: `SELECT p.oid::regprocedure::text AS signature
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = current_schema() AND p.proname LIKE 'pipeweave\\_%'`,
    })
    for (const { signature } of rows) {
      await tx.query({ name: 'reset_drop_function', text: `DROP FUNCTION IF EXISTS ${signature} CASCADE` })
    }
  })
  return runMigrations(db, { logger })
}
