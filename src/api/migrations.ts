/**
 * Migrations on postgres-migrations (SPEC §3): apply, dry-run, status, validate. We add what the
 * library lacks: a bounded wait for its lock, a pending list, the file and line of a failed
 * statement, refusal of a schema newer than this binary, and timings (migration 001's trigger).
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import type { Client } from 'pg'
import { type Database, type Queryable, clientQueryable } from '../db/database'
import { isConnectionLoss } from '../db/errors'
import { RefusedError, WaitTimeoutError } from '../errors'
import { type Logger, silentLogger } from '../logger'
import * as sql from '../sql/migrations'
import { getModeAndLiveOrchestrators } from './state'
import { MIGRATIONS_DIR } from '../version'

export interface MigrationFile {
  id: number
  name: string
  fileName: string
  hash: string
  sql: string
}

export interface AppliedMigration {
  id: number
  name: string
  hash: string
  appliedAt: Date | null
  durationMs: number | null
}

export interface MigrationStatus {
  initialized: boolean
  currentVersion: number | null
  applied: Array<{ id: number; name: string; appliedAt: string | null; durationMs: number | null }>
  pending: Array<{ id: number; name: string }>
}

export interface MigrationProblem {
  code: string
  file: string | null
  message: string
}

export interface ValidationResult {
  valid: boolean
  problems: MigrationProblem[]
}

const FILE_NAME = /^(\d{3,})_([a-z0-9]+(?:_[a-z0-9]+)*)\.sql$/
/** Files postgres-migrations would pick up (files-loader.js): every .sql and .js file. */
const LOADED_BY_ENGINE = /\.(sql|js)$/i

/** Read the migration files and check their names (SPEC §3): every problem, not just the first. */
export function readMigrationFiles(dir = MIGRATIONS_DIR): { files: MigrationFile[]; problems: MigrationProblem[] } {
  const problems: MigrationProblem[] = []
  let names: string[]
  try {
    names = fs.readdirSync(dir).filter((name) => LOADED_BY_ENGINE.test(name)).sort()
  } catch (error) {
    return { files: [], problems: [{ code: 'NO_MIGRATIONS_DIR', file: null, message: `cannot read the migrations directory ${dir}: ${(error as Error).message}` }] }
  }
  const files: MigrationFile[] = []
  const byId = new Map<number, string>()
  for (const fileName of names) {
    const match = FILE_NAME.exec(fileName)
    if (!match) {
      problems.push({ code: 'INVALID_FILE_NAME', file: fileName, message: `${fileName} is not named NNN_snake_case.sql` })
      continue
    }
    const id = Number(match[1])
    const other = byId.get(id)
    if (other) {
      problems.push({ code: 'DUPLICATE_ID', file: fileName, message: `${fileName} has the same id ${id} as ${other}` })
      continue
    }
    byId.set(id, fileName)
    const text = fs.readFileSync(path.join(dir, fileName), 'utf8')
    files.push({ id, name: match[2], fileName, hash: hashOf(fileName, text), sql: text })
  }
  files.sort((a, b) => a.id - b.id)
  // One problem per gap, named at the file after it (001, 003, 004 is one gap, not two).
  let expected = 1
  for (const file of files) {
    if (file.id !== expected) {
      problems.push({ code: 'NON_CONSECUTIVE_ID', file: file.fileName, message: `${file.fileName} has id ${file.id}; ids must run 1, 2, 3… with no gap (expected ${expected})` })
    }
    expected = file.id + 1
  }
  return { files, problems }
}

/** postgres-migrations' hash (migration-file.js): sha1 of the file name followed by its SQL. */
function hashOf(fileName: string, text: string): string {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('node:crypto') as typeof import('node:crypto')).createHash('sha1').update(fileName + text, 'utf8').digest('hex')
}

/**
 * Applied migrations, or null when the schema has no migrations table of postgres-migrations'
 * (none, or another tool's table of that name: db:init names it as a clash).
 */
