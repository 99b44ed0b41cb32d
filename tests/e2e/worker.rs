//! End-to-end tests of the background workers against live clusters with real commits: scheduled
//! purges and their records, rule changes picked up without restart, a failing rule isolated, two
//! databases served, SIGTERM in the middle of a run, DROP EXTENSION / DROP DATABASE never blocked,
//! a missed schedule firing once after downtime, the utility hook's error pass-through.

use crate::common::{
    add_rule, count, failed_run_error, live_checksum, token_table, wait_for, wait_for_count,
    Cluster, Figures,
};
use std::time::{Duration, Instant};

const EVERY_SECOND: &str = "* * * * * *";

#[test]
fn worker_purges_on_a_seconds_schedule_and_records_the_run() {
    let cluster = Cluster::start("purge", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.refresh_tokens", 5_000, 3_000);
    let before = live_checksum(&mut db, "public.refresh_tokens");
    add_rule(
        &mut db,
        "refresh",
        "refresh_tokens",
        "revoked OR expires_at < now()",
        EVERY_SECOND,
        Some(1000),
    );
    wait_for("expired rows to be purged", Duration::from_secs(30), || {
        (count(
            &mut db,
            "SELECT count(*) FROM refresh_tokens WHERE expires_at < now()",
        ) == 0)
            .then_some(())
    });
    assert_eq!(
        live_checksum(&mut db, "public.refresh_tokens"),
        before,
        "live rows must be untouched"
    );
    let row = wait_for("the run to be recorded", Duration::from_secs(10), || {
        db.query_opt(
            "SELECT rule_name, trigger, status, rows_deleted, batches, finished_at IS NOT NULL, scheduled_for IS NOT NULL, method \
               FROM token_cleanup.runs WHERE rows_deleted > 0 AND status <> 'running' ORDER BY id LIMIT 1",
            &[],
        )
        .unwrap()
    });
    let (name, trigger, status): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (name.as_str(), trigger.as_str(), status.as_str()),
        ("refresh", "schedule", "succeeded")
    );
    // 5,000 rows in batches of at most 1,000; no index serves the condition: a walk of the table.
    let batches = row.get::<_, i32>(4);
    assert_eq!(row.get::<_, i64>(3), 5_000);
    assert!(batches >= 5, "{batches} batches");
    assert!(row.get::<_, bool>(5) && row.get::<_, bool>(6));
    assert_eq!(row.get::<_, String>(7), "table walk");
    // Every run writes one LOG line with rule, rows, batches, method and duration.
    let log = cluster.log();
    assert!(
        log.contains("rule \"refresh\" run")
            && log.contains(&format!(
                "deleted 5000 rows from public.refresh_tokens in {batches} batches in"
            ))
            && log.contains("(by table walk, "),
        "{log}"
    );
    // rule_stats aggregates it.
    let stats = db
        .query_one(
            "SELECT total_rows_deleted, succeeded >= 1, last_status, next_run_at > now() - interval '1 second' \
               FROM token_cleanup.rule_stats WHERE rule = 'refresh'",
            &[],
        )
        .unwrap();
    assert_eq!(stats.get::<_, i64>(0), 5_000);
    assert!(stats.get::<_, bool>(1));
    assert_eq!(stats.get::<_, String>(2), "succeeded");
    assert!(stats.get::<_, bool>(3));
}

