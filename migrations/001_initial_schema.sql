-- pipeweave initial schema: every table of SPEC §3.
-- Applied by postgres-migrations in one transaction. Never edit this file once released:
-- its hash is recorded, and `db:migrate` / `db:validate` refuse a changed file.

-- When each migration finished and how long it took (shown by db:status).
-- postgres-migrations runs each migration in its own transaction and inserts the `migrations`
-- row last, so clock_timestamp() - transaction_timestamp() at that insert is the migration's
-- duration. The trigger is created here, inside migration 1, so it already sees migration 1's row.
CREATE TABLE pipeweave_migration_log (
  migration_id integer PRIMARY KEY,
  finished_at  timestamptz NOT NULL,
  duration_ms  double precision NOT NULL
);

CREATE FUNCTION pipeweave_log_migration() RETURNS trigger LANGUAGE plpgsql AS $$
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

-- Live `pipeweave run` instances.
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
  id           text PRIMARY KEY DEFAULT gen_random_uuid()::text,
  pipeline_id  text REFERENCES pipelines (id) ON DELETE SET NULL,
  status       text NOT NULL DEFAULT 'running'
               CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
  input        jsonb,
  created_at   timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz
);
CREATE INDEX pipeline_runs_pipeline_id_idx ON pipeline_runs (pipeline_id);

CREATE TABLE task_runs (
  id                text PRIMARY KEY DEFAULT gen_random_uuid()::text,
  task_id           text NOT NULL REFERENCES tasks (id),
  pipeline_run_id   text REFERENCES pipeline_runs (id) ON DELETE SET NULL,
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
  -- The run's task has a concurrency limit: such runs are claimed one task at a time, under the
  -- task's lock (migration 002). Set on insert and kept in step with tasks.concurrency by triggers.
  limited           boolean NOT NULL DEFAULT false
);

-- The claim (src/sql/task-runs.ts claim, migration 002 pipeweave_claim_runs): due pending runs,
-- lowest priority first, then oldest. Partial indexes, one per kind of pending run, so that a claim
-- walks neither finished history (STACK-NOTES: an index on (status, …) lets the planner walk
-- finished rows) nor pending runs it cannot take: a backlog of retries waiting out their backoff,
-- or of a task held at its concurrency limit, costs the claim of other work nothing. (Retries of a
-- limited task waiting out a backoff are still stepped over by that task's own scan.)
CREATE INDEX task_runs_claim_idx ON task_runs (priority, created_at)
  WHERE status = 'pending' AND scheduled_for IS NULL AND NOT limited;

-- Pending runs with a not-before time (a retry's backoff, a delayed enqueue): the claim takes the
-- ones now due by a range scan.
CREATE INDEX task_runs_claim_scheduled_idx ON task_runs (scheduled_for)
  WHERE status = 'pending' AND scheduled_for IS NOT NULL AND NOT limited;

-- The claim of a task with a concurrency limit: its own pending runs in claim order.
CREATE INDEX task_runs_claim_task_idx ON task_runs (task_id, priority, created_at)
  WHERE status = 'pending' AND limited;

-- Drain counts (pending due / pending scheduled / running), per-task running counts for the
-- concurrency limit, and the reaper (running runs of dead orchestrators): only live rows.
CREATE INDEX task_runs_active_idx ON task_runs (status, task_id, scheduled_for)
  WHERE status IN ('pending', 'running', 'waiting');

-- Idempotency (SPEC §5): one pending or running run per (task, key). The enqueue relies on this
-- index, not on a read-then-insert, so concurrent enqueues with one key stay correct.
CREATE UNIQUE INDEX task_runs_idempotency_active_uidx ON task_runs (task_id, idempotency_key)
  WHERE idempotency_key IS NOT NULL AND status IN ('pending', 'running');

-- runs:list (newest first, optionally by task or status) and db:cleanup of finished history.
-- Failed, timed-out and cancelled runs are few among millions completed: a listing of them gets
-- an index of its own, where walking every run newest first would read the whole history.
CREATE INDEX task_runs_created_at_idx ON task_runs (created_at DESC);
CREATE INDEX task_runs_task_created_idx ON task_runs (task_id, created_at DESC);
CREATE INDEX task_runs_unsuccessful_idx ON task_runs (created_at DESC)
  WHERE status IN ('failed', 'timeout', 'cancelled');
CREATE INDEX task_runs_finished_idx ON task_runs (completed_at, id)
  WHERE status IN ('completed', 'failed', 'timeout', 'cancelled');
CREATE INDEX task_runs_pipeline_run_id_idx ON task_runs (pipeline_run_id) WHERE pipeline_run_id IS NOT NULL;

CREATE TABLE dlq (
  id                text PRIMARY KEY DEFAULT gen_random_uuid()::text,
  task_run_id       text NOT NULL REFERENCES task_runs (id),
  task_id           text NOT NULL,
  error             text,
  error_code        text,
  attempts          integer NOT NULL,
  previous_attempts jsonb NOT NULL DEFAULT '[]',
  failed_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
  retried_at        timestamptz,
  retry_run_id      text REFERENCES task_runs (id) ON DELETE SET NULL
);
-- dlq:list (newest first) and db:cleanup (older than the retention).
CREATE INDEX dlq_failed_at_idx ON dlq (failed_at);
-- Foreign-key look-ups when task runs are deleted: without these, deleting runs scans the DLQ per row.
CREATE INDEX dlq_task_run_id_idx ON dlq (task_run_id);
CREATE INDEX dlq_retry_run_id_idx ON dlq (retry_run_id) WHERE retry_run_id IS NOT NULL;

CREATE TABLE idempotency_cache (
  task_id         text NOT NULL,
  idempotency_key text NOT NULL,
  task_run_id     text REFERENCES task_runs (id) ON DELETE SET NULL,
  output          jsonb,
  cached_at       timestamptz NOT NULL DEFAULT now(),
  expires_at      timestamptz NOT NULL,
  PRIMARY KEY (task_id, idempotency_key)
);
-- db:cleanup of expired entries, in batches ordered by expiry.
CREATE INDEX idempotency_cache_expires_at_idx ON idempotency_cache (expires_at);
CREATE INDEX idempotency_cache_task_run_id_idx ON idempotency_cache (task_run_id) WHERE task_run_id IS NOT NULL;
