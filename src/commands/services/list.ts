import { formatRateLimit, type Breaker } from '../../api/flow-control'
import { listServices, type ServiceInfo, type TaskInfo } from '../../api/services'
import { BaseCommand } from '../../base-command'

export default class ServicesList extends BaseCommand<typeof ServicesList, { services: ServiceInfo[] }> {
  static summary = 'List registered services and their tasks, with their pauses, breakers and rate limits.'
  static description = `One row per task. Paused: "task" (tasks:pause TASK), "service" (tasks:pause --service), or both.
Breaker: closed, off (breaker: false in the manifest), "open until <time>" (no run of the service starts
before then), half-open (one probe run at a time) or expired (open past its maximum time: runs use
attempts again). Rate limit: the limit in force as N/PERIOD, "(runtime)" when tasks:limit set it.
Below the table, who paused what, when and why.`
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'Services and tasks as tables.' },
    { command: '<%= config.bin %> <%= command.id %> --json', description: '{ "services": [...] }' },
  ]

  protected async execute(): Promise<{ services: ServiceInfo[] }> {
    return { services: await listServices(await this.migratedDatabase()) }
  }

  protected render(result: { services: ServiceInfo[] }): void {
    if (result.services.length === 0) {
      this.out.line(`No services registered. Register one with \`${this.config.bin} services:register FILE\`.`)
      return
    }
    this.out.table(['Service', 'Version', 'Base URL', 'Breaker', 'Task', 'Code', 'Timeout', 'Retries', 'Concurrency', 'Rate limit', 'Priority', 'Paused'],
      result.services.flatMap((s) => (s.tasks.length === 0 ? [[s.id, s.version, s.baseUrl, breaker(s.breaker), '', '', '', '', '', '', '', s.paused ? 'service' : '']] :
        s.tasks.map((t) => [s.id, s.version, s.baseUrl, breaker(s.breaker), t.id, `v${t.codeVersion}`, `${t.timeout}s`, `${t.retries} (${t.retryBackoff})`,
          t.concurrency === 0 ? 'unlimited' : t.concurrency, rate(t), t.priority, paused(s, t)]))))
    const pauses = result.services.flatMap((s) => [
      ...(s.paused ? [{ what: `service ${s.id} (all its tasks)`, pause: s.paused }] : []),
      ...s.tasks.flatMap((t) => (t.paused ? [{ what: `task ${t.id}`, pause: t.paused }] : [])),
    ])
    for (const { what, pause } of pauses) {
      this.out.line(`Paused: ${what} since ${pause.at} by ${pause.by}${pause.reason ? `: ${pause.reason}` : ''}`)
    }
  }
}

function breaker(b: Breaker): string {
  switch (b.state) {
    case 'open': return `open until ${b.openUntil}`
    case 'half-open': return 'half-open (probing)'
    case 'expired': return `expired (open since ${b.openedAt})`
    case 'closed': return b.failures > 0 ? `closed (${b.failures} connect failure${b.failures === 1 ? '' : 's'})` : 'closed'
    default: return b.state
  }
}

function rate(t: TaskInfo): string {
  if (t.rateLimitSource === 'runtime') return `${formatRateLimit(t.effectiveRateLimit)} (runtime)`
  return t.effectiveRateLimit ? formatRateLimit(t.effectiveRateLimit) : ''
}

function paused(s: ServiceInfo, t: TaskInfo): string {
  return [t.paused ? 'task' : '', s.paused ? 'service' : ''].filter(Boolean).join(', ')
}
