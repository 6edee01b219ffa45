/** SQL on `orchestrator_state` (the single mode row) and `maintenance_events`. */
import type { Statement } from '../db/database'

export const schemaPresent: Statement = {
  name: 'schema_present',
  text: `SELECT to_regclass('orchestrator_state') IS NOT NULL AS present`,
}

/** The mode and how many orchestrators heartbeated within $1 ms. */
export const modeAndLiveOrchestrators: Statement = {
  name: 'mode_and_live_orchestrators',
  text: `SELECT s.mode,
                (SELECT count(*)::int FROM orchestrators o
                  WHERE o.heartbeat_at > now() - $1::int * interval '1 millisecond') AS live
           FROM orchestrator_state s
          WHERE s.id = 'singleton'`,
}

export const currentMode: Statement = {
  name: 'current_mode',
  text: `SELECT mode FROM orchestrator_state WHERE id = 'singleton'`,
}

/**
 * maintenance:status in one snapshot. The counts are served by task_runs_active_idx:
 * due pending, running, pending scheduled for later; live = heartbeat within $1 ms.
 */
export const status: Statement = {
  name: 'maintenance_status',
  text: `SELECT s.mode, s.mode_changed_at, s.reason,
                (SELECT count(*) FROM task_runs r WHERE r.status = 'pending'
                    AND (r.scheduled_for IS NULL OR r.scheduled_for <= now()))::int AS pending,
                (SELECT count(*) FROM task_runs r WHERE r.status = 'running')::int AS running,
                (SELECT count(*) FROM task_runs r WHERE r.status = 'pending'
                    AND r.scheduled_for > now())::int AS scheduled,
                (SELECT count(*) FROM orchestrators o
                  WHERE o.heartbeat_at > now() - $1::int * interval '1 millisecond')::int AS live
           FROM orchestrator_state s
          WHERE s.id = 'singleton'`,
}

/** The newest $1 mode changes; maintenance_events_at_idx. */
export const history: Statement = {
  name: 'maintenance_history',
  text: `SELECT from_mode, to_mode, at, actor, reason FROM maintenance_events ORDER BY at DESC, id DESC LIMIT $1::int`,
}

/** The drain check (migration 002): hand back runs of dead orchestrators, finish a drain. */
export const drainCheck: Statement = {
  name: 'drain_check',
  text: `SELECT mode, changed, lost_runs, lost FROM pipeweave_drain_check($1::int, $2::text)`,
}

export const requestMaintenance: Statement = {
  name: 'request_maintenance',
  text: `SELECT mode, changed FROM pipeweave_request_maintenance($1::text, $2::text, $3::int)`,
}

export const enterMaintenance: Statement = {
  name: 'enter_maintenance',
  text: `SELECT mode, changed, running_runs FROM pipeweave_enter_maintenance($1::text, $2::text, $3::int)`,
}

export const exitMaintenance: Statement = {
  name: 'exit_maintenance',
  text: `SELECT mode, changed FROM pipeweave_exit_maintenance($1::text, $2::text)`,
}
