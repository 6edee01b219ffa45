-- Flow control and schedules (SPEC §7): pauses, the service breaker, rate limits and cron
-- schedules. All of it is state in the database, so it holds across every orchestrator at once and
-- survives restarts; every change is a row of control_events.

-- Every change of flow-control state, beside maintenance_events (SPEC §7).
--   kind:   'pause' | 'breaker' | 'rate_limit' | 'schedule'
--   target: the task, service or schedule it is about ('task:send-report', 'service:billing',
--           'schedule:nightly')
--   action: what happened ('paused', 'resumed'; 'opened', 'probe', 'closed', 'expired'; 'set',
--           'cleared', 'manifest'; 'created', 'updated', 'removed', 'skipped', 'missed')
CREATE TABLE control_events (
  id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  kind   text NOT NULL CHECK (kind IN ('pause', 'breaker', 'rate_limit', 'schedule')),
  target text NOT NULL,
  action text NOT NULL,
  at     timestamptz NOT NULL DEFAULT clock_timestamp(),
  actor  text NOT NULL,
  reason text,
  detail jsonb
);
-- The history of one target, newest first (tasks:pause's and schedules:list's look-ups; a range of
-- skipped ticks extends its own last row).
CREATE INDEX control_events_target_idx ON control_events (target, id);

-- Pauses (SPEC §7): a task's own, and its service's (state of the service: it covers tasks
-- registered after it). Each resume clears its own level. services:register never touches these.
ALTER TABLE services
  ADD COLUMN paused_at    timestamptz,
  ADD COLUMN paused_by    text,
  ADD COLUMN pause_reason text;
ALTER TABLE tasks
  ADD COLUMN paused_at    timestamptz,
  ADD COLUMN paused_by    text,
  ADD COLUMN pause_reason text;

-- The service breaker (SPEC §7), fleet-wide. Its states:
--   closed      breaker_opened_at IS NULL (breaker_failures may count towards an opening)
--   open        breaker_open_until > now(): its runs are not claimed
--   half-open   breaker_open_until <= now(): one claim takes one probe run
--   expired     breaker_expires_at <= now(): it holds nothing, connect failures use attempts;
--               breaker_open_until is set to NULL when that is first noticed (a claim, or a
--               connect failure), with a control_events row
-- Any dispatch that reaches the worker closes it (every column back to its default).
--   breaker_enabled      manifest `breaker` (default true); false keeps plain retries (DLQ)
--   breaker_failures     consecutive connect failures, all orchestrators together; a dispatch that
--                        reached the worker resets it
--   breaker_open_until   its runs are not claimed before this; once it has passed (half-open) the
--                        claim that takes the probe run moves it one cool-down on (the probe's
--                        lease: a probe lost with its orchestrator is taken again after it)
--   breaker_cooldown_ms  the current cool-down (PIPEWEAVE_BREAKER_COOLDOWN_MS, doubled on each
--                        reopening, at most 5 min or the setting if that is longer)
--   breaker_opened_at    when this open spell began
--   breaker_expires_at   breaker_opened_at + PIPEWEAVE_BREAKER_MAX_OPEN_MS: from then on it holds
--                        nothing and connect failures use attempts again (a service that never
--                        comes back ends in the DLQ)
--   breaker_probe_run_id the run the last half-open claim took as its probe: its connect failure
--                        reopens the breaker with a doubled cool-down (late failures of runs sent
--                        before it opened only count)
ALTER TABLE services
  ADD COLUMN breaker_enabled      boolean NOT NULL DEFAULT true,
  ADD COLUMN breaker_failures     integer NOT NULL DEFAULT 0,
  ADD COLUMN breaker_open_until   timestamptz,
  ADD COLUMN breaker_cooldown_ms  integer,
  ADD COLUMN breaker_opened_at    timestamptz,
  ADD COLUMN breaker_expires_at   timestamptz,
  ADD COLUMN breaker_probe_run_id text;

