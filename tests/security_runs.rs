//! Security, round 3 (issue 18): runs that cannot be stopped, tables and rules swapped under a run,
//! claiming another role's table, locking the rules table, unbounded error text, settings that
//! change what a condition means, leaky views. One end-to-end test per finding, on live clusters with
//! real commits and default worker settings, made by ordinary roles with only the grants the README
//! suggests. Each has a positive control proving that the attack path was really taken.

mod common;

use common::error_of;

use common::{count, wait_for, Cluster};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::time::{Duration, Instant};

/// Creates `role` (LOGIN) owning schema `role`, with a table `role.tokens` of `expired` expired rows,
/// and connects as it.
fn tenant(
    cluster: &Cluster,
    admin: &mut Client,
    database: &str,
    role: &str,
    expired: i64,
) -> Client {
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; CREATE SCHEMA {role} AUTHORIZATION {role};"
        ))
        .unwrap();
    let mut client = cluster.connect_as(database, role);
    client
        .batch_execute(&format!(
            "CREATE TABLE {role}.tokens (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL);
             INSERT INTO {role}.tokens (expires_at) SELECT now() - interval '1 day' FROM generate_series(1, {expired});"
        ))
        .unwrap();
    client
}

/// A function that sleeps for `seconds` in 0.2 s naps and swallows every query cancel (a
/// statement_timeout or pg_cancel_backend included), then returns true.
fn create_cancel_swallower(client: &mut Client, schema: &str) {
    client
        .batch_execute(&format!(
            "CREATE FUNCTION {schema}.swallow(seconds float8) RETURNS boolean LANGUAGE plpgsql AS $$
             DECLARE started timestamptz := clock_timestamp();
             BEGIN
                 WHILE clock_timestamp() < started + make_interval(secs => seconds) LOOP
                     BEGIN
                         PERFORM pg_sleep(0.2);
                     EXCEPTION WHEN query_canceled THEN NULL;
                     END;
                 END LOOP;
                 RETURN true;
             END $$;"
        ))
        .unwrap();
}

/// Calls `token_cleanup.run(rule)` as `role` on a connection of its own, in a thread: the run's
/// status and rows deleted, or the error's message.
fn run_in_background(
    cluster: &Cluster,
    database: &str,
    role: &str,
    rule: &str,
) -> std::thread::JoinHandle<Result<(String, i64), String>> {
    let conn = format!(
        "host=127.0.0.1 port={} user={role} dbname={database}",
        cluster.port
    );
    let rule = rule.to_string();
    std::thread::spawn(move || {
        let mut client = Client::connect(&conn, postgres::NoTls).unwrap();
        client
            .query_one(
                "SELECT status, rows_deleted FROM token_cleanup.run($1)",
                &[&rule],
            )
            .map(|r| (r.get(0), r.get(1)))
            .map_err(|e| error_of(Err::<(), _>(e)))
    })
}

