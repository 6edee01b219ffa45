/** SQL on `task_runs`. Every statement names the index that serves it (migrations/). */
import type { Statement } from '../db/database'

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


/**
 * db:cleanup: one batch of finished runs that completed before $1, walked in (completed_at, id)
 * order from the cursor ($2, $3) on task_runs_finished_idx. Runs a DLQ entry still points to are
 * stepped over, not deleted, and the cursor moves past them so no batch reads them twice.
 */
export const deleteFinishedBatch: Statement = {
  name: 'delete_finished_runs_batch',
  text: `WITH batch AS (
           SELECT r.id, r.completed_at,
                  EXISTS (SELECT 1 FROM dlq d WHERE d.task_run_id = r.id) AS held
             FROM task_runs r
            WHERE r.status IN ('completed', 'failed', 'timeout', 'cancelled')
              AND r.completed_at < $1::timestamptz
              AND (r.completed_at, r.id) > ($2::timestamptz, $3::text)
            ORDER BY r.completed_at, r.id
            LIMIT $4::int),
         deleted AS (
           DELETE FROM task_runs t USING batch b
            WHERE t.id = b.id AND NOT b.held
              AND t.status IN ('completed', 'failed', 'timeout', 'cancelled')
           RETURNING 1)
         SELECT (SELECT count(*) FROM deleted)::int AS deleted,
                (SELECT count(*) FROM batch)::int AS scanned,
                -- as text: a Date would drop the microseconds and the cursor could stall
                last.completed_at::text AS last_completed_at, last.id AS last_id
           FROM (SELECT NULL) AS one
           LEFT JOIN LATERAL (SELECT completed_at, id FROM batch ORDER BY completed_at DESC, id DESC LIMIT 1) last ON true`,
}

/**
 * db:cleanup --dry-run: the finished runs a real cleanup would delete. The real one deletes the
 * DLQ entries older than the DLQ cutoff ($2) first, so only entries that survive it hold a run.
 */
export const countFinishedDeletable: Statement = {
  name: 'count_finished_deletable',
  text: `SELECT count(*)::int AS n
           FROM task_runs r
          WHERE r.status IN ('completed', 'failed', 'timeout', 'cancelled')
            AND r.completed_at < $1::timestamptz
            AND NOT EXISTS (SELECT 1 FROM dlq d WHERE d.task_run_id = r.id AND d.failed_at >= $2::timestamptz)`,
}

/** Enqueue one run through the gate (migration 002 pipeweave_enqueue). */
export const enqueue: Statement = {
  name: 'enqueue_run',
  text: `SELECT run_id, deduplicated
           FROM pipeweave_enqueue($1::text, $2::jsonb, $3::int, $4::text, $5::bigint, $6::text, $7::text)`,
}

/** Claim up to $2 due runs for orchestrator $1 (migration 002 pipeweave_claim_runs; task_runs_claim_idx). */
export const claim: Statement = {
  name: 'claim_due_runs',
  text: `SELECT * FROM pipeweave_claim_runs($1::text, $2::int)`,
}

/**
 * Complete runs held by orchestrator $1 in one transaction: output, idempotency cache, follow-ups
 * (migration 002 pipeweave_complete_runs; task_runs_pkey). $2 is a JSON array of
 * { id, output, runNext, fromCache }; one row per element, in its order.
 */
export const completeMany: Statement = {
  name: 'complete_runs',
  text: `SELECT run_id, completed, mode, follow_ups, ignored_next
           FROM pipeweave_complete_runs($1::text, $2::jsonb)`,
}

/**
 * completeMany, then claim up to $3 due runs, in one transaction (migration 002
 * pipeweave_complete_and_claim): rows of kind 'completed' (in the order of $2), then 'claimed'.
 */
export const completeAndClaim: Statement = {
  name: 'complete_and_claim_runs',
  text: `SELECT * FROM pipeweave_complete_and_claim($1::text, $2::jsonb, $3::int)`,
}

/** A failed attempt of a run held by orchestrator $2: retry with backoff, or fail into the DLQ. */
export const fail: Statement = {
  name: 'fail_run',
  text: `SELECT outcome, attempt, scheduled_for, mode
           FROM pipeweave_fail_run($1::text, $2::text, $3::text, $4::text, $5::boolean, $6::boolean)`,
}

/**
 * Hand back to pending, keeping their attempt, the runs orchestrator $1 holds, except those in $2:
 * at graceful shutdown everything it still holds, and after a claim whose answer was lost (the
 * connection broke after the claim committed) those it holds without knowing it. Never
 * dispatched, or stopped by us: not the run's failure. task_runs_active_idx (status = 'running').
 */
