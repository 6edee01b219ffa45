/**
 * The ticks of a schedule (SPEC §7): a cron expression in an IANA time zone, computed by the kept
 * library, croner (11+), whose daylight-saving rules are Vixie cron's, as SPEC §7 asks:
 *
 *   - a *fixed-time* job (its minute and hour fields are not `*`) whose time falls in the hour the
 *     clock skips (spring forward) runs right after the jump: `30 2 * * *` in Europe/Berlin on
 *     2026-03-29 at 03:00 CEST (01:00 UTC); several such ticks in one gap are one instant;
 *   - a fixed-time job runs once in the hour the clock repeats (fall back), at its first
 *     occurrence: 02:30 CEST (00:30 UTC) on 2026-10-25, not again at 02:30 CET;
 *   - a *wildcard* job (minute or hour field starting with `*`) follows the clock: nothing is caught
 *     up in the skipped hour, and it runs in both passes of the repeated one.
 *
 * (cron-parser 5.10 puts the skipped 02:30 at 03:30 CEST, half an hour after the jump: not what the
 * SPEC says.) test/schedule-ticks.test.ts holds these rules with literal UTC instants, so a library
 * upgrade that changes them fails there.
 *
 * Everything is milliseconds since the epoch; `nextTick(after)` is the first tick strictly after
 * `after` (whole seconds), which is how the orchestrators' schedule loop and `schedules:list` use it.
 */
import { Cron } from 'croner'
import { UsageError } from '../errors'

const SECOND = 1000

/** Vixie's nicknames, as the five fields they stand for (@reboot has no place in a fleet). */
const NICKNAMES: Record<string, string> = {
  '@yearly': '0 0 1 1 *',
  '@annually': '0 0 1 1 *',
  '@monthly': '0 0 1 * *',
  '@weekly': '0 0 * * 0',
  '@daily': '0 0 * * *',
  '@midnight': '0 0 * * *',
  '@hourly': '0 * * * *',
}

const CRON_HINT = 'five fields (minute hour day-of-month month day-of-week), or six with seconds first, in quotes: --cron "30 2 * * *", --cron "*/10 * * * * *"'

export interface CronSchedule {
  /** The expression as given. */
  readonly cron: string
  /** The IANA time zone, as the runtime names it (`Europe/Berlin`). */
  readonly timezone: string
  /** The first tick strictly after `after` (ms since the epoch), or null when there is none. */
  nextTick(after: number): number | null
  /** The last tick strictly after `after` and strictly before `before`, or null when there is none. */
  lastTickBefore(after: number, before: number): number | null
}

/**
 * Check and compile a schedule's expression and time zone (UsageError, exit 2: INVALID_CRON,
 * UNKNOWN_TIMEZONE). An expression that can never fire (`0 0 30 2 *`) is refused too.
 */
export function compileSchedule(cron: string, timezone = 'UTC'): CronSchedule {
  const zone = canonicalTimeZone(timezone)
  const fields = expand(cron)
  let matcher: Cron
  try {
    matcher = new Cron(fields.join(' '), { timezone: zone, paused: true })
  } catch (error) {
    throw new UsageError('INVALID_CRON', `invalid cron expression "${cron}": ${(error as Error).message.replace(/^CronPattern: /, '')}`, { hint: CRON_HINT })
  }
  const schedule = new Schedule(cron, zone, matcher)
  if (schedule.nextTick(Date.now()) === null) {
    throw new UsageError('INVALID_CRON', `the cron expression "${cron}" never fires`, { hint: CRON_HINT })
  }
  return schedule
}

/** The zone's canonical IANA name, or UNKNOWN_TIMEZONE (exit 2). */
export function canonicalTimeZone(timezone: string): string {
  if (typeof timezone !== 'string' || timezone.trim() === '') {
    throw new UsageError('UNKNOWN_TIMEZONE', 'the time zone must be an IANA name such as Europe/Berlin or UTC')
  }
  try {
    return new Intl.DateTimeFormat('en-US', { timeZone: timezone.trim() }).resolvedOptions().timeZone
  } catch {
    throw new UsageError('UNKNOWN_TIMEZONE', `unknown time zone "${timezone}"`, {
      hint: 'use an IANA name such as Europe/Berlin, America/New_York or UTC (`timedatectl list-timezones` lists them)',
    })
  }
}

/** The expression's fields (a nickname expanded); five or six, else INVALID_CRON. */
function expand(cron: string): string[] {
  if (typeof cron !== 'string' || cron.trim() === '') throw new UsageError('INVALID_CRON', 'a cron expression is required', { hint: CRON_HINT })
  const text = cron.trim()
  if (text.startsWith('@')) {
    const fields = NICKNAMES[text.toLowerCase()]
    if (!fields) throw new UsageError('INVALID_CRON', `unknown cron nickname "${text}" (${Object.keys(NICKNAMES).join(', ')})`, { hint: CRON_HINT })
    return fields.split(' ')
  }
  const fields = text.split(/\s+/)
  if (fields.length !== 5 && fields.length !== 6) {
    throw new UsageError('INVALID_CRON', `invalid cron expression "${cron}": it has ${fields.length} field(s)`, { hint: CRON_HINT })
  }
  return fields
}

class Schedule implements CronSchedule {
  constructor(readonly cron: string, readonly timezone: string, private readonly matcher: Cron) {}

  nextTick(after: number): number | null {
    const next = this.matcher.nextRun(new Date(after))
    return next === null ? null : next.getTime()
  }

  lastTickBefore(after: number, before: number): number | null {
    // Gallop back from `before` until a window holds a tick, then walk forward through it: the
    // walk reads only the ticks of the last window (its later half held none).
    for (let span = SECOND; ; span *= 2) {
      const from = Math.max(after, before - span)
      let tick = this.nextTick(from)
      if (tick !== null && tick < before) {
        for (let next = this.nextTick(tick); next !== null && next < before; next = this.nextTick(tick)) tick = next
        return tick
      }
      if (from === after) return null
    }
  }
}
