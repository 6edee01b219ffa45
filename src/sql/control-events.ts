/**
 * SQL on `control_events` (SPEC §7): the history of every flow-control change, beside
 * maintenance_events. Pauses and runtime limits are recorded by the trigger of migration 003
 * (pipeweave_flow_changed); other changes insert their row in the transaction that makes them.
 */
import { statement } from './schema'

/** One change: kind $1, target $2 (`task:<id>`, `service:<id>`), action $3, actor $4, reason $5, detail $6. */
export const insertControlEvent = statement('insert_control_event', (s) => `
  INSERT INTO ${s.q}.control_events (kind, target, action, actor, reason, detail)
  VALUES ($1::text, $2::text, $3::text, $4::text, $5::text, $6::jsonb)`)

/**
 * The newest $2 changes, of target $1 only (null: all), newest first: control_events_target_idx
 * for one target, the primary key for all.
 */
export const listControlEvents = statement('list_control_events', (s) => `
  SELECT e.id, e.kind, e.target, e.action, e.at, e.actor, e.reason, e.detail
    FROM ${s.q}.control_events e
   WHERE $1::text IS NULL OR e.target = $1::text
   ORDER BY e.id DESC
   LIMIT $2::int`)
