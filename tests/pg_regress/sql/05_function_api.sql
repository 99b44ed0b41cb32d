-- The function API: add_rule, alter_rule, remove_rule, expire, apply_rules, export_rules, as an
-- ordinary role on its own rules; the errors view; the comments \d+ shows. Errors are shown with
-- their SQLSTATE and hint, without the PL/pgSQL context.
\set VERBOSITY verbose
\set SHOW_CONTEXT never
CREATE TABLE public.api_tokens (
    id         bigint PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    issued     date,
    exp        bigint,
    note       text
);
CREATE INDEX ON public.api_tokens (expires_at);
GRANT SELECT, DELETE ON public.api_tokens TO regress_app;
SET ROLE regress_app;

-- add_rule: the defaults of the rules table (schedule @hourly); the same checks as an INSERT.
SELECT token_cleanup.add_rule('api_expired', 'api_tokens', 'expires_at < now()') > 0 AS added;
SELECT name, table_name, condition, schedule, batch_size, enabled, owner, drop_partitions
  FROM token_cleanup.rules WHERE name = 'api_expired';
SELECT token_cleanup.add_rule('api_expired', 'api_tokens', 'expires_at < now()');
SELECT token_cleanup.add_rule('api_bad', 'api_tokens', 'expires_at <');
SELECT token_cleanup.add_rule('api_bad', 'no_such_table', 'true');
SELECT token_cleanup.add_rule('api_bad', 'api_tokens', 'true', batch_size => 0);
SELECT token_cleanup.add_rule('api_bad', 'api_tokens', 'true', schedule => 'every tuesday');
-- Another role's rule name is taken, though that role's rule is not visible.
SELECT token_cleanup.add_rule('other_sessions', 'api_tokens', 'true');
-- if_not_exists: the rule is left as it is; the NOTICE says whether it differs from the call.
SET client_min_messages = notice;
SELECT updated_at AS before FROM token_cleanup.rules WHERE name = 'api_expired' \gset
SELECT token_cleanup.add_rule('api_expired', 'public.api_tokens', 'expires_at < now()', if_not_exists => true)
     = (SELECT id FROM token_cleanup.rules WHERE name = 'api_expired') AS same_id;
SELECT token_cleanup.add_rule('api_expired', 'api_tokens', 'expires_at < now()', schedule => '@daily',
                              batch_size => 100, if_not_exists => true) IS NOT NULL AS returned;
SELECT schedule, batch_size, updated_at = :'before' AS untouched FROM token_cleanup.rules WHERE name = 'api_expired';

-- alter_rule: only what is given; a call that changes nothing writes nothing; clear resets.
SELECT token_cleanup.alter_rule('api_expired', batch_size => 250, lock_timeout => '5 seconds');
SELECT schedule, batch_size, lock_timeout, updated_at > :'before' AS changed FROM token_cleanup.rules WHERE name = 'api_expired';
SELECT updated_at AS before FROM token_cleanup.rules WHERE name = 'api_expired' \gset
SELECT token_cleanup.alter_rule('api_expired', batch_size => 250, lock_timeout => '00:00:05', table_name => 'public.api_tokens');
SELECT updated_at = :'before' AS untouched FROM token_cleanup.rules WHERE name = 'api_expired';
SELECT token_cleanup.alter_rule('api_expired', clear => '{lock_timeout,batch_size}', enabled => false);
SELECT batch_size, lock_timeout, enabled FROM token_cleanup.rules WHERE name = 'api_expired';
SELECT token_cleanup.alter_rule('api_expired', new_name => 'api_expired_tokens', enabled => true);
SELECT name FROM token_cleanup.rules WHERE name LIKE 'api%' ORDER BY name;
SELECT token_cleanup.alter_rule('api_expired', batch_size => 5);
SELECT token_cleanup.alter_rule('api_expired_tokens', batch_size => -5);
SELECT token_cleanup.alter_rule('api_expired_tokens', clear => '{condition}');
SELECT token_cleanup.alter_rule('api_expired_tokens', clear => '{batch_size}', batch_size => 5);
SELECT token_cleanup.alter_rule('other_sessions', enabled => false);

-- expire: the condition from the column's type; a NOTICE names the index that would serve it.
SELECT token_cleanup.expire('api_tokens', 'expires_at', '7 days', name => 'api_week') > 0 AS added;
SELECT token_cleanup.expire('public.api_tokens', 'issued', '90 days', schedule => '@daily', name => 'api_issued') > 0 AS added;
SELECT token_cleanup.expire('api_tokens', 'exp', name => 'api_epoch') > 0 AS added;
SELECT name, condition, schedule FROM token_cleanup.rules WHERE name IN ('api_week', 'api_issued', 'api_epoch') ORDER BY name;
SELECT token_cleanup.expire('api_tokens', 'note');
SELECT token_cleanup.expire('api_tokens', 'no_such_column');
SELECT token_cleanup.expire('api_tokens', 'expires_at', name => 'api_week', if_not_exists => true) IS NOT NULL AS kept;
SELECT count(*) AS api_tokens_rules FROM token_cleanup.rules WHERE name = 'api_tokens';
-- The rules expire() writes purge what they say.
RESET ROLE;
INSERT INTO public.api_tokens
SELECT g, now() + (g - 10) * interval '1 day', current_date + (g - 100), extract(epoch FROM now())::bigint + (g - 5) * 60 + 30, 'x'
  FROM generate_series(1, 20) g;
