#!/usr/bin/env node
// The pipeweave executable. Keep this file tiny: every millisecond here is paid by every command.
// - '@oclif/core/execute', not the '@oclif/core' index: the index loads all of oclif and semver first.
// - The root and its package.json are handed over, so oclif need not search the disk for them.
require('../dist/startup').answerWslProbe()
require('@oclif/core/execute').execute({
  loadOptions: { root: require('node:path').join(__dirname, '..'), pjson: require('../package.json') },
})
