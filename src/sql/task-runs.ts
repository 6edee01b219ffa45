/**
 * The run life cycle (SPEC §3, §5) as plain statements, one per operation (graphile-worker's
 * src/sql, River's river_job.sql): enqueue, claim, complete, fail, hand back, sweep, and what
 * reads runs. `task_runs` holds live work only (pending, running, waiting); a run that finishes
 * moves to `task_run_history` in the statement that finishes it. Every statement names the index
 * that serves it (migrations/001). Only the rules every writer must obey are database functions
 * (migrations/002: pipeweave_gate_v1, pipeweave_claim_gate_v1, pipeweave_task_room_v1;
 * migrations/003, flow control: pipeweave_task_room_v2, pipeweave_rate_stamp_v1,
 * pipeweave_breaker_probe_v1, pipeweave_breaker_connect_failed_v1).
 *
 * Batches are JSON arrays unnested with jsonb_to_recordset (one round trip and one commit for many
 * runs), and every write to a run is fenced in its WHERE: still `running`, by this orchestrator,
 * on this attempt. A late answer from a lost attempt changes nothing.
 */
import { type Schema, statement } from './schema'

export const RunStatus = Object.freeze({
  PENDING: 'pending',
  RUNNING: 'running',
  COMPLETED: 'completed',
  FAILED: 'failed',
  TIMEOUT: 'timeout',
  CANCELLED: 'cancelled',
  WAITING: 'waiting',
} as const)
export type RunStatus = (typeof RunStatus)[keyof typeof RunStatus]

/** Every column of task_runs and task_run_history, in one order. */
const COLUMNS = `id, task_id, pipeline_run_id, parent_run_id, status, attempt, priority, input, output,
  input_path, output_path, error, error_code, idempotency_key, previous_attempts, scheduled_for,
  created_at, started_at, completed_at, heartbeat_at, orchestrator_id, due_at`

/**
 * The elements of a JSON array parameter as rows with these typed fields, numbered from 1 in
 * array order (`ord`): how every batch reaches SQL.
 */
function records(param: string, fields: Array<[string, string]>): string {
  const defs = fields.map(([name, type]) => `${name} ${type}`).join(', ')
  const names = fields.map(([name]) => name).join(', ')
  return `ROWS FROM (jsonb_to_recordset(${param}::jsonb) AS (${defs})) WITH ORDINALITY AS x(${names}, ord)`
}

/** A notification on the schema's channel: due work was added. */
const notify = (s: Schema) => `pg_notify('${s.channel}', 'runs')`

// ---------------------------------------------------------------------------------------------
// Enqueue

/**
 * Enqueue runs of task $1, one per element of $2 (a JSON array of
 * { input, priority, key, delayMs }), with input_path $3 and pipeline_run_id $4 for all.
 * One row per element, in order: `run_id` is the new run, or the run that the idempotency cache
 * names (`cached`); null with neither means an active run holds the key (resolveActiveKeys).
 * `known`: the task exists; `mode`: the mode read through the gate (nothing is inserted unless it
 * is `running`). The gate is held until the transaction ends (SPEC §4).
 * Inserts: task_runs_pkey, task_runs_claim_idx; task_runs_idempotency_active_uidx decides between
 * concurrent enqueues of one key (ON CONFLICT), never a read-then-insert.
 */
export const enqueueRuns = statement('enqueue_runs', (s) => `
  WITH gate AS MATERIALIZED (
    SELECT ${s.q}.pipeweave_gate_v1() AS mode
  ), task AS MATERIALIZED (
    SELECT t.id, t.priority FROM ${s.q}.tasks t WHERE t.id = $1::text
  ), items AS MATERIALIZED (
    SELECT x.ord, x.input, x.priority, x.key, COALESCE(x."delayMs", 0) AS delay_ms,
           c.task_run_id AS cached_run, (c.task_id IS NOT NULL) AS cached
      FROM ${records('$2', [['input', 'jsonb'], ['priority', 'integer'], ['key', 'text'], ['"delayMs"', 'bigint']])}
      LEFT JOIN ${s.q}.idempotency_cache c                          -- idempotency_cache_pkey
        ON c.task_id = $1::text AND c.idempotency_key = x.key AND c.expires_at > now()
  ), fresh AS MATERIALIZED (
    SELECT ${s.q}.pipeweave_new_id() AS id, i.ord, i.input, COALESCE(i.priority, t.priority) AS priority, i.key, i.delay_ms
      FROM items i CROSS JOIN task t
     WHERE NOT i.cached AND (SELECT g.mode FROM gate g) = 'running'
     ORDER BY i.ord
  ), inserted AS (
    INSERT INTO ${s.q}.task_runs (id, task_id, input, priority, idempotency_key, scheduled_for, input_path, pipeline_run_id)
    SELECT f.id, $1::text, f.input, f.priority, f.key,
           CASE WHEN f.delay_ms > 0 THEN clock_timestamp() + f.delay_ms * interval '1 millisecond' END,
           $3::text, $4::text
      FROM fresh f ORDER BY f.ord
    ON CONFLICT (task_id, idempotency_key) WHERE idempotency_key IS NOT NULL AND status IN ('pending', 'running')
    DO NOTHING
    RETURNING id, scheduled_for
  ), woken AS (
    SELECT ${notify(s)} FROM (SELECT 1 FROM inserted n WHERE n.scheduled_for IS NULL LIMIT 1) AS any_due
  )
  SELECT (SELECT g.mode FROM gate g) AS mode, EXISTS (SELECT 1 FROM task) AS known,
         i.ord::int AS ord, i.cached,
         CASE WHEN i.cached THEN i.cached_run ELSE n.id END AS run_id,
         (SELECT count(*) FROM woken)::int AS notified
    FROM items i
    LEFT JOIN fresh f ON f.ord = i.ord
    LEFT JOIN inserted n ON n.id = f.id
   ORDER BY i.ord`)

/** What an enqueue of nothing still answers: does task $1 exist, and the mode (no gate: nothing is written). */
export const enqueueCheck = statement('enqueue_check', (s) => `
  SELECT EXISTS (SELECT 1 FROM ${s.q}.tasks t WHERE t.id = $1::text) AS known,
         (SELECT st.mode FROM ${s.q}.orchestrator_state st WHERE st.id = 'singleton') AS mode`)

/** The active (pending or running) runs of task $1 holding the keys $2; task_runs_idempotency_active_uidx. */
export const resolveActiveKeys = statement('resolve_active_keys', (s) => `
  SELECT r.idempotency_key AS key, r.id FROM ${s.q}.task_runs r
   WHERE r.task_id = $1::text AND r.idempotency_key = ANY ($2::text[]) AND r.status IN ('pending', 'running')`)

// ---------------------------------------------------------------------------------------------
// Claim

