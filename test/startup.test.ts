/**
 * Start-up shortcuts (src/startup.ts, src/db/pg.ts): each must give the answer the skipped work
 * would have given, and leave nothing behind.
 */
import { execFileSync } from 'node:child_process'
import * as path from 'node:path'
import { answerWslProbe, mayBeWsl } from '../src/startup'

type OsModule = { getPlatform: () => Promise<string> }

describe('answerWslProbe', () => {
  const osFile = path.join(path.dirname(require.resolve('@oclif/core/execute')), 'util', 'os.js')

  it("answers oclif's platform question as oclif itself does", async () => {
    // oclif's own answer, from a plain Node process (its dynamic import needs no jest flags there).
    const expected = execFileSync(process.execPath, ['-e', `require(${JSON.stringify(osFile)}).getPlatform().then((p) => process.stdout.write(p))`], { encoding: 'utf8' })
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const os = require(osFile) as OsModule
    const original = os.getPlatform
    try {
      answerWslProbe()
      expect(os.getPlatform).not.toBe(original)
      await expect(os.getPlatform()).resolves.toBe(expected)
      if (!mayBeWsl()) expect(expected).toBe(process.platform)
    } finally {
      os.getPlatform = original
    }
  })
})

describe('src/db/pg', () => {
  it('loads pg without leaving a navigator behind', () => {
    const before = (globalThis as { navigator?: unknown }).navigator
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const pg = require('../src/db/pg') as typeof import('../src/db/pg')
    expect(typeof pg.Client).toBe('function')
    expect(typeof pg.Pool).toBe('function')
    expect(pg.escapeIdentifier('a"b')).toBe('"a""b"')
    expect((globalThis as { navigator?: unknown }).navigator).toBe(before)
  })
})
