/**
 * Links from error hints to docs/troubleshooting.md (shipped in the package). The errors are
 * thrown in many modules; the link is added in one place, the base command's catch(), from the
 * error's stable code (and, for a schema behind the binary, the command that met it).
 */
export const TROUBLESHOOTING_GUIDE = 'docs/troubleshooting.md'

const DRAIN = 'a-drain-that-does-not-finish'
const CHECKSUM = 'a-checksum-mismatch'
const CANNOT_LEAVE_MAINTENANCE = 'maintenance-mode-you-cannot-leave'
const EMBEDDED_LEFT = 'an-embedded-server-left-by-a-killed-process'

const BY_CODE: Record<string, string> = {
  DRAIN_TIMEOUT: DRAIN,
  TASKS_RUNNING: DRAIN,
  CHECKSUM_MISMATCH: CHECKSUM,
  EMBEDDED_LOCKED: EMBEDDED_LEFT,
  EMBEDDED_START_FAILED: EMBEDDED_LEFT,
  EMBEDDED_STOP_FAILED: EMBEDDED_LEFT,
}

/** Codes that keep a maintenance:* command (maintenance:exit above all) from changing the mode. */
const SCHEMA_NOT_READY = new Set(['MIGRATIONS_PENDING', 'SCHEMA_AHEAD'])

/** `docs/troubleshooting.md#section` for an error code met by a command, or undefined. */
export function troubleshootingLink(code: string, commandId?: string): string | undefined {
  const anchor = Object.hasOwn(BY_CODE, code) ? BY_CODE[code]
    : SCHEMA_NOT_READY.has(code) && commandId?.startsWith('maintenance:') ? CANNOT_LEAVE_MAINTENANCE
      : undefined
  return anchor && `${TROUBLESHOOTING_GUIDE}#${anchor}`
}
