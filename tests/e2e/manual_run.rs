//! End-to-end tests of manual runs (`token_cleanup.run()` through a runner worker) against live
//! clusters: the returned run, its record, owner privileges and row-level security between roles,
//! the READ COMMITTED requirement, rows locked by other sessions skipped rather than waited on, and
//! the two ways a run finds its rows (a walk of the table, an index).

use crate::common::{count, live_checksum, token_table, wait_for, Cluster};
use std::time::{Duration, Instant};

#[test]
fn manual_run_returns_the_run_and_records_it() {
    let cluster = Cluster::start("manual", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.device_codes", 1_234, 100);
    db.batch_execute(
        "CREATE ROLE app_cleaner LOGIN;
         GRANT SELECT, DELETE ON public.device_codes TO app_cleaner;
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner, batch_size)
           VALUES ('codes', 'public.device_codes', 'expires_at < now()', '@yearly', 'app_cleaner', 500);",
    )
    .unwrap();
    assert_eq!(
        count(
            &mut db,
            "SELECT matching_rows FROM token_cleanup.preview('codes')"
        ),
        1_234
    );
    let row = db
        .query_one("SELECT status, rows_deleted, batches, finished_at >= started_at FROM token_cleanup.run('codes')", &[])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "succeeded");
    // 1,234 rows in batches of at most 500.
    assert_eq!(row.get::<_, i64>(1), 1_234);
    assert!(
        row.get::<_, i32>(2) >= 3,
        "{} batches",
        row.get::<_, i32>(2)
    );
    assert!(row.get::<_, bool>(3));
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM public.device_codes"),
        100
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM token_cleanup.runs WHERE trigger = 'manual' AND owner = 'app_cleaner'"),
        1
    );
    // run() waits for another process's commits, which a snapshot-isolated transaction cannot see.
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    let err = tx
        .query("SELECT * FROM token_cleanup.run('codes')", &[])
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "token_cleanup.run() cannot be called in a REPEATABLE READ or SERIALIZABLE transaction"
    );
    drop(tx);
    // Revoke the owner's privilege: the run fails with a recorded, clear error; the caller gets it.
    db.batch_execute(
        "REVOKE DELETE ON public.device_codes FROM app_cleaner;
         INSERT INTO public.device_codes VALUES (999999, 0, false, now() - interval '1 day');",
    )
    .unwrap();
    let err = db
        .query("SELECT * FROM token_cleanup.run('codes')", &[])
        .unwrap_err();
    let err = err.as_db_error().expect("a database error");
    assert_eq!(err.code().code(), "42501");
    assert!(
        err.message().contains(
            "role \"app_cleaner\", as whom rule \"codes\" runs, has no DELETE privilege on table public.device_codes"
        ),
        "{}",
        err.message()
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM public.device_codes WHERE id = 999999"
        ),
        1
    );
    // The owner's own session sees its rule and runs; another role sees neither.
    let mut cleaner = {
        let conn = format!(
            "host=127.0.0.1 port={} user=app_cleaner dbname=app",
            cluster.port
        );
        postgres::Client::connect(&conn, postgres::NoTls).unwrap()
    };
    assert_eq!(
        count(&mut cleaner, "SELECT count(*) FROM token_cleanup.runs"),
        2
    );
    db.batch_execute("CREATE ROLE other LOGIN").unwrap();
    let mut other = {
        let conn = format!("host=127.0.0.1 port={} user=other dbname=app", cluster.port);
        postgres::Client::connect(&conn, postgres::NoTls).unwrap()
    };
    assert_eq!(
        count(&mut other, "SELECT count(*) FROM token_cleanup.runs"),
        0
    );
    assert_eq!(
        count(&mut other, "SELECT count(*) FROM token_cleanup.rules"),
        0
    );
    let err = other
        .query("SELECT * FROM token_cleanup.run('codes')", &[])
        .unwrap_err();
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .contains("rule \"codes\" does not exist"));
}

