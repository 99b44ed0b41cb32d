//! Tenants of a shared server for the security suites: an ordinary role with a schema and a table
//! of its own, a function that swallows query cancels, a run() called from another connection, and
//! where to find a run and its runner.

use super::{error_of, wait_for, Cluster};
use postgres::Client;
use std::time::Duration;

/// Creates `role` (LOGIN) owning schema `role`, with a table `role.tokens` of `expired` expired rows,
/// and connects as it.
pub fn tenant(
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
pub fn create_cancel_swallower(client: &mut Client, schema: &str) {
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
pub fn run_in_background(
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
pub fn last_run(client: &mut Client, rule: &str) -> (String, Option<String>, Option<String>) {
    let row = client
        .query_one(
            "SELECT status, sqlstate, error FROM token_cleanup.runs WHERE rule_name = $1 ORDER BY id DESC LIMIT 1",
            &[&rule],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// The pid of the runner worker running `rule`, once it is running.
pub fn runner_pid(admin: &mut Client, rule: &str) -> i32 {
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
