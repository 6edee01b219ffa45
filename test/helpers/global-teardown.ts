import * as fs from 'node:fs'
import type { EmbeddedHandle } from '../../src/db/embedded'

export default async function globalTeardown(): Promise<void> {
  const state = (globalThis as Record<string, unknown>).__pipeweaveTestServer as { handle: EmbeddedHandle; home: string } | undefined
  if (!state) return
  await state.handle.release({ stop: 'always' })
  fs.rmSync(state.home, { recursive: true, force: true })
}
