import * as fs from 'node:fs'
import type { EmbeddedHandle } from '../../src/db/embedded'
import { SKIPS_FILE_VARIABLE, readSkippedParts } from './real-parts'

export default async function globalTeardown(): Promise<void> {
  reportSkippedParts()
  const state = (globalThis as Record<string, unknown>).__pipeweaveTestServer as { handle: EmbeddedHandle; home: string } | undefined
  if (!state) return
  await state.handle.release({ stop: 'always' })
  fs.rmSync(state.home, { recursive: true, force: true })
}

/** The last lines of the run: every test file that skipped itself for want of a real part. */
function reportSkippedParts(): void {
  const notes = process.env[SKIPS_FILE_VARIABLE]
  const dir = (globalThis as Record<string, unknown>).__pipeweaveTestSkips as string | undefined
  const skipped = notes ? readSkippedParts(notes) : []
  if (dir) fs.rmSync(dir, { recursive: true, force: true })
  if (skipped.length === 0) return
  const rule = '!'.repeat(100)
  process.stderr.write([
    '', rule,
    `SKIPPED ${skipped.length} test file(s): a real part they test against is missing on this machine. They did NOT run:`,
    ...skipped.map((s) => `  ${s.file}: ${s.reason}`),
    rule, '',
  ].join('\n'))
}
