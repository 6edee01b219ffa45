/**
 * Password masking from the CLI (SPEC §1, issue 11 items 1 and 2): a password is masked where it
 * stands as a password, never searched for in other text. With the password `running` the `Mode:`
 * line still says `running` (deploy scripts grep it), `completed` stays in the Status column, a
 * password like the current year leaves timestamps whole, and a user named like the password
 * stays visible. `DEBUG=*` (oclif prints argv) never shows a password either.
 */
import * as crypto from 'node:crypto'
import { Pool, escapeIdentifier } from 'pg'
import { json, runCli } from './helpers/cli'
import { adminUrl, type TestDatabase } from './helpers/db'
import { unusedPort } from './helpers/fake-server'
import { addTask, complete, startRun } from './helpers/maintenance-fixtures'
import { migratedTestDatabase } from './helpers/surface'

describe('masking by position, not by search (SPEC §1)', () => {
  let db: TestDatabase
  const suffix = crypto.randomBytes(4).toString('hex')
  const roles: string[] = []
  const admin = () => new Pool({ connectionString: adminUrl(), max: 1 })

  /** A login role with this password; `name` defaults to a fresh one. */
  async function role(password: string, name = `pw_mask_${suffix}_${roles.length}`): Promise<string> {
    const pool = admin()
    try {
      // Superuser: the commands below read and write every pipeweave table of the test database.
      await pool.query(`CREATE ROLE ${escapeIdentifier(name)} LOGIN SUPERUSER PASSWORD '${password.replace(/'/g, "''")}'`)
    } finally {
      await pool.end()
    }
    roles.push(name)
    return name
  }

  /** DATABASE_URL for the test database as `user` with `password`. */
  function urlAs(user: string, password: string): string {
    const url = new URL(db.url)
    url.username = encodeURIComponent(user)
    url.password = encodeURIComponent(password)
    return url.toString()
  }

  beforeAll(async () => {
    db = await migratedTestDatabase('pw_mask')
    await addTask(db.pool, 'mask.task')
    await complete(db.pool, await startRun(db.pool, 'mask.task'))
  })

  afterAll(async () => {
    await db.drop()
    const pool = admin()
    try {
      for (const name of roles) await pool.query(`DROP ROLE IF EXISTS ${escapeIdentifier(name)}`)
    } finally {
      await pool.end()
    }
  })

  it('password "running": maintenance:status still prints `Mode: running`', async () => {
    const env = { DATABASE_URL: urlAs(await role('running'), 'running') }
    const human = await runCli(['maintenance:status'], { env })
    expect(human.code).toBe(0)
    expect(human.stdout).toMatch(/^Mode: running$/m)
    expect(human.stdout).not.toContain('****')
    const machine = await runCli(['maintenance:status', '--json'], { env })
    expect(json(machine).mode).toBe('running')
  })

  it('password "completed": the Status column of runs:list still says completed', async () => {
    const env = { DATABASE_URL: urlAs(await role('completed'), 'completed') }
    const human = await runCli(['runs:list'], { env })
    expect(human.code).toBe(0)
    expect(human.stdout).toMatch(/\bcompleted\b/)
    expect(human.stdout).not.toContain('****')
    const machine = await runCli(['runs:list', '--json'], { env })
    expect(json<{ runs: Array<{ status: string }> }>(machine).runs.map((r) => r.status)).toContain('completed')
  })

  it('a password that is the current year leaves timestamps whole', async () => {
    const year = String(new Date().getUTCFullYear())
    const env = { DATABASE_URL: urlAs(await role(year), year) }
    const status = await runCli(['maintenance:status'], { env })
    expect(status.code).toBe(0)
    expect(status.stdout).toMatch(new RegExp(`^Mode changed at: ${year}-\\d\\d-\\d\\dT`, 'm'))
    const runs = await runCli(['runs:list', '--json'], { env })
    const createdAt = json<{ runs: Array<{ createdAt: string }> }>(runs).runs[0].createdAt
    expect(createdAt).toMatch(new RegExp(`^${year}-`))
    for (const result of [status, runs]) expect(result.stdout).not.toContain('****')
  })

  it('a user named like its password stays visible; only the password is masked', async () => {
    const name = `pw_same_${suffix}`
    await role(name, name)
    const url = new URL(db.url)
    for (const result of [
      await runCli(['db:ping', '--json'], { env: { DATABASE_URL: urlAs(name, name) } }),
      await runCli(['db:ping', '--json', '--host', url.hostname, '--port', url.port, '--database', db.name, '--user', name, '--password', name]),
    ]) {
      expect(result.code).toBe(0)
      expect(json(result).target).toBe(`postgres://${name}:****@${url.hostname}:${url.port}/${db.name}`)
    }
  })

  describe('DEBUG=* (oclif prints argv)', () => {
    const secret = `Dbg-${crypto.randomBytes(4).toString('hex')}-s3cr3t`

    it.each([
      ['--url', (port: number) => ['--url', `postgres://u:${secret}@127.0.0.1:${port}/db`]],
      ['--url=', (port: number) => [`--url=postgres://u:${secret}@127.0.0.1:${port}/db`]],
      ['--url with an unencoded / in the password', (port: number) => ['--url', `postgres://u:${secret}/x@127.0.0.1:${port}/db`]],
      ['--password', (port: number) => ['--host', '127.0.0.1', '--port', String(port), '--user', 'u', '--password', secret]],
      ['--password=', (port: number) => ['--host', '127.0.0.1', '--port', String(port), '--user', 'u', `--password=${secret}`]],
    ] as Array<[string, (port: number) => string[]]>)('never shows a password given by %s', async (_how, args) => {
      const result = await runCli(['db:ping', ...args(await unusedPort())], { env: { DEBUG: '*' } })
      expect([2, 3]).toContain(result.code) // 2: the URL with a bare / does not parse
      expect(result.stderr).toMatch(/oclif:config runCommand db:ping/) // oclif's debug lines are there
      expect(result.stdout + result.stderr).not.toContain(secret)
      expect(result.stdout + result.stderr).not.toContain(secret.slice(0, 12))
    })
  })
})
