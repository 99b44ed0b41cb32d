//! Rules on Citus tables, on a Citus cluster of a coordinator and two workers, each with
//! `shared_preload_libraries = 'citus,pg_token_cleanup'` and the extension created on the
//! coordinator only (Citus copies CREATE EXTENSION to the workers), as Citus users install it.
//! Ignored unless scripts/citus_test.sh runs them with `PG_BIN` naming a PostgreSQL with Citus.
//!
//! Every rule belongs to `app`, an ordinary role that owns its distributed tables; Citus connects
//! to the workers as that role (trust authentication here).

use crate::common::*;
use postgres::Client;
use std::time::Duration;

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

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_rule_on_a_distributed_table_deletes_exactly_the_expired_rows_shard_by_shard_without_two_phase_commits(
) {
    let citus = Citus::start("citus_exact");
    let mut admin = citus.admin();
    // Recovery of two-phase commits would empty pg_dist_transaction behind the test's back.
    each(
        &mut admin,
        &[
            "ALTER SYSTEM SET citus.recover_2pc_interval = -1",
            "SELECT pg_reload_conf()",
        ],
    );
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 100_000, 2);
    distributed_tokens(&mut app, "control", 100_000, 2);
    let before = survivors(&mut app, "tokens");
    assert_eq!(before.0, 50_000);
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        Some(2_000),
    );

    // Positive control: the plain distributed DELETE commits on both workers in two phases.
    let recorded = two_phase_commits(&mut admin);
    app.batch_execute("DELETE FROM control WHERE expires_at < now()")
        .unwrap();
    assert!(
        two_phase_commits(&mut admin) > recorded,
        "the plain DELETE should have used two-phase commit (the control of this test)"
    );

    // What a run would do: the whole table's figures, from its shards.
    assert_eq!(
        count(
            &mut app,
            "SELECT matching_rows FROM token_cleanup.preview('purge')"
        ),
        50_000
    );
    let row = app
        .query_one(
            "SELECT method, reason, estimated_rows, live_rows, table_pages FROM token_cleanup.explain('purge')",
            &[],
        )
        .unwrap();
    let (method, reason, estimated, live, pages): (String, String, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(method, "per shard");
    assert!(
        reason.starts_with("a Citus distributed table in 32 shards on 2 nodes"),
        "{reason}"
    );
    assert!((40_000..=60_000).contains(&estimated), "{estimated}");
    assert!((90_000..=110_000).contains(&live), "{live}");
    assert!(pages > 0);
    let backlog = count(
        &mut app,
        "SELECT value::bigint FROM token_cleanup.metrics WHERE metric = 'pg_token_cleanup_backlog_rows'",
    );
    assert_eq!(backlog, estimated);

    let recorded = two_phase_commits(&mut admin);
    let (status, rows, batches, method) = run_rule(&mut app, "purge");
    assert_eq!(
        (status.as_str(), rows, method.as_str()),
        ("succeeded", 50_000, "per shard")
    );
    // 32 shards of about 1,560 expired rows each: at least one batch a shard, none over 2,000.
    assert!(batches >= 32, "{batches} batches");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    assert_eq!(survivors(&mut app, "tokens"), before);
    assert_eq!(
        two_phase_commits(&mut admin),
        recorded,
        "the run's batches are local transactions on the workers"
    );
    // The deletes happened in the shards on the workers (Citus hides shards from other sessions'
    // catalog queries unless asked).
    wait_for("the workers' statistics", Duration::from_secs(20), || {
        let deleted: i64 = (0..2)
            .map(|i| {
                let mut worker = citus.worker(i);
                worker
                    .batch_execute("SET citus.show_shards_for_app_name_prefixes = '*'")
                    .unwrap();
                count(
                    &mut worker,
                    "SELECT coalesce(sum(n_tup_del), 0)::bigint FROM pg_stat_user_tables WHERE relname LIKE 'tokens\\_%'",
                )
            })
            .sum();
        (deleted == 50_000).then_some(())
    });
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_few_expired_rows_are_found_through_each_shards_index() {
    let citus = Citus::start("citus_index");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 100_000, 100);
    each(
        &mut app,
        &["CREATE INDEX ON tokens (expires_at)", "ANALYZE tokens"],
    );
    let before = survivors(&mut app, "tokens");
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        Some(10),
    );
    let (status, rows, batches, _) = run_rule(&mut app, "purge");
    assert_eq!((status.as_str(), rows), ("succeeded", 1_000));
    assert!(batches >= 100, "batches of at most 10 rows: {batches}");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    assert_eq!(survivors(&mut app, "tokens"), before);
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn max_fraction_counts_the_whole_distributed_table_and_refuses() {
    let citus = Citus::start("citus_fraction");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 20_000, 2);
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        None,
    );
    app.batch_execute("UPDATE token_cleanup.rules SET max_fraction = 0.1 WHERE name = 'purge'")
        .unwrap();
    let error = error_of(app.query_one("SELECT * FROM token_cleanup.run('purge')", &[]));
    assert!(
        error.contains("refused: the run would delete")
            && error.contains("more than max_fraction 0.1"),
        "{error}"
    );
    assert_eq!(count(&mut app, "SELECT count(*) FROM tokens"), 20_000);
    // Positive control: the same rule with room for half the table deletes it.
    app.batch_execute("UPDATE token_cleanup.rules SET max_fraction = 0.6 WHERE name = 'purge'")
        .unwrap();
    let (status, rows, _, _) = run_rule(&mut app, "purge");
    assert_eq!((status.as_str(), rows), ("succeeded", 10_000));
    // max_rows_per_run adds the shards up too.
    each(
        &mut app,
        &[
            "INSERT INTO tokens SELECT g, 0, now() - interval '1 day' FROM generate_series(100001, 103000) g",
            "ANALYZE tokens",
            "UPDATE token_cleanup.rules SET max_fraction = NULL, max_rows_per_run = 1000 WHERE name = 'purge'",
        ],
    );
    let error = error_of(app.query_one("SELECT * FROM token_cleanup.run('purge')", &[]));
    assert!(error.contains("more than max_rows_per_run 1000"), "{error}");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        3_000
    );
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn rows_an_application_holds_on_a_worker_are_skipped_and_go_in_the_next_run() {
    let citus = Citus::start("citus_locked");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 10_000, 2);
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        None,
    );
    app.batch_execute("UPDATE token_cleanup.rules SET lock_timeout = '1s' WHERE name = 'purge'")
        .unwrap();
    // The application holds two expired rows (on whichever workers their shards are).
    let mut holder = citus.app();
    each(
        &mut holder,
        &[
            "BEGIN",
            "SELECT * FROM tokens WHERE id = 2 FOR UPDATE",
            "SELECT * FROM tokens WHERE id = 4 FOR UPDATE",
        ],
    );
    let (status, rows, _, _) = run_rule(&mut app, "purge");
    assert_eq!((status.as_str(), rows), ("succeeded", 4_998));
    // The run's LOG line says how many batches met locked rows.
    let log = citus.coordinator.log();
    let line = log
        .lines()
        .find(|l| l.contains("rule \"purge\" run") && l.contains("batches met locked rows"))
        .expect("the run's LOG line");
    let redone: i64 = line
        .rsplit(", ")
        .next()
        .and_then(|tail| tail.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    // Positive control: the batches met the locks and skipped them.
    assert!(redone >= 1, "batches redone with SKIP LOCKED: {redone}");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        2
    );
    holder.batch_execute("COMMIT").unwrap();
    let (status, rows, _, _) = run_rule(&mut app, "purge");
    assert_eq!((status.as_str(), rows), ("succeeded", 2));
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn reference_tables_archives_elsewhere_and_rules_written_on_a_worker_are_refused_with_the_fix() {
    let citus = Citus::start("citus_refused");
    let mut app = citus.app();
    each(
        &mut app,
        &[
            "CREATE TABLE clients (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL)",
            "SELECT create_reference_table('clients')",
        ],
    );
    let error = error_of(app.execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('r', 'clients', 'expires_at < now()', '@daily')",
        &[],
    ));
    assert_eq!(
        error,
        "table_name public.clients of rule \"r\" is a Citus reference table"
    );
    distributed_tokens(&mut app, "tokens", 1_000, 2);
    each(
        &mut app,
        &[
            "CREATE TABLE tokens_archive (id bigint PRIMARY KEY, user_id bigint, expires_at timestamptz NOT NULL)",
            "SELECT create_distributed_table('tokens_archive', 'id', shard_count => 4)",
        ],
    );
    let error = error_of(app.execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, archive_table) VALUES ('a', 'tokens', 'expires_at < now()', '@daily', 'tokens_archive')",
        &[],
    ));
    assert_eq!(
        error,
        "archive_table public.tokens_archive of rule \"a\" is not co-located with Citus table public.tokens: each batch moves a shard's rows into the archive's shard on the same node"
    );
    // A worker: the extension is there (Citus copied it), but rules are the coordinator's.
    let mut worker = citus.worker(0);
    let error = error_of(worker.execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('w', 'pg_class', 'true', '@daily')",
        &[],
    ));
    assert_eq!(
        error,
        "this node is a Citus worker: rules are written and run on the coordinator"
    );
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_scheduled_rule_runs_from_the_coordinator_and_no_worker_keeps_a_scheduler() {
    let citus = Citus::start("citus_scheduled");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 10_000, 2);
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "* * * * * *",
        None,
    );
    wait_for_count(
        &mut app,
        "the scheduled run to purge the table",
        "SELECT count(*) FROM tokens WHERE expires_at < now()",
        0,
        Duration::from_secs(30),
    );
    // Positive control: the coordinator has its scheduler (seen within a few seconds: it may lend
    // its slot to the launcher's probes of other databases for a moment).
    let mut admin = citus.admin();
    wait_for(
        "the coordinator's scheduler",
        Duration::from_secs(10),
        || {
            (count(
            &mut admin,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler' AND datname = 'app'",
        ) == 1)
            .then_some(())
        },
    );
    // Each worker's launcher looks (every 2 s here) and leaves nothing running in app.
    std::thread::sleep(Duration::from_secs(5));
    for i in 0..2 {
        let mut worker = citus.worker(i);
        let mut seen = 0;
        for _ in 0..20 {
            seen += count(
                &mut worker,
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler' AND datname = 'app'",
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            seen <= 2,
            "worker {i}: a scheduler seen {seen} times in 20 looks"
        );
        assert_eq!(
            count(&mut worker, "SELECT count(*) FROM token_cleanup.runs"),
            0
        );
    }
    assert!(!citus.workers[0]
        .log()
        .contains("pg_token_cleanup: scheduler started"));
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_worker_that_stops_mid_run_ends_the_run_naming_it_and_the_next_run_finishes() {
    let citus = Citus::start("citus_node_down");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 20_000, 2);
    let before = survivors(&mut app, "tokens");
    slow_purge_rule(&mut app);
    let run = run_in_background(&citus, "purge");
    wait_for("the run under way", Duration::from_secs(20), || {
        (count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()",
        ) < 9_000)
            .then_some(())
    });
    citus.workers[1].pg_ctl_stop("immediate");
    let error = run.join().unwrap();
    assert!(
        error.contains(&format!("on node 127.0.0.1:{}", citus.workers[1].port)),
        "{error}"
    );
    let mut admin = citus.admin();
    let row = admin
        .query_one(
            "SELECT status, rows_deleted FROM token_cleanup.runs WHERE rule_name = 'purge'",
            &[],
        )
        .unwrap();
    let (status, rows): (String, i64) = (row.get(0), row.get(1));
    assert_eq!(status, "failed");
    assert!(
        rows > 1_000 && rows < 10_000,
        "{rows} rows deleted before the node stopped"
    );
    citus.workers[1].pg_ctl_start();
    let mut reconnected = citus.app();
    wait_for("the worker back", Duration::from_secs(30), || {
        reconnected
            .query_one("SELECT count(*) FROM tokens", &[])
            .ok()
            .map(|_| ())
    });
    let (status, _, _, _) = run_rule(&mut reconnected, "purge");
    assert_eq!(status, "succeeded");
    assert_eq!(
        count(
            &mut reconnected,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    assert_eq!(survivors(&mut reconnected, "tokens"), before);
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_distributed_partitioned_table_drops_its_expired_partition_and_purges_the_rest_and_a_citus_local_table_is_purged_too(
) {
    let citus = Citus::start("citus_partitions");
    let mut app = citus.app();
    each(
        &mut app,
        &[
            "CREATE TABLE sessions (id bigint, expires_at timestamptz NOT NULL, PRIMARY KEY (id, expires_at))
               PARTITION BY RANGE (expires_at)",
            "CREATE TABLE sessions_old PARTITION OF sessions FOR VALUES FROM ('2000-01-01') TO ('2020-01-01')",
            "CREATE TABLE sessions_now PARTITION OF sessions FOR VALUES FROM ('2020-01-01') TO ('2200-01-01')",
            "SELECT create_distributed_table('sessions', 'id')",
            "INSERT INTO sessions SELECT g, timestamptz '2010-01-01' + g * interval '1 minute' FROM generate_series(1, 5000) g",
            "INSERT INTO sessions SELECT g, now() - interval '1 day' FROM generate_series(5001, 10000) g",
            "INSERT INTO sessions SELECT g, now() + interval '1 day' FROM generate_series(10001, 15000) g",
            "ANALYZE sessions",
        ],
    );
    add_rule(
        &mut app,
        "sessions",
        "sessions",
        "expires_at < now()",
        "@daily",
        None,
    );
    app.batch_execute(
        "UPDATE token_cleanup.rules SET drop_partitions = 'drop' WHERE name = 'sessions'",
    )
    .unwrap();
    let (status, rows, _, method) = run_rule(&mut app, "sessions");
    assert_eq!(
        (status.as_str(), rows, method.as_str()),
        ("succeeded", 10_000, "per shard")
    );
    assert_eq!(
        count(&mut app, "SELECT partitions_dropped::bigint FROM token_cleanup.runs WHERE rule_name = 'sessions'"),
        1
    );
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM pg_class WHERE relname = 'sessions_old'"
        ),
        0
    );
    assert_eq!(count(&mut app, "SELECT count(*) FROM sessions"), 5_000);
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM sessions WHERE expires_at >= now() AND id > 10000"
        ),
        5_000
    );

    // A Citus-local table: its one shard is on the coordinator, purged there the same way.
    each(
        &mut app,
        &[
            "CREATE TABLE device_codes (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL)",
            "INSERT INTO device_codes SELECT g, now() + CASE WHEN g % 4 = 0 THEN interval '-1 hour' ELSE interval '1 hour' END
               FROM generate_series(1, 4000) g",
            "SELECT citus_add_local_table_to_metadata('device_codes')",
        ],
    );
    add_rule(
        &mut app,
        "codes",
        "device_codes",
        "expires_at < now()",
        "@daily",
        None,
    );
    let (status, rows, _, method) = run_rule(&mut app, "codes");
    assert_eq!(
        (status.as_str(), rows, method.as_str()),
        ("succeeded", 1_000, "per shard")
    );
    assert_eq!(count(&mut app, "SELECT count(*) FROM device_codes"), 3_000);
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM device_codes WHERE expires_at < now()"
        ),
        0
    );
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_runner_killed_mid_run_loses_no_row_it_should_keep_and_the_next_run_finishes() {
    let citus = Citus::start("citus_kill");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 20_000, 2);
    let before = survivors(&mut app, "tokens");
    slow_purge_rule(&mut app);
    let port = citus.coordinator.port;
    let run = run_in_background(&citus, "purge");
    let mut admin = citus.admin();
    let runner: i32 = wait_for("the run under way", Duration::from_secs(20), || {
        if count(
            &mut admin,
            "SELECT count(*) FROM tokens WHERE expires_at < now()",
        ) >= 9_000
        {
            return None;
        }
        admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup runner'",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0))
    });
    let killed = std::process::Command::new("kill")
        .args(["-9", &runner.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The postmaster restarts every backend after a crash: the caller's connection goes too.
    let error = run.join().unwrap();
    assert!(!error.is_empty());
    let mut app = wait_for("the coordinator back", Duration::from_secs(60), || {
        Client::connect(
            &format!("host=127.0.0.1 port={port} user=app dbname=app"),
            postgres::NoTls,
        )
        .ok()
    });
    wait_for(
        "the killed run marked interrupted",
        Duration::from_secs(30),
        || {
            (count(
            &mut app,
            "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'purge' AND status = 'interrupted'",
        ) == 1)
            .then_some(())
        },
    );
    assert_eq!(survivors(&mut app, "tokens"), before);
    let (status, _, _, _) = run_rule(&mut app, "purge");
    assert_eq!(status, "succeeded");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    assert_eq!(survivors(&mut app, "tokens"), before);
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn an_archiving_rule_moves_each_shards_rows_into_the_co_located_archive() {
    let citus = Citus::start("citus_archive");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 20_000, 4);
    each(
        &mut app,
        &[
            "CREATE TABLE tokens_archive (id bigint PRIMARY KEY, user_id bigint, expires_at timestamptz NOT NULL)",
            "SELECT create_distributed_table('tokens_archive', 'id', colocate_with => 'tokens')",
            "CREATE INDEX ON tokens (expires_at)",
        ],
    );
    let original: (i64, i64) = {
        let row = app
            .query_one("SELECT count(*), sum(id)::bigint FROM tokens", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    let expired_sum = count(
        &mut app,
        "SELECT sum(id)::bigint FROM tokens WHERE expires_at < now()",
    );
    add_rule(
        &mut app,
        "purge",
        "tokens",
        "expires_at < now()",
        "@daily",
        Some(500),
    );
    app.batch_execute(
        "UPDATE token_cleanup.rules SET archive_table = 'tokens_archive' WHERE name = 'purge'",
    )
    .unwrap();
    let (status, rows, batches, _) = run_rule(&mut app, "purge");
    assert_eq!((status.as_str(), rows), ("succeeded", 5_000));
    assert!(batches >= 10, "{batches} batches of at most 500 rows");
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    // Every expired row is in the archive, once; source ∪ archive is the original table.
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM tokens_archive"),
        5_000
    );
    assert_eq!(
        count(&mut app, "SELECT sum(id)::bigint FROM tokens_archive"),
        expired_sum
    );
    let union = app
        .query_one(
            "SELECT count(*), sum(id)::bigint FROM (SELECT id FROM tokens UNION ALL SELECT id FROM tokens_archive) u",
            &[],
        )
        .unwrap();
    assert_eq!((union.get::<_, i64>(0), union.get::<_, i64>(1)), original);
    // Each archived row is in the archive's shard for its hash: a router query, which reads only
    // that shard, finds it.
    for id in (4..=20_000).step_by(997).filter(|id| id % 4 == 0) {
        assert_eq!(
            count(
                &mut app,
                &format!("SELECT count(*) FROM tokens_archive WHERE id = {id}")
            ),
            1,
            "id {id}"
        );
    }
}

#[test]
#[ignore = "needs PostgreSQL with Citus: bash scripts/citus_test.sh"]
fn a_shard_the_rebalancer_moves_mid_run_is_purged_on_its_new_node() {
    let citus = Citus::start("citus_move");
    let mut app = citus.app();
    distributed_tokens(&mut app, "tokens", 20_000, 2);
    let before = survivors(&mut app, "tokens");
    // The shards are taken in order of their ids.
    slow_purge_rule(&mut app);
    let mut admin = citus.admin();
    let (w1, w2) = (
        i32::from(citus.workers[0].port),
        i32::from(citus.workers[1].port),
    );
    // The last shard on the first worker: the run reaches it last.
    let shard: i64 = admin
        .query_one(
            "SELECT max(shardid) FROM pg_dist_shard JOIN pg_dist_shard_placement USING (shardid)
              WHERE logicalrelid = 'tokens'::regclass AND nodeport = $1",
            &[&w1],
        )
        .unwrap()
        .get(0);
    let run = run_in_background(&citus, "purge");
    wait_for("the run under way", Duration::from_secs(20), || {
        (count(
            &mut admin,
            "SELECT count(*) FROM tokens WHERE expires_at < now()",
        ) < 9_500)
            .then_some(())
    });
    admin
        .execute(
            "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3, shard_transfer_mode => 'block_writes')",
            &[&shard, &w1, &w2],
        )
        .unwrap();
    assert_eq!(run.join().unwrap(), "no error");
    // Positive control: the run saw the move.
    assert!(
        citus
            .coordinator
            .log()
            .contains(&format!("moved to node 127.0.0.1:{w2} during the run")),
        "the run did not meet the move"
    );
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM tokens WHERE expires_at < now()"
        ),
        0
    );
    assert_eq!(survivors(&mut app, "tokens"), before);
}
