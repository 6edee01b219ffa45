/**
 * SQL on `schedules` and their `control_events` rows (SPEC §7, migration 003). Instants the loop
 * compares travel as whole milliseconds since the epoch (`…_ms`, float8): a JavaScript Date keeps
 * milliseconds, and last_tick's compare-and-set must compare exactly what was read.
 */
import { statement } from './schema'

/** The definition columns, as the API reads them. */
const DEFINITION = `s.name, s.task_id, s.cron, s.timezone, s.input, s.overlap, s.backfill_ms::float8 AS backfill_ms, s.service_id`

/** Milliseconds since the epoch of a timestamptz, floored: what a JavaScript Date holds of it. */
const ms = (column: string) => `floor(extract(epoch FROM ${column}) * 1000)::float8`

// ---------------------------------------------------------------------------------------------
// schedules:set, schedules:remove, services:register

/** Schedule $1, locked for a change (schedules_pkey). */
export const lockSchedule = statement('lock_schedule', (s) => `
  SELECT ${DEFINITION} FROM ${s.q}.schedules s WHERE s.name = $1::text FOR UPDATE`)

/** Does task $1 exist (tasks_pkey)? Its row is kept (FOR KEY SHARE) until the schedule commits. */
export const lockTask = statement('lock_schedule_task', (s) => `
  SELECT t.id FROM ${s.q}.tasks t WHERE t.id = $1::text FOR KEY SHARE`)

/**
 * A new schedule; its ticks start now (last_tick = now: ticks before it was set are not missed).
 * Nothing when the name was taken meanwhile (the caller locks it and tries again).
 */
export const insertSchedule = statement('insert_schedule', (s) => `
  INSERT INTO ${s.q}.schedules AS s (name, task_id, cron, timezone, input, overlap, backfill_ms, service_id, last_tick)
  VALUES ($1::text, $2::text, $3::text, $4::text, $5::jsonb, $6::text, $7::bigint, $8::text, date_trunc('milliseconds', clock_timestamp()))
  ON CONFLICT (name) DO NOTHING
  RETURNING s.name`)

/**
 * A changed definition. A new cron or time zone starts its ticks now (the old expression's last
 * tick is kept when it is later); any other change keeps last_tick, so re-registering a manifest
 * never drops or repeats a tick.
 */
export const updateSchedule = statement('update_schedule', (s) => `
  UPDATE ${s.q}.schedules s
     SET task_id = $2::text, cron = $3::text, timezone = $4::text, input = $5::jsonb, overlap = $6::text, backfill_ms = $7::bigint,
         last_tick = CASE WHEN s.cron IS DISTINCT FROM $3::text OR s.timezone IS DISTINCT FROM $4::text
                          THEN GREATEST(s.last_tick, date_trunc('milliseconds', clock_timestamp())) ELSE s.last_tick END,
         updated_at = now()
   WHERE s.name = $1::text`)

export const deleteSchedule = statement('delete_schedule', (s) => `
  DELETE FROM ${s.q}.schedules s WHERE s.name = $1::text`)

/** The schedules of service $1, locked (schedules_service_id_idx). */
export const lockServiceSchedules = statement('lock_service_schedules', (s) => `
  SELECT ${DEFINITION} FROM ${s.q}.schedules s WHERE s.service_id = $1::text ORDER BY s.name FOR UPDATE`)

/** Schedules named in $2 that service $1 does not own (set with schedules:set, or another service's). */
export const schedulesOwnedElsewhere = statement('schedules_owned_elsewhere', (s) => `
  SELECT s.name, s.service_id FROM ${s.q}.schedules s
   WHERE s.name = ANY ($2::text[]) AND s.service_id IS DISTINCT FROM $1::text ORDER BY s.name`)

/** Wake every orchestrator's schedule loop (delivered at commit). */
export const notifySchedules = statement('notify_schedules', (s) => `SELECT pg_notify('${s.channel}', 'schedules')`)

/** schedules:list, by name; only schedule $1 unless null (schedules_pkey). */
export const listSchedules = statement('list_schedules', (s) => `
  SELECT ${DEFINITION}, s.last_tick, s.last_run_id, s.created_at, s.updated_at
    FROM ${s.q}.schedules s WHERE ($1::text IS NULL OR s.name = $1::text) ORDER BY s.name`)

