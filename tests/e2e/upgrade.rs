//! The upgrade from a released version (`UPGRADE_FROM_VERSION`: 0.1.0 to 0.7.0) to this version, end to
//! end (run by scripts/upgrade_test.sh once per release, which builds the release from its git commit
//! and this version's package, and gives them here with a copy of PostgreSQL 15 to install them into):
//! - create the extension at the release, add rules as a superuser and as an ordinary role, let them
//!   run so that history exists;
//! - install this version, restart: the scheduler serves nothing in the outdated database and says
//!   why, `run()` refuses with a hint;
//! - `ALTER EXTENSION pg_token_cleanup UPDATE`: rules, owners, history and statistics kept, the
//!   scheduler serves the rules on schedule again, the ordinary role's changes reach it;
//! - the schema after the upgrade equals a fresh install's (`pg_dump --schema-only` of the
//!   extension's objects), the differences that remain explained below.

use crate::common::{count, wait_for, Cluster};
use postgres::Client;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run this test with bash scripts/upgrade_test.sh")
    }))
}

/// Copies a package tree (usr/lib/postgresql/15/lib, usr/share/postgresql/15/extension) into the
/// PostgreSQL copy, as installing the package would.
fn install(package: &Path) {
    let tree = env_path("UPGRADE_TREE");
    let status = Command::new("cp")
        .args(["-a", &format!("{}/usr/.", package.display())])
        .arg(tree.join("usr"))
        .status()
        .unwrap();
    assert!(status.success(), "installing {}", package.display());
}

