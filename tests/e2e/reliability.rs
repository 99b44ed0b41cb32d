//! Reliability under faults: crashes, immediate shutdown, locks, runaway conditions, tables that
//! change under a rule, hot standby and promotion, downtime, dump and restore. Every case checks that
//! no row outside the rule's condition was deleted (checksum of the live rows) and that every
//! matching row is gone once the system recovers, and records its figures for docs/reliability.md.

use crate::common::{
    add_rule, count, failed_run_error, live_checksum, scheduler_pid, token_table, wait_for,
    wait_for_count, Cluster, Figures,
};
use std::time::{Duration, Instant};

const EXPIRED: &str = "SELECT count(*) FROM public.tokens WHERE expires_at < now()";

/// A cluster with database `app`, a token table of `expired` + `live` rows and a rule deleting the
/// expired ones every second in batches of `batch`; returns the live rows' checksum.
fn setup(name: &str, expired: i64, live: i64, batch: i32) -> (Cluster, postgres::Client, String) {
    let cluster = Cluster::start(name, &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.tokens", expired, live);
    let checksum = live_checksum(&mut db, "public.tokens");
    add_rule(
        &mut db,
        "tokens",
        "public.tokens",
        "expires_at < now()",
        "* * * * * *",
        Some(batch),
    );
    (cluster, db, checksum)
}

fn running_run(db: &mut postgres::Client) -> i64 {
    wait_for("a run in progress", Duration::from_secs(30), || {
        db.query_opt(
            "SELECT run_id FROM token_cleanup.progress WHERE rows_deleted > 0",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0))
    })
}

/// After a crash-like stop: the run is marked interrupted, a scheduler serves again, the rest is
/// purged, and the live rows are untouched. Returns (seconds until serving again, seconds to finish).
fn recovers(cluster: &Cluster, run_id: i64, checksum: &str, since: Instant) -> (f64, f64) {
    // Connections made while the postmaster is still resetting after a crash get cut: poll with a
    // fresh connection until a scheduler answers from a server that has finished recovering.
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        cluster.port
    );
    wait_for("a scheduler serving again", Duration::from_secs(60), || {
        let mut c = postgres::Client::connect(&conn, postgres::NoTls).ok()?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler'", &[])
            .ok()?
            .get(0);
        (n == 1).then_some(())
    });
    let serving = since.elapsed().as_secs_f64();
    let mut db = cluster.connect("app");
    wait_for_count(
        &mut db,
        "the run to be marked interrupted",
        &format!("SELECT count(*) FROM token_cleanup.runs WHERE id = {run_id} AND status = 'interrupted'"),
        1,
        Duration::from_secs(30),
    );
    wait_for_count(
        &mut db,
        "the remaining rows to be purged",
        EXPIRED,
        0,
        Duration::from_secs(120),
    );
    assert_eq!(
        live_checksum(&mut db, "public.tokens"),
        checksum,
        "a live row was deleted"
    );
    (serving, since.elapsed().as_secs_f64())
}

#[test]
fn kill_9_of_the_scheduler_mid_run() {
    let mut figures = Figures::start("kill -9 of the scheduler mid-run");
    let (cluster, mut db, checksum) = setup("kill9", 200_000, 50_000, 50);
    let run_id = running_run(&mut db);
    let pid = scheduler_pid(&mut db, "app");
    drop(db);
    let killed = Instant::now();
    // SAFETY: SIGKILL of a PostgreSQL process the test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let (serving, done) = recovers(&cluster, run_id, &checksum, killed);
    figures.record(
        "200k expired + 50k live rows, batches of 50; SIGKILL to the scheduler while a run was going",
        &format!("postmaster crash-restart; scheduler serving again after {serving:.1} s; all expired rows gone after {done:.1} s; live-row checksum unchanged"),
        "run marked interrupted, next run finished the job",
    );
}

#[test]
fn immediate_shutdown_mid_run() {
    let mut figures = Figures::start("pg_ctl stop -m immediate mid-run, then start");
    let (cluster, mut db, checksum) = setup("immediate", 200_000, 50_000, 50);
    let run_id = running_run(&mut db);
    drop(db);
    cluster.pg_ctl_stop("immediate");
    let started = Instant::now();
    cluster.pg_ctl_start();
    let (serving, done) = recovers(&cluster, run_id, &checksum, started);
    figures.record(
        "200k expired + 50k live rows, batches of 50; immediate shutdown while a run was going",
        &format!("scheduler serving {serving:.1} s after start; all expired rows gone after {done:.1} s; live-row checksum unchanged"),
        "run marked interrupted, next run finished the job",
    );
}