/// The last run of `rule`: status, sqlstate, error.
fn last_run(client: &mut Client, rule: &str) -> (String, Option<String>, Option<String>) {
    let row = client
        .query_one(
            "SELECT status, sqlstate, error FROM token_cleanup.runs WHERE rule_name = $1 ORDER BY id DESC LIMIT 1",
            &[&rule],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// The pid of the runner worker running `rule`, once it is running.
fn runner_pid(admin: &mut Client, rule: &str) -> i32 {
    wait_for(
        &format!("a runner of rule {rule}"),
        Duration::from_secs(20),
        || {
            admin
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup runner' AND query LIKE $1",
                    &[&format!("%rule {rule} %")],
                )
                .unwrap()
                .map(|r| r.get::<_, i32>(0))
        },
    )
}

#[test]
fn a_run_ends_when_told_even_if_the_rules_code_swallows_cancels() {
    let cluster = Cluster::start("stops", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = tenant(&cluster, &mut admin, "app", "alice", 5);
    create_cancel_swallower(&mut alice, "alice");

    // Positive control: in an ordinary backend, the function swallows its 500 ms statement timeout
    // and runs its whole 3 s.
    let started = Instant::now();
    alice
        .batch_execute(
            "SET statement_timeout = '500ms'; SELECT alice.swallow(3); RESET statement_timeout",
        )
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(2800),
        "{:?}",
        started.elapsed()
    );

    // 1. The rule's own statement timeout (1 s): swallowed, so the worker ends the statement a
    // second later; recorded interrupted with 57014, never succeeded.
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, statement_timeout)
             VALUES ('timed', 'alice.tokens', 'alice.swallow(30) AND expires_at < pg_catalog.now()', '@daily', '1 second')",
        )
        .unwrap();
    let started = Instant::now();
    let message = error_of(alice.query("SELECT * FROM token_cleanup.run('timed')", &[]));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        message.contains(
            "interrupted: the rule's code ran past its statement timeout and ignored the cancel"
        ),
        "{message}"
    );
    let (status, sqlstate, _) = last_run(&mut alice, "timed");
    assert_eq!(
        (status.as_str(), sqlstate.as_deref()),
        ("interrupted", Some("57014"))
    );
    assert_eq!(count(&mut alice, "SELECT count(*) FROM alice.tokens"), 5);

    // 2. pg_terminate_backend on the runner (no statement timeout): the run ends at once.
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, statement_timeout)
             VALUES ('endless', 'alice.tokens', 'alice.swallow(60) AND expires_at < pg_catalog.now()', '@daily', '0')",
        )
        .unwrap();
    let caller = run_in_background(&cluster, "app", "alice", "endless");
    let pid = runner_pid(&mut admin, "endless");
    std::thread::sleep(Duration::from_millis(500));
    let terminated = Instant::now();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let message = caller.join().unwrap().unwrap_err();
    assert!(
        terminated.elapsed() < Duration::from_secs(5),
        "{:?}",
        terminated.elapsed()
    );
    assert!(
        message.contains("interrupted: stopped by SIGTERM while the rule's code ran"),
        "{message}"
    );
    let (status, sqlstate, _) = last_run(&mut alice, "endless");
    assert_eq!(
        (status.as_str(), sqlstate.as_deref()),
        ("interrupted", Some("57P01"))
    );

    // 3. The DBA's ceilings: a rule cannot turn its statement timeout off (0) past
    // pg_token_cleanup.max_statement_timeout, nor run past pg_token_cleanup.max_run_duration.
    common::alter_system(&mut admin, "pg_token_cleanup.max_statement_timeout", "1s");
    let started = Instant::now();
    let message = error_of(alice.query("SELECT * FROM token_cleanup.run('endless')", &[]));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(message.contains("ignored the cancel"), "{message}");
    admin
        .batch_execute("ALTER SYSTEM RESET pg_token_cleanup.max_statement_timeout")
        .unwrap();
    common::alter_system(&mut admin, "pg_token_cleanup.max_run_duration", "2s");
    let started = Instant::now();
    let message = error_of(alice.query("SELECT * FROM token_cleanup.run('endless')", &[]));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        message.contains("the rule's code was still running at the run's max_run_duration"),
        "{message}"
    );
    admin
        .batch_execute("ALTER SYSTEM RESET pg_token_cleanup.max_run_duration")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert_eq!(count(&mut alice, "SELECT count(*) FROM alice.tokens"), 5);

    // 4. DROP DATABASE … WITH (FORCE) while such a run goes on: it ends the run and passes.
    let caller = run_in_background(&cluster, "app", "alice", "endless");
    runner_pid(&mut admin, "endless");
    drop(alice);
    drop(admin);
    let mut postgres = cluster.connect("postgres");
    let started = Instant::now();
    postgres
        .batch_execute("DROP DATABASE app WITH (FORCE)")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let _ = caller.join().unwrap();

    // 5. A fast shutdown with such a scheduled run going on finishes promptly.
    let mut admin = cluster.database_with_extension("app2");
    let mut bob = tenant(&cluster, &mut admin, "app2", "bob", 5);
    create_cancel_swallower(&mut bob, "bob");
    bob.batch_execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, statement_timeout)
         VALUES ('scheduled', 'bob.tokens', 'bob.swallow(60) AND expires_at < pg_catalog.now()', '* * * * * *', '0')",
    )
    .unwrap();
    common::alter_system(&mut admin, "pg_token_cleanup.enabled", "on");
    runner_pid(&mut admin, "scheduled");
    drop(bob);
    drop(admin);
    let started = Instant::now();
    cluster.pg_ctl_stop("fast");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    cluster.pg_ctl_start();
    let mut admin = cluster.connect("app2");
    admin
        .batch_execute("UPDATE token_cleanup.rules SET enabled = false")
        .unwrap();
    wait_for("the stopped run recorded", Duration::from_secs(20), || {
        let (status, _, _) = last_run(&mut admin, "scheduled");
        (count(
            &mut admin,
            "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'scheduled' AND status IN ('running', 'succeeded')",
        ) == 0
            && status == "interrupted")
            .then_some(())
    });
}

