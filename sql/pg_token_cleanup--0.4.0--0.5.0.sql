-- pg_token_cleanup 0.4.0 -> 0.5.0, run by ALTER EXTENSION pg_token_cleanup UPDATE.
-- Written by hand (see CONTRIBUTING.md): every change 0.5.0 made to the SQL objects of 0.4.0
-- (sql/pg_token_cleanup--0.4.0.sql). tests/upgrade.rs checks the result against a fresh 0.5.0
-- install, from 0.4.0, 0.3.0, 0.2.0 and 0.1.0.

\echo Use "ALTER EXTENSION pg_token_cleanup UPDATE" to load this file. \quit

-- A run's row gets its progress every few seconds; the progress after every batch is in shared
-- memory, read by live_progress() and shown by the progress view.
CREATE  FUNCTION token_cleanup."live_progress"() RETURNS TABLE (
	"run_id" bigint,  /* i64 */
	"rows_deleted" bigint,  /* i64 */
	"batches" INT  /* i32 */
)
STRICT VOLATILE PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'live_progress_wrapper';

CREATE OR REPLACE VIEW token_cleanup.progress AS
SELECT h.rule_name AS rule,
       h.id        AS run_id,
       h.pid,
       h.trigger,
       h.started_at,
       greatest(h.batches, l.batches) AS batches,
       greatest(h.rows_deleted, l.rows_deleted) AS rows_deleted,
       round((greatest(h.rows_deleted, l.rows_deleted)
              / greatest(extract(epoch FROM pg_catalog.clock_timestamp() - h.started_at), 0.001))::numeric, 1)
                   AS rows_per_second
  FROM token_cleanup.runs h
  LEFT JOIN token_cleanup.live_progress() l ON l.run_id = h.id
 WHERE h.status = 'running'
   AND (h.owner = CURRENT_USER OR (SELECT a.rolsuper OR a.rolbypassrls FROM pg_catalog.pg_roles a WHERE a.rolname = CURRENT_USER));

-- The view's options, in the order a fresh install sets them.
DO $$
BEGIN
    IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN
        ALTER VIEW token_cleanup.progress SET (security_invoker = true);
    END IF;
END
$$;
ALTER VIEW token_cleanup.progress SET (security_barrier = true);
