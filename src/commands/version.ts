import { BaseCommand } from '../base-command'

export interface VersionInfo {
  version: string
  /** Node.js, as process.versions.node (no "v"). */
  node: string
  /** `<platform>-<arch>`, as in the text form. */
  platform: string
}

/** `pipeweave --version` and `-v` run this command (bin/run.js), so that `--json` works there too. */
export default class Version extends BaseCommand<typeof Version, VersionInfo> {
  static summary = 'Print the version of pipeweave, Node.js and the platform (also --version, -v).'
  static examples = [
    { command: '<%= config.bin %> <%= command.id %>', description: 'pipeweave/0.1.0 linux-x64 node-v20.20.0' },
    { command: '<%= config.bin %> --version --json', description: '{ "version", "node", "platform" }' },
  ]
  // Nothing to connect to: no connection flags.
  static baseFlags = {} as typeof BaseCommand.baseFlags

  protected async execute(): Promise<VersionInfo> {
    return { version: this.config.version, node: process.versions.node, platform: `${process.platform}-${process.arch}` }
  }

  protected render(): void {
    this.out.line(this.config.userAgent)
  }
}