#[test]
fn rule_changes_take_effect_within_a_second_without_restart() {
    let cluster = Cluster::start("changes", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.sessions", 100, 10);
    // Let the scheduler start and settle with no rules.
    wait_for_count(
        &mut db,
        "the scheduler",
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler'",
        1,
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_secs(2));
    let inserted = Instant::now();
    add_rule(
        &mut db,
        "s",
        "public.sessions",
        "expires_at < now()",
        EVERY_SECOND,
        None,
    );
    wait_for("the new rule's first run", Duration::from_secs(10), || {
        (count(&mut db, "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 's' AND status = 'succeeded'") > 0)
            .then_some(())
    });
    assert!(
        inserted.elapsed() < Duration::from_secs(4),
        "picked up after {:?}",
        inserted.elapsed()
    );

    // Disabling it stops its runs.
    db.execute(
        "UPDATE token_cleanup.rules SET enabled = false WHERE name = 's'",
        &[],
    )
    .unwrap();
    assert_no_new_runs(&mut db);

    // pg_token_cleanup.enabled = off pauses every scheduled run, after a reload, without restart.
    db.execute(
        "UPDATE token_cleanup.rules SET enabled = true WHERE name = 's'",
        &[],
    )
    .unwrap();
    set_enabled_setting(&mut db, false);
    let runs = assert_no_new_runs(&mut db);
    set_enabled_setting(&mut db, true);
    wait_for("runs to resume", Duration::from_secs(90), || {
        (count(&mut db, RUNS_OF_S) > runs).then_some(())
    });
}

/// A reload reads only the rules whose row changed (their `xmin`): a changed condition and a changed
/// schedule reach the runs, a deleted rule stops, and a rule nobody touched keeps running.
#[test]
fn each_changed_rule_is_read_again_and_the_others_keep_running() {
    let cluster = Cluster::start("incremental", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.t_a", 100, 10);
    token_table(&mut db, "public.t_b", 100, 10);
    token_table(&mut db, "public.t_c", 100, 10);
    add_rule(
        &mut db,
        "a",
        "public.t_a",
        "expires_at < now() AND id <= 10",
        EVERY_SECOND,
        None,
    );
    add_rule(
        &mut db,
        "b",
        "public.t_b",
        "expires_at < now()",
        EVERY_SECOND,
        None,
    );
    add_rule(
        &mut db,
        "c",
        "public.t_c",
        "expires_at < now()",
        "0 0 1 1 *",
        None,
    );
    let a_left = "SELECT count(*) FROM public.t_a WHERE expires_at < now()";
    wait_for_count(
        &mut db,
        "rule a's first run",
        a_left,
        90,
        Duration::from_secs(20),
    );
    let runs_of = |db: &mut postgres::Client, rule: &str| {
        count(
            db,
            &format!("SELECT count(*) FROM token_cleanup.runs WHERE rule_name = '{rule}'"),
        )
    };
    // Control: rule a keeps to its old condition until the change (ids 11..100 stay).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&mut db, a_left), 90);

    db.execute(
        "UPDATE token_cleanup.rules SET condition = 'expires_at < now() AND id <= 50' WHERE name = 'a'",
        &[],
    )
    .unwrap();
    db.execute(
        "UPDATE token_cleanup.rules SET schedule = '* * * * * *' WHERE name = 'c'",
        &[],
    )
    .unwrap();
    let b_runs = runs_of(&mut db, "b");
    wait_for_count(
        &mut db,
        "rule a's new condition",
        a_left,
        50,
        Duration::from_secs(10),
    );
    wait_for_count(
        &mut db,
        "rule c's new schedule",
        "SELECT count(*) FROM public.t_c WHERE expires_at < now()",
        0,
        Duration::from_secs(10),
    );
    assert!(
        runs_of(&mut db, "b") > b_runs,
        "rule b, unchanged, stopped running"
    );

    db.execute("DELETE FROM token_cleanup.rules WHERE name = 'b'", &[])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let b_runs = runs_of(&mut db, "b");
    let a_runs = runs_of(&mut db, "a");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        runs_of(&mut db, "b"),
        b_runs,
        "rule b ran after it was deleted"
    );
    assert!(
        runs_of(&mut db, "a") > a_runs,
        "rule a stopped when b was deleted"
    );
}

/// A new pg_token_cleanup.timezone, applied with a reload of the configuration, moves the next run
/// of every rule without a zone of its own at once, without any rule changing.
#[test]
fn a_new_timezone_setting_moves_the_rules_at_the_configuration_reload() {
    let cluster = Cluster::start("timezone", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.codes", 10, 10);
    // Twelve seconds from now on the clocks of Kiritimati (UTC+14): in UTC, that time of day is
    // 14 hours away, or 10 hours past.
    let at: String = db
        .query_one(
            "SELECT to_char((now() + interval '12 seconds') AT TIME ZONE 'Pacific/Kiritimati', 'SS MI HH24')",
            &[],
        )
        .unwrap()
        .get(0);
    add_rule(
        &mut db,
        "daily",
        "public.codes",
        "expires_at < now()",
        &format!("{at} * * *"),
        None,
    );
    let expired = "SELECT count(*) FROM public.codes WHERE expires_at < now()";
    // Control: evaluated in UTC, the rule does not run.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&mut db, expired), 10, "ran while evaluated in UTC");
    crate::common::alter_system(&mut db, "pg_token_cleanup.timezone", "Pacific/Kiritimati");
    wait_for_count(
        &mut db,
        "the run at the Kiritimati time",
        expired,
        0,
        Duration::from_secs(20),
    );
    let late: f64 = db
        .query_one(
            "SELECT extract(epoch FROM started_at - scheduled_for)::float8 FROM token_cleanup.runs WHERE rule_name = 'daily'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(late < 2.0, "started {late} s after its due time");
}

const RUNS_OF_S: &str = "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 's'";

/// Asserts that rule `s` starts no run for a few seconds (after a moment for the change to land);
/// returns its run count.
fn assert_no_new_runs(db: &mut postgres::Client) -> i64 {
    std::thread::sleep(Duration::from_millis(1500));
    let runs = count(db, RUNS_OF_S);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(db, RUNS_OF_S), runs, "rule s ran while it should not");
    runs
}

/// `ALTER SYSTEM SET pg_token_cleanup.enabled` and reload.
fn set_enabled_setting(db: &mut postgres::Client, on: bool) {
    crate::common::alter_system(
        db,
        "pg_token_cleanup.enabled",
        if on { "on" } else { "off" },
    );
}

#[test]
fn a_rule_on_a_dropped_table_fails_alone() {
    let mut figures = Figures::start("the rule's table dropped after the rule was created");
    let cluster = Cluster::start("dropped", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.doomed", 10, 10);
    token_table(&mut db, "public.kept", 10, 10);
    db.execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES \
           ('doomed', 'public.doomed', 'expires_at < now()', $1), ('kept', 'public.kept', 'expires_at < now()', $1)",
        &[&EVERY_SECOND],
    )
    .unwrap();
    db.batch_execute("DROP TABLE public.doomed").unwrap();
    let error = failed_run_error(&mut db, "doomed");
    assert_eq!(
        error,
        "table public.doomed of rule \"doomed\" does not exist (dropped or renamed?) (SQLSTATE 42P01)"
    );
    // The other rule keeps being served: fresh expired rows keep disappearing.
    for round in 0..2 {
        db.execute(
            "INSERT INTO public.kept SELECT 1000 + g + $1::bigint * 100, 0, false, now() - interval '1 hour' FROM generate_series(1, 50) g",
            &[&(round as i64)],
        )
        .unwrap();
        wait_for("the kept rule to purge", Duration::from_secs(20), || {
            (count(
                &mut db,
                "SELECT count(*) FROM public.kept WHERE expires_at < now()",
            ) == 0)
                .then_some(())
        });
    }
    assert_eq!(count(&mut db, "SELECT count(*) FROM public.kept"), 10);
    figures.record(
        "two rules every second; one table dropped",
        "its runs fail with \"table public.doomed of rule … does not exist (dropped or renamed?)\"; the other rule purged two more waves of 50 expired rows, its 10 live rows untouched",
        "",
    );
}

#[test]
fn two_databases_are_both_served() {
    let cluster = Cluster::start("twodb", &[]);
    let mut one = cluster.database_with_extension("one");
    let mut two = cluster.database_with_extension("two");
    for db in [&mut one, &mut two] {
        token_table(db, "public.tokens", 200, 20);
        add_rule(
            db,
            "t",
            "public.tokens",
            "expires_at < now()",
            EVERY_SECOND,
            None,
        );
    }
    for db in [&mut one, &mut two] {
        wait_for("both databases purged", Duration::from_secs(30), || {
            (count(db, "SELECT count(*) FROM public.tokens") == 20).then_some(())
        });
    }
    // Both schedulers up at once. Not at one given instant: while the launcher probes the other
    // databases for the extension, a scheduler may lend its slot of the budget for a moment (it is
    // back when its next rule is due, within a second here).
    wait_for(
        "a scheduler in each database",
        Duration::from_secs(15),
        || {
            (count(
            &mut one,
            "SELECT count(DISTINCT datname) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler'",
        ) == 2)
            .then_some(())
        },
    );
}

#[test]
fn sigterm_mid_run_leaves_it_interrupted_and_deletes_only_matching_rows() {
    let mut figures = Figures::start("SIGTERM to the scheduler mid-run (pg_terminate_backend)");
    let cluster = Cluster::start("sigterm", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.refresh_tokens", 200_000, 50_000);
    let live = live_checksum(&mut db, "public.refresh_tokens");
    // Small batches make a long run: 4,000 batches.
    add_rule(
        &mut db,
        "slow",
        "public.refresh_tokens",
        "expires_at < now()",
        EVERY_SECOND,
        Some(50),
    );
    let run_id: i64 = wait_for("a run in progress", Duration::from_secs(30), || {
        db.query_opt(
            "SELECT run_id FROM token_cleanup.progress WHERE rows_deleted > 0",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0))
    });
    // A manual run meanwhile is refused clearly: a rule never runs twice at once.
    let busy = db
        .query("SELECT * FROM token_cleanup.run('slow')", &[])
        .unwrap_err();
    let busy = busy.as_db_error().expect("a database error");
    assert_eq!(busy.code().code(), "55006");
    assert!(
        busy.message().contains("already running as run"),
        "{}",
        busy.message()
    );

    let terminated: bool = db
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(terminated);
    let (status, deleted, error): (String, i64, String) = wait_for(
        "the run to be marked interrupted",
        Duration::from_secs(10),
        || {
            db.query_opt(
                "SELECT status, rows_deleted, error FROM token_cleanup.runs WHERE id = $1 AND status <> 'running'",
                &[&run_id],
            )
            .unwrap()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
        },
    );
    assert_eq!(status, "interrupted");
    assert!(error.starts_with("stopped by SIGTERM"), "{error}");
    let remaining_expired = count(
        &mut db,
        "SELECT count(*) FROM public.refresh_tokens WHERE expires_at < now()",
    );
    assert!(
        deleted > 0 && remaining_expired > 0,
        "deleted {deleted}, remaining {remaining_expired}"
    );
    assert_eq!(
        deleted + remaining_expired,
        200_000,
        "the record matches what was deleted"
    );
    assert_eq!(
        live_checksum(&mut db, "public.refresh_tokens"),
        live,
        "only matching rows were deleted"
    );
    // The launcher brings a scheduler back and a later run finishes the job.
    wait_for(
        "the remaining rows to be purged",
        Duration::from_secs(120),
        || {
            (count(
                &mut db,
                "SELECT count(*) FROM public.refresh_tokens WHERE expires_at < now()",
            ) == 0)
                .then_some(())
        },
    );
    assert_eq!(live_checksum(&mut db, "public.refresh_tokens"), live);
    figures.record(
        "200k expired + 50k live rows, batches of 50; a manual run attempted meanwhile; then SIGTERM",
        &format!("manual run refused with 55006 \"already running\"; run recorded interrupted with {deleted} rows deleted = rows gone; launcher restarted the scheduler and a later run purged the rest; live-row checksum unchanged"),
        "",
    );
}

#[test]
fn drop_extension_create_database_template_and_drop_database_are_not_blocked() {
    let mut figures = Figures::start("DROP EXTENSION, CREATE EXTENSION, CREATE DATABASE … TEMPLATE, DROP DATABASE while the scheduler is connected");
    let cluster = Cluster::start("drops", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.tokens", 10, 10);
    add_rule(
        &mut db,
        "t",
        "public.tokens",
        "expires_at < now()",
        EVERY_SECOND,
        None,
    );
    wait_for("a first run", Duration::from_secs(20), || {
        (count(&mut db, "SELECT count(*) FROM token_cleanup.runs") > 0).then_some(())
    });
    let started = Instant::now();
    db.batch_execute("SET lock_timeout = '10s'; DROP EXTENSION pg_token_cleanup")
        .unwrap();
    let drop_extension = started.elapsed();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "DROP EXTENSION took {:?}",
        started.elapsed()
    );

    // CREATE EXTENSION again is served without a restart.
    db.batch_execute("CREATE EXTENSION pg_token_cleanup")
        .unwrap();
    db.batch_execute("INSERT INTO public.tokens VALUES (100, 0, false, now() - interval '1 day')")
        .unwrap();
    add_rule(
        &mut db,
        "t",
        "public.tokens",
        "expires_at < now()",
        EVERY_SECOND,
        None,
    );
    wait_for(
        "the recreated extension to be served",
        Duration::from_secs(30),
        || {
            (count(
                &mut db,
                "SELECT count(*) FROM public.tokens WHERE expires_at < now()",
            ) == 0)
                .then_some(())
        },
    );
    drop(db);

    let mut admin = cluster.connect("postgres");
    // Copying a served database as a template needs it to itself, too; the copy is served as well.
    let started = Instant::now();
    admin
        .batch_execute("CREATE DATABASE app_copy TEMPLATE app")
        .unwrap();
    let template_copy = started.elapsed();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "CREATE DATABASE … TEMPLATE took {:?}",
        started.elapsed()
    );
    let mut copy = cluster.connect("app_copy");
    copy.batch_execute(
        "INSERT INTO public.tokens VALUES (101, 0, false, now() - interval '1 day')",
    )
    .unwrap();
    wait_for_count(
        &mut copy,
        "the copied database to be served",
        "SELECT count(*) FROM public.tokens WHERE expires_at < now()",
        0,
        Duration::from_secs(30),
    );

    let started = Instant::now();
    admin.batch_execute("DROP DATABASE app").unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "DROP DATABASE took {:?}",
        started.elapsed()
    );
    figures.record(
        "rule every second; each statement run while the database's scheduler was connected",
        &format!(
            "DROP EXTENSION {:.2} s; CREATE EXTENSION again served without restart; template copy {:.2} s (copy then served); plain DROP DATABASE {:.2} s",
            drop_extension.as_secs_f64(),
            template_copy.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ),
        "",
    );
}

