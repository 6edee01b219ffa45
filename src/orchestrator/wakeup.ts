/**
 * A wait that other parts of the loop can cut short (pg-boss worker.ts): new work was notified,
 * a slot freed, or stop() was called. A notify() that comes before wait() is not lost.
 */
export class Wakeup {
  private pending = false
  private wake?: () => void

  notify(): void {
    this.pending = true
    this.wake?.()
  }

  /** Resolves on notify() (true), or after `ms` (false). */
  wait(ms: number): Promise<boolean> {
    if (this.pending) {
      this.pending = false
      return Promise.resolve(true)
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => done(false), ms)
      const self = this
      function done(notified: boolean) {
        clearTimeout(timer)
        self.wake = undefined
        self.pending = false
        resolve(notified)
      }
      this.wake = () => done(true)
    })
  }
}

export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve()
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve() }, ms)
    const onAbort = () => { clearTimeout(timer); resolve() }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}
