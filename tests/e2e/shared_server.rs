//! The extension on a shared server with PostgreSQL's default worker settings
//! (`max_worker_processes = 8`, parallel query on) and its own default budget
//! (`pg_token_cleanup.max_workers = 4`): several databases with every-second rules, a parallel
//! query in another database, `run()` in every database, a database that gets the extension
//! later, a role that floods `run()` and cancels, a role whose runs never end. Each test asserts
//! that everybody else still gets what they need.

use crate::common::{alter_system, count, error_of, expiring_tokens, wait_for, Cluster, Figures};
use postgres::Client;
use std::time::{Duration, Instant};

const EVERY_SECOND: &str = "* * * * * *";
const RULES_PER_DATABASE: usize = 5;

/// A database with the extension, an application role `app` holding only CREATE on it (for its
/// schema), and `RULES_PER_DATABASE` every-second rules of `app`'s on tables of its own, plus
/// an hourly rule `by_hand` for `run()`.
fn busy_database(cluster: &Cluster, database: &str) -> Client {
    let mut admin = cluster.database_with_extension(database);
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT CREATE ON DATABASE {database} TO app;"
        ))
        .unwrap();
    let mut app = cluster.connect_as(database, "app");
    app.batch_execute("CREATE SCHEMA app").unwrap();
    for i in 0..=RULES_PER_DATABASE {
        expiring_tokens(&mut app, &format!("app.tokens_{i}"), 1000, 100);
    }
    for i in 0..RULES_PER_DATABASE {
        add_rule(
            &mut app,
            &format!("every_second_{i}"),
            &format!("app.tokens_{i}"),
            EVERY_SECOND,
        );
    }
    add_rule(
        &mut app,
        "by_hand",
        &format!("app.tokens_{RULES_PER_DATABASE}"),
        "@hourly",
    );
    app
}

fn add_rule(client: &mut Client, name: &str, table: &str, schedule: &str) {
    client
        .execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) \
             VALUES ($1, $2, 'expires_at < pg_catalog.now()', $3)",
            &[&name, &table, &schedule],
        )
        .unwrap_or_else(|e| panic!("adding rule {name}: {e}"));
}

/// The fewest runs any every-second rule of the database started in the last `window`, and the
/// longest gap between two consecutive starts of one rule in it (seconds).
fn cadence(client: &mut Client, window: Duration) -> (i64, f64) {
    let row = client
        .query_one(
            "WITH recent AS (
               SELECT rule_name, started_at,
                      started_at - lag(started_at) OVER (PARTITION BY rule_name ORDER BY started_at) AS gap
                 FROM token_cleanup.runs
                WHERE rule_name LIKE 'every_second_%'
                  AND started_at > pg_catalog.now() - $1::float8 * interval '1 second')
             SELECT (SELECT coalesce(min(n), 0) FROM (
                       SELECT count(*) AS n FROM recent GROUP BY rule_name
                       UNION ALL
                       SELECT 0 FROM token_cleanup.rules r
                        WHERE r.name LIKE 'every_second_%'
                          AND NOT EXISTS (SELECT FROM recent WHERE rule_name = r.name)) c),
                    coalesce(extract(epoch FROM max(gap))::float8, 1e9)
               FROM recent",
            &[&window.as_secs_f64()],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// Workers planned and launched by a parallel count over `big` (EXPLAIN ANALYZE).
fn parallel_workers(client: &mut Client) -> (i64, i64) {
    let lines: Vec<String> = client
        .query(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT count(*) FROM big",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let value = |label: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|n| n.trim().parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no \"{label}\" in the plan: {lines:?}"))
    };
    (value("Workers Planned:"), value("Workers Launched:"))
}

