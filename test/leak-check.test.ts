/**
 * The suite's leak check (helpers/leaks.ts, leak-environment.ts): a test that leaves a process it
 * started running fails, naming it, and the process is killed; what a test or the file's own
 * afterEach stops is no leak; what a beforeAll leaves fails the file. Shown on a fixture run by a
 * jest of its own, with the suite's environment.
 */
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { track } from './helpers/processes'

const ROOT = path.resolve(__dirname, '..')

interface JestJson {
  numFailedTests: number
  numPassedTests: number
  testResults: Array<{ message: string; assertionResults: Array<{ title: string; status: string; failureMessages: string[] }> }>
}

let result: JestJson
let pids: Map<string, number>

beforeAll(async () => {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-leaks-'))
  const pidFile = path.join(scratch, 'pids')
  const output = path.join(scratch, 'result.json')
  const config = {
    rootDir: ROOT,
    roots: ['<rootDir>/test/fixtures/leaks'],
    testMatch: ['**/*.fixture.ts'],
    testEnvironment: '<rootDir>/test/helpers/leak-environment.ts',
    transform: { '^.+\\.ts$': ['ts-jest', { diagnostics: false }] },
  }
  const child = track(spawn(process.execPath, [require.resolve('jest/bin/jest'), '--config', JSON.stringify(config), '--json', '--outputFile', output, '--ci'], {
    cwd: ROOT, env: { ...process.env, LEAK_FIXTURE_PIDS: pidFile }, stdio: 'ignore',
  }), 'jest (the leak fixture)')
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  expect(code).toBe(1)
  result = JSON.parse(fs.readFileSync(output, 'utf8')) as JestJson
  pids = new Map(fs.readFileSync(pidFile, 'utf8').trim().split('\n').map((line) => {
    const [tag, pid] = line.split(' ')
    return [tag, Number(pid)] as [string, number]
  }))
  fs.rmSync(scratch, { recursive: true, force: true })
})

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

function outcome(title: string) {
  const found = result.testResults[0].assertionResults.find((a) => a.title === title)
  if (!found) throw new Error(`no test "${title}" in the fixture's results`)
  return found
}

it('fails the test that leaves a process running, naming it, and kills it', () => {
  const leaky = outcome('leaves a process running')
  expect(leaky.status).toBe('failed')
  expect(leaky.failureMessages.join('\n')).toContain('this test left 1 process running: idler left-by-a-test')
  expect(alive(pids.get('left-by-a-test')!)).toBe(false)
})

it('passes a test that stops what it starts, in the test or in the file\'s afterEach', () => {
  expect(outcome('stops the process it starts').status).toBe('passed')
  expect(outcome('stops what the test started: not a leak').status).toBe('passed')
  expect(result.numPassedTests).toBe(2)
})

it('fails the file for what a beforeAll left running, and kills it', () => {
  expect(result.testResults[0].message).toContain('this file (in beforeAll/afterAll hooks, outside any test) left 1 process running: idler from-before-all')
  expect(alive(pids.get('from-before-all')!)).toBe(false)
})
