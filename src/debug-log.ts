/**
 * oclif's debug lines (`DEBUG=*`) with passwords masked (SPEC §1). oclif prints argv in several of
 * them (`process.argv`, `runCommand db:ping [ '--url', 'postgres://u:secret@…' ]`), before any
 * command code runs. bin/run.js hands this logger to oclif (its `loadOptions.logger`) only when
 * DEBUG is set, so the start-up of every other run does not pay for it.
 */
import type { Logger as OclifLogger } from '@oclif/core/interfaces'
import type { Debugger } from 'debug'
import { redact, redactArgv } from './redact'

type CreateDebug = (namespace: string) => Debugger

function loadDebug(): CreateDebug {
  // The `debug` package oclif itself uses (a dependency of @oclif/core, not of pipeweave).
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(require.resolve('debug', { paths: [require.resolve('@oclif/core')] })) as CreateDebug
}

/** A value as a debug line may print it, with every password that stands as one masked. */
function masked(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redact(value)
  if (Array.isArray(value)) {
    return value.every((v) => typeof v === 'string') ? redactArgv(value) : value.map((v) => masked(v, depth + 1))
  }
  if (depth < 4 && value !== null && typeof value === 'object') {
    const proto = Object.getPrototypeOf(value)
    if (proto === Object.prototype || proto === null) {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, masked(v, depth + 1)]))
    }
  }
  return value
}

export function maskingLogger(namespace = 'oclif', createDebug: CreateDebug = loadDebug()): OclifLogger {
  const debug = createDebug(namespace)
  const log = (formatter: unknown, ...args: unknown[]) => {
    if (!debug.enabled) return
    debug(masked(formatter), ...args.map((arg) => masked(arg)))
  }
  return {
    child: (child: string, delimiter?: string) => maskingLogger(`${namespace}${delimiter ?? ':'}${child}`, createDebug),
    debug: log,
    error: (formatter: unknown, ...args: unknown[]) => maskingLogger(`${namespace}:error`, createDebug).debug(formatter, ...args),
    info: log,
    namespace,
    trace: log,
    warn: log,
  } as OclifLogger
}