/**
 * Claim up to $2 due runs for orchestrator $1 (SPEC §5), whose registration must have heartbeated
 * within $3 ms. One row always: `state` is pipeweave_claim_gate_v1's answer ('unregistered', or
 * the mode), `wake_in_ms` and `rate_held` say what held work back (below), and the claimed runs
 * follow, one per row (id null when none), with what dispatch needs of their task and service, and
 * the idempotency cache's output for a key that has one.
 *
 * How (task_runs_claim_idx, (task_id, priority, due_at, id) WHERE pending):
 *   clock       one instant for the whole claim, read once every room is counted: its runs'
 *               started_at, and the time their rate slots are stamped with (SPEC §7: a rate
 *               limit counts started_at exactly); never earlier than the counts it obeys;
 *   groups      the (task, priority) pairs with pending runs, by a skip scan: one index descent
 *               per pair, however many runs each holds;
 *   rules       per task: paused (task or service, read here) → room 0; every rate slot in use
 *               (read here, unlocked) → room 0; no rule (no concurrency limit, no rate limit, its
 *               service's breaker closed) → NULL, no function called;
 *               else pipeweave_task_room_v2 (migration 003): the breaker (open → 0, half-open →
 *               one probe for the whole service), the concurrency limit counted under the task's
 *               lock, the free rate slots under the task's rate lock;
 *   candidates  the head of each group a task with room has, due now (a range scan: runs due
 *               later sit after them and are never read), locked SKIP LOCKED so orchestrators
 *               claiming side by side take different runs;
 *   chosen      in claim order (priority, due time, id), no task beyond its room, one run of a
 *               half-open service at most (its probe), at most $2;
 *   stamped     after the UPDATE, when the number taken is known: the rate slots the claimed runs
 *               used, stamped with their started_at (pipeweave_rate_stamp_v1, under the rate lock
 *               the room took), and the probe's lease (pipeweave_breaker_probe_v1);
 *   held        when held-back work may be claimable next (a rate slot freeing, an open breaker's
 *               open_until), as milliseconds from now, and the rate-limited tasks with due runs
 *               that the rate limit held back in this claim (/metrics counts them).
 * The rows locked and not chosen are free again at commit.
 */
export const claimRuns = statement('claim_runs', (s) => `
  WITH RECURSIVE gate AS MATERIALIZED (
    SELECT ${s.q}.pipeweave_claim_gate_v1($1::text, $3::int) AS state
  ), groups AS (
    (SELECT r.task_id, r.priority FROM ${s.q}.task_runs r
      WHERE r.status = 'pending' AND (SELECT g.state FROM gate g) IN ('running', 'waiting_for_maintenance')
      ORDER BY r.task_id, r.priority LIMIT 1)
    UNION ALL
    SELECT n.task_id, n.priority FROM groups g CROSS JOIN LATERAL (
      SELECT r.task_id, r.priority FROM ${s.q}.task_runs r
       WHERE r.status = 'pending' AND (r.task_id, r.priority) > (g.task_id, g.priority)
       ORDER BY r.task_id, r.priority LIMIT 1) AS n
  ), rules AS MATERIALIZED (
    SELECT t.id AS task_id, t.service_id,
           CASE WHEN t.paused_at IS NOT NULL OR sv.paused_at IS NOT NULL
                THEN ROW(0, NULL::timestamptz, false, false, false)::${s.q}.pipeweave_room_v2
                WHEN sv.breaker_open_until IS NULL AND rs.full
                THEN ROW(0, rs.next_free, false, true, false)::${s.q}.pipeweave_room_v2
                WHEN t.concurrency > 0 OR sv.breaker_open_until IS NOT NULL OR rt.lim IS NOT NULL
                THEN ${s.q}.pipeweave_task_room_v2(t.id, 'orchestrator:' || $1::text)
           END AS r
      FROM ${s.q}.tasks t JOIN ${s.q}.services sv ON sv.id = t.service_id
     CROSS JOIN LATERAL (
       SELECT CASE WHEN t.rate_override THEN t.rate_override_limit ELSE t.rate_limit END AS lim,
              CASE WHEN t.rate_override THEN t.rate_override_period_ms ELSE t.rate_period_ms END * interval '1 millisecond' AS period) AS rt
     -- A rate-limited task whose every slot (as many as its limit) was used within the period:
     -- held back, read without its lock or a function call (a backlog held by its rate is
     -- claimed past at every claim). Safe unlocked: stamps only move forward, so a slot seen in
     -- use is in use; a slot to add or free again is pipeweave_task_room_v2's (NULL here).
      LEFT JOIN LATERAL (
       SELECT count(*) = rt.lim AND bool_and(x.at >= clock_timestamp() - rt.period) AS full, min(x.at) + rt.period AS next_free
         FROM ${s.q}.task_rate_slots x
        WHERE rt.lim IS NOT NULL AND x.task_id = t.id) AS rs ON true
     WHERE t.id IN (SELECT g.task_id FROM groups g)
  ), clock AS MATERIALIZED (
    -- After every room (it reads them all first).
    SELECT clock_timestamp() AS at FROM (SELECT count(*) FROM rules) AS counted
  ), room AS (
    -- The fields of the materialized answers (read from a materialized CTE, the function is
    -- called once per task, not once per field).
    SELECT x.task_id, x.service_id, (x.r).room AS room, (x.r).wake_at AS wake_at,
           COALESCE((x.r).rate, false) AS rate, COALESCE((x.r).rate_held, false) AS rate_held,
           COALESCE((x.r).probe, false) AS probe
      FROM rules x
  ), candidates AS (
    SELECT c.ctid, c.id, c.task_id, c.priority, c.due_at, rm.room, CASE WHEN rm.probe THEN rm.service_id END AS probe_of
      FROM groups g
      JOIN room rm ON rm.task_id = g.task_id AND (rm.room IS NULL OR rm.room > 0)
     CROSS JOIN LATERAL (
       SELECT r.ctid, r.id, r.task_id, r.priority, r.due_at FROM ${s.q}.task_runs r
        WHERE r.status = 'pending' AND r.task_id = g.task_id AND r.priority = g.priority AND r.due_at <= now()
        ORDER BY r.due_at, r.id
        LIMIT LEAST(COALESCE(rm.room, $2::int), $2::int)
          FOR UPDATE SKIP LOCKED) AS c
  ), chosen AS (
    SELECT c.ctid FROM (
      SELECT c.*, row_number() OVER (PARTITION BY c.task_id ORDER BY c.priority, c.due_at, c.id) AS nth,
             row_number() OVER (PARTITION BY c.probe_of ORDER BY c.priority, c.due_at, c.id) AS nth_of_probed
        FROM candidates c
    ) AS c
     WHERE (c.room IS NULL OR c.nth <= c.room) AND (c.probe_of IS NULL OR c.nth_of_probed = 1)
     ORDER BY c.priority, c.due_at, c.id
     LIMIT $2::int
  ), claimed AS (
    -- The locked rows themselves, by their tuple ids (a TID scan): no plan to choose, however
    -- small or bloated the table looks to the planner.
    UPDATE ${s.q}.task_runs r
       SET status = 'running', started_at = (SELECT c.at FROM clock c), heartbeat_at = (SELECT c.at FROM clock c),
           orchestrator_id = $1::text
     WHERE r.ctid = ANY (ARRAY(SELECT c.ctid FROM chosen c)) AND r.status = 'pending'
    RETURNING r.id, r.task_id, r.pipeline_run_id, r.attempt, r.priority, r.input, r.input_path,
              r.previous_attempts, r.idempotency_key, r.due_at
  ), stamped AS MATERIALIZED (
    SELECT ${s.q}.pipeweave_rate_stamp_v1(k.task_id, k.n, (SELECT c.at FROM clock c)) AS next_free
      FROM (SELECT c.task_id, count(*)::int AS n FROM claimed c GROUP BY c.task_id) AS k
     WHERE k.task_id IN (SELECT rm.task_id FROM room rm WHERE rm.rate)
  ), probed AS MATERIALIZED (
    SELECT ${s.q}.pipeweave_breaker_probe_v1(p.service_id, p.run_id, (SELECT c.at FROM clock c), 'orchestrator:' || $1::text) AS until
      FROM (SELECT rm.service_id, min(c.id) AS run_id
              FROM claimed c JOIN room rm ON rm.task_id = c.task_id AND rm.probe
             GROUP BY rm.service_id) AS p
  ), held AS MATERIALIZED (
    SELECT extract(epoch FROM (
             SELECT min(w.at) FROM (
               SELECT rm.wake_at AS at FROM room rm
               UNION ALL SELECT st.next_free FROM stamped st
               UNION ALL SELECT pr.until FROM probed pr) AS w
           ) - clock_timestamp()) * 1000 AS wake_in_ms,
           ARRAY(
             SELECT rm.task_id FROM room rm
              -- Per task held back (a sub-plan, evaluated for those rows only): the head of each of
              -- its groups, due now, as the candidates read them (an index probe per group).
              WHERE rm.rate_held AND (
                SELECT count(*) FROM groups g CROSS JOIN LATERAL (
                  SELECT 1 FROM ${s.q}.task_runs r
                   WHERE r.status = 'pending' AND r.task_id = g.task_id AND r.priority = g.priority AND r.due_at <= now()
                   ORDER BY r.due_at
                   LIMIT 1) AS due
                 WHERE g.task_id = rm.task_id) > 0
              ORDER BY rm.task_id) AS rate_held
  )
  -- Only what a dispatch needs: every column here is parsed by the orchestrator for every run.
  SELECT g.state, h.wake_in_ms::float8 AS wake_in_ms, h.rate_held,
         c.id, c.task_id, c.pipeline_run_id, c.attempt, c.input, c.input_path, c.previous_attempts,
         c.idempotency_key, sv.base_url, t.code_version, t.code_hash, t.timeout_seconds,
         t.retries, t.retry_backoff, t.retry_delay_ms, t.max_retry_delay_ms,
         t.service_id, sv.breaker_enabled, (sv.breaker_failures > 0 OR sv.breaker_opened_at IS NOT NULL) AS breaker_dirty,
         (ic.task_id IS NOT NULL) AS cached, ic.output AS cached_output
    FROM gate g
   CROSS JOIN held h
    LEFT JOIN (claimed c
      JOIN ${s.q}.tasks t ON t.id = c.task_id
      JOIN ${s.q}.services sv ON sv.id = t.service_id
      -- A look-up per run with a key (idempotency_cache_pkey), whatever the cache's size: never a
      -- join a cached plan could have chosen while the cache was empty.
      LEFT JOIN LATERAL (
        SELECT x.task_id, x.output FROM ${s.q}.idempotency_cache x
         WHERE c.idempotency_key IS NOT NULL AND x.task_id = c.task_id AND x.idempotency_key = c.idempotency_key
           AND x.expires_at > now()) AS ic ON true
    ) ON true
   ORDER BY c.priority, c.due_at, c.id`)

