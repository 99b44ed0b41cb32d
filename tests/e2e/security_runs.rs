//! Security, runs: a run ends when told even if the rule's code swallows
//! cancels, and acts only on the rule and tables it was given, whatever is deleted, changed or
//! swapped while it waits; a cancelled run() ends its run. End to end on live clusters
//! with real commits, made by ordinary roles with only the grants the README suggests; each test has
//! a positive control proving that the attack path was really taken.

use crate::common::tenants::{
    create_cancel_swallower, last_run, run_in_background, runner_pid, tenant,
};
use crate::common::{count, error_of, wait_for, Cluster};
use std::time::{Duration, Instant};

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
    crate::common::alter_system(&mut admin, "pg_token_cleanup.max_statement_timeout", "1s");
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
    crate::common::alter_system(&mut admin, "pg_token_cleanup.max_run_duration", "2s");
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
    crate::common::alter_system(&mut admin, "pg_token_cleanup.enabled", "on");
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
