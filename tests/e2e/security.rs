//! Nothing a role writes runs with more rights than that role has: one end-to-end regression test
//! per finding of the first security review, against live clusters with real commits, each
//! made by ordinary roles with only the grants a DBA would give. Every test has a positive control
//! that proves the attack path was really taken: the role's function or trigger ran, and as whom.

use crate::common::error_of;

use crate::common::{count, expiring_tokens, wait_for, Cluster};
use postgres::Client;
use std::time::Duration;

const EVERY_SECOND: &str = "* * * * * *";

/// Creates `role` (LOGIN) with CREATE on `database`, as an application role gets it to make its own
/// schema, and connects as it.
fn app_role(cluster: &Cluster, admin: &mut Client, database: &str, role: &str) -> Client {
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE {database} TO {role};"
        ))
        .unwrap();
    cluster.connect_as(database, role)
}

/// A superuser's wake-up of the scheduler.
fn wake_scheduler(admin: &mut Client) {
    admin
        .batch_execute("SELECT token_cleanup.wake_scheduler()")
        .unwrap();
}

/// Waits until `rule` has at least `runs` succeeded runs.
fn wait_for_runs(client: &mut Client, rule: &str, runs: i64) {
    wait_for(
        &format!("{runs} succeeded runs of {rule}"),
        Duration::from_secs(30),
        || {
            let done: i64 = client
                .query_one(
                    "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = $1 AND status = 'succeeded'",
                    &[&rule],
                )
                .unwrap()
                .get(0);
            (done >= runs).then_some(())
        },
    );
}

/// Runs `COPY … TO STDOUT` and returns its output, or the error's message (raised when the COPY
/// starts or while its rows are read).
fn copy_out(client: &mut Client, sql: &str) -> Result<String, String> {
    let mut reader = client
        .copy_out(sql)
        .map_err(|e| error_of(Err::<(), _>(e)))?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut reader, &mut out).map_err(|e| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<postgres::Error>())
            .and_then(|pg| pg.as_db_error())
            .map(|db| db.message().to_string())
            .unwrap_or_else(|| e.to_string())
    })?;
    Ok(out)
}

/// Functions in `schema` named like the built-ins the extension's own statements call (`now`,
/// `clock_timestamp`, `pg_backend_pid`, `nextval`, `to_timestamp`), each recording in
/// `<schema>.calls` who called it, then doing what the built-in does.
fn shadowing_functions(client: &mut Client, schema: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.calls (who text, what text, path text, backend text);
             GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
             GRANT INSERT ON {schema}.calls TO PUBLIC;
             CREATE FUNCTION {schema}.record(what text) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO {schema}.calls VALUES (current_user, what,
                     pg_catalog.current_setting('search_path'),
                     (SELECT a.backend_type FROM pg_catalog.pg_stat_activity a
                       WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()));
                 RETURN true;
             END $$;
             CREATE FUNCTION {schema}.now() RETURNS timestamptz LANGUAGE plpgsql AS
               $$ BEGIN PERFORM {schema}.record('now'); RETURN pg_catalog.now(); END $$;
             CREATE FUNCTION {schema}.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS
               $$ BEGIN PERFORM {schema}.record('clock_timestamp'); RETURN pg_catalog.clock_timestamp(); END $$;
             CREATE FUNCTION {schema}.pg_backend_pid() RETURNS integer LANGUAGE plpgsql AS
               $$ BEGIN PERFORM {schema}.record('pg_backend_pid'); RETURN pg_catalog.pg_backend_pid(); END $$;
             CREATE FUNCTION {schema}.nextval(regclass) RETURNS bigint LANGUAGE plpgsql AS
               $$ BEGIN PERFORM {schema}.record('nextval'); RETURN pg_catalog.nextval($1); END $$;
             CREATE FUNCTION {schema}.to_timestamp(double precision) RETURNS timestamptz LANGUAGE plpgsql AS
               $$ BEGIN PERFORM {schema}.record('to_timestamp'); RETURN pg_catalog.to_timestamp($1); END $$;"
        ))
        .unwrap();
}