// ---------------------------------------------------------------------------------------------
// Finish

/**
 * The dashboard's throughput (migration 004, throughput_minutes): the counts of the results a
 * statement writes, added to this minute's row of each (task, orchestrator) in the same statement
 * (no round trip or commit of its own). `rows` yields (task_id, orchestrator_id, completed, failed,
 * retried), one per result. Rows are upserted in key order, so two statements that add to the same
 * rows take their locks in one order (no deadlock); the orchestrator in the key keeps orchestrators
 * off each other's rows. Only counters change: a HOT update while the page has room.
 */
function tally(s: Schema, rows: string): string {
  return `INSERT INTO ${s.q}.throughput_minutes AS m (minute, task_id, orchestrator_id, completed, failed, retried)
    SELECT date_trunc('minute', now()), x.task_id, COALESCE(x.orchestrator_id, ''),
           sum(x.completed)::int, sum(x.failed)::int, sum(x.retried)::int
      FROM (${rows}) AS x
     GROUP BY x.task_id, COALESCE(x.orchestrator_id, '')
     ORDER BY x.task_id, COALESCE(x.orchestrator_id, '')
    ON CONFLICT (minute, task_id, orchestrator_id) DO UPDATE
      SET completed = m.completed + EXCLUDED.completed, failed = m.failed + EXCLUDED.failed, retried = m.retried + EXCLUDED.retried`
}

/**
 * Complete runs held by orchestrator $1 (SPEC §5): $2 is a JSON array of
 * { id, attempt, output, next: [task ids], cached }. In one statement: the runs leave task_runs
 * for task_run_history as `completed`, the idempotency cache is filled (a key, a task TTL, and the
 * output not itself from the cache), and the follow-ups that the finished task allows are created
 * with its output as input (in any mode: they belong to the work in flight, SPEC §5). One row per
 * element, in order: `completed` false when the run was not ours any more (fenced); the ids of its
 * follow-ups in runNext order, and the names it asked for that its task does not allow. The
 * minute's throughput counts of the dashboard are added in the same statement (tally).
 */