export async function getAppliedMigrations(db: Queryable): Promise<AppliedMigration[] | null> {
  const { rows: [state] } = await db.query<{ exists: boolean; has_log: boolean; ours: boolean }>(sql.migrationsTableExists)
  if (!state.exists || !state.ours) return null
  const { rows } = await db.query<{ id: number; name: string; hash: string; applied_at: Date | null; duration_ms: number | null }>(
    state.has_log ? sql.appliedMigrations : sql.appliedMigrationsWithoutLog)
  return rows.map((r) => ({ id: r.id, name: r.name, hash: r.hash, appliedAt: r.applied_at, durationMs: r.duration_ms === null ? null : Math.round(r.duration_ms * 10) / 10 }))
}

/** How the applied history and this checkout's files differ: one comparison for every caller. */
export interface SchemaDiff {
  /** Files not applied yet. */
  pending: MigrationFile[]
  /** Applied migrations with no file here: the database is ahead of this pipeweave (or a file went). */
  unknown: AppliedMigration[]
  /** Files changed since they were applied. */
  changed: MigrationFile[]
}

export function diffSchema(files: MigrationFile[], applied: AppliedMigration[]): SchemaDiff {
  const fileById = new Map(files.map((f) => [f.id, f]))
  const appliedById = new Map(applied.map((m) => [m.id, m]))
  return {
    pending: files.filter((f) => !appliedById.has(f.id)),
    unknown: applied.filter((m) => !fileById.has(m.id)),
    changed: files.filter((f) => appliedById.has(f.id) && appliedById.get(f.id)!.hash !== f.hash),
  }
}

function compare(files: MigrationFile[], applied: AppliedMigration[]): MigrationProblem[] {
  const { unknown, changed } = diffSchema(files, applied)
  return [
    ...unknown.map((m) => ({ code: 'MISSING_FILE', file: null, message: `applied migration ${m.id} (${m.name}) has no file here: the database is newer than this pipeweave, or a file was removed` })),
    ...changed.map((f) => ({ code: 'CHECKSUM_MISMATCH', file: f.fileName, message: `${f.fileName} was changed after it was applied (its hash differs from the recorded one)` })),
  ].sort((a, b) => (a.file ?? '').localeCompare(b.file ?? ''))
}

/**
 * Refuse (exit 4) a schema whose applied migrations were changed since: a database made by an
 * earlier, unreleased pipeweave (its migrations were rewritten in place once) or an edited file.
 */
export function refuseChanged(changed: MigrationFile[], doing: string): void {
  if (changed.length === 0) return
  throw new RefusedError('CHECKSUM_MISMATCH', `${doing}: ${changed.map((f) => `${f.fileName} was changed after it was applied (its hash differs from the recorded one)`).join('; ')}`, {
    hint: 'restore the original file and put a change in a new migration; a database made by an earlier, unreleased pipeweave is reset with `pipeweave db:reset` (its data is dropped)',
  })
}

/**
 * Refuse (exit 4) a schema that holds tables with pipeweave's names that pipeweave did not create
 * (an application's `tasks`, TypeORM's `migrations`), before touching anything (SPEC §1 Schema).
 */
export async function refuseClashes(db: Queryable, files: MigrationFile[]): Promise<void> {
  const { rows: [state] } = await db.query<{ exists: boolean; ours: boolean }>(sql.migrationsTableExists)
  const foreign: string[] = []
  if (state.exists && !state.ours) foreign.push('migrations')
  const applied = state.exists && state.ours ? (await getAppliedMigrations(db)) ?? [] : []
  if (applied.length === 0) {
    // Nothing of pipeweave's is here yet, so any table with one of its names belongs to someone else.
    const names = objectNamesCreatedBy(files)
    const { rows } = await db.query<{ name: string }>(sql.existingTables, [names])
    foreign.push(...rows.map((r) => r.name).filter((name) => name !== 'migrations'))
  }
  if (foreign.length === 0) return
  const schema = db.schema.name
  throw new RefusedError('SCHEMA_CLASH', `the schema "${schema}" already holds ${foreign.map((t) => `a table "${t}"`).join(', ')} that pipeweave did not create`, {
    hint: schema === 'pipeweave'
      ? 'choose another schema for pipeweave with --schema NAME (PIPEWEAVE_SCHEMA); nothing was changed'
      : 'keep pipeweave in a schema of its own: --schema pipeweave (PIPEWEAVE_SCHEMA=pipeweave); nothing was changed',
  })
}