/// Finding 1: a condition's `set_config(…, false)` used to outlive it, in a superuser's session after
/// `preview()` and in the scheduler, whose own statements then called the owner's functions.
#[test]
fn settings_a_condition_changes_do_not_outlive_it() {
    let cluster = Cluster::start("sec_settings", &[]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, &mut admin, "app", "alice");
    alice.batch_execute("CREATE SCHEMA alice_s").unwrap();
    shadowing_functions(&mut alice, "alice_s");
    expiring_tokens(&mut alice, "alice_s.tokens", 20, 20);
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('leak', 'alice_s.tokens',
               $c$pg_catalog.set_config('search_path', 'alice_s, pg_catalog', false) IS NOT NULL
                  AND alice_s.record('condition') AND expires_at < pg_catalog.now()$c$, '@yearly')",
        )
        .unwrap();

    // A superuser previews alice's rule, then calls now() in the same session.
    let path_before: String = admin.query_one("SHOW search_path", &[]).unwrap().get(0);
    let matching = count(
        &mut admin,
        "SELECT matching_rows FROM token_cleanup.preview('leak')",
    );
    assert_eq!(matching, 20);
    let path_after: String = admin.query_one("SHOW search_path", &[]).unwrap().get(0);
    admin.batch_execute("SELECT now()").unwrap();
    // Positive control: the condition ran as alice and its set_config took effect inside it.
    assert!(
        count(
            &mut admin,
            "SELECT count(*) FROM alice_s.calls WHERE what = 'condition' AND who = 'alice' AND path = 'alice_s, pg_catalog'"
        ) > 0,
        "the condition's set_config did not run"
    );
    assert_eq!(
        path_after, path_before,
        "preview() left alice's search_path"
    );
    let conditions_in_preview = count(
        &mut admin,
        "SELECT count(*) FROM alice_s.calls WHERE what = 'condition'",
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM alice_s.calls WHERE who <> 'alice'"
        ),
        0,
        "alice's functions ran as another role"
    );

    // The scheduler runs the rule every second; its own bookkeeping must never reach alice_s.
    admin
        .execute(
            "UPDATE token_cleanup.rules SET schedule = $1 WHERE name = 'leak'",
            &[&EVERY_SECOND],
        )
        .unwrap();
    wait_for_runs(&mut admin, "leak", 3);
    assert_eq!(
        count(
            &mut admin,
            "SELECT sum(rows_deleted)::int8 FROM token_cleanup.runs WHERE rule_name = 'leak'"
        ),
        20
    );
    // Positive control: the worker evaluated the condition, as alice, for each row it deleted.
    assert!(
        count(
            &mut admin,
            "SELECT count(*) FROM alice_s.calls WHERE what = 'condition' AND who = 'alice'"
        ) >= conditions_in_preview + 20
    );
    let foreign: Vec<String> = admin
        .query(
            "SELECT who || ' called ' || what || ' in ' || coalesce(backend, '?') FROM alice_s.calls WHERE who <> 'alice'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(foreign.is_empty(), "alice's functions ran as: {foreign:?}");
}

