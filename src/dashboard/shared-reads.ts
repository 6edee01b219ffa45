/**
 * One read per key per refresh interval, shared by every viewer (SPEC §8): the overview is read
 * once per interval however many browsers show it, and so is each page of runs, each run and each
 * page of the DLQ. A read that fails is shared too until the interval ends, so that a database in
 * trouble is asked once per interval, not once per viewer.
 */
export class SharedReads {
  private readonly entries = new Map<string, { at: number; value: Promise<unknown> }>()
  /** Reads started (each a round of statements on the dashboard's pool). */
  loads = 0

  constructor(private readonly refreshMs: number, private readonly maxEntries = 200) {}

  get<T>(key: string, load: (seq: number) => Promise<T>): Promise<T> {
    const now = Date.now()
    const entry = this.entries.get(key)
    if (entry && now - entry.at < this.refreshMs) return entry.value as Promise<T>
    this.loads += 1
    const value = load(this.loads)
    value.catch(() => undefined) // a failed read is answered from here; never an unhandled rejection
    this.entries.delete(key)
    this.entries.set(key, { at: now, value })
    // Oldest first (insertion order): a map of the pages viewed lately, not of every cursor ever.
    while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value as string)
    return value
  }

  /** Forget every read (after an action: the next view shows its effect at once). */
  clear(): void {
    this.entries.clear()
  }
}
