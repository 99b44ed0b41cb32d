-- Adding rules as an application role: stored with canonical, schema-qualified table names and the
-- role as owner; each role sees only its own rules and statistics (row-level security).
SET ROLE regress_app;
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
VALUES ('refresh_tokens', 'refresh_tokens', 'revoked OR expires_at < now()', '0 3 * * *');
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, timezone, max_run_duration,
                                  max_replica_lag, max_wal_rate, yield_to_waiters)
VALUES ('hourly', 'public.refresh_tokens', 'expires_at < now() - interval ''30 days''', '@hourly', 500,
        'America/New_York', '10 minutes', '1 second', 16, true);
SELECT name, table_name, condition, schedule, batch_size, enabled, owner, timezone, max_run_duration,
       drop_partitions, max_replica_lag, max_wal_rate, yield_to_waiters
  FROM token_cleanup.rules ORDER BY name;
RESET ROLE;

SET ROLE regress_other;
INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
VALUES ('other_sessions', 'public.other_sessions', 'expires_at < now()', '*/5 * * * *');
-- regress_other sees its rule only.
SELECT name, owner FROM token_cleanup.rules ORDER BY name;
SELECT rule, owner, enabled, runs, total_rows_deleted, last_status FROM token_cleanup.rule_stats ORDER BY rule;
-- Another role's rule cannot be changed or deleted (it is invisible), nor can a rule be given away.
UPDATE token_cleanup.rules SET enabled = false WHERE name = 'refresh_tokens' RETURNING name;
SELECT token_cleanup.delete_rule('refresh_tokens');
\set VERBOSITY verbose
UPDATE token_cleanup.rules SET owner = 'regress_app' WHERE name = 'other_sessions';
\set VERBOSITY default
RESET ROLE;

-- A superuser sees every rule.
SELECT rule, owner, enabled, runs FROM token_cleanup.rule_stats ORDER BY rule;
-- An update keeps the id and created_at and validates again.
SET ROLE regress_app;
UPDATE token_cleanup.rules SET schedule = '0 4 * * *' WHERE name = 'refresh_tokens';
SELECT name, schedule, created_at <= updated_at AS kept FROM token_cleanup.rules WHERE name = 'refresh_tokens';
RESET ROLE;
