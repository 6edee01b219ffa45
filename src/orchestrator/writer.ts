/**
 * Results are written in batches (graphile-worker's completeJobBatchDelay, without the delay): a
 * result is sent at once when no write is in flight, and the results that arrive while one is in
 * flight go together in the next: completions in one statement, failed attempts in another,
 * connect failures for the breaker in a third. An idle orchestrator writes each result as soon as
 * it has it; a busy one pays one round trip and one commit for many runs, not one each.
 *
 * Each run keeps its own outcome: the caller gets the result of its run, or the error that
 * stopped it being written. A batch the database refuses for a reason other than the connection
 * (one worker's output that jsonb cannot hold) is written again one run at a time, so that only
 * the run at fault fails.
 */
import { BREAKER_DEFAULTS } from '../api/settings'
import { isConnectionLoss } from '../db/errors'
import type { BreakerSettings, CompleteResult, Completion, DeferOutcome, Deferral, FailResult, FailureRecord, Repository } from './repository'

/** Results per statement at most: bounds the statement's size and the time its locks are held. */
export const MAX_BATCH = 100

type Entry =
  | { kind: 'complete'; item: Completion; resolve: (r: CompleteResult) => void; reject: (e: unknown) => void }
  | { kind: 'fail'; item: FailureRecord; resolve: (r: FailResult) => void; reject: (e: unknown) => void }
  | { kind: 'defer'; item: Deferral; resolve: (r: DeferOutcome) => void; reject: (e: unknown) => void }

export class ResultWriter {
  private queue: Entry[] = []
  private writing = 0
  private inBatches = 0
  private scheduled = false
  private idle: Array<() => void> = []

  constructor(
    private readonly repo: Pick<Repository, 'complete' | 'fail' | 'defer'>,
    /** Called when results leave the queue for good (written or refused): slots may free. */
    private readonly onSettled: () => void = () => undefined,
    /** Batches written at once, each on a connection of its own. */
    private readonly maxWriting = 1,
    private readonly maxBatch = MAX_BATCH,
    /** What a breaker that opens on these connect failures is opened with. */
    private readonly breaker: BreakerSettings = BREAKER_DEFAULTS,
  ) {}

  /** Results waiting or being written. */
  get size(): number {
    return this.queue.length + this.inBatches
  }

  complete(item: Completion): Promise<CompleteResult> {
    return new Promise((resolve, reject) => this.push({ kind: 'complete', item, resolve, reject }))
  }

  fail(item: FailureRecord): Promise<FailResult> {
    return new Promise((resolve, reject) => this.push({ kind: 'fail', item, resolve, reject }))
  }

  /** A connect failure of a breaker-enabled service: deferred (attempt kept), or to be recorded as a failure. */
  defer(item: Deferral): Promise<DeferOutcome> {
    return new Promise((resolve, reject) => this.push({ kind: 'defer', item, resolve, reject }))
  }

  /** Resolves once nothing is waiting or being written. */
  flushed(): Promise<void> {
    if (this.size === 0) return Promise.resolve()
    return new Promise((resolve) => this.idle.push(resolve))
  }

  private push(entry: Entry): void {
    this.queue.push(entry)
    this.schedule()
  }

  private schedule(): void {
    if (this.scheduled || this.writing >= this.maxWriting || this.queue.length === 0) return
    this.scheduled = true
    // setImmediate, not a microtask: the other answers read in this turn of the event loop join
    // this batch.
    setImmediate(() => {
      this.scheduled = false
      if (this.writing >= this.maxWriting || this.queue.length === 0) return
      const batch = this.queue.splice(0, this.maxBatch)
      this.writing += 1
      this.inBatches += batch.length
      void this.write(batch).finally(() => {
        this.writing -= 1
        this.inBatches -= batch.length
        this.onSettled()
        if (this.size === 0) for (const wake of this.idle.splice(0)) wake()
        this.schedule()
      })
      this.schedule()
    })
  }

  /** Settles every promise of the batch, whatever happens. */
  private async write(batch: Entry[]): Promise<void> {
    const completes = batch.filter((e): e is Extract<Entry, { kind: 'complete' }> => e.kind === 'complete')
    const fails = batch.filter((e): e is Extract<Entry, { kind: 'fail' }> => e.kind === 'fail')
    const defers = batch.filter((e): e is Extract<Entry, { kind: 'defer' }> => e.kind === 'defer')
    await Promise.all([
      completes.length > 0 && this.writeAll(completes, (items) => this.repo.complete(items)),
      fails.length > 0 && this.writeAll(fails, (items) => this.repo.fail(items)),
      defers.length > 0 && this.writeAll(defers, (items) => this.repo.defer(items, this.breaker)),
    ])
  }

  private async writeAll<I, R>(entries: Array<{ item: I; resolve: (r: R) => void; reject: (e: unknown) => void }>, write: (items: I[]) => Promise<R[]>): Promise<void> {
    try {
      const results = await write(entries.map((e) => e.item))
      entries.forEach((e, i) => e.resolve(results[i]))
      return
    } catch (error) {
      if (isConnectionLoss(error) || entries.length === 1) {
        // The connection: each caller decides (it retries until the database is back). A single
        // result refused on its own: the caller records that run's failure.
        for (const e of entries) e.reject(error)
        return
      }
    }
    // Refused, but not for the connection: one result among several. Write them again one by
    // one, so that only a result at fault fails.
    for (const e of entries) {
      try {
        const [result] = await write([e.item])
        e.resolve(result)
      } catch (error) {
        e.reject(error)
      }
    }
  }
}
