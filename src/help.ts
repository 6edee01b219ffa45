/**
 * The help class (package.json oclif.helpClass), loaded only for --help: help that wraps to the
 * terminal (SPEC §2, issue 11 item 14). oclif wraps flags and sections, but prints a command's
 * summary line and the root description as they are, and keeps every line break of a
 * description, so a description written across several source lines came out ragged.
 */
import { Help } from '@oclif/core/help'
import type { Command } from '@oclif/core/command'

/** A description as paragraphs: single line breaks (source formatting) become spaces. */
export function reflow(text: string | undefined): string | undefined {
  if (!text) return text
  return text.split(/\n\s*\n/).map((paragraph) => paragraph.split('\n').map((l) => l.trim()).join(' ')).join('\n\n')
}

export default class PipeweaveHelp extends Help {
  private wrapSummary = false

  async showCommandHelp(command: Command.Loadable): Promise<void> {
    this.wrapSummary = true
    try {
      await super.showCommandHelp({ ...command, description: reflow(command.description) } as Command.Loadable)
    } finally {
      this.wrapSummary = false
    }
  }

  /** The first call in showCommandHelp is the line at the top: wrap it like the rest. */
  protected summary(c: Command.Loadable): string | undefined {
    const summary = super.summary(c)
    if (!this.wrapSummary || !summary) return summary
    this.wrapSummary = false
    return this.wrap(summary)
  }

  formatRoot(): string {
    const [first, ...rest] = super.formatRoot().split('\n')
    return [this.wrap(first), ...rest].join('\n')
  }
}
