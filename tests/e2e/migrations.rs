//! Rules as code: the examples in examples/migrations/ (plain SQL, Django, Alembic, Knex) and the
//! start-up declaration in examples/startup/ run with the real tools (scripts/migration_tools.sh
//! installs them into target/), as a non-superuser database owner, against a live cluster. Each
//! migration that writes rules is applied a second time through its tool, and must then write
//! nothing: the rules table's rows keep their row versions (xmin) and `updated_at`.

use crate::common::{count, Cluster};
use postgres::Client;
use std::path::{Path, PathBuf};
use std::process::Command;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

/// Where scripts/migration_tools.sh installed Django, Alembic, Knex and node-postgres.
fn tools() -> PathBuf {
    let output = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/migration_tools.sh"
        ))
        .output()
        .expect("scripts/migration_tools.sh");
    assert!(
        output.status.success(),
        "installing the migration tools failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A database owned by the ordinary role `app`, with the extension (created by the superuser).
fn app_database(cluster: &Cluster, database: &str) -> Client {
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN CREATE ROLE app LOGIN; END IF; END $$",
        )
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {database} OWNER app"))
        .unwrap();
    cluster
        .connect(database)
        .batch_execute("CREATE EXTENSION pg_token_cleanup")
        .unwrap();
    cluster.connect_as(database, "app")
}

/// Runs `program` in `dir` with libpq's variables naming `database` as `app`; returns its stdout
/// and stderr together, or panics with them.
fn run(cluster: &Cluster, database: &str, dir: &Path, program: &Path, args: &[&str]) -> String {
    run_with(cluster, database, dir, program, args, &[])
}

fn run_with(
    cluster: &Cluster,
    database: &str,
    dir: &Path,
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", cluster.port.to_string())
        .env("PGUSER", "app")
        .env("PGDATABASE", database)
        .env("NODE_PATH", tools().join("node_modules"))
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{text}",
        program.display()
    );
    text
}

/// Every rule with its row version and last change: equal before and after means nothing was
/// written.
fn rules_state(client: &mut Client) -> String {
    client
        .query_one(
            "SELECT coalesce(string_agg(name || ' ' || xmin::text || ' ' || updated_at::text, E'\\n' ORDER BY name), '')
               FROM token_cleanup.rules",
            &[],
        )
        .unwrap()
        .get(0)
}