/// Finding 2: `ALTER DATABASE … SET search_path` by a non-superuser database owner reached the
/// workers' own statements.
#[test]
fn database_settings_do_not_reach_the_workers_statements() {
    let cluster = Cluster::start("sec_dbsettings", &[]);
    let mut postgres_db = cluster.connect("postgres");
    for step in ["CREATE ROLE dbo LOGIN", "CREATE DATABASE owned OWNER dbo"] {
        postgres_db.batch_execute(step).unwrap();
    }
    let mut dbo = cluster.connect_as("owned", "dbo");
    dbo.batch_execute("CREATE SCHEMA dbo_s").unwrap();
    shadowing_functions(&mut dbo, "dbo_s");
    expiring_tokens(&mut dbo, "dbo_s.tokens", 20, 20);
    dbo.batch_execute("ALTER DATABASE owned SET search_path = dbo_s, pg_catalog")
        .unwrap();
    // The DBA installs the extension (it needs a superuser); the scheduler starts after the setting.
    let mut admin = cluster.connect("owned");
    admin
        .batch_execute("SET search_path = pg_catalog; CREATE EXTENSION pg_token_cleanup")
        .unwrap();
    let mut dbo = cluster.connect_as("owned", "dbo");
    dbo.execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('t', 'dbo_s.tokens', 'expires_at < pg_catalog.now()', $1)",
        &[&EVERY_SECOND],
    )
    .unwrap();
    wake_scheduler(&mut admin);
    wait_for_runs(&mut admin, "t", 3);
    // A manual run goes through a runner worker.
    let status: String = dbo
        .query_one("SELECT status FROM token_cleanup.run('t')", &[])
        .unwrap()
        .get(0);
    assert_eq!(status, "succeeded");
    assert_eq!(count(&mut admin, "SELECT count(*) FROM dbo_s.tokens"), 20);

    // Positive control: the setting reaches an ordinary session's unqualified now().
    let mut fresh = cluster.connect("owned");
    fresh.batch_execute("SELECT now()").unwrap();
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM dbo_s.calls WHERE who = 'postgres' AND what = 'now' AND backend = 'client backend'"
        ),
        1,
        "the database setting did not reach a new session"
    );
    let in_workers: Vec<String> = admin
        .query(
            "SELECT who || ' called ' || what || ' in ' || backend FROM dbo_s.calls WHERE backend LIKE 'pg_token_cleanup%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        in_workers.is_empty(),
        "the workers called the database owner's functions: {in_workers:?}"
    );
}

/// Finding 3: a superuser's rule on a table owned by an ordinary role fired that role's trigger, and
/// called its functions, as superuser; the trigger made its owner a superuser.
#[test]
fn a_superusers_rule_runs_the_table_owners_code_as_the_table_owner() {
    let cluster = Cluster::start("sec_superrule", &[]);
    let mut admin = cluster.database_with_extension("shop");
    let mut app = app_role(&cluster, &mut admin, "shop", "app");
    app.batch_execute(
        "CREATE SCHEMA app;
         CREATE TABLE app.audit (who text, what text);
         CREATE FUNCTION app.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO app.audit VALUES (current_user, 'trigger');
             IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
                 ALTER ROLE app SUPERUSER;
             END IF;
             RETURN OLD;
         END $$;
         CREATE FUNCTION app.is_expired(t timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO app.audit VALUES (current_user, 'condition');
             RETURN t < pg_catalog.now();
         END $$;",
    )
    .unwrap();
    expiring_tokens(&mut app, "app.tokens", 20, 20);
    app.batch_execute(
        "CREATE TRIGGER audit BEFORE DELETE ON app.tokens FOR EACH ROW EXECUTE FUNCTION app.escalate()",
    )
    .unwrap();

    // The DBA adds a rule for the application's table; it is owned by the DBA (a superuser).
    admin
        .execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('dba', 'app.tokens', 'app.is_expired(expires_at)', $1)",
            &[&EVERY_SECOND],
        )
        .unwrap();
    assert_eq!(
        count(
            &mut admin,
            "SELECT matching_rows FROM token_cleanup.preview('dba')"
        ),
        20
    );
    wait_for_runs(&mut admin, "dba", 2);
    assert_eq!(count(&mut admin, "SELECT count(*) FROM app.tokens"), 20);

    // Positive control: the trigger fired for every deleted row and the condition's function ran.
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM app.audit WHERE what = 'trigger'"
        ),
        20
    );
    assert!(
        count(
            &mut admin,
            "SELECT count(*) FROM app.audit WHERE what = 'condition'"
        ) >= 40
    );
    let as_others: Vec<String> = admin
        .query(
            "SELECT DISTINCT who || ' ran the ' || what FROM app.audit WHERE who <> 'app'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        as_others.is_empty(),
        "app's code ran as another role: {as_others:?}"
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM pg_roles WHERE rolname = 'app' AND rolsuper"
        ),
        0,
        "app became a superuser"
    );
    // Positive control: the same trigger, fired by a superuser's own DELETE, does escalate.
    let mut tx = admin.transaction().unwrap();
    tx.batch_execute("DELETE FROM app.tokens WHERE id = 21")
        .unwrap();
    let escalated: bool = tx
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'", &[])
        .unwrap()
        .get(0);
    tx.rollback().unwrap();
    assert!(escalated, "the trigger's attack path was not taken");
}

