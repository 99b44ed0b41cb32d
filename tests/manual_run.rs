//! End-to-end tests of manual runs (`token_cleanup.run()` through a runner worker) against live
//! clusters: the returned run, its record, owner privileges and row-level security between roles,
//! the READ COMMITTED requirement, and rows locked by other sessions skipped rather than waited on.

mod common;

use common::{count, token_table, Cluster};
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
    assert_eq!((row.get::<_, i64>(1), row.get::<_, i32>(2)), (1_234, 3));
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
        err.message()
            .contains("permission denied for table device_codes"),
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
