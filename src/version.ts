import * as path from 'node:path'

/** The package root: migrations/ and package.json are found from here, never from the cwd. */
export const PACKAGE_ROOT = path.resolve(__dirname, '..')

// eslint-disable-next-line @typescript-eslint/no-require-imports
export const VERSION: string = require(path.join(PACKAGE_ROOT, 'package.json')).version

export const MIGRATIONS_DIR = path.join(PACKAGE_ROOT, 'migrations')