/** The relation names the migration files create (CREATE TABLE/VIEW/…), unqualified. */
function objectNamesCreatedBy(files: MigrationFile[]): string[] {
  const pattern = /\bCREATE\s+(?:UNLOGGED\s+)?(?:TABLE|VIEW|MATERIALIZED\s+VIEW|SEQUENCE)\s+(?:IF\s+NOT\s+EXISTS\s+)?"?([A-Za-z_][\w$]*)"?/gi
  const names = new Set<string>(['migrations'])
  for (const file of files) {
    const text = file.sql.replace(/--[^\n]*/g, '')
    for (const match of text.matchAll(pattern)) names.add(match[1].toLowerCase())
  }
  return [...names]
}

/** Refuse a database that has migrations this pipeweave does not know (exit 4). */
export function refuseSchemaAhead(unknown: AppliedMigration[], hint = 'run a pipeweave version that includes them'): void {
  if (unknown.length === 0) return
  throw new RefusedError('SCHEMA_AHEAD', `the database has migrations this pipeweave does not know (${unknown.map((m) => `${m.id} ${m.name}`).join(', ')})`, { hint })
}

export async function getMigrationStatus(db: Queryable, dir = MIGRATIONS_DIR): Promise<MigrationStatus> {
  return (await inspectMigrations(db, dir)).status
}

/** db:status's answer, and the applied migrations whose files changed since (said beside it). */
export async function inspectMigrations(db: Queryable, dir = MIGRATIONS_DIR): Promise<{ status: MigrationStatus; changed: MigrationFile[] }> {
  const { files } = readMigrationFiles(dir)
  const applied = (await getAppliedMigrations(db)) ?? []
  const { pending, changed } = diffSchema(files, applied)
  return {
    status: {
      initialized: applied.length > 0,
      currentVersion: applied.length > 0 ? Math.max(...applied.map((m) => m.id)) : null,
      applied: applied.map((m) => ({ id: m.id, name: m.name, appliedAt: m.appliedAt ? m.appliedAt.toISOString() : null, durationMs: m.durationMs })),
      pending: pending.map((f) => ({ id: f.id, name: f.name })),
    },
    changed,
  }
}

/** Check the files, and when a database is given, that what it applied still matches them. */
export async function validateMigrations(db?: Queryable, dir = MIGRATIONS_DIR): Promise<ValidationResult> {
  const { files, problems } = readMigrationFiles(dir)
  if (db) {
    const applied = await getAppliedMigrations(db)
    if (applied) problems.push(...compare(files, applied))
  }
  return { valid: problems.length === 0, problems }
}

export interface RunMigrationsOptions {
  dryRun?: boolean
  /** Refuse unless the mode is `maintenance` (exit 4). */
  requireMaintenance?: boolean
  /** Bound on the wait for another migrator's lock, seconds (exit 5 past it). */
  lockTimeoutSeconds?: number
  logger?: Logger
  dir?: string
}

export interface RunMigrationsResult {
  dryRun: boolean
  applied: Array<{ id: number; name: string; durationMs: number | null }>
  pending: Array<{ id: number; name: string }>
}