export const completeRuns = statement('complete_runs', (s) => `
  WITH input AS (
    SELECT x.* FROM ${records('$2', [['id', 'text'], ['attempt', 'integer'], ['output', 'jsonb'], ['next', 'text[]'], ['cached', 'boolean']])}
  ), done AS (
    -- By primary key (id = ANY of the batch's ids): joined to the JSON rows alone, the planner
    -- guesses 100 of them and hashes every running run instead.
    DELETE FROM ${s.q}.task_runs r USING input i                    -- task_runs_pkey
     WHERE r.id = ANY (ARRAY(SELECT x.id FROM input x)) AND r.id = i.id
       AND r.attempt = i.attempt AND r.status = 'running' AND r.orchestrator_id = $1::text
    RETURNING r.*, i.output AS result, i.next, i.cached AS from_cache
  ), history AS (
    INSERT INTO ${s.q}.task_run_history (${COLUMNS})
    SELECT d.id, d.task_id, d.pipeline_run_id, d.parent_run_id, 'completed', d.attempt, d.priority, d.input, d.result,
           d.input_path, d.output_path, NULL, NULL, d.idempotency_key, d.previous_attempts, d.scheduled_for,
           d.created_at, d.started_at, clock_timestamp(), clock_timestamp(), d.orchestrator_id, d.due_at
      FROM done d
  ), cache AS (
    INSERT INTO ${s.q}.idempotency_cache (task_id, idempotency_key, task_run_id, output, cached_at, expires_at)
    SELECT d.task_id, d.idempotency_key, d.id, d.result, now(), now() + t.idempotency_ttl_seconds * interval '1 second'
      FROM done d JOIN ${s.q}.tasks t ON t.id = d.task_id
     WHERE d.idempotency_key IS NOT NULL AND NOT COALESCE(d.from_cache, false) AND t.idempotency_ttl_seconds > 0
    ON CONFLICT (task_id, idempotency_key) DO UPDATE
      SET task_run_id = EXCLUDED.task_run_id, output = EXCLUDED.output, cached_at = EXCLUDED.cached_at, expires_at = EXCLUDED.expires_at
  ), wanted AS MATERIALIZED (
    SELECT d.id AS parent_id, n.name, n.pos, d.result, d.pipeline_run_id, nt.priority,
           (nt.id IS NOT NULL AND n.name = ANY (t.allowed_next)) AS allowed
      FROM done d
      JOIN ${s.q}.tasks t ON t.id = d.task_id
     CROSS JOIN LATERAL unnest(d.next) WITH ORDINALITY AS n(name, pos)
      LEFT JOIN ${s.q}.tasks nt ON nt.id = n.name
  ), follow AS MATERIALIZED (
    SELECT ${s.q}.pipeweave_new_id() AS id, w.* FROM wanted w WHERE w.allowed ORDER BY w.parent_id, w.pos
  ), created AS (
    INSERT INTO ${s.q}.task_runs (id, task_id, input, priority, pipeline_run_id, parent_run_id)
    SELECT f.id, f.name, f.result, f.priority, f.pipeline_run_id, f.parent_id FROM follow f ORDER BY f.parent_id, f.pos
  ), tally AS (
    ${tally(s, `SELECT d.task_id, $1::text AS orchestrator_id, 1 AS completed, 0 AS failed, 0 AS retried FROM done d`)}
  ), woken AS (
    SELECT ${notify(s)} FROM (SELECT 1 FROM follow LIMIT 1) AS any_follow_up
  )
  SELECT i.id AS run_id, (d.id IS NOT NULL) AS completed,
         COALESCE((SELECT array_agg(f.id ORDER BY f.pos) FROM follow f WHERE f.parent_id = d.id), '{}') AS follow_ups,
         COALESCE((SELECT array_agg(w.name ORDER BY w.pos) FROM wanted w WHERE w.parent_id = d.id AND NOT w.allowed), '{}') AS ignored_next,
         (SELECT st.mode FROM ${s.q}.orchestrator_state st WHERE st.id = 'singleton') AS mode,
         (SELECT count(*) FROM woken)::int AS notified
    FROM input i LEFT JOIN done d ON d.id = i.id AND d.attempt = i.attempt
   ORDER BY i.ord`)

/**
 * Record failed attempts (SPEC §5). $1 is a JSON array of { id, attempt, orchestrator, error,
 * code, retry, delayMs, status }, each decided by the retry policy (src/orchestrator/retry-policy.ts):
 *   retry   the same row back to `pending` with attempt + 1, the failure appended to
 *           previous_attempts, due after delayMs;
 *   final   the run leaves for task_run_history as `status` (failed or timeout) with a dlq row,
 *           in the same statement.
 * Fenced per element on (running, orchestrator, attempt): the reaper passes the dead
 * orchestrator's id. One row per element, in order: outcome retried | failed | timeout | fenced.
 * The minute's throughput counts (retried, and failed for good) are added in the same statement.
 */
export const failRuns = statement('fail_runs', (s) => `
  WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS at
  ), input AS (
    SELECT x.* FROM ${records('$1', [['id', 'text'], ['attempt', 'integer'], ['orchestrator', 'text'], ['error', 'text'],
      ['code', 'text'], ['retry', 'boolean'], ['"delayMs"', 'bigint'], ['status', 'text']])}
  ), retried AS (
    UPDATE ${s.q}.task_runs r                                        -- task_runs_pkey
       SET status = 'pending', attempt = r.attempt + 1,
           previous_attempts = r.previous_attempts || jsonb_build_array(jsonb_build_object(
             'attempt', r.attempt, 'error', i.error, 'errorCode', i.code, 'at', (SELECT c.at FROM clock c))),
           error = i.error, error_code = i.code,
           scheduled_for = (SELECT c.at FROM clock c) + GREATEST(i."delayMs", 0) * interval '1 millisecond',
           started_at = NULL, heartbeat_at = NULL, orchestrator_id = NULL
      FROM input i
     WHERE r.id = ANY (ARRAY(SELECT x.id FROM input x WHERE x.retry)) AND r.id = i.id
       AND i.retry AND r.attempt = i.attempt AND r.status = 'running'
       AND r.orchestrator_id IS NOT DISTINCT FROM i.orchestrator
    RETURNING r.id, r.task_id, i.orchestrator, i.attempt AS failed_attempt, r.scheduled_for, i."delayMs" AS delay_ms
  ), dead AS (
    DELETE FROM ${s.q}.task_runs r USING input i                    -- task_runs_pkey
     WHERE r.id = ANY (ARRAY(SELECT x.id FROM input x WHERE NOT x.retry)) AND r.id = i.id
       AND NOT i.retry AND r.attempt = i.attempt AND r.status = 'running'
       AND r.orchestrator_id IS NOT DISTINCT FROM i.orchestrator
    RETURNING r.*, i.error AS failure, i.code AS failure_code, i.status AS final_status,
              r.previous_attempts || jsonb_build_array(jsonb_build_object(
                'attempt', r.attempt, 'error', i.error, 'errorCode', i.code, 'at', (SELECT c.at FROM clock c))) AS attempts
  ), history AS (
    INSERT INTO ${s.q}.task_run_history (${COLUMNS})
    SELECT d.id, d.task_id, d.pipeline_run_id, d.parent_run_id, d.final_status, d.attempt, d.priority, d.input, d.output,
           d.input_path, d.output_path, d.failure, d.failure_code, d.idempotency_key, d.previous_attempts, d.scheduled_for,
           d.created_at, d.started_at, c.at, c.at, d.orchestrator_id, d.due_at
      FROM dead d CROSS JOIN clock c
  ), dead_letters AS (
    INSERT INTO ${s.q}.dlq (task_run_id, task_id, error, error_code, attempts, previous_attempts, failed_at)
    SELECT d.id, d.task_id, d.failure, d.failure_code, d.attempt, d.attempts, c.at
      FROM dead d CROSS JOIN clock c
  ), tally AS (
    ${tally(s, `SELECT t.task_id, t.orchestrator AS orchestrator_id, 0 AS completed, 0 AS failed, 1 AS retried FROM retried t
       UNION ALL
      SELECT d.task_id, d.orchestrator_id, 0, 1, 0 FROM dead d`)}
  ), woken AS (
    SELECT ${notify(s)} FROM (SELECT 1 FROM retried t WHERE t.delay_ms <= 0 LIMIT 1) AS any_due
  )
  SELECT i.id AS run_id,
         CASE WHEN t.id IS NOT NULL THEN 'retried' WHEN d.id IS NOT NULL THEN d.final_status ELSE 'fenced' END AS outcome,
         t.scheduled_for,
         (SELECT st.mode FROM ${s.q}.orchestrator_state st WHERE st.id = 'singleton') AS mode,
         (SELECT count(*) FROM woken)::int AS notified
    FROM input i
    LEFT JOIN retried t ON t.id = i.id AND t.failed_attempt = i.attempt
    LEFT JOIN dead d ON d.id = i.id AND d.attempt = i.attempt
   ORDER BY i.ord`)

