import { listSchedules, type ScheduleInfo } from '../../api/schedules'
import { BaseCommand, listFlags } from '../../base-command'
import { type Column, relativeTime } from '../../output'

/** When a tick is, in a fitted table: relative, and "overdue" for a next tick already past. */
function nextTick(s: ScheduleInfo, now: number): string {
  if (!s.nextTick) return 'never'
  const at = new Date(s.nextTick).getTime()
  return at < now - 1000 ? `overdue (${relativeTime(s.nextTick, now)})` : relativeTime(s.nextTick, now)
}

const SCHEDULE_COLUMNS: Array<Column<ScheduleInfo>> = [
  { key: 'name', header: 'Schedule', full: (s) => s.name, shrinkTo: 10 },
  { key: 'task', header: 'Task', full: (s) => s.taskId, shrinkTo: 8 },
  { key: 'cron', header: 'Cron', full: (s) => s.cron },
  { key: 'timezone', header: 'Time zone', full: (s) => s.timezone },
  { key: 'overlap', header: 'Overlap', full: (s) => s.overlap, fitted: false },
  { key: 'backfill', header: 'Backfill', full: (s) => s.backfill ?? 'none', fitted: false },
  { key: 'owner', header: 'Owner', full: (s) => (s.service ? `service ${s.service}` : 'schedules:set'), shrinkTo: 8 },
  { key: 'last', header: 'Last tick', full: (s) => s.lastTick, short: (s, now) => relativeTime(s.lastTick, now) },
  { key: 'next', header: 'Next tick', full: (s) => s.nextTick, short: nextTick },
  { key: 'input', header: 'Input', full: (s) => (s.input === null ? '' : JSON.stringify(s.input)), fitted: false, shrinkTo: 10 },
  { key: 'lastrun', header: 'Last run', full: (s) => s.lastRunId, fitted: false },
]

/** One line about a schedule: what schedules:set prints. */
export function describeSchedule(s: ScheduleInfo): string {
  return `${s.name}: task ${s.taskId} at "${s.cron}" (${s.timezone}), overlap ${s.overlap}, backfill ${s.backfill ?? 'none'}; next tick ${s.nextTick ?? 'never'}`
}

export default class SchedulesList extends BaseCommand<typeof SchedulesList, { schedules: ScheduleInfo[] }> {
  static summary = 'List schedules with their last and next tick.'
  static description = `The last tick is the last one decided (enqueued, skipped or missed); the next tick is the one the
orchestrators decide next, "overdue" when it has passed and no orchestrator has taken it (is one running?).
--wide shows every column with ISO times; --json prints { "schedules": [...] }.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Every schedule, fitted to the terminal.' },
    { command: '<%= config.bin %> <%= command.id %> --wide', description: 'Every column, ISO times.' },
    { command: '<%= config.bin %> <%= command.id %> --json', description: '{ "schedules": [{ "name", "taskId", "cron", "timezone", "lastTick", "nextTick", … }] }' },
  ]
  static flags = {
    ...listFlags(SCHEDULE_COLUMNS.map((c) => c.key)),
  }

  protected async execute(): Promise<{ schedules: ScheduleInfo[] }> {
    this.listColumns(SCHEDULE_COLUMNS) // a bad --columns is bad input: exit 2 before connecting
    return { schedules: await listSchedules(await this.migratedDatabase()) }
  }

  protected render(result: { schedules: ScheduleInfo[] }): void {
    if (result.schedules.length === 0 && this.flags.output !== 'csv') {
      this.out.line(`No schedules. Set one with \`${this.config.bin} schedules:set NAME --cron "EXPR" --task TASK\`.`)
      return
    }
    this.printList(SCHEDULE_COLUMNS, result.schedules)
  }
}
