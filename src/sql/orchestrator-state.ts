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
 * Runs of paused tasks (their own pause or their service's, SPEC §7) do not hold a drain: they are
 * left out of pending and scheduled and counted per paused task instead (`paused`, a JSON array
 * of { id, pendingRuns }, every paused task, by id: the claim index's range of each). Runs held by
 * an open breaker do hold it, and are counted per service (`breakers`: { service, openUntil,
 * pendingRuns } for each breaker open or half-open, the due runs of its unpaused tasks).
 */
export const status = statement('maintenance_status', (s) => `
  WITH paused_tasks AS MATERIALIZED (
    SELECT t.id FROM ${s.q}.tasks t JOIN ${s.q}.services sv ON sv.id = t.service_id
     WHERE t.paused_at IS NOT NULL OR sv.paused_at IS NOT NULL
  )
  SELECT st.mode, st.mode_changed_at, st.reason,
         (SELECT count(*) FROM ${s.q}.task_runs r WHERE r.status = 'pending' AND r.due_at <= now()
             AND r.task_id <> ALL (ARRAY(SELECT p.id FROM paused_tasks p)))::int AS pending,
         (SELECT count(*) FROM ${s.q}.task_runs r WHERE r.status = 'running')::int AS running,
         (SELECT count(*) FROM ${s.q}.task_runs r WHERE r.status = 'pending' AND r.due_at > now()
             AND r.task_id <> ALL (ARRAY(SELECT p.id FROM paused_tasks p)))::int AS scheduled,
         (SELECT count(*) FROM ${s.q}.orchestrators o
           WHERE o.heartbeat_at > now() - $1::int * interval '1 millisecond')::int AS live,
         (SELECT COALESCE(json_agg(json_build_object('id', p.id, 'pendingRuns',
                   (SELECT count(*) FROM ${s.q}.task_runs r WHERE r.status = 'pending' AND r.task_id = p.id)) ORDER BY p.id), '[]')
            FROM paused_tasks p) AS paused,
         (SELECT COALESCE(json_agg(json_build_object('service', sv.id, 'openUntil', sv.breaker_open_until, 'pendingRuns',
                   (SELECT COALESCE(sum((SELECT count(*) FROM ${s.q}.task_runs r WHERE r.status = 'pending' AND r.task_id = t.id AND r.due_at <= now())), 0)
                      FROM ${s.q}.tasks t WHERE t.service_id = sv.id AND t.id <> ALL (ARRAY(SELECT p.id FROM paused_tasks p)))) ORDER BY sv.id), '[]')
            FROM ${s.q}.services sv
           WHERE sv.breaker_enabled AND sv.breaker_open_until IS NOT NULL
             AND (sv.breaker_expires_at IS NULL OR sv.breaker_expires_at > now())) AS breakers
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
