//! Security, rights: privilege before claim, archives owned by the rule's role,
//! no lock on the rules table for ordinary roles, rules ids assigned, BYPASSRLS roles confined to
//! their own rules, views that leak nothing. End to end as ordinary roles, each with a positive
//! control.

use crate::common::tenants::tenant;
use crate::common::{count, error_of, Cluster};
use postgres::Client;
use std::time::{Duration, Instant};

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
    if crate::common::have_client_tools(&["pg_dump"]) {
        let dumped = std::process::Command::new(crate::common::client_tool("pg_dump").unwrap())
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
    if crate::common::server_major() == 14 {
        admin
            .batch_execute("ALTER VIEW token_cleanup.rule_stats RESET (security_barrier)")
            .unwrap();
        assert!(leak_through_the_views(&mut mallory) > 0);
    }
}
