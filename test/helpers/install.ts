/**
 * A throw-away "install" of the built CLI with a migrations/ directory of the test's choosing.
 * The CLI finds its migrations relative to its own location (SPEC §3), so testing altered or
 * failing migration files means running another copy: bin/, dist/, package.json and the manifest
 * are copied, node_modules is linked.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

const ROOT = path.resolve(__dirname, '..', '..')
export const INITIAL_SCHEMA = fs.readFileSync(path.join(ROOT, 'migrations', '001_initial_schema.sql'), 'utf8')

export interface Install {
  dir: string
  /** The copy's executable, for runCli(…, { bin }). */
  bin: string
  migrationsDir: string
  /** Replace the migration files with these (file name → SQL). */
  setMigrations(files: Record<string, string>): void
  remove(): void
}

/** A copy of the built CLI whose migrations/ holds exactly `files` (file name → SQL). */
export function createInstall(files: Record<string, string>): Install {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-install-'))
  fs.chmodSync(dir, 0o755)
  for (const entry of ['bin', 'dist', 'package.json', 'oclif.manifest.json']) {
    fs.cpSync(path.join(ROOT, entry), path.join(dir, entry), { recursive: true })
  }
  fs.symlinkSync(fs.realpathSync(path.join(ROOT, 'node_modules')), path.join(dir, 'node_modules'))
  const migrationsDir = path.join(dir, 'migrations')
  const setMigrations = (next: Record<string, string>) => {
    fs.rmSync(migrationsDir, { recursive: true, force: true })
    fs.mkdirSync(migrationsDir, { mode: 0o755 })
    for (const [name, sql] of Object.entries(next)) fs.writeFileSync(path.join(migrationsDir, name), sql)
  }
  setMigrations(files)
  return {
    dir,
    bin: path.join(dir, 'bin', 'run.js'),
    migrationsDir,
    setMigrations,
    remove: () => fs.rmSync(dir, { recursive: true, force: true }),
  }
}
