/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { diagnostics: false }] },
  globalSetup: '<rootDir>/test/helpers/global-setup.ts',
  globalTeardown: '<rootDir>/test/helpers/global-teardown.ts',
  testTimeout: 120000,
  // Two cores: more workers only queue on the CPU and stretch every timing-sensitive wait.
  maxWorkers: process.env.PIPEWEAVE_TEST_WORKERS ? Number(process.env.PIPEWEAVE_TEST_WORKERS) : 2,
}
