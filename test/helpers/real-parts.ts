/**
 * Test files that need a real program of the machine (openssl for tls-server.test.ts, PgBouncer for
 * pgbouncer.test.ts). When the program is missing the file skips itself, loudly: a warning when it
 * loads, and again on the last lines of the whole run (global-teardown.ts lists every file that
 * skipped this way), so a skipped file never passes for a tested one. Under CI=true a part that CI
 * must test fails instead (.ci/run installs it).
 */
import * as fs from 'node:fs'
import * as path from 'node:path'

export interface RealPart {
  /** The program, by absolute path. */
  program: string
  /** How to get it, for the message (`apt-get install -y pgbouncer`). */
  install: string
  /** With CI=true, a missing program fails the file instead of skipping it. */
  requiredInCi?: boolean
}

/** Where test files note what they skipped: set by global-setup.ts, read by global-teardown.ts. */
export const SKIPS_FILE_VARIABLE = 'PIPEWEAVE_TEST_SKIPS_FILE'

export interface SkippedPart {
  file: string
  reason: string
}

/**
 * `describe` when the program is there; otherwise `describe.skip` (noted for the end of the run),
 * or under CI for a required part a `describe` whose one test fails saying what is missing.
 */
export function describeWithRealPart(testFile: string, part: RealPart): jest.Describe {
  if (fs.existsSync(part.program)) return describe
  const file = path.relative(path.resolve(__dirname, '..', '..'), testFile)
  const reason = `${part.program} is missing; install it with \`${part.install}\``
  if (part.requiredInCi && process.env.CI === 'true') {
    const failing = ((title: string) => describe(title, () => {
      it(`needs ${part.program} (CI=true: a missing real part fails the run)`, () => {
        throw new Error(`${reason} (.ci/run installs it)`)
      })
    })) as unknown as jest.Describe
    return failing
  }
  // eslint-disable-next-line no-console
  console.warn(`SKIPPED ${file}: ${reason}`)
  const notes = process.env[SKIPS_FILE_VARIABLE]
  if (notes) fs.appendFileSync(notes, `${JSON.stringify({ file, reason } satisfies SkippedPart)}\n`)
  return describe.skip
}

/** The notes of this run's skipped files (global-teardown.ts). */
export function readSkippedParts(notes: string): SkippedPart[] {
  if (!fs.existsSync(notes)) return []
  const seen = new Map<string, SkippedPart>()
  for (const line of fs.readFileSync(notes, 'utf8').split('\n')) {
    if (!line.trim()) continue
    const part = JSON.parse(line) as SkippedPart
    seen.set(part.file, part)
  }
  return [...seen.values()]
}