-- Rate limits (SPEC §7): at most N starts of the task within any window of P ms.
--   rate_limit, rate_period_ms                  the manifest's `rateLimit` (NULL: none)
--   rate_override                               tasks:limit: false follows the manifest; true uses
--   rate_override_limit, rate_override_period_ms  the override (both NULL: `none`, no limit)
-- services:register writes rate_limit and rate_period_ms only: a runtime limit outlives it.
ALTER TABLE tasks
  ADD COLUMN rate_limit              integer CHECK (rate_limit > 0),
  ADD COLUMN rate_period_ms          integer CHECK (rate_period_ms > 0),
  ADD COLUMN rate_override           boolean NOT NULL DEFAULT false,
  ADD COLUMN rate_override_limit     integer CHECK (rate_override_limit > 0),
  ADD COLUMN rate_override_period_ms integer CHECK (rate_override_period_ms > 0),
  ADD CONSTRAINT tasks_rate_limit_pair CHECK ((rate_limit IS NULL) = (rate_period_ms IS NULL)),
  ADD CONSTRAINT tasks_rate_override_pair CHECK ((rate_override_limit IS NULL) = (rate_override_period_ms IS NULL));

-- The sliding window of a rate-limited task: N slots, each the start time of the run that last
-- used it. A run may start at t only with a slot whose time is earlier than t - P, and stamps it
-- with t (its started_at): two starts on one slot are more than P apart, so any window of P ms,
-- both ends included, holds at most N starts. Bounded by the limit, not by history. The claim
-- keeps the number of slots equal to the effective limit (pipeweave_task_room_v2), under the
-- task's rate lock.
CREATE TABLE task_rate_slots (
  task_id text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
  slot    integer NOT NULL,
  at      timestamptz NOT NULL DEFAULT '-infinity',
  PRIMARY KEY (task_id, slot)
);

