/**
 * The conventions of SPEC §2 that every command shares, before any database is involved: unknown
 * commands and flags suggest the nearest one and, with --json, print the error document like every
 * other failure.
 */
import { json, runCli } from './helpers/cli'

interface ErrorDocument {
  error: { code: string; message: string; hint?: string }
  exitCode: number
}

describe('unknown commands', () => {
  it('suggest the nearest command (exit 2), on one line of stderr', async () => {
    const result = await runCli(['runs:lst'])
    expect(result.code).toBe(2)
    expect(result.stdout).toBe('')
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(result.stderr).toMatch(/^error: unknown command "runs:lst"/)
    expect(result.stderr).toContain('did you mean `pipeweave runs:list`?')
  })

  it('suggest across topics (run:list is runs:list) and say where the list is when nothing is near', async () => {
    expect((await runCli(['run:list'])).stderr).toContain('did you mean `pipeweave runs:list`?')
    expect((await runCli(['maintenance:stauts'])).stderr).toContain('did you mean `pipeweave maintenance:status`?')
    const far = await runCli(['frobnicate'])
    expect(far.code).toBe(2)
    expect(far.stderr).not.toContain('did you mean')
    expect(far.stderr).toContain('`pipeweave --help` lists every command')
  })

  it('with --json print the error document on stdout, nothing on stderr', async () => {
    const result = await runCli(['runs:lst', '--status', 'failed', '--json'])
    expect(result.code).toBe(2)
    expect(result.stderr).toBe('')
    expect(json<ErrorDocument>(result)).toEqual({
      error: { code: 'UNKNOWN_COMMAND', message: 'unknown command "runs:lst"', hint: expect.stringContaining('did you mean `pipeweave runs:list`?') },
      exitCode: 2,
    })
  })
})

describe('unknown flags', () => {
  it('suggest the nearest flag of that command (exit 2)', async () => {
    const result = await runCli(['runs:list', '--limt', '5'])
    expect(result.code).toBe(2)
    expect(result.stdout).toBe('')
    expect(result.stderr).toMatch(/^error: unknown flag --limt/)
    expect(result.stderr).toContain('did you mean --limit?')
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    // Connection flags are flags of every command; --value=form names the flag only.
    expect((await runCli(['db:ping', '--hots=db.example.com'])).stderr).toContain('did you mean --host?')
  })

  it('with --json print the error document with the suggestion', async () => {
    const result = await runCli(['dlq:list', '--pendign', '--json'])
    expect(result.code).toBe(2)
    expect(result.stderr).toBe('')
    expect(json<ErrorDocument>(result)).toEqual({
      error: { code: 'BAD_USAGE', message: 'unknown flag --pendign', hint: expect.stringContaining('did you mean --pending?') },
      exitCode: 2,
    })
  })

  it('say where the flags are listed when nothing is near', async () => {
    const result = await runCli(['runs:list', '--frobnicate'])
    expect(result.code).toBe(2)
    expect(result.stderr).not.toContain('did you mean')
    expect(result.stderr).toContain('`pipeweave runs:list --help`')
  })
})