/// Finding 4: while pg_restore loaded the rules, each condition was planned as the restoring role
/// (a superuser), so an owner's IMMUTABLE function ran with that role's rights.
#[test]
fn restoring_rules_evaluates_nothing_of_their_owners() {
    if !crate::common::have_client_tools(&["pg_dump", "pg_restore"]) {
        return;
    }
    let cluster = Cluster::start("sec_restore", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, &mut admin, "app", "alice");
    alice
        .batch_execute(
            "CREATE SCHEMA alice_s;
             CREATE FUNCTION alice_s.spy(i int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
             BEGIN
                 RAISE WARNING 'spy ran as %', current_user;
                 RETURN true;
             END $$;",
        )
        .unwrap();
    expiring_tokens(&mut alice, "alice_s.tokens", 5, 5);
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
               VALUES ('spied', 'alice_s.tokens', 'alice_s.spy(1) AND expires_at < pg_catalog.now()', '@daily')",
        )
        .unwrap();
    // Positive control: validating the rule evaluates the function (planning folds the constant
    // call), as alice.
    wait_for("the spy's warning as alice", Duration::from_secs(5), || {
        cluster.log().contains("spy ran as alice").then_some(())
    });

    let dump = cluster.dir.join("app.dump");
    cluster.run_bin("pg_dump", &["-Fc", "-f", dump.to_str().unwrap(), "app"]);
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE restored")
        .unwrap();
    cluster.run_bin("pg_restore", &["-d", "restored", dump.to_str().unwrap()]);
    let mut restored = cluster.connect("restored");
    assert_eq!(
        count(
            &mut restored,
            "SELECT count(*) FROM token_cleanup.rules WHERE name = 'spied' AND owner = 'alice'"
        ),
        1
    );
    assert!(
        !cluster.log().contains("spy ran as postgres"),
        "restoring the rules ran alice's function as the restoring superuser"
    );
    // The restored rule works, evaluated as its owner.
    let mut alice = cluster.connect_as("restored", "alice");
    assert_eq!(
        count(
            &mut alice,
            "SELECT matching_rows FROM token_cleanup.preview('spied')"
        ),
        5
    );
    assert!(!cluster.log().contains("spy ran as postgres"));
}

/// Finding 5: CREATE EXTENSION installed into a `token_cleanup` schema another role had created,
/// whose owner could then drop and replace the extension's tables and functions.
#[test]
fn create_extension_refuses_a_schema_it_did_not_create() {
    let cluster = Cluster::start("sec_schema", &[]);
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE DATABASE app").unwrap();
    let mut admin = cluster.connect("app");
    let mut mallory = app_role(&cluster, &mut admin, "app", "mallory");
    mallory
        .batch_execute("CREATE SCHEMA token_cleanup")
        .unwrap();
    // Positive control: the schema is there, and mallory's.
    let owner: String = admin
        .query_one(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'token_cleanup'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "mallory");

    let err = admin
        .batch_execute("CREATE EXTENSION pg_token_cleanup")
        .unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(
        db.message(),
        "schema \"token_cleanup\" already exists and was not created by pg_token_cleanup (owner: mallory)"
    );
    assert_eq!(db.code().code(), "42P06");
    assert!(db.hint().unwrap().contains("DROP SCHEMA token_cleanup"));
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM pg_extension WHERE extname = 'pg_token_cleanup'"
        ),
        0
    );

    // Once the schema is gone, the extension installs; DROP EXTENSION leaves its empty schema,
    // which a later CREATE EXTENSION accepts.
    mallory.batch_execute("DROP SCHEMA token_cleanup").unwrap();
    for step in [
        "CREATE EXTENSION pg_token_cleanup",
        "DROP EXTENSION pg_token_cleanup",
        "CREATE EXTENSION pg_token_cleanup",
    ] {
        admin
            .batch_execute(step)
            .unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    // A schema a superuser left holding something else is not adopted either.
    admin
        .batch_execute("DROP EXTENSION pg_token_cleanup; CREATE TABLE token_cleanup.stray (id int)")
        .unwrap();
    let message = error_of(admin.batch_execute("CREATE EXTENSION pg_token_cleanup"));
    assert_eq!(
        message,
        "schema \"token_cleanup\" already exists and was not created by pg_token_cleanup (owner: postgres)"
    );
}

