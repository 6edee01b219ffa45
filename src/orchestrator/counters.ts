/**
 * Counts an orchestrator keeps of its own work for /metrics (src/http/metrics.ts reads them at each
 * scrape). Plain maps, written on the loop's path without a lock or an allocation per event: a
 * scrape reads whatever they hold then.
 */
export interface FlowCounters {
  /**
   * Per task, the claims this orchestrator found held back by the task's rate limit (SPEC §7), since
   * it started: `pipeweave_task_rate_limited_total{task}`. The claimer adds to it (countRateLimited).
   */
  readonly rateLimited: Map<string, number>
}

export function newFlowCounters(): FlowCounters {
  return { rateLimited: new Map() }
}

/** `n` more claims of task `taskId` held back by its rate limit. */
export function countRateLimited(counters: FlowCounters, taskId: string, n = 1): void {
  counters.rateLimited.set(taskId, (counters.rateLimited.get(taskId) ?? 0) + n)
}
