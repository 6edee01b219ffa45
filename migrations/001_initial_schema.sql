-- pipeweave's tables (SPEC §3). Applied by postgres-migrations in one transaction, with the
-- search_path set to the configured schema (`--schema`, PIPEWEAVE_SCHEMA; default public): every
-- object lands there, and every function keeps that search_path (SET search_path FROM CURRENT),
-- so it works for callers whose session names no schema (PgBouncer in transaction pooling).
-- The statements of the run life cycle are not here: the binary carries them (src/sql/), and only
-- the rules every writer must obey live in the database (002). Never edit a released migration:
-- its hash is recorded, and db:migrate / db:validate refuse a changed file.

-- When each migration finished and how long it took (db:status). postgres-migrations inserts the
-- `migrations` row last in each migration's transaction, so clock_timestamp() -
-- transaction_timestamp() at that insert is the migration's duration.
CREATE TABLE pipeweave_migration_log (
  migration_id integer PRIMARY KEY,
  finished_at  timestamptz NOT NULL,
  duration_ms  double precision NOT NULL
);

CREATE FUNCTION pipeweave_log_migration() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO pipeweave_migration_log (migration_id, finished_at, duration_ms)
  VALUES (NEW.id, clock_timestamp(),
          extract(epoch FROM clock_timestamp() - transaction_timestamp()) * 1000)
  ON CONFLICT (migration_id) DO UPDATE
    SET finished_at = EXCLUDED.finished_at, duration_ms = EXCLUDED.duration_ms;
  RETURN NEW;
END
$$;

CREATE TRIGGER pipeweave_log_migration AFTER INSERT ON migrations
  FOR EACH ROW EXECUTE FUNCTION pipeweave_log_migration();

-- Ids of runs and DLQ entries: short and time-ordered, 12 hex digits of the server's clock in
-- milliseconds then 8 of a sequence (unique, and in insertion order within a millisecond).
-- Time-ordered keys append to the right of their indexes instead of touching random pages, and
-- "newest first" is the primary key read backwards. A BEGIN ATOMIC body is bound at creation: it
-- finds its sequence whatever the caller's search_path.
CREATE SEQUENCE pipeweave_id_seq AS bigint CACHE 100;

CREATE FUNCTION pipeweave_new_id() RETURNS text LANGUAGE sql VOLATILE PARALLEL SAFE
BEGIN ATOMIC
  SELECT lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
      || lpad(to_hex(nextval('pipeweave_id_seq') & 4294967295), 8, '0');
END;

-- The single maintenance-mode row (SPEC §4).
CREATE TABLE orchestrator_state (
  id              text PRIMARY KEY DEFAULT 'singleton' CHECK (id = 'singleton'),
  mode            text NOT NULL DEFAULT 'running'
                  CHECK (mode IN ('running', 'waiting_for_maintenance', 'maintenance')),
  mode_changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  reason          text
);
INSERT INTO orchestrator_state (id) VALUES ('singleton');

-- History of mode changes.
CREATE TABLE maintenance_events (
  id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  from_mode text NOT NULL,
  to_mode   text NOT NULL,
  at        timestamptz NOT NULL DEFAULT clock_timestamp(),
  actor     text NOT NULL,
  reason    text
);
-- Serves maintenance:status --history N (newest first).
CREATE INDEX maintenance_events_at_idx ON maintenance_events (at DESC, id DESC);

