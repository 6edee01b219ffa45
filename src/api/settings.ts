/** Defaults of the orchestration settings shared by the API and `run` (SPEC §4, §5), in one place. */
import { optionalInt } from '../db/config'

export const ORCHESTRATION_DEFAULTS = {
  /** A heartbeat older than this marks an orchestrator dead; its runs go back to pending. */
  orchestratorStaleMs: 30_000,
  maintenanceCheckIntervalMs: 5000,
  pollIntervalMs: 1000,
  concurrency: 10,
  shutdownTimeoutMs: 30_000,
} as const

export function orchestratorStaleMs(env: Record<string, string | undefined> = process.env): number {
  return optionalInt(env, 'ORCHESTRATOR_STALE_MS', 1) ?? ORCHESTRATION_DEFAULTS.orchestratorStaleMs
}
