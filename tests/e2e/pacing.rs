//! Pacing by the database's own signals, end to end against live clusters: a standby whose replay
//! is paused stops a purge within about `max_replica_lag` and the purge finishes once replay resumes;
//! `max_wal_rate` holds a run's WAL to its rate; `yield_to_waiters` makes a run step aside for a
//! migration queued on its table instead of queueing behind it. Each with a control run that shows
//! the signal, not something else, made the difference.

use crate::common::{count, expiring_tokens, wait_for, Cluster, Figures};
use postgres::Client;
use std::time::{Duration, Instant};

/// A manual run of `rule` by `role`, in a thread of its own (run() waits for the run to end): its
/// status.
fn run_in_background(cluster: &Cluster, role: &str, rule: &str) -> std::thread::JoinHandle<String> {
    let mut client = cluster.connect_as("app", role);
    let rule = rule.to_string();
    std::thread::spawn(move || {
        match client.query_one("SELECT status FROM token_cleanup.run($1)", &[&rule]) {
            Ok(row) => row.get(0),
            Err(e) => format!(
                "error: {}",
                e.as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_string())
            ),
        }
    })
}

/// rows_deleted of the rule's run in progress, after its last batch (0 before its first).
fn progress(db: &mut Client, rule: &str) -> i64 {
    db.query_opt(
        "SELECT rows_deleted FROM token_cleanup.progress WHERE rule = $1",
        &[&rule],
    )
    .unwrap()
    .map_or(0, |r| r.get(0))
}

