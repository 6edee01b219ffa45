/**
 * `run --demo`: the embedded database, the demo worker, a few runs that show every path (done,
 * retried then done, dead-lettered, slow, a two-step pipeline), and a summary with what to try next.
 */
import type { Database } from '../db/database'
import { registerService } from '../api/services'
import { enqueueTask } from '../api/enqueue'
import { runMigrations } from '../api/migrations'
import { cancelRuns } from '../api/runs'
import { MaintenanceModeError, RefusedError } from '../errors'
import type { Logger } from '../logger'
import { demoManifest, startDemoWorker, type DemoWorker } from './worker'
import * as runs from '../sql/task-runs'
import { serverClock } from '../sql/server'

export interface DemoSession {
  worker: DemoWorker
  taskIds: string[]
  /** Resolves when every demo run has finished (completed, failed or dead-lettered). */
  finished(signal: AbortSignal): Promise<void>
  /**
   * Cancel the demo's runs still pending (a Ctrl-C stopped the demo first): their worker is gone
   * with this process, and a later `run` on the same database must not dispatch them into the void.
   */
  cancelUnfinished(): Promise<number>
  summary(): Promise<DemoRunSummary[]>
}

export interface DemoRunSummary {
  runId: string
  taskId: string
  status: string
  attempts: number
  /** completed, retried then completed, dead-lettered, cancelled: in words. */
  happened: string
  result: string
}

interface SummaryRow {
  id: string; task_id: string; status: string; attempt: number; output: unknown; error: string | null
  error_code: string | null; parent_task_id: string | null; dead_lettered: boolean
}

function happened(r: SummaryRow): string {
  const retries = r.attempt - 1
  switch (r.status) {
    case 'completed':
      if (retries > 0) return `retried ${retries === 1 ? 'once' : `${retries} times`}, then completed`
      return r.parent_task_id ? `completed (follow-up of ${r.parent_task_id})` : 'completed'
    case 'failed':
    case 'timeout':
      return r.dead_lettered ? `dead-lettered after ${r.attempt} attempt${r.attempt === 1 ? '' : 's'} (dlq:list)` : r.status
    case 'cancelled':
      return 'cancelled: the demo was stopped first'
    default:
      return `${r.status}: the demo was stopped first`
  }
}

export async function prepareDemo(db: Database, log: Logger): Promise<DemoSession> {
  await runMigrations(db, { logger: log })
  const worker = await startDemoWorker()
  let taskIds: string[]
  let since: Date
  try {
    const manifest = demoManifest(worker.baseUrl)
    await registerService(db, manifest)
    taskIds = manifest.tasks.map((t) => t.id)
    since = (await db.query<{ now: Date }>(serverClock)).rows[0].now
    log.info(`demo worker listening on ${worker.baseUrl}; queueing the demo runs`)
    for (const [taskId, input] of [
      ['demo.greet', { name: 'pipeweave' }], ['demo.flaky', {}], ['demo.broken', {}], ['demo.slow', {}],
    ] as const) {
      await enqueueTask(db, { taskId, input })
    }
  } catch (error) {
    // Nobody else holds the worker yet: an open server would keep the process alive after the error.
    await worker.close()
    if (error instanceof MaintenanceModeError) {
      throw new RefusedError(error.code, `the demo cannot queue its runs: the embedded database is in ${error.mode} mode`, {
        hint: 'this is your own development database: `pipeweave maintenance:exit` puts it back to running',
      })
    }
    throw error
  }
  return {
    worker,
    taskIds,
    async finished(signal) {
      while (!signal.aborted) {
        const { rows: [row] } = await db.query<{ n: number }>(runs.unfinishedOfTasks, [taskIds])
        if (row.n === 0) return
        await new Promise((resolve) => setTimeout(resolve, 250))
      }
    },
    async cancelUnfinished() {
      const { rows } = await db.query<SummaryRow>(runs.summaryOfTasks, [taskIds, since])
      const pending = rows.filter((r) => r.status === 'pending').map((r) => r.id)
      if (pending.length === 0) return 0
      // The orchestrator has stopped: what is not finished is pending (it handed its runs back).
      const { cancelled } = await cancelRuns(db, pending).catch(() => ({ cancelled: [] as string[] }))
      if (cancelled.length > 0) log.info(`cancelled ${cancelled.length} demo run(s) that had not finished`, { event: 'demo-cancelled', count: cancelled.length })
      return cancelled.length
    },
    async summary() {
      const { rows } = await db.query<SummaryRow>(runs.summaryOfTasks, [taskIds, since])
      return rows.map((r) => ({
        runId: r.id, taskId: r.task_id, status: r.status, attempts: r.attempt, happened: happened(r),
        result: r.status === 'completed' ? JSON.stringify(r.output) : r.status === 'cancelled' ? '' : [r.error_code, r.error].filter(Boolean).join(': '),
      }))
    },
  }
}
