/**
 * Crash recovery (SPEC §5): orchestrators whose heartbeat is older than the stale time leave
 * `orchestrators`, and every run still `running` without a live holder is failed with
 * "orchestrator lost". It uses up its attempt (so a run that kills its orchestrator every time
 * ends in the DLQ instead of looping), and one handed back is due at once: the worker did not
 * fail, and crashed work must hold a drain (SPEC §4), not slip past it as "scheduled".
 * Run by every drain check: every live orchestrator's, every maintenance:* command's, and start.
 */
import type { Queryable } from '../db/database'
import { decideFailure, retrySettingsOf } from '../orchestrator/retry-policy'
import * as orchestrators from '../sql/orchestrators'
import * as runs from '../sql/task-runs'

export interface LostRun {
  id: string
  taskId: string
  /** The attempt its orchestrator held. */
  attempt: number
  outcome: 'retried' | 'failed' | 'timeout'
}

export async function returnLostRuns(db: Queryable, staleMs: number): Promise<LostRun[]> {
  // Its own statement, committed before the runs are read: a claim in flight holds its
  // orchestrator's row, so the delete waits for it, and the read below sees what it claimed.
  await db.query(orchestrators.reap, [staleMs])
  const { rows } = await db.query<{
    id: string; task_id: string; attempt: number; orchestrator_id: string | null
    retries: number | null; retry_backoff: string | null; retry_delay_ms: number | null; max_retry_delay_ms: number | null
  }>(runs.lostRuns)
  if (rows.length === 0) return []
  const items = rows.map((r) => {
    const decision = decideFailure(retrySettingsOf(r), r.attempt, { retryable: true, timedOut: false })
    return {
      id: r.id, attempt: r.attempt, orchestrator: r.orchestrator_id, error: 'orchestrator lost', code: 'ORCHESTRATOR_LOST',
      retry: decision.retry, delayMs: 0, status: decision.retry ? null : decision.status,
    }
  })
  // Fenced like any failure: a second reaper at the same moment hands each run back once.
  const { rows: outcomes } = await db.query<{ run_id: string; outcome: LostRun['outcome'] | 'fenced' }>(runs.failRuns, [JSON.stringify(items)])
  const byId = new Map(rows.map((r) => [r.id, r]))
  return outcomes
    .filter((o): o is { run_id: string; outcome: LostRun['outcome'] } => o.outcome !== 'fenced')
    .map((o) => ({ id: o.run_id, taskId: byId.get(o.run_id)!.task_id, attempt: byId.get(o.run_id)!.attempt, outcome: o.outcome }))
}
