/**
 * SQL on `services`, `tasks` and `task_code_history`, and the flow-control state those rows carry
 * (SPEC §7: pauses, the breaker, rate limits; migration 003). Changes of a pause or a runtime limit
 * are recorded in control_events by the trigger of 003 (pipeweave_flow_changed), from the actor and
 * reason each statement below sets for its transaction.
 */
import { type Schema, statement } from './schema'

/**
 * The service's row locked, and whether its breaker holds state (open, half-open or expired): a
 * registration with `breaker: false` closes it (upsertService) and records that.
 */
export const lockService = statement('lock_service', (s) => `SELECT breaker_open_until IS NOT NULL AS breaker_set
           FROM ${s.q}.services WHERE id = $1 FOR NO KEY UPDATE`)

/**
 * Upsert a service. $4 is the manifest's `breaker` (default true); turning it off forgets the
 * breaker's state, so that nothing holds the service's runs. Never touches its pause (SPEC §7).
 */
export const upsertService = statement('upsert_service', (s) => `INSERT INTO ${s.q}.services (id, version, base_url, breaker_enabled) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, base_url = EXCLUDED.base_url, updated_at = now(),
           breaker_enabled = EXCLUDED.breaker_enabled,
           breaker_failures = CASE WHEN EXCLUDED.breaker_enabled THEN services.breaker_failures ELSE 0 END,
           breaker_open_until = CASE WHEN EXCLUDED.breaker_enabled THEN services.breaker_open_until END,
           breaker_cooldown_ms = CASE WHEN EXCLUDED.breaker_enabled THEN services.breaker_cooldown_ms END,
           breaker_opened_at = CASE WHEN EXCLUDED.breaker_enabled THEN services.breaker_opened_at END,
           breaker_expires_at = CASE WHEN EXCLUDED.breaker_enabled THEN services.breaker_expires_at END
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
 * The manifest's rateLimit is rate_limit/rate_period_ms; the pause and the runtime limit
 * (rate_override*) are not in the SET list: a registration never undoes them (SPEC §7).
 */
export const upsertTask = statement('upsert_task', (s) => `INSERT INTO ${s.q}.tasks (id, service_id, code_hash, code_version, timeout_seconds, retries, retry_backoff,
                            retry_delay_ms, max_retry_delay_ms, heartbeat_interval_ms, concurrency, priority,
                            idempotency_ttl_seconds, allowed_next, description, rate_limit, rate_period_ms)
         VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::text[], $14, $15, $16)
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
           description = EXCLUDED.description, rate_limit = EXCLUDED.rate_limit, rate_period_ms = EXCLUDED.rate_period_ms,
           updated_at = now()
         RETURNING code_version, (xmax = 0) AS created`)

export const recordCodeVersion = statement('record_code_version', (s) => `INSERT INTO ${s.q}.task_code_history (task_id, code_version, code_hash) VALUES ($1, $2, $3)
         ON CONFLICT (task_id, code_version) DO NOTHING`)

/**
 * A service's breaker as the server's clock sees it: off (manifest `breaker: false`), closed, open
 * (nothing claimed before breaker_open_until), half-open (one probe at a time) or expired (open
 * past PIPEWEAVE_BREAKER_MAX_OPEN_MS: it holds nothing, and connect failures use attempts).
 */
const breakerState = (sv: string) => `CASE WHEN NOT ${sv}.breaker_enabled THEN 'off'
              WHEN ${sv}.breaker_open_until IS NULL THEN 'closed'
              WHEN ${sv}.breaker_expires_at IS NOT NULL AND ${sv}.breaker_expires_at <= now() THEN 'expired'
              WHEN ${sv}.breaker_open_until > now() THEN 'open'
              ELSE 'half-open' END`

/** A pause of the row `x` as JSON ({ at, by, reason }), or null. */
const pauseJson = (x: string) => `CASE WHEN ${x}.paused_at IS NULL THEN NULL
           ELSE json_build_object('at', ${x}.paused_at, 'by', ${x}.paused_by, 'reason', ${x}.pause_reason) END`

/** A limit as JSON ({ limit, periodMs }), or null. */
const rateJson = (limit: string, period: string) => `CASE WHEN ${limit} IS NULL THEN NULL
           ELSE json_build_object('limit', ${limit}, 'periodMs', ${period}) END`

/** The limit in force: the runtime one (tasks:limit) while set, else the manifest's. */
const effectiveRate = (t: string) => rateJson(
  `CASE WHEN ${t}.rate_override THEN ${t}.rate_override_limit ELSE ${t}.rate_limit END`,
  `CASE WHEN ${t}.rate_override THEN ${t}.rate_override_period_ms ELSE ${t}.rate_period_ms END`)

/** The flow-control columns of a service `sv`, for listServices and readServiceFlow. */
const serviceFlowColumns = (sv: string) => `${pauseJson(sv)} AS paused,
         ${breakerState(sv)} AS breaker_state, ${sv}.breaker_failures, ${sv}.breaker_open_until,
         ${sv}.breaker_opened_at, ${sv}.breaker_expires_at, ${sv}.breaker_cooldown_ms`

export const listServices = statement('list_services', (s) => `SELECT s.id, s.version, s.base_url, s.registered_at, s.updated_at,
                ${serviceFlowColumns('s')},
                COALESCE(json_agg(json_build_object(
                  'id', t.id, 'codeHash', t.code_hash, 'codeVersion', t.code_version,
                  'timeout', t.timeout_seconds, 'retries', t.retries, 'retryBackoff', t.retry_backoff,
                  'retryDelayMs', t.retry_delay_ms, 'maxRetryDelayMs', t.max_retry_delay_ms,
                  'heartbeatIntervalMs', t.heartbeat_interval_ms, 'concurrency', t.concurrency,
                  'priority', t.priority, 'idempotencyTTL', t.idempotency_ttl_seconds,
                  'allowedNext', t.allowed_next, 'description', t.description,
                  'rateLimit', ${rateJson('t.rate_limit', 't.rate_period_ms')},
                  'paused', ${pauseJson('t')},
                  'effectiveRateLimit', ${effectiveRate('t')},
                  'rateLimitSource', CASE WHEN t.rate_override THEN 'runtime' ELSE 'manifest' END) ORDER BY t.id)
                  FILTER (WHERE t.id IS NOT NULL), '[]') AS tasks
           FROM ${s.q}.services s LEFT JOIN ${s.q}.tasks t ON t.service_id = s.id
          GROUP BY s.id ORDER BY s.id`)

// ---------------------------------------------------------------------------------------------
// Flow control (SPEC §7): pauses and runtime rate limits. Each change is one transaction: the
// rows locked in id order (two operators pausing overlapping sets cannot deadlock), then one
// UPDATE whose trigger records each row it changes (a no-op changes and records nothing).

/**
 * The actor ($a) and reason ($r) of this transaction's flow-control changes, for the trigger of
 * 003 (as setMode does for a mode change): a MATERIALIZED CTE that the UPDATE must read first.
 */
const who = (a: string, r: string) => `who AS MATERIALIZED (
    SELECT set_config('pipeweave.actor', ${a}::text, true) AS actor, set_config('pipeweave.reason', COALESCE(${r}::text, ''), true) AS reason
  )`

/** The tasks $1 that exist, locked (id order). */
export const lockTasksByIds = statement('lock_tasks_flow', (s) => `SELECT id FROM ${s.q}.tasks WHERE id = ANY ($1::text[]) ORDER BY id FOR NO KEY UPDATE`)

/** The service $1 if it exists, locked. */
export const lockServiceById = statement('lock_service_flow', (s) => `SELECT id FROM ${s.q}.services WHERE id = $1 FOR NO KEY UPDATE`)

/** Pause ($4 true) or resume ($4 false) the tasks $1, by actor $2 for reason $3; returns those that changed. */
export const setTasksPaused = statement('set_tasks_paused', (s) => `WITH ${who('$2', '$3')}
  UPDATE ${s.q}.tasks t SET paused_at = CASE WHEN $4::boolean THEN clock_timestamp() END
   WHERE t.id = ANY ($1::text[]) AND (t.paused_at IS NULL) = $4::boolean AND EXISTS (SELECT 1 FROM who)
  RETURNING t.id`)

/** Pause ($4 true) or resume ($4 false) the service $1 (a state of the service: it covers its tasks, later ones too). */
export const setServicePaused = statement('set_service_paused', (s) => `WITH ${who('$2', '$3')}
  UPDATE ${s.q}.services sv SET paused_at = CASE WHEN $4::boolean THEN clock_timestamp() END
   WHERE sv.id = $1::text AND (sv.paused_at IS NULL) = $4::boolean AND EXISTS (SELECT 1 FROM who)
  RETURNING sv.id`)

/**
 * Task $1's runtime limit: $2 false follows the manifest; true uses $3 starts per $4 ms (both
 * null: no limit). By actor $5 for reason $6; returns the row only when it changed.
 */
export const setTaskRateOverride = statement('set_task_rate_override', (s) => `WITH ${who('$5', '$6')}
  UPDATE ${s.q}.tasks t SET rate_override = $2::boolean, rate_override_limit = $3::int, rate_override_period_ms = $4::int
   WHERE t.id = $1::text AND EXISTS (SELECT 1 FROM who)
     AND (t.rate_override, t.rate_override_limit, t.rate_override_period_ms) IS DISTINCT FROM ($2::boolean, $3::int, $4::int)
  RETURNING t.id`)

/** The flow-control state of the tasks $1 (null: every task), with their service's pause. */
export const readTaskFlow = statement('read_task_flow', (s) => `SELECT t.id, t.service_id,
         ${pauseJson('t')} AS paused, ${pauseJson('sv')} AS service_paused,
         ${rateJson('t.rate_limit', 't.rate_period_ms')} AS manifest_rate_limit,
         ${effectiveRate('t')} AS rate_limit, t.rate_override
    FROM ${s.q}.tasks t JOIN ${s.q}.services sv ON sv.id = t.service_id
   WHERE $1::text[] IS NULL OR t.id = ANY ($1::text[])
   ORDER BY t.id`)

/** The flow-control state of the service $1 (null: every service), with its tasks paused on their own. */
export const readServiceFlow = statement('read_service_flow', (s) => `SELECT sv.id, ${serviceFlowColumns('sv')},
         ARRAY(SELECT t.id FROM ${s.q}.tasks t WHERE t.service_id = sv.id AND t.paused_at IS NOT NULL ORDER BY t.id) AS paused_tasks
    FROM ${s.q}.services sv
   WHERE $1::text IS NULL OR sv.id = $1::text
   ORDER BY sv.id`)

/** Whether task $1 is held by a pause now (its own, or its service's): tasks:enqueue's note. */
export const taskPause = statement('task_pause', (s: Schema) => `SELECT t.service_id, ${pauseJson('t')} AS paused, ${pauseJson('sv')} AS service_paused
    FROM ${s.q}.tasks t JOIN ${s.q}.services sv ON sv.id = t.service_id
   WHERE t.id = $1::text`)

/**
 * /metrics: every task, on while paused (its own pause or its service's); every service, on while
 * its breaker holds runs back (open or half-open: opened, and not past breaker_expires_at).
 */
export const flowGauges = statement('flow_gauges', (s) => `SELECT 'task' AS kind, t.id, (t.paused_at IS NOT NULL OR sv.paused_at IS NOT NULL) AS active
    FROM ${s.q}.tasks t JOIN ${s.q}.services sv ON sv.id = t.service_id
  UNION ALL
  SELECT 'service', sv.id, (sv.breaker_enabled AND sv.breaker_open_until IS NOT NULL AND (sv.breaker_expires_at IS NULL OR sv.breaker_expires_at > now()))
    FROM ${s.q}.services sv`)
/**
 * A dispatch to service $1 reached its worker (any answer): its breaker closes and its count of
 * connect failures starts again (pipeweave_breaker_reached_v1, migration 003: no lock and no write
 * when there is nothing to close). `was_open`: it was open (a control_events row by orchestrator
 * $2 was written, and every orchestrator notified).
 */
export const breakerReached = statement('breaker_reached', (s) => `
  SELECT ${s.q}.pipeweave_breaker_reached_v1($1::text, 'orchestrator:' || $2::text) AS was_open`)
