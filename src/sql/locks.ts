/**
 * Advisory lock keys, in one place so that no two uses collide. (postgres-migrations' own key is in
 * sql/migrations.ts.) Values are arbitrary constants: "pipeweave" in ASCII, then a counter.
 */
/** The maintenance gate (SPEC §4): enqueue and claim take it shared, every mode change exclusive. */
export const MODE_GATE_LOCK = '7020304957001'
/** One db:cleanup at a time. */
export const CLEANUP_LOCK = '7020304957002'
