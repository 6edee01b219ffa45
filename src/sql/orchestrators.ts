/** SQL on `orchestrators`: registration and heartbeat of live `pipeweave run` processes. */
import type { Statement } from '../db/database'

/** Register, or heartbeat (an orchestrator another one thought dead comes back). */
export const heartbeat: Statement = {
  name: 'orchestrator_heartbeat',
  text: `INSERT INTO orchestrators (id, host, pid, version, concurrency) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
         RETURNING (xmax = 0) AS inserted`,
}

export const deregister: Statement = {
  name: 'orchestrator_deregister',
  text: `DELETE FROM orchestrators WHERE id = $1`,
}
