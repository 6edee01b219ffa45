/**
 * db:reset (SPEC §3): drop every pipeweave object, then apply the migrations again. The guards
 * run before any connection, so a refused reset leaves the database untouched.
 */
import { type ConnectionFlags, resolveConnection } from '../db/config'
import type { Database } from '../db/database'
import { RefusedError } from '../errors'
import type { Logger } from '../logger'
import { MIGRATION_LOCK_KEY } from '../sql/migrations'
import { type MigrationFile, readMigrationFiles, refuseClashes, runMigrations, type RunMigrationsResult } from './migrations'

/** The migration bookkeeping, dropped after every table the migration files create. */
const BOOKKEEPING = ['pipeweave_migration_log', 'migrations']

export interface ResetGuardInput {
  flags: ConnectionFlags
  env: Record<string, string | undefined>
  force?: boolean
}

/**
 * A host as DNS compares it: case-insensitive, and a trailing dot (the fully qualified form) names
 * the same host, so `DB.Example.COM.` must meet the same guard as `db.example.com`.
 */
export function normaliseHost(host: string): string {
  return host.trim().toLowerCase().replace(/\.+$/, '')
}

/** NODE_ENV as the guard compares it: `Production` and ` production ` mean production too. */
export function isProductionEnv(env: Record<string, string | undefined>): boolean {
  return (env.NODE_ENV ?? '').trim().toLowerCase() === 'production'
}

/** Why a target looks like production, or undefined. */
export function productionLooking(host: string, database: string): string | undefined {
  const h = normaliseHost(host)
  const d = database.toLowerCase()
  if (h.includes('prod')) return `the host "${host}" contains "prod"`
  if (d.includes('prod')) return `the database "${database}" contains "prod"`
  if (h.endsWith('.com')) return `the host "${host}" ends in .com`
  if (h.includes('rds.amazonaws')) return `the host "${host}" is an RDS endpoint`
  return undefined
}

/** Refuse under NODE_ENV=production always, and for a production-looking target without --force. */
export function checkResetGuards(input: ResetGuardInput): { database: string } {
  if (isProductionEnv(input.env)) {
    throw new RefusedError('RESET_REFUSED_PRODUCTION', `db:reset is never allowed with NODE_ENV=production${input.env.NODE_ENV === 'production' ? '' : ` (NODE_ENV is "${input.env.NODE_ENV}")`}`, {
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

/** What a DROP … CASCADE statement takes, in the order they are dropped. */
const KINDS = ['VIEW', 'MATERIALIZED VIEW', 'TABLE', 'SEQUENCE', 'TYPE', 'DOMAIN'] as const
type Kind = (typeof KINDS)[number]

export interface MigrationObjects {
  relations: Array<{ kind: Kind; name: string }>
  functions: string[]
}

/**
 * The objects the migration files create, read from their CREATE statements: a reset must drop
 * what every migration made, not only the tables of migration 001, or the next migration that
 * adds a table or a type fails to apply again ("already exists").
 */
export function objectsCreatedBy(files: Array<Pick<MigrationFile, 'sql'>>): MigrationObjects {
  const name = String.raw`((?:"[^"]+"|[A-Za-z_][\w$]*)(?:\.(?:"[^"]+"|[A-Za-z_][\w$]*))?)`
  const patterns: Array<[Kind | 'FUNCTION', RegExp]> = [
    ['MATERIALIZED VIEW', new RegExp(String.raw`\bCREATE\s+MATERIALIZED\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?${name}`, 'gi')],
    ['VIEW', new RegExp(String.raw`\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?(?:RECURSIVE\s+)?VIEW\s+${name}`, 'gi')],
    ['TABLE', new RegExp(String.raw`\bCREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?${name}`, 'gi')],
    ['SEQUENCE', new RegExp(String.raw`\bCREATE\s+(?:UNLOGGED\s+)?SEQUENCE\s+(?:IF\s+NOT\s+EXISTS\s+)?${name}`, 'gi')],
    ['TYPE', new RegExp(String.raw`\bCREATE\s+TYPE\s+${name}`, 'gi')],
    ['DOMAIN', new RegExp(String.raw`\bCREATE\s+DOMAIN\s+${name}`, 'gi')],
    ['FUNCTION', new RegExp(String.raw`\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+${name}`, 'gi')],
  ]
  const relations: MigrationObjects['relations'] = []
  const functions: string[] = []
  for (const file of files) {
    // Comments may mention CREATE TABLE too; string bodies rarely matter (a false name is dropped IF EXISTS).
    const sql = file.sql.replace(/--[^\n]*/g, '').replace(/\/\*[\s\S]*?\*\//g, '')
    for (const [kind, pattern] of patterns) {
      for (const match of sql.matchAll(pattern)) {
        if (kind === 'FUNCTION') functions.push(match[1])
        else relations.push({ kind, name: match[1] })
      }
    }
  }
  relations.sort((a, b) => KINDS.indexOf(a.kind) - KINDS.indexOf(b.kind))
  return { relations, functions }
}

/**
 * Drop what the migrations created in the schema (and nothing else there: an application's own
 * objects beside pipeweave's stay), then migrate again. A schema whose tables clash with
 * pipeweave's names but were not made by it is refused, never dropped.
 */
export async function resetDatabase(db: Database, logger?: Logger): Promise<RunMigrationsResult> {
  const files = readMigrationFiles().files
  await refuseClashes(db, files)
  const created = objectsCreatedBy(files)
  const q = db.schema.q
  const unqualified = (name: string) => name.replace(/^.*\./, '')
  await db.withTransaction(async (tx) => {
    // Under the migrators' lock, so a concurrent db:migrate does not interleave with the drop.
    await tx.query({ name: 'reset_lock', text: `SELECT pg_advisory_xact_lock(${MIGRATION_LOCK_KEY})` })
    for (const { kind, name } of created.relations.filter((r) => r.kind.endsWith('VIEW'))) {
      await tx.query({ name: 'reset_drop_view', text: `DROP ${kind} IF EXISTS ${q}.${unqualified(name)} CASCADE` })
    }
    for (const { kind, name } of created.relations.filter((r) => !r.kind.endsWith('VIEW'))) {
      await tx.query({ name: 'reset_drop_object', text: `DROP ${kind} IF EXISTS ${q}.${unqualified(name)} CASCADE` })
    }
    for (const table of BOOKKEEPING) {
      await tx.query({ name: 'reset_drop_table', text: `DROP TABLE IF EXISTS ${q}.${table} CASCADE` })
    }
    const { rows } = await tx.query<{ signature: string }>({
      name: 'reset_list_functions',
      text: `SELECT p.oid::regprocedure::text AS signature
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = $2::text AND (p.proname LIKE 'pipeweave\\_%' OR p.proname = ANY ($1::text[]))`,
    }, [created.functions.map((f) => unqualified(f).replace(/"/g, '')), db.schema.name])
    for (const { signature } of rows) {
      // ROUTINE: a migration may have created a procedure as well as functions.
      await tx.query({ name: 'reset_drop_function', text: `DROP ROUTINE IF EXISTS ${signature} CASCADE` })
    }
  })
  return runMigrations(db, { logger })
}
