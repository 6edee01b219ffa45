/**
 * The suite's jest environment: node, plus the leak check of helpers/leaks.ts at the two moments
 * a hook cannot reach. jest-circus runs the afterEach hooks of a block in the order they were
 * declared, and those of a setupFilesAfterEnv file are declared first: a leak check there would run
 * before the test file's own afterEach (and afterAll) and blame what those hooks stop as they
 * should. Here it runs once a test is done (`test_done`: every afterEach has run; an error added
 * to the test fails it) and once the file is done (`run_finish`: every afterAll has run; an error
 * fails the file, as a failing afterAll does).
 */
import type { Circus } from '@jest/types'
import NodeEnvironment from 'jest-environment-node'
import { BRIDGE_KEY, type LeakBridge, TEST_KEY } from './leaks'

/** The test's full name as expect.getState().currentTestName gives it: describe names, then its own. */
function testName(test: Circus.TestEntry): string {
  const names = [test.name]
  for (let block = test.parent; block.parent; block = block.parent) names.unshift(block.name)
  return names.join(' ')
}

export default class LeakCheckEnvironment extends NodeEnvironment {
  private get slots(): Record<string, unknown> {
    return this.global as unknown as Record<string, unknown>
  }

  /** Set by helpers/leaks.ts in the test's own module registry, once a registry was loaded. */
  private get bridge(): LeakBridge | undefined {
    return this.slots[BRIDGE_KEY] as LeakBridge | undefined
  }

  async handleTestEvent(event: Circus.Event, state: Circus.State): Promise<void> {
    switch (event.name) {
      case 'test_start':
        this.slots[TEST_KEY] = testName(event.test)
        break
      case 'test_done': {
        const name = testName(event.test)
        try {
          const leak = await this.bridge?.check({ test: name }).catch((error: Error) => error)
          if (leak) event.test.errors.push(leak)
        } finally {
          delete this.slots[TEST_KEY]
        }
        break
      }
      case 'run_finish': {
        const leak = await this.bridge?.check({ file: true }).catch((error: Error) => error)
        if (leak) state.unhandledErrors.push(leak)
        break
      }
    }
  }
}
