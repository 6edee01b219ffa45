-- The maintenance gate and the life cycle of a task run (SPEC §4, §5), as functions so that each
-- step is one round trip and one transaction, and works through a transaction pooler (only
-- transaction-level locks, no session state).
--
-- The gate is the advisory lock 7020304957001 (src/sql/locks.ts MODE_GATE_LOCK):
--   * enqueue and claim take it SHARED, then read the mode in a new statement, so the mode they
--     read is at least as new as any change that committed before they got the lock;
--   * every mode change takes it EXCLUSIVE (in the trigger below, so a runbook's UPDATE waits its
--     turn too), which waits for every enqueue and claim in flight and holds off new ones.
-- Lock order everywhere a mode change is made: the orchestrator_state row first, then the gate.
-- Enqueue and claim never lock that row, so the two orders cannot deadlock.

-- ---------------------------------------------------------------------------------------------
-- Mode changes: the gate, mode_changed_at, and one maintenance_events row per actual change.
-- pipeweave sets `pipeweave.actor` / `pipeweave.reason` (transaction-local) before it changes the
-- mode; a change made directly in SQL has neither, and is recorded with the database user and
-- application_name as actor.
CREATE FUNCTION pipeweave_mode_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_actor  text := NULLIF(current_setting('pipeweave.actor', true), '');
  v_reason text := NULLIF(current_setting('pipeweave.reason', true), '');
BEGIN
  IF NEW.mode IS NOT DISTINCT FROM OLD.mode THEN
    RETURN NEW;
  END IF;
  PERFORM pg_advisory_xact_lock(7020304957001);
  NEW.mode_changed_at := clock_timestamp();
  IF v_actor IS NULL THEN
    v_actor := current_user || ' (' || COALESCE(NULLIF(current_setting('application_name', true), ''), 'sql') || ')';
    -- A runbook UPDATE that did not set a reason must not inherit the previous one.
    IF NEW.reason IS NOT DISTINCT FROM OLD.reason THEN
      NEW.reason := NULL;
    END IF;
  ELSE
    NEW.reason := v_reason;
  END IF;
  INSERT INTO maintenance_events (from_mode, to_mode, at, actor, reason)
  VALUES (OLD.mode, NEW.mode, NEW.mode_changed_at, v_actor, NEW.reason);
  -- Orchestrators LISTEN on this: a resume after maintenance:exit is immediate.
  PERFORM pg_notify('pipeweave_mode', NEW.mode);
  RETURN NEW;
END
$$;

CREATE TRIGGER pipeweave_mode_changed BEFORE UPDATE OF mode ON orchestrator_state
  FOR EACH ROW EXECUTE FUNCTION pipeweave_mode_changed();

-- ---------------------------------------------------------------------------------------------
-- task_runs.limited (migration 001) follows the run's task: set on every insert, whatever inserts
-- the row, and updated for live runs when a task gains or loses its concurrency limit.
CREATE FUNCTION pipeweave_run_limited() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- FOR SHARE: a registration changing this task's limit holds its row until it commits, and
  -- its trigger below updates only the runs it can see. Reading the task under a lock that
  -- waits for such a registration means a run inserted meanwhile reads the new limit; one
  -- inserted first is committed before the registration's update, which then sees it.
  NEW.limited := COALESCE((SELECT t.concurrency > 0 FROM tasks t WHERE t.id = NEW.task_id FOR SHARE), false);
  RETURN NEW;
END
$$;

CREATE TRIGGER pipeweave_run_limited BEFORE INSERT ON task_runs
  FOR EACH ROW EXECUTE FUNCTION pipeweave_run_limited();

CREATE FUNCTION pipeweave_task_limit_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (OLD.concurrency > 0) IS DISTINCT FROM (NEW.concurrency > 0) THEN
    UPDATE task_runs r SET limited = NEW.concurrency > 0                -- task_runs_active_idx
     WHERE r.task_id = NEW.id AND r.status IN ('pending', 'running', 'waiting');
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER pipeweave_task_limit_changed AFTER UPDATE OF concurrency ON tasks
  FOR EACH ROW EXECUTE FUNCTION pipeweave_task_limit_changed();

