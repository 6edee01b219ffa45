import { listServices, type ServiceInfo } from '../../api/services'
import { BaseCommand } from '../../base-command'

export default class ServicesList extends BaseCommand<typeof ServicesList, { services: ServiceInfo[] }> {
  static summary = 'List registered services and their tasks.'
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
    this.out.table(['Service', 'Version', 'Base URL', 'Task', 'Code', 'Timeout', 'Retries', 'Concurrency', 'Priority'],
      result.services.flatMap((s) => (s.tasks.length === 0 ? [[s.id, s.version, s.baseUrl, '', '', '', '', '', '']] :
        s.tasks.map((t) => [s.id, s.version, s.baseUrl, t.id, `v${t.codeVersion}`, `${t.timeout}s`, `${t.retries} (${t.retryBackoff})`,
          t.concurrency === 0 ? 'unlimited' : t.concurrency, t.priority]))))
  }
}
