//! What operators need around a purge, end to end against live clusters with real
//! commits, as an application role: archive before delete, blast-radius limits, NOTIFY, retries,
//! lifetime counters, metrics, explain() and live progress; each with its failure paths.

use crate::common::error_of;

use crate::common::{count, wait_for, Cluster};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::time::Duration;

/// An application role with CREATE on `app` and a schema of its own.
fn app_role(cluster: &Cluster, role: &str) -> Client {
    cluster
        .connect("app")
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE app TO {role};"
        ))
        .unwrap();
    let mut client = cluster.connect_as("app", role);
    client
        .batch_execute(&format!("CREATE SCHEMA {role}"))
        .unwrap();
    client
}

fn tokens(client: &mut Client, table: &str, expired: i64, live: i64) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, token text NOT NULL, expires_at timestamptz NOT NULL);
             INSERT INTO {table} SELECT g, md5(g::text), pg_catalog.now() - interval '1 day' FROM generate_series(1, {expired}) g;
             INSERT INTO {table} SELECT g, md5(g::text), pg_catalog.now() + interval '1 day'
               FROM generate_series({expired} + 1, {expired} + {live}) g;"
        ))
        .unwrap();
}

fn insert_rule(client: &mut Client, columns: &str, values: &str) -> Result<u64, postgres::Error> {
    client.execute(
        &format!("INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, {columns}) VALUES ({values})"),
        &[],
    )
}

#[test]
fn archive_moves_rows_and_refuses_archives_that_do_not_fit() {
    let cluster = Cluster::start("ops_archive", &["pg_token_cleanup.enabled = off"]);
    drop(cluster.database_with_extension("app"));
    let mut alice = app_role(&cluster, "alice");
    tokens(&mut alice, "alice.tokens", 3_000, 500);
    let original = count(
        &mut alice,
        "SELECT sum(hashtext(id::text || token))::int8 FROM alice.tokens",
    );
    alice
        .batch_execute(
            "CREATE TABLE alice.archive (archived_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz, token text, id bigint);
             CREATE TABLE alice.narrow (id bigint, token text);
             CREATE TABLE alice.strict (id bigint, token text, expires_at timestamptz, reason text NOT NULL);",
        )
        .unwrap();
    // An archive that lacks a column, or has a NOT NULL column without a default, is refused.
    assert_eq!(
        error_of(insert_rule(&mut alice, "archive_table", "'n', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 'alice.narrow'")),
        "archive_table alice.narrow of rule \"n\" does not fit table alice.tokens: it has no column \"expires_at\""
    );
    assert_eq!(
        error_of(insert_rule(&mut alice, "archive_table", "'s', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 'alice.strict'")),
        "archive_table alice.strict of rule \"s\" does not fit table alice.tokens: its column \"reason\" is NOT NULL without a default, and the source has no such column"
    );
    // An archive the owner may not insert into is refused.
    cluster
        .connect("app")
        .batch_execute("CREATE TABLE public.foreign_archive (id bigint, token text, expires_at timestamptz); GRANT SELECT ON public.foreign_archive TO alice")
        .unwrap();
    assert_eq!(
        error_of(insert_rule(&mut alice, "archive_table", "'f', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 'public.foreign_archive'")),
        "role \"alice\", as whom rule \"f\" runs, has no INSERT privilege on archive_table public.foreign_archive"
    );
    // Columns matched by name, in any order; the archive's own column gets its default.
    insert_rule(
        &mut alice,
        "archive_table, batch_size",
        "'moved', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 'alice.archive', 700",
    )
    .unwrap();
    let row = alice
        .query_one(
            "SELECT status, rows_deleted FROM token_cleanup.run('moved')",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("succeeded".into(), 3_000)
    );
    assert_eq!(
        count(
            &mut alice,
            "SELECT count(*) FROM alice.archive WHERE archived_at IS NOT NULL"
        ),
        3_000
    );
    assert_eq!(count(&mut alice, "SELECT count(*) FROM alice.tokens"), 500);
    let after = count(
        &mut alice,
        "SELECT sum(h)::int8 FROM (SELECT hashtext(id::text || token) h FROM alice.tokens UNION ALL SELECT hashtext(id::text || token) FROM alice.archive) u",
    );
    assert_eq!(
        after, original,
        "source ∪ archive must be the original rows"
    );
    // The same through an index (the other way a run finds rows).
    alice
        .batch_execute(
            "CREATE INDEX ON alice.tokens (expires_at); ANALYZE alice.tokens;
             UPDATE alice.tokens SET expires_at = pg_catalog.now() - interval '1 hour' WHERE id > 3490;",
        )
        .unwrap();
    let row = alice
        .query_one("SELECT rows_deleted FROM token_cleanup.run('moved')", &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10);
    assert_eq!(
        count(&mut alice, "SELECT count(*) FROM alice.archive"),
        3_010
    );
    // A privilege revoked later fails the run, with its error, and deletes nothing.
    alice
        .batch_execute(
            "UPDATE alice.tokens SET expires_at = pg_catalog.now() - interval '1 hour' WHERE id > 3480;
             REVOKE INSERT ON alice.archive FROM alice;",
        )
        .unwrap();
    let message = error_of(alice.query("SELECT * FROM token_cleanup.run('moved')", &[]));
    assert!(
        message.contains("has no INSERT privilege on archive_table alice.archive"),
        "{message}"
    );
    assert_eq!(count(&mut alice, "SELECT count(*) FROM alice.tokens"), 490);
}

