/**
 * The one formatter and password masking (SPEC §1, §2): a password is masked where it stands as a
 * password (a URL's userinfo, a conninfo or query `password=`, `--password`, `DB_PASS`,
 * `PGPASSWORD`), and masking never touches anything else — the URL scheme, the user, JSON keys,
 * numbers, booleans, or words that happen to equal a password.
 */
import { Output, processLogger } from '../src/output'
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
