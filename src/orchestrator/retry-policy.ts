/**
 * What becomes of a failed attempt (SPEC §5), as a pure function with its own unit test (River's
 * retry_policy.go): retry after a backoff while attempts are left and the failure is retryable,
 * else the run ends `failed` (or `timeout` when the last attempt timed out) in the DLQ.
 */
export interface RetrySettings {
  retries: number
  retryBackoff: 'fixed' | 'exponential'
  retryDelayMs: number
  maxRetryDelayMs: number
}

export interface AttemptFailure {
  retryable: boolean
  timedOut: boolean
}

export type FailureDecision =
  | { retry: true; delayMs: number }
  | { retry: false; status: 'failed' | 'timeout' }

/** A run has 1 + retries attempts; `attempt` is the one that failed (first = 1). */
export function decideFailure(settings: RetrySettings, attempt: number, failure: AttemptFailure): FailureDecision {
  if (failure.retryable && attempt < 1 + settings.retries) {
    return { retry: true, delayMs: backoffMs(settings, attempt) }
  }
  return { retry: false, status: failure.timedOut ? 'timeout' : 'failed' }
}

/** fixed: retryDelayMs; exponential: min(maxRetryDelayMs, retryDelayMs × 2^(attempt−1)). */
export function backoffMs(settings: RetrySettings, attempt: number): number {
  if (settings.retryBackoff === 'fixed') return settings.retryDelayMs
  return Math.min(settings.maxRetryDelayMs, settings.retryDelayMs * 2 ** Math.max(0, attempt - 1))
}

/** A task's policy from its row; a run of an unknown task gets no retry. */
export function retrySettingsOf(row: { retries: number | null; retry_backoff: string | null; retry_delay_ms: number | null; max_retry_delay_ms: number | null }): RetrySettings {
  return {
    retries: row.retries ?? 0,
    retryBackoff: row.retry_backoff === 'fixed' ? 'fixed' : 'exponential',
    retryDelayMs: row.retry_delay_ms ?? 0,
    maxRetryDelayMs: row.max_retry_delay_ms ?? 0,
  }
}
