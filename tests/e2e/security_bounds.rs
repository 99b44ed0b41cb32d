//! Security, bounds: error text and NOTIFY payloads bounded, a condition's meaning
//! pinned against a database owner's settings, the metrics scrape bounded and leaving nothing behind,
//! and the smaller findings. End to end as ordinary roles, each with a positive control.

use crate::common::tenants::tenant;
use crate::common::{count, error_of, Cluster};
use postgres::fallible_iterator::FallibleIterator;
use std::time::{Duration, Instant};

#[test]
fn error_text_and_notify_payloads_are_bounded() {
    let cluster = Cluster::start(
        "bounded",
        &[
            "pg_token_cleanup.enabled = off",
            "pg_token_cleanup.notify = 'all'",
        ],
    );
    let mut admin = cluster.database_with_extension("app");
    let mut alice = tenant(&cluster, &mut admin, "app", "alice", 3);

    // A condition that raises a 1 MB message (positive control: it does, in alice's session).
    alice
        .batch_execute(
            "CREATE FUNCTION alice.boom() RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION '%', repeat('x', 1000000) USING DETAIL = repeat('d', 1000000), HINT = repeat('h', 1000000); END $$;",
        )
        .unwrap();
    assert_eq!(
        error_of(alice.batch_execute("SELECT alice.boom()")).len(),
        1_000_000
    );
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
             VALUES ('loud', 'alice.tokens', 'alice.boom()', '@daily')",
        )
        .unwrap_or_else(|e| panic!("{}", &e.to_string()[..200]));
    let mut listener = cluster.connect("app");
    listener.batch_execute("LISTEN token_cleanup").unwrap();
    let log_before = cluster.log().len();
    let message = error_of(alice.query("SELECT * FROM token_cleanup.run('loud')", &[]));
    assert!(message.len() < 2300, "{} bytes", message.len());
    assert!(
        message.contains("[cut: 1000000 bytes]"),
        "{}",
        &message[message.len() - 60..]
    );
    let stored = alice
        .query_one(
            "SELECT length(error), length(error_detail), length(error_hint) FROM token_cleanup.runs WHERE rule_name = 'loud'",
            &[],
        )
        .unwrap();
    for i in 0..3 {
        let len: i32 = stored.get(i);
        assert!(len <= 2100, "column {i}: {len}");
    }
    assert!(
        cluster.log().len() - log_before < 50_000,
        "the log grew by {}",
        cluster.log().len() - log_before
    );
    // The NOTIFY payload names the run, its status and SQLSTATE, never the error's text.
    let mut notifications = listener.notifications();
    let payload = notifications
        .timeout_iter(Duration::from_secs(5))
        .next()
        .unwrap()
        .expect("a notification");
    let payload: serde_json::Value = serde_json::from_str(payload.payload()).unwrap();
    assert_eq!(payload["rule"], "loud");
    assert_eq!(payload["status"], "failed");
    assert_eq!(payload["sqlstate"], "P0001");
    assert!(payload.get("error").is_none(), "{payload}");
}

#[test]
fn a_database_owners_settings_do_not_change_what_a_rule_deletes() {
    let cluster = Cluster::start("pinned", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    tenant(&cluster, &mut admin, "app", "alice", 0);
    admin
        .batch_execute(
            "CREATE ROLE dave LOGIN; ALTER DATABASE app OWNER TO dave;
             CREATE TABLE alice.codes (id int, issued date);
             INSERT INTO alice.codes VALUES (1, '2026-03-20');
             ALTER TABLE alice.codes OWNER TO alice;",
        )
        .unwrap();
    let mut dave = cluster.connect_as("app", "dave");
    dave.batch_execute("ALTER DATABASE app SET DateStyle = 'SQL, DMY'; ALTER DATABASE app SET TimeZone = 'Pacific/Kiritimati'")
        .unwrap();
    let mut alice = cluster.connect_as("app", "alice");
    // Positive control: in a session of that database, '03/04/2026' now means 3 April.
    assert_eq!(
        count(
            &mut alice,
            "SELECT count(*) FROM alice.codes WHERE issued < '03/04/2026'"
        ),
        1
    );
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
             VALUES ('dated', 'alice.codes', 'issued < ''03/04/2026''', '@daily')",
        )
        .unwrap();
    assert_eq!(
        count(
            &mut alice,
            "SELECT matching_rows FROM token_cleanup.preview('dated')"
        ),
        0
    );
    assert_eq!(
        count(
            &mut alice,
            "SELECT rows_deleted FROM token_cleanup.run('dated')"
        ),
        0
    );
    assert_eq!(count(&mut alice, "SELECT count(*) FROM alice.codes"), 1);
}

