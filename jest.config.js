/** @type {import('jest').Config} */
module.exports = {
  // node, plus the leak check (test/helpers/leaks.ts): a test that leaves a child process or an
  // in-process orchestrator running fails, naming it. An environment, not setupFilesAfterEnv hooks:
  // those would run before the test file's own afterEach/afterAll (leak-environment.ts says why).
  testEnvironment: '<rootDir>/test/helpers/leak-environment.ts',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { diagnostics: false }] },
  globalSetup: '<rootDir>/test/helpers/global-setup.ts',
  globalTeardown: '<rootDir>/test/helpers/global-teardown.ts',
  testTimeout: 120000,
  // Two cores: more workers only queue on the CPU and stretch every timing-sensitive wait.
  maxWorkers: process.env.PIPEWEAVE_TEST_WORKERS ? Number(process.env.PIPEWEAVE_TEST_WORKERS) : 2,
}
