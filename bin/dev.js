#!/usr/bin/env node
// Runs the CLI from the TypeScript sources (needs ts-node: `npx ts-node` is not a dependency).
require('ts-node').register({ project: require('node:path').join(__dirname, '..', 'tsconfig.json') })
require('@oclif/core').execute({ development: true, dir: __dirname }).catch(require('@oclif/core/handle'))
