/** SQL on the `migrations` table that postgres-migrations keeps, and on our timing log beside it. */
import type { Statement } from '../db/database'

/** postgres-migrations' own advisory lock key (with-lock.js); taking it first lets us bound the wait. */
export const MIGRATION_LOCK_KEY = '-8525285245963000605'

export const tryMigrationLock: Statement = {
  name: 'try_migration_lock',
  text: `SELECT pg_try_advisory_lock(${MIGRATION_LOCK_KEY}) AS acquired`,
}

export const releaseMigrationLock: Statement = {
  name: 'release_migration_lock',
  text: `SELECT pg_advisory_unlock(${MIGRATION_LOCK_KEY})`,
}

export const migrationsTableExists: Statement = {
  name: 'migrations_table_exists',
  text: `SELECT to_regclass('migrations') IS NOT NULL AS exists,
                to_regclass('pipeweave_migration_log') IS NOT NULL AS has_log`,
}

export const appliedMigrations: Statement = {
  name: 'applied_migrations',
  text: `SELECT m.id, m.name, m.hash, l.finished_at AS applied_at, l.duration_ms
           FROM migrations m
           LEFT JOIN pipeweave_migration_log l ON l.migration_id = m.id
          WHERE m.id > 0
          ORDER BY m.id`,
}

/** Before migration 1 has created the log table. */
export const appliedMigrationsWithoutLog: Statement = {
  name: 'applied_migrations_without_log',
  text: `SELECT id, name, hash, NULL::timestamptz AS applied_at, NULL::float8 AS duration_ms
           FROM migrations WHERE id > 0 ORDER BY id`,
}

export const currentVersion: Statement = {
  name: 'current_schema_version',
  text: `SELECT max(id) AS version FROM migrations WHERE id > 0`,
}
