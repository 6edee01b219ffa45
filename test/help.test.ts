/**
 * The front door (SPEC §0): `pipeweave --help` lists every command, every command's --help has at
 * least one example, `--version` prints the version. Commands come from the committed
 * oclif.manifest.json, so a new command is covered without touching this file.
 */
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { BIN, cleanEnv, runCli } from './helpers/cli'
import { track } from './helpers/processes'

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

  /** Lines of a DESCRIPTION section that end before the width although the next word would fit (hard line breaks). */
  function ragged(help: string, width: number): string[] {
    const start = help.indexOf('\nDESCRIPTION\n')
    if (start === -1) return []
    const section = help.slice(start + 13).split(/\n(?=[A-Z])/)[0].split('\n')
    return section.filter((line, i) => {
      const next = section[i + 1]
      if (!line.trim() || !next?.trim()) return false
      return [...line].length + 1 + [...next.trim().split(' ')[0]].length <= width
    })
  }
  const widest = (text: string) => Math.max(...text.split(/\r?\n/).map((l) => [...l].length))

  it('--help wraps to 80 columns off a terminal: summaries, descriptions as paragraphs, flags', async () => {
    const root = await runCli(['--help'])
    expect(widest(root.stdout)).toBeLessThanOrEqual(80)
    const results = await inBatches(ids, 4, async (id) => ({ id, help: (await runCli([id, '--help'])).stdout }))
    for (const { id, help } of results) {
      expect({ id, widest: widest(help) <= 80, ragged: ragged(help, 80) }).toEqual({ id, widest: true, ragged: [] })
    }
  })

  it('--help wraps to the width of the terminal it is shown on', async () => {
    // script(1) gives the CLI a pseudo-terminal, 60 columns wide.
    const command = `stty cols 60 rows 50; "${process.execPath}" "${BIN}" maintenance:request --help`
    const out = await new Promise<string>((resolve) => {
      const child = track(spawn('script', ['-qec', command, '/dev/null'], { env: cleanEnv({ TERM: 'xterm' }), stdio: ['ignore', 'pipe', 'pipe'] }))
      let text = ''
      child.stdout.on('data', (chunk) => { text += chunk })
      child.on('close', () => resolve(text))
    })
    const plain = out.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
    expect(plain).toContain('USAGE')
    expect(widest(plain)).toBeLessThanOrEqual(60)
    expect(ragged(plain.replace(/\r/g, ''), 60)).toEqual([])
  })

  it('connection flags name their environment twins, and are not oclif env flags (SPEC §1 order)', async () => {
    const help = (await runCli(['db:ping', '--help'])).stdout
    const section = help.slice(help.indexOf('CONNECTION FLAGS'), help.indexOf('GLOBAL FLAGS')).replace(/\s+/g, ' ')
    const twins: Record<string, string[]> = {
      url: ['DATABASE_URL'], host: ['DB_HOST', 'PGHOST'], port: ['DB_PORT', 'PGPORT'], database: ['DB_NAME', 'PGDATABASE'],
      user: ['DB_USER', 'PGUSER'], password: ['DB_PASS', 'PGPASSWORD'], ssl: ['DB_SSL', 'PGSSLMODE'],
    }
    for (const [flag, names] of Object.entries(twins)) {
      const entry = new RegExp(`--${flag}[= ].*?(?= --|$)`).exec(section)?.[0] ?? ''
      for (const name of names) expect({ flag, names: entry.includes(name) }).toEqual({ flag, names: true })
    }
    // oclif's env: option would read DB_HOST into --host, ahead of DATABASE_URL.
    for (const id of ids) {
      const flags = (manifest.commands[id] as unknown as { flags: Record<string, { env?: string }> }).flags
      for (const flag of Object.keys(twins)) if (flags[flag]) expect({ id, flag, env: flags[flag].env }).toEqual({ id, flag, env: undefined })
    }
  })

  it('--version prints the version', async () => {
    const result = await runCli(['--version'])
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(new RegExp(`^pipeweave/${pkg.version.replace(/\./g, '\\.')} `))
  })
})
