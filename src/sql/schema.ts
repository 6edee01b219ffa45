/**
 * The schema every pipeweave object lives in (SPEC §1 `--schema`, PIPEWEAVE_SCHEMA; default
 * `public`), and what is derived from it: every statement names its tables through `q` (sessions
 * of a transaction pooler carry no search_path), and the advisory-lock keys and the NOTIFY channel
 * are the schema's own, so two installs in one database never contend. The migrations compute the
 * same keys and channel from current_schema() (001 pipeweave_mode_changed, 002).
 */
import { UsageError } from '../errors'

export const DEFAULT_SCHEMA = 'public'

/** Lower-case SQL identifiers only: the name is used unquoted by operators' runbooks too. */
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/

export interface Schema {
  /** The schema's name, as given. */
  readonly name: string
  /** Quoted for SQL text: `"pipeweave"`. */
  readonly q: string
  /** The name as a SQL string literal: `'pipeweave'`. */
  readonly literal: string
  /** SQL expression of the maintenance gate's advisory-lock key (the trigger of migration 001 takes it exclusive). */
  readonly gateKey: string
  /** The LISTEN/NOTIFY channel of this schema: payload `runs` (new due work) or `mode`. */
  readonly channel: string
}

export function validateSchemaName(name: string, setting = '--schema'): string {
  if (!SCHEMA_NAME.test(name)) {
    throw new UsageError('INVALID_SCHEMA', `${setting} must be a lower-case SQL name (letters, digits, _; at most 63), not "${name}"`, {
      hint: 'for example --schema pipeweave (PIPEWEAVE_SCHEMA=pipeweave)',
    })
  }
  return name
}

const cache = new Map<string, Schema>()

export function schemaOf(name: string = DEFAULT_SCHEMA): Schema {
  let schema = cache.get(name)
  if (!schema) {
    validateSchemaName(name)
    // The name matches SCHEMA_NAME, so it holds no quote of either kind.
    const literal = `'${name}'`
    schema = Object.freeze({
      name,
      q: `"${name}"`,
      literal,
      gateKey: `hashtextextended(${literal} || '/gate', 0)`,
      channel: `pipeweave.${name}`.slice(0, 63),
    })
    cache.set(name, schema)
  }
  return schema
}

/** The advisory-lock key of a named lock of this schema, as SQL (`lockKey(s, 'migrate')`). */
export function lockKey(schema: Schema, name: string): string {
  return `hashtextextended(${schema.literal} || '/${name}', 0)`
}

/**
 * A statement of pipeweave's tables, written once for any schema (`s.q` names it), built once per
 * schema when first run: `export const claimRuns = statement('claim_runs', (s) => `… ${s.q}.task_runs …`)`.
 */
export function statement(name: string, build: (s: Schema) => string): ((s: Schema) => { name: string; text: string }) & { readonly statementName: string } {
  const built = new Map<Schema, { name: string; text: string }>()
  const bound = (s: Schema) => {
    let st = built.get(s)
    if (!st) {
      st = { name, text: build(s) }
      built.set(s, st)
    }
    return st
  }
  return Object.assign(bound, { statementName: name })
}
