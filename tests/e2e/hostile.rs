//! Hostile and bad input, as a non-superuser against a live cluster: SQL smuggled into table names
//! and conditions, privilege escalation attempts, other roles' rules and runs, search_path
//! shadowing, bad schedules, batch sizes and NULLs. Each attempt must be refused with a clear error
//! or be proven harmless; the table of attempts goes to docs/reliability.md.

use crate::common::{count, token_table, Cluster};
use std::fmt::Write;

/// One attempt by `mallory` and the error text it must produce.
struct Attempt {
    what: &'static str,
    sql: String,
    error: &'static str,
}

fn insert(table: &str, condition: &str, schedule: &str) -> String {
    format!(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('m', $q${table}$q$, $q${condition}$q$, $q${schedule}$q$)"
    )
}

fn attempt(what: &'static str, sql: String, error: &'static str) -> Attempt {
    Attempt { what, sql, error }
}

#[test]
fn hostile_and_bad_input_is_refused_or_harmless() {
    let cluster = Cluster::start("hostile", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    token_table(&mut admin, "public.tokens", 50, 50);
    admin
        .batch_execute(
            "CREATE ROLE mallory LOGIN; CREATE ROLE alice LOGIN; GRANT CREATE ON DATABASE app TO mallory;
             GRANT SELECT, DELETE ON public.tokens TO mallory, alice;
             CREATE TABLE public.secrets (id int, secret text); INSERT INTO public.secrets VALUES (1, 'x');
             CREATE SCHEMA vault; CREATE TABLE vault.keys (id int); GRANT SELECT, DELETE ON vault.keys TO mallory;
             CREATE FUNCTION public.secret_fn() RETURNS boolean LANGUAGE sql AS 'SELECT true';
             REVOKE EXECUTE ON FUNCTION public.secret_fn() FROM PUBLIC;
             INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner)
               VALUES ('alices', 'public.tokens', 'expires_at < now()', '@daily', 'alice');",
        )
        .unwrap();
    let conn = format!(
        "host=127.0.0.1 port={} user=mallory dbname=app",
        cluster.port
    );
    let mut mallory = postgres::Client::connect(&conn, postgres::NoTls).unwrap();

    let ok_table = "public.tokens";
    let cases = vec![
        attempt("table_name with a second statement", insert("public.tokens; DROP TABLE public.secrets", "true", "@daily"), "invalid name syntax"),
        attempt("table_name with a comment", insert("public.tokens -- x", "true", "@daily"), "invalid table_name"),
        attempt("table_name with an unbalanced quote", insert("\"public.tokens", "true", "@daily"), "invalid table_name"),
        attempt("table_name a system catalog", insert("pg_catalog.pg_authid", "true", "@daily"), "is a system catalog"),
        attempt("table without DELETE privilege", insert("public.secrets", "true", "@daily"), "has no DELETE privilege on table public.secrets"),
        attempt("table in a schema without USAGE", insert("vault.keys", "true", "@daily"), "permission denied for schema vault"),
        attempt("table of the extension itself", insert("token_cleanup.runs", "true", "@daily"), "belongs to pg_token_cleanup"),
        attempt("condition with a second statement", insert(ok_table, "true; DROP TABLE public.secrets", "@daily"), "it contains ';'"),
        attempt("condition closing its parenthesis with a comment", insert(ok_table, "true) --", "@daily"), "closes a parenthesis the condition did not open"),
        attempt("condition closing its parenthesis and adding FROM", insert(ok_table, "true) FROM public.secrets WHERE (true", "@daily"), "closes a parenthesis the condition did not open"),
        attempt("condition smuggling a UNION", insert(ok_table, "true) UNION SELECT (1", "@daily"), "closes a parenthesis the condition did not open"),
        attempt("condition smuggling a CTE-style clause", insert(ok_table, "true) LIMIT (1", "@daily"), "closes a parenthesis the condition did not open"),
        attempt("condition with an unterminated comment", insert(ok_table, "true /*", "@daily"), "unterminated /* comment"),
        attempt("condition with an unbalanced quote", insert(ok_table, "expires_at < 'now", "@daily"), "unterminated quoted string"),
        attempt("condition with dollar quoting", insert(ok_table, "$x$ DROP TABLE public.secrets $x$", "@daily"), "invalid input syntax for type boolean"),
        attempt("condition with unterminated dollar quoting", insert(ok_table, "$x$ true", "@daily"), "unterminated dollar-quoted string"),
        attempt("condition sub-selecting a table the owner may not read", insert(ok_table, "user_id IN (SELECT id FROM public.secrets)", "@daily"), "permission denied for table secrets"),
        attempt("condition calling a function the owner may not execute", insert(ok_table, "public.secret_fn()", "@daily"), "permission denied for function secret_fn"),
        attempt("condition reading server files", insert(ok_table, "pg_catalog.pg_read_file('/etc/passwd') IS NOT NULL", "@daily"), "permission denied for function pg_read_file"),
        attempt("condition reading pg_authid", insert(ok_table, "(SELECT count(*) FROM pg_catalog.pg_authid) > 0", "@daily"), "permission denied for table pg_authid"),
        attempt("condition not boolean", insert(ok_table, "user_id", "@daily"), "argument of WHERE must be type boolean"),
        attempt("condition with an aggregate", insert(ok_table, "count(*) > 0", "@daily"), "aggregate functions are not allowed in WHERE"),
        attempt("another role as owner", "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner) VALUES ('m', 'public.tokens', 'true', '@daily', 'alice')".into(), "permission denied to make role \"alice\" the owner"),
        attempt("a superuser as owner", "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner) VALUES ('m', 'public.tokens', 'true', '@daily', 'postgres')".into(), "permission denied to make role \"postgres\" the owner"),
        attempt("run another role's rule", "SELECT * FROM token_cleanup.run('alices')".into(), "rule \"alices\" does not exist"),
        attempt("preview another role's rule", "SELECT * FROM token_cleanup.preview('alices')".into(), "rule \"alices\" does not exist"),
        attempt("write run history", "INSERT INTO token_cleanup.runs (rule_id, rule_name, owner, trigger, status) VALUES (1, 'x', 'mallory', 'manual', 'succeeded')".into(), "permission denied for table runs"),
        attempt("rewrite run history", "UPDATE token_cleanup.runs SET status = 'succeeded'".into(), "permission denied for table runs"),
        attempt("wake the launcher repeatedly", "SELECT token_cleanup.wake_launcher()".into(), "permission denied for function wake_launcher"),
        attempt("empty schedule", insert(ok_table, "true", ""), "schedule is empty"),
        attempt("overlong schedule", insert(ok_table, "true", &"1,".repeat(200)), "at most 200 are allowed"),
        attempt("schedule minute 61", insert(ok_table, "true", "61 * * * *"), "minute field \"61\": 61 is out of range 0-59"),
        attempt("schedule day 32", insert(ok_table, "true", "* * 32 * *"), "day-of-month field \"32\": 32 is out of range 1-31"),
        attempt("schedule that never fires (30 February)", insert(ok_table, "true", "0 0 30 2 *"), "schedule never fires"),
        attempt("batch size 0", "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) VALUES ('m', 'public.tokens', 'true', '@daily', 0)".into(), "batch_size 0 of rule \"m\" is out of range"),
        attempt("negative batch size", "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) VALUES ('m', 'public.tokens', 'true', '@daily', -1)".into(), "batch_size -1 of rule \"m\" is out of range"),
        attempt("huge batch size", "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size) VALUES ('m', 'public.tokens', 'true', '@daily', 2147483647)".into(), "batch_size 2147483647 of rule \"m\" is out of range"),
        attempt("NULL name", "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES (NULL, 'public.tokens', 'true', '@daily')".into(), "rule field \"name\" must not be NULL"),
        attempt("NULL table_name", "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('m', NULL, 'true', '@daily')".into(), "rule field \"table_name\" must not be NULL"),
        attempt("NULL condition", "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('m', 'public.tokens', NULL, '@daily')".into(), "rule field \"condition\" must not be NULL"),
        attempt("NULL schedule", "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('m', 'public.tokens', 'true', NULL)".into(), "rule field \"schedule\" must not be NULL"),
        attempt("NULL enabled", "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, enabled) VALUES ('m', 'public.tokens', 'true', '@daily', NULL)".into(), "null value in column \"enabled\""),
    ];
    let mut table = String::new();
    let mut wrong = Vec::new();
    for case in &cases {
        let message = match mallory.batch_execute(&case.sql) {
            Ok(()) => "accepted".to_string(),
            Err(err) => err
                .as_db_error()
                .map(|e| e.message().to_string())
                .unwrap_or_else(|| err.to_string()),
        };
        if !message.contains(case.error) {
            wrong.push(format!(
                "{}: got \"{message}\", expected \"{}\"",
                case.what, case.error
            ));
        }
        writeln!(
            table,
            "| {} | `{}` | refused: {} |",
            case.what,
            case.sql.replace('|', "\\|").replace('\n', " "),
            message.replace('|', "\\|")
        )
        .unwrap();
    }

    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Harmless, not refused: row-level security hides other roles' rules and runs.
    assert_eq!(
        count(&mut mallory, "SELECT count(*) FROM token_cleanup.rules"),
        0
    );
    assert_eq!(
        mallory
            .execute(
                "UPDATE token_cleanup.rules SET condition = 'true' WHERE name = 'alices'",
                &[]
            )
            .unwrap(),
        0
    );
    assert_eq!(
        mallory
            .query("SELECT token_cleanup.delete_rule('alices')", &[])
            .unwrap_err()
            .as_db_error()
            .map(|e| e.message().to_string()),
        Some("rule \"alices\" does not exist".to_string())
    );
    assert_eq!(count(&mut admin, "SELECT count(*) FROM token_cleanup.rules WHERE name = 'alices' AND condition = 'expires_at < now()'"), 1);
    table.push_str("| read, change or delete another role's rule | `SELECT/UPDATE … token_cleanup.rules`, `delete_rule()` | harmless: row-level security shows 0 rows, changes 0; delete_rule says it does not exist |\n");

    // Harmless: an explicit NULL owner becomes the inserting role.
    mallory
        .batch_execute("INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner) VALUES ('nullowner', 'public.tokens', 'true', '@daily', NULL)")
        .unwrap();
    let owner: String = mallory
        .query_one(
            "SELECT owner::text FROM token_cleanup.rules WHERE name = 'nullowner'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "mallory");
    table.push_str("| NULL owner | `INSERT … owner = NULL` | harmless: the owner becomes the inserting role (mallory) |\n");

    // Harmless: a user-defined now() and < operator earlier in search_path are not used by the rule.
    mallory
        .batch_execute(
            "CREATE SCHEMA mallory_s; SET search_path = mallory_s, pg_catalog, public;
             CREATE FUNCTION mallory_s.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
             CREATE FUNCTION mallory_s.always(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql AS 'SELECT true';
             CREATE OPERATOR mallory_s.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = mallory_s.always);
             INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('shadow', 'tokens', 'expires_at < now()', '@daily');",
        )
        .unwrap();
    let matching = count(
        &mut mallory,
        "SELECT matching_rows FROM token_cleanup.preview('shadow')",
    );
    assert_eq!(matching, 50, "the rule must use pg_catalog's now() and <");
    table.push_str("| shadow now() and < for timestamptz through search_path | `CREATE FUNCTION mallory_s.now() …; CREATE OPERATOR mallory_s.< …; SET search_path = mallory_s, …` | harmless: the rule is evaluated with search_path = pg_catalog, pg_temp; preview counts 50 of 100 rows, not 100 |\n");

    // Harmless: a condition that tries to take back the worker's superuser identity at run time.
    mallory
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
               VALUES ('escalate', 'public.tokens', 'pg_catalog.set_config(''role'', ''postgres'', true) IS NOT NULL', '@daily')",
        )
        .unwrap();
    let err = mallory
        .query("SELECT * FROM token_cleanup.run('escalate')", &[])
        .unwrap_err();
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("cannot set parameter \"role\" within security-definer function"),
        "{message}"
    );
    assert_eq!(count(&mut admin, "SELECT count(*) FROM public.tokens"), 100);
    table.push_str(&format!("| condition resetting the role at run time | `pg_catalog.set_config('role', 'postgres', true) IS NOT NULL` | harmless: accepted (a valid expression), the run fails: {message}; 0 rows deleted |\n"));

    assert!(cases.len() + 3 >= 30);
    if let Some(dir) = crate::common::results_dir() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hostile.table"), table).unwrap();
    }
}