#[test]
fn a_missed_schedule_fires_once_after_downtime() {
    let cluster = Cluster::start("missed", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.tokens", 10, 10);
    // Daily, twelve hours away from now, so no regular slot falls inside the test.
    let hour: i32 = db
        .query_one(
            "SELECT ((extract(hour FROM now() AT TIME ZONE 'UTC')::int + 12) % 24)",
            &[],
        )
        .unwrap()
        .get(0);
    let schedule = format!("0 {hour} * * *");
    db.execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('daily', 'public.tokens', 'expires_at < now()', $1)",
        &[&schedule],
    )
    .unwrap();
    // Pretend the rule last ran, and last changed, three days ago: three slots were missed. Scheduled
    // runs are paused meanwhile so that the catch-up happens only after the restart.
    set_enabled_setting(&mut db, false);
    std::thread::sleep(Duration::from_millis(500));
    db.batch_execute(
        "ALTER TABLE token_cleanup.rules DISABLE TRIGGER rules_validate;
         UPDATE token_cleanup.rules SET updated_at = now() - interval '3 days 1 hour';
         ALTER TABLE token_cleanup.rules ENABLE TRIGGER rules_validate;
         INSERT INTO token_cleanup.runs (rule_id, rule_name, owner, trigger, status, scheduled_for, started_at, finished_at)
           SELECT id, name, owner, 'schedule', 'succeeded', now() - interval '3 days 1 hour',
                  now() - interval '3 days 1 hour', now() - interval '3 days 1 hour' FROM token_cleanup.rules;",
    )
    .unwrap();
    // Back on at the restart (no reload before it).
    db.batch_execute("ALTER SYSTEM SET pg_token_cleanup.enabled = on")
        .unwrap();
    drop(db);
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let mut db = cluster.connect("app");
    wait_for_count(
        &mut db,
        "the catch-up run",
        "SELECT count(*) FROM token_cleanup.runs WHERE status = 'succeeded' AND rows_deleted = 10",
        1,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM token_cleanup.runs WHERE started_at > now() - interval '1 hour'"
        ),
        1,
        "a missed schedule fires once, not once per missed slot"
    );
    // And a restart after the catch-up does not fire the older missed slots either.
    drop(db);
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let mut db = cluster.connect("app");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM token_cleanup.runs WHERE started_at > now() - interval '1 hour'"
        ),
        1
    );
}

