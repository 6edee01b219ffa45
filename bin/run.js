#!/usr/bin/env node
// The pipeweave executable. Keep this file tiny: every millisecond here is paid by every command.
if (!require('node:fs').existsSync(require('node:path').join(__dirname, '..', 'dist', 'commands'))) {
  console.error('error: pipeweave is not built: run `npm ci` (or `npm run build`) in ' + require('node:path').resolve(__dirname, '..'))
  process.exit(2)
}
require('@oclif/core').execute({ dir: __dirname })