-- Schedules (SPEC §7): recurring runs of a task. CLI schedules have service_id NULL; a manifest's
-- are owned by its service (replaced when it registers again).
--   last_tick     the last tick decided (enqueued, skipped or missed): each orchestrator moves it
--                 on with a compare-and-set, so each tick is enqueued once fleet-wide
--   last_run_id   the run the last enqueued tick created (overlap `skip` looks at it)
CREATE TABLE schedules (
  name        text PRIMARY KEY,
  task_id     text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
  cron        text NOT NULL,
  timezone    text NOT NULL DEFAULT 'UTC',
  input       jsonb,
  overlap     text NOT NULL DEFAULT 'skip' CHECK (overlap IN ('skip', 'allow')),
  backfill_ms bigint NOT NULL DEFAULT 0 CHECK (backfill_ms >= 0),
  service_id  text REFERENCES services (id) ON DELETE CASCADE,
  last_tick   timestamptz,
  last_run_id text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_task_id_idx ON schedules (task_id);
CREATE INDEX schedules_service_id_idx ON schedules (service_id) WHERE service_id IS NOT NULL;

-- Pauses and runtime rate limits are recorded by triggers, as mode changes are (001
-- pipeweave_mode_changed): pipeweave sets `pipeweave.actor` / `pipeweave.reason` (transaction-local)
-- in the statement that makes the change (src/sql/services.ts), and a runbook's UPDATE, which sets
-- neither, is recorded with the database user and application_name. So every change is one
-- control_events row in its own transaction, whoever makes it, and a no-op (pausing a paused
-- task) is none. The triggers fire only for UPDATEs that name these columns: services:register,
-- the claim and the breaker's accounting never do.
--   paused_at:  NULL <-> set is 'paused' / 'resumed'; the trigger stamps paused_by (the actor) and
--               pause_reason, and clears both on a resume.
--   rate_override*: 'set' (a limit), 'cleared' (`none`), 'manifest' (back to the manifest); detail
--               is the limit in force afterwards, {"limit": N, "periodMs": P} or nulls for none.
CREATE FUNCTION pipeweave_flow_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
  v_set_by_pipeweave boolean := NULLIF(current_setting('pipeweave.actor', true), '') IS NOT NULL;
  v_actor  text := COALESCE(NULLIF(current_setting('pipeweave.actor', true), ''),
                            current_user || ' (' || COALESCE(NULLIF(current_setting('application_name', true), ''), 'sql') || ')');
  v_reason text := NULLIF(current_setting('pipeweave.reason', true), '');
  v_target text := (CASE TG_TABLE_NAME WHEN 'tasks' THEN 'task:' ELSE 'service:' END) || NEW.id;
  v_limit  integer;
  v_period integer;
BEGIN
  IF (NEW.paused_at IS NULL) <> (OLD.paused_at IS NULL) THEN
    IF NEW.paused_at IS NULL THEN
      NEW.paused_by := NULL;
      NEW.pause_reason := NULL;
      INSERT INTO control_events (kind, target, action, actor, reason) VALUES ('pause', v_target, 'resumed', v_actor, v_reason);
      -- Its pending runs may start now: every orchestrator looks (not one poll interval later).
      PERFORM pg_notify(left('pipeweave.' || current_schema(), 63), 'runs');
    ELSE
      NEW.paused_by := v_actor;
      -- A runbook's UPDATE may set pause_reason itself; pipeweave's reason is the one it passed.
      IF v_set_by_pipeweave THEN
        NEW.pause_reason := v_reason;
      END IF;
      INSERT INTO control_events (kind, target, action, at, actor, reason)
      VALUES ('pause', v_target, 'paused', NEW.paused_at, v_actor, NEW.pause_reason);
    END IF;
  END IF;
  -- Services have no rate limit: their trigger names paused_at alone, and this is not reached.
  IF TG_TABLE_NAME = 'tasks' THEN
    IF (NEW.rate_override, NEW.rate_override_limit, NEW.rate_override_period_ms)
       IS DISTINCT FROM (OLD.rate_override, OLD.rate_override_limit, OLD.rate_override_period_ms) THEN
      IF NEW.rate_override THEN
        v_limit := NEW.rate_override_limit;
        v_period := NEW.rate_override_period_ms;
      ELSE
        v_limit := NEW.rate_limit;
        v_period := NEW.rate_period_ms;
      END IF;
      -- A changed limit may let held-back runs start now.
      PERFORM pg_notify(left('pipeweave.' || current_schema(), 63), 'runs');
      INSERT INTO control_events (kind, target, action, actor, reason, detail)
      VALUES ('rate_limit', v_target,
              CASE WHEN NOT NEW.rate_override THEN 'manifest' WHEN NEW.rate_override_limit IS NULL THEN 'cleared' ELSE 'set' END,
              v_actor, v_reason, jsonb_build_object('limit', v_limit, 'periodMs', v_period));
    END IF;
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER pipeweave_task_flow_changed
  BEFORE UPDATE OF paused_at, rate_override, rate_override_limit, rate_override_period_ms ON tasks
  FOR EACH ROW EXECUTE FUNCTION pipeweave_flow_changed();
CREATE TRIGGER pipeweave_service_flow_changed
  BEFORE UPDATE OF paused_at ON services
  FOR EACH ROW EXECUTE FUNCTION pipeweave_flow_changed();
-- ---------------------------------------------------------------------------------------------
-- The rules of flow control every claim and every dispatch obeys, whichever binary runs them
-- (SPEC §3): small VOLATILE functions, versioned by name like those of 002, because a lock and the
-- read it protects never share one statement (each statement here takes a new snapshot). A pause
-- needs no function: the claim reads paused_at in its own statement (no lock protects it; a claim
-- that began before a pause committed may still take runs, and the next one takes none).
--
-- Lock order, so that nothing here can deadlock: a claim never waits (try-locks and SKIP LOCKED
-- only); the breaker functions for dispatch outcomes wait for one services row at a time.

-- What pipeweave_task_room_v2 answers for one task:
--   room       how many of its runs may start now; NULL: no cap
--   wake_at    held back by time: when it may have room again (an open breaker's open_until, or
--              when the oldest rate slot frees); NULL otherwise (a pause, a limit, a busy lock)
--   rate       the task is rate-limited and this claim holds its rate lock: the runs it takes
--              must be stamped on its slots (pipeweave_rate_stamp_v1) before it commits
--   rate_held  the rate limit left no room now (a claim held back, counted by /metrics)
--   probe      the service is half-open and this claim holds its row: it may take one run of the
--              whole service, its probe (pipeweave_breaker_probe_v1)
CREATE TYPE pipeweave_room_v2 AS (room integer, wake_at timestamptz, rate boolean, rate_held boolean, probe boolean);

-- A task's room for a claim now, by its service's breaker, its concurrency limit (as
-- pipeweave_task_room_v1) and its rate limit. p_actor names the orchestrator in control_events.
-- The claim stamps its runs (started_at, rate slots) with one instant read after every room is
-- counted: never earlier than the counts it obeys (a run is never seen starting before the run
-- whose end made room for it, nor a slot reused less than the period after its last start). The claim calls it only for a task with a rule (a limit, a
-- rate, a breaker not closed) and not paused.
--   * Breaker: open → 0 until open_until; half-open → the claim that holds the service's row (SKIP
--     LOCKED: never waited for) may take one probe, and keeps the row until it commits; expired →
--     no cap (the first to notice records it).
--   * Concurrency: the task's try-lock, then its running runs counted (0 if another claim holds it).
--   * Rate: the task's rate try-lock ('/rate/<task>'), held until the claim commits, so that the
--     stamps of the runs it takes are written before another claim counts; the slots resized to
--     the effective limit (runtime override, else manifest); free slots = those older than now
--     minus the period.
CREATE FUNCTION pipeweave_task_room_v2(p_task_id text, p_actor text) RETURNS pipeweave_room_v2
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
  v_service     text;
  v_concurrency integer;
  v_limit       integer;
  v_period      interval;
  v_open_until  timestamptz;
  v_expires_at  timestamptz;
  v_probe       boolean := false;
  v_room        integer;
  v_slots       integer;
  v_last_slot   integer;
  v_free        integer;
  v_oldest      timestamptz;
  v_now         timestamptz := clock_timestamp();