#[test]
fn without_preloading_create_extension_fails_with_a_hint() {
    let cluster = Cluster::start_with("nopreload", "", &[]);
    let mut db = cluster.connect("postgres");
    let err = db
        .batch_execute("CREATE EXTENSION pg_token_cleanup")
        .unwrap_err();
    let err = err.as_db_error().expect("a database error");
    assert_eq!(
        err.message(),
        "pg_token_cleanup must be loaded via shared_preload_libraries"
    );
    assert_eq!(err.code().code(), "55000");
    assert!(
        err.hint()
            .unwrap_or_default()
            .contains("shared_preload_libraries"),
        "{:?}",
        err.hint()
    );
}

#[test]
fn scheduler_start_marks_orphaned_runs_interrupted_and_prunes_old_history() {
    let cluster = Cluster::start(
        "housekeeping",
        &["pg_token_cleanup.history_retention = '1h'"],
    );
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.tokens", 1, 1);
    db.batch_execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ('t', 'public.tokens', 'expires_at < now()', '@yearly');
         INSERT INTO token_cleanup.runs (rule_id, rule_name, owner, trigger, status, started_at, pid)
           SELECT id, name, owner, 'schedule', 'running', now() - interval '5 minutes', 2147483000 FROM token_cleanup.rules;
         INSERT INTO token_cleanup.runs (rule_id, rule_name, owner, trigger, status, started_at, finished_at)
           SELECT id, name, owner, 'schedule', 'succeeded', now() - interval '2 hours', now() - interval '2 hours'
             FROM token_cleanup.rules;
         INSERT INTO token_cleanup.runs (rule_id, rule_name, owner, trigger, status, started_at, finished_at)
           SELECT id, name, owner, 'schedule', 'succeeded', now() - interval '10 minutes', now() - interval '10 minutes'
             FROM token_cleanup.rules;",
    )
    .unwrap();
    // A scheduler starting (here: after pg_terminate_backend, started again by the launcher) does
    // its housekeeping first.
    db.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler'",
    )
    .unwrap();
    wait_for(
        "the orphaned run to be marked interrupted",
        Duration::from_secs(30),
        || {
            (count(
                &mut db,
                "SELECT count(*) FROM token_cleanup.runs WHERE status = 'interrupted'",
            ) == 1)
                .then_some(())
        },
    );
    let error: String = db
        .query_one(
            "SELECT error FROM token_cleanup.runs WHERE status = 'interrupted'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        error,
        "the process running it ended before the run finished (crash, kill or shutdown)"
    );
    wait_for(
        "history older than an hour to be pruned",
        Duration::from_secs(10),
        || {
            (count(&mut db, "SELECT count(*) FROM token_cleanup.runs WHERE started_at < now() - interval '1 hour'") == 0)
            .then_some(())
        },
    );
    assert_eq!(count(&mut db, "SELECT count(*) FROM token_cleanup.runs"), 2);
}

