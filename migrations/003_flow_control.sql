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

-- The service breaker (SPEC §7), fleet-wide. Closed: breaker_open_until IS NULL.
--   breaker_enabled      manifest `breaker` (default true); false keeps plain retries (DLQ)
--   breaker_failures     consecutive connect failures, all orchestrators together; a dispatch that
--                        reached the worker resets it
--   breaker_open_until   its runs are not claimed before this; once it has passed (half-open) the
--                        first claim to move it one cool-down on takes one probe run
--   breaker_cooldown_ms  the current cool-down (PIPEWEAVE_BREAKER_COOLDOWN_MS, doubled on each
--                        reopening, at most 5 min)
--   breaker_opened_at    when this open spell began
--   breaker_expires_at   breaker_opened_at + PIPEWEAVE_BREAKER_MAX_OPEN_MS: from then on it holds
--                        nothing and connect failures use attempts again (a service that never
--                        comes back ends in the DLQ)
ALTER TABLE services
  ADD COLUMN breaker_enabled     boolean NOT NULL DEFAULT true,
  ADD COLUMN breaker_failures    integer NOT NULL DEFAULT 0,
  ADD COLUMN breaker_open_until  timestamptz,
  ADD COLUMN breaker_cooldown_ms integer,
  ADD COLUMN breaker_opened_at   timestamptz,
  ADD COLUMN breaker_expires_at  timestamptz;

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
-- used it. A run may start at t only with a slot whose time is at most t - P, and stamps it with t:
-- two starts on one slot are P apart, so any window of P holds at most N starts. Bounded by the
-- limit, not by history.
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
