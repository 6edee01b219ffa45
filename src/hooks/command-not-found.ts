/**
 * oclif's command_not_found hook: an unknown command is bad usage (exit 2) like an unknown flag,
 * suggests the nearest command, and with --json prints the error document like every other
 * failure (SPEC §2). Loaded only when oclif finds no command, so it costs nothing otherwise.
 */
import type { Hooks } from '@oclif/core/hooks'
import { ExitError } from '@oclif/core/errors'
import { Output } from '../output'
import { nearest } from '../suggest'

type CommandNotFound = (this: unknown, options: Hooks['command_not_found']['options'] & { config: import('@oclif/core/config').Config }) => Promise<unknown>

/** --json among the arguments (before a `--`), as oclif's own jsonEnabled() reads it. */
export function asksForJson(argv: string[]): boolean {
  const end = argv.indexOf('--')
  return (end === -1 ? argv : argv.slice(0, end)).includes('--json')
}

const hook: CommandNotFound = async function ({ id, argv = [], config }) {
  const bin = config.bin
  const visible = config.commands.filter((c) => !c.hidden).flatMap((c) => [c.id, ...c.aliases])
  const typed = id.startsWith('-') ? id : id.replace(/ /g, ':')
  const match = typed.startsWith('-') ? undefined : nearest(typed, visible)
  const listed = `\`${bin} --help\` lists every command`
  const out = new Output()
  out.failure({
    exitCode: 2,
    code: typed.startsWith('-') ? 'BAD_USAGE' : 'UNKNOWN_COMMAND',
    message: typed.startsWith('-') ? `unknown flag ${typed}` : `unknown command "${typed}"`,
    hint: match ? `did you mean \`${bin} ${match}\`? (${listed})` : listed,
  }, asksForJson(argv))
  // Printed here; ExitError tells oclif's handler to exit with the code and print nothing.
  throw new ExitError(2)
}

export default hook
