/**
 * Who may act (SPEC §8): only a browser that presented PIPEWEAVE_DASHBOARD_TOKEN. The token is
 * presented once, in the body of a form POST (never in a URL), and traded for a session: a random
 * id in an HttpOnly, SameSite=Strict cookie, which is all the browser keeps. Neither the token nor
 * a session id is ever written to a page or a log line.
 */
import * as crypto from 'node:crypto'
import type { IncomingMessage } from 'node:http'

/** A session lasts this long from the moment the token was presented. */
export const SESSION_MS = 12 * 3_600_000
const MAX_SESSIONS = 1000

export interface Session {
  id: string
  createdAt: number
  /** A message to show once, on the next page (the outcome of an action). */
  flash?: { kind: 'ok' | 'error'; text: string; link?: { href: string; label: string } }
}

export class Sessions {
  private readonly sessions = new Map<string, Session>()
  private readonly digest?: Buffer

  constructor(token: string | undefined) {
    if (token) this.digest = sha256(token)
  }

  /** Whether actions exist at all (a token is configured). */
  get enabled(): boolean {
    return this.digest !== undefined
  }

  /** Compares in constant time (digests of equal length, whatever was presented). */
  matches(presented: string): boolean {
    return this.digest !== undefined && crypto.timingSafeEqual(sha256(presented), this.digest)
  }

  create(): Session {
    const session: Session = { id: crypto.randomBytes(32).toString('base64url'), createdAt: Date.now() }
    this.sessions.set(session.id, session)
    while (this.sessions.size > MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value as string)
    return session
  }

  /** The request's session, if its cookie names a live one. */
  of(req: IncomingMessage): Session | undefined {
    if (!this.enabled) return undefined
    const id = readCookie(req, cookieName(req))
    if (!id) return undefined
    const session = this.sessions.get(id)
    if (!session) return undefined
    if (Date.now() - session.createdAt > SESSION_MS) {
      this.sessions.delete(id)
      return undefined
    }
    return session
  }

  end(session: Session): void {
    this.sessions.delete(session.id)
  }
}

function sha256(text: string): Buffer {
  return crypto.createHash('sha256').update(text, 'utf8').digest()
}

/**
 * The cookie's name carries the port: cookies are not kept per port, and two dashboards on one
 * host (a `dashboard` and a `run --dashboard`) must not overwrite each other's session.
 */
export function cookieName(req: IncomingMessage): string {
  return `pipeweave_session_${req.socket.localPort ?? 0}`
}

/** Set-Cookie for a session: HttpOnly (no script reads it), SameSite=Strict (no other site sends it). */
export function sessionCookie(req: IncomingMessage, session: Session): string {
  return `${cookieName(req)}=${session.id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${Math.floor(SESSION_MS / 1000)}`
}

export function clearedCookie(req: IncomingMessage): string {
  return `${cookieName(req)}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`
}

function readCookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=')
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim()
  }
  return undefined
}

/**
 * A POST from a page of this dashboard: its Origin is this server's (what every browser sends on a
 * POST), or, without an Origin, Sec-Fetch-Site says same-origin. Anything else is refused: another
 * site's form, and a client that says neither.
 */
export function sameOrigin(req: IncomingMessage): boolean {
  const host = req.headers.host
  if (!host) return false
  const origin = req.headers.origin
  if (origin !== undefined) return origin === `http://${host}`
  return req.headers['sec-fetch-site'] === 'same-origin'
}