#[test]
fn smaller_findings() {
    let cluster = Cluster::start("smaller", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = tenant(&cluster, &mut admin, "app", "alice", 3);

    // CREATE DATABASE … TEMPLATE DEFAULT passes the utility hook.
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE from_default TEMPLATE DEFAULT")
        .unwrap();

    // The metrics scrape neither waits on a rule's table (the rule's own lock_timeout is 0) nor keeps
    // an advisory lock its owner's code took while being planned.
    alice
        .batch_execute(
            "CREATE FUNCTION alice.grab() RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_advisory_lock(42); RETURN true; END $$;
             INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, lock_timeout)
             VALUES ('grabby', 'alice.tokens', 'alice.grab() AND expires_at < pg_catalog.now()', '@daily', '0');",
        )
        .unwrap();
    // Positive control: called directly, the function leaves its session holding the lock.
    let mut control = cluster.connect_as("app", "alice");
    control.batch_execute("SELECT alice.grab()").unwrap();
    let control_pid: i32 = control
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = ";
    assert_eq!(count(&mut admin, &format!("{held}{control_pid}")), 1);
    drop(control);
    let admin_pid: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let backlog =
        "SELECT count(*) FROM token_cleanup.metrics WHERE metric = 'pg_token_cleanup_backlog_rows'";
    assert_eq!(count(&mut admin, backlog), 1);
    assert_eq!(count(&mut admin, &format!("{held}{admin_pid}")), 0);
    let mut migration = cluster.connect_as("app", "alice");
    migration
        .batch_execute("BEGIN; LOCK TABLE alice.tokens IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let started = Instant::now();
    assert_eq!(count(&mut admin, backlog), 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    migration.batch_execute("ROLLBACK").unwrap();

    // An error of the rule's code reaches preview()'s caller as PostgreSQL raised it, no Rust
    // backtrace attached.
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
             VALUES ('divides', 'alice.tokens', '1 / (id - id) = 1', '@daily')",
        )
        .unwrap();
    let error = alice
        .query("SELECT * FROM token_cleanup.preview('divides')", &[])
        .unwrap_err();
    let error = error.as_db_error().unwrap();
    assert_eq!(error.message(), "division by zero");
    assert_eq!(error.code().code(), "22012");
    assert_eq!(error.detail(), None);

    // A superuser's rule on a partitioned table runs each leaf's code as that leaf's owner.
    admin
        .batch_execute(
            "CREATE ROLE leafowner LOGIN;
             CREATE TABLE public.events (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE (at);
             CREATE TABLE public.events_old PARTITION OF public.events FOR VALUES FROM ('2000-01-01') TO ('2100-01-01');
             ALTER TABLE public.events_old OWNER TO leafowner;
             CREATE TABLE public.deleters (who name);
             GRANT INSERT ON public.deleters TO PUBLIC;
             CREATE FUNCTION public.who_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.deleters VALUES (current_user); RETURN OLD; END $$;
             INSERT INTO public.events SELECT g, now() - interval '1 day' FROM generate_series(1, 5) g;",
        )
        .unwrap();
    let mut leafowner = cluster.connect_as("app", "leafowner");
    leafowner
        .batch_execute(
            "CREATE TRIGGER who BEFORE DELETE ON public.events_old FOR EACH ROW EXECUTE FUNCTION public.who_deletes();",
        )
        .unwrap();
    // Positive control: the trigger records the role that deletes.
    admin
        .batch_execute("DELETE FROM public.events WHERE id = 5")
        .unwrap();
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM public.deleters WHERE who = 'postgres'"
        ),
        1
    );
    admin
        .batch_execute(
            "TRUNCATE public.deleters;
             INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
             VALUES ('events', 'public.events', 'at < now()', '@daily');",
        )
        .unwrap();
    assert_eq!(
        count(
            &mut admin,
            "SELECT rows_deleted FROM token_cleanup.run('events')"
        ),
        4
    );
    let deleters: Vec<String> = admin
        .query("SELECT DISTINCT who::text FROM public.deleters", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(deleters, vec!["leafowner".to_string()]);
}