#[test]
fn a_deleted_rule_does_not_run_on_a_table_made_while_it_waited() {
    let cluster = Cluster::start("bindings", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = tenant(&cluster, &mut admin, "app", "alice", 40);

    // A run waiting for a migration's lock; the migration deletes the rule, drops the table,
    // creates one of the same name and fills it. The run must not touch the new table.
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, lock_timeout)
             VALUES ('migrated', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', '0')",
        )
        .unwrap();
    let mut migration = cluster.connect("app");
    migration
        .batch_execute("BEGIN; LOCK TABLE alice.tokens IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let caller = run_in_background(&cluster, "app", "alice", "migrated");
    // Positive control: the run is recorded running and waits while the migration holds the lock.
    wait_for(
        "the run to wait for the lock",
        Duration::from_secs(20),
        || {
            (count(
            &mut admin,
            "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'migrated' AND status = 'running'",
        ) == 1)
            .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    migration
        .batch_execute(
            "DELETE FROM token_cleanup.rules WHERE name = 'migrated';
             DROP TABLE alice.tokens;
             CREATE TABLE alice.tokens (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL);
             ALTER TABLE alice.tokens OWNER TO alice;
             INSERT INTO alice.tokens (expires_at) SELECT now() - interval '1 day' FROM generate_series(1, 30);
             COMMIT;",
        )
        .unwrap();
    let outcome = caller.join().unwrap();
    assert_eq!(outcome, Ok(("stopped".to_string(), 0)));
    assert_eq!(count(&mut alice, "SELECT count(*) FROM alice.tokens"), 30);
    let (_, _, error) = last_run(&mut admin, "migrated");
    assert!(
        error
            .as_deref()
            .unwrap_or("")
            .contains("rule \"migrated\" was deleted while the run was going on"),
        "{error:?}"
    );
}

#[test]
fn a_table_swapped_during_a_run_is_not_touched() {
    let cluster = Cluster::start("swapped", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    // A superuser's paced rule on a superuser-owned table; a rotation renames the table away after
    // a few batches and a role with CREATE on the schema puts a look-alike in its place whose
    // trigger records who deleted from it.
    admin
        .batch_execute(
            "CREATE ROLE mallory LOGIN;
             CREATE SCHEMA shared; GRANT USAGE, CREATE ON SCHEMA shared TO mallory;
             CREATE TABLE shared.tokens (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL);
             INSERT INTO shared.tokens (expires_at) SELECT now() - interval '1 day' FROM generate_series(1, 200);
             INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_rows_per_second)
             VALUES ('paced', 'shared.tokens', 'expires_at < now()', '@daily', 10, 20);",
        )
        .unwrap();
    let mut mallory = cluster.connect_as("app", "mallory");
    mallory
        .batch_execute(
            "CREATE TABLE shared.seen (who name, at timestamptz DEFAULT now());
             GRANT INSERT, SELECT ON shared.seen TO PUBLIC;
             CREATE FUNCTION shared.record() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO shared.seen (who) VALUES (current_user); RETURN OLD; END $$;",
        )
        .unwrap();
    let caller = run_in_background(&cluster, "app", "postgres", "paced");
    wait_for("a few paced batches", Duration::from_secs(20), || {
        (count(&mut admin, "SELECT count(*) FROM shared.tokens") <= 170).then_some(())
    });
    admin
        .batch_execute("ALTER TABLE shared.tokens RENAME TO tokens_rotated")
        .unwrap();
    mallory
        .batch_execute(
            "CREATE TABLE shared.tokens (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL);
             CREATE TRIGGER record AFTER DELETE ON shared.tokens FOR EACH ROW EXECUTE FUNCTION shared.record();
             GRANT ALL ON shared.tokens TO PUBLIC;
             INSERT INTO shared.tokens (expires_at) SELECT now() - interval '1 day' FROM generate_series(1, 50);",
        )
        .unwrap();
    let outcome = caller.join().unwrap();
    // Positive control: a direct DELETE on the look-alike runs its trigger, as the deleting role.
    admin
        .batch_execute(
            "INSERT INTO shared.tokens (expires_at) VALUES (now() - interval '1 day');
             DELETE FROM shared.tokens WHERE id = (SELECT max(id) FROM shared.tokens);",
        )
        .unwrap();
    let seen: Vec<String> = admin
        .query("SELECT who::text FROM shared.seen", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seen,
        vec!["postgres".to_string()],
        "only the control's DELETE ran the trigger"
    );
    assert_eq!(count(&mut admin, "SELECT count(*) FROM shared.tokens"), 50);
    let message = outcome.unwrap_err();
    assert!(
        message.contains("table shared.tokens is no longer the relation the run was given"),
        "{message}"
    );
}

#[test]
fn a_rule_changed_during_its_run_stops_it() {
    let cluster = Cluster::start("changed", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = tenant(&cluster, &mut admin, "app", "alice", 200);
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_rows_per_second)
             VALUES ('changed', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 10, 20);",
        )
        .unwrap();
    let caller = run_in_background(&cluster, "app", "alice", "changed");
    wait_for("a few paced batches", Duration::from_secs(20), || {
        (count(&mut alice, "SELECT count(*) FROM alice.tokens") <= 180).then_some(())
    });
    alice
        .batch_execute("UPDATE token_cleanup.rules SET batch_size = 11 WHERE name = 'changed'")
        .unwrap();
    let (status, deleted) = caller.join().unwrap().unwrap();
    assert_eq!(status, "stopped");
    assert!(deleted < 200, "{deleted}");
    let (_, _, error) = last_run(&mut alice, "changed");
    assert!(
        error
            .as_deref()
            .unwrap_or("")
            .contains("rule \"changed\" was changed while the run was going on"),
        "{error:?}"
    );
}

#[test]
fn code_runs_only_with_its_authors_rights() {
    let cluster = Cluster::start("rights", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = tenant(&cluster, &mut admin, "app", "alice", 20);

    // 1. Privilege before claim: mallory, with only USAGE on alice's schema, stores a rule on
    // alice's table under check_function_bodies = off (the restore signal), whose condition calls
    // an IMMUTABLE function that sleeps (the planner would call it).
    admin
        .batch_execute("CREATE ROLE mallory LOGIN; CREATE SCHEMA m AUTHORIZATION mallory; GRANT USAGE ON SCHEMA alice TO mallory;")
        .unwrap();
    let mut mallory = cluster.connect_as("app", "mallory");
    mallory
        .batch_execute(
            "CREATE FUNCTION m.sleepy() RETURNS boolean IMMUTABLE LANGUAGE sql AS 'SELECT pg_sleep(5) IS NULL';
             SET check_function_bodies = off;
             INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
             VALUES ('claim', 'alice.tokens', 'm.sleepy()', '@daily');
             RESET check_function_bodies;",
        )
        .unwrap();
    // Positive control: the rule was stored.
    assert_eq!(
        count(
            &mut mallory,
            "SELECT count(*) FROM token_cleanup.rules WHERE name = 'claim'"
        ),
        1
    );
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
             VALUES ('own', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily')",
        )
        .unwrap();
    let started = Instant::now();
    let message = error_of(mallory.query("SELECT * FROM token_cleanup.run('claim')", &[]));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        message.contains("role \"mallory\", as whom rule \"claim\" runs, has no DELETE privilege on table alice.tokens"),
        "{message}"
    );
    assert_eq!(
        count(
            &mut alice,
            "SELECT rows_deleted FROM token_cleanup.run('own')"
        ),
        20
    );

    // 2. An archive owned by another role than the one the rule runs as is refused: its triggers
    // would run with the rule's rights.
    admin
        .batch_execute(
            "CREATE TABLE public.foreign_archive (id bigint, expires_at timestamptz);
             GRANT INSERT, SELECT ON public.foreign_archive TO alice;",
        )
        .unwrap();
    let message = error_of(alice.batch_execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, archive_table)
         VALUES ('archived', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 'public.foreign_archive')",
    ));
    assert_eq!(
        message,
        "archive_table public.foreign_archive of rule \"archived\" is owned by role \"postgres\", not by role \"alice\", as whom the rule runs"
    );
    // Positive control: the same archive owned by alice is accepted.
    admin
        .batch_execute("ALTER TABLE public.foreign_archive OWNER TO alice")
        .unwrap();
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, archive_table)
             VALUES ('archived', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily', 'public.foreign_archive')",
        )
        .unwrap();
}

