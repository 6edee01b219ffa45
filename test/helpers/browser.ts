/**
 * A real browser for the dashboard's tests (SPEC §8): Debian's chromium driven by playwright-core,
 * which downloads nothing. Files that need it use describeWithBrowser: without /usr/bin/chromium
 * they skip loudly, and under CI=true they fail (.ci/run installs it). Every browser a test
 * launches is closed by the test; the leak check closes (and fails) one left open.
 */
import { type Browser, type Page, chromium } from 'playwright-core'
import { currentTest, registerLeakCheck } from './leaks'
import { describeWithRealPart } from './real-parts'

export const CHROMIUM = '/usr/bin/chromium'

export function describeWithBrowser(testFile: string): jest.Describe {
  return describeWithRealPart(testFile, { program: CHROMIUM, install: 'apt-get install -y chromium', requiredInCi: true })
}

interface Open {
  browser: Browser
  startedIn: string | undefined
}

const open = new Set<Open>()

export async function launchBrowser(): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
  const entry: Open = { browser, startedIn: currentTest() }
  open.add(entry)
  browser.on('disconnected', () => open.delete(entry))
  return browser
}

registerLeakCheck(async (scope) => {
  const left = [...open].filter((e) => 'file' in scope || e.startedIn === scope.test)
  if (left.length === 0) return undefined
  await Promise.all(left.map((e) => e.browser.close().catch(() => undefined)))
  return { kind: ['browser', 'browsers'], action: 'the leak check closed it', items: left.map(() => 'chromium') }
})

/**
 * What the page reports as an error: console errors (a refused resource, a CSP violation, a
 * script error) and uncaught exceptions. The list fills as the page lives.
 */
export function consoleErrors(page: Page): string[] {
  const errors: string[] = []
  page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()) })
  page.on('pageerror', (error) => errors.push(String(error)))
  return errors
}
