/**
 * LISTEN/NOTIFY for prompt pickup: enqueues, follow-ups, retries due at once (src/sql/task-runs.ts)
 * and mode changes (the trigger of migration 001) notify the schema's channel, and the loop
 * wakes at once instead of at its next poll. A dedicated session, reconnected after a loss; after
 * every (re)connect the loop is woken once, since notifications sent meanwhile are gone.
 */
import type { Client } from 'pg'
import type { Database } from '../db/database'
import { escapeIdentifier } from '../db/pg'
import type { Logger } from '../logger'
import { delay } from './wakeup'

/** How often the LISTEN session proves it is alive, and how long it may take to answer. */
const PING_EVERY_MS = 30_000
const PING_TIMEOUT_MS = 5_000

export class Listener {
  private client?: Client
  private stopped = false
  private reconnecting = false
  private pinger?: NodeJS.Timeout

  constructor(
    private readonly db: Database,
    private readonly channels: string[],
    /** A notification's payload; '' once after every (re)connect (anything may have been missed). */
    private readonly onNotify: (payload: string) => void,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    await this.connect()
    // A session that died silently (no FIN: a dropped NAT entry) never errors, it just stops
    // delivering: prove it alive now and then, and replace it when it does not answer.
    this.pinger = setInterval(() => void this.ping(), PING_EVERY_MS)
    this.pinger.unref()
  }

  private async ping(): Promise<void> {
    const client = this.client
    if (!client) return
    const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no answer to a ping')), PING_TIMEOUT_MS).unref())
    try {
      await Promise.race([client.query('SELECT 1'), timeout])
    } catch (error) {
      if (this.client === client) client.emit('error', error as Error)
    }
  }

  /** The database is back: if our session was lost, reconnect now rather than at the next retry. */
  kick(): void {
    if (!this.client && !this.reconnecting) void this.reconnect()
  }

  private async connect(): Promise<void> {
    const client = await this.db.newClient()
    if (this.stopped) {
      // stop() came while this connection was being made: it would keep the process alive.
      await client.end().catch(() => undefined)
      return
    }
    client.on('notification', (message) => this.onNotify(message.payload ?? ''))
    const lost = (error?: Error) => {
      if (this.client !== client) return
      this.client = undefined
      client.removeAllListeners('notification')
      void client.end().catch(() => undefined)
      if (!this.stopped) {
        this.log.debug(`LISTEN connection lost${error ? `: ${error.message}` : ''}; reconnecting`)
        void this.reconnect()
      }
    }
    client.on('error', lost)
    client.on('end', () => lost())
    for (const channel of this.channels) await client.query(`LISTEN ${escapeIdentifier(channel)}`)
    if (this.stopped) {
      await client.end().catch(() => undefined)
      return
    }
    this.client = client
    this.onNotify('')
  }

  private async reconnect(): Promise<void> {
    if (this.reconnecting) return
    this.reconnecting = true
    let backoff = 500
    try {
      while (!this.stopped && !this.client) {
        try {
          await this.connect()
        } catch {
          await delay(backoff)
          backoff = Math.min(backoff * 2, 5000)
        }
      }
    } finally {
      this.reconnecting = false
    }
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearInterval(this.pinger)
    const client = this.client
    this.client = undefined
    await client?.end().catch(() => undefined)
  }
}
