/**
 * The conventions of SPEC §2 that every command shares, before any database is involved: unknown
 * commands and flags suggest the nearest one and, with --json, print the error document like every
 * other failure; -h and -v are --help and --version; --version --json is a JSON document.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import { json, runCli } from './helpers/cli'

const pkg = JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', 'package.json'), 'utf8')) as { version: string }

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

describe('-h, -v and --version --json', () => {
  it('-h is --help, for the root and for a command', async () => {
    const [short, long] = await Promise.all([runCli(['-h']), runCli(['--help'])])
    expect(short.code).toBe(0)
    expect(short.stdout).toBe(long.stdout)
    const [commandShort, commandLong] = await Promise.all([runCli(['runs:list', '-h']), runCli(['runs:list', '--help'])])
    expect(commandShort.code).toBe(0)
    expect(commandShort.stdout).toContain('USAGE')
    expect(commandShort.stdout).toBe(commandLong.stdout)
  })

  it('-v is --version', async () => {
    const [short, long] = await Promise.all([runCli(['-v']), runCli(['--version'])])
    expect(short.code).toBe(0)
    expect(short.stdout).toMatch(new RegExp(`^pipeweave/${pkg.version.replace(/\./g, '\\.')} `))
    expect(short.stdout).toBe(long.stdout)
  })

  it('--version --json (and -v --json) print { version, node, platform }', async () => {
    for (const flag of ['--version', '-v']) {
      const result = await runCli([flag, '--json'])
      expect({ flag, code: result.code, stderr: result.stderr }).toEqual({ flag, code: 0, stderr: '' })
      expect(json(result)).toEqual({ version: pkg.version, node: process.versions.node, platform: `${process.platform}-${process.arch}` })
    }
  })
})
