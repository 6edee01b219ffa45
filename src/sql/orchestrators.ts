/** SQL on `orchestrators`: registration, heartbeat and reaping of `pipeweave run` processes. */
import { statement } from './schema'

/**
 * Register, or heartbeat: an orchestrator whose row was reaped (it looked dead) comes back as a
 * new registration (`inserted`). The heartbeat is a HOT update (no index names heartbeat_at).
 */
export const heartbeat = statement('orchestrator_heartbeat', (s) => `
  INSERT INTO ${s.q}.orchestrators (id, host, pid, version, concurrency) VALUES ($1, $2, $3, $4, $5)
  ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
  RETURNING (xmax = 0) AS inserted`)

export const deregister = statement('orchestrator_deregister', (s) => `
  DELETE FROM ${s.q}.orchestrators WHERE id = $1`)

/**
 * Reap the orchestrators whose heartbeat is older than $1 ms. Nobody could heartbeat while the
 * server was down: after a restart, heartbeats count from the moment it came back, so live
 * orchestrators get a full stale period to reach it again. A claim in flight holds its
 * orchestrator's row (pipeweave_claim_gate_v1), so this waits for it: the runs it claimed are then
 * seen by the hand-back that follows (claim fencing, SPEC §5).
 */
export const reap = statement('reap_orchestrators', (s) => `
  DELETE FROM ${s.q}.orchestrators o
   WHERE GREATEST(o.heartbeat_at, pg_postmaster_start_time()) < now() - $1::int * interval '1 millisecond'
  RETURNING o.id`)