export async function runMigrations(db: Database, options: RunMigrationsOptions = {}): Promise<RunMigrationsResult> {
  const dir = options.dir ?? MIGRATIONS_DIR
  const logger = options.logger ?? silentLogger
  const { files, problems } = readMigrationFiles(dir)
  if (problems.length > 0) {
    throw new RefusedError('MIGRATIONS_INVALID', `the migration files are invalid: ${problems.map((p) => p.message).join('; ')}`, {
      hint: 'fix the files in migrations/ (pipeweave db:validate lists every problem)',
    })
  }

  const client = await db.newClient()
  try {
    await acquireMigrationLock(client, options.lockTimeoutSeconds ?? 60, logger)
    try {
      const session = clientQueryable(client, db.schema)
      await refuseClashes(session, files)
      const applied = (await getAppliedMigrations(session)) ?? []
      const { pending, unknown, changed } = diffSchema(files, applied)
      refuseChanged(changed, 'refusing to migrate')
      refuseSchemaAhead(unknown)
      await checkMaintenance(session, pending.length, options, logger)
      if (options.dryRun || pending.length === 0) {
        return { dryRun: Boolean(options.dryRun), applied: [], pending: pending.map((f) => ({ id: f.id, name: f.name })) }
      }

      // Every object a migration creates lands in the schema, postgres-migrations' own table too.
      await session.query(sql.createSchemaAndMigrationsTable)
      await session.query(sql.useSchema)
      await applyPending(client, dir, files, logger)
      const after = (await getAppliedMigrations(session)) ?? []
      const pendingIds = new Set(pending.map((f) => f.id))
      return {
        dryRun: false,
        applied: after.filter((m) => pendingIds.has(m.id)).map((m) => ({ id: m.id, name: m.name, durationMs: m.durationMs })),
        pending: [],
      }
    } finally {
      await client.query(sql.releaseMigrationLock.text).catch(() => undefined)
    }
  } catch (error) {
    throw db.mapError(error)
  } finally {
    await client.end().catch(() => undefined)
  }
}

/**
 * Migrations need one session: postgres-migrations' lock is a session lock, and each migration a
 * transaction of several statements. Behind a transaction pooler (PgBouncer in transaction mode)
 * consecutive statements may reach different server connections: the lock would guard nothing and
 * be left held on a pooled connection. Refused when the backend changes between statements.
 */
function pooledSessionError(): RefusedError {
  return new RefusedError('MIGRATE_THROUGH_POOLER', 'db:migrate needs a session of its own, and its statements reached different server connections (a transaction pooler such as PgBouncer?)', {
    hint: 'run db:migrate (db:init, run --auto-migrate) against the PostgreSQL server directly, not through the pooler',
  })
}

async function backendPid(client: Client): Promise<number> {
  return (await client.query(sql.backendPid.text)).rows[0].pid as number
}

