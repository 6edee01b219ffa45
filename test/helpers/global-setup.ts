/**
 * One PostgreSQL server per test run: PIPEWEAVE_TEST_DATABASE_URL when set (CI's PostgreSQL 15),
 * otherwise the embedded server, started here in a fresh directory of its own. Each test file
 * then creates its own database on it (helpers/db.ts). Also the file where test files note that
 * they skipped for want of a real part (helpers/real-parts.ts; global-teardown.ts lists them).
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { acquireEmbeddedServer } from '../../src/db/embedded'
import { SKIPS_FILE_VARIABLE } from './real-parts'

export default async function globalSetup(): Promise<void> {
  const notes = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-test-skips-'))
  process.env[SKIPS_FILE_VARIABLE] = path.join(notes, 'skipped.jsonl')
  ;(globalThis as Record<string, unknown>).__pipeweaveTestSkips = notes

  if (process.env.PIPEWEAVE_TEST_DATABASE_URL) {
    process.env.PIPEWEAVE_TEST_ADMIN_URL = process.env.PIPEWEAVE_TEST_DATABASE_URL
    return
  }
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-test-server-'))
  fs.chmodSync(home, 0o755)
  const handle = await acquireEmbeddedServer({
    env: { PIPEWEAVE_HOME: home },
    cwd: home,
    applicationName: 'pipeweave-test-harness',
    serverSettings: { max_connections: 400, fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' },
  })
  const { server } = handle
  process.env.PIPEWEAVE_TEST_ADMIN_URL =
    `postgres://${server.user}:${encodeURIComponent(server.password)}@${server.host}:${server.port}/postgres`
  ;(globalThis as Record<string, unknown>).__pipeweaveTestServer = { handle, home }
}