#[test]
fn access_exclusive_lock_fails_one_rule_and_delays_no_other() {
    let mut figures = Figures::start("a session holds ACCESS EXCLUSIVE on a rule's table");
    let cluster = Cluster::start("locked", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.tokens", 10, 10);
    token_table(&mut db, "public.other", 0, 10);
    db.batch_execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, lock_timeout)
           VALUES ('blocked', 'public.tokens', 'expires_at < now()', '* * * * * *', '2s'),
                  ('other', 'public.other', 'expires_at < now()', '* * * * * *', NULL)",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let mut holder = cluster.connect("app");
    holder.batch_execute("BEGIN; LOCK TABLE public.tokens IN ACCESS EXCLUSIVE MODE; INSERT INTO public.tokens VALUES (1000, 0, false, now() - interval '1 day')").unwrap();
    let locked_at = Instant::now();
    let error = failed_run_error(&mut db, "blocked");
    let failed_after = locked_at.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    holder.batch_execute("COMMIT").unwrap();
    assert_eq!(
        error,
        "could not lock table public.tokens within lock_timeout (2000 ms): another session holds a conflicting lock (SQLSTATE 55P03)"
    );
    // The other rule kept starting on time while the lock was held.
    let (runs, worst): (i64, f64) = {
        let r = db
            .query_one(
                "SELECT count(*), coalesce(max(extract(epoch FROM started_at - scheduled_for)), 0)::float8
                   FROM token_cleanup.runs WHERE rule_name = 'other' AND started_at > now() - interval '6 seconds'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        runs >= 3,
        "the other rule ran {runs} times while the lock was held"
    );
    assert!(
        worst < 1.0,
        "the other rule started up to {worst:.3} s late"
    );
    // Once the lock is gone the blocked rule catches up.
    wait_for_count(
        &mut db,
        "the blocked rule to purge",
        "SELECT count(*) FROM public.tokens WHERE expires_at < now()",
        0,
        Duration::from_secs(20),
    );
    assert_eq!(count(&mut db, "SELECT count(*) FROM public.tokens"), 10);
    figures.record(
        "rule with lock_timeout 2s on the locked table, a second rule every second on another table",
        &format!("blocked rule failed {failed_after:.1} s after the lock was taken (\"could not lock table … within lock_timeout\"); the other rule ran {runs} times, at most {worst:.3} s late; after COMMIT the blocked rule purged its rows"),
        "",
    );
}

#[test]
fn a_condition_that_runs_for_ever_is_stopped_by_the_statement_timeout() {
    let mut figures = Figures::start("a condition that never finishes (pg_sleep)");
    let cluster = Cluster::start("forever", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.tokens", 1, 1);
    let started = Instant::now();
    db.batch_execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, statement_timeout)
           VALUES ('slow', 'public.tokens', 'pg_sleep(3600) IS NOT NULL', '* * * * * *', '1s')",
    )
    .unwrap();
    let (error, took): (String, f64) = wait_for("the failed run", Duration::from_secs(20), || {
        db.query_opt(
            "SELECT error || ' (SQLSTATE ' || sqlstate || ')', extract(epoch FROM finished_at - started_at)::float8
               FROM token_cleanup.runs WHERE rule_name = 'slow' AND status = 'failed' LIMIT 1",
            &[],
        )
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
    });
    assert_eq!(
        error,
        "deleting batch 1: canceling statement due to statement timeout (SQLSTATE 57014)"
    );
    assert!(took < 2.0, "the run took {took:.2} s");
    assert_eq!(count(&mut db, "SELECT count(*) FROM public.tokens"), 2);
    figures.record(
        "rule with statement_timeout 1s and condition pg_sleep(3600) IS NOT NULL",
        &format!("run failed after {took:.2} s with \"canceling statement due to statement timeout\" ({:.1} s after the rule was created); no row deleted", started.elapsed().as_secs_f64()),
        "",
    );
}

