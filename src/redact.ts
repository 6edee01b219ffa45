/**
 * Password masking for every line pipeweave prints. Passwords that a connection source supplied are
 * registered here, and every output path (results, errors, logs) goes through redact().
 */
const secrets = new Set<string>()
/** The secrets, longest first, so that a password containing another is masked whole. */
let longestFirst: string[] = []

export function registerSecret(secret: string | undefined): void {
  if (secret && secret.length >= 1) {
    secrets.add(secret)
    secrets.add(encodeURIComponent(secret))
    longestFirst = [...secrets].sort((a, b) => b.length - a.length)
  }
}

const URL_PASSWORD = /(postgres(?:ql)?:\/\/[^:/?#@\s]*):([^@\s]*)@/gi

const SCHEME = /postgres(?:ql)?:\/\//gi
const HAS_SCHEME = /postgres(?:ql)?:\/\//i
const SCHEME_MARK = /\u0000(\d+)\u0000/g

export function redact(text: string): string {
  // Most lines (every log line of a busy orchestrator) hold neither a connection string nor a
  // secret: nothing to mask, and no need to build the masked copy.
  if (!HAS_SCHEME.test(text) && !longestFirst.some((secret) => text.includes(secret))) return text
  let out = text.replace(URL_PASSWORD, '$1:****@')
  if (secrets.size === 0) return out
  // The scheme of a connection string is never a secret, even when the password is "postgres"
  // (a common one): set it aside while masking, so a target still reads postgres://user:****@….
  const schemes: string[] = []
  out = out.replace(SCHEME, (scheme) => `\u0000${schemes.push(scheme) - 1}\u0000`)
  for (const secret of longestFirst) {
    if (secret.length < 3 && !out.includes(`:${secret}@`)) continue // too short to mask blindly
    out = out.split(secret).join('****')
  }
  return out.replace(SCHEME_MARK, (_, index: string) => schemes[Number(index)])
}

/**
 * JSON.stringify(value, null, space) with every string value masked (after toJSON) and nothing
 * else touched: masking the serialized text would also hit keys, numbers and booleans (a password
 * "true" or "1234" made `--json` output invalid JSON). One pass: log lines use it once per run
 * state change.
 */
export function redactedJson(value: unknown, space?: number): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === 'string') return redact(v)
    if (v instanceof String) return redact(String(v))
    return v
  }, space)
}
