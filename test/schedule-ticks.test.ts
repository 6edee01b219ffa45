/**
 * The ticks of a schedule (SPEC §7, issue 12 acceptance 4): cron in an IANA time zone with
 * daylight saving as Vixie cron does it, computed by compiledOf (src/api/schedules.ts), the very
 * function the orchestrators' schedule loop and schedules:list call. Every expected tick is a
 * literal UTC instant. (test/schedule-loop.test.ts has the same Berlin instants decided by the
 * schedule loop itself, on the real database.)
 */
import { compiledOf } from '../src/api/schedules'
import { compileSchedule } from '../src/api/cron'

/** The first `n` ticks after `after` (ISO), as ISO strings. */
function ticks(cron: string, timezone: string, after: string, n: number): string[] {
  const schedule = compiledOf(cron, timezone)
  const out: string[] = []
  let at = Date.parse(after)
  for (let i = 0; i < n; i++) {
    const next = schedule.nextTick(at)
    if (next === null) break
    out.push(new Date(next).toISOString())
    at = next
  }
  return out
}

describe('schedule ticks across daylight saving (Vixie cron)', () => {
  it('30 2 * * * in Europe/Berlin: the skipped 02:30 of 2026-03-29 runs right after the jump, at 03:00 CEST', () => {
    expect(ticks('30 2 * * *', 'Europe/Berlin', '2026-03-27T00:00:00Z', 4)).toEqual([
      '2026-03-27T01:30:00.000Z', // 02:30 CET
      '2026-03-28T01:30:00.000Z', // 02:30 CET
      '2026-03-29T01:00:00.000Z', // 02:30 does not exist: 02:00 CET jumps to 03:00 CEST = 01:00 UTC
      '2026-03-30T00:30:00.000Z', // 02:30 CEST
    ])
  })

  it('30 2 * * * in Europe/Berlin: the repeated 02:30 of 2026-10-25 runs once, at its first occurrence (CEST)', () => {
    expect(ticks('30 2 * * *', 'Europe/Berlin', '2026-10-23T12:00:00Z', 4)).toEqual([
      '2026-10-24T00:30:00.000Z', // 02:30 CEST
      '2026-10-25T00:30:00.000Z', // 02:30 CEST; 02:30 CET (01:30 UTC) comes again and is not a tick
      '2026-10-26T01:30:00.000Z', // 02:30 CET
      '2026-10-27T01:30:00.000Z',
    ])
    // From inside the repeated hour's second pass, the next tick is the next day's.
    expect(ticks('30 2 * * *', 'Europe/Berlin', '2026-10-25T01:10:00Z', 1)).toEqual(['2026-10-26T01:30:00.000Z'])
    expect(ticks('30 2 * * *', 'Europe/Berlin', '2026-10-25T00:30:00Z', 1)).toEqual(['2026-10-26T01:30:00.000Z'])
  })

  it('the same with a seconds field, and a tick between two others at the jump', () => {
    expect(ticks('15 30 2 * * *', 'Europe/Berlin', '2026-03-28T12:00:00Z', 2)).toEqual(['2026-03-29T01:00:00.000Z', '2026-03-30T00:30:15.000Z'])
    expect(ticks('15 30 2 * * *', 'Europe/Berlin', '2026-10-24T12:00:00Z', 2)).toEqual(['2026-10-25T00:30:15.000Z', '2026-10-26T01:30:15.000Z'])
    // Two ticks in the skipped hour are one tick, right after the jump; 03:00 itself is the same instant.
    expect(ticks('0,30 2,3 * * *', 'Europe/Berlin', '2026-03-29T00:00:00Z', 3)).toEqual(['2026-03-29T01:00:00.000Z', '2026-03-29T01:30:00.000Z', '2026-03-30T00:00:00.000Z'])
  })

  it('a wildcard hour runs by the clock: nothing is caught up in the skipped hour, both passes of the repeated one run', () => {
    expect(ticks('*/30 * * * *', 'Europe/Berlin', '2026-03-28T23:50:00Z', 4)).toEqual([
      '2026-03-29T00:00:00.000Z', // 01:00 CET
      '2026-03-29T00:30:00.000Z', // 01:30 CET
      '2026-03-29T01:00:00.000Z', // 03:00 CEST (02:00 and 02:30 do not exist)
      '2026-03-29T01:30:00.000Z', // 03:30 CEST
    ])
    expect(ticks('*/30 * * * *', 'Europe/Berlin', '2026-10-24T23:50:00Z', 6)).toEqual([
      '2026-10-25T00:00:00.000Z', // 02:00 CEST
      '2026-10-25T00:30:00.000Z', // 02:30 CEST
      '2026-10-25T01:00:00.000Z', // 02:00 CET
      '2026-10-25T01:30:00.000Z', // 02:30 CET
      '2026-10-25T02:00:00.000Z', // 03:00 CET
      '2026-10-25T02:30:00.000Z',
    ])
  })

  it('every second (six fields) ticks every second straight through both transitions', () => {
    expect(ticks('*/1 * * * * *', 'Europe/Berlin', '2026-03-29T00:59:58Z', 3)).toEqual(['2026-03-29T00:59:59.000Z', '2026-03-29T01:00:00.000Z', '2026-03-29T01:00:01.000Z'])
    expect(ticks('*/1 * * * * *', 'Europe/Berlin', '2026-10-25T00:59:58Z', 3)).toEqual(['2026-10-25T00:59:59.000Z', '2026-10-25T01:00:00.000Z', '2026-10-25T01:00:01.000Z'])
    // From a moment between whole seconds: the next whole second.
    expect(ticks('*/1 * * * * *', 'UTC', '2026-01-01T00:00:00.250Z', 2)).toEqual(['2026-01-01T00:00:01.000Z', '2026-01-01T00:00:02.000Z'])
  })

  it('America/New_York: 02:30 on 2026-03-08 runs at 03:00 EDT; 01:30 on 2026-11-01 runs once (EDT)', () => {
    expect(ticks('30 2 * * *', 'America/New_York', '2026-03-07T12:00:00Z', 2)).toEqual(['2026-03-08T07:00:00.000Z', '2026-03-09T06:30:00.000Z'])
    expect(ticks('30 1 * * *', 'America/New_York', '2026-10-31T12:00:00Z', 2)).toEqual(['2026-11-01T05:30:00.000Z', '2026-11-02T06:30:00.000Z'])
  })

  it('lastTickBefore finds the last tick of a range (what a missed range records)', () => {
    const every = compileSchedule('*/1 * * * * *', 'UTC')
    expect(new Date(every.lastTickBefore(Date.parse('2026-01-01T00:00:00Z'), Date.parse('2026-01-01T03:00:00Z'))!).toISOString()).toBe('2026-01-01T02:59:59.000Z')
    const daily = compileSchedule('30 2 * * *', 'Europe/Berlin')
    expect(new Date(daily.lastTickBefore(Date.parse('2026-03-01T00:00:00Z'), Date.parse('2026-03-29T01:00:00Z'))!).toISOString()).toBe('2026-03-28T01:30:00.000Z')
    expect(new Date(daily.lastTickBefore(Date.parse('2026-03-01T00:00:00Z'), Date.parse('2026-03-29T01:00:01Z'))!).toISOString()).toBe('2026-03-29T01:00:00.000Z')
    expect(daily.lastTickBefore(Date.parse('2026-03-29T01:00:00Z'), Date.parse('2026-03-30T00:30:00Z'))).toBeNull()
  })

  it('refuses what is not a five- or six-field expression, an expression that never fires, and an unknown zone (exit 2)', () => {
    const refused = (cron: string, zone = 'UTC') => {
      try {
        compileSchedule(cron, zone)
        return undefined
      } catch (error) {
        return { code: (error as { code: string }).code, exitCode: (error as { exitCode: number }).exitCode, message: (error as Error).message }
      }
    }
    expect(refused('* * * *')).toMatchObject({ code: 'INVALID_CRON', exitCode: 2 })
    expect(refused('* * * * * * *')).toMatchObject({ code: 'INVALID_CRON', exitCode: 2 })
    expect(refused('61 * * * *')).toMatchObject({ code: 'INVALID_CRON', exitCode: 2 })
    expect(refused('0 0 30 2 *')).toMatchObject({ code: 'INVALID_CRON', exitCode: 2, message: expect.stringMatching(/never fires/) })
    expect(refused('@reboot')).toMatchObject({ code: 'INVALID_CRON', exitCode: 2 })
    expect(refused('30 2 * * *', 'Europe/Berlinn')).toMatchObject({ code: 'UNKNOWN_TIMEZONE', exitCode: 2 })
    expect(refused('@daily')).toBeUndefined()
    expect(compileSchedule('@hourly', 'europe/berlin')).toMatchObject({ timezone: 'Europe/Berlin', cron: '@hourly' })
    expect(compileSchedule('30 2 * * *')).toMatchObject({ timezone: 'UTC' })
  })
})
