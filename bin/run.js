#!/usr/bin/env node
// The pipeweave executable. Keep this file tiny: every millisecond here is paid by every command.
// '@oclif/core/execute', not the '@oclif/core' index: the index loads all of oclif and semver first.
require('../dist/startup').answerWslProbe()
require('@oclif/core/execute').execute({ dir: __dirname })
