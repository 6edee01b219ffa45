/**
 * The one formatter. Results go to stdout (exactly one JSON document with --json), diagnostics and
 * progress to stderr. Colour and spinners only on a TTY, never with NO_COLOR; every line is masked.
 * ora and cli-table3 are loaded only when a command draws one (start-up cost).
 */
import { UsageError } from './errors'
import type { Logger, LogFields } from './logger'
import { redact, redactedJson } from './redact'
import { nearest } from './suggest'

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
   * The width a fitted table may take: the terminal's, else `COLUMNS` (set by shells for their
   * children on request, and by tests), else 80.
   */
  width(): number {
    const out = this.stdout as Stream & { columns?: number }
    if (out.isTTY && out.columns && out.columns > 0) return out.columns
    const columns = Number(this.env.COLUMNS)
    return Number.isInteger(columns) && columns > 0 ? columns : 80
  }

  /**
   * A list (runs:list, dlq:list): by default a table fitted to width() — short values, the
   * shrinkable columns cut with "…", no borders; `wide` shows every column with whole values in
   * a bordered table, whatever its width; `format: 'csv'` prints every value whole as CSV
   * (RFC 4180, header = column keys). `columns` (keys, checked by selectColumns) picks the
   * columns and their order.
   */
  grid<Row>(columns: Array<Column<Row>>, rows: Row[], options: GridOptions = {}): void {
    const now = options.now ?? Date.now()
    const chosen = options.columns ? options.columns.map((key) => columns.find((c) => c.key === key)!)
      : columns.filter((c) => options.wide || options.format === 'csv' || c.fitted !== false)
    if (options.format === 'csv') {
      const lines = [chosen.map((c) => csvField(c.key)), ...rows.map((row) => chosen.map((c) => csvField(cell(c.full(row)))))]
      this.line(lines.map((fields) => fields.join(',')).join('\r\n'))
      return
    }
    if (options.wide) {
      this.table(chosen.map((c) => c.header), rows.map((row) => chosen.map((c) => cell(c.full(row)))))
      return
    }
    const cells = rows.map((row) => chosen.map((c) => oneLine(cell((c.short ?? c.full)(row, now)))))
    const natural = chosen.map((c, i) => Math.max(textWidth(c.header), ...cells.map((r) => textWidth(r[i]))))
    const widths = fitWidths(natural, chosen.map((c) => (c.shrinkTo === undefined ? undefined : Math.max(c.shrinkTo, textWidth(c.header)))), this.width())
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const Table = require('cli-table3') as typeof import('cli-table3')
    const table = new Table({
      head: chosen.map((c) => (colorEnabled(this.stdout, this.env) ? this.style.bold(c.header) : c.header)),
      chars: BORDERLESS, colWidths: widths, wordWrap: false, truncate: '…',
      style: { head: [], border: [], 'padding-left': 0, 'padding-right': 0 },
    })
    for (const row of cells) table.push(row)
    this.line(table.toString().split('\n').map((l) => l.trimEnd()).join('\n'))
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

// ---------------------------------------------------------------------------------------------
// Lists fitted to the terminal (grid)

export interface Column<Row> {
  /** Its name for --columns and the CSV header. */
  key: string
  header: string
  /** The whole value: --wide, CSV. */
  full(row: Row): string | number | null | undefined
  /** The value in a fitted table (default: full): short ids, relative times, one line. */
  short?(row: Row, now: number): string | number | null | undefined
  /** In the fitted table by default (false: only with --wide, --columns or CSV). */
  fitted?: boolean
  /** May be cut with "…" to fit the width, down to this many characters. */
  shrinkTo?: number
}

export interface GridOptions {
  wide?: boolean
  /** Keys, in order (selectColumns). */
  columns?: string[]
  format?: 'table' | 'csv'
  /** The clock of relative times (tests). */
  now?: number
}

/** `--columns a,b` checked against the columns a list has: exit 2 naming the unknown one. */
export function selectColumns<Row>(columns: Array<Column<Row>>, flag: string | undefined): string[] | undefined {
  if (flag === undefined) return undefined
  const keys = flag.split(',').map((k) => k.trim().toLowerCase()).filter(Boolean)
  const known = columns.map((c) => c.key)
  for (const key of keys) {
    if (!known.includes(key)) {
      const near = nearest(key, known)
      throw new UsageError('UNKNOWN_COLUMN', `unknown column "${key}"${near ? `; did you mean "${near}"?` : ''}`, { hint: `the columns are ${known.join(', ')}` })
    }
  }
  if (keys.length === 0) throw new UsageError('UNKNOWN_COLUMN', '--columns names no column', { hint: `the columns are ${known.join(', ')}` })
  return keys
}

const GAP = 2
const BORDERLESS = {
  top: '', 'top-mid': '', 'top-left': '', 'top-right': '', bottom: '', 'bottom-mid': '', 'bottom-left': '', 'bottom-right': '',
  left: '', 'left-mid': '', mid: '', 'mid-mid': '', right: '', 'right-mid': '', middle: ' '.repeat(GAP),
}

/**
 * Column widths within `budget`: while the table is too wide, the widest column that may shrink
 * loses a character (so long errors give way before task names), never below its minimum.
 * Columns without a minimum keep their width; if they alone are too wide, the line overflows.
 */
export function fitWidths(natural: number[], minimum: Array<number | undefined>, budget: number): number[] {
  const widths = [...natural]
  let over = widths.reduce((a, b) => a + b, 0) + GAP * Math.max(0, widths.length - 1) - budget
  while (over > 0) {
    let pick = -1
    widths.forEach((w, i) => {
      const min = minimum[i]
      if (min !== undefined && w > min && (pick === -1 || w > widths[pick])) pick = i
    })
    if (pick === -1) break
    widths[pick] -= 1
    over -= 1
  }
  return widths
}

function cell(value: string | number | null | undefined): string {
  return value === null || value === undefined ? '' : String(value)
}

/** Line breaks and tabs would break a row in two: one line, runs of blanks as one. */
function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim()
}

/** Characters as a terminal counts them, near enough (code points). */
function textWidth(text: string): number {
  return [...text].length
}

function csvField(text: string): string {
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text
}

/** An id short enough for a fitted table: whole up to 20 characters (time-ordered ids), else its first 8 and "…". */
export function shortId(id: string | null | undefined): string {
  if (!id) return ''
  return id.length <= 20 ? id : `${id.slice(0, 8)}…`
}

/** "5m ago", "in 2h", "now": the distance from `now` in the largest whole unit (s, m, h, d). */
export function relativeTime(iso: string | null | undefined, now: number): string {
  if (!iso) return ''
  const at = new Date(iso).getTime()
  if (Number.isNaN(at)) return iso
  const seconds = Math.round((now - at) / 1000)
  const size = Math.abs(seconds)
  if (size < 1) return 'now'
  const amount = size < 60 ? `${size}s` : size < 3600 ? `${Math.floor(size / 60)}m` : size < 48 * 3600 ? `${Math.floor(size / 3600)}h` : `${Math.floor(size / 86400)}d`
  return seconds > 0 ? `${amount} ago` : `in ${amount}`
}

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
