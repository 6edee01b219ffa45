/**
 * `run --demo`: the embedded database, the demo worker, a few runs that show every path (done,
 * retried then done, dead-lettered, slow, a two-step pipeline), and a summary with what to try next.
 */
import type { Database } from '../db/database'
import { registerService } from '../api/services'
import { enqueueTask } from '../api/enqueue'
import { runMigrations } from '../api/migrations'
import type { Logger } from '../logger'
import { demoManifest, startDemoWorker, type DemoWorker } from './worker'

export interface DemoSession {
  worker: DemoWorker
  taskIds: string[]
  /** Resolves when every demo run has finished (completed, failed or dead-lettered). */
  finished(signal: AbortSignal): Promise<void>
  summary(): Promise<DemoRunSummary[]>
}

export interface DemoRunSummary {
  runId: string
  taskId: string
  status: string
  attempts: number
  result: string
}

const UNFINISHED = {
  name: 'demo_unfinished',
  text: `SELECT count(*)::int AS n FROM task_runs
          WHERE task_id = ANY ($1::text[]) AND status IN ('pending', 'running') AND created_at >= $2`,
}
const SUMMARY = {
  name: 'demo_summary',
  text: `SELECT id, task_id, status, attempt, output, error, error_code FROM task_runs
          WHERE task_id = ANY ($1::text[]) AND created_at >= $2 ORDER BY created_at`,
}

export async function prepareDemo(db: Database, log: Logger): Promise<DemoSession> {
  await runMigrations(db, { logger: log })
  const worker = await startDemoWorker()
  const manifest = demoManifest(worker.baseUrl)
  await registerService(db, manifest)
  const taskIds = manifest.tasks.map((t) => t.id)
  const since = (await db.query<{ now: Date }>({ name: 'demo_now', text: 'SELECT clock_timestamp() AS now' })).rows[0].now
  log.info(`demo worker listening on ${worker.baseUrl}; queueing the demo runs`)
  for (const [taskId, input] of [
    ['demo.greet', { name: 'pipeweave' }], ['demo.flaky', {}], ['demo.broken', {}], ['demo.slow', {}],
  ] as const) {
    await enqueueTask(db, { taskId, input })
  }
  return {
    worker,
    taskIds,
    async finished(signal) {
      while (!signal.aborted) {
        const { rows: [row] } = await db.query<{ n: number }>(UNFINISHED, [taskIds, since])
        if (row.n === 0) return
        await new Promise((resolve) => setTimeout(resolve, 250))
      }
    },
    async summary() {
      const { rows } = await db.query<{ id: string; task_id: string; status: string; attempt: number; output: unknown; error: string | null; error_code: string | null }>(SUMMARY, [taskIds, since])
      return rows.map((r) => ({
        runId: r.id, taskId: r.task_id, status: r.status, attempts: r.attempt,
        result: r.status === 'completed' ? JSON.stringify(r.output) : `${r.error_code ?? ''} ${r.error ?? ''}`.trim(),
      }))
    },
  }
}
