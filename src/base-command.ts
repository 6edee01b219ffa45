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
import { Output, stderrLogger } from './output'
import type { Logger } from './logger'
import { redact } from './redact'
import { SQLSTATE, serverStateError } from './db/errors'
import { settingTypos } from './db/config'

export { Args, Flags }

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

  static baseFlags = {
    url: Flags.string({ helpGroup: CONNECTION, summary: 'PostgreSQL connection string (postgres://user:password@host:5432/db).' }),
    host: Flags.string({ helpGroup: CONNECTION, summary: 'Database host, or a Unix socket directory starting with /.' }),
    port: Flags.integer({ helpGroup: CONNECTION, summary: 'Database port.', min: 1, max: 65535 }),
    database: Flags.string({ helpGroup: CONNECTION, summary: 'Database name.' }),
    user: Flags.string({ helpGroup: CONNECTION, summary: 'Database user.' }),
    password: Flags.string({ helpGroup: CONNECTION, summary: 'Database password (prefer DB_PASS or PGPASSWORD: flags show in ps).' }),
    ssl: Flags.boolean({ helpGroup: CONNECTION, summary: 'Require TLS with certificate verification.' }),
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
    // A misspelt setting is ignored like any unknown variable: say so, once (SPEC §1).
    for (const { name, meant } of settingTypos(process.env)) {
      this.logger.warn(`${name} is not a pipeweave setting (did you mean ${meant}?); it is ignored`)
    }
    if (this.handlesSignals) {
      const onSignal = (signal: NodeJS.Signals) => {
        const code = signal === 'SIGINT' ? 130 : 143
        void this.releaseAll().finally(() => process.exit(code))
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
    const failure = classify(error)
    process.exitCode = failure.exitCode
    if (this.jsonEnabled()) {
      const body: Record<string, unknown> = { code: failure.code, message: failure.message }
      if (failure.hint) body.hint = failure.hint
      this.out.json({ error: body, exitCode: failure.exitCode })
    } else {
      const style = this.out.errStyle
      const hint = failure.hint ? `: ${failure.hint}` : ''
      this.out.note(`${style.red('error:')} ${failure.message}${hint}`)
    }
    if (this.flags?.verbose || /pipeweave/.test(process.env.DEBUG ?? '')) {
      this.out.note(redact(String(error.stack ?? error)))
    }
  }

  public async finally(error: Error | undefined): Promise<void> {
    await this.releaseAll()
    await super.finally(error)
    // Nothing should keep a finished command alive; if something does, leave with our exit code.
    setTimeout(() => process.exit(process.exitCode ?? 0), 3000).unref()
  }
}

interface Failure {
  exitCode: number
  code: string
  message: string
  hint?: string
}

/** One mapping from any error to an exit code and a one-line message (SPEC §2). */
export function classify(error: unknown): Failure {
  if (error instanceof PipeweaveError) {
    return { exitCode: error.exitCode, code: error.code, message: error.message, ...(error.hint ? { hint: error.hint } : {}) }
  }
  const e = error as Error & { oclif?: { exit?: number }; parse?: unknown; code?: string }
  // oclif's parser errors (unknown flag, missing argument, bad value) are bad usage. A bad flag
  // value is a plain CLIError with exit 2 whose reason is on its second line: keep every line.
  if (e && (e.parse !== undefined || /Flag|Arg|Parse|Validation/.test(e.constructor?.name ?? '') || e.oclif?.exit === 2)) {
    const usage = new UsageError('BAD_USAGE', usageMessage(e.message), { hint: 'see --help' })
    return { exitCode: usage.exitCode, code: usage.code, message: usage.message, hint: usage.hint }
  }
  // The database's own state (privileges, a read-only standby, a full disk, a timeout): 2–5.
  const foreseen = serverStateError(e)
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


/** oclif's "Parsing --flag \n\tExpected …\nSee more help with --help" as one line (the hint says --help). */
function usageMessage(text: string): string {
  return text.split('\n').map((line) => line.trim().replace(/:$/, '')).filter((line) => line && !/^See more help/.test(line))
    .join(': ').replace(/\s{2,}/g, ' ')
}