SET ROLE regress_app;
SELECT rule, status, rows_deleted FROM token_cleanup.run('api_week');
SELECT rule, status, rows_deleted FROM token_cleanup.run('api_epoch');
SELECT count(*) AS left_after FROM public.api_tokens;
SELECT token_cleanup.remove_rule('api_week'), token_cleanup.remove_rule('api_issued');
SELECT token_cleanup.remove_rule('api_week');
SELECT token_cleanup.remove_rule('api_week', if_exists => true);

-- export_rules and apply_rules: the same document in and out; a rule that matches is not written.
SELECT jsonb_pretty(token_cleanup.export_rules() -> 0);
SELECT jsonb_array_length(token_cleanup.export_rules()) AS exported;
SELECT max(updated_at) AS before FROM token_cleanup.rules \gset
SELECT * FROM token_cleanup.apply_rules(token_cleanup.export_rules());
SELECT max(updated_at) = :'before' AS untouched FROM token_cleanup.rules;
SELECT * FROM token_cleanup.apply_rules($$[
  {"name": "api_expired_tokens", "table_name": "api_tokens", "condition": "expires_at < now()", "schedule": "@hourly", "batch_size": 1000},
  {"name": "api_epoch", "table_name": "public.api_tokens", "condition": "exp < extract(epoch FROM now())::bigint", "schedule": "@hourly"},
  {"name": "api_daily", "table_name": "api_tokens", "condition": "expires_at < now() - interval '1 day'", "schedule": "0 3 * * *",
   "max_run_duration": "10 minutes"}
]$$);
SELECT * FROM token_cleanup.apply_rules($$[
  {"name": "api_daily", "table_name": "api_tokens", "condition": "expires_at < now() - interval '1 day'", "schedule": "0 3 * * *",
   "max_run_duration": "00:10:00"}
]$$, prune => true);
SELECT name, schedule, max_run_duration FROM token_cleanup.rules ORDER BY name;
-- The other role's rules are neither listed nor pruned.
RESET ROLE;
SELECT name, owner FROM token_cleanup.rules WHERE owner <> 'regress_app' ORDER BY name;
SET ROLE regress_app;
-- Bad documents are refused whole, naming what is wrong.
SELECT * FROM token_cleanup.apply_rules('{"name": "x"}');
SELECT * FROM token_cleanup.apply_rules('[{"name": "x", "table_name": "api_tokens", "condition": "true", "schedule": "@daily", "colour": "red"}]');
SELECT * FROM token_cleanup.apply_rules('[{"name": "x", "table_name": "api_tokens", "condition": "true", "schedule": "@daily", "batch_size": "ten"}]');
SELECT * FROM token_cleanup.apply_rules('[{"name": "x", "table_name": "api_tokens", "condition": "true", "schedule": "@daily", "owner": "regress_other"}]');
SELECT * FROM token_cleanup.apply_rules('[{"name": "x", "table_name": "api_tokens", "condition": "true", "schedule": "@daily"}, {"name": "x", "table_name": "api_tokens", "condition": "false", "schedule": "@daily"}]');
SELECT * FROM token_cleanup.apply_rules('[{"name": "x", "table_name": "api_tokens", "condition": "true", "schedule": "@daily"}, {"name": "other_sessions", "table_name": "api_tokens", "condition": "false", "schedule": "@daily"}]');
SELECT * FROM token_cleanup.apply_rules('[{"name": "x", "table_name": "api_tokens", "condition": "expires_at <", "schedule": "@daily"}]');
-- Nothing of a refused document was applied.
SELECT count(*) AS x_rules FROM token_cleanup.rules WHERE name = 'x';

-- The errors view: failed and refused runs with SQLSTATE, message, hint, consecutive failures;
-- each role sees its own.
SELECT token_cleanup.add_rule('api_failing', 'api_tokens', 'id / (id - id) = 1') > 0 AS added;
SELECT rule, status FROM token_cleanup.run('api_failing');
RESET ROLE;
ANALYZE public.api_tokens;
SET ROLE regress_app;
SELECT token_cleanup.add_rule('api_refused', 'api_tokens', 'true', max_rows_per_run => 1) > 0 AS added;
SELECT rule, status FROM token_cleanup.run('api_refused');
SELECT rule, owner, trigger, status, sqlstate, message, consecutive_failures
  FROM token_cleanup.errors ORDER BY run_id;
SELECT hint IS NOT NULL AS has_hint FROM token_cleanup.errors WHERE rule = 'api_refused';
SET ROLE regress_other;
SELECT count(*) AS others_see FROM token_cleanup.errors;
RESET ROLE;
SELECT token_cleanup.remove_rule(name) FROM token_cleanup.rules WHERE name LIKE 'api%' ORDER BY name;

-- \d+ and \df+ document every column and function.
SELECT c.relname, a.attname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE n.nspname = 'token_cleanup' AND c.relkind IN ('r', 'v') AND col_description(c.oid, a.attnum) IS NULL;
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'token_cleanup' AND c.relkind IN ('r', 'v') AND obj_description(c.oid, 'pg_class') IS NULL;
SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'token_cleanup' AND obj_description(p.oid, 'pg_proc') IS NULL;
SELECT col_description('token_cleanup.rules'::regclass, 5) AS schedule_comment;
RESET client_min_messages;
\set VERBOSITY terse
\set SHOW_CONTEXT errors