BEGIN
  SELECT t.service_id, t.concurrency,
         CASE WHEN t.rate_override THEN t.rate_override_limit ELSE t.rate_limit END,
         CASE WHEN t.rate_override THEN t.rate_override_period_ms ELSE t.rate_period_ms END * interval '1 millisecond',
         sv.breaker_open_until, sv.breaker_expires_at
    INTO v_service, v_concurrency, v_limit, v_period, v_open_until, v_expires_at
    FROM tasks t JOIN services sv ON sv.id = t.service_id
   WHERE t.id = p_task_id;
  IF NOT FOUND THEN
    RETURN ROW(NULL::integer, NULL::timestamptz, false, false, false)::pipeweave_room_v2;
  END IF;

  -- The breaker.
  IF v_open_until IS NOT NULL AND COALESCE(v_expires_at <= v_now, false) THEN
    -- Open past its longest time: it holds nothing any more. Recorded once, by the first to hold
    -- the service's row.
    PERFORM 1 FROM services s WHERE s.id = v_service FOR NO KEY UPDATE SKIP LOCKED;
    IF FOUND THEN
      UPDATE services s SET breaker_open_until = NULL, breaker_probe_run_id = NULL
       WHERE s.id = v_service AND s.breaker_open_until IS NOT NULL AND s.breaker_expires_at <= v_now;
      IF FOUND THEN
        INSERT INTO control_events (kind, target, action, actor, detail)
        SELECT 'breaker', 'service:' || s.id, 'expired', p_actor,
               jsonb_build_object('openedAt', s.breaker_opened_at, 'expiresAt', s.breaker_expires_at, 'failures', s.breaker_failures)
          FROM services s WHERE s.id = v_service;
      END IF;
    END IF;
  ELSIF v_open_until > v_now THEN
    RETURN ROW(0, v_open_until, false, false, false)::pipeweave_room_v2;
  ELSIF v_open_until IS NOT NULL THEN
    -- Half-open: one probe fleet-wide. Whoever holds the service's row decides; the others take
    -- nothing this time.
    PERFORM 1 FROM services s WHERE s.id = v_service FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
      RETURN ROW(0, NULL::timestamptz, false, false, false)::pipeweave_room_v2;
    END IF;
    -- Read again under the lock: another claim may have taken the probe and committed since.
    SELECT s.breaker_open_until, s.breaker_expires_at INTO v_open_until, v_expires_at FROM services s WHERE s.id = v_service;
    IF v_open_until > v_now AND NOT COALESCE(v_expires_at <= v_now, false) THEN
      RETURN ROW(0, v_open_until, false, false, false)::pipeweave_room_v2;
    END IF;
    v_probe := v_open_until IS NOT NULL AND NOT COALESCE(v_expires_at <= v_now, false);
  END IF;

  -- The concurrency limit, as pipeweave_task_room_v1.
  IF v_concurrency > 0 THEN
    IF NOT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '/task/' || p_task_id, 0)) THEN
      RETURN ROW(0, NULL::timestamptz, false, false, false)::pipeweave_room_v2;
    END IF;
    v_room := GREATEST(0, v_concurrency - (SELECT count(*) FROM task_runs r                  -- task_runs_running_idx
                                            WHERE r.status = 'running' AND r.task_id = p_task_id));
  END IF;
  IF v_probe THEN
    v_room := LEAST(COALESCE(v_room, 1), 1);
  END IF;
  IF v_limit IS NULL OR v_room = 0 THEN
    RETURN ROW(v_room, NULL::timestamptz, false, false, v_probe AND v_room > 0)::pipeweave_room_v2;
  END IF;

  -- The rate limit.
  IF NOT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '/rate/' || p_task_id, 0)) THEN
    RETURN ROW(0, NULL::timestamptz, false, false, false)::pipeweave_room_v2;
  END IF;
  SELECT count(*), COALESCE(max(s.slot), 0) INTO v_slots, v_last_slot FROM task_rate_slots s WHERE s.task_id = p_task_id;
  IF v_slots < v_limit THEN
    -- A new or raised limit: the new slots are free.
    INSERT INTO task_rate_slots (task_id, slot)
    SELECT p_task_id, v_last_slot + i FROM generate_series(1, v_limit - v_slots) AS i;
  ELSIF v_slots > v_limit THEN
    -- A lowered limit keeps the newest starts.
    DELETE FROM task_rate_slots s
     WHERE s.task_id = p_task_id AND s.slot IN (
       SELECT x.slot FROM task_rate_slots x WHERE x.task_id = p_task_id ORDER BY x.at, x.slot LIMIT v_slots - v_limit);
  END IF;
  SELECT count(*) FILTER (WHERE s.at < v_now - v_period), min(s.at) INTO v_free, v_oldest
    FROM task_rate_slots s WHERE s.task_id = p_task_id;
  IF v_free = 0 THEN
    RETURN ROW(0, v_oldest + v_period, false, true, false)::pipeweave_room_v2;
  END IF;
  RETURN ROW(LEAST(COALESCE(v_room, v_free), v_free), NULL::timestamptz, true, false, v_probe)::pipeweave_room_v2;