/**
 * Connect failures of runs held by orchestrator $1 (SPEC §7, the service breaker): $2 is a JSON
 * array of { id, attempt }, runs whose dispatch failed before a connection to the worker was
 * made; $3 the cool-down and $4 the longest open time of a breaker that opens now (ms). In one
 * statement: per service, pipeweave_breaker_connect_failed_v1 (migration 003) counts them and
 * opens the breaker at 5 in a row; while the service's breaker is on and not expired, its runs go
 * back to `pending` keeping their attempt and their place (nothing in previous_attempts: no
 * attempt was used), due now. One row per element, in order: outcome `deferred` (back, the breaker
 * still closed: due for any claim, notified), `held` (back, the breaker open), `attempt` (not
 * deferred: record an ordinary failure), or `fenced` (not ours any more).
 * The runs by task_runs_pkey; services one at a time, in id order.
 */
export const deferRuns = statement('defer_runs', (s) => `
  WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS at
  ), input AS (
    SELECT x.* FROM ${records('$2', [['id', 'text'], ['attempt', 'integer']])}
  ), mine AS MATERIALIZED (
    SELECT r.id, r.attempt, t.service_id
      FROM ${s.q}.task_runs r                                       -- task_runs_pkey
      JOIN input i ON i.id = r.id AND i.attempt = r.attempt
      JOIN ${s.q}.tasks t ON t.id = r.task_id
     WHERE r.id = ANY (ARRAY(SELECT x.id FROM input x)) AND r.status = 'running' AND r.orchestrator_id = $1::text
  ), decided AS MATERIALIZED (
    SELECT d.service_id,
           ${s.q}.pipeweave_breaker_connect_failed_v1(d.service_id, d.ids, (SELECT c.at FROM clock c), $3::int, $4::int,
             'orchestrator:' || $1::text) AS verdict
      FROM (SELECT m.service_id, array_agg(m.id ORDER BY m.id) AS ids FROM mine m GROUP BY m.service_id) AS d
     ORDER BY d.service_id
  ), deferred AS (
    UPDATE ${s.q}.task_runs r                                        -- task_runs_pkey
       SET status = 'pending', started_at = NULL, heartbeat_at = NULL, orchestrator_id = NULL
      FROM mine m JOIN decided d ON d.service_id = m.service_id
     WHERE r.id = ANY (ARRAY(SELECT x.id FROM mine x)) AND r.id = m.id
       AND d.verdict IN ('deferred', 'held') AND r.attempt = m.attempt AND r.status = 'running' AND r.orchestrator_id = $1::text
    RETURNING r.id, d.verdict
  ), woken AS (
    SELECT ${notify(s)} FROM (SELECT 1 FROM deferred f WHERE f.verdict = 'deferred' LIMIT 1) AS any_due
  )
  SELECT i.id AS run_id,
         CASE WHEN f.id IS NOT NULL THEN f.verdict
              WHEN m.id IS NOT NULL AND d.verdict = 'attempt' THEN 'attempt'
              ELSE 'fenced' END AS outcome,
         (SELECT count(*) FROM woken)::int AS notified
    FROM input i
    LEFT JOIN mine m ON m.id = i.id
    LEFT JOIN decided d ON d.service_id = m.service_id
    LEFT JOIN deferred f ON f.id = i.id
   ORDER BY i.ord`)

/**
 * Hand runs back to pending keeping their attempt and their place in the queue: they were never
 * sent, or stopped by us, which is not the run's failure. Runs orchestrator $1 holds: all but $2
 * (graceful shutdown; a claim whose answer was lost), or with $3 only those (a lapsed lease).
 * task_runs_running_idx: a scan of all running runs, bounded by the fleet's concurrency.
 */
export const releaseHeld = statement('release_held_runs', (s) => `
  UPDATE ${s.q}.task_runs r
     SET status = 'pending', started_at = NULL, heartbeat_at = NULL, orchestrator_id = NULL
   WHERE r.status = 'running' AND r.orchestrator_id = $1::text
     AND NOT (r.id = ANY ($2::text[]))
     AND ($3::text[] IS NULL OR r.id = ANY ($3::text[]))
  RETURNING r.id, r.task_id, r.attempt`)

/**
 * Running runs whose orchestrator has no row (it died, and its row was reaped): what a drain check
 * hands back (SPEC §5 crash safety), with its task's retry policy. task_runs_running_idx.
 */
export const lostRuns = statement('lost_runs', (s) => `
  SELECT r.id, r.task_id, r.attempt, r.orchestrator_id,
         t.retries, t.retry_backoff, t.retry_delay_ms, t.max_retry_delay_ms
    FROM ${s.q}.task_runs r
    LEFT JOIN ${s.q}.tasks t ON t.id = r.task_id
   WHERE r.status = 'running'
     AND NOT EXISTS (SELECT 1 FROM ${s.q}.orchestrators o WHERE o.id = r.orchestrator_id)`)

/**
 * Finished runs found in task_runs (a runbook's `UPDATE task_runs SET status = 'cancelled' …`):
 * moved to task_run_history, at most $1 at a time. task_runs_stray_finished_idx.
 */
