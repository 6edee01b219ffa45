/**
 * A fresh database per test file, on the run's server (global-setup.ts). Tests talk to it through
 * `admin` (a plain pg Pool, for setting up and checking rows) and through the CLI with `env`.
 */
import * as crypto from 'node:crypto'
import { Pool, escapeIdentifier } from 'pg'
import { runMigrations } from '../../src/api/migrations'
import { type Database, type DatabaseConfig, createDatabase } from '../../src/db/database'

/**
 * The schema the suite puts pipeweave in: `public`, or PIPEWEAVE_TEST_SCHEMA (one of CI's two
 * passes runs the whole suite in a schema of its own). The test pools have it on their
 * search_path, so the SQL of the tests reads like an operator's runbook, unqualified.
 */
export const TEST_SCHEMA = process.env.PIPEWEAVE_TEST_SCHEMA || 'public'

/** Every run, live and finished: the tests' view of "the runs". */
export const ALL_RUNS = '(SELECT * FROM task_runs UNION ALL SELECT * FROM task_run_history)'

/** The programmatic API on a test database, in the suite's schema. */
export function apiDatabase(url: string, config: Omit<DatabaseConfig, 'flags'> = {}): Promise<Database> {
  return createDatabase({ env: {}, command: 'test', schema: TEST_SCHEMA, ...config, flags: { url } })
}

export function adminUrl(): string {
  const url = process.env.PIPEWEAVE_TEST_ADMIN_URL
  if (!url) throw new Error('PIPEWEAVE_TEST_ADMIN_URL is not set: run the tests through jest (global-setup starts the server)')
  return url
}

export function urlFor(database: string): string {
  const url = new URL(adminUrl())
  url.pathname = `/${database}`
  return url.toString()
}

export interface TestDatabase {
  name: string
  url: string
  /** A pool on the test database for arranging and asserting rows. */
  pool: Pool
  /** Environment that points the CLI at this database (and nowhere else). */
  env: Record<string, string>
  drop(): Promise<void>
}

const serverPool = () => new Pool({ connectionString: adminUrl(), max: 2 })

/** Create an empty database; with `migrated`, apply pipeweave's migrations to it first. */
export async function createTestDatabase(options: { migrated?: boolean; prefix?: string } = {}): Promise<TestDatabase> {
  const name = `${options.prefix ?? 'pw_test'}_${crypto.randomBytes(6).toString('hex')}`
  const server = serverPool()
  try {
    await server.query(`CREATE DATABASE ${escapeIdentifier(name)}`)
  } finally {
    await server.end()
  }
  const url = urlFor(name)
  const pool = new Pool({ connectionString: url, max: 5, options: `-c search_path=${TEST_SCHEMA}` })
  pool.on('error', () => undefined)
  if (options.migrated) await migrate(url)
  return {
    name,
    url,
    pool,
    env: { DATABASE_URL: url, PIPEWEAVE_SCHEMA: TEST_SCHEMA },
    drop: async () => {
      await pool.end().catch(() => undefined)
      const admin = serverPool()
      try {
        await admin.query(`DROP DATABASE IF EXISTS ${escapeIdentifier(name)} WITH (FORCE)`)
      } finally {
        await admin.end()
      }
    },
  }
}

async function migrate(url: string): Promise<void> {
  const db = await apiDatabase(url)
  try {
    await runMigrations(db)
  } finally {
    await db.close()
  }
}
