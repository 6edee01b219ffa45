/**
 * Completed runs are written in batches (graphile-worker's completeJobBatchDelay, without the
 * delay): a result is sent at once when no write is in flight, and the results that arrive while
 * one is in flight go together in the next. An idle orchestrator writes each result as soon as it
 * has it; a busy one pays one round trip and one commit for many runs, not one each.
 *
 * Each run keeps its own outcome: the caller gets the result of its run, or the error that
 * stopped it being written. A batch the database refuses for a reason other than the connection
 * (one worker's output that jsonb cannot hold) is written again one run at a time, so that only
 * the run at fault fails.
 *
 * A batch may also claim runs for the slots it frees (ClaimAlong), in the same statement.
 */
import { isConnectionLoss } from '../db/errors'
import type { ClaimedRun, CompleteResult, Completion, Repository } from './repository'

/**
 * The orchestrator's side of claiming along with a batch: the slots a batch frees are filled by a
 * claim in the same statement (one round trip, not two) when the orchestrator allows it.
 */
export interface ClaimAlong {
  /** Runs to claim with a batch that frees `freed` slots when it commits; undefined for none. Held until settled. */
  reserve(freed: number): Reservation | undefined
  /** The batch committed: its claim returned `runs` (perhaps fewer than reserved). Called before the completions resolve. */
  claimed(reservation: Reservation, runs: ClaimedRun[], batch: Completion[]): void
  /** The batch failed: a claim whose answer was lost may have committed all the same. */
  failed(reservation: Reservation, error: unknown): void
}

export interface Reservation {
  readonly count: number
}

/** Results per statement at most: bounds the statement's size and the time its locks are held. */
export const MAX_BATCH = 100

interface Pending {
  completion: Completion
  resolve: (result: CompleteResult) => void
  reject: (error: unknown) => void
}

export class CompletionWriter {
  private queue: Pending[] = []
  private writing = 0
  private scheduled = false

  constructor(
    private readonly repo: Pick<Repository, 'completeMany' | 'completeAndClaim'>,
    private readonly claimAlong?: ClaimAlong,
    /** Batches written at once, each on a connection of its own. */
    private readonly maxWriting = 1,
    private readonly maxBatch = MAX_BATCH,
  ) {}

  complete(completion: Completion): Promise<CompleteResult> {
    return new Promise<CompleteResult>((resolve, reject) => {
      this.queue.push({ completion, resolve, reject })
      this.schedule()
    })
  }

  private schedule(): void {
    if (this.scheduled || this.writing >= this.maxWriting || this.queue.length === 0) return
    this.scheduled = true
    // setImmediate, not a microtask: the other answers read in this turn of the event loop join
    // this batch, and the runs of the batch before finish their bookkeeping (and leave their
    // slots) before this one counts the slots it may claim.
    setImmediate(() => {
      this.scheduled = false
      if (this.writing >= this.maxWriting || this.queue.length === 0) return
      const batch = this.queue.splice(0, this.maxBatch)
      this.writing += 1
      void this.write(batch).finally(() => {
        this.writing -= 1
        this.schedule()
      })
      this.schedule()
    })
  }

  /** Settles every promise of the batch, whatever happens. */
  private async write(batch: Pending[]): Promise<void> {
    const completions = batch.map((p) => p.completion)
    const reservation = this.claimAlong?.reserve(batch.length)
    let written: { results: CompleteResult[]; claimed: ClaimedRun[] }
    try {
      written = reservation
        ? await this.repo.completeAndClaim(completions, reservation.count)
        : { results: await this.repo.completeMany(completions), claimed: [] }
    } catch (error) {
      if (reservation) this.claimAlong!.failed(reservation, error)
      if (isConnectionLoss(error) || (batch.length === 1 && !reservation)) {
        // The connection: each caller decides (it retries until the database is back). A single
        // completion refused on its own: the caller records that run's failure.
        for (const p of batch) p.reject(error)
        return
      }
      // Refused, but not for the connection: the claim, or one result among several. Write the
      // completions again without a claim, one by one, so that only a result at fault fails.
      await this.writeOneByOne(batch)
      return
    }
    // The claimed runs start before the completed ones leave: no moment with the slots unfilled.
    if (reservation) this.claimAlong!.claimed(reservation, written.claimed, completions)
    batch.forEach((p, i) => p.resolve(written.results[i]))
  }

  /** Each completion in a statement of its own. */
  private async writeOneByOne(batch: Pending[]): Promise<void> {
    for (const p of batch) {
      try {
        const [result] = await this.repo.completeMany([p.completion])
        p.resolve(result)
      } catch (error) {
        p.reject(error)
      }
    }
  }
}
