/**
 * BaseCommand<T> owns the shared flags, --json, output, the error → exit-code mapping and the
 * cleanup of everything a command opened (SPEC §2). A command implements execute(), returning its
 * result, and render() for the human form.
 */
// The subpath modules, not the '@oclif/core' index: the index also checks the Node version with
// semver and loads every other part of oclif, ≈ 25 ms of every command's start-up (bench/cold-start.js).
// Commands take Flags from here for the same reason.
import { Command } from '@oclif/core/command'
import * as Args from '@oclif/core/args'
import * as Flags from '@oclif/core/flags'
import type { Interfaces } from '@oclif/core'
import type { Database, DatabaseConfig } from './db/database'
import { ExitCode, PipeweaveError, RefusedError, UsageError, firstLine } from './errors'
import { type Column, type FailureReport, Output, selectColumns, stderrLogger } from './output'
import { nearest } from './suggest'
import type { Logger } from './logger'
import { redact } from './redact'
import { SQLSTATE, serverStateError } from './db/errors'
import { settingTypos } from './db/config'
import { troubleshootingLink } from './troubleshooting'

export { Args, Flags }

/**
 * The flags of a list command (SPEC §2, issue 11): a table fitted to the terminal by default,
 * `--wide` for everything, `--columns` to choose, `--output csv|json` (json is --json).
 */
export function listFlags(columnKeys: string[]) {
  return {
    wide: Flags.boolean({ summary: 'Every column, each value whole (ids, ISO times, errors), however wide the table gets.' }),
    columns: Flags.string({ summary: `Only these columns, in this order, comma-separated: ${columnKeys.join(', ')}.` }),
    output: Flags.string({
      summary: 'table (fitted to the terminal; default), csv (every value whole, for spreadsheets) or json (the same as --json).',
      options: ['table', 'csv', 'json'],
    }),
  }
}

export type BaseFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>
export type BaseArgs<T extends typeof Command> = Interfaces.InferredArgs<T['args']>

const CONNECTION = 'CONNECTION'

/**
 * Commands that only read (SPEC §1): with nothing configured they use an embedded database that
 * exists and never create one (`cd / && pipeweave db:status` must not leave a cluster in /).
 */
export const READ_ONLY_COMMANDS: ReadonlySet<string> = new Set([
  'db:status', 'db:validate', 'db:ping', 'db:test', 'maintenance:status', 'runs:list', 'runs:show', 'dlq:list',
  'services:list', 'schedules:list', 'dashboard',
])

export abstract class BaseCommand<T extends typeof Command, R = unknown> extends Command {
  static enableJsonFlag = true

  // Each connection flag names its environment twin in its help. Not oclif's `env:` option: that
  // would make DB_HOST a value of --host, outranking DATABASE_URL (SPEC §1: the first source
  // given wins whole — flags, DATABASE_URL, DB_*, then PG*).
  static baseFlags = {
    url: Flags.string({ helpGroup: CONNECTION, summary: '[env: DATABASE_URL] PostgreSQL connection string (postgres://user:password@host:5432/db). The first source given wins whole: --url, the other flags, DATABASE_URL, DB_*, PG*.' }),
    host: Flags.string({ helpGroup: CONNECTION, summary: '[env: DB_HOST, PGHOST] Database host, or a Unix socket directory starting with /.' }),
    port: Flags.integer({ helpGroup: CONNECTION, summary: '[env: DB_PORT, PGPORT] Database port.', min: 1, max: 65535 }),
    database: Flags.string({ helpGroup: CONNECTION, summary: '[env: DB_NAME, PGDATABASE] Database name.' }),
    user: Flags.string({ helpGroup: CONNECTION, summary: '[env: DB_USER, PGUSER] Database user.' }),
    password: Flags.string({ helpGroup: CONNECTION, summary: '[env: DB_PASS, PGPASSWORD] Database password (prefer the environment: flags show in ps).' }),
    ssl: Flags.boolean({ helpGroup: CONNECTION, summary: '[env: DB_SSL=true, PGSSLMODE=verify-full] Require TLS with certificate verification.' }),
    schema: Flags.string({ helpGroup: CONNECTION, summary: '[env: PIPEWEAVE_SCHEMA] Schema that holds pipeweave\'s tables (default public).' }),
    verbose: Flags.boolean({ summary: 'Print debugging detail and stack traces.' }),
  }

