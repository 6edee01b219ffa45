/**
 * What `npm pack` ships (SPEC §0, issue 11 item 11): the README's walkthrough and the demo's "Try
 * next" point to examples/, and package.json says MIT, so the package carries both the examples
 * and the LICENSE; it carries no tests, no local database and no checkout clutter.
 */
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'

const ROOT = path.resolve(__dirname, '..')

/** The files `npm pack` would put in the tarball (no build: --ignore-scripts). */
function packedFiles(): string[] {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
    cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, npm_config_loglevel: 'silent' },
  })
  const [pack] = JSON.parse(out) as Array<{ files: Array<{ path: string }> }>
  return pack.files.map((f) => f.path)
}

describe('the npm package', () => {
  let files: string[]
  beforeAll(() => { files = packedFiles() })

  it('ships the example worker the README and the demo point to', () => {
    const examples = execFileSync('git', ['ls-files', 'examples'], { cwd: ROOT, encoding: 'utf8' }).trim().split('\n')
    expect(examples).toEqual(expect.arrayContaining(['examples/worker/worker.js', 'examples/worker/service.json']))
    expect(files).toEqual(expect.arrayContaining(examples))
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8')
    for (const mentioned of new Set(readme.match(/examples\/[\w./-]+\.(?:json|js)\b/g) ?? [])) expect(files).toContain(mentioned)
  })

  it('ships a LICENSE that is the license package.json names', () => {
    expect(files).toContain('LICENSE')
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { license: string }
    expect(pkg.license).toBe('MIT')
    const license = fs.readFileSync(path.join(ROOT, 'LICENSE'), 'utf8')
    expect(license).toMatch(/^MIT License/)
    expect(license).toMatch(/Permission is hereby granted, free of charge/)
  })

  it('ships the dashboard\'s assets (served offline: no CDN, no build step at run time) and not its screenshot', () => {
    const assets = fs.readdirSync(path.join(ROOT, 'assets', 'dashboard')).map((f) => `assets/dashboard/${f}`)
    expect(assets).toEqual(expect.arrayContaining(['assets/dashboard/app.js', 'assets/dashboard/app.css', 'assets/dashboard/favicon.svg']))
    expect(files).toEqual(expect.arrayContaining(assets))
    expect(files.filter((f) => f.endsWith('.png'))).toEqual([])
    // Nothing in them reaches beyond the dashboard's own origin.
    for (const asset of assets) expect({ asset, remote: /https?:\/\/|\/\/[a-z]/i.test(fs.readFileSync(path.join(ROOT, asset), 'utf8').replace(/http:\/\/www\.w3\.org\/2000\/svg/g, '')) }).toEqual({ asset, remote: false })
  })

  it('ships no tests, no local database and no benchmarks', () => {
    expect(files.filter((f) => /^(test|bench|\.pipeweave|\.ci|node_modules|src)\//.test(f))).toEqual([])
  })
})
