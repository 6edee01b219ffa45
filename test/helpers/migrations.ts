/** The migrations this checkout ships, so tests do not hard-code how many there are. */
import { readMigrationFiles } from '../../src/api/migrations'

export const MIGRATIONS = readMigrationFiles().files.map((f) => ({ id: f.id, name: f.name, fileName: f.fileName }))
export const LATEST_VERSION = Math.max(...MIGRATIONS.map((m) => m.id))

/** The shipped migration files by name, for throw-away installs that add their own after them. */
export const SHIPPED: Record<string, string> = Object.fromEntries(readMigrationFiles().files.map((f) => [f.fileName, f.sql]))
