//! `#[pg_test]`s: the SQL surface and every validation error, asserting the text users read. Each
//! test runs in a transaction that is rolled back, so the workers never see these rules; the worker
//! itself is tested end to end from `tests/`.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Runs `sql` in a subtransaction and returns the error message it raised ("no error" if none).
    fn error_of(sql: &str) -> String {
        match crate::errors::in_subtransaction(|| Spi::run(sql)) {
            Ok(Ok(())) => "no error".into(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.message,
        }
    }

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn one<T: IntoDatum + FromDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn insert(name: &str, table: &str, condition: &str, schedule: &str) -> String {
        let q = |s: &str| pgrx::spi::quote_literal(s);
        format!(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ({}, {}, {}, {})",
            q(name),
            q(table),
            q(condition),
            q(schedule)
        )
    }

    fn fixtures() {
        run("CREATE TABLE public.refresh_tokens (id bigserial PRIMARY KEY, user_id bigint, revoked boolean NOT NULL DEFAULT false, expires_at timestamptz NOT NULL)");
        run("INSERT INTO public.refresh_tokens (user_id, revoked, expires_at) \
             SELECT g, g % 10 = 0, now() + CASE WHEN g % 2 = 0 THEN interval '-1 day' ELSE interval '1 day' END \
             FROM generate_series(1, 100) g");
        run("CREATE SCHEMA dbo");
        run("CREATE TABLE dbo.\"ClientAccessTokens\" (\"Id\" serial, \"Expiration\" timestamptz)");
        run("CREATE TABLE public.secrets (id int)");
        run("CREATE VIEW public.token_view AS SELECT * FROM public.refresh_tokens");
        run("CREATE TABLE public.parted (id int, t timestamptz) PARTITION BY RANGE (t)");
        run("CREATE ROLE tc_alice");
        run("CREATE ROLE tc_bob");
        run("GRANT SELECT, DELETE ON public.refresh_tokens TO tc_alice, tc_bob");
        run("GRANT USAGE ON SCHEMA dbo TO tc_alice");
        run("REVOKE ALL ON public.secrets FROM PUBLIC");
    }

    #[pg_test]
    fn valid_rules_are_stored_with_canonical_table_names() {
        fixtures();
        run(&insert(
            "refresh",
            "refresh_tokens",
            "revoked OR expires_at < now()",
            "0 3 * * *",
        ));
        run(&insert(
            "edfi",
            "dbo.\"ClientAccessTokens\"",
            "\"Expiration\" < now()",
            "0 0/30 * 1/1 * ? *",
        ));
        assert_eq!(
            one::<String>("SELECT table_name FROM token_cleanup.rules WHERE name = 'refresh'")
                .unwrap(),
            "public.refresh_tokens"
        );
        assert_eq!(
            one::<String>("SELECT table_name FROM token_cleanup.rules WHERE name = 'edfi'")
                .unwrap(),
            "dbo.\"ClientAccessTokens\""
        );
        assert_eq!(
            one::<String>("SELECT owner::text FROM token_cleanup.rules WHERE name = 'refresh'")
                .unwrap(),
            one::<String>("SELECT current_user::text").unwrap()
        );
        assert_eq!(one::<bool>("SELECT enabled AND batch_size IS NULL FROM token_cleanup.rules WHERE name = 'refresh'"), Some(true));
    }

    #[pg_test]
    fn bad_schedules_are_refused_with_the_field_named() {
        fixtures();
        let cases = [
            ("61 * * * *", "invalid schedule \"61 * * * *\" for rule \"r\": minute field \"61\": 61 is out of range 0-59"),
            ("* * 32 * *", "invalid schedule \"* * 32 * *\" for rule \"r\": day-of-month field \"32\": 32 is out of range 1-31"),
            ("0 0 30 2 *", "invalid schedule \"0 0 30 2 *\" for rule \"r\": schedule never fires"),
            ("", "invalid schedule \"\" for rule \"r\": schedule is empty"),
            ("every day", "invalid schedule \"every day\" for rule \"r\": schedule has 2 fields; expected 5, 6 or 7"),
            ("@often", "invalid schedule \"@often\" for rule \"r\": unknown schedule macro \"@often\""),
        ];
        for (schedule, message) in cases {
            assert_eq!(
                error_of(&insert("r", "public.refresh_tokens", "true", schedule)),
                message
            );
        }
        let long = format!("{} * * * *", "1,".repeat(120) + "1");
        assert!(
            error_of(&insert("r", "public.refresh_tokens", "true", &long))
                .ends_with("at most 200 are allowed")
        );
    }

    #[pg_test]
    fn bad_tables_are_refused() {
        fixtures();
        let cases = [
            (
                "public.nope",
                "table \"public.nope\" of rule \"r\" does not exist",
            ),
            (
                "public.token_view",
                "table_name public.token_view of rule \"r\" is a view, not a table",
            ),
            (
                "pg_catalog.pg_class",
                "table_name pg_catalog.pg_class of rule \"r\" is a system catalog",
            ),
            (
                "token_cleanup.runs",
                "table_name token_cleanup.runs of rule \"r\" belongs to pg_token_cleanup",
            ),
            (
                "dbo.ClientAccessTokens",
                "table \"dbo.ClientAccessTokens\" of rule \"r\" does not exist",
            ),
        ];
        for (table, message) in cases {
            assert_eq!(
                error_of(&insert("r", table, "true", "@daily")),
                message,
                "{table}"
            );
        }
        run("CREATE TEMP TABLE tmp_tokens (id int)");
        assert!(error_of(&insert("r", "tmp_tokens", "true", "@daily"))
            .ends_with("is a temporary table"));
        // A partitioned table is a rule's table like any other; drop_partitions needs one.
        run(&insert("parted", "public.parted", "true", "@daily"));
        assert_eq!(
            error_of("INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, drop_partitions) \
                      VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 'drop')"),
            "drop_partitions 'drop' of rule \"r\" needs a partitioned table; public.refresh_tokens is not one"
        );
        assert_eq!(
            error_of("INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, drop_partitions) \
                      VALUES ('r', 'public.parted', 'true', '@daily', 'truncate')"),
            "invalid drop_partitions \"truncate\" for rule \"r\""
        );
    }

    #[pg_test]
    fn bad_conditions_are_refused() {
        fixtures();
        let prefix = "invalid condition for rule \"r\": ";
        let cases = [
            (
                "true; DROP TABLE public.refresh_tokens",
                "it contains ';' at character 5 (a condition is one expression, not statements)",
            ),
            (
                "true) FROM pg_class WHERE (true",
                "the ')' at character 5 closes a parenthesis the condition did not open",
            ),
            (
                "true) UNION SELECT (1",
                "the ')' at character 5 closes a parenthesis the condition did not open",
            ),
            (
                "true) ORDER BY (1",
                "the ')' at character 5 closes a parenthesis the condition did not open",
            ),
            (
                "user_id + 1",
                "argument of WHERE must be type boolean, not type bigint",
            ),
            (
                "no_such_column < now()",
                "column \"no_such_column\" does not exist",
            ),
            (
                "expires_at < now() /*",
                "unterminated /* comment at or near \"/*\"",
            ),
            (
                "expires_at < 'now",
                "unterminated quoted string at or near \"'now\"",
            ),
            (
                "$$x",
                "unterminated dollar-quoted string at or near \"$$x\"",
            ),
            (
                "count(*) > 0",
                "aggregate functions are not allowed in WHERE",
            ),
            ("", "it is empty"),
            ("(revoked", "a '(' is never closed"),
            (
                "revoked) OR (true",
                "the ')' at character 8 closes a parenthesis the condition did not open",
            ),
        ];
        for (condition, message) in cases {
            assert_eq!(
                error_of(&insert("r", "public.refresh_tokens", condition, "@daily")),
                format!("{prefix}{message}"),
                "{condition}"
            );
        }
        // A trailing comment cannot swallow the closing parenthesis: the newline ends it.
        run(&insert(
            "commented",
            "public.refresh_tokens",
            "revoked -- old ones",
            "@daily",
        ));
    }

    #[pg_test]
    fn conditions_are_checked_with_the_owners_privileges() {
        fixtures();
        run("CREATE FUNCTION public.secret_check() RETURNS boolean LANGUAGE sql AS 'SELECT true'");
        run("REVOKE EXECUTE ON FUNCTION public.secret_check() FROM PUBLIC");
        run("SET ROLE tc_alice");
        assert_eq!(
            error_of(&insert(
                "r",
                "public.refresh_tokens",
                "user_id IN (SELECT id FROM public.secrets)",
                "@daily"
            )),
            "invalid condition for rule \"r\": permission denied for table secrets"
        );
        assert_eq!(
            error_of(&insert(
                "r",
                "public.refresh_tokens",
                "public.secret_check()",
                "@daily"
            )),
            "invalid condition for rule \"r\": permission denied for function secret_check"
        );
        run("RESET ROLE");
    }

    #[pg_test]
    fn batch_sizes_timeouts_and_rates_are_range_checked() {
        fixtures();
        for size in ["0", "-5", "2000000"] {
            let sql = format!(
                "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) \
                 VALUES ('r', 'public.refresh_tokens', 'true', '@daily', {size})"
            );
            assert_eq!(
                error_of(&sql),
                format!("batch_size {size} of rule \"r\" is out of range 1-1000000")
            );
        }
        assert_eq!(
            error_of("INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, lock_timeout) \
                      VALUES ('r', 'public.refresh_tokens', 'true', '@daily', '-1 s')"),
            "lock_timeout of rule \"r\" must be between 0 and 24 days, got -1 seconds"
        );
        assert_eq!(
            error_of("INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, max_rows_per_second) \
                      VALUES ('r', 'public.refresh_tokens', 'true', '@daily', -1)"),
            "max_rows_per_second -1 of rule \"r\" is negative"
        );
        assert_eq!(
            error_of("INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, max_run_duration) \
                      VALUES ('r', 'public.refresh_tokens', 'true', '@daily', '0 s')"),
            "max_run_duration of rule \"r\" must be positive, got 0 seconds"
        );
        assert_eq!(
            error_of("INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, timezone) \
                      VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 'Mars/Olympus')"),
            "invalid timezone \"Mars/Olympus\" for rule \"r\""
        );
        run(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_rows_per_second, \
                                              max_run_duration, timezone) \
             VALUES ('ok', 'public.refresh_tokens', 'true', '@daily', 100, 0, '10 minutes', 'America/New_York')",
        );
        // rule_stats evaluates the schedule in the rule's time zone: midnight in New York.
        assert_eq!(
            one::<String>(
                "SELECT to_char(next_run_at AT TIME ZONE 'America/New_York', 'HH24:MI') \
                   FROM token_cleanup.rule_stats WHERE rule = 'ok'"
            ),
            Some("00:00".into())
        );
    }

    #[pg_test]
    fn nulls_are_refused_by_field() {
        fixtures();
        for field in ["name", "table_name", "condition", "schedule", "owner"] {
            let sql = format!(
                "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) \
                 VALUES ('r', 'public.refresh_tokens', 'true', '@daily'); \
                 UPDATE token_cleanup.rules SET {field} = NULL WHERE name = 'r'"
            );
            assert_eq!(
                error_of(&sql),
                format!("rule field \"{field}\" must not be NULL")
            );
        }
    }

    #[pg_test]
    fn owners_and_privileges() {
        fixtures();
        // A superuser may name another owner, who must hold DELETE.
        run(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner) \
             VALUES ('alices', 'public.refresh_tokens', 'revoked', '@daily', 'tc_alice')",
        );
        assert_eq!(
            error_of("INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner) \
                      VALUES ('r', 'dbo.\"ClientAccessTokens\"', 'true', '@daily', 'tc_alice')"),
            "owner \"tc_alice\" of rule \"r\" has no DELETE privilege on table dbo.\"ClientAccessTokens\""
        );
        assert_eq!(
            error_of(
                "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner) \
                      VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 'tc_nobody')"
            ),
            "owner role \"tc_nobody\" of rule \"r\" does not exist"
        );
        // A non-superuser may not.
        run("SET ROLE tc_bob");
        assert_eq!(
            error_of(
                "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner) \
                      VALUES ('r', 'public.refresh_tokens', 'true', '@daily', 'tc_alice')"
            ),
            "permission denied to make role \"tc_alice\" the owner of rule \"r\""
        );
        run(&insert(
            "bobs",
            "public.refresh_tokens",
            "revoked",
            "@daily",
        ));
        // Row-level security: bob sees only his rule, and cannot change or take alice's.
        assert_eq!(
            one::<i64>("SELECT count(*) FROM token_cleanup.rules"),
            Some(1)
        );
        assert_eq!(
            one::<String>("SELECT name FROM token_cleanup.rules"),
            Some("bobs".into())
        );
        run("UPDATE token_cleanup.rules SET enabled = false WHERE name = 'alices'");
        assert_eq!(
            error_of("UPDATE token_cleanup.rules SET owner = 'tc_alice' WHERE name = 'bobs'"),
            "permission denied to make role \"tc_alice\" the owner of rule \"bobs\""
        );
        assert_eq!(
            error_of("SELECT * FROM token_cleanup.preview('alices')"),
            "rule \"alices\" does not exist"
        );
        run("RESET ROLE");
        assert_eq!(
            one::<bool>("SELECT enabled FROM token_cleanup.rules WHERE name = 'alices'"),
            Some(true)
        );
        // Bob cannot target a table he may not delete from.
        run("SET ROLE tc_bob");
        assert_eq!(
            error_of(&insert("r", "public.secrets", "true", "@daily")),
            "owner \"tc_bob\" of rule \"r\" has no DELETE privilege on table public.secrets"
        );
        run("RESET ROLE");
    }

    #[pg_test]
    fn updates_keep_id_and_created_at_and_revalidate() {
        fixtures();
        run(&insert("r", "public.refresh_tokens", "revoked", "@daily"));
        run("UPDATE token_cleanup.rules SET id = 999, created_at = '2000-01-01', schedule = '@hourly' WHERE name = 'r'");
        assert_eq!(one::<bool>("SELECT id <> 999 AND created_at > '2001-01-01' FROM token_cleanup.rules WHERE name = 'r'"), Some(true));
        assert_eq!(
            error_of("UPDATE token_cleanup.rules SET schedule = '* * * * 8' WHERE name = 'r'"),
            "invalid schedule \"* * * * 8\" for rule \"r\": day-of-week field \"8\": 8 is out of range 0-7"
        );
    }

    #[pg_test]
    fn preview_counts_matching_rows_and_deletes_nothing() {
        fixtures();
        run(&insert(
            "r",
            "public.refresh_tokens",
            "revoked OR expires_at < now()",
            "@daily",
        ));
        // Even ids expired a day ago (50 rows); the revoked ones (multiples of 10) are among them.
        let expected = one::<i64>(
            "SELECT count(*) FROM public.refresh_tokens WHERE revoked OR expires_at < now()",
        )
        .unwrap();
        assert_eq!(expected, 50);
        assert_eq!(
            one::<i64>("SELECT matching_rows FROM token_cleanup.preview('r')"),
            Some(expected)
        );
        assert_eq!(
            one::<i64>("SELECT batches FROM token_cleanup.preview('r')"),
            Some(1)
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM public.refresh_tokens"),
            Some(100)
        );
        assert_eq!(
            error_of("SELECT * FROM token_cleanup.preview('missing')"),
            "rule \"missing\" does not exist"
        );
    }

    #[pg_test]
    fn conditions_ignore_search_path_shadowing() {
        fixtures();
        run("CREATE SCHEMA evil");
        run("CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$");
        run("SET search_path = evil, pg_catalog, public");
        run(&insert(
            "r",
            "refresh_tokens",
            "expires_at < now()",
            "@daily",
        ));
        // With evil.now() every row would match; the rule uses pg_catalog.now().
        assert_eq!(
            one::<i64>("SELECT matching_rows FROM token_cleanup.preview('r')"),
            Some(50)
        );
    }

    #[pg_test]
    fn next_runs_lists_fire_times() {
        let times = Spi::connect(|c| {
            c.select(
                "SELECT t::text FROM token_cleanup.next_runs('0 3 * * 1-5', '2026-01-02 23:00:00+00', 3) t",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect::<Vec<_>>()
        });
        let times: Vec<&str> = times.iter().map(|t| &t[..19]).collect();
        assert_eq!(
            times,
            [
                "2026-01-05 03:00:00",
                "2026-01-06 03:00:00",
                "2026-01-07 03:00:00"
            ]
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM token_cleanup.next_runs('@hourly')"),
            Some(5)
        );
        assert_eq!(
            error_of("SELECT * FROM token_cleanup.next_runs('61 * * * *', now(), 3)"),
            "invalid schedule \"61 * * * *\": minute field \"61\": 61 is out of range 0-59"
        );
        assert_eq!(
            error_of("SELECT * FROM token_cleanup.next_runs('@daily', now(), -1)"),
            "n = -1 is out of range 0-10000"
        );
    }

    #[pg_test]
    fn rule_stats_lists_every_rule() {
        fixtures();
        run(&insert("r1", "public.refresh_tokens", "revoked", "@daily"));
        run(&insert("r2", "public.refresh_tokens", "revoked", "@hourly"));
        run("UPDATE token_cleanup.rules SET enabled = false WHERE name = 'r2'");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM token_cleanup.rule_stats"),
            Some(2)
        );
        assert_eq!(one::<bool>("SELECT next_run_at > now() AND runs = 0 FROM token_cleanup.rule_stats WHERE rule = 'r1'"), Some(true));
        assert_eq!(
            one::<bool>(
                "SELECT next_run_at IS NULL FROM token_cleanup.rule_stats WHERE rule = 'r2'"
            ),
            Some(true)
        );
    }

    #[pg_test]
    fn run_refuses_unknown_and_uncommitted_rules() {
        assert_eq!(
            error_of("SELECT * FROM token_cleanup.run('missing')"),
            "rule \"missing\" does not exist"
        );
        fixtures();
        run(&insert("r", "public.refresh_tokens", "revoked", "@daily"));
        // A run commits in its own transactions: a rule this transaction has not committed is refused.
        assert_eq!(
            error_of("SELECT * FROM token_cleanup.run('r')"),
            "rule \"r\" has changes this transaction has not committed"
        );
    }
}