/// The two rules every migration example declares, as the rules table stores them.
fn assert_example_rules(client: &mut Client, table: &str) {
    let rows = client
        .query(
            "SELECT name, table_name, condition, schedule, coalesce(batch_size, 0)
               FROM token_cleanup.rules ORDER BY name",
            &[],
        )
        .unwrap();
    let rules: Vec<(String, String, String, String, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let qualified = format!("public.{table}");
    assert_eq!(
        rules,
        vec![
            (
                "expired_refresh_tokens".to_string(),
                qualified.clone(),
                "expires_at < now() - interval '1 day'".to_string(),
                "0 3 * * *".to_string(),
                0
            ),
            (
                "revoked_refresh_tokens".to_string(),
                qualified,
                "revoked_at < now() - interval '7 days'".to_string(),
                "@hourly".to_string(),
                1000
            ),
        ]
    );
}

#[test]
fn plain_sql_migrations_applied_twice_write_nothing_the_second_time() {
    let cluster = Cluster::start("migrations_sql", &[]);
    let mut app = app_database(&cluster, "app_sql");
    let dir = Path::new(EXAMPLES).join("migrations/sql");
    let psql = crate::common::pg_bin().join("psql");
    let psql = if psql.exists() {
        psql
    } else {
        PathBuf::from("/usr/lib/postgresql/15/bin/psql")
    };
    let apply = |file: &str| {
        run(
            &cluster,
            "app_sql",
            &dir,
            &psql,
            &["-X", "-v", "ON_ERROR_STOP=1", "-f", file],
        )
    };
    for file in ["V1__refresh_tokens.sql", "V2__token_cleanup_rules.sql"] {
        apply(file);
    }
    assert_example_rules(&mut app, "refresh_tokens");
    let before = rules_state(&mut app);
    let again = apply("V2__token_cleanup_rules.sql");
    // Positive control: the second application really ran, and compared the rules.
    assert!(
        again.contains("rule \"expired_refresh_tokens\" already exists as given, skipping")
            && again.contains("rule \"revoked_refresh_tokens\" already exists as given, skipping"),
        "{again}"
    );
    assert_eq!(rules_state(&mut app), before);

    // A later migration that changes a rule, applied twice: the second time writes nothing.
    apply("V3__token_cleanup_batch.sql");
    let changed = rules_state(&mut app);
    assert_ne!(changed, before, "alter_rule() changed nothing");
    assert_eq!(
        count(
            &mut app,
            "SELECT batch_size::int8 FROM token_cleanup.rules WHERE name = 'revoked_refresh_tokens' AND max_run_duration = '10 minutes'"
        ),
        2000
    );
    apply("V3__token_cleanup_batch.sql");
    assert_eq!(rules_state(&mut app), changed);
}

#[test]
fn django_alembic_and_knex_migrations_applied_twice_write_nothing_the_second_time() {
    let cluster = Cluster::start("migrations_tools", &[]);
    let tools = tools();
    let python = tools.join("venv/bin/python");

    // Django: migrate, then mark the rules migration unapplied (--fake) and migrate again, so that
    // its RunSQL really runs a second time.
    let mut app = app_database(&cluster, "app_django");
    let django = Path::new(EXAMPLES).join("migrations/django");
    run(
        &cluster,
        "app_django",
        &django,
        &python,
        &["manage.py", "migrate"],
    );
    assert_example_rules(&mut app, "oauth_refreshtoken");
    let before = rules_state(&mut app);
    run(
        &cluster,
        "app_django",
        &django,
        &python,
        &["manage.py", "migrate", "oauth", "0001", "--fake"],
    );
    let again = run(
        &cluster,
        "app_django",
        &django,
        &python,
        &["manage.py", "migrate"],
    );
    assert!(
        again.contains("Applying oauth.0002_token_cleanup... OK"),
        "{again}"
    );
    assert_eq!(rules_state(&mut app), before);

    // Alembic: upgrade, stamp back to the table's revision, upgrade again.
    let mut app = app_database(&cluster, "app_alembic");
    let alembic_dir = Path::new(EXAMPLES).join("migrations/alembic");
    let alembic = tools.join("venv/bin/alembic");
    run(
        &cluster,
        "app_alembic",
        &alembic_dir,
        &alembic,
        &["upgrade", "head"],
    );
    assert_example_rules(&mut app, "refresh_tokens");
    let before = rules_state(&mut app);
    run(
        &cluster,
        "app_alembic",
        &alembic_dir,
        &alembic,
        &["stamp", "0001"],
    );
    let version = |app: &mut Client| -> String {
        app.query_one("SELECT version_num FROM alembic_version", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(version(&mut app), "0001");
    run(
        &cluster,
        "app_alembic",
        &alembic_dir,
        &alembic,
        &["upgrade", "head"],
    );
    // Positive control: Alembic ran 0002 again (it logs nothing without a logging configuration).
    assert_eq!(version(&mut app), "0002");
    assert_eq!(rules_state(&mut app), before);

    // Knex: migrate:latest, forget the rules migration in knex_migrations, migrate:latest again.
    let mut app = app_database(&cluster, "app_knex");
    let knex_dir = Path::new(EXAMPLES).join("migrations/knex");
    let knex = tools.join("node_modules/.bin/knex");
    let knexfile = ["--knexfile", "knexfile.js"];
    let latest = [&["migrate:latest"][..], &knexfile[..]].concat();
    run(&cluster, "app_knex", &knex_dir, &knex, &latest);
    assert_example_rules(&mut app, "refresh_tokens");
    let before = rules_state(&mut app);
    app.batch_execute("DELETE FROM knex_migrations WHERE name = '20261205000002_token_cleanup.js'")
        .unwrap();
    let again = run(&cluster, "app_knex", &knex_dir, &knex, &latest);
    assert!(again.contains("Batch 2 run: 1 migrations"), "{again}");
    assert_eq!(rules_state(&mut app), before);
}

#[test]
fn start_up_declares_its_rules_from_the_environment() {
    let cluster = Cluster::start("migrations_startup", &[]);
    let mut app = app_database(&cluster, "app_start");
    app.batch_execute(
        "CREATE TABLE refresh_tokens (id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL)",
    )
    .unwrap();
    let dir = Path::new(EXAMPLES).join("startup");
    let node = PathBuf::from("node");
    let start = |env: &[(&str, &str)]| {
        run_with(
            &cluster,
            "app_start",
            &dir,
            &node,
            &["cleanup-rules.js"],
            env,
        )
    };

    // The default schedule, enabled.
    let first = start(&[]);
    assert!(
        first.contains(r#"{"rule":"expired_refresh_tokens","action":"created","columns":null}"#),
        "{first}"
    );
    let schedule = |app: &mut Client| -> (String, bool, bool) {
        let row = app
            .query_one(
                "SELECT r.schedule, r.enabled, s.next_run_at IS NOT NULL
                   FROM token_cleanup.rules r JOIN token_cleanup.rule_stats s ON s.rule_id = r.id",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(schedule(&mut app), ("0 3 * * *".into(), true, true));

    // Every instance runs it at every start: a second start writes nothing.
    let before = rules_state(&mut app);
    let second = start(&[]);
    assert!(second.contains(r#""action":"unchanged""#), "{second}");
    assert_eq!(rules_state(&mut app), before);

    // The schedule from the application's environment.
    let changed = start(&[("REFRESH_TOKEN_CLEANUP_CRON", "*/5 * * * *")]);
    assert!(
        changed.contains(r#""action":"changed","columns":["schedule"]"#),
        "{changed}"
    );
    assert_eq!(schedule(&mut app), ("*/5 * * * *".into(), true, true));

    // Under NODE_ENV=test nothing is scheduled; the rule still runs on demand.
    let test = start(&[
        ("NODE_ENV", "test"),
        ("REFRESH_TOKEN_CLEANUP_CRON", "*/5 * * * *"),
    ]);
    assert!(
        test.contains(r#""action":"changed","columns":["enabled"]"#),
        "{test}"
    );
    assert_eq!(schedule(&mut app), ("*/5 * * * *".into(), false, false));
    app.batch_execute(
        "INSERT INTO refresh_tokens (expires_at) SELECT now() - interval '2 days' FROM generate_series(1, 3);
         INSERT INTO refresh_tokens (expires_at) VALUES (now() + interval '1 day')",
    )
    .unwrap();
    assert_eq!(
        count(
            &mut app,
            "SELECT rows_deleted FROM token_cleanup.run('expired_refresh_tokens')"
        ),
        3
    );
    assert_eq!(count(&mut app, "SELECT count(*) FROM refresh_tokens"), 1);
}