#[test]
fn rows_locked_by_other_sessions_are_skipped_not_waited_on() {
    let cluster = Cluster::start("locked", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.sessions", 1_000, 100);
    db.batch_execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size)
           VALUES ('s', 'public.sessions', 'expires_at < now()', '@yearly', 100)",
    )
    .unwrap();
    let mut holder = cluster.connect("app");
    holder
        .batch_execute("BEGIN; SELECT * FROM public.sessions WHERE id <= 10 FOR UPDATE")
        .unwrap();
    let started = Instant::now();
    let deleted: i64 = db
        .query_one("SELECT rows_deleted FROM token_cleanup.run('s')", &[])
        .unwrap()
        .get(0);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?} for locked rows",
        started.elapsed()
    );
    assert_eq!(deleted, 990);
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM public.sessions WHERE expires_at < now()"
        ),
        10
    );
    holder.batch_execute("COMMIT").unwrap();
    let deleted: i64 = db
        .query_one("SELECT rows_deleted FROM token_cleanup.run('s')", &[])
        .unwrap()
        .get(0);
    assert_eq!(deleted, 10, "the skipped rows go next time");
}

/// Runs `rule` now; returns the rows it deleted, how it found them, and how many batches it took.
/// Count and sum of ids of the rows of `table` that are not revoked: what a rule on `revoked` keeps.
fn not_revoked(db: &mut postgres::Client, table: &str) -> String {
    db.query_one(
        &format!("SELECT count(*)::text || ':' || sum(id)::text FROM {table} WHERE NOT revoked"),
        &[],
    )
    .unwrap()
    .get(0)
}

fn run_now(db: &mut postgres::Client, rule: &str) -> (i64, String, i32) {
    let run = db
        .query_one(
            "SELECT run_id, rows_deleted FROM token_cleanup.run($1)",
            &[&rule],
        )
        .unwrap();
    // A new statement: the runner committed the run's record after run()'s snapshot.
    let record = db
        .query_one(
            "SELECT method, batches FROM token_cleanup.runs WHERE id = $1",
            &[&run.get::<_, i64>(0)],
        )
        .unwrap();
    (run.get(1), record.get(0), record.get(1))
}

#[test]
fn runs_walk_the_table_or_use_an_index_as_the_planner_would_and_keep_to_batch_size() {
    let cluster = Cluster::start("methods", &[]);
    let mut db = cluster.database_with_extension("app");
    // An index on the expiry column and 1% of the rows expired: the planner picks the index.
    token_table(&mut db, "public.sessions", 500, 49_500);
    db.batch_execute(
        "CREATE INDEX ON public.sessions (expires_at);
         ANALYZE public.sessions;
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size)
           VALUES ('sessions', 'public.sessions', 'expires_at < now()', '@yearly', 200);",
    )
    .unwrap();
    let before = live_checksum(&mut db, "public.sessions");
    let (deleted, method, batches) = run_now(&mut db, "sessions");
    assert_eq!(deleted, 500);
    assert_eq!((method.as_str(), batches), ("index", 3));
    assert_eq!(live_checksum(&mut db, "public.sessions"), before);
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM public.sessions"),
        49_500
    );

    // No index serves `revoked`, and the statistics say no row is revoked (analyzed before half of
    // them were): the planner would scan the table, so the run walks it. Its first range is sized
    // for almost no matching rows and spans the whole table, yet no batch deletes more than
    // batch_size rows.
    token_table(&mut db, "public.codes", 0, 20_000);
    db.batch_execute(
        "ALTER TABLE public.codes SET (autovacuum_enabled = off);
         ANALYZE public.codes;
         UPDATE public.codes SET revoked = true WHERE id % 2 = 0;
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size)
           VALUES ('codes', 'public.codes', 'revoked', '@yearly', 100);",
    )
    .unwrap();
    let kept_before = not_revoked(&mut db, "public.codes");
    let (deleted, method, batches) = run_now(&mut db, "codes");
    assert_eq!(deleted, 10_000);
    assert_eq!(method, "table walk");
    assert!(
        batches >= 100,
        "10,000 rows in {batches} batches of at most 100"
    );
    assert_eq!(not_revoked(&mut db, "public.codes"), kept_before);
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM public.codes WHERE revoked"),
        0
    );

    // A rate limit: 2,000 rows at 1,000 rows/s take about two seconds, in pauses between batches.
    token_table(&mut db, "public.resets", 2_000, 100);
    db.batch_execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_rows_per_second)
           VALUES ('resets', 'public.resets', 'expires_at < now()', '@yearly', 100, 1000)",
    )
    .unwrap();
    let started = Instant::now();
    let deleted: i64 = db
        .query_one("SELECT rows_deleted FROM token_cleanup.run('resets')", &[])
        .unwrap()
        .get(0);
    let took = started.elapsed();
    assert_eq!(deleted, 2_000);
    assert!(
        took >= Duration::from_millis(1_850) && took < Duration::from_secs(5),
        "2,000 rows at 1,000 rows/s took {took:?}"
    );
}

