/**
 * The lock file beside the data directory that serialises start, presence and stop across every
 * pipeweave process sharing the embedded server. A lock left by a dead process is broken.
 */
import { spawn, spawnSync } from 'node:child_process'
import * as crypto from 'node:crypto'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { ConnectionError } from '../../errors'

const LOCK_WAIT_MS = 120_000

export async function withLock<T>(stateDir: string, fn: () => Promise<T>): Promise<T> {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o755 })
  const lockFile = path.join(stateDir, 'embedded.lock')
  const mine = `${process.pid}\n`
  const deadline = Date.now() + LOCK_WAIT_MS
  let holder = ''
  while (!tryLock(lockFile, mine)) {
    let content: string
    try {
      content = fs.readFileSync(lockFile, 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue // released just now
      throw error
    }
    holder = content.trim()
    const pid = Number(holder)
    // A lock is written whole (tryLock), so an unreadable one is not half-written: it is left by
    // something else, and stale once it has sat there for a while.
    const stale = Number.isInteger(pid) && pid > 0 ? !isAlive(pid) : ageMs(lockFile) > 5000
    if (stale) {
      breakStaleLock(lockFile, content) // left by a killed process
      continue
    }
    if (Date.now() > deadline) {
      throw new ConnectionError('EMBEDDED_LOCKED', `the embedded PostgreSQL at ${stateDir} is locked by process ${holder || '(unknown)'}`, {
        hint: `if no pipeweave process is running, remove ${lockFile}`,
      })
    }
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  try {
    return await fn()
  } finally {
    // Ours only: never remove a lock another process holds.
    try {
      if (fs.readFileSync(lockFile, 'utf8') === mine) fs.rmSync(lockFile, { force: true })
    } catch { /* already gone */ }
  }
}

/** Create the lock whole, atomically: written aside, then hard-linked into place (EEXIST: held). */
function tryLock(lockFile: string, content: string): boolean {
  const aside = `${lockFile}.${process.pid}.${crypto.randomBytes(4).toString('hex')}`
  fs.writeFileSync(aside, content)
  try {
    fs.linkSync(aside, lockFile)
    return true
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw error
  } finally {
    fs.rmSync(aside, { force: true })
  }
}

/**
 * Remove a stale lock without removing a fresh one that replaced it meanwhile (another process
 * may have broken the same stale lock and taken the lock a moment ago): move it aside atomically,
 * and put it back if what was moved is not the stale lock that was seen.
 */
function breakStaleLock(lockFile: string, seen: string): void {
  const aside = `${lockFile}.stale.${process.pid}.${crypto.randomBytes(4).toString('hex')}`
  try {
    fs.renameSync(lockFile, aside)
  } catch {
    return // gone already
  }
  try {
    if (fs.readFileSync(aside, 'utf8') !== seen) fs.linkSync(aside, lockFile)
  } catch { /* a third process holds the lock now: it is theirs */ }
  fs.rmSync(aside, { force: true })
}

function ageMs(file: string): number {
  try {
    return Date.now() - fs.statSync(file).mtimeMs
  } catch {
    return 0
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