export const sweepFinished = statement('sweep_finished_runs', (s) => `
  WITH moved AS (
    DELETE FROM ${s.q}.task_runs r
     WHERE r.id = ANY (ARRAY(
       SELECT x.id FROM ${s.q}.task_runs x
        WHERE x.status IN ('completed', 'failed', 'timeout', 'cancelled') LIMIT $1::int))
       AND r.status IN ('completed', 'failed', 'timeout', 'cancelled')
    RETURNING r.*
  ), history AS (
    INSERT INTO ${s.q}.task_run_history (${COLUMNS})
    SELECT m.id, m.task_id, m.pipeline_run_id, m.parent_run_id, m.status, m.attempt, m.priority, m.input, m.output,
           m.input_path, m.output_path, m.error, m.error_code, m.idempotency_key, m.previous_attempts, m.scheduled_for,
           m.created_at, m.started_at, COALESCE(m.completed_at, clock_timestamp()), m.heartbeat_at, m.orchestrator_id, m.due_at
      FROM moved m
    ON CONFLICT (id) DO NOTHING
  )
  SELECT count(*)::int AS moved FROM moved`)

/**
 * runs:cancel, all or nothing: the runs $1 become `cancelled` (and move to task_run_history) only
 * when every one of them is pending now. One row per distinct id: its status before (null:
 * unknown), and whether it was cancelled.
 */
export const cancelRuns = statement('cancel_runs', (s) => `
  WITH wanted AS (
    SELECT DISTINCT unnest($1::text[]) AS id
  ), found AS MATERIALIZED (
    SELECT w.id, COALESCE(l.status, h.status) AS status
      FROM wanted w
      LEFT JOIN ${s.q}.task_runs l ON l.id = w.id
      LEFT JOIN ${s.q}.task_run_history h ON h.id = w.id
  ), cancelled AS (
    DELETE FROM ${s.q}.task_runs r
     WHERE r.id = ANY (ARRAY(SELECT w.id FROM wanted w)) AND r.status = 'pending'
       AND NOT EXISTS (SELECT 1 FROM found f WHERE f.status IS DISTINCT FROM 'pending')
    RETURNING r.*
  ), history AS (
    INSERT INTO ${s.q}.task_run_history (${COLUMNS})
    SELECT c.id, c.task_id, c.pipeline_run_id, c.parent_run_id, 'cancelled', c.attempt, c.priority, c.input, c.output,
           c.input_path, c.output_path, 'cancelled', 'CANCELLED', c.idempotency_key, c.previous_attempts, c.scheduled_for,
           c.created_at, c.started_at, clock_timestamp(), c.heartbeat_at, c.orchestrator_id, c.due_at
      FROM cancelled c
  )
  SELECT f.id, f.status, EXISTS (SELECT 1 FROM cancelled c WHERE c.id = f.id) AS cancelled FROM found f`)

// ---------------------------------------------------------------------------------------------
// Counts

/**
 * The (task, priority) groups of pending runs (skip scan of task_runs_claim_idx), and whether
 * one of them has a run due now (a range scan per group): bounded by groups, not by the runs
 * scheduled for later. Used by the drain and --until-idle. Runs of a paused task (or of a task
 * whose service is paused) do not count (SPEC §7: paused work does not hold a drain); runs held
 * by a rate limit or an open breaker do: they are due, and will run.
 */
const dueExists = (s: Schema) => `
  WITH RECURSIVE groups AS (
    (SELECT r.task_id, r.priority FROM ${s.q}.task_runs r WHERE r.status = 'pending' ORDER BY r.task_id, r.priority LIMIT 1)
    UNION ALL
    SELECT n.task_id, n.priority FROM groups g CROSS JOIN LATERAL (
      SELECT r.task_id, r.priority FROM ${s.q}.task_runs r
       WHERE r.status = 'pending' AND (r.task_id, r.priority) > (g.task_id, g.priority)
       ORDER BY r.task_id, r.priority LIMIT 1) AS n
  )
  SELECT EXISTS (
    SELECT 1 FROM groups g
     WHERE NOT EXISTS (${pausedTask(s, 'g.task_id')})
       AND EXISTS (
         SELECT 1 FROM ${s.q}.task_runs r
          WHERE r.status = 'pending' AND r.task_id = g.task_id AND r.priority = g.priority AND r.due_at <= now()))`

/** A row when the task `taskId` (an SQL expression) is paused, itself or by its service. */
export const pausedTask = (s: Schema, taskId: string) => `
  SELECT 1 FROM ${s.q}.tasks pt JOIN ${s.q}.services ps ON ps.id = pt.service_id
   WHERE pt.id = ${taskId} AND (pt.paused_at IS NOT NULL OR ps.paused_at IS NOT NULL)`

/** Is anything due pending (and not paused) or running (--until-idle, the drain)? task_runs_claim_idx, task_runs_running_idx. */
export const workRemains = statement('work_remains', (s) => `
  SELECT EXISTS (SELECT 1 FROM ${s.q}.task_runs r WHERE r.status = 'running')
      OR (${dueExists(s)}) AS remains`)

/** pipeweave_queue_depth and pipeweave_queue_oldest_age_seconds: due pending runs (task_runs_claim_idx). */
export const queueStats = statement('queue_stats', (s) => `
  SELECT count(*)::int AS depth,
         COALESCE(extract(epoch FROM now() - min(r.due_at)), 0)::float8 AS oldest_age_seconds
    FROM ${s.q}.task_runs r
   WHERE r.status = 'pending' AND r.due_at <= now()`)

// ---------------------------------------------------------------------------------------------
// Reading runs, live and finished

const RUN_COLUMNS = `r.id, r.task_id, r.pipeline_run_id, r.parent_run_id, r.status, r.attempt, r.priority,
  r.input, r.output, r.input_path, r.output_path, r.error, r.error_code, r.idempotency_key,
  r.previous_attempts, r.scheduled_for, r.created_at, r.started_at, r.completed_at, r.heartbeat_at,
  r.orchestrator_id`

/** What a list shows of a run: every column but its payloads (input, output). */
const SUMMARY_COLUMNS = `r.id, r.task_id, r.pipeline_run_id, r.parent_run_id, r.status, r.attempt, r.priority,
  NULL::jsonb AS input, NULL::jsonb AS output, r.input_path, r.output_path, r.error, r.error_code, r.idempotency_key,
  r.previous_attempts, r.scheduled_for, r.created_at, r.started_at, r.completed_at, r.heartbeat_at,
  r.orchestrator_id`

/**
 * The filters a page of runs offers, each served by its own indexes (migration 004 lists them).
 * Parameters: $1 the cursor (the last id of the page before, or null for the newest), $2 the page
 * size, then $3 and $4 as the kind says. Live runs are in task_runs, finished ones in
 * task_run_history (finished runs in task_runs are strays a sweep moves soon).
 */
