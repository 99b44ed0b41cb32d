//! Blast-radius limits over the whole distributed table, rows the application holds, and what is
//! refused with the fix.

use super::*;

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn max_fraction_counts_the_whole_distributed_table_and_refuses() {
    let citus = Citus::start("citus_fraction");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 20_000, 2);
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        None,
    );
    app.batch_execute("UPDATE token_cleanup.rules SET max_fraction = 0.1 WHERE name = 'purge'")
        .unwrap();
    let error = error_of(app.query_one("SELECT * FROM token_cleanup.run('purge')", &[]));
    assert!(
        error.contains("refused: the run would delete")
            && error.contains("more than max_fraction 0.1"),
        "{error}"
    );
    assert_eq!(count(&mut app, "SELECT count(*) FROM tokens"), 20_000);
    // Positive control: the same rule with room for half the table deletes it.
    app.batch_execute("UPDATE token_cleanup.rules SET max_fraction = 0.6 WHERE name = 'purge'")
        .unwrap();
    let (status, rows, _, _) = run_rule(&mut app, "purge");
    assert_eq!((status.as_str(), rows), ("succeeded", 10_000));
    // max_rows_per_run adds the shards up too.
    each(
        &mut app,
        &[
            "INSERT INTO tokens SELECT g, 0, now() - interval '1 day' FROM generate_series(100001, 103000) g",
            "ANALYZE tokens",
            "UPDATE token_cleanup.rules SET max_fraction = NULL, max_rows_per_run = 1000 WHERE name = 'purge'",
        ],
    );
    let error = error_of(app.query_one("SELECT * FROM token_cleanup.run('purge')", &[]));
    assert!(error.contains("more than max_rows_per_run 1000"), "{error}");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        3_000
    );
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn rows_an_application_holds_on_a_worker_are_skipped_and_go_in_the_next_run() {
    let citus = Citus::start("citus_locked");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 10_000, 2);
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        None,
    );
    app.batch_execute("UPDATE token_cleanup.rules SET lock_timeout = '1s' WHERE name = 'purge'")
        .unwrap();
    // The application holds two expired rows (on whichever workers their shards are).
    let mut holder = citus.app();
    each(
        &mut holder,
        &[
            "BEGIN",
            "SELECT * FROM tokens WHERE id = 2 FOR UPDATE",
            "SELECT * FROM tokens WHERE id = 4 FOR UPDATE",
        ],
    );
    let (status, rows, _, _) = run_rule(&mut app, "purge");
    assert_eq!((status.as_str(), rows), ("succeeded", 4_998));
    // The run's LOG line says how many batches met locked rows.
    let log = citus.coordinator.log();
    let line = log
        .lines()
        .find(|l| l.contains("rule \"purge\" run") && l.contains("batches met locked rows"))
        .expect("the run's LOG line");
    let redone: i64 = line
        .rsplit(", ")
        .next()
        .and_then(|tail| tail.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    // Positive control: the batches met the locks and skipped them.
    assert!(redone >= 1, "batches redone with SKIP LOCKED: {redone}");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        2
    );
    holder.batch_execute("COMMIT").unwrap();
    let (status, rows, _, _) = run_rule(&mut app, "purge");
    assert_eq!((status.as_str(), rows), ("succeeded", 2));
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn reference_tables_archives_elsewhere_and_rules_written_on_a_worker_are_refused_with_the_fix() {
    let citus = Citus::start("citus_refused");
    let mut app = citus.app();
    each(
        &mut app,
        &[
            "CREATE TABLE clients (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL)",
            "SELECT create_reference_table('clients')",
        ],
    );
    let error = error_of(app.execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'clients', 'expires_at < now()', '@daily')",
        &[],
    ));
    assert_eq!(
        error,
        "table_name public.clients of rule \"r\" is a Citus reference table"
    );
    distributed_tokens(&mut app, "tokens", 1_000, 2);
    each(
        &mut app,
        &[
            "CREATE TABLE tokens_archive (id bigint PRIMARY KEY, user_id bigint, expires_at timestamptz NOT NULL)",
            "SELECT create_distributed_table('tokens_archive', 'id', shard_count => 4)",
        ],
    );
    let error = error_of(app.execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, archive_table) VALUES ('a', 'tokens', 'expires_at < now()', '@daily', 'tokens_archive')",
        &[],
    ));
    assert_eq!(
        error,
        "archive_table public.tokens_archive of rule \"a\" is not co-located with Citus table public.tokens: each batch moves a shard's rows into the archive's shard on the same node"
    );
    // A worker: the extension is there (Citus copied it), but rules are the coordinator's.
    let mut worker = citus.worker(0);
    let error = error_of(worker.execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('w', 'pg_class', 'true', '@daily')",
        &[],
    ));
    assert_eq!(
        error,
        "this node is a Citus worker: rules are written and run on the coordinator"
    );
}