-- ---------------------------------------------------------------------------------------------
-- Enqueue (tasks:enqueue, enqueueTask). Refused unless the mode is `running` (SQLSTATE PWMNT),
-- unknown task PWTSK. Idempotency (SPEC §5): an unexpired cache entry, or a pending/running run
-- with the same (task, key), is returned instead of a new run; the partial unique index
-- task_runs_idempotency_active_uidx decides between concurrent enqueues, not a read-then-insert.
CREATE FUNCTION pipeweave_enqueue(
  p_task_id text,
  p_input jsonb,
  p_priority integer,
  p_idempotency_key text,
  p_delay_ms bigint,
  p_input_path text,
  p_pipeline_run_id text
) RETURNS TABLE (run_id text, deduplicated boolean) LANGUAGE plpgsql AS $$
DECLARE
  v_mode text;
  v_priority integer;
  v_id text;
BEGIN
  PERFORM pg_advisory_xact_lock_shared(7020304957001);
  -- A new statement, so a new snapshot: taken after the gate, it sees any committed mode change.
  SELECT s.mode INTO v_mode FROM orchestrator_state s WHERE s.id = 'singleton';
  IF v_mode IS DISTINCT FROM 'running' THEN
    RAISE EXCEPTION 'new task runs are refused: the mode is %', v_mode USING ERRCODE = 'PWMNT', DETAIL = v_mode;
  END IF;
  SELECT t.priority INTO v_priority FROM tasks t WHERE t.id = p_task_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown task %', p_task_id USING ERRCODE = 'PWTSK';
  END IF;
  LOOP
    IF p_idempotency_key IS NOT NULL THEN
      SELECT c.task_run_id INTO v_id FROM idempotency_cache c
       WHERE c.task_id = p_task_id AND c.idempotency_key = p_idempotency_key AND c.expires_at > now();
      IF FOUND THEN
        RETURN QUERY SELECT v_id, true;
        RETURN;
      END IF;
    END IF;
    INSERT INTO task_runs (task_id, input, priority, idempotency_key, scheduled_for, input_path, pipeline_run_id)
    VALUES (p_task_id, p_input, COALESCE(p_priority, v_priority), p_idempotency_key,
            CASE WHEN p_delay_ms > 0 THEN clock_timestamp() + p_delay_ms * interval '1 millisecond' END,
            p_input_path, p_pipeline_run_id)
    ON CONFLICT (task_id, idempotency_key)
      WHERE idempotency_key IS NOT NULL AND status IN ('pending', 'running')
    DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NOT NULL THEN
      IF COALESCE(p_delay_ms, 0) <= 0 THEN
        PERFORM pg_notify('pipeweave_runs', '');
      END IF;
      RETURN QUERY SELECT v_id, false;
      RETURN;
    END IF;
    SELECT r.id INTO v_id FROM task_runs r
     WHERE r.task_id = p_task_id AND r.idempotency_key = p_idempotency_key AND r.status IN ('pending', 'running');
    IF FOUND THEN
      RETURN QUERY SELECT v_id, true;
      RETURN;
    END IF;
    -- The run holding the key finished between our insert and our look: go round again
    -- (its output may be in the cache by now).
  END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Claim (SPEC §5): at most p_limit due pending runs, lowest priority then oldest, never while the
-- mode is `maintenance`, and never more running runs of a task than its `concurrency` (0 = no
-- limit) across all orchestrators. Rows are taken FOR UPDATE SKIP LOCKED, so orchestrators claim
-- side by side; SKIP LOCKED cannot enforce a count, so a limited task is claimed only under its
-- own transaction-level advisory lock (class 70203): counting and claiming are one step. A task
-- whose lock another orchestrator holds right now is skipped this round, not waited for.
-- Unlimited tasks take no such lock. Each kind of pending run has its partial index (migration
-- 001): due now, due at last after a not-before time, and runs of limited tasks; the candidates of
-- the three are merged in claim order, and the rows locked but not chosen are free at commit.
--
-- Plans: every statement below runs on a cached generic plan (plan_cache_mode, restored when the
-- function returns). With the default, PostgreSQL re-planned the candidates query at every call
-- (a custom plan for each p_limit): about 1 ms of planning per claim, more than the claim's work.
-- The generic plans are the ones wanted whatever the limit: each candidate query walks its partial
-- index in claim order (a seq scan would read all history), and the chosen runs are then updated
-- by primary key, not joined to the candidates, which a generic plan would do by hash over the table.
CREATE FUNCTION pipeweave_claim_runs(p_orchestrator_id text, p_limit integer)
RETURNS TABLE (
  id text, task_id text, pipeline_run_id text, attempt integer, priority integer, input jsonb,
  input_path text, previous_attempts jsonb, idempotency_key text, created_at timestamptz,
  started_at timestamptz, service_id text, base_url text, code_version integer, code_hash text,
  timeout_seconds integer, cached boolean, cached_output jsonb
) LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
  v_mode text;
  v_task record;
  v_room integer;
  v_picked_ids text[] := '{}';
  v_picked_priority integer[] := '{}';
  v_picked_created timestamptz[] := '{}';
  v_row record;
  v_chosen text[];
