/**
 * SQL on `orchestrator_state` (the single mode row) and `maintenance_events` (SPEC §4). A mode
 * change is a transaction of separate statements (src/maintenance/maintenance.ts): the state row
 * locked first, then the gate taken exclusive, then what the change depends on counted in a
 * statement of its own (a statement's snapshot is taken before the locks it waits for), then the
 * UPDATE, whose trigger (migration 001) records the event and notifies.
 */
import { statement } from './schema'
import { workRemains } from './task-runs'

export const schemaPresent = statement('schema_present', (s) => `
  SELECT to_regclass(${s.literal} || '.orchestrator_state') IS NOT NULL AS present`)

/** The mode and how many orchestrators heartbeated within $1 ms. */
export const modeAndLiveOrchestrators = statement('mode_and_live_orchestrators', (s) => `
  SELECT st.mode,
         (SELECT count(*)::int FROM ${s.q}.orchestrators o
           WHERE o.heartbeat_at > now() - $1::int * interval '1 millisecond') AS live
    FROM ${s.q}.orchestrator_state st
   WHERE st.id = 'singleton'`)

export const currentMode = statement('current_mode', (s) => `
  SELECT mode FROM ${s.q}.orchestrator_state WHERE id = 'singleton'`)

/**
 * maintenance:status in one snapshot: due pending, running, pending scheduled for later (all
 * live work: task_runs_claim_idx, task_runs_running_idx); live = heartbeat within $1 ms.
 * Due pending runs of paused tasks (the task's pause or its service's) are not `pending` (they
 * do not hold a drain, SPEC §7): `paused` counts them, and `paused_tasks` names the paused tasks
 * that hold any, by id.
 */
export const status = statement('maintenance_status', (s) => `
  WITH paused AS MATERIALIZED (
    SELECT ARRAY(
      SELECT t.id FROM ${s.q}.tasks t JOIN ${s.q}.services sv ON sv.id = t.service_id
       WHERE t.paused_at IS NOT NULL OR sv.paused_at IS NOT NULL) AS ids
  ), held AS MATERIALIZED (
    SELECT r.task_id, count(*)::int AS n FROM ${s.q}.task_runs r
     WHERE r.status = 'pending' AND r.due_at <= now() AND r.task_id = ANY ((SELECT p.ids FROM paused p)::text[])
     GROUP BY r.task_id
  )
  SELECT st.mode, st.mode_changed_at, st.reason,
         ((SELECT count(*) FROM ${s.q}.task_runs r WHERE r.status = 'pending' AND r.due_at <= now())
           - (SELECT COALESCE(sum(h.n), 0) FROM held h))::int AS pending,
         (SELECT COALESCE(sum(h.n), 0) FROM held h)::int AS paused,
         ARRAY(SELECT h.task_id FROM held h ORDER BY h.task_id) AS paused_tasks,
         (SELECT count(*) FROM ${s.q}.task_runs r WHERE r.status = 'running')::int AS running,
         (SELECT count(*) FROM ${s.q}.task_runs r WHERE r.status = 'pending' AND r.due_at > now())::int AS scheduled,
         (SELECT count(*) FROM ${s.q}.orchestrators o
           WHERE o.heartbeat_at > now() - $1::int * interval '1 millisecond')::int AS live
    FROM ${s.q}.orchestrator_state st
   WHERE st.id = 'singleton'`)

/** The newest $1 mode changes; maintenance_events_at_idx. */
export const history = statement('maintenance_history', (s) => `
  SELECT from_mode, to_mode, at, actor, reason FROM ${s.q}.maintenance_events ORDER BY at DESC, id DESC LIMIT $1::int`)

// ---------------------------------------------------------------------------------------------
// A mode change, step by step (one transaction)

/** Step 1: the state row, locked (every mode change locks it first, then the gate). */
export const lockState = statement('lock_orchestrator_state', (s) => `
  SELECT mode, reason FROM ${s.q}.orchestrator_state WHERE id = 'singleton' FOR UPDATE`)

/** Step 2: the gate, exclusive: waits for every enqueue and claim in flight, holds off new ones. */
export const takeGate = statement('take_gate_exclusive', (s) => `
  SELECT pg_advisory_xact_lock(${s.gateKey})`)

/** Step 3: drained? No running run and no due pending one, counted after the gate (a new snapshot). */
export const drained = statement('drained', (s) => `
  SELECT NOT remains AS drained FROM (${workRemains(s).text}) AS w`)

/** How many runs are running (maintenance:enter's rule), counted after the gate. */
export const runningCount = statement('running_count', (s) => `
  SELECT count(*)::int AS running FROM ${s.q}.task_runs r WHERE r.status = 'running'`)

/**
 * Step 4: set the mode to $1, recorded with actor $2 and reason $3 (the trigger reads them from
 * these transaction-local settings). Returns the row only when the mode changed.
 */
export const setMode = statement('set_mode', (s) => `
  WITH who AS MATERIALIZED (
    SELECT set_config('pipeweave.actor', $2::text, true) AS actor, set_config('pipeweave.reason', COALESCE($3::text, ''), true) AS reason
  )
  UPDATE ${s.q}.orchestrator_state st SET mode = $1::text
   WHERE st.id = 'singleton' AND st.mode <> $1::text AND EXISTS (SELECT 1 FROM who)
  RETURNING st.mode`)
