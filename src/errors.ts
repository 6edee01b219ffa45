/**
 * Typed errors, one mapping. The API throws these and never calls process.exit; only the base
 * command's catch() turns them into an exit code (SPEC §2) and a one-line message.
 */

export const ExitCode = {
  OK: 0,
  INTERNAL: 1,
  USAGE: 2,
  CONNECTION: 3,
  REFUSED: 4,
  TIMEOUT: 5,
} as const
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode]

export interface PipeweaveErrorOptions {
  /** What to do about it, shown after the message. */
  hint?: string
  cause?: unknown
}

export abstract class PipeweaveError extends Error {
  abstract readonly exitCode: ExitCode
  /** Stable UPPER_SNAKE code for --json output. */
  readonly code: string
  readonly hint?: string

  constructor(code: string, message: string, options: PipeweaveErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = new.target.name
    this.code = code
    this.hint = options.hint
  }
}

/** Exit 2: bad usage or bad input. */
export class UsageError extends PipeweaveError {
  readonly exitCode = ExitCode.USAGE
}

/** Exit 3: database unreachable, authentication failed, TLS failure, database missing. */
export class ConnectionError extends PipeweaveError {
  readonly exitCode = ExitCode.CONNECTION
}

/** Exit 4: refused by state (maintenance mode, running tasks, invalid migrations, a guard). */
export class RefusedError extends PipeweaveError {
  readonly exitCode = ExitCode.REFUSED
}

/** Exit 4, thrown by enqueueTask when the mode is not `running`. */
export class MaintenanceModeError extends RefusedError {
  readonly mode: string
  constructor(mode: string) {
    super('MAINTENANCE_MODE', `new task runs are refused: the mode is ${mode}`, {
      hint: 'wait for `pipeweave maintenance:exit` (maintenance:status shows the mode)',
    })
    this.mode = mode
  }
}

/** Exit 5: timed out waiting. */
export class WaitTimeoutError extends PipeweaveError {
  readonly exitCode = ExitCode.TIMEOUT
}

/** Exit 1: a failure pipeweave did not foresee. */
export class InternalError extends PipeweaveError {
  readonly exitCode = ExitCode.INTERNAL
}

/** The first line of a message: what a one-line error shows of a multi-line one. */
export function firstLine(text: string): string {
  return text.trim().split('\n')[0]
}
