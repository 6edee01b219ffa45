/** SQL on the `migrations` table that postgres-migrations keeps, and on our timing log beside it. */
import type { Statement } from '../db/database'
import { statement } from './schema'

/** postgres-migrations' own advisory lock key (with-lock.js); taking it first lets us bound the wait. */
export const MIGRATION_LOCK_KEY = '-8525285245963000605'

export const tryMigrationLock: Statement = {
  name: 'try_migration_lock',
  text: `SELECT pg_try_advisory_lock(${MIGRATION_LOCK_KEY}) AS acquired, pg_backend_pid() AS pid`,
}

/** The server process of this connection: the same for every statement of a real session. */
export const backendPid: Statement = { name: 'backend_pid', text: 'SELECT pg_backend_pid() AS pid' }

export const releaseMigrationLock: Statement = {
  name: 'release_migration_lock',
  text: `SELECT pg_advisory_unlock(${MIGRATION_LOCK_KEY})`,
}

/**
 * Is there a `migrations` table in the schema, and is it postgres-migrations' (id, name, hash,
 * executed_at)? Another tool's table of that name (TypeORM's: id, timestamp, name) is not ours.
 */
export const migrationsTableExists = statement('migrations_table_exists', (s) => `
  SELECT to_regclass(${s.literal} || '.migrations') IS NOT NULL AS exists,
         to_regclass(${s.literal} || '.pipeweave_migration_log') IS NOT NULL AS has_log,
         -- pg_attribute, not information_schema: the latter hides columns the user has no privilege on.
         (SELECT count(*) = 4 FROM pg_catalog.pg_attribute a
           WHERE a.attrelid = to_regclass(${s.literal} || '.migrations') AND NOT a.attisdropped
             AND a.attname IN ('id', 'name', 'hash', 'executed_at')) AS ours`)

export const appliedMigrations = statement('applied_migrations', (s) => `
  SELECT m.id, m.name, m.hash, l.finished_at AS applied_at, l.duration_ms
    FROM ${s.q}.migrations m
    LEFT JOIN ${s.q}.pipeweave_migration_log l ON l.migration_id = m.id
   WHERE m.id > 0
   ORDER BY m.id`)

/** Before migration 1 has created the log table. */
export const appliedMigrationsWithoutLog = statement('applied_migrations_without_log', (s) => `
  SELECT id, name, hash, NULL::timestamptz AS applied_at, NULL::float8 AS duration_ms
    FROM ${s.q}.migrations WHERE id > 0 ORDER BY id`)

export const currentVersion = statement('current_schema_version', (s) => `
  SELECT max(id) AS version FROM ${s.q}.migrations WHERE id > 0`)

/** The tables of the schema among $1: what db:init finds in its way (SPEC §1 Schema). */
export const existingTables = statement('existing_tables', (s) => `
  SELECT c.relname AS name FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = ${s.literal} AND c.relname = ANY ($1::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   ORDER BY c.relname`)

/**
 * postgres-migrations' own table (its migration 0), created in the schema before it runs: it
 * looks for `migrations` by name in pg_class without a schema filter (STACK-NOTES), so another
 * schema's table of that name would make it skip creating ours.
 */
export const createSchemaAndMigrationsTable = statement('create_migrations_table', (s) => `
  CREATE SCHEMA IF NOT EXISTS ${s.q};
  CREATE TABLE IF NOT EXISTS ${s.q}.migrations (
    id integer PRIMARY KEY,
    name varchar(100) UNIQUE NOT NULL,
    hash varchar(40) NOT NULL,
    executed_at timestamp DEFAULT current_timestamp
  )`)

/** The migration session's search_path: every object a migration creates lands in the schema. */
export const useSchema = statement('use_schema', (s) => `SET search_path TO ${s.q}`)
