-- The rules every writer of task runs must obey, whichever binary version it is (SPEC §3): the
-- maintenance gate and a task's room under its concurrency limit. Everything else of the run life
-- cycle is plain SQL carried by the binary (src/sql/), so a change to the claim is an ordinary
-- diff. These live here because a lock and the read it protects cannot share one statement (the
-- statement's snapshot is taken before the lock is granted): each function takes its lock, then
-- reads in a statement of its own, with a fresh snapshot. They are versioned by name: a changed
-- rule is a new function (_v2) in a new migration, and binaries still calling _v1 keep its
-- meaning during a rolling deploy.

-- The shared side of the maintenance gate (SPEC §4), for enqueue: take the gate shared, then read
-- the mode. Held until the caller's transaction ends, so a mode change (the trigger of 001 takes
-- the gate exclusive) waits for the enqueue to commit and is never overtaken by it.
CREATE FUNCTION pipeweave_gate_v1() RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtextextended(current_schema() || '/gate', 0));
  RETURN (SELECT s.mode FROM orchestrator_state s WHERE s.id = 'singleton');
END
$$;

-- The claim's gate (SPEC §5): the orchestrator's own registration, then the maintenance gate.
-- Returns 'unregistered' when the orchestrator has no row, or none heartbeated within
-- p_lease_ms (it must register again before it claims), else the mode.
--   * Claim fencing: the row is locked FOR KEY SHARE until the claim commits. A reaper deletes
--     the row of a dead orchestrator before it hands back that orchestrator's runs, so it waits
--     for a claim in flight, and a claim after the reaping finds no row.
--   * The gate is waited for at most 5 s (lock_timeout; 55P03 then, and the orchestrator tries
--     again): a runbook's transaction left open on orchestrator_state holds it for as long as it
--     likes, and a claim must never commit runs its orchestrator stopped waiting for.
CREATE FUNCTION pipeweave_claim_gate_v1(p_orchestrator_id text, p_lease_ms integer) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT SET lock_timeout = '5s' AS $$
BEGIN
  PERFORM 1 FROM orchestrators o
   WHERE o.id = p_orchestrator_id AND o.heartbeat_at > now() - p_lease_ms * interval '1 millisecond'
     FOR KEY SHARE;
  IF NOT FOUND THEN
    RETURN 'unregistered';
  END IF;
  PERFORM pg_advisory_xact_lock_shared(hashtextextended(current_schema() || '/gate', 0));
  RETURN (SELECT s.mode FROM orchestrator_state s WHERE s.id = 'singleton');
END
$$;

-- A task's room under its concurrency limit (SPEC §5), for a claim: NULL when the task has no
-- limit, else how many more of its runs may start now. SKIP LOCKED cannot enforce a count across
-- orchestrators, so the count is taken under the task's own transaction-level lock, held until the
-- claim commits: the next claimer of the task counts the runs this one started. A task whose lock
-- another claim holds right now has no room this round (0), rather than being waited for.
CREATE FUNCTION pipeweave_task_room_v1(p_task_id text) RETURNS integer LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT AS $$
DECLARE
  v_limit integer;
BEGIN
  SELECT t.concurrency INTO v_limit FROM tasks t WHERE t.id = p_task_id;
  IF v_limit IS NULL OR v_limit = 0 THEN
    RETURN NULL;
  END IF;
  IF NOT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '/task/' || p_task_id, 0)) THEN
    RETURN 0;
  END IF;
  RETURN GREATEST(0, v_limit - (SELECT count(*) FROM task_runs r                  -- task_runs_running_idx
                                  WHERE r.status = 'running' AND r.task_id = p_task_id));
END
$$;
