#!/usr/bin/env node
// The pipeweave executable. Keep this file tiny: every millisecond here is paid by every command.
require('@oclif/core').execute({ dir: __dirname })
