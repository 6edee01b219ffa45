/**
 * `pipeweave dashboard` as a real process for the dashboard's tests: started on a free port, its
 * address read from its JSON log line. Tracked like every CLI child (helpers/processes.ts): a test
 * stops what it starts.
 */
import { type RunningCli, startCli } from './cli'
import type { LogLine } from './orchestrator'
import { waitFor } from './wait'

export interface DashboardProcess extends RunningCli {
  url: string
  port: number
  logs(): LogLine[]
  stop(): Promise<void>
}

/** Lines of a JSON log (stderr). */
export function jsonLines(text: string): LogLine[] {
  return text.split('\n').filter((l) => l.startsWith('{')).map((l) => { try { return JSON.parse(l) as LogLine } catch { return undefined } })
    .filter((l): l is LogLine => l !== undefined)
}

export async function startDashboard(env: Record<string, string | undefined>, args: string[] = []): Promise<DashboardProcess> {
  const cli = startCli(['dashboard', '--port', '0', '--log-format', 'json', ...args], { env, timeoutMs: 600_000 })
  let exited = false
  void cli.done.then(() => { exited = true })
  const line = await waitFor(() => {
    if (exited) throw new Error(`dashboard exited: ${cli.stderr()}`)
    return jsonLines(cli.stderr()).find((l) => l.event === 'dashboard')
  }, { timeoutMs: 30_000, what: 'the dashboard to listen' })
  const port = Number(line.port)
  return {
    ...cli,
    port,
    url: `http://127.0.0.1:${port}`,
    logs: () => jsonLines(cli.stderr()),
    stop: async () => {
      if (!exited) cli.child.kill('SIGTERM')
      const result = await cli.done
      if (result.code !== 0) throw new Error(`dashboard exited ${result.code}: ${result.stderr.slice(-2000)}`)
    },
  }
}
