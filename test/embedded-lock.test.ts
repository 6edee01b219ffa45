/**
 * The lock file that serialises starting, joining and stopping the embedded server (src/db/
 * embedded.ts withLock): mutual exclusion between real processes, and stale locks broken without
 * breaking fresh ones.
 */
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { withLock } from '../src/db/embedded'
import { track } from './helpers/processes'
import { waitFor } from './helpers/wait'

const DIST_EMBEDDED = path.resolve(__dirname, '..', 'dist', 'db', 'embedded.js')

/** A process that takes the lock `rounds` times and checks nobody else is inside with it. */
function contender(dir: string, rounds: number): Promise<number | null> {
  const script = `
    const fs = require('fs'), path = require('path')
    const { withLock } = require(${JSON.stringify(DIST_EMBEDDED)})
    const inside = path.join(${JSON.stringify(dir)}, 'inside')
    ;(async () => {
      for (let i = 0; i < ${rounds}; i++) {
        await withLock(${JSON.stringify(dir)}, async () => {
          fs.writeFileSync(inside, String(process.pid), { flag: 'wx' }) // throws if someone is inside
          await new Promise((r) => setTimeout(r, 1))
          fs.rmSync(inside)
        })
      }
    })().then(() => process.exit(0), (e) => { console.error(e.message); process.exit(1) })`
  const child = track(spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'inherit'] }), 'a lock contender (node -e)')
  return new Promise((resolve) => child.on('close', (code) => resolve(code)))
}

describe('the embedded lock', () => {
  let dir: string
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeweave-lock-')) })
  afterEach(() => { fs.rmSync(dir, { recursive: true, force: true }) })

  it('lets one process in at a time among eight contending, and never wedges', async () => {
    const codes = await Promise.all(Array.from({ length: 8 }, () => contender(dir, 40)))
    expect(codes).toEqual(Array(8).fill(0))
    expect(fs.readdirSync(dir)).toEqual([]) // no lock and no leftover files
  })

  it('breaks a lock whose holder is dead', async () => {
    const dead = track(spawn(process.execPath, ['-e', '0']))
    await new Promise((resolve) => dead.on('close', resolve))
    fs.writeFileSync(path.join(dir, 'embedded.lock'), `${dead.pid}\n`)
    await expect(withLock(dir, async () => 'in')).resolves.toBe('in')
    expect(fs.readdirSync(dir)).toEqual([])
  })

  it('breaks an unreadable lock once it is old, but waits for a fresh one', async () => {
    const lock = path.join(dir, 'embedded.lock')
    fs.writeFileSync(lock, '')
    const old = new Date(Date.now() - 60_000)
    fs.utimesSync(lock, old, old)
    await expect(withLock(dir, async () => 'in')).resolves.toBe('in')

    // A live holder's lock is waited for, and released by its holder only. Not a sleep: each try
    // to take the lock writes a file beside it (tryLock), seen here through inotify, so the test
    // waits until the waiter has tried and been refused three times while the holder lives.
    fs.writeFileSync(lock, `${process.ppid}\n`)
    const tries = new Set<string>()
    const watcher = fs.watch(dir, (_event, name) => {
      if (name && /^embedded\.lock\.\d+\.[0-9a-f]{8}$/.test(name)) tries.add(name)
    })
    try {
      let entered = false
      const waiting = withLock(dir, async () => { entered = true })
      await waitFor(() => entered || tries.size >= 3, { what: 'three refused tries to take the lock' })
      expect(entered).toBe(false)
      expect(fs.readFileSync(lock, 'utf8')).toBe(`${process.ppid}\n`)
      fs.rmSync(lock)
      await waiting
      expect(entered).toBe(true)
    } finally {
      watcher.close()
    }
  })
})