BEGIN
  IF p_limit IS NULL OR p_limit <= 0 THEN
    RETURN;
  END IF;
  -- Wait for the gate a bounded time (55P03 then; the orchestrator tries again): a claim must
  -- never outlive its client's patience and commit runs nobody is waiting for any more (a
  -- runbook's transaction left open on orchestrator_state holds the gate for as long as it likes).
  PERFORM set_config('lock_timeout', '5s', true);
  PERFORM pg_advisory_xact_lock_shared(7020304957001);
  PERFORM set_config('lock_timeout', '0', true);
  SELECT s.mode INTO v_mode FROM orchestrator_state s WHERE s.id = 'singleton';
  IF v_mode = 'maintenance' THEN
    RETURN;
  END IF;

  FOR v_task IN
    SELECT t.id, t.concurrency FROM tasks t
     WHERE EXISTS (SELECT 1 FROM task_runs r                    -- task_runs_claim_task_idx
                    WHERE r.task_id = t.id AND r.status = 'pending' AND r.limited
                      AND (r.scheduled_for IS NULL OR r.scheduled_for <= now()))
     ORDER BY t.id
  LOOP
    IF v_task.concurrency > 0 THEN
      CONTINUE WHEN NOT pg_try_advisory_xact_lock(70203, hashtext(v_task.id));
      SELECT v_task.concurrency - count(*) INTO v_room          -- task_runs_active_idx
        FROM task_runs r WHERE r.status = 'running' AND r.task_id = v_task.id;
    ELSE
      v_room := p_limit;  -- a flag left from a limit since removed: claimable like any other run
    END IF;
    CONTINUE WHEN v_room <= 0;
    FOR v_row IN
      SELECT r.id, r.priority, r.created_at FROM task_runs r     -- task_runs_claim_task_idx
       WHERE r.task_id = v_task.id AND r.status = 'pending' AND r.limited
         AND (r.scheduled_for IS NULL OR r.scheduled_for <= now())
       ORDER BY r.priority, r.created_at
       LIMIT LEAST(v_room, p_limit)
       FOR UPDATE SKIP LOCKED
    LOOP
      v_picked_ids := v_picked_ids || v_row.id;
      v_picked_priority := v_picked_priority || v_row.priority;
      v_picked_created := v_picked_created || v_row.created_at;
    END LOOP;
  END LOOP;

  WITH due_now AS (                                              -- task_runs_claim_idx
    SELECT r.id, r.priority, r.created_at FROM task_runs r
     WHERE r.status = 'pending' AND r.scheduled_for IS NULL AND NOT r.limited
     ORDER BY r.priority, r.created_at
     LIMIT p_limit
     FOR UPDATE SKIP LOCKED
  ), due_at_last AS (                                            -- task_runs_claim_scheduled_idx
    SELECT r.id, r.priority, r.created_at FROM task_runs r
     WHERE r.status = 'pending' AND r.scheduled_for IS NOT NULL AND r.scheduled_for <= now() AND NOT r.limited
     ORDER BY r.priority, r.created_at
     LIMIT p_limit
     FOR UPDATE SKIP LOCKED
  ), candidates AS (
    SELECT d.id, d.priority, d.created_at FROM due_now d
    UNION ALL
    SELECT d.id, d.priority, d.created_at FROM due_at_last d
    UNION ALL
    SELECT * FROM unnest(v_picked_ids, v_picked_priority, v_picked_created)
  )
  SELECT array_agg(c.id) INTO v_chosen
    FROM (SELECT c.id FROM candidates c ORDER BY c.priority, c.created_at LIMIT p_limit) AS c;
  IF v_chosen IS NULL THEN
    RETURN;
  END IF;

  RETURN QUERY
  WITH claimed AS (                                              -- task_runs_pkey
    UPDATE task_runs r
       SET status = 'running', started_at = clock_timestamp(), heartbeat_at = clock_timestamp(),
           orchestrator_id = p_orchestrator_id
     WHERE r.id = ANY (v_chosen)
    RETURNING r.*
  )
  SELECT c.id, c.task_id, c.pipeline_run_id, c.attempt, c.priority, c.input, c.input_path,
         c.previous_attempts, c.idempotency_key, c.created_at, c.started_at, t.service_id, s.base_url,
         t.code_version, t.code_hash, t.timeout_seconds, ic.task_id IS NOT NULL, ic.output
    FROM claimed c
    JOIN tasks t ON t.id = c.task_id
    JOIN services s ON s.id = t.service_id
    LEFT JOIN idempotency_cache ic
      ON ic.task_id = c.task_id AND ic.idempotency_key = c.idempotency_key AND ic.expires_at > now()
   ORDER BY c.priority, c.created_at;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Complete (SPEC §5): one transaction marks runs completed, fills the idempotency cache, and