  protected flags!: BaseFlags<T>
  protected args!: BaseArgs<T>
  /** Every positional argument (commands with `strict = false` take several ids). */
  protected positionals: string[] = []
  protected out = new Output()
  private releasers: Array<() => Promise<unknown>> = []
  private db?: Promise<Database>
  private releasing?: Promise<void>

  /** The command's work: returns the result that --json prints and render() shows. */
  protected abstract execute(): Promise<R>

  /** The human form of the result (stdout). */
  protected abstract render(result: R): void

  /** An exit code for a successful result that still signals something (db:status --exit-code). */
  protected resultExitCode?: number

  /** Short commands release what they opened on Ctrl-C; `run` installs its own handling. */
  protected handlesSignals = true

  /**
   * What the command would leave behind if Ctrl-C ended it now, said when it does (SPEC §2): set
   * while waiting (maintenance:request --wait leaves its request standing).
   */
  protected leftBehind?: { message: string; hint?: string }
  private interrupted = false

  public async init(): Promise<void> {
    await super.init()
    const { args, argv, flags } = await this.parse({
      flags: this.ctor.flags,
      baseFlags: (this.ctor as typeof BaseCommand).baseFlags,
      enableJsonFlag: this.ctor.enableJsonFlag,
      args: this.ctor.args,
      strict: this.ctor.strict,
    })
    this.flags = flags as BaseFlags<T>
    this.args = args as BaseArgs<T>
    this.positionals = argv.map(String)
    refuseVagueBooleans(this.ctor.flags ?? {}, process.env)
    // A misspelt setting is ignored like any unknown variable: say so, once (SPEC §1).
    for (const { name, meant } of settingTypos(process.env)) {
      this.logger.warn(`${name} is not a pipeweave setting (did you mean ${meant}?); it is ignored`)
    }
    if (this.handlesSignals) {
      const onSignal = (signal: NodeJS.Signals) => {
        const code = signal === 'SIGINT' ? 130 : 143
        // Closing the pool fails what is in flight: catch() must not report that as the error.
        this.interrupted = true
        void this.releaseAll().finally(() => {
          // After the release: a spinner has cleared its line by then.
          const left = this.leftBehind
          this.out.failure({
            exitCode: code, code: 'INTERRUPTED',
            message: left ? `interrupted: ${left.message}` : `interrupted by ${signal}`,
            ...(left?.hint ? { hint: left.hint } : {}),
          }, this.jsonEnabled())
          process.exit(code)
        })
      }
      process.once('SIGINT', onSignal)
      process.once('SIGTERM', onSignal)
    }
  }

  public async run(): Promise<R | undefined> {
    const result = await this.execute()
    if (this.jsonEnabled()) this.out.json(result)
    else this.render(result)
    if (this.resultExitCode !== undefined) process.exitCode = this.resultExitCode
    // The result is printed here; returning nothing keeps oclif from printing it again.
    return undefined
  }

  /** --json, or `--output json` on the list commands (the same document). */
  public jsonEnabled(): boolean {
    return super.jsonEnabled() || this.asksForJsonOutput()
  }

  private asksForJsonOutput(): boolean {
    if (!this.ctor.flags || !('output' in this.ctor.flags)) return false
    if (this.flags) return (this.flags as { output?: string }).output === 'json'
    // Not parsed (a parse error is being reported): read the arguments as oclif reads --json.
    const end = this.argv.indexOf('--')
    const argv = end === -1 ? this.argv : this.argv.slice(0, end)
    return argv.some((arg, i) => arg === '--output=json' || (arg === '--output' && argv[i + 1] === 'json'))
  }

  /** The columns a list command shows: its --columns checked (exit 2) before anything connects. */
  protected listColumns<Row>(columns: Array<Column<Row>>): string[] | undefined {
    return selectColumns(columns, (this.flags as { columns?: string }).columns)
  }

  /** A list result as the table, --wide, --columns or --output csv ask (listFlags). */
  protected printList<Row>(columns: Array<Column<Row>>, rows: Row[]): void {
    const flags = this.flags as { wide?: boolean; columns?: string; output?: string }
    this.out.grid(columns, rows, { wide: flags.wide, columns: this.listColumns(columns), format: flags.output === 'csv' ? 'csv' : 'table' })
  }

  protected get logger(): Logger {
    return stderrLogger(this.out, this.flags?.verbose)
  }

