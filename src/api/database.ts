/** Opening the database for the API: create it first when asked (db:init). */
import { escapeIdentifier } from '../db/pg'
import { resolveConnection } from '../db/config'
import { type Database, type DatabaseConfig, connectionFlagsOf, createDatabase } from '../db/database'
import { SQLSTATE } from '../db/errors'
import { ConnectionError } from '../errors'

export { createDatabase }
export type { Database, DatabaseConfig }

export async function closeDatabase(db: Database): Promise<void> {
  await db.close()
}

/** Connect; when the database does not exist, create it from the server's `postgres` database. */
export async function openOrCreateDatabase(config: DatabaseConfig): Promise<{ db: Database; created: boolean }> {
  try {
    return { db: await createDatabase(config), created: false }
  } catch (error) {
    if (!(error instanceof ConnectionError) || error.code !== 'DATABASE_MISSING') throw error
  }
  const target = resolveConnection(connectionFlagsOf(config), config.env ?? process.env)
  const name = config.database ?? (target.kind === 'external' ? target.database : 'pipeweave')
  const admin = await createDatabase({ ...config, database: 'postgres' })
  let created = false
  try {
    await admin.query({ name: 'create_database', text: `CREATE DATABASE ${escapeIdentifier(name)}` })
    created = true
  } catch (error) {
    // Another db:init created it first: that is success too.
    const code = (error as { code?: string }).code
    if (code === SQLSTATE.INSUFFICIENT_PRIVILEGE) {
      // Foreseen (a managed server's app user rarely has CREATEDB): still the missing database, exit 3.
      const user = admin.target.user
      throw new ConnectionError('DATABASE_MISSING', `database "${name}" does not exist, and user "${user}" may not create it`, {
        hint: `create it as an administrator (CREATE DATABASE ${escapeIdentifier(name)} OWNER ${escapeIdentifier(user)}), then run pipeweave db:init again`,
        cause: error,
      })
    }
    if (code !== SQLSTATE.DUPLICATE_DATABASE && code !== SQLSTATE.UNIQUE_VIOLATION) throw error
  } finally {
    await admin.close()
  }
  return { db: await createDatabase(config), created }
}