#[test]
fn blast_radius_limits_refuse_a_run_and_delete_nothing() {
    let cluster = Cluster::start("ops_limits", &["pg_token_cleanup.enabled = off"]);
    drop(cluster.database_with_extension("app"));
    let mut alice = app_role(&cluster, "alice");
    tokens(&mut alice, "alice.tokens", 600, 400);
    alice
        .batch_execute("CREATE INDEX ON alice.tokens (expires_at); ANALYZE alice.tokens")
        .unwrap();
    insert_rule(
        &mut alice,
        "max_rows_per_run",
        "'capped', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 500",
    )
    .unwrap();
    let message = error_of(alice.query("SELECT * FROM token_cleanup.run('capped')", &[]));
    assert!(message.starts_with("run "), "{message}");
    assert!(
        message.ends_with("refused: refused: the run would delete 600 rows (the planner's estimate), more than max_rows_per_run 500 of rule \"capped\"; nothing was deleted")
            || message.ends_with("refused: refused: the run would delete 600 rows (counted), more than max_rows_per_run 500 of rule \"capped\"; nothing was deleted"),
        "{message}"
    );
    assert_eq!(
        count(&mut alice, "SELECT count(*) FROM alice.tokens"),
        1_000
    );
    assert_eq!(
        count(&mut alice, "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'capped' AND status = 'refused' AND sqlstate = '54000'"),
        1
    );
    // A fraction of the live rows: 60% is more than 0.3, and the error says 0.3 as written.
    alice.batch_execute("UPDATE token_cleanup.rules SET max_rows_per_run = NULL, max_fraction = 0.3 WHERE name = 'capped'").unwrap();
    let message = error_of(alice.query("SELECT * FROM token_cleanup.run('capped')", &[]));
    assert!(
        message.contains(
            "of 1000 live rows (60.0%), more than max_fraction 0.3 of rule \"capped\" allows"
        ),
        "{message}"
    );
    assert_eq!(
        count(&mut alice, "SELECT count(*) FROM alice.tokens"),
        1_000
    );
    // The setting applies to rules that set none.
    alice
        .batch_execute("UPDATE token_cleanup.rules SET max_fraction = NULL WHERE name = 'capped'")
        .unwrap();
    let mut admin = cluster.connect("app");
    crate::common::alter_system(&mut admin, "pg_token_cleanup.max_fraction", "0.2");
    std::thread::sleep(Duration::from_millis(500));
    let message = error_of(alice.query("SELECT * FROM token_cleanup.run('capped')", &[]));
    assert!(message.contains("more than max_fraction 0.2"), "{message}");
    // Within the limits, the run goes ahead.
    alice
        .batch_execute("UPDATE token_cleanup.rules SET max_fraction = 0.7 WHERE name = 'capped'")
        .unwrap();
    let row = alice
        .query_one("SELECT rows_deleted FROM token_cleanup.run('capped')", &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 600);
    // Bad limits are refused when the rule is written.
    assert_eq!(
        error_of(insert_rule(
            &mut alice,
            "max_fraction",
            "'bad', 'alice.tokens', 'true', '@daily', 1.5"
        )),
        "max_fraction 1.5 of rule \"bad\" is out of range (0, 1]"
    );
    assert_eq!(
        error_of(insert_rule(
            &mut alice,
            "max_rows_per_run",
            "'bad', 'alice.tokens', 'true', '@daily', 0"
        )),
        "max_rows_per_run 0 of rule \"bad\" must be at least 1"
    );
}

