//! Rules on Citus tables, on a Citus cluster of a coordinator and two workers, each with
//! `shared_preload_libraries = 'citus,pg_token_cleanup'` and the extension created on the
//! coordinator only (Citus copies CREATE EXTENSION to the workers), as Citus users install it.
//! Ignored unless scripts/citus_test.sh runs them with `PG_BIN` naming a PostgreSQL with Citus.
//!
//! Every rule belongs to `app`, an ordinary role that owns its distributed tables; Citus connects
//! to the workers as that role (trust authentication here).

use crate::common::*;
use postgres::Client;

mod failures;
mod limits;
mod purges;

/// A coordinator and two workers, database `app` on each, Citus and the extension installed, and
/// the role `app` with CREATE on schema public.
struct Citus {
    coordinator: Cluster,
    workers: Vec<Cluster>,
}

impl Citus {
    fn start(name: &str) -> Citus {
        let preload = "citus,pg_token_cleanup";
        let coordinator = Cluster::start_with(&format!("{name}_coord"), preload, &[]);
        let workers: Vec<Cluster> = (1..=2)
            .map(|i| Cluster::start_with(&format!("{name}_w{i}"), preload, &[]))
            .collect();
        for node in std::iter::once(&coordinator).chain(&workers) {
            node.connect("postgres")
                .batch_execute("CREATE DATABASE app")
                .unwrap();
            node.connect("app")
                .batch_execute("CREATE EXTENSION citus")
                .unwrap();
        }
        let mut admin = coordinator.connect("app");
        admin
            .execute(
                "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
                &[&i32::from(coordinator.port)],
            )
            .unwrap();
        for worker in &workers {
            admin
                .execute(
                    "SELECT citus_add_node('127.0.0.1', $1)",
                    &[&i32::from(worker.port)],
                )
                .unwrap();
        }
        admin
            .batch_execute(
                "CREATE EXTENSION pg_token_cleanup;
                 CREATE ROLE app LOGIN;
                 GRANT CREATE ON SCHEMA public TO app;",
            )
            .unwrap();
        Citus {
            coordinator,
            workers,
        }
    }

    fn admin(&self) -> Client {
        self.coordinator.connect("app")
    }

    fn app(&self) -> Client {
        self.coordinator.connect_as("app", "app")
    }

    fn worker(&self, i: usize) -> Client {
        self.workers[i].connect("app")
    }
}

/// A hash-distributed token table of `rows` rows owned by `app`, every `expired_every`-th one
/// expired, analyzed (as Citus users do after a load).
fn distributed_tokens(app: &mut Client, table: &str, rows: i64, expired_every: i64) {
    each(
        app,
        &[
            &format!("CREATE TABLE {table} (id bigint PRIMARY KEY, user_id bigint, expires_at timestamptz NOT NULL)"),
            &format!("SELECT create_distributed_table('{table}', 'id')"),
            &format!(
                "INSERT INTO {table} SELECT g, g % 1000,
                        CASE WHEN g % {expired_every} = 0 THEN now() - interval '1 day' ELSE now() + interval '1 day' END
                   FROM generate_series(1, {rows}) g"
            ),
            &format!("ANALYZE {table}"),
        ],
    );
}

/// The ids, sum and count of the rows that must survive.
fn survivors(app: &mut Client, table: &str) -> (i64, i64) {
    let row = app
        .query_one(
            &format!("SELECT count(*), coalesce(sum(id), 0)::bigint FROM {table} WHERE expires_at >= now()"),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn run_rule(app: &mut Client, rule: &str) -> (String, i64, i32, String) {
    let run_id: i64 = app
        .query_one("SELECT run_id FROM token_cleanup.run($1)", &[&rule])
        .unwrap_or_else(|e| panic!("run({rule}): {}", error_of(Err::<(), _>(e))))
        .get(0);
    // A statement of its own: the run's row was written after run()'s statement began.
    let row = app
        .query_one(
            "SELECT status, rows_deleted, batches, coalesce(method, '') FROM token_cleanup.runs WHERE id = $1",
            &[&run_id],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Runs each statement on its own: Citus refuses to send a multi-statement string to its nodes.
fn each(client: &mut Client, statements: &[&str]) {
    for sql in statements {
        client
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", error_of(Err::<(), _>(e))));
    }
}

/// Rule `purge` on `tokens`, batches of 100 rows at 2,000 rows a second (one batch per call on a
/// node): 10,000 expired rows take about 5 s, long enough to act on mid-run.
fn slow_purge_rule(app: &mut Client) {
    add_rule(
        app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        Some(100),
    );
    app.batch_execute(
        "UPDATE token_cleanup.rules SET max_rows_per_second = 2000 WHERE name = 'purge'",
    )
    .unwrap();
}

/// `run(rule)` called by `app` in a thread of its own; joins with the error's text ("no error").
fn run_in_background(citus: &Citus, rule: &'static str) -> std::thread::JoinHandle<String> {
    let port = citus.coordinator.port;
    std::thread::spawn(move || {
        let mut app = Client::connect(
            &format!("host=127.0.0.1 port={port} user=app dbname=app"),
            postgres::NoTls,
        )
        .unwrap();
        error_of(app.query_one("SELECT * FROM token_cleanup.run($1)", &[&rule]))
    })
}

/// Two-phase commits Citus recorded and has not recovered yet (one per node a multi-node
/// transaction wrote to).
fn two_phase_commits(admin: &mut Client) -> i64 {
    count(admin, "SELECT count(*) FROM pg_dist_transaction")
}
