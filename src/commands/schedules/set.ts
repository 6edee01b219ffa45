import { OVERLAPS, type Overlap, type SetScheduleResult, setSchedule, validateScheduleOptions } from '../../api/schedules'
import { Args, BaseCommand, Flags } from '../../base-command'
import { UsageError } from '../../errors'
import { describeSchedule } from './list'

export default class SchedulesSet extends BaseCommand<typeof SchedulesSet, SetScheduleResult> {
  static summary = 'Create or change a schedule: a run of TASK at every tick of a cron expression, fleet-wide once.'
  static description = `The expression has five fields (minute hour day-of-month month day-of-week), or six with a seconds field
first; @hourly, @daily, @weekly, @monthly and @yearly work too. Ticks follow --timezone's wall clock (IANA
name, default UTC) as Vixie cron does across daylight saving: a tick in the skipped hour runs right after
the jump, a repeated hour runs once (a wildcard minute or hour runs in both passes). Each tick is enqueued
once however many orchestrators run (pipeweave run decides ticks; with none running, nothing ticks).
--overlap skip (default) enqueues nothing while the previous tick's run is pending or running; allow does.
Ticks missed while no orchestrator ran are enqueued late only within --backfill (default none); ticks
that fall while the mode is not running are skipped; both are recorded (control_events). Setting the same
definition again changes nothing; a new expression or time zone starts its ticks now. A schedule of a
service's manifest cannot be changed here (exit 4): change its manifest and register it again.`
  static examples = [
    { command: `<%= config.bin %> <%= command.id %> nightly-report --cron "30 2 * * *" --timezone Europe/Berlin --task send-report --input '{"kind":"daily"}'`, description: 'Every night at 02:30 Berlin time.' },
    { command: '<%= config.bin %> <%= command.id %> sync --cron "*/5 * * * *" --task sync-accounts --backfill 1h', description: 'Every 5 minutes; after a stopped fleet restarts, the last hour\'s missed ticks are enqueued.' },
    { command: '<%= config.bin %> <%= command.id %> heartbeat --cron "*/10 * * * * *" --task ping --overlap allow', description: 'Every 10 seconds (six fields: seconds first), even while the previous run is still going.' },
  ]
  static args = {
    name: Args.string({ description: 'The schedule\'s name (letters, digits, ".", "_", ":", "-").', required: true }),
  }
  static flags = {
    cron: Flags.string({ summary: 'The cron expression, quoted: "30 2 * * *" (or six fields, seconds first).', required: true }),
    task: Flags.string({ summary: 'The task each tick runs (see services:list).', required: true }),
    input: Flags.string({ summary: 'The input of every run, as JSON.' }),
    timezone: Flags.string({ summary: 'IANA time zone of the expression (default UTC).', default: 'UTC' }),
    backfill: Flags.string({ summary: 'Enqueue ticks missed while no orchestrator ran if at most this old: 30s, 10m, 1h30m, 2d (default none).' }),
    overlap: Flags.string({ summary: 'skip (default): no run while the previous tick\'s run is pending or running; allow: run anyway.', options: [...OVERLAPS], default: 'skip' }),
    reason: Flags.string({ summary: 'Why; recorded with the change (control_events).' }),
  }

  protected async execute(): Promise<SetScheduleResult> {
    let input: unknown
    if (this.flags.input !== undefined) {
      try {
        input = JSON.parse(this.flags.input)
      } catch (error) {
        throw new UsageError('INVALID_JSON', `the input is not valid JSON: ${(error as Error).message}`, { hint: `quote it for the shell, e.g. --input '{"key":"value"}'` })
      }
    }
    const options = {
      name: this.args.name, cron: this.flags.cron, taskId: this.flags.task, input, timezone: this.flags.timezone,
      backfill: this.flags.backfill, overlap: this.flags.overlap as Overlap, reason: this.flags.reason,
    }
    validateScheduleOptions(options) // input (2) before the connection (3), SPEC §2
    return setSchedule(await this.migratedDatabase(), options)
  }

  protected render(result: SetScheduleResult): void {
    const verb = result.created ? 'Created' : result.changed ? 'Changed' : 'Unchanged:'
    this.out.line(`${verb} schedule ${describeSchedule(result.schedule)}`)
  }
}