#[test]
fn three_busy_databases_parallel_query_and_run_share_the_default_worker_slots() {
    let mut figures = Figures::start(
        "four databases, parallel query and run() on the default max_worker_processes = 8",
    );
    let cluster = Cluster::start("shared_three_databases", &[]);
    let mut postgres = cluster.connect("postgres");
    let slots: String = postgres
        .query_one("SHOW max_worker_processes", &[])
        .unwrap()
        .get(0);
    assert_eq!(slots, "8", "the test runs on PostgreSQL's default");
    let names = ["shop", "billing", "auth"];
    let mut apps: Vec<Client> = names.iter().map(|d| busy_database(&cluster, d)).collect();

    // A fourth database without the extension, for the user's own parallel query.
    postgres.batch_execute("CREATE DATABASE analytics").unwrap();
    let mut analytics = cluster.connect("analytics");
    analytics
        .batch_execute(
            "CREATE TABLE big AS SELECT g AS id FROM generate_series(1, 300000) g; ANALYZE big;
             SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
             SET min_parallel_table_scan_size = 0;",
        )
        .unwrap();

    // Every database's rules get going.
    let settle = Instant::now();
    for (app, name) in apps.iter_mut().zip(names) {
        wait_for(
            &format!("every rule of {name} running"),
            Duration::from_secs(30),
            || (cadence(app, Duration::from_secs(5)).0 > 0).then_some(()),
        );
    }
    let settled = settle.elapsed();

    // While they run: the parallel query launches every worker it planned, each time.
    let mut launched_all = 0;
    for _ in 0..10 {
        let (planned, launched) = parallel_workers(&mut analytics);
        assert_eq!(
            planned, 2,
            "the plan is parallel with the default 2 workers per gather"
        );
        if launched == planned {
            launched_all += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        launched_all, 10,
        "parallel query launched every worker it planned"
    );

    // run() works in every database while the extension is busy.
    for (app, name) in apps.iter_mut().zip(names) {
        let started = Instant::now();
        let status: String = app
            .query_one("SELECT status FROM token_cleanup.run('by_hand')", &[])
            .unwrap_or_else(|e| panic!("run() in {name}: {}", error_of(Err::<(), _>(e))))
            .get(0);
        assert_eq!(status, "succeeded", "run() in {name}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "run() in {name} took {:?}",
            started.elapsed()
        );
    }

    // A database that gets the extension later is served within seconds, the others going on.
    let created = Instant::now();
    let mut late = busy_database(&cluster, "late");
    wait_for(
        "the late database's rules running",
        Duration::from_secs(15),
        || (cadence(&mut late, Duration::from_secs(15)).0 > 0).then_some(()),
    );
    let late_after = created.elapsed();

    // Over 15 s with four databases taking turns: every every-second rule of every database ran
    // again and again, none waiting long.
    std::thread::sleep(Duration::from_secs(15));
    let window = Duration::from_secs(15);
    let mut worst_runs = i64::MAX;
    let mut worst_gap: f64 = 0.0;
    for (app, name) in apps
        .iter_mut()
        .chain(std::iter::once(&mut late))
        .zip(names.iter().chain(&["late"]))
    {
        let (runs, gap) = cadence(app, window);
        assert!(runs >= 7, "{name}: a rule ran only {runs} times in 15 s");
        assert!(gap <= 4.0, "{name}: a rule waited {gap:.1} s between runs");
        worst_runs = worst_runs.min(runs);
        worst_gap = worst_gap.max(gap);
    }
    // The budget held: never more than 4 of the extension's workers.
    let ours = count(
        &mut postgres,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pg_token_cleanup%'",
    );
    assert!(ours <= 4, "{ours} workers of the extension at once");
    assert!(
        !cluster.log().contains("could not start"),
        "no worker start failed for want of a slot"
    );
    assert!(
        !cluster
            .log()
            .contains("cannot hold pg_token_cleanup.max_workers"),
        "the defaults fit together"
    );
    figures.record(
        "every database's every-second rules run about every second; parallel query launches every worker it planned; run() succeeds in each database; a database created later is served within seconds",
        &format!(
            "first runs in all three databases within {:.1} s; parallel query launched 2 of 2 workers 10 of 10 times; run() succeeded in 3 of 3 databases; the late database's first run {:.1} s after CREATE DATABASE; then over 15 s the least-run rule ran {worst_runs} times, longest gap {worst_gap:.1} s; {ours} workers of the extension",
            settled.as_secs_f64(),
            late_after.as_secs_f64()
        ),
        "",
    );
}

/// Roles `noisy` and `quiet` in database `app`, each with CREATE on it (for a schema of its own):
/// noisy with one rule `endless_<i>` per lock timeout given, each of whose runs takes minutes
/// (0.1 s per row tested, 2,000 rows), quiet with an hourly rule `mine` on 100 expired rows.
/// Returns (superuser, noisy, quiet) connections.
fn noisy_and_quiet(cluster: &Cluster, lock_timeouts: &[&str]) -> (Client, Client, Client) {
    let mut admin = cluster.database_with_extension("app");
    admin
        .batch_execute(
            "CREATE ROLE noisy LOGIN; CREATE ROLE quiet LOGIN;
             GRANT CREATE ON DATABASE app TO noisy, quiet;",
        )
        .unwrap();
    let mut noisy = cluster.connect_as("app", "noisy");
    noisy.batch_execute("CREATE SCHEMA noisy").unwrap();
    for (i, lock_timeout) in lock_timeouts.iter().enumerate() {
        expiring_tokens(&mut noisy, &format!("noisy.t{i}"), 2000, 0);
        noisy
            .execute(
                "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, lock_timeout) \
                 VALUES ($1, $2, 'pg_catalog.pg_sleep(0.1) IS NOT NULL AND expires_at < pg_catalog.now()', '@yearly', $3::text::interval)",
                &[&format!("endless_{i}"), &format!("noisy.t{i}"), lock_timeout],
            )
            .unwrap();
    }
    let mut quiet = cluster.connect_as("app", "quiet");
    quiet.batch_execute("CREATE SCHEMA quiet").unwrap();
    expiring_tokens(&mut quiet, "quiet.tokens", 100, 10);
    add_rule(&mut quiet, "mine", "quiet.tokens", "@hourly");
    (admin, noisy, quiet)
}

#[test]
fn a_storm_of_cancelled_runs_by_one_role_starves_nobody() {
    let mut figures = Figures::start("a storm of cancelled run() calls by one role");
    let cluster = Cluster::start("shared_run_storm", &[]);
    let (mut admin, _noisy, mut quiet) = noisy_and_quiet(&cluster, &["5s"; 6]);

    // noisy: six sessions calling run() and cancelling it (statement_timeout) over and over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm: Vec<_> = (0..6)
        .map(|i| {
            let mut client = cluster.connect_as("app", "noisy");
            let stop = stop.clone();
            std::thread::spawn(move || {
                client
                    .batch_execute("SET statement_timeout = '400ms'")
                    .unwrap();
                let mut cancelled = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let e = error_of(client.query_one(
                        "SELECT status FROM token_cleanup.run($1)",
                        &[&format!("endless_{i}")],
                    ));
                    if e.contains("canceling statement due to statement timeout") {
                        cancelled += 1;
                    }
                }
                cancelled
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // quiet's run() gets through, each time, while the storm goes on.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let status: String = quiet
            .query_one("SELECT status FROM token_cleanup.run('mine')", &[])
            .unwrap_or_else(|e| panic!("quiet's run(): {}", error_of(Err::<(), _>(e))))
            .get(0);
        assert_eq!(status, "succeeded");
        slowest = slowest.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let cancelled: i32 = storm.into_iter().map(|t| t.join().unwrap()).sum();
    // Positive control: the storm really cancelled runs that had started.
    assert!(
        cancelled >= 6,
        "only {cancelled} run() calls were cancelled"
    );
    let interrupted = count(
        &mut admin,
        "SELECT count(*) FROM token_cleanup.runs WHERE rule_name LIKE 'endless_%' AND status = 'interrupted'",
    );
    assert!(
        interrupted >= 3,
        "only {interrupted} cancelled runs were recorded interrupted"
    );
    // No run outlives its cancelled caller: the runners are gone within seconds.
    wait_for("the storm's runners gone", Duration::from_secs(10), || {
        (count(
            &mut admin,
            "SELECT count(*) FROM token_cleanup.runs WHERE status = 'running'",
        ) == 0)
            .then_some(())
    });
    assert!(
        slowest < Duration::from_secs(5),
        "quiet's slowest run() took {slowest:?}"
    );
    figures.record(
        "another role's run() still succeeds; cancelled runs end with their callers",
        &format!(
            "6 sessions cancelling run() at 400 ms ({cancelled} cancelled, {interrupted} runs recorded interrupted); the other role's 5 run() calls all succeeded, slowest {:.2} s; no run left running",
            slowest.as_secs_f64()
        ),
        "",
    );
}

#[test]
fn a_role_whose_runs_never_end_holds_no_more_than_its_share() {
    let mut figures = Figures::start("a role whose runs never end");
    // A server sized for more runners (the test is about max_parallel_runs): four runner slots
    // per database, two owners.
    let cluster = Cluster::start(
        "shared_never_ending",
        &[
            "max_worker_processes = 12",
            "pg_token_cleanup.max_workers = 8",
            "pg_token_cleanup.max_parallel_runs = 4",
        ],
    );
    let mut admin = cluster.database_with_extension("app");
    admin
        .batch_execute(
            "CREATE ROLE hog LOGIN; CREATE ROLE fair LOGIN;
             GRANT CREATE ON DATABASE app TO hog, fair;",
        )
        .unwrap();
    let mut hog = cluster.connect_as("app", "hog");
    hog.batch_execute("CREATE SCHEMA hog").unwrap();
    for i in 0..4 {
        expiring_tokens(&mut hog, &format!("hog.t{i}"), 5000, 0);
        hog.execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) \
             VALUES ($1, $2, 'pg_catalog.pg_sleep(0.1) IS NOT NULL AND expires_at < pg_catalog.now()', $3)",
            &[&format!("endless_{i}"), &format!("hog.t{i}"), &EVERY_SECOND],
        )
        .unwrap();
    }
    // Alone, hog's runs take every slot of the database (positive control).
    wait_for("hog's runs in every slot", Duration::from_secs(20), || {
        (count(
            &mut admin,
            "SELECT count(*) FROM token_cleanup.runs WHERE status = 'running'",
        ) == 4)
            .then_some(())
    });
    let mut fair = cluster.connect_as("app", "fair");
    fair.batch_execute("CREATE SCHEMA fair").unwrap();
    expiring_tokens(&mut fair, "fair.tokens", 100, 10);
    add_rule(&mut fair, "mine", "fair.tokens", EVERY_SECOND);
    std::thread::sleep(Duration::from_secs(10));
    let hog_running = count(
        &mut admin,
        "SELECT count(*) FROM token_cleanup.runs WHERE rule_name LIKE 'endless_%' AND status = 'running'",
    );
    let fair_runs = count(
        &mut admin,
        "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'mine' AND status = 'succeeded' \
          AND started_at > pg_catalog.now() - interval '8 seconds'",
    );
    // Positive control: hog's runs really never end on their own.
    let hog_ended = count(
        &mut admin,
        "SELECT count(*) FROM token_cleanup.runs WHERE rule_name LIKE 'endless_%' AND status NOT IN ('running', 'interrupted')",
    );
    assert_eq!(hog_ended, 0, "hog's runs were meant to go on for minutes");
    // Its share is 4 slots / 2 owners: the run in the way of fair's rule was stopped, and hog gets
    // no slot back while fair's rules are due.
    let workers: Vec<String> = admin
        .query(
            "SELECT backend_type || ': ' || coalesce(query, '') FROM pg_stat_activity WHERE backend_type LIKE 'pg_token_cleanup%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        hog_running <= 3,
        "hog still holds {hog_running} of 4 slots: {workers:#?}"
    );
    let preempted = count(
        &mut admin,
        "SELECT count(*) FROM token_cleanup.runs WHERE rule_name LIKE 'endless_%' AND status = 'interrupted' \
          AND error LIKE 'stopped to give its runner to another owner''s due rule%'",
    );
    assert!(preempted >= 1, "no run of hog's was stopped for fair's");
    assert!(
        fair_runs >= 5,
        "fair's every-second rule ran {fair_runs} times in 8 s"
    );
    figures.record(
        "holds at most its share of max_parallel_runs; another owner's every-second rule keeps running",
        &format!("hog's 4 endless every-second rules took 4 of 4 slots alone; with fair's rule due, hog held {hog_running} ({preempted} of its runs stopped for fair's); fair's rule ran {fair_runs} times in 8 s"),
        "",
    );
}

#[test]
fn dropping_an_expired_partition_holds_its_exclusive_lock_only_for_the_drop() {
    let mut figures = Figures::start(
        "dropping an expired partition of 2,000,000 rows while the application reads the table",
    );
    let cluster = Cluster::start("shared_partition_drop", &["pg_token_cleanup.enabled = off"]);
    let mut admin = cluster.database_with_extension("app");
    admin
        .batch_execute("CREATE ROLE app LOGIN; GRANT CREATE ON DATABASE app TO app;")
        .unwrap();
    let mut app = cluster.connect_as("app", "app");
    app.batch_execute(
        "CREATE SCHEMA app;
         CREATE TABLE app.sessions (id bigint, expires_at timestamptz NOT NULL) PARTITION BY RANGE (expires_at);
         CREATE TABLE app.sessions_old PARTITION OF app.sessions FOR VALUES FROM ('2000-01-01') TO ('2001-01-01');
         CREATE TABLE app.sessions_now PARTITION OF app.sessions FOR VALUES FROM ('2001-01-01') TO ('2200-01-01');
         INSERT INTO app.sessions SELECT g, timestamptz '2000-01-01' + g * interval '1 second' FROM generate_series(1, 2000000) g;
         INSERT INTO app.sessions SELECT g, pg_catalog.now() + interval '1 day' FROM generate_series(2000001, 2001000) g;
         ANALYZE app.sessions;
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, drop_partitions, lock_timeout)
         VALUES ('expired', 'app.sessions', 'expires_at < pg_catalog.now()', '@daily', 'drop', '2s');",
    )
    .unwrap();
    // What reading the old partition's matching rows takes: 0.3 counted them twice under ACCESS
    // EXCLUSIVE, every reader of app.sessions waiting meanwhile.
    let started = Instant::now();
    count(
        &mut app,
        "SELECT count(*) FROM ONLY app.sessions_old WHERE expires_at < pg_catalog.now()",
    );
    let scan = started.elapsed();

    // A reader of the partitioned table all along: its longest wait is the exclusive hold.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reader = cluster.connect_as("app", "app");
    let probing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut longest = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = Instant::now();
                reader
                    .query("SELECT 1 FROM app.sessions LIMIT 0", &[])
                    .unwrap();
                longest = longest.max(started.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
            longest
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let run_id: i64 = app
        .query_one("SELECT run_id FROM token_cleanup.run('expired')", &[])
        .unwrap()
        .get(0);
    let row = app
        .query_one(
            "SELECT rows_deleted, partitions_dropped FROM token_cleanup.runs WHERE id = $1",
            &[&run_id],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let stall = probing.join().unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        2_000_000,
        "every row of the old partition counted"
    );
    assert_eq!(row.get::<_, i32>(1), 1, "the old partition dropped");
    assert_eq!(count(&mut app, "SELECT count(*) FROM app.sessions"), 1000);
    // Positive control: the bounds proved it, no row was tested against the condition.
    assert!(
        cluster
            .log()
            .contains("every row of partition app.sessions_old matches by its bounds"),
        "the partition's bounds were not used"
    );
    assert!(
        stall * 2 < scan,
        "a reader waited {stall:?}; reading the partition takes {scan:?}"
    );
    figures.record(
        "ACCESS EXCLUSIVE held only for the DROP itself, never while rows are read",
        &format!(
            "the partition's bounds proved every row matches; a reader of the partitioned table waited at most {:.0} ms, where one read of the partition's matching rows takes {:.0} ms (0.3 held the lock for two)",
            stall.as_secs_f64() * 1e3,
            scan.as_secs_f64() * 1e3
        ),
        "",
    );
}

#[test]
fn a_budget_that_max_worker_processes_cannot_hold_is_named_in_the_log_with_the_fix() {
    let cluster = Cluster::start("shared_budget_warning", &["max_worker_processes = 6"]);
    let warning = "pg_token_cleanup: max_worker_processes = 6 cannot hold pg_token_cleanup.max_workers = 4 \
                   plus the 4 slots the server's own work needs (parallel query, logical replication): set \
                   max_worker_processes to at least 8 (restart needed), or lower pg_token_cleanup.max_workers to 2";
    wait_for("the warning at startup", Duration::from_secs(10), || {
        cluster.log().contains(warning).then_some(())
    });
    // Once: a reload that changes nothing says nothing more; one that lowers the budget enough
    // says nothing at all; one that raises it again says so with the new numbers.
    let mut postgres = cluster.connect("postgres");
    postgres.batch_execute("SELECT pg_reload_conf()").unwrap();
    alter_system(&mut postgres, "pg_token_cleanup.max_workers", "2");
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        cluster
            .log()
            .matches("cannot hold pg_token_cleanup.max_workers")
            .count(),
        1
    );
    alter_system(&mut postgres, "pg_token_cleanup.max_workers", "3");
    wait_for(
        "the warning after the reload",
        Duration::from_secs(10),
        || {
            cluster
                .log()
                .contains("max_worker_processes = 6 cannot hold pg_token_cleanup.max_workers = 3")
                .then_some(())
        },
    );
    assert_eq!(
        cluster
            .log()
            .matches("cannot hold pg_token_cleanup.max_workers")
            .count(),
        2
    );
}

#[test]
fn one_role_s_endless_run_calls_hold_only_its_share_of_the_workers() {
    let mut figures =
        Figures::start("one role's run() calls that never end, beside another role's run()");
    let cluster = Cluster::start("shared_role_share", &[]);
    let (mut admin, mut noisy, mut quiet) = noisy_and_quiet(&cluster, &["30s", "1s", "30s"]);

    // noisy's first call gets a worker and never ends.
    let first = {
        let mut client = cluster.connect_as("app", "noisy");
        std::thread::spawn(move || {
            error_of(client.query_one("SELECT status FROM token_cleanup.run('endless_0')", &[]))
        })
    };
    wait_for("noisy's first run going", Duration::from_secs(10), || {
        (count(&mut admin, "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'endless_0' AND status = 'running'") == 1)
            .then_some(())
    });
    // Its third waits (up to its 30 s lock_timeout) for one of noisy's own to end.
    let third = {
        let mut client = cluster.connect_as("app", "noisy");
        std::thread::spawn(move || {
            error_of(client.query_one("SELECT status FROM token_cleanup.run('endless_2')", &[]))
        })
    };
    // Its second, with lock_timeout 1 s, says why it got no worker, though the budget has room.
    let second =
        error_of(noisy.query_one("SELECT status FROM token_cleanup.run('endless_1')", &[]));
    assert_eq!(
        second,
        "could not run rule \"endless_1\": run() calls of your role already hold 1 of the workers, its share of \
         pg_token_cleanup.max_workers = 4, and none ended within 1000 ms"
    );
    // quiet's call gets a worker at once.
    let started = Instant::now();
    let status: String = quiet
        .query_one("SELECT status FROM token_cleanup.run('mine')", &[])
        .unwrap_or_else(|e| panic!("quiet's run(): {}", error_of(Err::<(), _>(e))))
        .get(0);
    let took = started.elapsed();
    assert_eq!(status, "succeeded");
    assert!(took < Duration::from_secs(3), "quiet's run() took {took:?}");
    // Positive control: noisy's first run is still going, its third still waiting.
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM token_cleanup.runs WHERE rule_name LIKE 'endless_%' AND status = 'running'"),
        1
    );
    assert!(!third.is_finished(), "noisy's third call is still waiting");
    admin
        .batch_execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = 'noisy' AND query LIKE '%token_cleanup.run%'")
        .unwrap();
    for call in [first, third] {
        assert_eq!(
            call.join().unwrap(),
            "canceling statement due to user request"
        );
    }
    figures.record(
        "a role's run() calls hold at most its share of the budget; another role's run() gets a worker at once",
        &format!(
            "noisy's first call ran (never ending), its second was refused after its 1 s lock_timeout naming the role's share, its third waited; quiet's run() succeeded in {:.2} s",
            took.as_secs_f64()
        ),
        "",
    );
}

