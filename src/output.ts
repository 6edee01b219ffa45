/**
 * The one formatter. Results go to stdout (exactly one JSON document with --json), diagnostics and
 * progress to stderr. Colour and spinners only on a TTY, never with NO_COLOR; every line is masked.
 * ora and cli-table3 are loaded only when a command draws one (start-up cost).
 */
import type { Logger, LogFields } from './logger'
import { redact, redactedJson } from './redact'

export interface Stream {
  write(text: string): unknown
  isTTY?: boolean
}

export interface Style {
  bold(text: string): string
  dim(text: string): string
  green(text: string): string
  yellow(text: string): string
  red(text: string): string
  cyan(text: string): string
}

const plain: Style = { bold: (t) => t, dim: (t) => t, green: (t) => t, yellow: (t) => t, red: (t) => t, cyan: (t) => t }

export function colorEnabled(stream: Stream, env: Record<string, string | undefined> = process.env): boolean {
  return Boolean(stream.isTTY) && env.NO_COLOR === undefined && env.TERM !== 'dumb'
}

export function styleFor(stream: Stream, env: Record<string, string | undefined> = process.env): Style {
  if (!colorEnabled(stream, env)) return plain
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const chalk = require('chalk') as typeof import('chalk')
  const c = new chalk.Instance({ level: 1 })
  return { bold: c.bold, dim: c.dim, green: c.green, yellow: c.yellow, red: c.red, cyan: c.cyan }
}

export interface FailureReport {
  exitCode: number
  /** Stable UPPER_SNAKE code. */
  code: string
  message: string
  hint?: string
}

export interface Spinner {
  update(text: string): void
  stop(): void
}

export class Output {
  readonly style: Style
  readonly errStyle: Style

  constructor(
    readonly stdout: Stream = process.stdout,
    readonly stderr: Stream = process.stderr,
    readonly env: Record<string, string | undefined> = process.env,
  ) {
    this.style = styleFor(stdout, env)
    this.errStyle = styleFor(stderr, env)
  }

  /** A result line on stdout. */
  line(text = ''): void {
    flushLogLines(this.stdout)
    this.stdout.write(`${redact(text)}\n`)
  }

  /** Exactly one JSON document on stdout. */
  json(document: unknown): void {
    flushLogLines(this.stdout)
    this.stdout.write(`${redactedJson(document, 2)}\n`)
  }

  /** A diagnostic line on stderr. */
  note(text: string): void {
    flushLogLines(this.stderr)
    this.stderr.write(`${redact(text)}\n`)
  }

  /**
   * A failure, as SPEC §2 prints it: with --json the one error document on stdout
   * (`{ "error": { "code", "message", "hint"? }, "exitCode" }`), otherwise one line on stderr.
   */
  failure(failure: FailureReport, json: boolean): void {
    if (json) {
      const error: Record<string, unknown> = { code: failure.code, message: failure.message }
      if (failure.hint) error.hint = failure.hint
      this.json({ error, exitCode: failure.exitCode })
    } else {
      const hint = failure.hint ? `: ${failure.hint}` : ''
      this.note(`${this.errStyle.red('error:')} ${failure.message}${hint}`)
    }
  }

  table(head: string[], rows: Array<Array<string | number | null | undefined>>): void {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const Table = require('cli-table3') as typeof import('cli-table3')
    const color = colorEnabled(this.stdout, this.env)
    const table = new Table({
      head: head.map((h) => (color ? this.style.bold(h) : h)),
      style: { head: [], border: [], compact: false },
      ...(color ? {} : { chars: ASCII_TABLE }),
    })
    for (const row of rows) table.push(row.map((cell) => (cell === null || cell === undefined ? '' : String(cell))))
    this.line(table.toString())
  }

