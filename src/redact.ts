/**
 * Password masking by position (SPEC §1). A password is masked where it stands as a password — a
 * URL's userinfo, a conninfo or query `password=`, `--password`, `DB_PASS`/`DB_PASSWORD`,
 * `PGPASSWORD` — and nowhere else. Other text is never searched for a password's characters: with
 * the password `running`, `Mode: running` must still read `running` (deploy scripts grep it), a
 * timestamp must keep its year when the password is `2026`, and a user named like the password
 * stays visible.
 */
export const MASK = '****'

/**
 * `scheme://user:password@host`: the userinfo of any URL (postgres, http, …). The authority ends at
 * the first `/`, `?`, `#` or blank; the password runs to its last `@` (a password with an unencoded
 * `@` is masked whole).
 */
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/[^\s/?#@:]*):([^\s/?#]*)@/gi
/** `password=…` in a conninfo string (`host=h password='a b'`) or a URL query (`?password=…`). */
const CONNINFO_PASSWORD = /(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'";]+)/gi
/** An environment assignment or a flag with its value: `DB_PASS=…`, `PGPASSWORD=…`, `--password=…`. */
const ASSIGNED_PASSWORD = /(\b(?:DB_PASS|DB_PASSWORD|PGPASSWORD)=|--password=)('[^']*'|"[^"]*"|\S+)/g
/** Cheap test first: most lines (every log line of a busy orchestrator) hold none of these. */
const MAYBE = /:\/\/|pass/i

/** `text` with every password that stands as a password masked; nothing else changes. */
export function redact(text: string): string {
  if (!MAYBE.test(text)) return text
  return text
    .replace(URL_USERINFO, `$1:${MASK}@`)
    .replace(CONNINFO_PASSWORD, `$1${MASK}`)
    .replace(ASSIGNED_PASSWORD, `$1${MASK}`)
}

/**
 * A connection string given on its own (a `--url` value, DATABASE_URL): a URL's userinfo runs to
 * the last `@` of the whole string, so a password holding an unencoded `/` or `?` (which breaks the
 * URL) is still masked whole. A conninfo string is masked at its `password=`.
 */
export function redactConnectionString(value: string): string {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(value)
  if (!scheme) return redact(value)
  const at = value.lastIndexOf('@')
  const colon = value.indexOf(':', scheme[0].length)
  if (at < 0 || colon < 0 || colon > at) return redact(value)
  return redact(`${value.slice(0, colon)}:${MASK}${value.slice(at)}`)
}

/** Command-line arguments with the values of `--password` and `--url` masked (oclif's DEBUG lines print argv). */
export function redactArgv(argv: readonly string[]): string[] {
  return argv.map((arg, i) => {
    const previous = argv[i - 1]
    if (previous === '--password') return MASK
    if (previous === '--url') return redactConnectionString(arg)
    if (arg.startsWith('--url=')) return `--url=${redactConnectionString(arg.slice('--url='.length))}`
    return /^[a-z][a-z0-9+.-]*:\/\//i.test(arg) ? redactConnectionString(arg) : redact(arg)
  })
}

/**
 * JSON.stringify(value, null, space) with every string value masked (after toJSON) and nothing
 * else touched: keys, numbers and booleans are never masked, so the document keeps its shape. One
 * pass: log lines use it once per run state change.
 */
export function redactedJson(value: unknown, space?: number): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === 'string') return redact(v)
    if (v instanceof String) return redact(String(v))
    return v
  }, space)
}
