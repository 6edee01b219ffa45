/** runs:list, runs:show, runs:cancel (SPEC §5). */
import type { Database, Queryable } from '../db/database'
import { RefusedError, UsageError } from '../errors'
import * as sql from '../sql/task-runs'
import { RunStatus } from '../sql/task-runs'

export interface PreviousAttempt {
  attempt: number
  error: string
  errorCode: string | null
  at: string
}

export interface TaskRun {
  id: string
  taskId: string
  pipelineRunId: string | null
  parentRunId: string | null
  status: RunStatus
  attempt: number
  priority: number
  input: unknown
  output: unknown
  inputPath: string | null
  outputPath: string | null
  error: string | null
  errorCode: string | null
  idempotencyKey: string | null
  previousAttempts: PreviousAttempt[]
  scheduledFor: string | null
  createdAt: string
  startedAt: string | null
  completedAt: string | null
  heartbeatAt: string | null
  orchestratorId: string | null
}

interface RunRow {
  id: string; task_id: string; pipeline_run_id: string | null; parent_run_id: string | null; status: RunStatus
  attempt: number; priority: number; input: unknown; output: unknown; input_path: string | null; output_path: string | null
  error: string | null; error_code: string | null; idempotency_key: string | null; previous_attempts: PreviousAttempt[]
  scheduled_for: Date | null; created_at: Date; started_at: Date | null; completed_at: Date | null; heartbeat_at: Date | null
  orchestrator_id: string | null
}

const iso = (d: Date | null) => (d ? d.toISOString() : null)

/**
 * previous_attempts is JSONB, so its `at` comes back as PostgreSQL wrote it inside the JSON
 * ("2026-03-01T10:00:00.123456+00:00", in the session's time zone): give it the ISO form of every
 * other timestamp of the run, so that a consumer can compare and sort them as strings.
 */
export function normalizeAttempts(attempts: PreviousAttempt[] | null): PreviousAttempt[] {
  return (attempts ?? []).map((a) => {
    const at = typeof a.at === 'string' ? new Date(a.at) : undefined
    return at && !Number.isNaN(at.getTime()) ? { ...a, at: at.toISOString() } : a
  })
}

function toRun(r: RunRow): TaskRun {
  return {
    id: r.id, taskId: r.task_id, pipelineRunId: r.pipeline_run_id, parentRunId: r.parent_run_id, status: r.status,
    attempt: r.attempt, priority: r.priority, input: r.input, output: r.output, inputPath: r.input_path,
    outputPath: r.output_path, error: r.error, errorCode: r.error_code, idempotencyKey: r.idempotency_key,
    previousAttempts: normalizeAttempts(r.previous_attempts), scheduledFor: iso(r.scheduled_for), createdAt: r.created_at.toISOString(),
    startedAt: iso(r.started_at), completedAt: iso(r.completed_at), heartbeatAt: iso(r.heartbeat_at), orchestratorId: r.orchestrator_id,
  }
}

export const RUN_STATUSES: readonly string[] = Object.values(RunStatus)

export interface ListRunsOptions {
  status?: string
  taskId?: string
  limit?: number
  /**
   * The cursor: only runs older than this id (the last id of the page before; ids are
   * time-ordered). Pages are keyset-paged, never by OFFSET: each costs what the first costs.
   */
  before?: string
  /** Include input and output (default true; a list that does not show them leaves them out). */
  payloads?: boolean
}

/** Runs, live and finished, newest first: one page of at most `limit` (50). */
export async function listRuns(db: Queryable, options: ListRunsOptions = {}): Promise<TaskRun[]> {
  if (options.status !== undefined && !RUN_STATUSES.includes(options.status)) {
    throw new UsageError('INVALID_STATUS', `unknown status "${options.status}"`, { hint: `use one of ${RUN_STATUSES.join(', ')}` })
  }
  const { kind, values } = sql.runPageFor({ status: options.status, taskId: options.taskId })
  const page = sql.runPages[kind][options.payloads === false ? 'summary' : 'full']
  const { rows } = await db.query<RunRow>(page, [options.before ?? null, options.limit ?? 50, ...values])
  return rows.map(toRun)
}

/** The runs a run's completion created (its runNext follow-ups), in creation order, without payloads. */
export async function listFollowUps(db: Queryable, runId: string, limit = 100): Promise<TaskRun[]> {
  const { rows } = await db.query<RunRow>(sql.followUps, [runId, limit])
  return rows.map(toRun)
}

export async function getRun(db: Queryable, runId: string): Promise<TaskRun> {
  const { rows: [row] } = await db.query<RunRow>(sql.showRun, [runId])
  if (!row) throw new UsageError('UNKNOWN_RUN', `no task run with id "${runId}"`, { hint: 'runs:list shows recent runs' })
  return toRun(row)
}

export interface CancelResult {
  cancelled: string[]
  refused: Array<{ id: string; status: string }>
}

/**
 * Cancel pending runs, all or nothing: if any id is unknown (UsageError, exit 2) or names a run that
 * is not pending (RefusedError, exit 4), nothing is cancelled. The statement itself cancels only
 * when every run is pending (src/sql/task-runs.ts cancelRuns); it runs in a transaction that a
 * refusal rolls back all the same. `refused` is always empty in a result (kept for the shape of --json).
 */
export async function cancelRuns(db: Pick<Database, 'withTransaction'>, runIds: string[]): Promise<CancelResult> {
  const ids = [...new Set(runIds)]
  return db.withTransaction(async (tx) => {
    const { rows } = await tx.query<{ id: string; cancelled: boolean; status: string | null }>(sql.cancelRuns, [ids])
    const unknown = rows.filter((r) => r.status === null).map((r) => r.id)
    if (unknown.length > 0) {
      throw new UsageError('UNKNOWN_RUN', `no task run with id ${unknown.map((id) => `"${id}"`).join(', ')}; nothing was cancelled`, { hint: 'runs:list shows recent runs' })
    }
    const refused = rows.filter((r) => r.status !== 'pending')
    if (refused.length > 0) {
      const list = refused.map((r) => `${r.id} is ${r.status}`).join(', ')
      throw new RefusedError('NOT_CANCELLABLE', `only pending runs can be cancelled: ${list}; nothing was cancelled`, {
        hint: 'cancel the pending ones alone (runs:list --status pending)',
      })
    }
    return { cancelled: ids.filter((id) => rows.some((r) => r.id === id && r.cancelled)), refused: [] }
  })
}
