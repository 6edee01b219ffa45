import { createTestDatabase, type TestDatabase } from './helpers/db'
import { json, runCli } from './helpers/cli'

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
})