  /** How this command connects: its flags, the environment, its name in application_name. */
  protected databaseConfig(options: { command?: string; logSlowQueries?: boolean } = {}): DatabaseConfig {
    return {
      flags: {
        url: this.flags.url, host: this.flags.host, port: this.flags.port, database: this.flags.database,
        user: this.flags.user, password: this.flags.password, ssl: this.flags.ssl,
      },
      command: options.command ?? this.id,
      schema: this.flags.schema,
      createEmbedded: !READ_ONLY_COMMANDS.has(this.id ?? ''),
      logger: this.logger,
      logSlowQueries: options.logSlowQueries,
    }
  }

  /** The database, connected on first use and closed when the command ends. */
  protected database(): Promise<Database> {
    if (!this.db) {
      this.db = (async () => {
        // Loaded on first use: pg is not paid for by --help or --version.
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const { createDatabase } = require('./db/database') as typeof import('./db/database')
        const db = await createDatabase(this.databaseConfig())
        this.onRelease(() => db.close())
        return db
      })()
    }
    return this.db
  }

  /** The database, refused (exit 4) when its schema is missing or behind this pipeweave. */
  protected async migratedDatabase(): Promise<Database> {
    const db = await this.database()
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { assertSchemaReady } = require('./api/migrations') as typeof import('./api/migrations')
    await assertSchemaReady(db)
    return db
  }

  /** Register a cleanup; cleanups run once, last in first out, whatever happened. */
  protected onRelease(release: () => Promise<unknown>): void {
    this.releasers.push(release)
  }

  protected releaseAll(): Promise<void> {
    if (!this.releasing) {
      this.releasing = (async () => {
        while (this.releasers.length > 0) {
          const release = this.releasers.pop()!
          try {
            await release()
          } catch (error) {
            this.logger.warn(`cleanup failed: ${(error as Error).message}`)
          }
        }
      })()
    }
    return this.releasing
  }

  public async catch(error: Error & { oclif?: { exit?: number }; exitCode?: number }): Promise<void> {
    if (this.interrupted) return // the signal handler reports and exits
    const failure = classify(error, { flags: this.flagNames(), command: `${this.config.bin} ${this.id}`, schema: this.schemaName() })
    const guide = troubleshootingLink(failure.code, this.id)
    if (guide) failure.hint = failure.hint ? `${failure.hint}; see ${guide}` : `see ${guide}`
    process.exitCode = failure.exitCode
    this.out.failure(failure, this.jsonEnabled())
    if (this.flags?.verbose || /pipeweave/.test(process.env.DEBUG ?? '')) {
      this.out.note(redact(String(error.stack ?? error)))
    }
  }

  /** The schema this command works in, as given (--schema, PIPEWEAVE_SCHEMA), for hints. */
  private schemaName(): string {
    return this.flags?.schema || process.env.PIPEWEAVE_SCHEMA || 'public'
  }

  /** This command's flags as typed: `--name` (and `--no-name` where a boolean allows it). */
  private flagNames(): string[] {
    const ctor = this.ctor as typeof BaseCommand
    const flags: Record<string, { type?: string; allowNo?: boolean }> = { ...ctor.baseFlags, ...ctor.flags }
    const names = Object.entries(flags).flatMap(([name, flag]) => (flag.type === 'boolean' && flag.allowNo ? [`--${name}`, `--no-${name}`] : [`--${name}`]))
    return ctor.enableJsonFlag ? [...names, '--json'] : names
  }

  public async finally(error: Error | undefined): Promise<void> {
    await this.releaseAll()
    await super.finally(error)
    // Nothing should keep a finished command alive; if something does, leave with our exit code.
    setTimeout(() => process.exit(process.exitCode ?? 0), 3000).unref()
  }
}

/** What the failing command knows of itself, for "did you mean" (SPEC §2). */
/**
 * A boolean flag's environment twin (AUTO_MIGRATE, PIPEWEAVE_NO_LISTEN) must say yes or no: oclif
 * reads anything it does not know as false, so `AUTO_MIGRATE=maybe` would quietly mean no (exit 2).
 */
function refuseVagueBooleans(flags: Record<string, unknown>, env: Record<string, string | undefined>): void {
  for (const flag of Object.values(flags) as Array<{ type?: string; env?: string }>) {
    if (flag?.type !== 'boolean' || !flag.env) continue
    const value = env[flag.env]
    if (value === undefined || value === '') continue
    if (!['1', 'true', 'y', 'yes', '0', 'false', 'n', 'no'].includes(value.trim().toLowerCase())) {
      throw new UsageError('INVALID_SETTING', `${flag.env}="${value}" is neither true nor false`, {
        hint: `set ${flag.env}=true or ${flag.env}=false (or unset it)`,
      })
    }
  }
}

