/**
 * The front door (SPEC §0): `pipeweave --help` lists every command, every command's --help has at
 * least one example, `--version` prints the version. Commands come from the committed
 * oclif.manifest.json, so a new command is covered without touching this file.
 */
import * as fs from 'node:fs'
import * as path from 'node:path'
import { runCli } from './helpers/cli'

const ROOT = path.resolve(__dirname, '..')
const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'oclif.manifest.json'), 'utf8')) as {
  version: string
  commands: Record<string, { id: string; aliases: string[]; examples?: unknown[]; hidden?: boolean }>
}
const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }
const ids = Object.keys(manifest.commands).sort()

/** Run many short commands a few at a time (two cores). */
async function inBatches<T, R>(items: T[], size: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = []
  for (let i = 0; i < items.length; i += size) results.push(...await Promise.all(items.slice(i, i + size).map(fn)))
  return results
}

describe('the front door', () => {
  it('the manifest is the one of this version and lists every command file', () => {
    expect(manifest.version).toBe(pkg.version)
    const files = (dir: string, prefix: string[] = []): string[] => fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory()
      ? files(path.join(dir, e.name), [...prefix, e.name])
      : e.name.endsWith('.ts') ? [[...prefix, e.name.replace(/\.ts$/, '')].join(':')] : []))
    expect(ids).toEqual(files(path.join(ROOT, 'src', 'commands')).sort())
  })

  it('pipeweave --help lists every command', async () => {
    const result = await runCli(['--help'])
    expect(result.code).toBe(0)
    const listed = new Set([...result.stdout.matchAll(/^ {2}(\S+) {2,}/gm)].map((m) => m[1]))
    for (const id of ids.filter((i) => !manifest.commands[i].hidden)) expect({ id, listed: listed.has(id) }).toEqual({ id, listed: true })
  })

  it('every command\'s --help shows at least one example of that command', async () => {
    const aliases = ids.flatMap((id) => manifest.commands[id].aliases.map((alias) => ({ id, alias })))
    const targets = [...ids.map((id) => ({ id, alias: id })), ...aliases]
    const results = await inBatches(targets, 4, async ({ id, alias }) => ({ id, alias, result: await runCli([alias, '--help']) }))
    for (const { id, alias, result } of results) {
      expect({ alias, code: result.code }).toEqual({ alias, code: 0 })
      const examples = result.stdout.slice(result.stdout.indexOf('\nEXAMPLES\n'))
      expect({ alias, hasExamples: result.stdout.includes('\nEXAMPLES\n') }).toEqual({ alias, hasExamples: true })
      // An example runs the command itself (after any environment assignments).
      const lines = [...examples.matchAll(/^\s+\$ (.*)$/gm)].map((m) => m[1])
      const runsItself = lines.some((l) => [id, alias].some((name) => new RegExp(`(^|\\s)pipeweave ${name}(\\s|$)`).test(l)))
      expect({ alias, runsItself }).toEqual({ alias, runsItself: true })
      expect(result.stdout).not.toMatch(/<%=/) // templates rendered
    }
  })

  it('--version prints the version', async () => {
    const result = await runCli(['--version'])
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(new RegExp(`^pipeweave/${pkg.version.replace(/\./g, '\\.')} `))
  })
})
