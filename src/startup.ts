/**
 * Run by bin/run.js before oclif starts: start-up work of @oclif/core that has a cheaper, equal
 * answer here. Everything in this file must fail safe: if oclif's internals are not what it
 * expects (another @oclif/core version), it changes nothing.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

/**
 * @oclif/core 4 asks at every start whether it runs under WSL (Config.load → util/os getPlatform)
 * through `import('wsl-utils')`. That first dynamic import starts Node's ESM loader and loads six
 * ES modules: about 15 ms of every command (bench/cold-start.js). It can only be WSL on Linux and
 * when one of is-wsl's own signs is there; without them the answer is `process.platform` at once,
 * and with any of them we leave the question to oclif.
 */
export function answerWslProbe(): void {
  let osModule: { getPlatform?: () => Promise<string> }
  try {
    // util/os is not in @oclif/core's exports map: reach it by path, beside the execute module.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    osModule = require(path.join(path.dirname(require.resolve('@oclif/core/execute')), 'util', 'os.js'))
  } catch {
    return
  }
  const original = osModule.getPlatform
  if (typeof original !== 'function' || original.length !== 0) return
  osModule.getPlatform = () => (mayBeWsl() ? original() : Promise.resolve(process.platform))
}

/** is-wsl's tests (kernel release, /proc/version, WSL paths), without its container check. */
export function mayBeWsl(): boolean {
  if (process.platform !== 'linux') return false
  if (os.release().toLowerCase().includes('microsoft')) return true
  try {
    if (fs.readFileSync('/proc/version', 'utf8').toLowerCase().includes('microsoft')) return true
  } catch { /* no /proc: not WSL by this sign */ }
  return fs.existsSync('/proc/sys/fs/binfmt_misc/WSLInterop') || fs.existsSync('/run/WSL')
}
