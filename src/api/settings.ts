/** Defaults of the orchestration settings shared by the API and `run` (SPEC §4, §5), in one place. */
import { optionalInt } from '../db/config'
import { UsageError } from '../errors'

export const ORCHESTRATION_DEFAULTS = {
  /** A heartbeat older than this marks an orchestrator dead; its runs go back to pending. */
  orchestratorStaleMs: 30_000,
  maintenanceCheckIntervalMs: 5000,
  pollIntervalMs: 1000,
  concurrency: 10,
  shutdownTimeoutMs: 30_000,
} as const

/** Timers take at most 2^31 − 1 ms: a day bounds every interval and the stale time. */
export const MAX_INTERVAL_MS = 86_400_000

/** ORCHESTRATOR_STALE_MS, checked before anything connects or registers (exit 2 when out of range). */
export function orchestratorStaleMs(env: Record<string, string | undefined> = process.env): number {
  const value = optionalInt(env, 'ORCHESTRATOR_STALE_MS', 1)
  if (value === undefined) return ORCHESTRATION_DEFAULTS.orchestratorStaleMs
  if (value > MAX_INTERVAL_MS) {
    throw new UsageError('INVALID_SETTING', `ORCHESTRATOR_STALE_MS="${env.ORCHESTRATOR_STALE_MS}" is more than a day (${MAX_INTERVAL_MS} ms)`, {
      hint: 'use a stale time of seconds to minutes (default 30000)',
    })
  }
  return value
}
