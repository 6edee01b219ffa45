/**
 * The programmatic API (SPEC §6): what the CLI uses, for services that embed pipeweave.
 *
 *   const db = await createDatabase({ env: process.env })
 *   if (await canAcceptTasks(db)) await enqueueTask(db, { taskId: 'send-report', input: { day } })
 *   await closeDatabase(db)
 */
export { createDatabase, closeDatabase, openOrCreateDatabase } from './api/database'
export type { Database, DatabaseConfig } from './api/database'
export type { SslObject } from './db/config'
export { runMigrations, getMigrationStatus, validateMigrations, readMigrationFiles } from './api/migrations'
export type { MigrationStatus, ValidationResult, MigrationProblem, RunMigrationsOptions, RunMigrationsResult } from './api/migrations'
export {
  getMaintenanceStatus, requestMaintenance, enterMaintenance, exitMaintenance, canAcceptTasks, drainCheck,
} from './maintenance/maintenance'
export type { MaintenanceStatus, MaintenanceOptions, TransitionResult, Mode, DrainCheckResult, LostRun, MaintenanceEvent, PausedTask, OpenBreaker } from './maintenance/maintenance'
export { waitForMaintenance } from './maintenance/wait'
export { enqueueTask, enqueueTasks } from './api/enqueue'
export type { EnqueueOptions, EnqueueResult, EnqueueItem, BulkEnqueueResult } from './api/enqueue'
export { runCleanup } from './api/cleanup'
export type { CleanupOptions, CleanupResult } from './api/cleanup'
export { registerService, listServices, validateManifest } from './api/services'
export { setSchedule, listSchedules, removeSchedule, parseDuration } from './api/schedules'
export type { SetScheduleOptions, SetScheduleResult, ScheduleInfo, ScheduleManifest, Overlap, RegisteredSchedule } from './api/schedules'
export { compileSchedule } from './api/cron'
export type { CronSchedule } from './api/cron'
export type { ServiceManifest, TaskManifest, RegisterResult, ServiceInfo, TaskInfo } from './api/services'
export {
  pauseTasks, resumeTasks, setTaskRateLimit, getFlowControl, getTaskPause, listControlEvents, parseRateLimit, formatRateLimit,
  MAX_RATE_LIMIT, MAX_RATE_PERIOD_MS,
} from './api/flow-control'
export type {
  PauseTarget, PauseResult, PauseChange, Pause, FlowControlOptions, RateLimit, RateLimitSetting, RateLimitResult,
  FlowControlState, TaskFlowState, ServiceFlowState, Breaker, BreakerState, ControlEvent,
} from './api/flow-control'
export { listRuns, getRun, cancelRuns } from './api/runs'
export type { TaskRun, ListRunsOptions, CancelResult } from './api/runs'
export { listDlq, retryDlq } from './api/dlq'
export type { DlqEntry, RetryResult } from './api/dlq'
export { createOrchestrator } from './orchestrator/orchestrator'
export type { Orchestrator, OrchestratorOptions, OrchestratorHooks, RunOutcome, BreakerSettings } from './orchestrator/orchestrator'
export {
  PipeweaveError, UsageError, ConnectionError, RefusedError, MaintenanceModeError, WaitTimeoutError, InternalError, ExitCode,
} from './errors'
export type { Logger } from './logger'