export const RUN_PAGE_KINDS = {
  /** Every run. */
  all: { params: [] as const },
  /** $3 pending or waiting. */
  live: { params: ['status'] as const },
  running: { params: [] as const },
  completed: { params: [] as const },
  /** $3 failed, timeout or cancelled. */
  unsuccessful: { params: ['status'] as const },
  /** $3 the task. */
  ofTask: { params: ['task'] as const },
  /** $3 pending or waiting, $4 the task. */
  ofTaskLive: { params: ['status', 'task'] as const },
  /** $3 the task. */
  ofTaskRunning: { params: ['task'] as const },
  /** $3 the task. */
  ofTaskCompleted: { params: ['task'] as const },
  /** $3 failed, timeout or cancelled, $4 the task. */
  ofTaskUnsuccessful: { params: ['status', 'task'] as const },
} as const
export type RunPageKind = keyof typeof RUN_PAGE_KINDS

/**
 * `column` equal to `param`, written as a range of one value. The planner treats an equality with
 * a value as a constant and drops that column from the ORDER BY, after which the primary key
 * (filtered) hands the rows in id order as well as the index meant for them, and the planner may
 * walk it instead, reading every row between two matches (it did, near the oldest end of a list).
 * As a range the column stays in the ORDER BY, which then only the index meant for the filter
 * provides: one plan for every page. Same rows: a database's collation is deterministic.
 */
const same = (column: string, param: string) => `${column} >= ${param} AND ${column} <= ${param}`

/**
 * The two halves of each page: the newest $2 of each table below the cursor, each read by the
 * index named beside it in id order from the cursor on (a keyset: page 50 reads what page 1
 * reads), or nothing when that table cannot hold such runs. A half that filters on the leading
 * columns of its index orders by them too (see `same`). The statements are planned with their
 * values (unnamed statements: custom plans), so `status` between 'failed' and 'failed' matches the
 * partial indexes on `status <> 'completed'`. `indexes`: what the plan reads (test/indexes.test.ts
 * holds each page to it; test/dashboard-paging.test.ts, its buffers).
 */
/** A half's rows: `where`, newest first by `order`; `whole`: read them all and sort (few rows). */
interface Half { where: string; order?: string; whole?: boolean }
export const RUN_PAGE_PARTS: Record<RunPageKind, { live: Half | null; running?: Half; history: Half | null; indexes: string[] }> = {
  all: { live: { where: 'true' }, history: { where: 'true' }, indexes: ['task_run_history_pkey', 'task_runs_pkey'] },
  live: { live: { where: 'r.status = $3::text' }, history: null, indexes: ['task_runs_pkey'] },
  // At most the fleet's concurrency: read whole and sorted.
  running: { live: { where: `r.status = 'running'`, whole: true }, history: null, indexes: ['task_runs_running_idx'] },
  completed: {
    live: { where: `r.status = 'completed'` },
    history: { where: `r.status = 'completed'` },
    indexes: ['task_run_history_pkey', 'task_runs_stray_finished_idx'],
  },
  unsuccessful: {
    live: { where: `r.status = $3::text AND r.status IN ('failed', 'timeout', 'cancelled')` },
    history: { where: same('r.status', '$3::text'), order: 'r.status DESC, r.id DESC' },
    indexes: ['task_run_history_status_idx', 'task_runs_stray_finished_idx'],
  },
  // A task's live runs: the queued ones (pending, waiting) on task_runs_task_idx, partial so that a
  // claim writes no entry there, and its running ones (few) read whole from task_runs_running_idx.
  ofTask: {
    live: { where: `${same('r.task_id', '$3::text')} AND r.status <> 'running'`, order: 'r.task_id DESC, r.id DESC' },
    running: { where: `r.task_id = $3::text AND r.status = 'running'`, whole: true },
    history: { where: same('r.task_id', '$3::text'), order: 'r.task_id DESC, r.id DESC' },
    indexes: ['task_run_history_task_idx', 'task_runs_running_idx', 'task_runs_task_idx'],
  },
  ofTaskLive: {
    live: { where: `${same('r.task_id', '$4::text')} AND r.status = $3::text AND r.status <> 'running'`, order: 'r.task_id DESC, r.id DESC' },
    history: null,
    indexes: ['task_runs_task_idx'],
  },
  ofTaskRunning: { live: { where: `r.task_id = $3::text AND r.status = 'running'`, whole: true }, history: null, indexes: ['task_runs_running_idx'] },
  ofTaskCompleted: {
    live: { where: `r.task_id = $3::text AND r.status = 'completed'` },
    history: { where: `${same('r.task_id', '$3::text')} AND r.status = 'completed'`, order: 'r.task_id DESC, r.id DESC' },
    indexes: ['task_run_history_task_idx', 'task_runs_stray_finished_idx'],
  },
  ofTaskUnsuccessful: {
    live: { where: `r.task_id = $4::text AND r.status = $3::text AND r.status IN ('failed', 'timeout', 'cancelled')` },
    history: { where: `${same('r.task_id', '$4::text')} AND ${same('r.status', '$3::text')}`, order: 'r.task_id DESC, r.status DESC, r.id DESC' },
    indexes: ['task_run_history_task_status_idx', 'task_runs_stray_finished_idx'],
  },
}

function runPage(kind: RunPageKind, payloads: boolean) {
  const { live, running, history } = RUN_PAGE_PARTS[kind]
  const columns = payloads ? RUN_COLUMNS : SUMMARY_COLUMNS
  // Running runs (at most the fleet's concurrency) are read whole from task_runs_running_idx and
  // sorted: with many running runs the planner could walk the primary key instead, past every
  // pending run, which a backlog makes millions.
  const half = (table: string, { where, order = 'r.id DESC', whole = false }: Half) => whole
    ? `(WITH chosen AS MATERIALIZED (
        SELECT ${columns} FROM ${table} r WHERE ${where} AND ($1::text IS NULL OR r.id < $1::text))
      SELECT * FROM chosen r ORDER BY r.id DESC LIMIT $2::int)`
    : `(SELECT ${columns} FROM ${table} r
      WHERE ${where} AND ($1::text IS NULL OR r.id < $1::text)
      ORDER BY ${order} LIMIT $2::int)`
  const name = `page_runs_${kind.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}${payloads ? '_full' : ''}`
  return statement(name, (s) => {
    const halves = [
      live && half(`${s.q}.task_runs`, live),
      running && half(`${s.q}.task_runs`, running),
      history && half(`${s.q}.task_run_history`, history),
    ].filter(Boolean)
    return `SELECT * FROM (
    ${halves.join('\n    UNION ALL\n    ')}
  ) AS r
  ORDER BY r.id DESC LIMIT $2::int`
  })
}

/** The page kind that serves a filter, and its parameters after the cursor and the size. */
export function runPageFor(filter: { status?: string; taskId?: string }): { kind: RunPageKind; values: string[] } {
  const { status, taskId } = filter
  const cls = status === undefined ? undefined
    : status === 'pending' || status === 'waiting' ? 'live'
      : status === 'running' ? 'running'
        : status === 'completed' ? 'completed' : 'unsuccessful'
  if (taskId === undefined) {
    if (cls === undefined) return { kind: 'all', values: [] }
    return { kind: cls, values: cls === 'live' || cls === 'unsuccessful' ? [status!] : [] }
  }
  switch (cls) {
    case undefined: return { kind: 'ofTask', values: [taskId] }
    case 'live': return { kind: 'ofTaskLive', values: [status!, taskId] }
    case 'running': return { kind: 'ofTaskRunning', values: [taskId] }
    case 'completed': return { kind: 'ofTaskCompleted', values: [taskId] }
    case 'unsuccessful': return { kind: 'ofTaskUnsuccessful', values: [status!, taskId] }
  }
}