-- creates the pipelines' follow-up runs (allowed ones only; created in any mode: they belong to
-- the work in flight and hold a drain). Fenced on the orchestrator: a run that was handed to
-- another orchestrator (its holder looked dead) is not overwritten; `completed` is then false.
--
-- Several runs at once: an orchestrator writes the results that arrived while its previous write
-- was in flight in one statement (one round trip, one commit, one pass over the indexes for all of
-- them), so its cost per run falls as it gets busier. p_results is a JSON array of
-- {"id", "output", "runNext": [task ids], "fromCache": bool}; one row comes back per element, in
-- the same order. Each run is completed exactly as if alone: its own fence, its own cache entry,
-- its own follow-ups. The unique index on active idempotency keys allows at most one running run
-- per (task, key), so no two results of a batch can write the same cache entry.
CREATE FUNCTION pipeweave_complete_runs(p_orchestrator_id text, p_results jsonb)
RETURNS TABLE (run_id text, completed boolean, mode text, follow_ups text[], ignored_next text[])
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
  v_ids text[];
  v_run record;
  v_item jsonb;
  v_task record;
  v_done text[] := '{}';
  v_extra jsonb := '{}';   -- run id → {"f": follow-up ids, "i": ignored names}, only for runs that have any
  v_follow_ups text[];
  v_ignored text[];
  v_next text;
  v_next_priority integer;
  v_id text;
  v_notify boolean := false;
