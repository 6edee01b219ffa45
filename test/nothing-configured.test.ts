/**
 * SPEC §1's read-only rule: with nothing configured and no embedded data directory yet, commands
 * that only read do not create a cluster (`cd / && pipeweave db:status` made a 47 MB one in
 * /.pipeweave): exit 3 saying that nothing is configured. NODE_ENV=production's refusal (exit 2)
 * wins; db:validate still checks the files; db:init creates the cluster as before.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { json, runCli } from './helpers/cli'

const homes: string[] = []

/** A directory that does not exist yet, in a scratch parent. */
function absentHome(): string {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-nothing-'))
  fs.chmodSync(parent, 0o755)
  homes.push(parent)
  return path.join(parent, 'home')
}

afterAll(() => {
  for (const home of homes) fs.rmSync(home, { recursive: true, force: true })
})

const READ_ONLY: string[][] = [
  ['db:status'], ['db:ping'], ['maintenance:status'], ['runs:list'], ['runs:show', '00000000-0000-0000-0000-000000000000'],
  ['dlq:list'], ['services:list'], ['dashboard', '--port', '0'],
]

describe('read-only commands with nothing configured and no embedded database yet', () => {
  it.each(READ_ONLY.map((args) => [args.join(' '), args] as const))('%s: exit 3, says nothing is configured, creates nothing', async (_name, args) => {
    const home = absentHome()
    const human = await runCli(args, { env: { PIPEWEAVE_HOME: home } })
    expect({ code: human.code, stdout: human.stdout }).toEqual({ code: 3, stdout: '' })
    expect(human.stderr.trim().split('\n')).toHaveLength(1)
    expect(human.stderr).toMatch(/^error: no database is configured/)
    expect(human.stderr).toContain('DATABASE_URL')
    expect(human.stderr).toContain('db:init')
    expect(fs.existsSync(home)).toBe(false)

    const machine = await runCli([...args, '--json'], { env: { PIPEWEAVE_HOME: home } })
    expect(machine.code).toBe(3)
    expect(json<{ error: { code: string } }>(machine).error.code).toBe('NOTHING_CONFIGURED')
    expect(fs.existsSync(home)).toBe(false)
  })

  it('in a directory without .pipeweave (cd / && pipeweave db:status): no ./.pipeweave appears', async () => {
    const cwd = path.dirname(absentHome())
    const result = await runCli(['db:status'], { cwd, env: { PIPEWEAVE_HOME: undefined } })
    expect(result.code).toBe(3)
    expect(fs.existsSync(path.join(cwd, '.pipeweave'))).toBe(false)
  })

  it('with NODE_ENV=production the embedded refusal (exit 2) wins', async () => {
    const home = absentHome()
    const result = await runCli(['db:status', '--json'], { env: { PIPEWEAVE_HOME: home, NODE_ENV: 'production' } })
    expect(result.code).toBe(2)
    expect(json<{ error: { code: string } }>(result).error.code).toBe('NO_DATABASE_CONFIGURED')
    expect(fs.existsSync(home)).toBe(false)
  })

  it('db:validate still checks the files (exit 0), says no database is configured, and creates nothing', async () => {
    const home = absentHome()
    const result = await runCli(['db:validate'], { env: { PIPEWEAVE_HOME: home } })
    expect(result.code).toBe(0)
    expect(result.stdout).toContain('Migrations are valid.')
    expect(result.stderr).toMatch(/no database is configured/)
    expect(fs.existsSync(home)).toBe(false)
  })

  it('db:init creates the embedded database as before; read-only commands then use it', async () => {
    const home = absentHome()
    const init = await runCli(['db:init'], { env: { PIPEWEAVE_HOME: home } })
    expect(init.code).toBe(0)
    expect(fs.existsSync(path.join(home, 'pgdata', 'PG_VERSION'))).toBe(true)
    const status = await runCli(['db:status', '--json'], { env: { PIPEWEAVE_HOME: home } })
    expect(status.code).toBe(0)
    expect(json<{ initialized: boolean }>(status).initialized).toBe(true)
    expect(status.stderr).toContain(`using embedded PostgreSQL at ${path.join(home, 'pgdata')}`)
  })
})
