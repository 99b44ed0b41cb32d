-- Runs last in CREATE EXTENSION, after the Rust functions exist: the statistics view, and the wake-up
-- that makes the launcher start this database's scheduler at commit, without a restart.

-- Per rule: last run, its status, next fire time, totals over the history kept
-- (pg_token_cleanup.history_retention). security_invoker: row-level security applies to the caller.
CREATE VIEW token_cleanup.rule_stats WITH (security_invoker = true) AS
SELECT r.id                    AS rule_id,
       r.name                  AS rule,
       r.table_name,
       r.schedule,
       r.enabled,
       r.owner,
       last.started_at         AS last_run_at,
       last.status             AS last_status,
       last.rows_deleted       AS last_rows_deleted,
       last.finished_at - last.started_at AS last_duration,
       last.error              AS last_error,
       CASE WHEN r.enabled AND pg_catalog.current_setting('pg_token_cleanup.enabled')::boolean
            THEN token_cleanup.next_run(r.schedule, r.timezone) END AS next_run_at,
       coalesce(totals.runs, 0)          AS runs,
       coalesce(totals.succeeded, 0)     AS succeeded,
       coalesce(totals.failed, 0)        AS failed,
       coalesce(totals.interrupted, 0)   AS interrupted,
       coalesce(totals.rows_deleted, 0)  AS total_rows_deleted,
       totals.avg_duration,
       totals.max_duration,
       totals.longest_batch_ms
  FROM token_cleanup.rules r
  LEFT JOIN LATERAL (
        SELECT h.started_at, h.finished_at, h.status, h.rows_deleted, h.error
          FROM token_cleanup.runs h
         WHERE h.rule_id = r.id
         ORDER BY h.started_at DESC
         LIMIT 1) last ON true
  LEFT JOIN LATERAL (
        SELECT count(*)                                          AS runs,
               count(*) FILTER (WHERE h.status = 'succeeded')    AS succeeded,
               count(*) FILTER (WHERE h.status = 'failed')       AS failed,
               count(*) FILTER (WHERE h.status = 'interrupted')  AS interrupted,
               sum(h.rows_deleted)::bigint                       AS rows_deleted,
               avg(h.finished_at - h.started_at)                 AS avg_duration,
               max(h.finished_at - h.started_at)                 AS max_duration,
               max(h.longest_batch_ms)                           AS longest_batch_ms
          FROM token_cleanup.runs h
         WHERE h.rule_id = r.id) totals ON true;

GRANT SELECT ON token_cleanup.rule_stats TO PUBLIC;

-- Internal: only CREATE EXTENSION wakes the launcher (anyone could otherwise make it probe every
-- database over and over), and only the rules trigger wakes the scheduler.
REVOKE EXECUTE ON FUNCTION token_cleanup.wake_launcher() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION token_cleanup.wake_scheduler() FROM PUBLIC;

SELECT token_cleanup.wake_launcher();
