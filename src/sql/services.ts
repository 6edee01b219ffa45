/** SQL on `services`, `tasks` and `task_code_history`. */
import { statement } from './schema'

export const upsertService = statement('upsert_service', (s) => `INSERT INTO ${s.q}.services (id, version, base_url) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, base_url = EXCLUDED.base_url, updated_at = now()
         RETURNING (xmax = 0) AS created`)

/** The tasks of other services among $2 (a task id belongs to one service). */
export const tasksOwnedElsewhere = statement('tasks_owned_elsewhere', (s) => `SELECT id, service_id FROM ${s.q}.tasks WHERE id = ANY ($2::text[]) AND service_id <> $1 ORDER BY id`)

/**
 * Lock the existing rows of the tasks $1 (in id order, so two registrations cannot deadlock) and
 * read their code hash and version: what registerService compares the manifest with. A separate
 * statement on purpose: a `SELECT … FOR UPDATE` in a CTE of the upsert below is only evaluated when
 * RETURNING first reads it, after the upsert has updated the row, and FOR UPDATE then skips a row
 * that the same command updated, so it read nothing and every task looked new.
 */
export const lockTasks = statement('lock_tasks', (s) => `SELECT id, code_hash, code_version FROM ${s.q}.tasks WHERE id = ANY ($1::text[]) ORDER BY id FOR NO KEY UPDATE`)

/**
 * Upsert one task; a changed code_hash bumps code_version. Returns the version and whether the row
 * was inserted (xmax = 0, as upsertService); the caller appends task_code_history on a change.
 */
export const upsertTask = statement('upsert_task', (s) => `INSERT INTO ${s.q}.tasks (id, service_id, code_hash, code_version, timeout_seconds, retries, retry_backoff,
                            retry_delay_ms, max_retry_delay_ms, heartbeat_interval_ms, concurrency, priority,
                            idempotency_ttl_seconds, allowed_next, description)
         VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::text[], $14)
         ON CONFLICT (id) DO UPDATE SET
           service_id = EXCLUDED.service_id,
           code_hash = EXCLUDED.code_hash,
           code_version = tasks.code_version
             + CASE WHEN tasks.code_hash IS DISTINCT FROM EXCLUDED.code_hash THEN 1 ELSE 0 END,
           timeout_seconds = EXCLUDED.timeout_seconds, retries = EXCLUDED.retries,
           retry_backoff = EXCLUDED.retry_backoff, retry_delay_ms = EXCLUDED.retry_delay_ms,
           max_retry_delay_ms = EXCLUDED.max_retry_delay_ms, heartbeat_interval_ms = EXCLUDED.heartbeat_interval_ms,
           concurrency = EXCLUDED.concurrency, priority = EXCLUDED.priority,
           idempotency_ttl_seconds = EXCLUDED.idempotency_ttl_seconds, allowed_next = EXCLUDED.allowed_next,
           description = EXCLUDED.description, updated_at = now()
         RETURNING code_version, (xmax = 0) AS created`)

export const recordCodeVersion = statement('record_code_version', (s) => `INSERT INTO ${s.q}.task_code_history (task_id, code_version, code_hash) VALUES ($1, $2, $3)
         ON CONFLICT (task_id, code_version) DO NOTHING`)

export const listServices = statement('list_services', (s) => `SELECT s.id, s.version, s.base_url, s.registered_at, s.updated_at,
                COALESCE(json_agg(json_build_object(
                  'id', t.id, 'codeHash', t.code_hash, 'codeVersion', t.code_version,
                  'timeout', t.timeout_seconds, 'retries', t.retries, 'retryBackoff', t.retry_backoff,
                  'retryDelayMs', t.retry_delay_ms, 'maxRetryDelayMs', t.max_retry_delay_ms,
                  'heartbeatIntervalMs', t.heartbeat_interval_ms, 'concurrency', t.concurrency,
                  'priority', t.priority, 'idempotencyTTL', t.idempotency_ttl_seconds,
                  'allowedNext', t.allowed_next, 'description', t.description) ORDER BY t.id)
                  FILTER (WHERE t.id IS NOT NULL), '[]') AS tasks
           FROM ${s.q}.services s LEFT JOIN ${s.q}.tasks t ON t.service_id = s.id
          GROUP BY s.id ORDER BY s.id`)

/**
 * A dispatch to service $1 reached its worker (any answer): its breaker closes and its count of
 * connect failures starts again (pipeweave_breaker_reached_v1, migration 003: no lock and no write
 * when there is nothing to close). `was_open`: it was open (a control_events row by orchestrator
 * $2 was written, and every orchestrator notified).
 */
export const breakerReached = statement('breaker_reached', (s) => `
  SELECT ${s.q}.pipeweave_breaker_reached_v1($1::text, 'orchestrator:' || $2::text) AS was_open`)
