/**
 * What the dashboard's overview reads (SPEC §8), and the upkeep of `throughput_minutes` (migration
 * 004). The overview is one statement: one round trip and one snapshot of the database per
 * refresh, whatever the number of viewers (src/dashboard/snapshots.ts shares it).
 */
import { statement } from './schema'

/**
 * The overview in one row of JSON documents ($1: the mode history's length, $2: ORCHESTRATOR_STALE_MS):
 *   state          the mode row (mode, mode_changed_at, reason)
 *   history        the newest $1 mode changes (maintenance_events_at_idx)
 *   tasks          each task with its queue: due pending runs and the oldest one's due time, pending
 *                  runs scheduled for later, running runs (task_runs_claim_idx and
 *                  task_runs_running_idx, per task: what the claim and the drain read), and its
 *                  pause and its service's pause and breaker (migration 003)
 *   orchestrators  every registered `run` with its heartbeat's age (live: younger than $2)
 *   throughput     completed, failed and retried per minute of the last hour, all tasks and
 *                  orchestrators together (throughput_minutes_pkey: a range of minutes)
 *   services       paused services and open breakers (migration 003)
 *   schedules      every schedule with its last tick (migration 003)
 *   dlq            DLQ entries not yet retried
 */
export const overview = statement('dashboard_overview', (s) => `
  SELECT now() AS taken_at,
    (SELECT to_jsonb(st) FROM (
       SELECT o.mode, o.mode_changed_at, o.reason FROM ${s.q}.orchestrator_state o WHERE o.id = 'singleton') AS st) AS state,
    (SELECT COALESCE(jsonb_agg(to_jsonb(e) ORDER BY e.at DESC, e.id DESC), '[]') FROM (
       SELECT m.id, m.from_mode, m.to_mode, m.at, m.actor, m.reason FROM ${s.q}.maintenance_events m
        ORDER BY m.at DESC, m.id DESC LIMIT $1::int) AS e) AS history,
    (SELECT COALESCE(jsonb_agg(to_jsonb(t) ORDER BY t.task_id), '[]') FROM (
       SELECT k.id AS task_id, k.service_id, k.concurrency, k.paused_at, k.paused_by, k.pause_reason,
              sv.paused_at AS service_paused_at, sv.breaker_open_until,
              q.due, q.oldest_due_at, q.scheduled, (
                SELECT count(*) FROM ${s.q}.task_runs r WHERE r.status = 'running' AND r.task_id = k.id)::int AS running
         FROM ${s.q}.tasks k
         JOIN ${s.q}.services sv ON sv.id = k.service_id
        CROSS JOIN LATERAL (
          SELECT count(*) FILTER (WHERE r.due_at <= now())::int AS due,
                 min(r.due_at) FILTER (WHERE r.due_at <= now()) AS oldest_due_at,
                 count(*) FILTER (WHERE r.due_at > now())::int AS scheduled
            FROM ${s.q}.task_runs r WHERE r.status = 'pending' AND r.task_id = k.id) AS q) AS t) AS tasks,
    (SELECT COALESCE(jsonb_agg(to_jsonb(o) ORDER BY o.started_at, o.id), '[]') FROM (
       SELECT x.id, x.host, x.pid, x.version, x.concurrency, x.started_at, x.heartbeat_at,
              (extract(epoch FROM now() - x.heartbeat_at) * 1000)::bigint AS heartbeat_age_ms,
              x.heartbeat_at > now() - $2::int * interval '1 millisecond' AS live
         FROM ${s.q}.orchestrators x) AS o) AS orchestrators,
    (SELECT COALESCE(jsonb_agg(to_jsonb(m) ORDER BY m.minute), '[]') FROM (
       SELECT t.minute, sum(t.completed)::int AS completed, sum(t.failed)::int AS failed, sum(t.retried)::int AS retried
         FROM ${s.q}.throughput_minutes t
        WHERE t.minute >= date_trunc('minute', now()) - interval '59 minutes'
        GROUP BY t.minute) AS m) AS throughput,
    (SELECT COALESCE(jsonb_agg(to_jsonb(v) ORDER BY v.id), '[]') FROM (
       SELECT sv.id, sv.paused_at, sv.paused_by, sv.pause_reason, sv.breaker_open_until, sv.breaker_opened_at,
              sv.breaker_failures
         FROM ${s.q}.services sv
        WHERE sv.paused_at IS NOT NULL OR sv.breaker_open_until IS NOT NULL) AS v) AS services,
    (SELECT COALESCE(jsonb_agg(to_jsonb(c) ORDER BY c.name), '[]') FROM (
       SELECT sc.name, sc.task_id, sc.cron, sc.timezone, sc.overlap, sc.service_id, sc.last_tick, sc.last_run_id, sc.created_at
         FROM ${s.q}.schedules sc) AS c) AS schedules,
    (SELECT count(*)::int FROM ${s.q}.dlq d WHERE d.retried_at IS NULL) AS dlq_entries`)

/** Throughput rows older than $1 ms (two hours: the overview shows one); throughput_minutes_pkey. */
export const pruneThroughput = statement('prune_throughput', (s) => `
  DELETE FROM ${s.q}.throughput_minutes t WHERE t.minute < now() - $1::int * interval '1 millisecond'`)