BEGIN
  v_ids := ARRAY(SELECT x.value->>'id' FROM jsonb_array_elements(p_results) AS x(value));
  -- All the runs in one UPDATE, found by primary key (a generic plan, like the claim's); the loop
  -- only does more for those with an idempotency key or follow-ups. The status test is written
  -- `(…) IS TRUE` so that it cannot be an index condition: the planner, which counts few running
  -- runs, would otherwise walk task_runs_active_idx over every 'running' entry that the runs
  -- completed since the last vacuum left behind (700 µs a run instead of 150 in a busy drain).
  FOR v_run IN
    UPDATE task_runs r                                           -- task_runs_pkey
       SET status = 'completed', output = p_results->(array_position(v_ids, r.id) - 1)->'output',
           completed_at = clock_timestamp(), heartbeat_at = clock_timestamp(),
           error = NULL, error_code = NULL   -- an earlier attempt's failure stays in previous_attempts
     WHERE r.id = ANY (v_ids) AND (r.status = 'running') IS TRUE
       AND r.orchestrator_id IS NOT DISTINCT FROM p_orchestrator_id
    RETURNING r.id, r.task_id, r.idempotency_key, r.pipeline_run_id, r.output, array_position(v_ids, r.id) AS pos
  LOOP
    v_done := v_done || v_run.id;
    v_item := p_results->(v_run.pos - 1);
    CONTINUE WHEN v_run.idempotency_key IS NULL AND jsonb_array_length(COALESCE(v_item->'runNext', '[]')) = 0;
    SELECT t.idempotency_ttl_seconds, t.allowed_next INTO v_task FROM tasks t WHERE t.id = v_run.task_id;

    IF v_run.idempotency_key IS NOT NULL AND COALESCE(v_task.idempotency_ttl_seconds, 0) > 0
       AND NOT COALESCE((v_item->>'fromCache')::boolean, false) THEN
      INSERT INTO idempotency_cache (task_id, idempotency_key, task_run_id, output, cached_at, expires_at)
      VALUES (v_run.task_id, v_run.idempotency_key, v_run.id, v_run.output, now(),
              now() + v_task.idempotency_ttl_seconds * interval '1 second')
      ON CONFLICT (task_id, idempotency_key) DO UPDATE
        SET task_run_id = EXCLUDED.task_run_id, output = EXCLUDED.output,
            cached_at = EXCLUDED.cached_at, expires_at = EXCLUDED.expires_at;
    END IF;

    CONTINUE WHEN jsonb_array_length(COALESCE(v_item->'runNext', '[]')) = 0;
    v_follow_ups := '{}';
    v_ignored := '{}';
    FOR v_next IN SELECT jsonb_array_elements_text(v_item->'runNext') LOOP
      SELECT t.priority INTO v_next_priority FROM tasks t WHERE t.id = v_next;
      IF NOT FOUND OR NOT (v_next = ANY (v_task.allowed_next)) THEN
        v_ignored := v_ignored || v_next;
        CONTINUE;
      END IF;
      INSERT INTO task_runs (task_id, input, priority, pipeline_run_id, parent_run_id)
      VALUES (v_next, v_run.output, v_next_priority, v_run.pipeline_run_id, v_run.id)
      RETURNING id INTO v_id;
      v_follow_ups := v_follow_ups || v_id;
    END LOOP;
    v_notify := v_notify OR cardinality(v_follow_ups) > 0;
    v_extra := v_extra || jsonb_build_object(v_run.id, jsonb_build_object('f', to_jsonb(v_follow_ups), 'i', to_jsonb(v_ignored)));
  END LOOP;
  IF v_notify THEN
    PERFORM pg_notify('pipeweave_runs', '');
  END IF;

  RETURN QUERY
  SELECT x.id, x.id = ANY (v_done), m.mode,
         COALESCE(ARRAY(SELECT jsonb_array_elements_text(v_extra->x.id->'f')), '{}'),
         COALESCE(ARRAY(SELECT jsonb_array_elements_text(v_extra->x.id->'i')), '{}')
    FROM unnest(v_ids) WITH ORDINALITY AS x(id, ord)
   CROSS JOIN (SELECT s.mode FROM orchestrator_state s WHERE s.id = 'singleton') AS m
   ORDER BY x.ord;
END
$$;

-- One run (runbooks, tests): pipeweave_complete_runs with a single result.
CREATE FUNCTION pipeweave_complete_run(
  p_run_id text,
  p_orchestrator_id text,
  p_output jsonb,
  p_run_next text[],
  p_from_cache boolean
) RETURNS TABLE (completed boolean, mode text, follow_ups text[], ignored_next text[]) LANGUAGE sql AS $$
  SELECT c.completed, c.mode, c.follow_ups, c.ignored_next
    FROM pipeweave_complete_runs(p_orchestrator_id, jsonb_build_array(jsonb_build_object(
           'id', p_run_id, 'output', p_output, 'runNext', to_jsonb(COALESCE(p_run_next, '{}')),
           'fromCache', COALESCE(p_from_cache, false)))) AS c
$$;

-- ---------------------------------------------------------------------------------------------
-- Complete, then claim in the same transaction (SPEC §5): what a busy orchestrator sends when runs
-- finish, so that the slots they free are filled without a round trip of their own. The completion
-- is exactly pipeweave_complete_runs and the claim exactly pipeweave_claim_runs (the maintenance
-- gate, the per-task limits, which now count the runs just completed as finished): the two only
-- share a commit. Rows of both kinds come back, completions first, in their own order:
-- kind = 'completed' fills run_id … ignored_next, kind = 'claimed' the claim's columns.
CREATE FUNCTION pipeweave_complete_and_claim(p_orchestrator_id text, p_results jsonb, p_claim integer)
RETURNS TABLE (
  kind text, run_id text, completed boolean, mode text, follow_ups text[], ignored_next text[],
  task_id text, pipeline_run_id text, attempt integer, priority integer, input jsonb,
  input_path text, previous_attempts jsonb, idempotency_key text, created_at timestamptz,
  started_at timestamptz, service_id text, base_url text, code_version integer, code_hash text,
  timeout_seconds integer, cached boolean, cached_output jsonb
) LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY
  SELECT 'completed'::text, c.run_id, c.completed, c.mode, c.follow_ups, c.ignored_next,
         NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::jsonb, NULL::text, NULL::jsonb, NULL::text,
         NULL::timestamptz, NULL::timestamptz, NULL::text, NULL::text, NULL::integer, NULL::text, NULL::integer,
         NULL::boolean, NULL::jsonb
    FROM pipeweave_complete_runs(p_orchestrator_id, p_results) AS c;
  RETURN QUERY
  SELECT 'claimed'::text, c.id, NULL::boolean, NULL::text, NULL::text[], NULL::text[],
         c.task_id, c.pipeline_run_id, c.attempt, c.priority, c.input, c.input_path, c.previous_attempts,
         c.idempotency_key, c.created_at, c.started_at, c.service_id, c.base_url, c.code_version, c.code_hash,
         c.timeout_seconds, c.cached, c.cached_output
    FROM pipeweave_claim_runs(p_orchestrator_id, p_claim) AS c;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- A failed attempt (SPEC §5). Retryable with attempts left: the same row goes back to `pending`
-- with attempt + 1, the failure appended to previous_attempts, and scheduled_for = now + delay
-- (fixed: retry_delay_ms; exponential: min(max_retry_delay_ms, retry_delay_ms × 2^(attempt−1))).
-- Otherwise the run ends `failed` (or `timeout` when the last attempt timed out) and one dlq row is
-- written in the same transaction. p_orchestrator_id fences like completion; NULL (the reaper)
-- does not fence. outcome: retried | failed | timeout | fenced.
CREATE FUNCTION pipeweave_fail_run(
  p_run_id text,
  p_orchestrator_id text,
  p_error text,
  p_error_code text,
  p_retryable boolean,
  p_timed_out boolean
) RETURNS TABLE (outcome text, attempt integer, scheduled_for timestamptz, mode text) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_run record;
  v_task record;
  v_failure jsonb;
  v_delay_ms double precision;
  v_at timestamptz := clock_timestamp();
  v_mode text;
  v_held boolean;
BEGIN
  SELECT r.id, r.task_id, r.attempt, r.previous_attempts INTO v_run
    FROM task_runs r
   WHERE r.id = p_run_id AND (r.status = 'running') IS TRUE      -- task_runs_pkey (see above)
     AND (p_orchestrator_id IS NULL OR r.orchestrator_id = p_orchestrator_id)
     FOR UPDATE;
  v_held := FOUND;
  SELECT s.mode INTO v_mode FROM orchestrator_state s WHERE s.id = 'singleton';
  IF NOT v_held THEN
    RETURN QUERY SELECT 'fenced'::text, NULL::integer, NULL::timestamptz, v_mode;
    RETURN;
  END IF;
  SELECT t.retries, t.retry_backoff, t.retry_delay_ms, t.max_retry_delay_ms INTO v_task
    FROM tasks t WHERE t.id = v_run.task_id;
  v_failure := jsonb_build_object('attempt', v_run.attempt, 'error', p_error, 'errorCode', p_error_code, 'at', v_at);

  IF p_retryable AND v_run.attempt < 1 + v_task.retries THEN
    v_delay_ms := CASE v_task.retry_backoff
      WHEN 'fixed' THEN v_task.retry_delay_ms
      ELSE LEAST(v_task.max_retry_delay_ms::double precision, v_task.retry_delay_ms * power(2, v_run.attempt - 1))
    END;
    UPDATE task_runs r
       SET status = 'pending', attempt = r.attempt + 1,
           previous_attempts = r.previous_attempts || jsonb_build_array(v_failure),
           error = p_error, error_code = p_error_code,
           scheduled_for = CASE WHEN v_delay_ms > 0 THEN v_at + v_delay_ms * interval '1 millisecond' END,
           started_at = NULL, heartbeat_at = NULL, orchestrator_id = NULL
     WHERE r.id = v_run.id;
    IF v_delay_ms <= 0 THEN
      PERFORM pg_notify('pipeweave_runs', '');
    END IF;
    RETURN QUERY SELECT 'retried'::text, v_run.attempt + 1,
      CASE WHEN v_delay_ms > 0 THEN v_at + v_delay_ms * interval '1 millisecond' END, v_mode;
    RETURN;
  END IF;

  UPDATE task_runs r
     SET status = CASE WHEN p_timed_out THEN 'timeout' ELSE 'failed' END,
         error = p_error, error_code = p_error_code, completed_at = v_at, heartbeat_at = v_at
   WHERE r.id = v_run.id;
  INSERT INTO dlq (task_run_id, task_id, error, error_code, attempts, previous_attempts, failed_at)
  VALUES (v_run.id, v_run.task_id, p_error, p_error_code, v_run.attempt,
          v_run.previous_attempts || jsonb_build_array(v_failure), v_at);
  RETURN QUERY SELECT CASE WHEN p_timed_out THEN 'timeout' ELSE 'failed' END, v_run.attempt, NULL::timestamptz, v_mode;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Crash recovery (SPEC §5): orchestrators whose heartbeat is older than p_stale_ms leave the
-- table, and every run still `running` without a live holder is failed with "orchestrator lost"
-- through pipeweave_fail_run: it uses up its attempt, so a run that kills its orchestrator every
-- time ends in the DLQ instead of looping; one handed back is due at once. Returns how many runs
-- were handed back or dead-lettered.
CREATE FUNCTION pipeweave_return_lost_runs(p_stale_ms integer)
RETURNS TABLE (id text, task_id text, attempt integer, outcome text) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_run record;
BEGIN
  -- Nobody could heartbeat while the server was down: after a restart, count heartbeats from the
  -- moment it came back, so live orchestrators get a full stale period to reach it again.
  DELETE FROM orchestrators o
   WHERE GREATEST(o.heartbeat_at, pg_postmaster_start_time()) < now() - p_stale_ms * interval '1 millisecond';
  FOR v_run IN
    SELECT r.id, r.task_id, r.attempt FROM task_runs r          -- task_runs_active_idx
     WHERE r.status = 'running'
       AND NOT EXISTS (SELECT 1 FROM orchestrators o WHERE o.id = r.orchestrator_id)
       FOR UPDATE SKIP LOCKED
  LOOP
    -- One row per run handed back, with what became of it (retried, or failed/timeout when that
    -- was its last attempt): the orchestrator that recovers it logs a line for each.
    id := v_run.id;
    task_id := v_run.task_id;
    attempt := v_run.attempt;
    SELECT f.outcome INTO outcome
      FROM pipeweave_fail_run(v_run.id, NULL, 'orchestrator lost', 'ORCHESTRATOR_LOST', true, false) AS f;
    -- Due at once, not after a backoff: the worker did not fail, its orchestrator vanished, and
    -- crashed work must hold a drain (SPEC §4), not slip past it as "scheduled".
    UPDATE task_runs r SET scheduled_for = NULL WHERE r.id = v_run.id AND r.status = 'pending';
    RETURN NEXT;
  END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The drain check (SPEC §4), run by every live orchestrator on its interval and after each run it
-- finishes while draining, and by every maintenance:* command: hand back runs of dead
-- orchestrators, then, in `waiting_for_maintenance` with no due pending and no running run, move
-- to `maintenance`. The final count runs under the exclusive gate and in one statement (one
-- snapshot): a parent completing concurrently is either still `running` or already committed
-- together with its follow-ups, never neither.
CREATE FUNCTION pipeweave_drain_check(p_stale_ms integer, p_actor text)
RETURNS TABLE (mode text, changed boolean, lost_runs integer, lost jsonb) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_lost integer;
  v_lost_runs jsonb;   -- [{"id", "taskId", "attempt", "outcome"}] of the runs handed back
  v_mode text;
  v_reason text;
BEGIN
  SELECT count(*)::integer,
         COALESCE(jsonb_agg(jsonb_build_object('id', l.id, 'taskId', l.task_id, 'attempt', l.attempt, 'outcome', l.outcome)), '[]')
    INTO v_lost, v_lost_runs
    FROM pipeweave_return_lost_runs(p_stale_ms) AS l;
  SELECT s.mode INTO v_mode FROM orchestrator_state s WHERE s.id = 'singleton';
  IF v_mode <> 'waiting_for_maintenance' OR EXISTS (
       SELECT 1 FROM task_runs r
        WHERE r.status = 'running'
           OR (r.status = 'pending' AND (r.scheduled_for IS NULL OR r.scheduled_for <= now()))) THEN
    -- Cheap answer first, without locks: most checks find the drain still busy.
    RETURN QUERY SELECT v_mode, false, v_lost, v_lost_runs;
    RETURN;
  END IF;
  SELECT s.mode, s.reason INTO v_mode, v_reason FROM orchestrator_state s WHERE s.id = 'singleton' FOR UPDATE;
  PERFORM pg_advisory_xact_lock(7020304957001);
  IF v_mode <> 'waiting_for_maintenance' OR EXISTS (
       SELECT 1 FROM task_runs r
        WHERE r.status = 'running'
           OR (r.status = 'pending' AND (r.scheduled_for IS NULL OR r.scheduled_for <= now()))) THEN
    RETURN QUERY SELECT v_mode, false, v_lost, v_lost_runs;
    RETURN;
  END IF;
  PERFORM set_config('pipeweave.actor', p_actor, true);
  PERFORM set_config('pipeweave.reason', COALESCE(v_reason, ''), true);
  UPDATE orchestrator_state s SET mode = 'maintenance' WHERE s.id = 'singleton';
  RETURN QUERY SELECT 'maintenance'::text, true, v_lost, v_lost_runs;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- maintenance:request: running → waiting_for_maintenance, then the drain check in the same
-- transaction (an already drained system records both changes at once). A no-op otherwise.
CREATE FUNCTION pipeweave_request_maintenance(p_actor text, p_reason text, p_stale_ms integer)
RETURNS TABLE (mode text, changed boolean) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_mode text;
  v_changed boolean := false;
  v_check record;
BEGIN
  SELECT s.mode INTO v_mode FROM orchestrator_state s WHERE s.id = 'singleton' FOR UPDATE;
  IF v_mode = 'running' THEN
    PERFORM set_config('pipeweave.actor', p_actor, true);
    PERFORM set_config('pipeweave.reason', COALESCE(p_reason, ''), true);
    UPDATE orchestrator_state s SET mode = 'waiting_for_maintenance' WHERE s.id = 'singleton';
    v_changed := true;
  END IF;
  SELECT * INTO v_check FROM pipeweave_drain_check(p_stale_ms, p_actor);
  RETURN QUERY SELECT v_check.mode, v_changed OR v_check.changed;
END
$$;

-- maintenance:enter: to `maintenance` now, only when no run is `running` (runs of dead
-- orchestrators are handed back first). running_runs > 0 means refused, nothing changed.
CREATE FUNCTION pipeweave_enter_maintenance(p_actor text, p_reason text, p_stale_ms integer)
RETURNS TABLE (mode text, changed boolean, running_runs integer) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_mode text;
  v_running integer;
BEGIN
  SELECT s.mode INTO v_mode FROM orchestrator_state s WHERE s.id = 'singleton' FOR UPDATE;
  -- The gate before the lost runs: handing one back locks its row, and an enqueue holding the gate
  -- shared may be about to insert that run's idempotency key (it would wait for us, we for it).
  PERFORM pg_advisory_xact_lock(7020304957001);
  PERFORM * FROM pipeweave_return_lost_runs(p_stale_ms);
  SELECT count(*)::integer INTO v_running FROM task_runs r WHERE r.status = 'running';
  IF v_running > 0 THEN
    RETURN QUERY SELECT v_mode, false, v_running;
    RETURN;
  END IF;
  IF v_mode = 'maintenance' THEN
    RETURN QUERY SELECT v_mode, false, 0;
    RETURN;
  END IF;
  PERFORM set_config('pipeweave.actor', p_actor, true);
  PERFORM set_config('pipeweave.reason', COALESCE(p_reason, ''), true);
  UPDATE orchestrator_state s SET mode = 'maintenance' WHERE s.id = 'singleton';
  RETURN QUERY SELECT 'maintenance'::text, true, 0;
END
$$;

-- maintenance:exit: back to `running` from any mode; a no-op when already running.
CREATE FUNCTION pipeweave_exit_maintenance(p_actor text, p_reason text)
RETURNS TABLE (mode text, changed boolean) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_mode text;
BEGIN
  SELECT s.mode INTO v_mode FROM orchestrator_state s WHERE s.id = 'singleton' FOR UPDATE;
  IF v_mode = 'running' THEN
    RETURN QUERY SELECT v_mode, false;
    RETURN;
  END IF;
  PERFORM set_config('pipeweave.actor', p_actor, true);
  PERFORM set_config('pipeweave.reason', COALESCE(p_reason, ''), true);
  UPDATE orchestrator_state s SET mode = 'running' WHERE s.id = 'singleton';
  RETURN QUERY SELECT 'running'::text, true;
END
$$;