#[test]
fn a_table_renamed_or_a_privilege_revoked_fails_only_that_rule() {
    let mut figures = Figures::start(
        "the rule's table renamed, or the owner's DELETE revoked, after the rule was created",
    );
    let cluster = Cluster::start("changed", &[]);
    let mut db = cluster.database_with_extension("app");
    for t in ["public.renamed", "public.revoked", "public.fine"] {
        token_table(&mut db, t, 10, 10);
    }
    db.batch_execute(
        "CREATE ROLE cleaner; GRANT SELECT, DELETE ON public.renamed, public.revoked, public.fine TO cleaner;
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner) VALUES
           ('renamed', 'public.renamed', 'expires_at < now()', '*/2 * * * * *', 'cleaner'),
           ('revoked', 'public.revoked', 'expires_at < now()', '*/2 * * * * *', 'cleaner'),
           ('fine', 'public.fine', 'expires_at < now()', '*/2 * * * * *', 'cleaner');
         ALTER TABLE public.renamed RENAME TO renamed_away;
         REVOKE DELETE ON public.revoked FROM cleaner;",
    )
    .unwrap();
    assert_eq!(
        failed_run_error(&mut db, "renamed"),
        "table public.renamed of rule \"renamed\" does not exist (dropped or renamed?) (SQLSTATE 42P01)"
    );
    assert_eq!(
        failed_run_error(&mut db, "revoked"),
        "role \"cleaner\", as whom rule \"revoked\" runs, has no DELETE privilege on table public.revoked (SQLSTATE 42501)"
    );
    wait_for_count(
        &mut db,
        "the fine rule to purge",
        "SELECT count(*) FROM public.fine WHERE expires_at < now()",
        0,
        Duration::from_secs(20),
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM public.renamed_away"),
        20
    );
    assert_eq!(count(&mut db, "SELECT count(*) FROM public.revoked"), 20);
    assert_eq!(count(&mut db, "SELECT count(*) FROM public.fine"), 10);
    figures.record(
        "three rules of a non-superuser owner; one table renamed, DELETE revoked on another",
        "renamed: \"table public.renamed of rule … does not exist (dropped or renamed?)\"; revoked: \"permission denied for table revoked (SQLSTATE 42501)\"; both tables untouched; the third rule purged its 10 rows",
        "",
    );
}

#[test]
fn hot_standby_runs_nothing_until_promoted() {
    let mut figures = Figures::start("hot standby (pg_basebackup -R), then pg_ctl promote");
    if !crate::common::have_client_tools(&["pg_basebackup"]) {
        return;
    }
    let primary = Cluster::start("primary", &["pg_token_cleanup.enabled = off"]);
    let mut db = primary.database_with_extension("app");
    token_table(&mut db, "public.tokens", 100, 10);
    let checksum = live_checksum(&mut db, "public.tokens");
    add_rule(
        &mut db,
        "tokens",
        "public.tokens",
        "expires_at < now()",
        "* * * * * *",
        None,
    );
    let replica = primary.replica("standby", &["pg_token_cleanup.enabled = on"]);
    let mut standby = replica.connect("app");
    wait_for(
        "the standby to replay the rule",
        Duration::from_secs(30),
        || (count(&mut standby, "SELECT count(*) FROM token_cleanup.rules") == 1).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(3));
    let workers = count(
        &mut standby,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pg_token_cleanup%'",
    );
    assert_eq!(workers, 0, "workers run on a standby");
    assert_eq!(count(&mut standby, EXPIRED), 100);
    let promoted = Instant::now();
    replica.promote();
    let mut promoted_db = replica.connect("app");
    wait_for_count(
        &mut promoted_db,
        "the promoted node to purge",
        EXPIRED,
        0,
        Duration::from_secs(30),
    );
    let purge_after = promoted.elapsed().as_secs_f64();
    assert_eq!(live_checksum(&mut promoted_db, "public.tokens"), checksum);
    figures.record(
        "rule every second replicated to a streaming standby",
        &format!("0 workers and 100 expired rows on the standby after 3 s in recovery; after promote the rows were purged in {purge_after:.1} s; live-row checksum unchanged"),
        "",
    );
}

#[test]
fn restart_with_rules_due_during_downtime_fires_each_once() {
    let mut figures =
        Figures::start("restart after 12 s of downtime with rules due every 2, 3 and 5 s");
    let cluster = Cluster::start("downtime", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.tokens", 10, 10);
    for (name, schedule) in [
        ("a", "*/2 * * * * *"),
        ("b", "*/3 * * * * *"),
        ("c", "*/5 * * * * *"),
    ] {
        add_rule(
            &mut db,
            name,
            "public.tokens",
            "expires_at < now()",
            schedule,
            None,
        );
    }
    std::thread::sleep(Duration::from_secs(6));
    drop(db);
    cluster.pg_ctl_stop("fast");
    std::thread::sleep(Duration::from_secs(12));
    cluster.pg_ctl_start();
    let mut db = cluster.connect("app");
    std::thread::sleep(Duration::from_secs(4));
    // The first run of each rule after the restart was due during the downtime; the one after it is
    // due at its next regular slot, not at an earlier missed one.
    let rows = db
        .query(
            "WITH start AS (SELECT pg_postmaster_start_time() AS t),
                  after AS (SELECT r.*, row_number() OVER (PARTITION BY rule_name ORDER BY started_at) AS n
                              FROM token_cleanup.runs r, start WHERE r.started_at >= start.t)
             SELECT rule_name,
                    count(*) FILTER (WHERE scheduled_for < (SELECT t FROM start)) AS catch_up,
                    bool_and(n = 1 OR scheduled_for >= (SELECT t FROM start)) AS rest_regular
               FROM after GROUP BY rule_name ORDER BY rule_name",
            &[],
        )
        .unwrap();
    let got: Vec<(String, i64, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".into(), 1, true),
            ("b".into(), 1, true),
            ("c".into(), 1, true)
        ],
        "each rule fires once for the downtime"
    );
    figures.record(
        "fast shutdown, 12 s down (6, 4 and 2 missed slots), start",
        "each rule ran exactly once for the missed slots, then on its regular slots",
        "",
    );
}