  /**
   * Progress on stderr: an ora spinner on a TTY. Off a TTY (a CI log, a pipe) the text of an
   * update() is written as a plain line at most every `everyMs` (10 s), the first at once, so a
   * long wait shows it is alive without flooding the log (SPEC §2).
   */
  spinner(text: string, options: { everyMs?: number; now?: () => number } = {}): Spinner {
    // A spinner is progress, not colour: NO_COLOR keeps it, uncoloured.
    if (!this.stderr.isTTY || this.env.TERM === 'dumb') {
      const everyMs = options.everyMs ?? PROGRESS_EVERY_MS
      const now = options.now ?? Date.now
      let last = -Infinity
      let stopped = false
      return {
        update: (t) => {
          if (stopped || now() - last < everyMs) return
          last = now()
          this.note(t)
        },
        stop: () => { stopped = true },
      }
    }
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const ora = require('ora') as typeof import('ora')
    const spinner = ora({
      text: redact(text), stream: this.stderr as NodeJS.WritableStream,
      color: colorEnabled(this.stderr, this.env) ? 'cyan' : false as unknown as 'cyan', isEnabled: true,
    }).start()
    return {
      update: (t) => { spinner.text = redact(t) },
      stop: () => { spinner.stop() },
    }
  }
}

/** Progress lines off a terminal: at most one per this interval. */
const PROGRESS_EVERY_MS = 10_000

const ASCII_TABLE = {
  top: '-', 'top-mid': '+', 'top-left': '+', 'top-right': '+',
  bottom: '-', 'bottom-mid': '+', 'bottom-left': '+', 'bottom-right': '+',
  left: '|', 'left-mid': '+', mid: '-', 'mid-mid': '+',
  right: '|', 'right-mid': '+', middle: '|',
}

/** Diagnostics of short commands: one plain line each on stderr. */
export function stderrLogger(out: Output, verbose = false): Logger {
  const write = (prefix: string) => (message: string) => out.note(prefix ? `${prefix}${message}` : message)
  return {
    debug: verbose ? write('debug: ') : () => undefined,
    info: write(''),
    warn: write(out.errStyle.yellow('warning: ')),
    error: write(out.errStyle.red('error: ')),
  }
}

export type LogFormat = 'pretty' | 'json'

/**
 * Log lines not yet written, per stream (processLogger with `batched`). A busy orchestrator logs two
 * lines per run; writing each alone is a system call each (and, on a pipe, a wake-up of the
 * reader): the lines of one turn of the event loop are written together at its end instead. Anything else this module writes to the
 * same stream writes them first, and so does the process's exit, so no line is lost or reordered
 * (only a SIGKILL can lose the lines of the turn it interrupts).
 */
const unwritten = new Map<Stream, string[]>()

function writeLogLine(stream: Stream, line: string): void {
  const lines = unwritten.get(stream)
  if (lines) {
    lines.push(line)
    return
  }
  unwritten.set(stream, [line])
  if (unwritten.size === 1) process.once('exit', flushAllLogLines)
  setImmediate(() => flushLogLines(stream))
}

/** Write the log lines waiting for `stream`, if any. */
export function flushLogLines(stream: Stream): void {
  const lines = unwritten.get(stream)
  if (!lines) return
  unwritten.delete(stream)
  if (unwritten.size === 0) process.removeListener('exit', flushAllLogLines)
  stream.write(lines.join(''))
}

function flushAllLogLines(): void {
  for (const stream of [...unwritten.keys()]) flushLogLines(stream)
}

/**
 * Logs of long-running processes: pretty lines on a TTY, JSON lines otherwise (SPEC §5). With
 * `batched`, the lines of one turn of the event loop are written together at its end (`run`).
 */
export function processLogger(stream: Stream, format: LogFormat, verbose = false, env = process.env, options: { batched?: boolean } = {}): Logger {
  const style = styleFor(stream, env)
  const writeLine = options.batched ? (line: string) => writeLogLine(stream, line) : (line: string) => { stream.write(line) }
  const emit = (level: 'debug' | 'info' | 'warn' | 'error') => (message: string, fields: LogFields = {}) => {
    if (level === 'debug' && !verbose) return
    if (format === 'json') {
      writeLine(`${redactedJson({ time: new Date().toISOString(), level, msg: message, ...fields })}\n`)
      return
    }
    const time = style.dim(new Date().toISOString().slice(11, 23))
    const tag = { debug: style.dim('debug'), info: style.cyan('info '), warn: style.yellow('warn '), error: style.red('error') }[level]
    const extra = Object.entries(fields)
      .filter(([key, value]) => value !== undefined && !PRETTY_HIDDEN.has(key))
      .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
      .join(' ')
    writeLine(`${redact(`${time} ${tag} ${message}${extra ? ` ${style.dim(extra)}` : ''}`)}\n`)
  }
  return { debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error') }
}

const PRETTY_HIDDEN = new Set(['event', 'runId', 'status', 'orchestratorId'])