export interface FailureContext {
  /** Its flags, as typed (`--limit`). */
  flags?: string[]
  /** `pipeweave runs:list`, for the hint that points at its --help. */
  command?: string
  /** The schema of pipeweave's objects, for the hints that name it (a GRANT). */
  schema?: string
}

/** One mapping from any error to an exit code and a one-line message (SPEC §2). */
export function classify(error: unknown, context: FailureContext = {}): FailureReport {
  if (error instanceof PipeweaveError) {
    return { exitCode: error.exitCode, code: error.code, message: error.message, ...(error.hint ? { hint: error.hint } : {}) }
  }
  const e = error as Error & { oclif?: { exit?: number }; parse?: unknown; code?: string; flags?: unknown }
  // oclif's NonExistentFlagsError: each flag as typed (`--limt`, `--limt=5`).
  if (e?.constructor?.name === 'NonExistentFlagsError' && Array.isArray(e.flags) && e.flags.length > 0) {
    return unknownFlags(e.flags.map((f) => String(f).replace(/=.*$/s, '')), context)
  }
  // oclif's parser errors (unknown flag, missing argument, bad value) are bad usage. A bad flag
  // value is a plain CLIError with exit 2 whose reason is on its second line: keep every line.
  if (e && (e.parse !== undefined || /Flag|Arg|Parse|Validation/.test(e.constructor?.name ?? '') || e.oclif?.exit === 2)) {
    const usage = new UsageError('BAD_USAGE', usageMessage(e.message), { hint: 'see --help' })
    return { exitCode: usage.exitCode, code: usage.code, message: usage.message, hint: usage.hint }
  }
  // The database's own state (privileges, a read-only standby, a full disk, a timeout): 2–5.
  const foreseen = serverStateError(e, context.schema)
  if (foreseen) {
    return { exitCode: foreseen.exitCode, code: foreseen.code, message: foreseen.message, ...(foreseen.hint ? { hint: foreseen.hint } : {}) }
  }
  // data_exception: a value the database cannot take (a number out of range, a NUL in a string).
  if (typeof e?.code === 'string' && e.code.startsWith('22')) {
    const usage = new UsageError('INVALID_VALUE', `the database refused a value: ${firstLine(e.message)}`, { hint: 'check the values given' })
    return { exitCode: usage.exitCode, code: usage.code, message: usage.message, hint: usage.hint }
  }
  // undefined_table: a command that needs the schema ran on a database that has not got it (yet).
  if (e?.code === SQLSTATE.UNDEFINED_TABLE) {
    const refused = new RefusedError('NOT_INITIALIZED', `the database is not initialized: ${firstLine(e.message)}`, {
      hint: 'run `pipeweave db:init` (or db:migrate); `pipeweave db:status` shows what is pending',
    })
    return { exitCode: refused.exitCode, code: refused.code, message: refused.message, hint: refused.hint }
  }
  if (e?.oclif?.exit !== undefined && e.oclif.exit !== 1) {
    return { exitCode: e.oclif.exit, code: 'EXIT', message: firstLine(e.message) }
  }
  return {
    exitCode: ExitCode.INTERNAL,
    code: 'INTERNAL_ERROR',
    message: `unexpected error: ${firstLine(e?.message ?? String(error))}`,
    hint: 'this is a bug in pipeweave; run again with --verbose for the stack trace and report it',
  }
}


function unknownFlags(typed: string[], context: FailureContext): FailureReport {
  const suggestions = typed.map((flag) => [flag, nearest(flag, context.flags ?? [])] as const).filter(([, near]) => near)
  const listed = context.command ? `\`${context.command} --help\` lists its flags` : 'see --help'
  const hint = suggestions.length === 0 ? listed
    : `did you mean ${suggestions.map(([flag, near]) => (typed.length > 1 ? `${near} (for ${flag})` : near)).join(', ')}? (${listed})`
  const usage = new UsageError('BAD_USAGE', `unknown flag${typed.length > 1 ? 's' : ''} ${typed.join(', ')}`, { hint })
  return { exitCode: usage.exitCode, code: usage.code, message: usage.message, hint: usage.hint }
}

/** oclif's "Parsing --flag \n\tExpected …\nSee more help with --help" as one line (the hint says --help). */
function usageMessage(text: string): string {
  return text.split('\n').map((line) => line.trim().replace(/:$/, '')).filter((line) => line && !/^See more help/.test(line))
    .join(': ').replace(/\s{2,}/g, ' ')
}