#[test]
fn pg_dump_and_restore_bring_the_rules_back_and_they_run() {
    let mut figures = Figures::start("pg_dump -Fc, then pg_restore into a new database");
    if !crate::common::have_client_tools(&["pg_dump", "pg_restore"]) {
        return;
    }
    let cluster = Cluster::start("dump", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.tokens", 30, 10);
    // Scheduled runs off while dumping, so the source keeps its rows; on again after the restore.
    db.batch_execute(
        "CREATE ROLE restorer_owner; GRANT SELECT, DELETE ON public.tokens TO restorer_owner",
    )
    .unwrap();
    crate::common::alter_system(&mut db, "pg_token_cleanup.enabled", "off");
    db.batch_execute(
        "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, owner, batch_size)
           VALUES ('tokens', 'public.tokens', 'expires_at < now()', '* * * * * *', 'restorer_owner', 7)",
    )
    .unwrap();
    let dump = cluster.dir.join("app.dump");
    cluster.run_bin("pg_dump", &["-Fc", "-f", dump.to_str().unwrap(), "app"]);
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE restored")
        .unwrap();
    cluster.run_bin("pg_restore", &["-d", "restored", dump.to_str().unwrap()]);
    let mut restored = cluster.connect("restored");
    let rule: (String, String, i32) = {
        let r = restored
            .query_one("SELECT table_name, owner::text, batch_size FROM token_cleanup.rules WHERE name = 'tokens'", &[])
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(rule, ("public.tokens".into(), "restorer_owner".into(), 7));
    crate::common::alter_system(&mut restored, "pg_token_cleanup.enabled", "on");
    wait_for_count(
        &mut restored,
        "the restored rule to run",
        EXPIRED,
        0,
        Duration::from_secs(30),
    );
    assert_eq!(
        count(&mut restored, "SELECT count(*) FROM public.tokens"),
        10
    );
    figures.record(
        "rule owned by a non-superuser (privileges are restored after the rules' data)",
        "the rule came back with its table, owner and batch size; the restored rule purged its 30 rows",
        "",
    );
}

#[test]
fn kill_9_mid_run_with_an_archive_loses_and_doubles_nothing() {
    let mut figures = Figures::start("kill -9 of the runner mid-run, with an archive table");
    let cluster = Cluster::start("kill9archive", &[]);
    let mut db = cluster.database_with_extension("app");
    token_table(&mut db, "public.tokens", 100_000, 10_000);
    db.batch_execute(
        "CREATE TABLE public.archive (LIKE public.tokens, archived_at timestamptz DEFAULT now());
         INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, archive_table)
           VALUES ('moved', 'public.tokens', 'expires_at < now()', '* * * * * *', 50, 'public.archive');",
    )
    .unwrap();
    let (run_id, pid): (i64, i32) = wait_for("a run moving rows", Duration::from_secs(20), || {
        db.query_opt(
            "SELECT run_id, pid FROM token_cleanup.progress WHERE rows_deleted > 0 LIMIT 1",
            &[],
        )
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
    });
    drop(db);
    let killed = Instant::now();
    // SAFETY: SIGKILL of a PostgreSQL process the test started (the runner moving the rows).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let mut db = wait_for("the server back", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=app",
                cluster.port
            ),
            postgres::NoTls,
        )
        .ok()
    });
    wait_for("every expired row moved", Duration::from_secs(120), || {
        (count(
            &mut db,
            "SELECT count(*) FROM public.tokens WHERE expires_at < now()",
        ) == 0)
            .then_some(())
    });
    let done = killed.elapsed().as_secs_f64();
    assert_eq!(count(&mut db, "SELECT count(*) FROM public.tokens"), 10_000);
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM public.archive"),
        100_000
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(DISTINCT id) FROM public.archive WHERE id BETWEEN 1 AND 100000"
        ),
        100_000,
        "each expired row archived exactly once"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM public.tokens t JOIN public.archive a USING (id)"
        ),
        0,
        "no row both in the table and in the archive"
    );
    let status: String = db
        .query_one(
            "SELECT status FROM token_cleanup.runs WHERE id = $1",
            &[&run_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "interrupted");
    figures.record(
        "100k expired + 10k live rows moved to an archive in batches of 50; SIGKILL to the runner while a run was going",
        &format!("postmaster crash-restart; all expired rows moved after {done:.1} s; the table ∪ the archive is exactly the original rows (none lost, none in both, none archived twice); the killed run recorded interrupted"),
        "",
    );
}
