#!/usr/bin/env node
// The pipeweave executable. Keep this file tiny: every millisecond here is paid by every command.
if (!require('node:fs').existsSync(require('node:path').join(__dirname, '..', 'dist', 'commands'))) {
  console.error('error: pipeweave is not built: run `npm ci` (or `npm run build`) in ' + require('node:path').resolve(__dirname, '..'))
  process.exit(2)
}
// - '@oclif/core/execute', not the '@oclif/core' index: the index loads all of oclif and semver first.
// - The root and its package.json are handed over, so oclif need not search the disk for them.
require('../dist/startup').answerWslProbe()
// - With DEBUG set, oclif's debug lines go through a logger that masks passwords (they print argv).
// --version and -v are the `version` command, so that `--version --json` prints JSON (SPEC §2).
const args = process.argv.slice(2)
if (args[0] === '--version' || args[0] === '-v') args[0] = 'version'
require('@oclif/core/execute').execute({
  args,
  loadOptions: {
    root: require('node:path').join(__dirname, '..'), pjson: require('../package.json'),
    ...(process.env.DEBUG ? { logger: require('../dist/debug-log').maskingLogger() } : {}),
  },
})
