/** What api/ and orchestrator/ log through: they never write to stdout themselves. */
export type LogFields = Record<string, unknown>

export interface Logger {
  debug(message: string, fields?: LogFields): void
  info(message: string, fields?: LogFields): void
  warn(message: string, fields?: LogFields): void
  error(message: string, fields?: LogFields): void
}

const noop = () => undefined
export const silentLogger: Logger = { debug: noop, info: noop, warn: noop, error: noop }