-- Every mode change, whoever makes it (pipeweave or a runbook's UPDATE): the gate, the time, one
-- maintenance_events row, and a notification. The gate is the advisory lock keyed by the schema
-- (src/sql/schema.ts gateKey): enqueue and claim hold it shared (pipeweave_gate_v1, 002) from
-- before they read the mode until they commit; a mode change takes it exclusive here, so it waits
-- for every enqueue and claim in flight and holds off new ones (SPEC §4). pipeweave sets
-- `pipeweave.actor` / `pipeweave.reason` (transaction-local) before it changes the mode; a change
-- made directly in SQL has neither, and is recorded with the database user and application_name.
CREATE FUNCTION pipeweave_mode_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
  v_actor  text := NULLIF(current_setting('pipeweave.actor', true), '');
  v_reason text := NULLIF(current_setting('pipeweave.reason', true), '');
BEGIN
  IF NEW.mode IS NOT DISTINCT FROM OLD.mode THEN
    RETURN NEW;
  END IF;
  PERFORM pg_advisory_xact_lock(hashtextextended(current_schema() || '/gate', 0));
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
  -- Orchestrators LISTEN on their schema's channel (src/sql/schema.ts): a resume is immediate.
  PERFORM pg_notify(left('pipeweave.' || current_schema(), 63), 'mode');
  RETURN NEW;
END
$$;

CREATE TRIGGER pipeweave_mode_changed BEFORE UPDATE OF mode ON orchestrator_state
  FOR EACH ROW EXECUTE FUNCTION pipeweave_mode_changed();

-- Live `pipeweave run` instances. A claim locks its orchestrator's row (FOR KEY SHARE) and a
-- reaper deletes it: the two serialise on this row (claim fencing, SPEC §5).
CREATE TABLE orchestrators (
  id           text PRIMARY KEY,
  host         text NOT NULL,
  pid          integer NOT NULL,
  version      text NOT NULL,
  concurrency  integer NOT NULL DEFAULT 0,
  started_at   timestamptz NOT NULL DEFAULT now(),
  heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE services (
  id            text PRIMARY KEY,
  version       text NOT NULL,
  base_url      text NOT NULL,
  registered_at timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
  id                      text PRIMARY KEY,
  service_id              text NOT NULL REFERENCES services (id) ON DELETE CASCADE,
  code_hash               text,
  code_version            integer NOT NULL DEFAULT 1 CHECK (code_version >= 1),
  timeout_seconds         integer NOT NULL DEFAULT 300 CHECK (timeout_seconds > 0),
  retries                 integer NOT NULL DEFAULT 3 CHECK (retries >= 0),
  retry_backoff           text NOT NULL DEFAULT 'exponential' CHECK (retry_backoff IN ('fixed', 'exponential')),
  retry_delay_ms          integer NOT NULL DEFAULT 1000 CHECK (retry_delay_ms >= 0),
  max_retry_delay_ms      integer NOT NULL DEFAULT 300000 CHECK (max_retry_delay_ms >= 0),
  heartbeat_interval_ms   integer CHECK (heartbeat_interval_ms > 0),
  concurrency             integer NOT NULL DEFAULT 0 CHECK (concurrency >= 0),
  priority                integer NOT NULL DEFAULT 100,
  idempotency_ttl_seconds integer CHECK (idempotency_ttl_seconds >= 0),
  allowed_next            text[] NOT NULL DEFAULT '{}',
  description             text,
  created_at              timestamptz NOT NULL DEFAULT now(),
  updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_service_id_idx ON tasks (service_id);

CREATE TABLE task_code_history (
  task_id      text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
  code_version integer NOT NULL,
  code_hash    text,
  recorded_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (task_id, code_version)
);

CREATE TABLE pipelines (
  id          text PRIMARY KEY,
  name        text NOT NULL,
  description text,
  definition  jsonb NOT NULL DEFAULT '{}',
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pipeline_runs (
  id           text PRIMARY KEY DEFAULT pipeweave_new_id(),
  pipeline_id  text REFERENCES pipelines (id) ON DELETE SET NULL,
  status       text NOT NULL DEFAULT 'running'
               CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
  input        jsonb,
  created_at   timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz
);
CREATE INDEX pipeline_runs_pipeline_id_idx ON pipeline_runs (pipeline_id);

-- Live work (SPEC §3 "The queue engine"): pending, running (and waiting) runs only. A finished run
-- moves to task_run_history in the statement that finishes it, so this table, its indexes and
-- every statement of the hot path are bounded by the work in flight, not by history. No foreign
-- keys: a key check on every insert would lock the parent row (tasks) from every enqueue at once;
-- the rules that span tables live in the statements that write them (src/sql/).
--
-- Autovacuum comes soon and often here (every few thousand dead rows, without throttling): each
-- claim and each finish leaves dead entries at the head of the claim index, and a short table is
-- cheap to vacuum. The orchestrators also VACUUM it themselves every few thousand runs
-- (src/orchestrator/upkeep.ts), since autovacuum wakes only once a minute.
CREATE TABLE task_runs (
  id                text PRIMARY KEY DEFAULT pipeweave_new_id(),
  task_id           text NOT NULL,
  pipeline_run_id   text,
  parent_run_id     text,
  status            text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'timeout', 'cancelled', 'waiting')),
  attempt           integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
  priority          integer NOT NULL DEFAULT 100,
  input             jsonb,
  output            jsonb,
  input_path        text,
  output_path       text,
  error             text,
  error_code        text,
  idempotency_key   text,
  previous_attempts jsonb NOT NULL DEFAULT '[]',
  scheduled_for     timestamptz,
  created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
  started_at        timestamptz,
  completed_at      timestamptz,
  heartbeat_at      timestamptz,
  orchestrator_id   text,
  -- Claim order after priority (SPEC §3): a retry or a delayed run waits its turn from when it
  -- became due, a fresh run from when it was created.
  due_at            timestamptz GENERATED ALWAYS AS (COALESCE(scheduled_for, created_at)) STORED
) WITH (
  autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
  autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000,
  autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0
);

-- The claim (src/sql/task-runs.ts claimRuns): pending runs grouped by task and priority, each
-- group in due order. The claim reads the head of each group of a task it may take now, up to now
-- (a range scan): retries and delayed runs not yet due sit after the due ones in their group and
-- cost it nothing, and a task it may not take (at its limit) is skipped whole. Also serves
-- pending counts (drain, status) and --until-idle.
CREATE INDEX task_runs_claim_idx ON task_runs (task_id, priority, due_at, id) WHERE status = 'pending';

-- Running runs by task: a task's room under its concurrency limit (pipeweave_task_room_v1), the
-- drain's running count, the reaper and a shutdown's hand-back (a scan of all running runs:
-- bounded by the fleet's concurrency).
CREATE INDEX task_runs_running_idx ON task_runs (task_id) WHERE status = 'running';

-- Idempotency (SPEC §5): one pending or running run per (task, key). Enqueue relies on this index
-- (ON CONFLICT), not on a read-then-insert, so concurrent enqueues with one key stay correct.
CREATE UNIQUE INDEX task_runs_idempotency_active_uidx ON task_runs (task_id, idempotency_key)
  WHERE idempotency_key IS NOT NULL AND status IN ('pending', 'running');

-- Finished runs that reached this table another way (a runbook's UPDATE … SET status =
-- 'cancelled'): the sweep moves them to task_run_history (src/sql/task-runs.ts sweepFinished).
-- Empty in normal operation, so it costs writes nothing.
CREATE INDEX task_runs_stray_finished_idx ON task_runs (id)
  WHERE status IN ('completed', 'failed', 'timeout', 'cancelled');

-- Finished runs (SPEC §3), same columns as task_runs. Written once, when a run finishes, and read
-- by runs:list / runs:show / the DLQ, and deleted by db:cleanup. Ids are time-ordered, so the
-- primary key serves "newest first" and cleanup's walk from the oldest.
CREATE TABLE task_run_history (
  id                text PRIMARY KEY,
  task_id           text NOT NULL,
  pipeline_run_id   text,
  parent_run_id     text,
  status            text NOT NULL
                    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'timeout', 'cancelled', 'waiting')),
  attempt           integer NOT NULL DEFAULT 1,
  priority          integer NOT NULL DEFAULT 100,
  input             jsonb,
  output            jsonb,
  input_path        text,
  output_path       text,
  error             text,
  error_code        text,
  idempotency_key   text,
  previous_attempts jsonb NOT NULL DEFAULT '[]',
  scheduled_for     timestamptz,
  created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
  started_at        timestamptz,
  completed_at      timestamptz,
  heartbeat_at      timestamptz,
  orchestrator_id   text,
  due_at            timestamptz
);
-- runs:list --task T, newest first.
CREATE INDEX task_run_history_task_idx ON task_run_history (task_id, id);
-- runs:list --status failed|timeout|cancelled: few among millions completed.
CREATE INDEX task_run_history_unsuccessful_idx ON task_run_history (id) WHERE status <> 'completed';

CREATE TABLE dlq (
  id                text PRIMARY KEY DEFAULT pipeweave_new_id(),
  -- The failed run, in task_run_history (no foreign key: it spans tables; db:cleanup keeps a run
  -- while an entry points to it).
  task_run_id       text NOT NULL,
  task_id           text NOT NULL,
  error             text,
  error_code        text,
  attempts          integer NOT NULL,
  previous_attempts jsonb NOT NULL DEFAULT '[]',
  failed_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
  retried_at        timestamptz,
  retry_run_id      text
);
-- dlq:list (newest first) and db:cleanup (older than the retention).
CREATE INDEX dlq_failed_at_idx ON dlq (failed_at);
-- db:cleanup keeps a finished run while a DLQ entry points to it.
CREATE INDEX dlq_task_run_id_idx ON dlq (task_run_id);

CREATE TABLE idempotency_cache (
  task_id         text NOT NULL,
  idempotency_key text NOT NULL,
  -- The run that produced the output; set to NULL by db:cleanup when it deletes that run.
  task_run_id     text,
  output          jsonb,
  cached_at       timestamptz NOT NULL DEFAULT now(),
  expires_at      timestamptz NOT NULL,
  PRIMARY KEY (task_id, idempotency_key)
);
-- db:cleanup of expired entries, in batches ordered by expiry.
CREATE INDEX idempotency_cache_expires_at_idx ON idempotency_cache (expires_at);
-- db:cleanup: the entries of the runs it deletes.
CREATE INDEX idempotency_cache_task_run_id_idx ON idempotency_cache (task_run_id) WHERE task_run_id IS NOT NULL;

-- Named leases (one db:cleanup at a time): a row, not a session lock, so that a transaction pooler
-- that hands each transaction another server connection cannot leave a lock behind.
CREATE TABLE leases (
  name       text PRIMARY KEY,
  holder     text NOT NULL,
  expires_at timestamptz NOT NULL
);
