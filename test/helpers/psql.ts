/**
 * SQL typed the way an operator's runbook does: with psql where it is installed (CI has it), else
 * a plain session that introduces itself as psql does (`npm test` needs nothing but Node and npm).
 * With `schema`, the session first runs `SET search_path TO <schema>` (README: runbook SQL against
 * a pipeweave installed in a schema of its own), so the runbook's statements stay unqualified.
 */
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import { Client } from 'pg'

const PSQL = '/usr/bin/psql'

export interface PsqlResult {
  /** Rows of a SELECT, each as its values joined with `|`; command tags (`UPDATE 1`) otherwise. */
  lines: string[]
}

export async function psql(url: string, sql: string, options: { schema?: string } = {}): Promise<PsqlResult> {
  const statements = [...(options.schema ? [`SET search_path TO ${options.schema}`] : []), sql]
  if (fs.existsSync(PSQL)) {
    const env = { ...process.env }
    delete env.PGAPPNAME // psql's own application_name, `psql`
    // -A -t: unaligned rows without header or footer; each -c is its own statement, in order.
    const args = [url, '-X', '-A', '-t', '-F', '|', '-v', 'ON_ERROR_STOP=1', ...statements.flatMap((s) => ['-c', s])]
    const result = spawnSync(PSQL, args, { encoding: 'utf8', env })
    if (result.status !== 0 || result.stderr !== '') {
      throw new Error(`psql failed (exit ${result.status}): ${result.stderr}`)
    }
    return { lines: result.stdout.split('\n').filter((line) => line !== '' && line !== 'SET') }
  }
  const client = new Client({ connectionString: url, application_name: 'psql' })
  await client.connect()
  try {
    const lines: string[] = []
    for (const statement of statements) {
      const result = await client.query({ text: statement, rowMode: 'array' })
      if (result.command === 'SELECT') lines.push(...result.rows.map((row: unknown[]) => row.map(psqlText).join('|')))
      else if (result.command !== 'SET') lines.push(`${result.command} ${result.rowCount ?? 0}`)
    }
    return { lines }
  } finally {
    await client.end()
  }
}

/** A value as psql's unaligned output shows it (timestamps in the server's text form). */
function psqlText(value: unknown): string {
  if (value === null || value === undefined) return ''
  if (value instanceof Date) return value.toISOString()
  return String(value)
}
