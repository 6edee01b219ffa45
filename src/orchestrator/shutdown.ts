/**
 * Shutdown and the signal policy (SPEC §5).
 *
 * The stop sequence: no new claims; the runs in flight get up to the shutdown timeout to finish;
 * then their dispatches are aborted. A run whose request was written may have reached its worker,
 * so that attempt is spent: it comes back as a new attempt (SHUTDOWN_ABORTED, due at once). A run
 * never sent goes back keeping its attempt. Results still waiting to be written are written (a
 * forced stop gives up on a database that does not answer), everything still held is handed
 * back, and the orchestrator deregisters.
 *
 * The signals: the first SIGTERM or SIGINT stops gracefully; a second SIGINT stops at once (still
 * handing runs back) and the process exits 130. The parent going away (npm's `sh -c` under `npx`
 * is killed and `run` is orphaned) is a graceful stop too.
 */
import type { Logger } from '../logger'
import type { Orchestrator, Parts } from './orchestrator'
import { delay } from './wakeup'

export async function shutDown(parts: Parts): Promise<void> {
  const { log, runner, writer, liveness, watch, forced } = parts
  // No tick is decided from now on (a tick's transaction in flight commits or rolls back first).
  await parts.scheduler?.stop()
  await parts.loopDone
  // The shutdown timeout covers everything held: dispatches awaiting a worker, and answers waiting
  // for the database (an outage). Past it, dispatches are aborted and writes that fail give up:
  // a platform kills what outlives its grace period anyway, and crash recovery returns those runs.
  if (runner.size > 0) {
    log.info(`stopping: no new claims; waiting up to ${parts.shutdownTimeoutMs} ms for ${runner.dispatching} run(s) in flight`, { event: 'stopping', inFlight: runner.dispatching })
    const deadline = Date.now() + parts.shutdownTimeoutMs
    while (runner.size > 0 && Date.now() < deadline && !forced.signal.aborted) {
      const waitingFor = runner.inFlight().map((r) => `${r.taskId} ${r.id}`)
      if (waitingFor.length > 0) {
        log.info(`waiting for ${waitingFor.length} run(s): ${waitingFor.slice(0, 5).join(', ')}${waitingFor.length > 5 ? ', …' : ''}`, { event: 'stopping', inFlight: waitingFor.length })
      } else {
        log.info(`waiting for the results of ${runner.size} run(s) to be written`, { event: 'stopping', inFlight: 0 })
      }
      await Promise.race([runner.settled(), delay(Math.min(5000, Math.max(0, deadline - Date.now())), forced.signal)])
    }
    if (runner.size > 0) {
      log.warn(`shutdown timeout: aborting ${runner.dispatching} run(s) in flight (those already sent come back as a new attempt, the others keep theirs) and giving up on results the database has not taken`, { event: 'stopping' })
      runner.abortAll()
      forced.abort()
    }
  }
  // Every run settles: aborted ones record SHUTDOWN_ABORTED or are left to the hand-back below,
  // results are written (or given up by a forced stop during an outage).
  await runner.settled()
  await writer.flushed()
  for (const timer of parts.timers) clearInterval(timer)
  await watch.stopped()
  if (!parts.registered) {
    // start() was refused (pending migrations, schema ahead, no database): nothing to undo.
    parts.dispatcher.close()
    return
  }
  // Everything we still hold goes back: runs never sent, results a forced stop could not write,
  // claims whose answer was lost.
  try {
    const released = await parts.repo.release([])
    for (const r of released) {
      log.info(`run ${r.id} handed back to pending (attempt ${r.attempt} kept)`, {
        event: 'run', runId: r.id, taskId: r.taskId, attempt: r.attempt, status: 'pending', durationMs: null,
      })
    }
  } catch (error) {
    log.error(`could not hand back the runs in flight (${(error as Error).message}); crash recovery will return them once this orchestrator's heartbeat is stale`)
  }
  await parts.listener?.stop()
  await liveness.stop()
  try {
    await parts.repo.deregister()
  } catch (error) {
    log.warn(`could not deregister (${(error as Error).message}); the row expires with its heartbeat`)
  }
  parts.dispatcher.close()
  log.info('orchestrator stopped', { event: 'stopped' })
}

export interface SignalPolicy {
  /** The first signal, also when it came before the orchestrator existed. */
  readonly requested?: NodeJS.Signals | 'parent-exit'
  /** Hand over the started orchestrator (signals before now are acted on now). */
  attach(orchestrator: Orchestrator): void
  /** Exit code a forced stop asks for (130 after a second SIGINT). */
  readonly exitCode?: number
  dispose(): void
}

/**
 * Install the handlers of `run`: from the first moment, so that a Ctrl-C while the embedded
 * database starts (initdb takes seconds) still ends with the server stopped.
 */
export function installSignalPolicy(log: Logger, options: { parentCheckMs?: number } = {}): SignalPolicy {
  let orchestrator: Orchestrator | undefined
  let requested: SignalPolicy['requested']
  let exitCode: number | undefined
  let interrupts = 0
  const first = (why: NodeJS.Signals | 'parent-exit', message: string) => {
    requested = why
    log.info(`${message}: stopping${orchestrator ? '' : ' once start-up is done'} (a second Ctrl-C stops at once)`, { event: 'signal', signal: why })
    if (orchestrator) void orchestrator.stop()
  }
  const onSignal = (signal: NodeJS.Signals) => {
    interrupts += 1
    if (interrupts === 1) return first(signal, `${signal} received`)
    if (signal !== 'SIGINT' && interrupts <= 2) return
    exitCode = 130
    if (orchestrator) {
      log.warn(`${signal} again: stopping at once; runs in flight are aborted and handed back`, { event: 'signal', signal })
      void orchestrator.stop({ force: true })
    } else {
      // Still starting (waiting on the database): nothing to hand back, leave now.
      log.warn(`${signal} again: exiting before start-up finished`, { event: 'signal', signal })
      process.exit(130)
    }
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  // Under `npx`, npm signals the `sh -c` it started, not us: when our parent goes away, we are
  // reparented, and stop as if told to.
  const parent = process.ppid
  const watcher = setInterval(() => {
    if (requested === undefined && process.ppid !== parent) first('parent-exit', `the parent process (${parent}) went away`)
  }, options.parentCheckMs ?? 1000)
  watcher.unref()
  return {
    get requested() { return requested },
    get exitCode() { return exitCode },
    attach(o) {
      orchestrator = o
      if (requested !== undefined) void o.stop()
      if (exitCode !== undefined) void o.stop({ force: true })
    },
    dispose() {
      process.off('SIGTERM', onSignal)
      process.off('SIGINT', onSignal)
      clearInterval(watcher)
    },
  }
}