#[test]
fn failures_are_notified_retried_with_backoff_and_counted() {
    let cluster = Cluster::start(
        "ops_retry",
        &[
            "pg_token_cleanup.notify = 'failures'",
            "pg_token_cleanup.retry_backoff = '1s'",
            "pg_token_cleanup.max_retries = 2",
        ],
    );
    drop(cluster.database_with_extension("app"));
    let mut alice = app_role(&cluster, "alice");
    tokens(&mut alice, "alice.tokens", 10, 10);
    let mut listener = cluster.connect_as("app", "alice");
    listener.batch_execute("LISTEN token_cleanup").unwrap();
    // Valid when written, fails when it runs (division by zero on the first row).
    insert_rule(
        &mut alice,
        "max_rows_per_run",
        "'broken', 'alice.tokens', '1 / (id - id) = 0', '*/20 * * * * *', NULL",
    )
    .unwrap();
    wait_for("two retries", Duration::from_secs(40), || {
        (count(&mut alice, "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'broken' AND trigger = 'retry'") >= 2)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let runs: Vec<(String, String, f64)> = alice
        .query(
            "SELECT trigger, status, extract(epoch FROM started_at - lag(started_at) OVER (ORDER BY id))::float8
               FROM token_cleanup.runs WHERE rule_name = 'broken' ORDER BY id LIMIT 3",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get::<_, Option<f64>>(2).unwrap_or(0.0)))
        .collect();
    assert_eq!(runs[0].0, "schedule");
    assert_eq!((runs[1].0.as_str(), runs[2].0.as_str()), ("retry", "retry"));
    assert!(runs.iter().all(|r| r.1 == "failed"));
    // Backoff: about 1 s, then about 2 s (each counted from the end of the failed run).
    assert!((0.9..2.0).contains(&runs[1].2), "{runs:?}");
    assert!((1.9..3.0).contains(&runs[2].2), "{runs:?}");
    // Given up after max_retries: the next run is the next slot.
    assert_eq!(
        count(&mut alice, "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'broken' AND trigger = 'retry'"),
        2
    );
    assert_eq!(
        count(
            &mut alice,
            "SELECT consecutive_failures::int8 FROM token_cleanup.rule_stats WHERE rule = 'broken'"
        ),
        3
    );
    // Each failure was announced, with its SQLSTATE but never its text (which may quote row values;
    // it is in token_cleanup.runs, for the rule's owner only).
    let mut payloads = Vec::new();
    let mut notifications = listener.notifications();
    let mut arriving = notifications.timeout_iter(Duration::from_secs(2));
    while let Ok(Some(n)) = arriving.next() {
        payloads.push(n.payload().to_string());
    }
    assert!(payloads.len() >= 3, "{payloads:?}");
    let first: serde_json::Value = serde_json::from_str(&payloads[0]).unwrap();
    assert_eq!(first["rule"], "broken");
    assert_eq!(first["database"], "app");
    assert_eq!(first["status"], "failed");
    assert_eq!(first["sqlstate"], "22012");
    assert!(first.get("error").is_none(), "{first}");
}

#[test]
fn lifetime_counters_survive_pruning_and_feed_the_metrics() {
    let cluster = Cluster::start("ops_totals", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, "alice");
    tokens(&mut alice, "alice.tokens", 30, 10);
    insert_rule(
        &mut alice,
        "batch_size",
        "'counted', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 10",
    )
    .unwrap();
    for _ in 0..3 {
        alice
            .query("SELECT * FROM token_cleanup.run('counted')", &[])
            .unwrap();
    }
    admin
        .batch_execute("DELETE FROM token_cleanup.runs")
        .unwrap();
    let row = alice
        .query_one("SELECT runs, succeeded, total_rows_deleted::int8, consecutive_failures FROM token_cleanup.rule_stats WHERE rule = 'counted'", &[])
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i32>(3)
        ),
        (3, 3, 30, 0),
        "totals after the history was deleted"
    );
    let metric = |client: &mut Client, name: &str, labels: &str| -> f64 {
        client
            .query_one(
                "SELECT value FROM token_cleanup.metrics WHERE metric = $1 AND labels @> $2::text::jsonb",
                &[&name, &labels],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(
        metric(
            &mut alice,
            "pg_token_cleanup_runs_total",
            r#"{"rule": "counted", "status": "succeeded"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &mut alice,
            "pg_token_cleanup_rows_deleted_total",
            r#"{"rule": "counted"}"#
        ),
        30.0
    );
    assert!(
        metric(
            &mut alice,
            "pg_token_cleanup_last_success_age_seconds",
            r#"{"rule": "counted"}"#
        ) < 60.0
    );
    // The backlog estimate follows the table (the planner's estimate after ANALYZE).
    alice
        .batch_execute("INSERT INTO alice.tokens SELECT g, 'x', now() - interval '1 day' FROM generate_series(1000, 1999) g; ANALYZE alice.tokens")
        .unwrap();
    let backlog = metric(
        &mut alice,
        "pg_token_cleanup_backlog_rows",
        r#"{"rule": "counted"}"#,
    );
    assert!((900.0..1100.0).contains(&backlog), "backlog {backlog}");
    // Another role sees none of alice's metrics.
    let mut bob = app_role(&cluster, "bob");
    assert_eq!(
        count(
            &mut bob,
            "SELECT count(*) FROM token_cleanup.metrics WHERE labels ? 'rule'"
        ),
        0
    );
}

#[test]
fn explain_says_what_a_run_would_do_and_which_index_would_help() {
    let cluster = Cluster::start("ops_explain", &["pg_token_cleanup.enabled = off"]);
    drop(cluster.database_with_extension("app"));
    let mut alice = app_role(&cluster, "alice");
    tokens(&mut alice, "alice.tokens", 2_000, 198_000);
    alice.batch_execute("ANALYZE alice.tokens").unwrap();
    insert_rule(
        &mut alice,
        "batch_size",
        "'big', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 1000",
    )
    .unwrap();
    let row = alice.query_one("SELECT method, reason, estimated_rows, live_rows, table_pages, index_advice FROM token_cleanup.explain('big')", &[]).unwrap();
    assert_eq!(row.get::<_, String>(0), "table walk");
    assert!(row
        .get::<_, String>(1)
        .starts_with("the planner would read the whole table (Seq Scan)"));
    let estimated: i64 = row.get(2);
    assert!((1_000..4_000).contains(&estimated), "{estimated}");
    assert_eq!(row.get::<_, i64>(3), 200_000);
    assert!(row.get::<_, i64>(4) > 1024);
    assert_eq!(
        row.get::<_, Option<String>>(5).as_deref(),
        Some("no index serves the condition and it matches few of the table's rows: CREATE INDEX CONCURRENTLY ON alice.tokens (expires_at);")
    );
    // With the index, the run would use it, and no advice is given.
    alice
        .batch_execute("CREATE INDEX ON alice.tokens (expires_at); ANALYZE alice.tokens")
        .unwrap();
    let row = alice
        .query_one(
            "SELECT method, reason, index_advice FROM token_cleanup.explain('big')",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "index");
    assert!(
        row.get::<_, String>(1).contains("tokens_expires_at_idx"),
        "{}",
        row.get::<_, String>(1)
    );
    assert_eq!(row.get::<_, Option<String>>(2), None);
    // After a run, the expected duration comes from its rate.
    alice
        .query("SELECT * FROM token_cleanup.run('big')", &[])
        .unwrap();
    alice.batch_execute("UPDATE alice.tokens SET expires_at = now() - interval '1 day' WHERE id <= 5000; ANALYZE alice.tokens").unwrap();
    let expected: Option<String> = alice
        .query_one(
            "SELECT expected_duration::text FROM token_cleanup.explain('big')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(expected.is_some());
    assert_eq!(
        error_of(alice.query("SELECT * FROM token_cleanup.explain('nope')", &[])),
        "rule \"nope\" does not exist"
    );
}

#[test]
fn a_running_run_shows_its_progress() {
    let cluster = Cluster::start("ops_progress", &[]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, "alice");
    tokens(&mut alice, "alice.tokens", 5_000, 10);
    insert_rule(
        &mut alice,
        "batch_size, max_rows_per_second",
        "'slow', 'alice.tokens', 'expires_at < pg_catalog.now()', '* * * * * *', 100, 1000",
    )
    .unwrap();
    let (rows, per_second) = wait_for(
        "a run in progress with rows deleted",
        Duration::from_secs(10),
        || {
            alice
            .query_opt("SELECT rows_deleted, rows_per_second::float8 FROM token_cleanup.progress WHERE rule = 'slow' AND rows_deleted > 0", &[])
            .unwrap()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, f64>(1)))
        },
    );
    assert!(rows > 0 && per_second > 0.0);
    let activity: String = wait_for("the runner's activity", Duration::from_secs(5), || {
        admin
            .query_opt("SELECT query FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup runner' AND query LIKE 'pg_token_cleanup: rule slow%batch%'", &[])
            .unwrap()
            .map(|r| r.get(0))
    });
    assert!(activity.contains(" rows"), "{activity}");
    // Another role sees nothing of it.
    let mut bob = app_role(&cluster, "bob");
    assert_eq!(
        count(&mut bob, "SELECT count(*) FROM token_cleanup.progress"),
        0
    );
}

#[test]
fn partitioned_tables_are_cleaned_leaf_by_leaf_and_whole_expired_leaves_removed() {
    let cluster = Cluster::start("ops_partitions", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, "alice");
    alice
        .batch_execute(
            "CREATE TABLE alice.sessions (id bigint, expires_at timestamptz NOT NULL) PARTITION BY RANGE (expires_at);
             CREATE TABLE alice.sessions_old1 PARTITION OF alice.sessions FOR VALUES FROM ('2000-01-01') TO ('2000-02-01');
             CREATE TABLE alice.sessions_old2 PARTITION OF alice.sessions FOR VALUES FROM ('2000-02-01') TO ('2000-03-01');
             CREATE TABLE alice.sessions_mixed PARTITION OF alice.sessions FOR VALUES FROM ('2000-03-01') TO ('2100-01-01');
             INSERT INTO alice.sessions SELECT g, '2000-01-15' FROM generate_series(1, 100) g;
             INSERT INTO alice.sessions SELECT g, '2000-02-15' FROM generate_series(101, 200) g;
             INSERT INTO alice.sessions SELECT g, now() - interval '1 day' FROM generate_series(201, 250) g;
             INSERT INTO alice.sessions SELECT g, now() + interval '1 day' FROM generate_series(251, 300) g;",
        )
        .unwrap();
    // A leaf alice does not own (created by the DBA, DELETE granted): deleted row by row.
    admin
        .batch_execute(
            "CREATE TABLE alice.sessions_old0 PARTITION OF alice.sessions FOR VALUES FROM ('1999-12-01') TO ('2000-01-01');
             GRANT SELECT, DELETE ON alice.sessions_old0 TO alice;
             INSERT INTO alice.sessions_old0 SELECT g, '1999-12-15' FROM generate_series(301, 310) g;",
        )
        .unwrap();
    insert_rule(
        &mut alice,
        "drop_partitions, lock_timeout",
        "'expired', 'alice.sessions', 'expires_at < pg_catalog.now()', '@daily', 'drop', '1s'",
    )
    .unwrap();
    // Another session reads old2 meanwhile: its lock is not granted within lock_timeout.
    let mut reader = cluster.connect_as("app", "alice");
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM alice.sessions_old2")
        .unwrap();
    alice
        .query("SELECT * FROM token_cleanup.run('expired')", &[])
        .unwrap();
    reader.batch_execute("COMMIT").unwrap();
    let run = alice
        .query_one(
            "SELECT rows_deleted, partitions_dropped, partitions::text FROM token_cleanup.runs WHERE rule_name = 'expired' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap();
    let (rows, dropped): (i64, i32) = (run.get(0), run.get(1));
    let partitions: serde_json::Value = serde_json::from_str(run.get(2)).unwrap();
    assert_eq!(rows, 260, "{partitions}");
    assert_eq!(dropped, 1, "{partitions}");
    assert_eq!(partitions["alice.sessions_old1"]["action"], "dropped");
    assert_eq!(partitions["alice.sessions_old1"]["rows"], 100);
    assert_eq!(
        partitions["alice.sessions_old2"]["action"], "deleted",
        "locked: row by row"
    );
    assert_eq!(
        partitions["alice.sessions_old0"]["action"], "deleted",
        "not owned: row by row"
    );
    assert_eq!(partitions["alice.sessions_mixed"]["rows"], 50);
    assert_eq!(count(&mut alice, "SELECT count(*) FROM alice.sessions"), 50);
    assert_eq!(
        count(
            &mut alice,
            "SELECT count(*) FROM pg_class WHERE relname = 'sessions_old1'"
        ),
        0
    );
    assert_eq!(
        count(
            &mut alice,
            "SELECT count(*) FROM pg_class WHERE relname = 'sessions_old2'"
        ),
        1
    );
    // Detach keeps the expired partition's rows as a table of their own.
    alice
        .batch_execute(
            "CREATE TABLE alice.sessions_old3 PARTITION OF alice.sessions FOR VALUES FROM ('1999-11-01') TO ('1999-12-01');
             INSERT INTO alice.sessions SELECT g, '1999-11-15' FROM generate_series(401, 420) g;
             UPDATE token_cleanup.rules SET drop_partitions = 'detach' WHERE name = 'expired';",
        )
        .unwrap();
    let row = alice
        .query_one("SELECT rows_deleted FROM token_cleanup.run('expired')", &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 20);
    assert_eq!(
        count(&mut alice, "SELECT count(*) FROM alice.sessions_old3"),
        20
    );
    assert_eq!(
        count(
            &mut alice,
            "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'alice.sessions_old3'::regclass"
        ),
        0
    );
    assert_eq!(count(&mut alice, "SELECT count(*) FROM alice.sessions"), 50);
}

#[test]
fn history_stays_bounded_and_lifetime_counters_stay_exact() {
    let cluster = Cluster::start(
        "ops_history",
        &[
            "pg_token_cleanup.enabled = off",
            "pg_token_cleanup.log_runs = 'nonzero'",
            "pg_token_cleanup.history_per_rule = 2",
        ],
    );
    drop(cluster.database_with_extension("app"));
    let mut alice = app_role(&cluster, "alice");
    tokens(&mut alice, "alice.tokens", 0, 5);
    insert_rule(
        &mut alice,
        "batch_size",
        "'bounded', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 10",
    )
    .unwrap();
    let run = |client: &mut Client| {
        client
            .query_one("SELECT status FROM token_cleanup.run('bounded')", &[])
            .map(|r| r.get::<_, String>(0))
    };
    let kept = |client: &mut Client, filter: &str| {
        count(
            client,
            &format!(
                "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'bounded' AND {filter}"
            ),
        )
    };
    // Five runs that find nothing: only the newest stays (log_runs = nonzero), and none is logged.
    for _ in 0..5 {
        assert_eq!(run(&mut alice).unwrap(), "succeeded");
    }
    assert_eq!(kept(&mut alice, "true"), 1);
    // Four runs that delete a row each: the newest two stay (history_per_rule = 2), all logged.
    for i in 0..4 {
        alice
            .execute(
                "INSERT INTO alice.tokens VALUES ($1, 'x', pg_catalog.now() - interval '1 day')",
                &[&(100 + i as i64)],
            )
            .unwrap();
        assert_eq!(run(&mut alice).unwrap(), "succeeded");
    }
    assert_eq!(kept(&mut alice, "rows_deleted = 1"), 2);
    assert_eq!(kept(&mut alice, "rows_deleted = 0"), 0);
    // Three failures: the newest two stay.
    alice
        .batch_execute("REVOKE DELETE ON alice.tokens FROM alice")
        .unwrap();
    for _ in 0..3 {
        assert!(run(&mut alice).is_err());
    }
    assert_eq!(kept(&mut alice, "status = 'failed'"), 2);
    // The lifetime counters count every run.
    let totals = alice
        .query_one(
            "SELECT runs, succeeded, failed, rows_deleted FROM token_cleanup.rule_totals WHERE rule_name = 'bounded'",
            &[],
        )
        .unwrap();
    let totals: (i64, i64, i64, i64) = (totals.get(0), totals.get(1), totals.get(2), totals.get(3));
    assert_eq!(totals, (12, 9, 3, 4));
    // Logged: the four runs that deleted rows and the three failures, not the five empty runs.
    let logged = cluster.log().matches("rule \"bounded\" run ").count();
    assert_eq!(logged, 7, "{}", cluster.log());
}
