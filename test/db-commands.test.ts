import * as crypto from 'node:crypto'
import { Pool, escapeIdentifier } from 'pg'
import { adminUrl, createTestDatabase, urlFor, type TestDatabase } from './helpers/db'
import { json, runCli } from './helpers/cli'
import { LATEST_VERSION, MIGRATIONS } from './helpers/migrations'

describe('db:init and db:status', () => {
  let db: TestDatabase
  beforeAll(async () => { db = await createTestDatabase() })
  afterAll(async () => { await db.drop() })

  it('reports an empty database as not initialized with every migration pending, then initializes it', async () => {
    const before = await runCli(['db:status', '--json'], { env: db.env })
    expect(before.code).toBe(0)
    const status = json<{ initialized: boolean; currentVersion: number | null; applied: unknown[]; pending: Array<{ id: number; name: string }> }>(before)
    expect(status).toEqual({ initialized: false, currentVersion: null, applied: [], pending: expect.any(Array) })
    expect(status.pending[0]).toEqual({ id: 1, name: 'initial_schema' })

    const pendingExit = await runCli(['db:status', '--exit-code'], { env: db.env })
    expect(pendingExit.code).toBe(4)

    const init = await runCli(['db:init'], { env: db.env })
    expect(init.code).toBe(0)

    const after = json<{ initialized: boolean; currentVersion: number; applied: Array<Record<string, unknown>>; pending: unknown[] }>(
      await runCli(['db:status', '--json'], { env: db.env }))
    expect(after.initialized).toBe(true)
    expect(after.pending).toEqual([])
    expect(Object.keys(after).sort()).toEqual(['applied', 'currentVersion', 'initialized', 'pending'])
    expect(Object.keys(after.applied[0]).sort()).toEqual(['appliedAt', 'durationMs', 'id', 'name'])
    expect(new Date(after.applied[0].appliedAt as string).getTime()).toBeGreaterThan(Date.now() - 60_000)
    expect(after.applied[0].durationMs).toEqual(expect.any(Number))

    expect((await runCli(['db:status', '--exit-code'], { env: db.env })).code).toBe(0)
  })

  it('draws plain tables without colour when the output is not a terminal, NO_COLOR or not', async () => {
    const result = await runCli(['db:status'], { env: { ...db.env, NO_COLOR: undefined, FORCE_COLOR: undefined } })
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/^Initialized: (yes|no)\nCurrent version: (\d+|none)\n/)
    expect(result.stdout).toMatch(/^\+----\+/m)
    expect(result.stdout + result.stderr).not.toMatch(/\x1b\[/)
  })
})

describe('db:init', () => {
  let db: TestDatabase
  beforeAll(async () => { db = await createTestDatabase() })
  afterAll(async () => { await db.drop() })

  it('is idempotent', async () => {
    const first = await runCli(['db:init', '--json'], { env: db.env })
    expect(first.code).toBe(0)
    expect(json(first)).toEqual({ database: db.name, created: false, applied: MIGRATIONS.map((m) => ({ id: m.id, name: m.name, durationMs: expect.any(Number) })), currentVersion: LATEST_VERSION })
    const again = await runCli(['db:init'], { env: db.env })
    expect(again.code).toBe(0)
    expect(again.stdout).toBe(`Already initialized; the schema is at version ${LATEST_VERSION}\n`)
  })
})

describe('db:init on a missing database', () => {
  it('creates it, or exits 3 saying so when the user may not create databases', async () => {
    const role = `pw_nocreate_${crypto.randomBytes(4).toString('hex')}`
    const name = `pw_init_${crypto.randomBytes(4).toString('hex')}`
    const admin = new Pool({ connectionString: adminUrl(), max: 1 })
    try {
      await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD 'nocreate-pw' NOCREATEDB`)
      const url = new URL(urlFor(name))
      url.username = role
      url.password = 'nocreate-pw'
      const refused = await runCli(['db:init', '--json', '--url', url.toString()])
      expect(refused.code).toBe(3)
      expect(json(refused)).toEqual({
        error: { code: 'DATABASE_MISSING', message: expect.stringContaining(`"${name}" does not exist`), hint: expect.stringContaining('CREATE DATABASE') },
        exitCode: 3,
      })

      const created = await runCli(['db:init'], { env: { DATABASE_URL: urlFor(name) } })
      expect(created.code).toBe(0)
      expect(created.stdout).toBe(`Created database ${name}\nApplied ${MIGRATIONS.length} migration(s); the schema is at version ${LATEST_VERSION}\n`)
    } finally {
      await admin.query(`DROP DATABASE IF EXISTS ${escapeIdentifier(name)} WITH (FORCE)`)
      await admin.query(`DROP ROLE IF EXISTS ${role}`)
      await admin.end()
    }
  })
})

describe('db:ping (alias db:test)', () => {
  let db: TestDatabase
  beforeAll(async () => { db = await createTestDatabase() })
  afterAll(async () => { await db.drop() })

  it('reports the server version, the round trip, the masked target and no TLS on the local server', async () => {
    const url = new URL(db.url)
    const masked = `postgres://${url.username}:****@${url.hostname}:${url.port}/${db.name}`
    for (const command of ['db:ping', 'db:test']) {
      const result = await runCli([command, '--json'], { env: db.env })
      expect(result.code).toBe(0)
      expect(json(result)).toEqual({ target: masked, embedded: false, serverVersion: expect.stringMatching(/^\d+(\.\d+)?/), roundTripMs: expect.any(Number), tls: false })
      expect(json<{ roundTripMs: number }>(result).roundTripMs).toBeGreaterThanOrEqual(0)
    }
    const human = await runCli(['db:ping'], { env: db.env })
    expect(human.code).toBe(0)
    expect(human.stdout.split('\n')).toEqual([
      `Connected to ${masked}`,
      expect.stringMatching(/^Server version: PostgreSQL \d+/),
      expect.stringMatching(/^Round trip: [\d.]+ ms$/),
      'TLS: no',
      '',
    ])
    expect(human.stdout + human.stderr).not.toContain(decodeURIComponent(url.password))
  })
})

describe('help and usage', () => {
  const COMMANDS = ['db:init', 'db:migrate', 'db:status', 'db:validate', 'db:cleanup', 'db:reset', 'db:ping']

  it('lists every db command in --help, and prints the version', async () => {
    const help = await runCli(['--help'])
    expect(help.code).toBe(0)
    const topic = await runCli(['db', '--help'])
    for (const command of COMMANDS) expect(topic.stdout).toContain(command)
    const version = await runCli(['--version'])
    expect(version.code).toBe(0)
    expect(version.stdout).toContain(`pipeweave/${require('../package.json').version}`)
  })

  it.each([...COMMANDS, 'db:test'])('%s --help has an example, and an unknown flag exits 2', async (command) => {
    const help = await runCli([command, '--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toMatch(/\nEXAMPLES\n/)
    expect(help.stdout).toMatch(new RegExp(`\\$ (\\S+=\\S+ )?pipeweave ${command}(\\s|$)`, 'm'))

    const bad = await runCli([command, '--no-such-flag', '--json'])
    expect(bad.code).toBe(2)
    expect(json(bad)).toEqual({ error: { code: 'BAD_USAGE', message: expect.stringContaining('--no-such-flag'), hint: expect.stringContaining('--help` lists its flags') }, exitCode: 2 })
  })
})