/// Finding 6: `a) OR (b` passed as one expression and regrouped inside a batch's statement as
/// `(… AND (a)) OR (b)`, escaping the batch's bounds.
#[test]
fn a_condition_cannot_close_a_parenthesis_it_did_not_open() {
    let cluster = Cluster::start("sec_parens", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, &mut admin, "app", "alice");
    alice.batch_execute("CREATE SCHEMA alice_s").unwrap();
    expiring_tokens(&mut alice, "alice_s.tokens", 10, 10);
    alice
        .batch_execute("ALTER TABLE alice_s.tokens ADD COLUMN note text DEFAULT 'x'")
        .unwrap();
    let insert = |client: &mut Client, condition: &str| {
        let result = client.execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'alice_s.tokens', $1, '@daily')",
            &[&condition],
        );
        let message = error_of(result);
        let _ = client.execute("SELECT token_cleanup.delete_rule('r')", &[]);
        message
    };

    let escaping = "expires_at < pg_catalog.now()) OR (id > 0";
    // Positive control: PostgreSQL itself reads the text as one expression, so a parse of
    // `SELECT (<condition>)` alone, the old proof, accepts it.
    alice
        .batch_execute(&format!("SELECT ({escaping}\n) FROM alice_s.tokens"))
        .unwrap();
    assert_eq!(
        insert(&mut alice, escaping),
        "invalid condition for rule \"r\": the ')' at character 30 closes a parenthesis the condition did not open"
    );
    for (condition, error) in [
        ("(id > 0", "invalid condition for rule \"r\": a '(' is never closed"),
        ("true) --", "invalid condition for rule \"r\": the ')' at character 5 closes a parenthesis the condition did not open"),
        ("id > 0; DELETE FROM alice_s.tokens", "invalid condition for rule \"r\": it contains ';' at character 7 (a condition is one expression, not statements)"),
        ("note = 'x", "unterminated quoted string"),
        ("note = $q$x", "unterminated dollar-quoted string"),
    ] {
        let message = insert(&mut alice, condition);
        assert!(message.contains(error), "{condition}: {message}");
    }
    // A session reading backslashes as escapes does not change how the condition is read.
    alice
        .batch_execute("SET standard_conforming_strings = off")
        .unwrap();
    assert!(insert(&mut alice, r"note <> 'a\' ) OR (true --'")
        .contains("the ')' at character 14 closes a parenthesis the condition did not open"));
    alice
        .batch_execute("RESET standard_conforming_strings")
        .unwrap();

    // Parentheses and semicolons inside literals, quoted identifiers, dollar quotes and comments are
    // not the condition's own, and are accepted.
    for condition in [
        "note <> ')' AND expires_at < pg_catalog.now() -- )",
        "note <> $$) OR (true$$ AND \"expires_at\" < pg_catalog.now() /* ) */",
        "note <> ';' AND expires_at < pg_catalog.now()",
        r"note <> E'\')' AND expires_at < pg_catalog.now()",
    ] {
        assert_eq!(insert(&mut alice, condition), "no error", "{condition}");
    }
    alice
        .execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('ok', 'alice_s.tokens', $1, '@daily')",
            &[&"note <> $$) OR (true$$ AND expires_at < pg_catalog.now()"],
        )
        .unwrap();
    assert_eq!(
        count(
            &mut alice,
            "SELECT rows_deleted FROM token_cleanup.run('ok')"
        ),
        10
    );
    assert_eq!(count(&mut alice, "SELECT count(*) FROM alice_s.tokens"), 10);
}

