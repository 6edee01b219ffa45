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

/** The longest cool-down and open time the breaker columns hold (integer milliseconds: ~24 days). */
const MAX_BREAKER_MS = 2_147_483_647

/**
 * The service breaker's settings for `run` (SPEC §7), checked before anything connects (exit 2
 * naming the variable): PIPEWEAVE_BREAKER_COOLDOWN_MS, the cool-down of a breaker that opens
 * (default 30 s; doubled on each reopening, at most 5 min or this if longer), and
 * PIPEWEAVE_BREAKER_MAX_OPEN_MS, how long it may stay open before connect failures use attempts
 * again (default 1 h).
 */
export function breakerSettings(env: Record<string, string | undefined> = process.env): { cooldownMs: number; maxOpenMs: number } {
  const read = (name: string, fallback: number, limit: number, what: string) => {
    const value = optionalInt(env, name, 1)
    if (value === undefined) return fallback
    if (value > limit) {
      throw new UsageError('INVALID_SETTING', `${name}="${env[name]}" is more than ${what} (${limit} ms)`, {
        hint: `fix or unset ${name} (default ${fallback})`,
      })
    }
    return value
  }
  return {
    cooldownMs: read('PIPEWEAVE_BREAKER_COOLDOWN_MS', BREAKER_DEFAULTS.cooldownMs, MAX_INTERVAL_MS, 'a day'),
    maxOpenMs: read('PIPEWEAVE_BREAKER_MAX_OPEN_MS', BREAKER_DEFAULTS.maxOpenMs, MAX_BREAKER_MS, 'the longest open time pipeweave keeps'),
  }
}

/** The breaker's defaults (SPEC §7): a 30 s cool-down, open for at most an hour. */
export const BREAKER_DEFAULTS = Object.freeze({ cooldownMs: 30_000, maxOpenMs: 3_600_000 })
