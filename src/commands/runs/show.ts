import { getRun, type TaskRun } from '../../api/runs'
import { Args, BaseCommand } from '../../base-command'

export default class RunsShow extends BaseCommand<typeof RunsShow, TaskRun> {
  static summary = 'Show one task run: input, output, and every attempt with its error.'
  static examples = [
    { command: '<%= config.bin %> <%= command.id %> 3f1c9a4e-…', description: 'Everything about a run; exit 2 if the id is unknown.' },
  ]
  static args = {
    runId: Args.string({ description: 'The run id (tasks:enqueue and runs:list print it).', required: true }),
  }

  protected async execute(): Promise<TaskRun> {
    return getRun(await this.migratedDatabase(), this.args.runId)
  }

  protected render(run: TaskRun): void {
    const { style } = this.out
    const line = (label: string, value: unknown) => {
      if (value !== null && value !== undefined && value !== '') this.out.line(`${style.bold(`${label}:`)} ${value}`)
    }
    line('Run', run.id)
    line('Task', run.taskId)
    line('Status', run.status)
    line('Attempt', run.attempt)
    line('Priority', run.priority)
    line('Pipeline run', run.pipelineRunId)
    line('Follow-up of', run.parentRunId)
    line('Idempotency key', run.idempotencyKey)
    line('Created', run.createdAt)
    line('Scheduled for', run.scheduledFor)
    line('Started', run.startedAt)
    line('Finished', run.completedAt)
    line('Orchestrator', run.orchestratorId)
    // A run that completed on a retry still holds its last failure in error/error_code (the JSON
    // shows them as stored); shown here it would read as a failure: it is under Previous attempts.
    if (run.error && run.status !== 'completed') line('Error', `${run.errorCode ? `${run.errorCode}: ` : ''}${run.error}`)
    line('Input', JSON.stringify(run.input))
    line('Input path', run.inputPath)
    line('Output', run.output === null ? null : JSON.stringify(run.output))
    line('Output path', run.outputPath)
    if (run.previousAttempts.length > 0) {
      this.out.line(style.bold('Previous attempts:'))
      this.out.table(['Attempt', 'At', 'Code', 'Error'], run.previousAttempts.map((a) => [a.attempt, a.at, a.errorCode, a.error]))
    }
  }
}