END
$$;

-- After the claim's UPDATE (only then is the number of runs it took known): the p_count oldest
-- slots of the task stamped with p_at, the claimed runs' started_at (read after the room was
-- counted, so a slot counted free then is more than the period older). Only a claim that holds the
-- task's rate lock (pipeweave_task_room_v2 answered `rate`) may stamp. Returns when the next slot
-- frees if none is free now (when held-back runs may start), else NULL.
CREATE FUNCTION pipeweave_rate_stamp_v1(p_task_id text, p_count integer, p_at timestamptz) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
  v_period interval;
  v_next   timestamptz;
BEGIN
  -- Re-entrant: true when this transaction holds it already.
  IF NOT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '/rate/' || p_task_id, 0)) THEN
    RAISE EXCEPTION 'pipeweave_rate_stamp_v1: the rate lock of task % is held by another transaction', p_task_id;
  END IF;
  UPDATE task_rate_slots s SET at = p_at
   WHERE s.task_id = p_task_id AND s.slot IN (
     SELECT x.slot FROM task_rate_slots x WHERE x.task_id = p_task_id ORDER BY x.at, x.slot LIMIT p_count);
  SELECT CASE WHEN t.rate_override THEN t.rate_override_period_ms ELSE t.rate_period_ms END * interval '1 millisecond'
    INTO v_period FROM tasks t WHERE t.id = p_task_id;
  SELECT min(s.at) + v_period INTO v_next FROM task_rate_slots s WHERE s.task_id = p_task_id;
  RETURN CASE WHEN v_next >= p_at THEN v_next END;
