/**
 * Password masking for every line pipeweave prints. Passwords that a connection source supplied are
 * registered here, and every output path (results, errors, logs) goes through redact().
 */
const secrets = new Set<string>()

export function registerSecret(secret: string | undefined): void {
  if (secret && secret.length >= 1) {
    secrets.add(secret)
    secrets.add(encodeURIComponent(secret))
  }
}

const URL_PASSWORD = /(postgres(?:ql)?:\/\/[^:/?#@\s]*):([^@\s]*)@/gi

export function redact(text: string): string {
  let out = text.replace(URL_PASSWORD, '$1:****@')
  // Longest first, so that a password containing another is masked whole.
  for (const secret of [...secrets].sort((a, b) => b.length - a.length)) {
    if (secret.length < 3 && !out.includes(`:${secret}@`)) continue // too short to mask blindly
    out = out.split(secret).join('****')
  }
  return out
}