#[test]
fn create_extension_just_after_a_probe_is_served_while_the_budget_is_full() {
    // Two workers: the launcher and one scheduler, which a busy database holds. A database created
    // later is probed in that slot (the busy scheduler hands it over and comes back), and gets the
    // extension at once: its CREATE EXTENSION must queue it for a slot although it was probed less
    // than a second before, or nobody waits, the busy scheduler never hands its slot over, and the
    // new database's rules never run.
    let cluster = Cluster::start(
        "late_probe",
        &[
            "pg_token_cleanup.max_workers = 2",
            "pg_token_cleanup.database_probe_interval = '1h'",
            // The probe says so at DEBUG1 only.
            "log_min_messages = debug1",
        ],
    );
    let mut busy = busy_database(&cluster, "busy");
    wait_for(
        "the busy database's rules running",
        Duration::from_secs(15),
        || (cadence(&mut busy, Duration::from_secs(2)).0 >= 1).then_some(()),
    );
    const PROBE: &str = "scheduler not starting: extension not installed";
    let probes = cluster.log().matches(PROBE).count();
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE late")
        .unwrap();
    // Positive control: the probe of the new database happened.
    wait_for(
        "the probe of the new database",
        Duration::from_secs(20),
        || (cluster.log().matches(PROBE).count() > probes).then_some(()),
    );
    let probed = Instant::now();
    let mut late = cluster.connect("late");
    late.batch_execute("CREATE EXTENSION pg_token_cleanup")
        .unwrap();
    let after_the_probe = probed.elapsed();
    expiring_tokens(&mut late, "public.tokens", 100, 10);
    add_rule(&mut late, "late_rule", "public.tokens", EVERY_SECOND);
    wait_for(
        "the late database's rule to run",
        Duration::from_secs(15),
        || (count(&mut late, "SELECT count(*) FROM public.tokens") == 10).then_some(()),
    );
    assert!(
        after_the_probe < Duration::from_millis(800),
        "CREATE EXTENSION came {after_the_probe:?} after the probe: the case under test was not reached"
    );
    // The busy database is served again too.
    let before = count(&mut busy, "SELECT count(*) FROM token_cleanup.runs");
    wait_for(
        "the busy database's rules running again",
        Duration::from_secs(20),
        || (count(&mut busy, "SELECT count(*) FROM token_cleanup.runs") > before).then_some(()),
    );
}