END
$$;

-- The claim at p_at took p_run_id as the probe of a half-open service (it holds the service's row
-- since pipeweave_task_room_v2): the breaker stays open one more cool-down, the probe's lease (a
-- probe lost with its orchestrator is followed by another one then), and a control_events row.
-- Returns the new open_until.
CREATE FUNCTION pipeweave_breaker_probe_v1(p_service_id text, p_run_id text, p_at timestamptz, p_actor text) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
  v_until    timestamptz;
  v_cooldown integer;
BEGIN
  UPDATE services s
     SET breaker_open_until = p_at + s.breaker_cooldown_ms * interval '1 millisecond', breaker_probe_run_id = p_run_id
   WHERE s.id = p_service_id AND s.breaker_open_until <= p_at
  RETURNING s.breaker_open_until, s.breaker_cooldown_ms INTO v_until, v_cooldown;
  IF FOUND THEN
    INSERT INTO control_events (kind, target, action, actor, detail)
    VALUES ('breaker', 'service:' || p_service_id, 'probe', p_actor,
            jsonb_build_object('runId', p_run_id, 'until', v_until, 'cooldownMs', v_cooldown));
  END IF;
  RETURN v_until;
END
$$;

-- Dispatches of the runs p_run_ids to service p_service_id failed before a connection was made
-- (refused, DNS, TLS handshake, connect timeout), at p_at. Returns what becomes of those runs:
--   'deferred'  back to pending, attempt kept: the breaker counts them and is still closed
--   'held'      the same, and the breaker is open (it opened now, or was open already)
--   'attempt'   ordinary failures that use an attempt: the breaker is off, or open past its
--               longest time (expired)
-- The count is fleet-wide; at 5 in a row the breaker opens for p_cooldown_ms (at most
-- p_max_open_ms in all). A failure of the current probe reopens it with the cool-down doubled (at
-- most 5 min, or p_cooldown_ms if longer). Each opening, reopening and expiry is a control_events
-- row by p_actor.
CREATE FUNCTION pipeweave_breaker_connect_failed_v1(p_service_id text, p_run_ids text[], p_at timestamptz,
                                                    p_cooldown_ms integer, p_max_open_ms integer, p_actor text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
  v_n        integer := cardinality(p_run_ids);
  sv         record;
  v_cooldown integer;
BEGIN
  PERFORM 1 FROM services s WHERE s.id = p_service_id FOR NO KEY UPDATE;
  SELECT s.breaker_enabled, s.breaker_failures, s.breaker_open_until, s.breaker_cooldown_ms, s.breaker_opened_at,
         s.breaker_expires_at, s.breaker_probe_run_id
    INTO sv FROM services s WHERE s.id = p_service_id;
  IF NOT FOUND OR NOT sv.breaker_enabled THEN
    RETURN 'attempt';
  END IF;
  IF sv.breaker_opened_at IS NOT NULL AND sv.breaker_expires_at <= p_at THEN
    IF sv.breaker_open_until IS NOT NULL THEN
      UPDATE services s SET breaker_open_until = NULL, breaker_probe_run_id = NULL WHERE s.id = p_service_id;
      INSERT INTO control_events (kind, target, action, actor, detail)
      VALUES ('breaker', 'service:' || p_service_id, 'expired', p_actor,
              jsonb_build_object('openedAt', sv.breaker_opened_at, 'expiresAt', sv.breaker_expires_at, 'failures', sv.breaker_failures));
    END IF;
    RETURN 'attempt';
  END IF;
  IF sv.breaker_open_until IS NOT NULL THEN
    IF sv.breaker_probe_run_id = ANY (p_run_ids) THEN
      v_cooldown := LEAST(sv.breaker_cooldown_ms::bigint * 2, GREATEST(p_cooldown_ms, 300000));
      UPDATE services s
         SET breaker_failures = s.breaker_failures + v_n, breaker_cooldown_ms = v_cooldown,
             breaker_open_until = p_at + v_cooldown * interval '1 millisecond', breaker_probe_run_id = NULL
       WHERE s.id = p_service_id;
      INSERT INTO control_events (kind, target, action, actor, detail)
      VALUES ('breaker', 'service:' || p_service_id, 'opened', p_actor,
              jsonb_build_object('reopened', true, 'probeRunId', sv.breaker_probe_run_id, 'cooldownMs', v_cooldown,
                                 'until', p_at + v_cooldown * interval '1 millisecond', 'expiresAt', sv.breaker_expires_at,
                                 'failures', sv.breaker_failures + v_n));
    ELSE
      -- Runs sent before it opened, failing late: counted, nothing else.
      UPDATE services s SET breaker_failures = s.breaker_failures + v_n WHERE s.id = p_service_id;
    END IF;
    RETURN 'held';
  END IF;
  IF sv.breaker_failures + v_n >= 5 THEN
    UPDATE services s
       SET breaker_failures = s.breaker_failures + v_n, breaker_opened_at = p_at,
           breaker_expires_at = p_at + p_max_open_ms * interval '1 millisecond', breaker_cooldown_ms = p_cooldown_ms,
           breaker_open_until = p_at + p_cooldown_ms * interval '1 millisecond', breaker_probe_run_id = NULL
     WHERE s.id = p_service_id;
    INSERT INTO control_events (kind, target, action, actor, detail)
    VALUES ('breaker', 'service:' || p_service_id, 'opened', p_actor,
            jsonb_build_object('reopened', false, 'cooldownMs', p_cooldown_ms, 'until', p_at + p_cooldown_ms * interval '1 millisecond',
                               'expiresAt', p_at + p_max_open_ms * interval '1 millisecond', 'failures', sv.breaker_failures + v_n));
    RETURN 'held';
  END IF;
  UPDATE services s SET breaker_failures = s.breaker_failures + v_n WHERE s.id = p_service_id;
  RETURN 'deferred';
END
$$;

-- A dispatch reached service p_service_id's worker (any answer, even a 500): its breaker closes
-- and its count starts again. Cheap when there is nothing to close (no lock, no write). Returns
-- whether it was open (then a control_events row by p_actor, and a notification: its held runs
-- are due for every orchestrator now).
CREATE FUNCTION pipeweave_breaker_reached_v1(p_service_id text, p_actor text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
  sv record;
BEGIN
  PERFORM 1 FROM services s
   WHERE s.id = p_service_id AND (s.breaker_failures > 0 OR s.breaker_opened_at IS NOT NULL)
     FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  SELECT s.breaker_opened_at, s.breaker_failures, s.breaker_open_until INTO sv FROM services s WHERE s.id = p_service_id;
  UPDATE services s
     SET breaker_failures = 0, breaker_open_until = NULL, breaker_cooldown_ms = NULL, breaker_opened_at = NULL,
         breaker_expires_at = NULL, breaker_probe_run_id = NULL
   WHERE s.id = p_service_id;
  IF sv.breaker_opened_at IS NULL THEN
    RETURN false;
  END IF;
  INSERT INTO control_events (kind, target, action, actor, detail)
  VALUES ('breaker', 'service:' || p_service_id, 'closed', p_actor,
          jsonb_build_object('openedAt', sv.breaker_opened_at, 'failures', sv.breaker_failures, 'expired', sv.breaker_open_until IS NULL));
  PERFORM pg_notify(left('pipeweave.' || current_schema(), 63), 'runs');
  RETURN true;
END
$$;