/// Finding 7: rules were treated as restored, and their privilege checks skipped, when the statement
/// text started with COPY, which `COPY (INSERT … RETURNING …) TO STDOUT` fakes.
#[test]
fn a_copy_statement_does_not_skip_the_privilege_checks() {
    let cluster = Cluster::start("sec_copy", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    expiring_tokens(&mut admin, "public.tokens", 5, 5);
    expiring_tokens(&mut admin, "public.secrets", 5, 5);
    admin
        .batch_execute(
            "CREATE ROLE mallory LOGIN; GRANT SELECT, DELETE ON public.tokens TO mallory;
             GRANT SELECT ON public.secrets TO mallory;",
        )
        .unwrap();
    let mut mallory = cluster.connect_as("app", "mallory");
    let copy = |table: &str, name: &str| {
        format!(
            "COPY (INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) \
             VALUES ('{name}', '{table}', 'true', '@daily') RETURNING id) TO STDOUT"
        )
    };
    // Positive control: an INSERT inside COPY goes through the rules trigger and is stored.
    copy_out(&mut mallory, &copy("public.tokens", "ok")).unwrap();
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM token_cleanup.rules WHERE name = 'ok'"
        ),
        1
    );
    assert_eq!(
        copy_out(&mut mallory, &copy("public.secrets", "m")).unwrap_err(),
        "owner \"mallory\" of rule \"m\" has no DELETE privilege on table public.secrets"
    );

    // PostgreSQL's own restore signal defers the privilege check, and gains the role nothing: the
    // run checks again as the owner and deletes nothing.
    mallory
        .batch_execute(
            "SET check_function_bodies = off;
             INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('m', 'public.secrets', 'true', '@daily');
             RESET check_function_bodies;",
        )
        .unwrap();
    let message = error_of(mallory.query("SELECT * FROM token_cleanup.run('m')", &[]));
    assert!(
        message.contains(
            "role \"mallory\", as whom rule \"m\" runs, has no DELETE privilege on table public.secrets"
        ),
        "{message}"
    );
    assert_eq!(count(&mut admin, "SELECT count(*) FROM public.secrets"), 10);
}

/// The runner's process title is cut on a character boundary: a long rule name of multi-byte
/// characters used to panic the calling backend.
#[test]
fn a_rule_with_a_long_multibyte_name_runs() {
    let cluster = Cluster::start("sec_title", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, &mut admin, "app", "alice");
    alice.batch_execute("CREATE SCHEMA alice_s").unwrap();
    expiring_tokens(&mut alice, "alice_s.tokens", 5, 5);
    // "pg_token_cleanup runner a" is 25 bytes; byte 90 falls inside the 33rd "é".
    let name = format!("a{}", "é".repeat(99));
    alice
        .execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ($1, 'alice_s.tokens', 'expires_at < pg_catalog.now()', '@daily')",
            &[&name],
        )
        .unwrap();
    let row = alice
        .query_one(
            "SELECT status, rows_deleted FROM token_cleanup.run($1)",
            &[&name],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("succeeded".into(), 5)
    );
}

/// A caller's own statement_timeout survives `preview()`, which arms a statement timeout of its own
/// for its count: disarming it left the rest of the caller's statement unbounded.
#[test]
fn the_callers_statement_timeout_survives_preview() {
    let cluster = Cluster::start("sec_timeout", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, &mut admin, "app", "alice");
    alice.batch_execute("CREATE SCHEMA alice_s").unwrap();
    expiring_tokens(&mut alice, "alice_s.tokens", 5, 5);
    alice
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'alice_s.tokens', 'expires_at < pg_catalog.now()', '@daily');
             SET statement_timeout = '1s';",
        )
        .unwrap();
    let started = std::time::Instant::now();
    let message = error_of(alice.query(
        "SELECT (SELECT matching_rows FROM token_cleanup.preview('r')), pg_catalog.pg_sleep(4)",
        &[],
    ));
    assert_eq!(message, "canceling statement due to statement timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Positive control: preview's own, shorter, timeout still applies to its count.
    alice
        .batch_execute(
            "SET statement_timeout = 0;
             UPDATE token_cleanup.rules SET statement_timeout = '200ms',
                    condition = 'pg_catalog.pg_sleep(0.1) IS NOT NULL AND expires_at < pg_catalog.now()';",
        )
        .unwrap();
    let message = error_of(alice.query("SELECT * FROM token_cleanup.preview('r')", &[]));
    assert_eq!(message, "canceling statement due to statement timeout");
}