/**
 * Pages of runs, newest first (ids are time-ordered), live and finished, paged by keyset (the
 * cursor is the last id of the page before; never OFFSET): runs:list and the dashboard's runs page.
 * `summary` leaves the payloads out (the dashboard's list), `full` has them (runs:list --json).
 * A run that moves from task_runs to the history between two pages keeps its id, so its place.
 */
export const runPages = Object.fromEntries(Object.keys(RUN_PAGE_KINDS).map((kind) => [kind, {
  summary: runPage(kind as RunPageKind, false),
  full: runPage(kind as RunPageKind, true),
}])) as Record<RunPageKind, { summary: ReturnType<typeof runPage>; full: ReturnType<typeof runPage> }>

/**
 * A run's page: the runs its completion created (runNext), live or finished, in creation order.
 * task_runs_parent_idx, task_run_history_parent_idx (partial: only follow-ups have a parent).
 */
export const followUps = statement('run_follow_ups', (s) => `
  SELECT * FROM (
    (SELECT ${SUMMARY_COLUMNS} FROM ${s.q}.task_runs r WHERE r.parent_run_id = $1::text)
    UNION ALL
    (SELECT ${SUMMARY_COLUMNS} FROM ${s.q}.task_run_history r WHERE r.parent_run_id = $1::text)
  ) AS r
  ORDER BY r.id LIMIT $2::int`)

/** runs:show: one run, live or finished (one snapshot: a run moving between them is seen once). */
export const showRun = statement('show_run', (s) => `
  (SELECT ${RUN_COLUMNS} FROM ${s.q}.task_runs r WHERE r.id = $1::text)
  UNION ALL
  (SELECT ${RUN_COLUMNS} FROM ${s.q}.task_run_history r WHERE r.id = $1::text)
  LIMIT 1`)

// ---------------------------------------------------------------------------------------------
// db:cleanup of finished runs

/**
 * The id below which every run created before $1 lies: ids begin with their creation time in
 * hex milliseconds (pipeweave_new_id), and 'g' sorts after every hex digit.
 */
const idBound = (param: string) =>
  `lpad(to_hex((extract(epoch FROM ${param}::timestamptz) * 1000)::bigint), 12, '0') || 'g'`

/**
 * One batch of finished runs that completed before $1, walked in id (creation) order from the
 * cursor $2 on task_run_history_pkey. A run completed before $1 was created before it, so the walk
 * stops at the id bound of $1. Runs a DLQ entry still points to are stepped over, not deleted
 * (dlq_task_run_id_idx); the cache entries of deleted runs lose their run id
 * (idempotency_cache_task_run_id_idx). The cursor moves past everything read.
 */
export const deleteFinishedBatch = statement('delete_finished_runs_batch', (s) => `
  WITH batch AS MATERIALIZED (
    SELECT h.id, h.completed_at < $1::timestamptz
             AND NOT EXISTS (SELECT 1 FROM ${s.q}.dlq d WHERE d.task_run_id = h.id) AS deletable
      FROM ${s.q}.task_run_history h
     WHERE h.id > $2::text AND h.id < ${idBound('$1')}
     ORDER BY h.id
     LIMIT $3::int
  ), deleted AS (
    DELETE FROM ${s.q}.task_run_history h
     WHERE h.id = ANY (ARRAY(SELECT b.id FROM batch b WHERE b.deletable))
    RETURNING h.id
  ), uncached AS (
    UPDATE ${s.q}.idempotency_cache c SET task_run_id = NULL
     WHERE c.task_run_id = ANY (ARRAY(SELECT d.id FROM deleted d))
  )
  SELECT (SELECT count(*) FROM deleted)::int AS deleted,
         (SELECT count(*) FROM batch)::int AS scanned,
         (SELECT max(b.id) FROM batch b) AS last_id`)

/**
 * db:cleanup --dry-run: the finished runs a real cleanup would delete. The real one deletes the
 * DLQ entries older than the DLQ cutoff ($2) first, so only entries that survive it hold a run.
 */
export const countFinishedDeletable = statement('count_finished_deletable', (s) => `
  SELECT count(*)::int AS n
    FROM ${s.q}.task_run_history h
   WHERE h.id < ${idBound('$1')} AND h.completed_at < $1::timestamptz
     AND NOT EXISTS (SELECT 1 FROM ${s.q}.dlq d WHERE d.task_run_id = h.id AND d.failed_at >= $2::timestamptz)`)

// ---------------------------------------------------------------------------------------------
// run --demo

/** The demo's runs not finished yet ($1 its tasks): pending on task_runs_claim_idx, running on task_runs_running_idx. */
export const unfinishedOfTasks = statement('demo_unfinished', (s) => `
  SELECT (SELECT count(*) FROM ${s.q}.task_runs WHERE task_id = ANY ($1::text[]) AND status = 'pending')::int
       + (SELECT count(*) FROM ${s.q}.task_runs WHERE task_id = ANY ($1::text[]) AND status = 'running')::int AS n`)

/** The demo's runs created since $2, oldest first, with what happened to each. */
export const summaryOfTasks = statement('demo_summary', (s) => `
  WITH runs AS (
    -- Live runs by status, each on its index (the demo makes no 'waiting' runs).
    SELECT ${RUN_COLUMNS} FROM ${s.q}.task_runs r                        -- task_runs_claim_idx
     WHERE r.status = 'pending' AND r.task_id = ANY ($1::text[]) AND r.created_at >= $2::timestamptz
    UNION ALL
    SELECT ${RUN_COLUMNS} FROM ${s.q}.task_runs r                        -- task_runs_running_idx
     WHERE r.status = 'running' AND r.task_id = ANY ($1::text[]) AND r.created_at >= $2::timestamptz
    UNION ALL
    SELECT ${RUN_COLUMNS} FROM ${s.q}.task_run_history r                 -- task_run_history_task_idx
     WHERE r.task_id = ANY ($1::text[]) AND r.created_at >= $2::timestamptz
  )
  SELECT r.id, r.task_id, r.status, r.attempt, r.output, r.error, r.error_code,
         (SELECT p.task_id FROM ${s.q}.task_run_history p WHERE p.id = r.parent_run_id) AS parent_task_id,
         EXISTS (SELECT 1 FROM ${s.q}.dlq d WHERE d.task_run_id = r.id) AS dead_lettered
    FROM runs r ORDER BY r.id`)