// ---------------------------------------------------------------------------------------------
// control_events of schedules

/** A change of schedule $1: action $2 by $3, reason $4, detail $5. */
export const recordEvent = statement('record_schedule_event', (s) => `
  INSERT INTO ${s.q}.control_events (kind, target, action, actor, reason, detail)
  VALUES ('schedule', 'schedule:' || $1::text, $2::text, $3::text, $4::text, $5::jsonb)`)

/**
 * Extend a range of ticks not enqueued: the newest row of schedule $1 (control_events_target_idx)
 * when it is a range of the same action ($2) and cause ($3) ending at the tick before this one ($4,
 * ISO): its `to` becomes $5 and its count grows by $6 (null: unknown). No row: the caller inserts
 * one. The schedule's row is locked (its last_tick compare-and-set), so ranges never race.
 */
export const extendRange = statement('extend_schedule_range', (s) => `
  UPDATE ${s.q}.control_events e
     SET detail = e.detail || jsonb_build_object('to', $5::text,
           'count', CASE WHEN e.detail->'count' = 'null'::jsonb OR $6::bigint IS NULL THEN NULL
                         ELSE (e.detail->>'count')::bigint + $6::bigint END)
   WHERE e.id = (SELECT x.id FROM ${s.q}.control_events x WHERE x.target = 'schedule:' || $1::text ORDER BY x.id DESC LIMIT 1)
     AND e.action = $2::text AND e.detail->>'cause' = $3::text AND e.detail->>'to' = $4::text
  RETURNING e.id`)

// ---------------------------------------------------------------------------------------------
// The orchestrators' schedule loop (src/orchestrator/scheduler.ts)

/**
 * Every schedule, what its ticks are computed from, and the server's clock; `fleet_since_ms`: when
 * the longest-registered orchestrator registered (a tick after it fell while one lived).
 */
export const readSchedules = statement('read_schedules', (s) => `
  SELECT s.name, s.cron, s.timezone, s.backfill_ms::float8 AS backfill_ms,
         ${ms('s.last_tick')} AS last_tick_ms, ${ms('s.created_at')} AS created_ms,
         ${ms('clock_timestamp()')} AS now_ms,
         (SELECT ${ms('min(o.started_at)')} FROM ${s.q}.orchestrators o) AS fleet_since_ms
    FROM (SELECT 1) AS one
    LEFT JOIN ${s.q}.schedules s ON true
   ORDER BY s.name`)

/**
 * The compare-and-set that decides a tick once fleet-wide: schedule $1's last_tick moves from $2
 * (ms, null: never ticked) to $3 (ms), if its definition is still cron $4 in zone $5 and the tick
 * is due by the server's clock. Orchestrators racing for one tick queue on the row's lock; the
 * winner's commit makes the others' WHERE false. `taken` false: lost, or not due yet (now_ms says).
 */
export const takeTick = statement('take_schedule_tick', (s) => `
  WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS at
  ), taken AS (
    UPDATE ${s.q}.schedules s SET last_tick = to_timestamp($3::float8 / 1000)
     WHERE s.name = $1::text AND ${ms('s.last_tick')} IS NOT DISTINCT FROM $2::float8
       AND s.cron = $4::text AND s.timezone = $5::text
       AND to_timestamp($3::float8 / 1000) <= clock_timestamp()
    RETURNING s.task_id, s.input, s.overlap, s.last_run_id
  )
  SELECT (t.task_id IS NOT NULL) AS taken, t.task_id, t.input, t.overlap, t.last_run_id, ${ms('c.at')} AS now_ms
    FROM clock c LEFT JOIN taken t ON true`)

/** The maintenance gate (pipeweave_gate_v1): held to commit; the mode under it. */
export const gate = statement('schedule_gate', (s) => `SELECT ${s.q}.pipeweave_gate_v1() AS mode`)

/** Is run $1 still pending or running (or waiting): overlap `skip` (task_runs_pkey). */
export const runIsLive = statement('schedule_run_is_live', (s) => `
  SELECT EXISTS (SELECT 1 FROM ${s.q}.task_runs r WHERE r.id = $1::text AND r.status IN ('pending', 'running', 'waiting')) AS live`)

export const setLastRun = statement('set_schedule_last_run', (s) => `
  UPDATE ${s.q}.schedules s SET last_run_id = $2::text WHERE s.name = $1::text`)