#[test]
fn utility_statement_errors_reach_clients_untouched_through_the_hook() {
    let cluster = Cluster::start("hookerrors", &[]);
    let mut db = cluster.database_with_extension("app");
    db.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (1)")
        .unwrap();
    let err = db
        .batch_execute("CREATE UNIQUE INDEX t_id_key ON t (id)")
        .unwrap_err();
    let err = err.as_db_error().expect("a database error");
    assert_eq!(err.message(), "could not create unique index \"t_id_key\"");
    assert_eq!(err.detail(), Some("Key (id)=(1) is duplicated."));
    assert_eq!(err.constraint(), Some("t_id_key"));
    let err = db
        .batch_execute("DROP DATABASE no_such_database")
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "database \"no_such_database\" does not exist"
    );
}

#[test]
fn create_extension_in_a_database_probed_before_is_served_at_once() {
    // The launcher probed `postgres` at start and found no extension; with an hour between probes,
    // only CREATE EXTENSION's wake-up can start its scheduler.
    let cluster = Cluster::start("wake", &["pg_token_cleanup.database_probe_interval = '1h'"]);
    let mut db = cluster.connect("postgres");
    std::thread::sleep(Duration::from_millis(300));
    db.batch_execute("CREATE EXTENSION pg_token_cleanup")
        .unwrap();
    token_table(&mut db, "public.tokens", 10, 10);
    add_rule(
        &mut db,
        "t",
        "public.tokens",
        "expires_at < now()",
        EVERY_SECOND,
        None,
    );
    wait_for_count(
        &mut db,
        "the rule to run",
        "SELECT count(*) FROM public.tokens",
        10,
        Duration::from_secs(15),
    );
}
