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
--   rate_override                               tasks:limit: NULL follows the manifest; true uses
--   rate_override_limit, rate_override_period_ms  the override (both NULL: `none`, no limit)
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
