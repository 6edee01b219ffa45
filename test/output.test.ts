/**
 * The one formatter and password masking (SPEC §1, §2): a registered password never shows, and
 * masking never mangles what is shown — the URL scheme, JSON keys, numbers and booleans — even
 * when the password is a common word ("postgres", "true", "applied", "1234").
 */
import { Output, processLogger } from '../src/output'
import { redact, registerSecret } from '../src/redact'

function capture(): { stream: { write(text: string): boolean; isTTY: boolean }; text(): string } {
  let text = ''
  return { stream: { write: (chunk: string) => { text += chunk; return true }, isTTY: false }, text: () => text }
}

describe('masking', () => {
  beforeAll(() => {
    for (const secret of ['postgres', 'true', 'applied', '1234', 'S3cr3t/p@ss']) registerSecret(secret)
  })

  it('masks a password in a connection string and wherever it appears alone, percent-encoded or not', () => {
    expect(redact('postgres://app:hunter22@db:5432/x')).toBe('postgres://app:****@db:5432/x')
    expect(redact('failed with S3cr3t/p@ss and S3cr3t%2Fp%40ss')).toBe('failed with **** and ****')
  })

  it('never masks the URL scheme, even when the password is "postgres"', () => {
    expect(redact('Connected to postgres://dev:****@127.0.0.1:5432/db')).toBe('Connected to postgres://dev:****@127.0.0.1:5432/db')
    expect(redact('postgresql://dev:postgres@h/db and the word postgres')).toBe('postgresql://dev:****@h/db and the word ****')
  })

  it('keeps --json one valid document of the same shape, masking only inside string values', () => {
    const out = capture()
    const output = new Output(out.stream, capture().stream, {})
    const document = {
      target: 'postgres://dev:****@127.0.0.1:5432/db',
      tls: true,
      roundTripMs: 1234,
      applied: [{ id: 1, name: 'initial_schema', appliedAt: new Date('2024-01-02T03:04:05.678Z') }],
      message: 'the password was S3cr3t/p@ss',
    }
    output.json(document)
    expect(JSON.parse(out.text())).toEqual({
      target: 'postgres://dev:****@127.0.0.1:5432/db',
      tls: true,
      roundTripMs: 1234,
      applied: [{ id: 1, name: 'initial_schema', appliedAt: '2024-01-02T03:04:05.678Z' }],
      message: 'the password was ****',
    })
  })

  it('keeps JSON log lines valid', () => {
    const out = capture()
    processLogger(out.stream, 'json', false, {}).info('migrated with S3cr3t/p@ss', { applied: true, durationMs: 1234 })
    const line = JSON.parse(out.text())
    expect(line).toMatchObject({ level: 'info', msg: 'migrated with ****', applied: true, durationMs: 1234 })
  })
})

describe('progress', () => {
  it('off a terminal writes an update as a plain line at most every 10 s, the first at once', () => {
    const err = capture()
    let now = 1_000_000
    const progress = new Output(capture().stream, err.stream, {}).spinner('Draining…', { now: () => now })
    progress.update('Draining: 2 running')
    for (let i = 1; i < 40; i++) { // polls every 250 ms for 9.75 s
      now += 250
      progress.update(`Draining: 1 running (${i})`)
    }
    expect(err.text()).toBe('Draining: 2 running\n')
    now = 1_000_000 + 10_000
    progress.update('Draining: 1 running')
    now += 5_000
    progress.update('Draining: 0 running')
    progress.stop()
    now += 60_000
    progress.update('after stop')
    expect(err.text()).toBe('Draining: 2 running\nDraining: 1 running\n')
  })
})