async function acquireMigrationLock(client: Client, timeoutSeconds: number, logger: Logger): Promise<void> {
  const deadline = Date.now() + timeoutSeconds * 1000
  let told = false
  const pid = await backendPid(client)
  if ((await backendPid(client)) !== pid) throw pooledSessionError()
  for (;;) {
    const { rows } = await client.query(sql.tryMigrationLock.text)
    if (rows[0].acquired) {
      if (rows[0].pid !== pid) {
        await client.query(sql.releaseMigrationLock.text).catch(() => undefined)
        throw pooledSessionError()
      }
      return
    }
    if (Date.now() >= deadline) {
      throw new WaitTimeoutError('MIGRATION_LOCK_TIMEOUT', `another migrator held the migration lock for more than ${timeoutSeconds} s`, {
        hint: 'wait for the other db:migrate (or an orchestrator started with --auto-migrate) to finish, or raise --lock-timeout',
      })
    }
    if (!told) {
      logger.info('waiting for another migrator to finish…')
      told = true
    }
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

async function checkMaintenance(db: Queryable, pendingCount: number, options: RunMigrationsOptions, logger: Logger): Promise<void> {
  const state = await getModeAndLiveOrchestrators(db)
  if (!state) return // no schema yet: nothing is running on it
  if (options.requireMaintenance && state.mode !== 'maintenance') {
    throw new RefusedError('NOT_IN_MAINTENANCE', `refusing to migrate: the mode is ${state.mode}, and --require-maintenance asks for maintenance`, {
      hint: 'run `pipeweave maintenance:request --wait` first',
    })
  }
  if (pendingCount > 0 && state.mode !== 'maintenance' && state.liveOrchestrators > 0) {
    logger.warn(`${state.liveOrchestrators} orchestrator(s) are running and the mode is ${state.mode}; consider \`pipeweave maintenance:request --wait\` before migrating`)
  }
}

/** Hand the pending files to postgres-migrations, keeping the failing statement's position. */
async function applyPending(client: Client, dir: string, files: MigrationFile[], logger: Logger): Promise<void> {
  let current: MigrationFile | undefined
  let lastError: (Error & { position?: string; code?: string }) | undefined
  const original = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>
  const wrapped = (...args: unknown[]) => {
    const result = original(...args)
    if (result && typeof (result as Promise<unknown>).catch === 'function') {
      ;(result as Promise<unknown>).catch((error: Error) => { lastError = error })
    }
    return result
  }
  ;(client as unknown as { query: typeof wrapped }).query = wrapped
  const started = new Map<number, number>()
  // Loaded here, not at the top: db:status and db:validate never apply a migration (start-up cost).
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { migrate } = require('postgres-migrations') as typeof import('postgres-migrations')
  try {
    await migrate({ client }, dir, {
      logger: (message: string) => {
        const start = /^Starting migration: (\d+) /.exec(message)
        if (start) {
          current = files.find((f) => f.id === Number(start[1]))
          if (current) {
            started.set(current.id, Date.now())
            logger.info(`Applying: ${current.fileName}`)
          }
        }
        const finish = /^Finished migration: (\d+) /.exec(message)
        if (finish) {
          const file = files.find((f) => f.id === Number(finish[1]))
          if (file) logger.info(`Applied: ${file.fileName} in ${Date.now() - (started.get(file.id) ?? Date.now())} ms`)
        }
      },
    })
  } catch (error) {
    if (isConnectionLoss(error) || isConnectionLoss(lastError)) throw lastError ?? error
    if (!current) {
      throw new RefusedError('MIGRATION_FAILED', `migration failed: ${(error as Error).message}`)
    }
    const cause: Error & { position?: string } = lastError ?? (error as Error)
    const where = cause.position ? ` (${lineColumn(current.sql, Number(cause.position))})` : ''
    throw new RefusedError('MIGRATION_FAILED',
      `migration ${current.fileName} failed and was rolled back: ${cause.message}${where}`, {
        hint: 'fix the migration and run db:migrate again; the migrations before it stay applied',
      })
  } finally {
    ;(client as unknown as { query: typeof original }).query = original
  }
}

/** A 1-based character offset in the SQL as `line L, column C` (dbmate's QueryError). */
export function lineColumn(text: string, position: number): string {
  const before = text.slice(0, Math.max(0, position - 1))
  const lines = before.split('\n')
  return `line ${lines.length}, column ${lines[lines.length - 1].length + 1}`
}


/**
 * Refuse (exit 4) to work on a database whose schema is missing or behind this pipeweave, with
 * the command that fixes it, instead of failing later on a missing table or function. A schema
 * ahead of this binary is allowed here (`run` applies its own stricter rule).
 */
export async function assertSchemaReady(db: Queryable, dir = MIGRATIONS_DIR): Promise<void> {
  const { rows: [state] } = await db.query<{ exists: boolean; ours: boolean }>(sql.migrationsTableExists)
  const current = state.exists && state.ours
    ? (await db.query<{ version: number | null }>(sql.currentVersion)).rows[0].version ?? 0
    : 0
  if (current === 0) {
    throw new RefusedError('NOT_INITIALIZED', 'the database is not initialized: it has no pipeweave schema', {
      hint: 'run `pipeweave db:init`',
    })
  }
  const pending = readMigrationFiles(dir).files.filter((f) => f.id > current)
  if (pending.length > 0) {
    throw new RefusedError('MIGRATIONS_PENDING', `the database schema is behind this pipeweave: ${pending.length} migration(s) pending (${pending.map((f) => f.fileName).join(', ')})`, {
      hint: 'run `pipeweave db:migrate`',
    })
  }
}
