/**
 * The one formatter and password masking (SPEC §1, §2): a password is masked where it stands as a
 * password (a URL's userinfo, a conninfo or query `password=`, `--password`, `DB_PASS`,
 * `PGPASSWORD`), and masking never touches anything else — the URL scheme, the user, JSON keys,
 * numbers, booleans, or words that happen to equal a password.
 */
import { type Column, fitWidths, Output, processLogger, relativeTime, shortId } from '../src/output'
import { redact, redactArgv, redactConnectionString } from '../src/redact'

function capture(): { stream: { write(text: string): boolean; isTTY: boolean }; text(): string } {
  let text = ''
  return { stream: { write: (chunk: string) => { text += chunk; return true }, isTTY: false }, text: () => text }
}

describe('masking', () => {
  it('masks the password of any URL, whole, and keeps the scheme, user, host and path', () => {
    expect(redact('postgres://app:hunter22@db:5432/x')).toBe('postgres://app:****@db:5432/x')
    expect(redact('postgresql://postgres:postgres@h/db and the word postgres')).toBe('postgresql://postgres:****@h/db and the word postgres')
    expect(redact('worker at http://admin:pw@10.0.0.1:4000/api failed')).toBe('worker at http://admin:****@10.0.0.1:4000/api failed')
    expect(redact('postgres://u:p@ss@h/db')).toBe('postgres://u:****@h/db') // an unencoded @ in the password
    expect(redact('Connected to postgres://dev:****@127.0.0.1:5432/db')).toBe('Connected to postgres://dev:****@127.0.0.1:5432/db')
    expect(redact('postgres://app@h/db http://h:8080/a?x=b@c')).toBe('postgres://app@h/db http://h:8080/a?x=b@c')
  })

  it('masks password= in conninfo strings and queries, and DB_PASS, PGPASSWORD, --password assignments', () => {
    expect(redact("host=h user=u password=s3cret dbname=d")).toBe('host=h user=u password=**** dbname=d')
    expect(redact("host=h password = 'a b\\' c' dbname=d")).toBe('host=h password = **** dbname=d')
    expect(redact('postgres://h/d?user=u&password=s3cret&sslmode=require')).toBe('postgres://h/d?user=u&password=****&sslmode=require')
    expect(redact('DB_PASS=s3cret DB_PASSWORD=s3cret PGPASSWORD=s3cret --password=s3cret')).toBe('DB_PASS=**** DB_PASSWORD=**** PGPASSWORD=**** --password=****')
  })

  it('never masks words elsewhere, whatever the password is', () => {
    for (const text of ['Mode: running', '| run-1 | completed |', 'Mode changed at: 2026-11-30T12:00:00.000Z', 'user postgres', 'passed 3 checks']) {
      expect(redact(text)).toBe(text)
    }
  })

  it('masks a connection string given alone to its last @, and the values of --password and --url in argv', () => {
    expect(redactConnectionString('postgres://u:pa/ss?x@h:5432/db')).toBe('postgres://u:****@h:5432/db')
    expect(redactConnectionString('host=h password=s3cret')).toBe('host=h password=****')
    expect(redactArgv(['db:ping', '--password', 's3cret', '--url', 'postgres://u:pa/ss@h/db', '--url=postgres://u:x/y@h/d', '--user', 'running']))
      .toEqual(['db:ping', '--password', '****', '--url', 'postgres://u:****@h/db', '--url=postgres://u:****@h/d', '--user', 'running'])
  })

  it('keeps --json one valid document of the same shape, masking only inside string values', () => {
    const out = capture()
    const output = new Output(out.stream, capture().stream, {})
    const document = {
      target: 'postgres://dev:****@127.0.0.1:5432/db',
      tls: true,
      roundTripMs: 1234,
      applied: [{ id: 1, name: 'initial_schema', appliedAt: new Date('2024-01-02T03:04:05.678Z') }],
      message: 'could not reach postgres://dev:S3cr3t@db/x',
    }
    output.json(document)
    expect(JSON.parse(out.text())).toEqual({
      target: 'postgres://dev:****@127.0.0.1:5432/db',
      tls: true,
      roundTripMs: 1234,
      applied: [{ id: 1, name: 'initial_schema', appliedAt: '2024-01-02T03:04:05.678Z' }],
      message: 'could not reach postgres://dev:****@db/x',
    })
  })

  it('keeps JSON log lines valid', () => {
    const out = capture()
    processLogger(out.stream, 'json', false, {}).info('connected to postgres://u:S3cr3t@h/d', { applied: true, durationMs: 1234 })
    const line = JSON.parse(out.text())
    expect(line).toMatchObject({ level: 'info', msg: 'connected to postgres://u:****@h/d', applied: true, durationMs: 1234 })
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

describe('lists fitted to the terminal', () => {
  interface Row { id: string; error: string; at: string }
  const columns: Array<Column<Row>> = [
    { key: 'id', header: 'Id', full: (r) => r.id, short: (r) => shortId(r.id) },
    { key: 'at', header: 'At', full: (r) => r.at, short: (r, now) => relativeTime(r.at, now) },
    { key: 'error', header: 'Error', full: (r) => r.error, shrinkTo: 10 },
  ]
  const rows: Row[] = [{ id: 'f3c1a9e4-5b6d-4c7e-8f90-a1b2c3d4e5f6', error: `boom ${'x'.repeat(200)}`, at: '2026-01-01T00:00:00.000Z' }]
  const now = Date.parse('2026-01-01T00:05:30.000Z')

  it('takes the width of a terminal', () => {
    let text = ''
    const tty = { write: (chunk: string) => { text += chunk; return true }, isTTY: true, columns: 40 }
    new Output(tty, capture().stream, { NO_COLOR: '1' }).grid(columns, rows, { now })
    expect(text.trimEnd().split('\n')).toEqual([
      'Id         At      Error',
      `f3c1a9e4…  5m ago  boom ${'x'.repeat(15)}…`,
    ])
  })

  it('relative times, short ids, widths', () => {
    expect(relativeTime('2026-01-01T00:00:00.000Z', now)).toBe('5m ago')
    expect(relativeTime('2026-01-01T00:10:00.000Z', now)).toBe('in 4m')
    expect(relativeTime('2025-12-25T00:00:00.000Z', now)).toBe('7d ago')
    expect(relativeTime('2026-01-01T00:05:30.000Z', now)).toBe('now')
    expect(relativeTime(null, now)).toBe('')
    expect(shortId('0193a1b2c3d4e5f60718')).toBe('0193a1b2c3d4e5f60718')
    expect(shortId('f3c1a9e4-5b6d-4c7e-8f90-a1b2c3d4e5f6')).toBe('f3c1a9e4…')
    // The widest shrinkable column gives way first, never below its minimum.
    expect(fitWidths([10, 30, 50], [undefined, 8, 10], 60)).toEqual([10, 23, 23])
    expect(fitWidths([10, 30, 50], [undefined, 8, 10], 30)).toEqual([10, 8, 10])
  })
})
