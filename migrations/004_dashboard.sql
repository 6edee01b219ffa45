-- The dashboard (SPEC §8): per-minute throughput written by the orchestrators, and the indexes of
-- its run lists (newest first, paged by keyset: `id < cursor ORDER BY id DESC`, never OFFSET).
-- Ids are time-ordered (pipeweave_new_id), so "newest first" is an index walked backwards.

-- Finished attempts per minute, task and orchestrator: what the overview's throughput chart reads
-- (one hour of it), instead of scanning runs. Each statement that writes results adds its batch's
-- counts here (src/sql/task-runs.ts completeRuns, failRuns: one upsert per statement, rows in key
-- order). The orchestrator is part of the key so that orchestrators finishing the same task never
-- wait for each other's row; the dashboard sums them. Only the counters change on a conflict: with
-- room left on the page (fillfactor) those updates are HOT. The orchestrators delete rows older
-- than two hours (src/orchestrator/repository.ts sweep, at most every ten minutes).
--   completed  runs completed (from the cache too)
--   failed     runs that failed for good (failed or timeout: into the DLQ)
--   retried    failed attempts that will be tried again
CREATE TABLE throughput_minutes (
  minute          timestamptz NOT NULL,
  task_id         text NOT NULL,
  orchestrator_id text NOT NULL,
  completed       integer NOT NULL DEFAULT 0,
  failed          integer NOT NULL DEFAULT 0,
  retried         integer NOT NULL DEFAULT 0,
  -- The upsert's arbiter, the overview's last hour (a range of minutes) and the pruning.
  PRIMARY KEY (minute, task_id, orchestrator_id)
) WITH (fillfactor = 50);

-- The run lists (src/sql/task-runs.ts, "Pages of runs"). Each filter the dashboard and runs:list
-- offer has an index that hands its rows in id order from the cursor on:
--   no filter                       task_runs_pkey, task_run_history_pkey (001)
--   --task T                        task_runs_task_idx (below) and task_runs_running_idx (001),
--                                   task_run_history_task_idx (001)
--   --status pending|waiting        task_runs_pkey (the live table holds live runs only)
--   --status running                task_runs_running_idx (001; at most the fleet's concurrency)
--   --status completed              task_run_history_pkey (most finished runs are completed)
--   --status failed|timeout|cancelled  task_run_history_status_idx (below)
--   --task T --status completed     task_run_history_task_idx (001)
--   --task T --status failed|…      task_run_history_task_status_idx (below)
--   --task T --status pending|…     task_runs_task_idx (below)
-- Finished runs in task_runs are strays a sweep moves soon: task_runs_stray_finished_idx (001).

-- page_runs_of_task (and of a task by a queued status): a task's queued runs, newest first (its
-- running ones, few, come from task_runs_running_idx). Partial: one entry per enqueue (and per
-- retry), none per claim, which moves a run to running (a status change is never HOT, and every
-- entry a claim writes is read by the claim's cost): the price of a task's page that stays cheap
-- with a backlog of a million pending runs.
CREATE INDEX task_runs_task_idx ON task_runs (task_id, id) WHERE status <> 'running';

-- page_runs_unsuccessful: failed, timeout or cancelled runs, newest first. Partial: written only
-- for the rare runs that did not complete, nothing for the millions that did. It replaces 001's
-- task_run_history_unsuccessful_idx ((id) with the same predicate), which served runs:list
-- --status before the lists were paged by status.
CREATE INDEX task_run_history_status_idx ON task_run_history (status, id) WHERE status <> 'completed';
DROP INDEX task_run_history_unsuccessful_idx;

-- page_runs_of_task_unsuccessful: one task's failed, timeout or cancelled runs, newest first
-- (task_run_history_task_idx would read all its completed runs to find them). Rare rows only.
CREATE INDEX task_run_history_task_status_idx ON task_run_history (task_id, status, id) WHERE status <> 'completed';

-- run_follow_ups: the runs a run's completion created (a run's page). Partial: only follow-ups
-- have a parent, so plain runs write nothing here.
CREATE INDEX task_runs_parent_idx ON task_runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX task_run_history_parent_idx ON task_run_history (parent_run_id) WHERE parent_run_id IS NOT NULL;
