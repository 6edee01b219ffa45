/** SQL on `orchestrator_state`, the single maintenance-mode row. */
import type { Statement } from '../db/database'

export const schemaPresent: Statement = {
  name: 'schema_present',
  text: `SELECT to_regclass('orchestrator_state') IS NOT NULL AS present`,
}

/** The mode and how many orchestrators heartbeated within $1 ms. */
export const modeAndLiveOrchestrators: Statement = {
  name: 'mode_and_live_orchestrators',
  text: `SELECT s.mode,
                (SELECT count(*)::int FROM orchestrators o
                  WHERE o.heartbeat_at > now() - make_interval(secs => $1::float8 / 1000)) AS live
           FROM orchestrator_state s
          WHERE s.id = 'singleton'`,
}
