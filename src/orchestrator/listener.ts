/**
 * LISTEN/NOTIFY for prompt pickup: enqueue and mode changes notify (migration 002), and the loop
 * wakes at once instead of at its next poll. A dedicated session, reconnected after a loss; after
 * every (re)connect the loop is woken once, since notifications sent meanwhile are gone.
 */
import type { Client } from 'pg'
import type { Database } from '../db/database'
import type { Logger } from '../logger'
import { delay } from './wakeup'

export class Listener {
  private client?: Client
  private stopped = false
  private reconnecting = false

  constructor(
    private readonly db: Database,
    private readonly channels: string[],
    private readonly onNotify: (channel: string) => void,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    await this.connect()
  }

  /** The database is back: if our session was lost, reconnect now rather than at the next retry. */
  kick(): void {
    if (!this.client && !this.reconnecting) void this.reconnect()
  }

  private async connect(): Promise<void> {
    const client = await this.db.newClient()
    client.on('notification', (message) => this.onNotify(message.channel))
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
    for (const channel of this.channels) await client.query(`LISTEN ${channel}`)
    this.client = client
    this.onNotify(this.channels[0])
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
    const client = this.client
    this.client = undefined
    await client?.end().catch(() => undefined)
  }
}
