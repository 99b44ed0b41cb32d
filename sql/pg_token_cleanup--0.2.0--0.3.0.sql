-- pg_token_cleanup 0.2.0 -> 0.3.0, run by ALTER EXTENSION pg_token_cleanup UPDATE.
-- Written by hand (see CONTRIBUTING.md): every change 0.3.0 made to the SQL objects of 0.2.0
-- (sql/pg_token_cleanup--0.2.0.sql). tests/upgrade.rs checks the result against a fresh 0.3.0
-- install, from 0.2.0 and from 0.1.0 through 0.2.0.

\echo Use "ALTER EXTENSION pg_token_cleanup UPDATE" to load this file. \quit

-- The cap on a table walk's batch, the last condition of its DELETE (src/executor/batch_cap.rs):
-- lets the first batch_size rows through, refuses the rest. Instead of RETURNING ctid, which made
-- every deleted row be fetched again. Executable by PUBLIC: a batch runs as the rule's owner. COST
-- makes the planner evaluate it after the rule's condition.
CREATE FUNCTION token_cleanup."within_batch"(
	"row" tid /* pg_sys :: ItemPointerData */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE COST 1000000
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'within_batch_wrapper';

-- The scheduler ran nothing in this database while it was at 0.2.0: it loads the rules now.
SELECT token_cleanup.wake_scheduler();
