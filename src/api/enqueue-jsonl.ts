/**
 * Reading the input of `tasks:enqueue TASK --jsonl FILE` (SPEC §3 bulk enqueue): one input per line,
 * or with `envelope` one `{ "input", "idempotencyKey"?, "priority"?, "delayMs"? }` per line. The
 * whole source is read and every line checked before anything connects (input errors are exit 2,
 * before the gate's 4): the first bad line rejects the call, naming its line number.
 *
 * The source is streamed chunk by chunk, never held as one string beside its parsed form; the
 * byte limit stops the read as soon as it is passed. Blank lines (only spaces) are skipped but
 * counted, so line numbers stay those of the file; each other line is one item, in order.
 */
import { StringDecoder } from 'node:string_decoder'
import { UsageError } from '../errors'
import { MAX_BULK_ITEMS, type EnqueueItem, validateEnqueueItem } from './enqueue'

/** The largest input `--jsonl` reads: 256 MiB (SPEC §3). */
export const MAX_JSONL_BYTES = 256 * 1024 * 1024

const ENVELOPE_KEYS = new Set(['input', 'idempotencyKey', 'priority', 'delayMs'])
const ENVELOPE_SHAPE = '{ "input", "idempotencyKey"?, "priority"?, "delayMs"? }'

export interface JsonlOptions {
  /** Each line is an envelope (the API's item shape), not a bare input. */
  envelope?: boolean
  /** What the messages call the source: `runs.jsonl`, `standard input`. */
  source: string
  /** Given to every item that does not set its own (an envelope's value wins). */
  defaults?: Pick<EnqueueItem, 'priority' | 'delayMs'>
  /** Limits (tests lower them); SPEC §3's by default. */
  maxItems?: number
  maxBytes?: number
}

export interface JsonlItems {
  items: EnqueueItem[]
  /** The 1-based line number of each item (blank lines are skipped but counted). */
  lines: number[]
}

/** Read and check every line of `chunks` (a file or standard input stream). */
export async function readEnqueueJsonl(chunks: AsyncIterable<Buffer | string>, options: JsonlOptions): Promise<JsonlItems> {
  const maxItems = options.maxItems ?? MAX_BULK_ITEMS
  const maxBytes = options.maxBytes ?? MAX_JSONL_BYTES
  const items: EnqueueItem[] = []
  const lines: number[] = []
  let lineNumber = 0

  const take = (raw: string) => {
    lineNumber++
    const text = lineNumber === 1 && raw.charCodeAt(0) === 0xfeff ? raw.slice(1) : raw // a UTF-8 byte order mark
    if (text.trim() === '') return
    const where = `line ${lineNumber} of ${options.source}`
    if (items.length === maxItems) {
      throw new UsageError('TOO_MANY_ITEMS', `${options.source} holds more than ${maxItems.toLocaleString('en-US')} inputs, the most one call enqueues (the next is on line ${lineNumber})`, {
        hint: `split it, e.g. \`split -l ${maxItems} FILE part-\`, and enqueue each part`,
      })
    }
    let value: unknown
    try {
      value = JSON.parse(text)
    } catch (error) {
      throw new UsageError('INVALID_JSON', `${where}: not valid JSON: ${(error as Error).message}`, { hint: 'each line must be one JSON document (JSON Lines)' })
    }
    const item = options.envelope ? envelopeItem(value, where) : { input: value }
    if (item.priority === undefined && options.defaults?.priority !== undefined) item.priority = options.defaults.priority
    if (item.delayMs === undefined && options.defaults?.delayMs !== undefined) item.delayMs = options.defaults.delayMs
    items.push(item)
    lines.push(lineNumber)
  }

  const decoder = new StringDecoder('utf8')
  // The text of the line being read, in pieces: a line longer than a chunk is joined once, when its end arrives.
  let pending: string[] = []
  let bytes = 0
  const scan = (text: string) => {
    let start = 0
    for (let end = text.indexOf('\n', start); end !== -1; end = text.indexOf('\n', start)) {
      let line = text.slice(start, end)
      if (pending.length > 0) {
        line = pending.join('') + line
        pending = []
      }
      take(line)
      start = end + 1
    }
    if (start < text.length) pending.push(text.slice(start))
  }
  // Leaving the loop by a throw destroys the stream: a file or pipe is not read past the first error.
  for await (const chunk of chunks) {
    bytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length
    if (bytes > maxBytes) throw tooLarge(options.source, maxBytes)
    scan(typeof chunk === 'string' ? chunk : decoder.write(chunk))
  }
  scan(decoder.end())
  if (pending.length > 0) take(pending.join(''))
  return { items, lines }
}

/** The size check of a named file, before reading it (standard input is counted as it is read). */
export function tooLarge(source: string, maxBytes = MAX_JSONL_BYTES): UsageError {
  return new UsageError('INPUT_TOO_LARGE', `${source} is larger than ${maxBytes / 1024 / 1024} MiB, the most one call reads`, {
    hint: 'split it into smaller files (e.g. `split -l 500000`) and enqueue each',
  })
}

function envelopeItem(value: unknown, where: string): EnqueueItem {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const kind = value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`
    throw new UsageError('INVALID_ENVELOPE', `${where}: with --envelope each line must be an object ${ENVELOPE_SHAPE}, not ${kind}`, {
      hint: 'without --envelope each line is the input itself',
    })
  }
  const record = value as Record<string, unknown>
  for (const key of Object.keys(record)) {
    if (!ENVELOPE_KEYS.has(key)) {
      throw new UsageError('INVALID_ENVELOPE', `${where}: unknown key "${key}" (an envelope holds input, idempotencyKey, priority and delayMs)`, {
        hint: 'put the task\'s own fields inside "input"',
      })
    }
  }
  if (!('input' in record)) {
    throw new UsageError('INVALID_ENVELOPE', `${where}: the envelope has no "input" (write "input": null for a run without one)`)
  }
  // null stands for "not given" (what `jq '{input: ., idempotencyKey: .id}'` writes for a missing field).
  for (const key of ['priority', 'delayMs'] as const) {
    const given = record[key]
    if (given !== null && given !== undefined && typeof given !== 'number') {
      throw new UsageError(key === 'priority' ? 'INVALID_PRIORITY' : 'INVALID_DELAY', `${where}: ${key} must be a whole number, not ${Array.isArray(given) ? 'an array' : `a ${typeof given}`} (${JSON.stringify(given).slice(0, 40)})`)
    }
  }
  const item: EnqueueItem = { input: record.input }
  if (record.idempotencyKey !== null && record.idempotencyKey !== undefined) item.idempotencyKey = record.idempotencyKey as string
  if (record.priority !== null && record.priority !== undefined) item.priority = record.priority as number
  if (record.delayMs !== null && record.delayMs !== undefined) item.delayMs = record.delayMs as number
  validateEnqueueItem(item, `${where}: `)
  return item
}