#[test]
fn an_index_run_deletes_exactly_the_matching_rows_whatever_its_index_entries_point_at() {
    // The candidates of an index run come from the index alone (no heap read): entries of rows
    // updated in place (HOT: the entry points at the chain's root, the row is elsewhere on the
    // page), of rows deleted or moved out of the condition (dead versions), and rows only part of
    // the condition matches (revoked is not in the index). Each batch must reach exactly the rows
    // matching now.
    let cluster = Cluster::start("index_entries", &["log_min_messages = debug1"]);
    let mut db = cluster.database_with_extension("app");
    db.batch_execute(
        "CREATE TABLE public.sessions (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL,
                                       revoked boolean NOT NULL DEFAULT false, last_used timestamptz)
           WITH (fillfactor = 50, autovacuum_enabled = off);
         INSERT INTO public.sessions
           SELECT g, now() + CASE WHEN g % 50 = 0 THEN -interval '1 day' ELSE interval '1 day' END, false, NULL
             FROM generate_series(1, 100000) g;
         CREATE INDEX ON public.sessions (expires_at);
         ANALYZE public.sessions;
         -- HOT: the expired rows with id % 100 = 0 used again (no indexed column changes).
         UPDATE public.sessions SET last_used = now() WHERE id % 100 = 0;
         -- Dead entries: some expired rows deleted by the application, some extended.
         DELETE FROM public.sessions WHERE id % 350 = 0;
         UPDATE public.sessions SET expires_at = now() + interval '1 day' WHERE id % 250 = 0;
         -- Part of the condition the index cannot check.
         UPDATE public.sessions SET revoked = true WHERE id % 150 = 0;
         -- Owned by an ordinary role with the README's grants: the index scan runs as it.
         CREATE ROLE session_cleaner LOGIN;
         GRANT SELECT, DELETE ON public.sessions TO session_cleaner;
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, owner)
           VALUES ('sessions', 'public.sessions', 'expires_at < now() AND NOT revoked', '@yearly', 300, 'session_cleaner');",
    )
    .unwrap();
    // Positive control: rows were updated in place (HOT).
    wait_for("HOT updates counted", Duration::from_secs(10), || {
        (count(
            &mut db,
            "SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'sessions'",
        ) >= 900)
            .then_some(())
    });
    let matching = count(
        &mut db,
        "SELECT count(*) FROM public.sessions WHERE expires_at < now() AND NOT revoked",
    );
    let kept = |db: &mut postgres::Client| -> String {
        db.query_one(
            "SELECT count(*)::text || ':' || sum(id)::text FROM public.sessions WHERE NOT (expires_at < now() AND NOT revoked)",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let kept_before = kept(&mut db);
    let (deleted, method, _) = run_now(&mut db, "sessions");
    assert_eq!(method, "index");
    assert_eq!(deleted, matching);
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM public.sessions WHERE expires_at < now() AND NOT revoked"
        ),
        0
    );
    assert_eq!(kept(&mut db), kept_before);
    // Positive control: the candidates came from the index alone, dead entries included.
    let log = cluster.log();
    let line = log
        .lines()
        .find(|l| l.contains("candidates from the index of public.sessions alone"))
        .expect("the run took its candidates from the index");
    let candidates: i64 = line
        .split("pg_token_cleanup: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        candidates > matching,
        "{candidates} candidates, {matching} matching"
    );
}

