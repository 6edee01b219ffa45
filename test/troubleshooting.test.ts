/**
 * docs/troubleshooting.md (issue 11 item 15): five situations, each with a command that diagnoses
 * it and one that fixes it; only commands and flags that exist; SQL that names the schema; linked
 * from the README and from the hints of the errors it helps with.
 */
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { troubleshootingLink } from '../src/troubleshooting'
import { json, runCli } from './helpers/cli'
import type { TestDatabase } from './helpers/db'
import { addTask, startRun } from './helpers/maintenance-fixtures'
import { migratedTestDatabase } from './helpers/surface'

const ROOT = path.resolve(__dirname, '..')
const GUIDE = fs.readFileSync(path.join(ROOT, 'docs', 'troubleshooting.md'), 'utf8')

/** GitHub's anchor for a heading. */
const slug = (heading: string) => heading.trim().toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-')

/** The sections of the guide: heading → body. */
function sections(): Map<string, string> {
  const parts = GUIDE.split(/^## /m).slice(1)
  return new Map(parts.map((part) => {
    const [heading, ...body] = part.split('\n')
    return [heading, body.join('\n')]
  }))
}

/** The fenced code blocks of a text, with their language. */
function codeBlocks(text: string): Array<{ lang: string; code: string }> {
  return [...text.matchAll(/^ *```(\w*)\n([\s\S]*?)^ *```/gm)].map((m) => ({ lang: m[1], code: m[2] }))
}

const anchors = () => new Set([...sections().keys()].map(slug))

describe('docs/troubleshooting.md', () => {
  it('has the five situations, each with a command that diagnoses it and a fix', () => {
    const found = sections()
    const wanted = [/drain/i, /checksum/i, /stuck in `running`/i, /maintenance/i, /embedded server left by a killed process/i]
    for (const pattern of wanted) {
      const heading = [...found.keys()].find((h) => pattern.test(h))
      expect({ pattern: String(pattern), heading }).toEqual({ pattern: String(pattern), heading: expect.any(String) })
      const body = found.get(heading!)!
      expect(body).toMatch(/^Diagnose:/m)
      expect(body).toMatch(/^(Fix:|What it means, and the fix:)/m)
      expect(codeBlocks(body).some((b) => /\bpipeweave \w+:\w+/.test(b.code))).toBe(true)
    }
  })

  it('uses only commands and flags that exist', () => {
    const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'oclif.manifest.json'), 'utf8')) as { commands: Record<string, { flags: Record<string, unknown>; aliases?: string[] }> }
    const flagsOf = (id: string) => manifest.commands[id] ?? Object.values(manifest.commands).find((c) => c.aliases?.includes(id))
    // Every `pipeweave <command> …` in a code block or in `inline code`.
    const uses = [
      ...codeBlocks(GUIDE).flatMap((b) => b.code.split('\n')),
      ...[...GUIDE.replace(/^ *```[\s\S]*?^ *```/gm, '').matchAll(/`([^`\n]+)`/g)].map((m) => m[1]),
    ].flatMap((line) => [...line.replace(/#.*$/, '').matchAll(/\bpipeweave ((?:[a-z]+:)?[a-z-]+)((?: +[^ |;&]+)*)/g)])
    expect(uses.length).toBeGreaterThan(15)
    for (const [, id, rest] of uses) {
      const command = flagsOf(id)
      expect({ id, exists: command !== undefined }).toEqual({ id, exists: true })
      for (const [, flag] of rest.matchAll(/ --([a-z-]+)/g)) {
        expect({ id, flag, exists: Object.hasOwn(command!.flags, flag) }).toEqual({ id, flag, exists: true })
      }
    }
  })

  it('names the schema of every pipeweave table in its SQL, and says to replace it', () => {
    const tables = /(?<![\w.])(task_runs|task_run_history|orchestrators|orchestrator_state|maintenance_events|migrations|services|tasks|dlq|idempotency_cache)\b/g
    const sql = codeBlocks(GUIDE).filter((b) => b.lang === 'sql')
    expect(sql.length).toBeGreaterThanOrEqual(4)
    for (const block of sql) expect(block.code.match(tables)).toBeNull()
    expect(sql.map((b) => b.code).join('\n')).toMatch(/pipeweave\.task_runs/)
    expect(GUIDE).toMatch(/Replace `pipeweave` with your schema/)
  })

  it('is linked from the README and shipped in the package', () => {
    expect(fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8')).toMatch(/\]\(docs\/troubleshooting\.md\)/)
    const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    expect((JSON.parse(out) as Array<{ files: Array<{ path: string }> }>)[0].files.map((f) => f.path)).toContain('docs/troubleshooting.md')
  })

  it('links a section that exists from the hints of the embedded server errors', () => {
    for (const code of ['EMBEDDED_LOCKED', 'EMBEDDED_STOP_FAILED', 'EMBEDDED_START_FAILED']) {
      expect(troubleshootingLink(code, 'db:ping')).toBe('docs/troubleshooting.md#an-embedded-server-left-by-a-killed-process')
    }
    expect(anchors()).toContain('an-embedded-server-left-by-a-killed-process')
    expect(troubleshootingLink('UNKNOWN_RUN', 'runs:show')).toBeUndefined()
  })

  describe('error hints link the section that helps (real CLI, real PostgreSQL)', () => {
    let db: TestDatabase
    beforeAll(async () => {
      db = await migratedTestDatabase('pw_trouble')
      await addTask(db.pool, 'trouble.task')
    })
    afterAll(async () => { await db.drop() })

    /** Runs `args --json`, expects `exitCode`, and returns the anchor its hint links. */
    async function linkedAnchor(args: string[], exitCode: number, env: Record<string, string> = db.env): Promise<string> {
      const result = await runCli([...args, '--json'], { env })
      const body = json<{ error: { code: string; hint?: string }; exitCode: number }>(result)
      expect({ args, exitCode: body.exitCode }).toEqual({ args, exitCode })
      const link = /docs\/troubleshooting\.md#([\w-]+)/.exec(body.error.hint ?? '')
      expect({ args, hint: body.error.hint, linked: Boolean(link) }).toMatchObject({ args, linked: true })
      expect(anchors()).toContain(link![1])
      // The human form carries the same hint.
      expect((await runCli(args, { env })).stderr).toContain(`docs/troubleshooting.md#${link![1]}`)
      return link![1]
    }

    it('a drain that does not finish, and maintenance:enter with runs running', async () => {
      await startRun(db.pool, 'trouble.task')
      try {
        expect(await linkedAnchor(['maintenance:request', '--wait', '--timeout', '1'], 5)).toBe('a-drain-that-does-not-finish')
        expect(await linkedAnchor(['maintenance:enter'], 4)).toBe('a-drain-that-does-not-finish')
      } finally {
        await db.pool.query(`UPDATE task_runs SET status = 'cancelled' WHERE status = 'running'`)
        expect((await runCli(['maintenance:exit'], { env: db.env })).code).toBe(0)
      }
    })

    it('a checksum mismatch', async () => {
      const { rows: [before] } = await db.pool.query('SELECT hash FROM migrations WHERE id = 1')
      await db.pool.query(`UPDATE migrations SET hash = 'edited' WHERE id = 1`)
      try {
        expect(await linkedAnchor(['db:migrate'], 4)).toBe('a-checksum-mismatch')
      } finally {
        await db.pool.query('UPDATE migrations SET hash = $1 WHERE id = 1', [before.hash])
      }
    })

    it('maintenance:exit refused on a schema behind this pipeweave (a failed deploy migration)', async () => {
      const behind = await migratedTestDatabase('pw_trouble_behind')
      try {
        const { rows: [last] } = await behind.pool.query('SELECT max(id) AS id FROM migrations')
        await behind.pool.query('DELETE FROM migrations WHERE id = $1', [last.id])
        expect(await linkedAnchor(['maintenance:exit'], 4, behind.env)).toBe('maintenance-mode-you-cannot-leave')
      } finally {
        await behind.drop()
      }
    })
  })
})