#[test]
fn no_role_can_block_others_through_the_rules_table() {
    let cluster = Cluster::start("locks", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = tenant(&cluster, &mut admin, "app", "alice", 5);
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
             VALUES ('alices', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily')",
        )
        .unwrap();
    for mode in [
        "ACCESS EXCLUSIVE",
        "EXCLUSIVE",
        "SHARE ROW EXCLUSIVE",
        "SHARE",
        "ROW EXCLUSIVE",
    ] {
        let message = error_of(alice.batch_execute(&format!(
            "BEGIN; LOCK TABLE token_cleanup.rules IN {mode} MODE; COMMIT;"
        )));
        alice.batch_execute("ROLLBACK").unwrap();
        assert_eq!(message, "permission denied for table rules", "{mode}");
    }
    // Positive control: the LOCK path exists for a role a DBA grants DELETE (the README says so).
    admin
        .batch_execute(
            "CREATE ROLE dba_helper LOGIN; GRANT DELETE ON token_cleanup.rules TO dba_helper;",
        )
        .unwrap();
    let mut helper = cluster.connect_as("app", "dba_helper");
    helper
        .batch_execute("BEGIN; LOCK TABLE token_cleanup.rules IN ACCESS EXCLUSIVE MODE; ROLLBACK;")
        .unwrap();
    // Alice still manages her rules: INSERT and UPDATE of their columns, delete_rule().
    alice
        .batch_execute("UPDATE token_cleanup.rules SET batch_size = 10 WHERE name = 'alices'")
        .unwrap();
    // The id is assigned, not chosen.
    let message = error_of(alice.batch_execute(
        "INSERT INTO token_cleanup.rules (id, name, table_name, condition, schedule)
         VALUES (1000, 'chosen', 'alice.tokens', 'true', '@daily')",
    ));
    assert_eq!(message, "permission denied for table rules");
    let message = error_of(alice.batch_execute("UPDATE token_cleanup.rules SET id = 1000"));
    assert_eq!(message, "permission denied for table rules");

    // A BYPASSRLS role sees every rule but changes and deletes only its own.
    admin
        .batch_execute("CREATE ROLE bypass LOGIN BYPASSRLS")
        .unwrap();
    let mut bypass = cluster.connect_as("app", "bypass");
    assert_eq!(
        count(
            &mut bypass,
            "SELECT count(*) FROM token_cleanup.rules WHERE name = 'alices'"
        ),
        1
    );
    let message =
        error_of(bypass.batch_execute(
            "UPDATE token_cleanup.rules SET condition = 'true' WHERE name = 'alices'",
        ));
    assert_eq!(
        message,
        "rule \"alices\" belongs to role \"alice\": only its owner or a superuser may change it"
    );
    let message = error_of(bypass.batch_execute("SELECT token_cleanup.delete_rule('alices')"));
    assert_eq!(
        message,
        "rule \"alices\" belongs to role \"alice\": only its owner or a superuser may delete it"
    );
    // Another ordinary role does not even see it.
    admin.batch_execute("CREATE ROLE eve LOGIN").unwrap();
    let mut eve = cluster.connect_as("app", "eve");
    let message = error_of(eve.batch_execute("SELECT token_cleanup.delete_rule('alices')"));
    assert_eq!(message, "rule \"alices\" does not exist");

    // pg_dump and the views are not held up by a role's open transaction on its rules.
    alice
        .batch_execute(
            "BEGIN; UPDATE token_cleanup.rules SET batch_size = 11 WHERE name = 'alices'",
        )
        .unwrap();
    if common::have_client_tools(&["pg_dump"]) {
        let dumped = std::process::Command::new(common::client_tool("pg_dump").unwrap())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port.to_string(),
                "-U",
                "postgres",
                "--lock-wait-timeout=5s",
                "-d",
                "app",
            ])
            .output()
            .unwrap();
        assert!(
            dumped.status.success(),
            "{}",
            String::from_utf8_lossy(&dumped.stderr)
        );
    }
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM token_cleanup.rule_stats"),
        1
    );
    alice.batch_execute("COMMIT").unwrap();
    assert_eq!(
        count(
            &mut alice,
            "SELECT token_cleanup.delete_rule('alices')::int::int8"
        ),
        1
    );
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM token_cleanup.rules"),
        0
    );
}

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
fn the_views_leak_no_other_roles_rules() {
    let cluster = Cluster::start("leaks", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = tenant(&cluster, &mut admin, "app", "alice", 3);
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
             VALUES ('alices_secret_rule', 'alice.tokens', 'expires_at < pg_catalog.now()', '@daily')",
        )
        .unwrap();
    alice
        .batch_execute("SELECT * FROM token_cleanup.run('alices_secret_rule')")
        .unwrap();
    admin
        .batch_execute("CREATE ROLE mallory LOGIN; CREATE SCHEMA m AUTHORIZATION mallory;")
        .unwrap();
    let mut mallory = cluster.connect_as("app", "mallory");
    // A cheap function that writes down every value it is shown.
    mallory
        .batch_execute(
            "CREATE TABLE m.seen (v text);
             CREATE FUNCTION m.leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS $$
             BEGIN INSERT INTO m.seen VALUES ($1); RETURN true; END $$;",
        )
        .unwrap();
    // Positive control: the function is called with the values of the rows mallory may see.
    mallory
        .batch_execute(
            "CREATE TABLE m.mine (v text); INSERT INTO m.mine VALUES ('visible');
             SELECT * FROM m.mine WHERE m.leak(v);",
        )
        .unwrap();
    assert_eq!(
        count(
            &mut mallory,
            "SELECT count(*) FROM m.seen WHERE v = 'visible'"
        ),
        1
    );
    let leak_through_the_views = |mallory: &mut Client| {
        for (view, column) in [
            ("rule_stats", "rule"),
            ("metrics", "labels"),
            ("progress", "rule"),
        ] {
            mallory
                .batch_execute(&format!(
                    "SELECT * FROM token_cleanup.{view} WHERE m.leak({column}::text)"
                ))
                .unwrap();
        }
        count(
            mallory,
            "SELECT count(*) FROM m.seen WHERE v LIKE '%alices_secret%'",
        )
    };
    assert_eq!(leak_through_the_views(&mut mallory), 0);
    // Positive control on PostgreSQL 14, whose views have no security_invoker and filter by owner in
    // their own WHERE clause: without security_barrier, the leaky function sees alice's rule.
    if common::server_major() == 14 {
        admin
            .batch_execute("ALTER VIEW token_cleanup.rule_stats RESET (security_barrier)")
            .unwrap();
        assert!(leak_through_the_views(&mut mallory) > 0);
    }
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

#[test]
fn a_cancelled_run_call_ends_its_run() {
    let cluster = Cluster::start("cancelled", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = tenant(&cluster, &mut admin, "app", "alice", 5);
    create_cancel_swallower(&mut alice, "alice");
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, statement_timeout)
             VALUES ('long', 'alice.tokens', 'alice.swallow(60) AND expires_at < pg_catalog.now()', '@daily', '0')",
        )
        .unwrap();
    let caller = run_in_background(&cluster, "app", "alice", "long");
    // Positive control: the run is going on in its own worker while the call waits.
    let runner = runner_pid(&mut admin, "long");
    let caller_pid: i32 = wait_for("the caller of run()", Duration::from_secs(10), || {
        admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND query LIKE '%token_cleanup.run(%'",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0))
    });
    admin
        .execute("SELECT pg_cancel_backend($1)", &[&caller_pid])
        .unwrap();
    let message = caller.join().unwrap().unwrap_err();
    assert_eq!(message, "canceling statement due to user request");
    wait_for("the runner to end", Duration::from_secs(5), || {
        (count(
            &mut admin,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {runner}"),
        ) == 0)
            .then_some(())
    });
    wait_for("the run to be recorded", Duration::from_secs(5), || {
        let (status, sqlstate, _) = last_run(&mut alice, "long");
        (status == "interrupted" && sqlstate.as_deref() == Some("57P01")).then_some(())
    });
    assert_eq!(count(&mut alice, "SELECT count(*) FROM alice.tokens"), 5);
}