/// Rules as they must survive: everything the user set, and the owner.
fn rules(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT format('%s|%s|%s|%s|%s|%s|%s|%s|%s', id, name, table_name, condition, schedule,
                           coalesce(batch_size::text, '-'), enabled, owner, created_at)
               FROM token_cleanup.rules ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The run history: id, rule, status, rows.
fn history(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT format('%s|%s|%s|%s|%s', id, rule_id, trigger, status, rows_deleted)
               FROM token_cleanup.runs ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// rule_stats' columns common to both versions, per rule.
fn stats(client: &mut Client) -> BTreeMap<String, String> {
    client
        .query(
            "SELECT rule, format('%s|%s|%s|%s|%s|%s', owner, runs, succeeded, failed, total_rows_deleted,
                                 last_status)
               FROM token_cleanup.rule_stats",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The extension's objects as `pg_dump --schema-only` writes them. pg_dump leaves an extension's
/// member objects out (CREATE EXTENSION makes them), so the database's copy is first released from
/// the extension (ALTER EXTENSION … DROP of every member), then dumped.
fn schema_dump(cluster: &Cluster, database: &str) -> String {
    let mut client = cluster.connect(database);
    let members: Vec<String> = client
        .query(
            "SELECT pg_describe_object(d.classid, d.objid, 0)
               FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
              WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                AND e.extname = 'pg_token_cleanup'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(members.len() > 10, "members: {members:?}");
    for member in &members {
        // pg_describe_object calls a procedure a function; ROUTINE names either.
        let member = match member.strip_prefix("function ") {
            Some(routine) => format!("routine {routine}"),
            None => member.clone(),
        };
        client
            .batch_execute(&format!("ALTER EXTENSION pg_token_cleanup DROP {member}"))
            .unwrap_or_else(|e| panic!("releasing {member}: {e}"));
    }
    let out = cluster.dir.join(format!("{database}.sql"));
    cluster.run_bin(
        "pg_dump",
        &[
            "--schema-only",
            "--no-owner",
            "--schema=token_cleanup",
            "-f",
            out.to_str().unwrap(),
            database,
        ],
    );
    std::fs::read_to_string(out).unwrap()
}

/// The dump's statements, each normalised and sorted: pg_dump orders objects by dependencies and
/// OIDs, which differ between a database that grew its objects and a fresh one.
fn statements(dump: &str) -> Vec<String> {
    let body: String = dump
        .lines()
        // Comments, session settings, and the random key of \restrict (pg_dump 15.14 and later).
        .filter(|l| {
            !l.starts_with("--")
                && !l.starts_with("SET ")
                && !l.starts_with("SELECT pg_catalog.set_config")
                && !l.starts_with("\\restrict ")
                && !l.starts_with("\\unrestrict ")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut statements: Vec<String> = body
        .split(";\n")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    statements.sort();
    statements
}

#[test]
#[ignore = "needs the builds scripts/upgrade_test.sh makes"]
fn upgrade_from_a_release_keeps_rules_owners_history_and_statistics() {
    let from_version = std::env::var("UPGRADE_FROM_VERSION").unwrap_or_else(|_| "0.1.0".into());
    let to_version = env!("CARGO_PKG_VERSION");
    install(&env_path("UPGRADE_FROM"));
    let cluster = Cluster::start("upgrade", &[]);
    let mut admin = cluster.database_with_extension("app");
    let installed: String = admin
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_token_cleanup'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(installed, from_version);

    // A superuser's rule on its own table, every second; an ordinary role's rule on its table, run
    // by hand (0.1.0's scheduler learned of an ordinary role's rule only when it restarted).
    admin
        .batch_execute(
            "CREATE TABLE public.sessions (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL);
             INSERT INTO public.sessions SELECT g, now() - interval '1 day' FROM generate_series(1, 300) g;
             INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size)
               VALUES ('sessions', 'public.sessions', 'expires_at < now()', '* * * * * *', 100);
             CREATE ROLE app LOGIN;
             GRANT CREATE ON DATABASE app TO app;",
        )
        .unwrap();
    let mut app = cluster.connect_as("app", "app");
    app.batch_execute(
        "CREATE SCHEMA app;
         CREATE TABLE app.tokens (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL);
         INSERT INTO app.tokens SELECT g, now() - interval '1 day' FROM generate_series(1, 200) g;
         INSERT INTO app.tokens SELECT g, now() + interval '1 day' FROM generate_series(201, 250) g;
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
           VALUES ('app_tokens', 'app.tokens', 'expires_at < now()', '0 3 * * *');",
    )
    .unwrap();
    assert_eq!(
        count(
            &mut app,
            "SELECT rows_deleted FROM token_cleanup.run('app_tokens')"
        ),
        200
    );
    crate::common::wait_for_count(
        &mut admin,
        "the release's scheduler to purge public.sessions",
        "SELECT count(*) FROM public.sessions",
        0,
        Duration::from_secs(30),
    );
    let rules_before = rules(&mut admin);
    let history_before = history(&mut admin);
    let stats_before = stats(&mut admin);
    let app_stats_before = stats(&mut app);
    assert_eq!(rules_before.len(), 2);
    assert!(history_before.len() >= 2, "{history_before:?}");
    assert_eq!(app_stats_before.len(), 1, "the app role sees only its rule");

    // The new version's files, and a restart.
    cluster.pg_ctl_stop("fast");
    install(&env_path("UPGRADE_TO"));
    cluster.pg_ctl_start();
    let mut admin = cluster.connect("app");
    // Before the UPDATE: nothing runs, the log says why, run() refuses with the fix.
    wait_for(
        "the outdated-version warning",
        Duration::from_secs(20),
        || {
            cluster
            .log()
            .contains(&format!(
                "database \"app\" has the extension at version {from_version}, the library is {to_version}: its rules do not run until ALTER EXTENSION pg_token_cleanup UPDATE"
            ))
            .then_some(())
        },
    );
    admin
        .batch_execute("INSERT INTO public.sessions SELECT g, now() - interval '1 day' FROM generate_series(1, 50) g")
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM public.sessions"),
        50
    );
    let mut app = cluster.connect_as("app", "app");
    let refused = app
        .query_one(
            "SELECT rows_deleted FROM token_cleanup.run('app_tokens')",
            &[],
        )
        .unwrap_err();
    let refused = refused.as_db_error().expect("a database error");
    assert_eq!(refused.code().code(), "55000");
    assert_eq!(
        refused.message(),
        format!("pg_token_cleanup is at version {from_version} in this database, but the library loaded is {to_version}")
    );
    assert_eq!(
        refused.hint(),
        Some("Run ALTER EXTENSION pg_token_cleanup UPDATE in this database.")
    );

    // Updated and compared in one transaction: the scheduler, woken at its commit, serves the
    // every-second rule again at once, and a run it starts would show in the history and the stats.
    admin
        .batch_execute("BEGIN; ALTER EXTENSION pg_token_cleanup UPDATE")
        .unwrap();
    let installed: String = admin
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_token_cleanup'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(installed, to_version);

    // Kept: rules with their owners, the history, the statistics (as each role sees them).
    assert_eq!(rules(&mut admin), rules_before);
    assert_eq!(history(&mut admin), history_before);
    assert_eq!(stats(&mut admin), stats_before);
    admin.batch_execute("COMMIT").unwrap();
    let mut app = cluster.connect_as("app", "app");
    assert_eq!(stats(&mut app), app_stats_before);
    // The lifetime counters start from the history kept.
    assert_eq!(
        count(
            &mut admin,
            "SELECT rows_deleted FROM token_cleanup.rule_totals WHERE rule_name = 'app_tokens'"
        ),
        200
    );

    // Served on schedule again, without a restart: the superuser's rule purges the new rows, and the
    // ordinary role's change to its rule reaches the scheduler.
    crate::common::wait_for_count(
        &mut admin,
        "the updated scheduler to purge public.sessions",
        "SELECT count(*) FROM public.sessions",
        0,
        Duration::from_secs(20),
    );
    assert!(cluster.log().contains("extension updated to"));
    app.batch_execute(
        "INSERT INTO app.tokens SELECT g, now() - interval '1 day' FROM generate_series(1001, 1040) g;
         UPDATE token_cleanup.rules SET schedule = '* * * * * *' WHERE name = 'app_tokens';",
    )
    .unwrap();
    crate::common::wait_for_count(
        &mut app,
        "the app role's rule to run on its new schedule",
        "SELECT count(*) FROM app.tokens",
        50,
        Duration::from_secs(20),
    );
    assert!(
        count(
            &mut app,
            "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'app_tokens' AND trigger = 'schedule' AND status = 'succeeded'"
        ) >= 1
    );
    assert_eq!(
        count(
            &mut app,
            "SELECT rows_deleted FROM token_cleanup.run('app_tokens')"
        ),
        0
    );

    // PUBLIC's grants were narrowed (0.4.0): the ordinary role changes its rule (above) but can no
    // longer lock the rules table, and deletes its rules through delete_rule().
    let mut app = cluster.connect_as("app", "app");
    let lock = app
        .batch_execute("BEGIN; LOCK TABLE token_cleanup.rules IN ACCESS EXCLUSIVE MODE; COMMIT")
        .unwrap_err();
    assert_eq!(
        lock.as_db_error().map(|e| e.message()),
        Some("permission denied for table rules")
    );
    app.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        count(
            &mut app,
            "SELECT token_cleanup.delete_rule('app_tokens')::int::int8"
        ),
        1
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM token_cleanup.rules WHERE name = 'app_tokens'"
        ),
        0
    );

    // The function API (0.7.0) works on the upgraded database, as the ordinary role: a rule from
    // expire(), its declaration exported and applied back without a write.
    assert!(count(&mut app, "SELECT token_cleanup.expire('app.tokens', 'expires_at', '1 day', name => 'app_expire')") > 0);
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM token_cleanup.apply_rules(token_cleanup.export_rules()) WHERE action <> 'unchanged'"
        ),
        0
    );
    assert_eq!(
        count(
            &mut app,
            "SELECT token_cleanup.remove_rule('app_expire')::int::int8"
        ),
        1
    );

    // parallel_workers (0.8.0): the upgraded add_rule() takes it, the column keeps it, and a run
    // records how many runners it got (one: the table is small).
    app.batch_execute(
        "SELECT token_cleanup.add_rule('app_parallel', 'app.tokens', 'expires_at < now()', '@yearly', parallel_workers => 2)",
    )
    .unwrap();
    assert_eq!(
        count(
            &mut app,
            "SELECT parallel_workers::int8 FROM token_cleanup.rules WHERE name = 'app_parallel'"
        ),
        2
    );
    let run_id = count(
        &mut app,
        "SELECT run_id FROM token_cleanup.run('app_parallel')",
    );
    assert_eq!(
        count(
            &mut app,
            &format!("SELECT workers::int8 FROM token_cleanup.runs WHERE id = {run_id}")
        ),
        1
    );
    app.batch_execute("SELECT token_cleanup.remove_rule('app_parallel')")
        .unwrap();

    // The schema equals a fresh install's.
    cluster.database_with_extension("fresh");
    let upgraded = statements(&schema_dump(&cluster, "app"));
    let fresh = statements(&schema_dump(&cluster, "fresh"));
    // What is compared: every table, view, function, policy and grant of the extension.
    for object in [
        "CREATE TABLE token_cleanup.rules (",
        "CREATE TABLE token_cleanup.runs (",
        "CREATE TABLE token_cleanup.rule_totals (",
        "CREATE VIEW token_cleanup.rule_stats WITH (security_invoker='true', security_barrier='true') AS",
        "CREATE VIEW token_cleanup.metrics WITH (security_invoker='true', security_barrier='true') AS",
        "CREATE FUNCTION token_cleanup.within_batch(",
        "CREATE FUNCTION token_cleanup.delete_rule(",
        "CREATE FUNCTION token_cleanup.live_progress(",
        "CREATE VIEW token_cleanup.progress WITH (security_invoker='true', security_barrier='true') AS",
        "CREATE FUNCTION token_cleanup.rules_before_write() RETURNS trigger",
        "CREATE TRIGGER rules_validate BEFORE INSERT OR UPDATE ON token_cleanup.rules",
        "CREATE POLICY rule_totals_owner ON token_cleanup.rule_totals",
        "GRANT SELECT ON TABLE token_cleanup.rule_totals TO PUBLIC",
        "CREATE FUNCTION token_cleanup.apply_rules(",
        "CREATE VIEW token_cleanup.errors WITH (security_invoker='true', security_barrier='true') AS",
        "COMMENT ON COLUMN token_cleanup.runs.error_hint IS",
        "COMMENT ON FUNCTION token_cleanup.add_rule(",
        "CREATE VIEW token_cleanup.prometheus WITH (security_invoker='true', security_barrier='true') AS",
        "CREATE FUNCTION token_cleanup.worker_budget(",
        "COMMENT ON COLUMN token_cleanup.rules.parallel_workers IS",
        "COMMENT ON COLUMN token_cleanup.runs.workers IS",
    ] {
        assert!(
            fresh.iter().any(|s| s.starts_with(object)),
            "{object} not in the dump of a fresh install"
        );
    }
    // The validation function that the trigger replaced (0.6.0) is gone.
    assert!(
        !fresh
            .iter()
            .chain(&upgraded)
            .any(|s| s.starts_with("CREATE FUNCTION token_cleanup.check_rule(")),
        "token_cleanup.check_rule() is still there"
    );
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|s| !fresh.contains(s)).collect();
    let only_fresh: Vec<&String> = fresh.iter().filter(|s| !upgraded.contains(s)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "schema after the upgrade differs from a fresh install:\n--- only after the upgrade:\n{}\n--- only in a fresh install:\n{}",
        only_upgraded.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(";\n\n"),
        only_fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(";\n\n"),
    );
}