/// Seconds paused for `reason` by the rule's last finished run.
fn paused_for(db: &mut Client, rule: &str, reason: &str) -> f64 {
    db.query_one(
        "SELECT coalesce((pause_reasons ->> $2)::float8, 0) FROM token_cleanup.runs \
          WHERE rule_name = $1 AND status <> 'running' ORDER BY id DESC LIMIT 1",
        &[&rule, &reason],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_standby_that_stops_replaying_stops_the_purge_until_it_resumes() {
    let mut figures = Figures::start("standby replay paused mid-purge (max_replica_lag = 1 s)");
    if !crate::common::have_client_tools(&["pg_basebackup"]) {
        return;
    }
    let primary = Cluster::start(
        "lag_primary",
        &["wal_level = replica", "max_wal_senders = 4"],
    );
    let mut db = primary.database_with_extension("app");
    let standby = primary.replica("lag_standby", &[]);
    let mut replica = standby.connect("app");
    // 40,000 rows at 10,000 rows/s: about four seconds of purging, in batches of 500.
    expiring_tokens(&mut db, "public.tokens", 40_000, 100);
    db.batch_execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_rows_per_second)
           VALUES ('unpaced', 'public.tokens', 'expires_at < now()', '@yearly', 500, 10000);",
    )
    .unwrap();
    wait_for("the standby to stream", Duration::from_secs(30), || {
        (count(
            &mut db,
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        ) == 1)
            .then_some(())
    });

    // Control: with replay paused and no max_replica_lag, the purge runs to its end.
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        run_in_background(&primary, "postgres", "unpaced")
            .join()
            .unwrap(),
        "succeeded"
    );
    let unpaced = started.elapsed();
    assert_eq!(count(&mut db, "SELECT count(*) FROM public.tokens"), 100);
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .unwrap();

    // With max_replica_lag = 1 s: paused within about a second of the standby stopping, and for as
    // long as it stays stopped; done once it replays again. The rule is an application role's, with
    // only the README's grants: that role cannot read the standby's position in
    // pg_stat_replication, and the pacing must not depend on it.
    db.batch_execute(
        "INSERT INTO public.tokens SELECT g, now() - interval '1 day' FROM generate_series(1, 40000) g;
         CREATE ROLE cleaner LOGIN;
         GRANT SELECT, DELETE ON public.tokens TO cleaner;",
    )
    .unwrap();
    let mut cleaner = primary.connect_as("app", "cleaner");
    cleaner
        .batch_execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_rows_per_second,
                                              max_replica_lag)
               VALUES ('paced', 'public.tokens', 'expires_at < now()', '@yearly', 500, 10000, '1 second');",
        )
        .unwrap();
    assert_eq!(
        count(
            &mut cleaner,
            "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn IS NOT NULL"
        ),
        0,
        "the application role sees no replay position"
    );
    wait_for("the standby to catch up", Duration::from_secs(30), || {
        (count(&mut replica, "SELECT count(*) FROM public.tokens") == 40_100).then_some(())
    });
    let run = run_in_background(&primary, "cleaner", "paced");
    // Replay paused mid-purge.
    wait_for("the purge to start", Duration::from_secs(15), || {
        (progress(&mut db, "paced") >= 2_000).then_some(())
    });
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .unwrap();
    let paused_at = progress(&mut db, "paced");
    let stalled_at = wait_for("the purge to stall", Duration::from_secs(15), || {
        let before = progress(&mut db, "paced");
        std::thread::sleep(Duration::from_millis(1_500));
        let after = progress(&mut db, "paced");
        (after > 0 && before == after).then_some(after)
    });
    // It stopped within about max_replica_lag of the standby stopping: at 10,000 rows/s, 1 s is
    // 10,000 rows, and a pause is noticed between batches.
    assert!(
        stalled_at < 40_000 && stalled_at - paused_at <= 12_000,
        "the purge went on from {paused_at} to {stalled_at} rows with replay paused"
    );
    let paused_state = count(
        &mut db,
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE '%rule paced: paused (replica_lag: %'",
    );
    assert_eq!(paused_state, 1, "pg_stat_activity shows the pause");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(progress(&mut db, "paced"), stalled_at, "still paused");
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .unwrap();
    assert_eq!(run.join().unwrap(), "succeeded");
    assert_eq!(count(&mut db, "SELECT count(*) FROM public.tokens"), 100);
    let paused = paused_for(&mut db, "paced", "replica_lag");
    assert!(paused >= 3.0, "paused {paused} s for replica lag");
    assert!(
        unpaced < Duration::from_secs(10),
        "the control run took {unpaced:?}"
    );

    // A standby that never catches up (replay paused for good, as a delayed standby) keeps a run
    // paused only for pg_token_cleanup.max_pause at one stretch; the run is then recorded stopped
    // and the rest is left for the next run.
    crate::common::alter_system(&mut db, "pg_token_cleanup.max_pause", "2s");
    db.batch_execute(
        "INSERT INTO public.tokens SELECT g, now() - interval '1 day' FROM generate_series(1, 40000) g",
    )
    .unwrap();
    wait_for("the standby to catch up", Duration::from_secs(30), || {
        (count(&mut replica, "SELECT count(*) FROM public.tokens") == 40_100).then_some(())
    });
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .unwrap();
    let started = Instant::now();
    let run = run_in_background(&primary, "cleaner", "paced");
    // Bounded: without the limit the run would stay paused as long as replay does.
    wait_for("the paused run to stop", Duration::from_secs(20), || {
        run.is_finished().then_some(())
    });
    assert_eq!(run.join().unwrap(), "stopped");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped after {:?}",
        started.elapsed()
    );
    let why: String = db
        .query_one(
            "SELECT error FROM token_cleanup.runs WHERE rule_name = 'paced' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        why.contains("(replica_lag), past pg_token_cleanup.max_pause"),
        "{why}"
    );
    assert!(count(&mut db, "SELECT count(*) FROM public.tokens") > 100);
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .unwrap();
    figures.record(
        "pg_wal_replay_pause() on a streaming standby, a 40,000-row purge at 10,000 rows/s, replay resumed 2 s after the purge stalled",
        &format!("replay paused at {paused_at} rows, purge stalled at {stalled_at}; paused {paused:.1} s for replica lag; control run without the limit: {:.1} s, not paused", unpaced.as_secs_f64()),
        "",
    );
}