#[test]
fn batches_compress_their_wal_unless_told_to_keep_the_servers_setting() {
    let cluster = Cluster::start("walcompression", &[]);
    let mut db = cluster.database_with_extension("app");
    // lz4 where this build has it (a build option), pglz (always there) otherwise; PostgreSQL 14's
    // wal_compression is on/off (pglz) and any method turns it on there.
    let (server_setting, method): (String, String) = db
        .query_one(
            "SELECT current_setting('wal_compression'), \
                    CASE WHEN 'lz4' = ANY(enumvals) THEN 'lz4' ELSE 'pglz' END \
               FROM pg_settings WHERE name = 'wal_compression'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(server_setting, "off", "this test needs wal_compression off");
    // The WAL of one run over a freshly checkpointed table (so every page it touches writes a
    // full-page image), with the batches' wal_compression as given.
    let mut wal_of_a_run = |mode: &str| -> i64 {
        crate::common::alter_system(&mut db, "pg_token_cleanup.wal_compression", mode);
        // The runner forks from the postmaster: wait until a new process has the setting.
        wait_for(
            "the setting to reach new processes",
            Duration::from_secs(10),
            || {
                let setting: String = cluster
                    .connect("app")
                    .query_one(
                        "SELECT current_setting('pg_token_cleanup.wal_compression')",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                (setting == mode).then_some(())
            },
        );
        db.batch_execute("DROP TABLE IF EXISTS public.grants; DELETE FROM token_cleanup.rules;")
            .unwrap();
        token_table(&mut db, "public.grants", 20_000, 0);
        db.batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
               VALUES ('grants', 'public.grants', 'expires_at < now()', '@yearly');
             CHECKPOINT;",
        )
        .unwrap();
        let start: String = db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(
            count(
                &mut db,
                "SELECT rows_deleted FROM token_cleanup.run('grants')"
            ),
            20_000
        );
        count(
            &mut db,
            &format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start}')::bigint"),
        )
    };
    let uncompressed = wal_of_a_run("server");
    let compressed = wal_of_a_run(&method);
    assert!(
        compressed * 10 < uncompressed * 9,
        "WAL with {method} {compressed} bytes, with the server's setting (off) {uncompressed} bytes"
    );
}

/// A walk's batch is capped by `token_cleanup.within_batch(ctid)`, which any role may call. A
/// condition of an application role that calls it too spends the batch's budget: its batches get
/// smaller (at most half of batch_size; the control, the same number of rows under a condition
/// without the call, takes batches of up to batch_size), but the run ends, and it deletes every
/// matching row and no other.
#[test]
fn a_condition_that_calls_the_batch_cap_itself_only_makes_its_batches_smaller() {
    let cluster = Cluster::start("cap", &[]);
    let mut admin = cluster.database_with_extension("app");
    admin
        .batch_execute("CREATE ROLE app LOGIN; GRANT CREATE ON DATABASE app TO app;")
        .unwrap();
    let mut app = cluster.connect_as("app", "app");
    app.batch_execute("CREATE SCHEMA app").unwrap();
    token_table(&mut app, "app.codes", 0, 20_000);
    app.batch_execute(
        "ALTER TABLE app.codes SET (autovacuum_enabled = off);
         UPDATE app.codes SET revoked = true WHERE id % 2 = 0;
         ANALYZE app.codes;
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) VALUES
           ('control', 'app.codes', 'revoked AND id <= 10000', '@yearly', 100),
           ('spender', 'app.codes', 'revoked AND token_cleanup.within_batch(ctid)', '@yearly', 100);",
    )
    .unwrap();
    let kept_before = not_revoked(&mut app, "app.codes");

    let (deleted, method, control_batches) = run_now(&mut app, "control");
    assert_eq!((deleted, method.as_str()), (5_000, "table walk"));
    assert!(control_batches >= 50, "{control_batches} batches");
    let (deleted, method, batches) = run_now(&mut app, "spender");
    assert_eq!((deleted, method.as_str()), (5_000, "table walk"));
    // Each row spends two calls of the budget of 100: at most 50 rows a batch.
    assert!(
        batches >= 100,
        "{batches} batches, {control_batches} without the condition's call"
    );
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM app.codes WHERE revoked"),
        0
    );
    assert_eq!(not_revoked(&mut app, "app.codes"), kept_before);
}