export const releaseHeld: Statement = {
  name: 'release_held_runs',
  text: `UPDATE task_runs
            SET status = 'pending', started_at = NULL, heartbeat_at = NULL, orchestrator_id = NULL
          WHERE status = 'running' AND orchestrator_id = $1::text AND NOT (id = ANY ($2::text[]))
          RETURNING id, task_id, attempt`,
}

/** Is there anything left to do: a due pending or a running run (--until-idle); task_runs_active_idx. */
export const workRemains: Statement = {
  name: 'work_remains',
  text: `SELECT EXISTS (SELECT 1 FROM task_runs r
                         WHERE r.status = 'running'
                            OR (r.status = 'pending' AND (r.scheduled_for IS NULL OR r.scheduled_for <= now()))) AS remains`,
}

const RUN_COLUMNS = `r.id, r.task_id, r.pipeline_run_id, r.parent_run_id, r.status, r.attempt, r.priority,
  r.input, r.output, r.input_path, r.output_path, r.error, r.error_code, r.idempotency_key,
  r.previous_attempts, r.scheduled_for, r.created_at, r.started_at, r.completed_at, r.heartbeat_at,
  r.orchestrator_id`

/**
 * runs:list, newest first, optionally by status ($1) and task ($2). Served by
 * task_runs_task_created_idx with a task, task_runs_created_at_idx without (the LIMIT stops the walk).
 */
export const list: Statement = {
  name: 'list_runs',
  text: `SELECT ${RUN_COLUMNS} FROM task_runs r
          WHERE ($1::text IS NULL OR r.status = $1::text)
            AND ($2::text IS NULL OR r.task_id = $2::text)
          ORDER BY r.created_at DESC
          LIMIT $3::int`,
}

export const show: Statement = {
  name: 'show_run',
  text: `SELECT ${RUN_COLUMNS} FROM task_runs r WHERE r.id = $1`,
}

/** runs:cancel: pending runs become cancelled; anything else is reported with its status (null: unknown). */
export const cancel: Statement = {
  name: 'cancel_runs',
  text: `WITH wanted AS (SELECT unnest($1::text[]) AS id),
         cancelled AS (
           UPDATE task_runs r SET status = 'cancelled', completed_at = clock_timestamp(), error = 'cancelled', error_code = 'CANCELLED'
            WHERE r.id IN (SELECT id FROM wanted) AND r.status = 'pending'
              -- all or nothing on unknown ids: an id that does not exist cancels nothing
              AND (SELECT count(*) FROM task_runs k WHERE k.id IN (SELECT id FROM wanted))
                  = (SELECT count(DISTINCT id) FROM wanted)
           RETURNING r.id)
         SELECT w.id, (c.id IS NOT NULL) AS cancelled, r.status
           FROM wanted w
           LEFT JOIN cancelled c ON c.id = w.id
           LEFT JOIN task_runs r ON r.id = w.id`,
}

/** pipeweave_queue_depth and pipeweave_queue_oldest_age_seconds: due pending runs (task_runs_active_idx). */
export const queueStats: Statement = {
  name: 'queue_stats',
  text: `SELECT count(*)::int AS depth,
                COALESCE(extract(epoch FROM now() - min(COALESCE(r.scheduled_for, r.created_at))), 0)::float8 AS oldest_age_seconds
           FROM task_runs r
          WHERE r.status = 'pending' AND (r.scheduled_for IS NULL OR r.scheduled_for <= now())`,
}

/** run --demo: the demo's runs not finished yet ($1 its tasks, $2 since the demo began); task_runs_active_idx. */
export const unfinishedOfTasks: Statement = {
  name: 'demo_unfinished',
  text: `SELECT count(*)::int AS n FROM task_runs
          WHERE task_id = ANY ($1::text[]) AND status IN ('pending', 'running') AND created_at >= $2`,
}

/** run --demo: the demo's runs, oldest first, with what happened to each; task_runs_task_created_idx. */
export const summaryOfTasks: Statement = {
  name: 'demo_summary',
  text: `SELECT r.id, r.task_id, r.status, r.attempt, r.output, r.error, r.error_code, p.task_id AS parent_task_id,
                EXISTS (SELECT 1 FROM dlq d WHERE d.task_run_id = r.id) AS dead_lettered
           FROM task_runs r LEFT JOIN task_runs p ON p.id = r.parent_run_id
          WHERE r.task_id = ANY ($1::text[]) AND r.created_at >= $2 ORDER BY r.created_at`,
}
