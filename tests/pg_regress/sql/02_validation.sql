-- Every field of a rule is checked when it is written. Each error names the field and the rule,
-- and carries a SQLSTATE and a hint (VERBOSITY verbose shows them).
\set VERBOSITY verbose
\set SHOW_CONTEXT never
SET ROLE regress_app;
-- Schedules
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'true', '61 * * * *');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'true', '* * 32 * *');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'true', '0 0 30 2 *');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'true', 'every day');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'true', '@often');
-- Tables
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.nope', 'true', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.token_view', 'true', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'pg_catalog.pg_class', 'true', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'token_cleanup.runs', 'true', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.other_sessions', 'true', '@daily');
-- Conditions
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'true; DROP TABLE public.refresh_tokens', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'true) FROM pg_class WHERE (true', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'user_id + 1', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'no_such_column < now()', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'count(*) > 0', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', '', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', '(revoked', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'public.refresh_tokens', 'user_id IN (SELECT id FROM public.other_sessions)', '@daily');
-- Sizes, limits, time zones
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 0);
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, parallel_workers) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 0);
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, parallel_workers) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 17);
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, lock_timeout) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', '-1 s');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, max_rows_per_second) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', -1);
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, max_run_duration) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', '0 s');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, timezone) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 'Mars/Olympus');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, max_fraction) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 1.5);
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, drop_partitions) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 'drop');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, archive_table) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 'public.nope');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, max_replica_lag) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', '-1 s');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, max_wal_rate) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', -5);
-- Owners and NULLs
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 'regress_other');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', NULL, 'true', '@daily');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('refresh_tokens', 'public.refresh_tokens', 'true', '@daily');
RESET ROLE;
-- A superuser may name another owner, who must hold DELETE on the table.
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner) VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 'regress_other');
-- Nothing above was stored.
SELECT count(*) FROM token_cleanup.rules WHERE name = 'r';