#[test]
fn max_wal_rate_holds_a_run_to_its_rate() {
    let mut figures = Figures::start("max_wal_rate = 2 MB/s");
    let cluster = Cluster::start("walrate", &[]);
    let mut db = cluster.database_with_extension("app");
    let wal_of = |db: &mut Client, rule: &str| -> (f64, Duration) {
        let start: String = db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .unwrap()
            .get(0);
        let started = Instant::now();
        let status: String = db
            .query_one("SELECT status FROM token_cleanup.run($1)", &[&rule])
            .unwrap()
            .get(0);
        assert_eq!(status, "succeeded");
        let took = started.elapsed();
        let bytes = count(
            db,
            &format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start}')::bigint"),
        );
        (bytes as f64 / 1_048_576.0, took)
    };
    expiring_tokens(&mut db, "public.tokens", 100_000, 0);
    db.batch_execute(
        "CHECKPOINT;
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size)
           VALUES ('free', 'public.tokens', 'expires_at < now()', '@yearly', 1000);",
    )
    .unwrap();
    let (free_mb, free_took) = wal_of(&mut db, "free");
    expiring_tokens(&mut db, "public.tokens2", 100_000, 0);
    db.batch_execute(
        "CHECKPOINT;
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_wal_rate)
           VALUES ('held', 'public.tokens2', 'expires_at < now()', '@yearly', 1000, 2);",
    )
    .unwrap();
    let (held_mb, held_took) = wal_of(&mut db, "held");
    let rate = held_mb / held_took.as_secs_f64();
    // Held to about 2 MB/s (one batch can overshoot the last second's budget before the next pause).
    assert!(
        held_mb > 4.0 && rate < 2.5,
        "{held_mb:.1} MB in {held_took:?}: {rate:.2} MB/s"
    );
    assert!(paused_for(&mut db, "held", "wal_rate") > 1.0);
    // Control: unpaced, the same purge writes as much, far faster.
    assert!(
        free_mb / free_took.as_secs_f64() > 3.0,
        "{free_mb:.1} MB in {free_took:?}"
    );
    assert_eq!(paused_for(&mut db, "free", "wal_rate"), 0.0);
    figures.record(
        "a 100,000-row purge, after a checkpoint (full-page images), with and without the limit",
        &format!(
            "held: {held_mb:.1} MB in {:.1} s ({rate:.2} MB/s); unpaced: {free_mb:.1} MB in {:.2} s",
            held_took.as_secs_f64(),
            free_took.as_secs_f64()
        ),
        "",
    );
}

#[test]
fn yield_to_waiters_steps_aside_for_a_migration_queued_on_the_table() {
    let mut figures = Figures::start("yield_to_waiters with a CREATE INDEX queued on the table");
    let cluster = Cluster::start("waiters", &[]);
    let mut db = cluster.database_with_extension("app");
    // Each case: a slow purge (20,000 rows at 5,000 rows/s); during it, a session holds ROW EXCLUSIVE
    // on the table (an open write transaction) and a migration's CREATE INDEX queues behind it.
    // The purge's next DELETE would queue behind the CREATE INDEX.
    let case = |db: &mut Client, rule: &str, yield_to_waiters: bool| -> (String, f64) {
        let table = format!("public.{rule}");
        expiring_tokens(db, &table, 20_000, 10);
        db.execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_rows_per_second,
                                              lock_timeout, yield_to_waiters)
               VALUES ($1, $2, 'expires_at < now()', '@yearly', 500, 5000, '500ms', $3)",
            &[&rule, &table, &yield_to_waiters],
        )
        .unwrap();
        let run = run_in_background(&cluster, "postgres", rule);
        wait_for("the purge to start", Duration::from_secs(10), || {
            (progress(db, rule) > 0).then_some(())
        });
        let mut writer = cluster.connect("app");
        writer
            .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ROW EXCLUSIVE MODE"))
            .unwrap();
        let migration = {
            let mut migrator = cluster.connect("app");
            let table = table.clone();
            std::thread::spawn(move || {
                migrator
                    .batch_execute(&format!("CREATE INDEX ON {table} (expires_at)"))
                    .unwrap()
            })
        };
        wait_for("the migration to queue", Duration::from_secs(10), || {
            (count(
                db,
                &format!("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = '{table}'::regclass"),
            ) > 0)
                .then_some(())
        });
        std::thread::sleep(Duration::from_secs(2));
        writer.batch_execute("COMMIT").unwrap();
        migration.join().unwrap();
        let status = run.join().unwrap();
        (status, paused_for(db, rule, "waiters"))
    };
    // Control: without yielding, the purge's DELETE queues behind the migration and times out.
    let (status, _) = case(&mut db, "queued", false);
    assert!(status.starts_with("error: "), "{status}");
    let error: String = db
        .query_one(
            "SELECT error FROM token_cleanup.runs WHERE rule_name = 'queued' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(error.contains("lock timeout"), "{error}");
    // Yielding, it pauses while the migration waits, then finishes.
    let (status, paused) = case(&mut db, "yielding", true);
    assert_eq!(status, "succeeded");
    assert!(paused >= 1.5, "paused {paused} s for waiters");
    assert_eq!(count(&mut db, "SELECT count(*) FROM public.yielding"), 10);
    figures.record(
        "mid-purge, an open transaction holds ROW EXCLUSIVE and CREATE INDEX waits behind it for 2 s",
        &format!("yielding: paused {paused:.1} s, then succeeded; control without it: the next DELETE queued behind the migration and failed ({error})"),
        "",
    );
}
