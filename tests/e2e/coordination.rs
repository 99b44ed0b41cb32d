//! Workers coordinated through shared memory, end to end against live clusters with real
//! commits, as the people who use the extension: an application role that owns its table and
//! holds only the grants the README suggests, a non-superuser database owner, another role trying
//! to get in the way, and a DBA.

use crate::common::{count, expiring_tokens, wait_for, Cluster, Figures};
use postgres::Client;
use std::time::{Duration, Instant};

const EVERY_SECOND: &str = "* * * * * *";

/// These tests measure start delays to the tenth of a second: they run one at a time, so that eight
/// clusters starting at once on two cores do not measure each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An application role with CREATE on `database` (for its own schema) and a token table in it.
fn app_role(cluster: &Cluster, database: &str, role: &str, expired: i64, live: i64) -> Client {
    cluster
        .connect(database)
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE {database} TO {role};"
        ))
        .unwrap();
    let mut client = cluster.connect_as(database, role);
    client
        .batch_execute(&format!("CREATE SCHEMA {role}"))
        .unwrap();
    expiring_tokens(&mut client, &format!("{role}.tokens"), expired, live);
    client
}

fn add_rule(client: &mut Client, name: &str, table: &str, schedule: &str) {
    client
        .execute(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES ($1, $2, 'expires_at < pg_catalog.now()', $3)",
            &[&name, &table, &schedule],
        )
        .unwrap_or_else(|e| panic!("adding rule {name}: {e}"));
}

fn runs_of(client: &mut Client, rule: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = $1",
            &[&rule],
        )
        .unwrap()
        .get(0)
}

/// Waits up to `within` for a run of `rule` to start, and returns how long that took.
fn first_run_within(client: &mut Client, rule: &str, within: Duration) -> Duration {
    let started = Instant::now();
    wait_for(
        &format!("a run of {rule} within {within:?}"),
        within,
        || (runs_of(client, rule) > 0).then_some(()),
    );
    started.elapsed()
}

/// Asserts that no run of `rule` started later than 2 s after `changed_at` (a server timestamp),
/// waiting 3.5 s to see.
fn no_run_after(client: &mut Client, rule: &str, changed_at: &str) {
    std::thread::sleep(Duration::from_millis(3500));
    let late = client
        .query_one(
            "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = $1 AND started_at > $2::text::timestamptz + interval '2 s'",
            &[&rule, &changed_at],
        )
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(
        late, 0,
        "rule {rule} ran more than 2 s after it was changed"
    );
}

fn server_now(client: &mut Client) -> String {
    client
        .query_one("SELECT pg_catalog.clock_timestamp()::text", &[])
        .unwrap()
        .get(0)
}

fn scheduler_pid(client: &mut Client, database: &str) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler' AND datname = $1",
            &[&database],
        )
        .unwrap()
        .map(|r| r.get(0))
}

/// Start delays (s) of the runs of `rule` started after `since` (a server timestamp), sorted.
fn start_delays(client: &mut Client, rule: &str, since: &str) -> Vec<f64> {
    let mut delays: Vec<f64> = client
        .query(
            "SELECT extract(epoch FROM started_at - scheduled_for)::float8 FROM token_cleanup.runs
              WHERE rule_name = $1 AND started_at >= $2::text::timestamptz AND scheduled_for IS NOT NULL",
            &[&rule, &since],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    delays.sort_by(f64::total_cmp);
    delays
}

fn p99(sorted: &[f64]) -> f64 {
    sorted[((sorted.len() as f64 * 0.99).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Finding 1 and 4: an application role's INSERT, UPDATE, disable and DELETE, and a change
/// committed with two-phase commit, never reached the scheduler (it was found through
/// pg_stat_activity, which hides other roles' sessions).
#[test]
fn an_ordinary_roles_rule_changes_take_effect_within_two_seconds() {
    let mut figures = Figures::start("an application role's rule changes");
    let _serial = one_at_a_time();
    let cluster = Cluster::start("coord_changes", &["max_prepared_transactions = 4"]);
    drop(cluster.database_with_extension("app"));
    let mut alice = app_role(&cluster, "app", "alice", 10, 10);

    add_rule(&mut alice, "inserted", "alice.tokens", EVERY_SECOND);
    let took = first_run_within(&mut alice, "inserted", Duration::from_secs(2));

    add_rule(&mut alice, "updated", "alice.tokens", "@yearly");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(runs_of(&mut alice, "updated"), 0);
    alice
        .execute(
            "UPDATE token_cleanup.rules SET schedule = $1 WHERE name = 'updated'",
            &[&EVERY_SECOND],
        )
        .unwrap();
    let took_update = first_run_within(&mut alice, "updated", Duration::from_secs(2));

    alice
        .batch_execute("UPDATE token_cleanup.rules SET enabled = false WHERE name = 'inserted'")
        .unwrap();
    let disabled_at = server_now(&mut alice);
    alice
        .batch_execute("SELECT token_cleanup.delete_rule('updated')")
        .unwrap();
    let deleted_at = server_now(&mut alice);
    no_run_after(&mut alice, "inserted", &disabled_at);
    no_run_after(&mut alice, "updated", &deleted_at);

    // Two-phase commit: the invalidation travels with the prepared transaction.
    alice
        .batch_execute(&format!(
            "BEGIN; INSERT INTO token_cleanup.rules (name, table_name, condition, schedule)
               VALUES ('prepared', 'alice.tokens', 'expires_at < pg_catalog.now()', '{EVERY_SECOND}');
             PREPARE TRANSACTION 'rule_change';"
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(runs_of(&mut alice, "prepared"), 0, "a prepared rule ran");
    alice
        .batch_execute("COMMIT PREPARED 'rule_change'")
        .unwrap();
    let took_prepared = first_run_within(&mut alice, "prepared", Duration::from_secs(2));
    figures.record(
        "INSERT, UPDATE of the schedule, enabled = false, DELETE, and an INSERT by PREPARE TRANSACTION / COMMIT PREPARED, by a role that owns its table and has no other grant",
        &format!(
            "first run {:.2} s after INSERT, {:.2} s after UPDATE, {:.2} s after COMMIT PREPARED; no run later than 2 s after the disable or the DELETE",
            took.as_secs_f64(),
            took_update.as_secs_f64(),
            took_prepared.as_secs_f64()
        ),
        "",
    );
}

/// Finding 2: with its scheduler connected, a database owned by a non-superuser could not be
/// dropped, renamed or copied by its owner.
#[test]
fn a_non_superuser_owner_can_drop_rename_move_and_copy_its_database() {
    let mut figures = Figures::start(
        "a non-superuser database owner's DROP, RENAME, SET TABLESPACE and TEMPLATE copy",
    );
    let _serial = one_at_a_time();
    let cluster = Cluster::start("coord_dbowner", &[]);
    let mut admin = cluster.connect("postgres");
    let tablespace = cluster.dir.join("ts");
    std::fs::create_dir_all(&tablespace).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::process::Command::new("chown")
            .args(["postgres:postgres", tablespace.to_str().unwrap()])
            .status()
            .unwrap();
    }
    admin
        .batch_execute("CREATE ROLE dbo LOGIN CREATEDB; CREATE ROLE mallory LOGIN")
        .unwrap();
    admin
        .batch_execute(&format!(
            "CREATE TABLESPACE ts LOCATION '{}'",
            tablespace.display()
        ))
        .unwrap();
    admin
        .batch_execute("GRANT CREATE ON TABLESPACE ts TO dbo")
        .unwrap();
    let mut dbo = cluster.connect_as("postgres", "dbo");
    dbo.batch_execute("CREATE DATABASE owned").unwrap();
    cluster
        .connect("owned")
        .batch_execute("CREATE EXTENSION pg_token_cleanup")
        .unwrap();
    let first = wait_for("a scheduler in owned", Duration::from_secs(10), || {
        scheduler_pid(&mut admin, "owned")
    });

    // Another role's DROP DATABASE is refused by PostgreSQL, and stops nothing.
    let mut mallory = cluster.connect_as("postgres", "mallory");
    let refused = mallory.batch_execute("DROP DATABASE owned").unwrap_err();
    assert_eq!(
        refused.as_db_error().unwrap().message(),
        "must be owner of database owned"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(scheduler_pid(&mut admin, "owned"), Some(first));

    let mut timings = Vec::new();
    for (what, sql) in [
        ("template copy", "CREATE DATABASE copied TEMPLATE owned"),
        ("SET TABLESPACE", "ALTER DATABASE owned SET TABLESPACE ts"),
        ("rename", "ALTER DATABASE owned RENAME TO renamed"),
        ("drop", "DROP DATABASE renamed"),
    ] {
        if what == "rename" || what == "drop" {
            // The scheduler is back after the previous statement: each one meets it connected.
            let database = if what == "rename" { "owned" } else { "renamed" };
            wait_for("the scheduler back", Duration::from_secs(10), || {
                scheduler_pid(&mut admin, database)
            });
        }
        let started = Instant::now();
        dbo.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{what} by the database's owner: {e}"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{what} took {took:?}");
        timings.push(format!("{what} {:.2} s", took.as_secs_f64()));
    }
    figures.record(
        "CREATEDB role owning a database with the extension and its scheduler connected; another role's DROP DATABASE first",
        &format!(
            "the other role's DROP refused by PostgreSQL, scheduler untouched; {}",
            timings.join(", ")
        ),
        "",
    );
}

/// Finding 3 (advisory locks) and the restart: a scheduler ended by pg_terminate_backend() was back
/// only after 64 s, and not at all while any role held its advisory-lock key.
#[test]
fn a_terminated_scheduler_is_back_within_five_seconds_whatever_locks_roles_hold() {
    let mut figures = Figures::start(
        "pg_terminate_backend() of the scheduler while another role holds 0.1's advisory-lock keys",
    );
    let _serial = one_at_a_time();
    // The default probe interval: 0.1's launcher took that long to restart a terminated scheduler.
    let cluster = Cluster::start(
        "coord_restart",
        &["pg_token_cleanup.database_probe_interval = '60s'"],
    );
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, "app", "alice", 0, 10);
    add_rule(&mut alice, "steady", "alice.tokens", EVERY_SECOND);
    first_run_within(&mut alice, "steady", Duration::from_secs(3));
    let rule_id: i64 = alice
        .query_one(
            "SELECT id FROM token_cleanup.rules WHERE name = 'steady'",
            &[],
        )
        .unwrap()
        .get(0);
    admin.batch_execute("CREATE ROLE mallory LOGIN").unwrap();
    let mut mallory = cluster.connect_as("app", "mallory");

    // A DBA's script ends the scheduler; another role takes, as soon as it is free, the
    // advisory-lock keys 0.1 used ("tkns" for the scheduler, "tknc" for the rule).
    let old = scheduler_pid(&mut admin, "app").expect("a scheduler");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&old])
        .unwrap();
    let started = Instant::now();
    mallory
        .execute(
            "SELECT pg_advisory_lock(1953394291, 0), pg_advisory_lock(1953394275, $1::int)",
            &[&(rule_id as i32)],
        )
        .unwrap();
    let new = wait_for("a new scheduler", Duration::from_secs(5), || {
        scheduler_pid(&mut admin, "app").filter(|pid| *pid != old)
    });
    let back = started.elapsed();
    // Serving: the rule runs again.
    let since = server_now(&mut admin);
    wait_for("a run by the new scheduler", Duration::from_secs(5), || {
        (count(
            &mut admin,
            &format!("SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'steady' AND started_at > '{since}'"),
        ) > 0)
            .then_some(())
    });
    assert_ne!(new, old);
    figures.record(
        "every-second rule of an application role; mallory holds pg_advisory_lock on the scheduler's and the rule's keys",
        &format!("a new scheduler was up {:.1} s later and ran the rule", back.as_secs_f64()),
        "",
    );
}

/// Finding 3 (LOCK TABLE) and 4 (wake-up storms): a role holding ACCESS EXCLUSIVE on the rules
/// table, or waking the scheduler as often as it likes, stalled every rule of the database.
#[test]
fn no_role_can_stall_the_scheduler() {
    let mut figures = Figures::start(
        "LOCK TABLE token_cleanup.rules and a storm of rule changes by another role",
    );
    let _serial = one_at_a_time();
    let cluster = Cluster::start("coord_stall", &["log_min_messages = debug1"]);
    drop(cluster.database_with_extension("app"));
    let mut alice = app_role(&cluster, "app", "alice", 0, 10);
    let mut mallory = app_role(&cluster, "app", "mallory", 0, 10);
    add_rule(&mut alice, "steady", "alice.tokens", EVERY_SECOND);
    add_rule(&mut mallory, "noisy", "mallory.tokens", "@yearly");
    first_run_within(&mut alice, "steady", Duration::from_secs(3));

    // No role may lock the history or call the wake-up itself.
    let message = |r: Result<(), postgres::Error>| {
        r.unwrap_err().as_db_error().unwrap().message().to_string()
    };
    assert_eq!(
        message(mallory.batch_execute(
            "BEGIN; LOCK TABLE token_cleanup.runs IN ACCESS EXCLUSIVE MODE; COMMIT"
        )),
        "permission denied for table runs"
    );
    mallory.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        message(mallory.batch_execute("SELECT token_cleanup.wake_scheduler()")),
        "permission denied for function wake_scheduler"
    );

    // PUBLIC's grants allow no lock on the rules table that would stall anyone...
    assert_eq!(
        message(mallory.batch_execute(
            "BEGIN; LOCK TABLE token_cleanup.rules IN ACCESS EXCLUSIVE MODE; COMMIT"
        )),
        "permission denied for table rules"
    );
    mallory.batch_execute("ROLLBACK").unwrap();
    // ...but a role a DBA granted DELETE may take ACCESS EXCLUSIVE on it, for 4 s: the scheduler
    // keeps serving the rules it has.
    cluster
        .connect("app")
        .batch_execute("GRANT DELETE ON token_cleanup.rules TO mallory")
        .unwrap();
    let lock_start = server_now(&mut alice);
    mallory
        .batch_execute("BEGIN; LOCK TABLE token_cleanup.rules IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    mallory.batch_execute("COMMIT").unwrap();
    let during_lock = start_delays(&mut alice, "steady", &lock_start);
    assert!(
        during_lock.len() >= 3,
        "only {} runs while the rules table was locked",
        during_lock.len()
    );
    let worst_lock = *during_lock.last().unwrap();
    assert!(worst_lock < 1.0, "a run started {worst_lock:.2} s late");

    // A storm of rule changes: each commit invalidates and wakes; reloads are coalesced.
    let reloads_before = cluster.log().matches("loaded 2 enabled rule(s)").count();
    let storm_start = server_now(&mut alice);
    let started = Instant::now();
    let mut commits = 0;
    while started.elapsed() < Duration::from_secs(3) {
        mallory
            .batch_execute("UPDATE token_cleanup.rules SET batch_size = NULL WHERE name = 'noisy'")
            .unwrap();
        commits += 1;
    }
    std::thread::sleep(Duration::from_secs(1));
    let reloads = cluster.log().matches("loaded 2 enabled rule(s)").count() - reloads_before;
    let during_storm = start_delays(&mut alice, "steady", &storm_start);
    assert!(during_storm.len() >= 2);
    let storm_p99 = p99(&during_storm);
    assert!(storm_p99 < 1.0, "p99 start delay {storm_p99:.2} s");
    assert!(commits > 50, "only {commits} commits in the storm");
    assert!(
        reloads <= 4 * 4 + 2,
        "{reloads} reloads for {commits} changes in 4 s"
    );
    figures.record(
        "mallory holds ACCESS EXCLUSIVE on the rules table for 4 s; then commits a change to her own rule as fast as she can for 3 s; alice's rule runs every second",
        &format!(
            "{} runs of alice's rule during the lock, at most {worst_lock:.3} s late; {commits} changes cost {reloads} reloads; alice's runs p99 {storm_p99:.3} s late; LOCK on the history and calling wake_scheduler() refused",
            during_lock.len()
        ),
        "",
    );
}

/// Finding 5: due rules ran one after another, so one long purge delayed every other rule; and two
/// rules on one table still never run at once.
#[test]
fn a_long_purge_runs_beside_short_rules() {
    let mut figures =
        Figures::start("a long purge beside an every-second rule, and two rules on one table");
    let _serial = one_at_a_time();
    let cluster = Cluster::start("coord_parallel", &[]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, "app", "alice", 0, 10);
    expiring_tokens(&mut alice, "alice.big", 30_000, 1_000);
    expiring_tokens(&mut alice, "alice.shared", 0, 3);
    alice
        .batch_execute(&format!(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_rows_per_second)
               VALUES ('weekly', 'alice.big', 'expires_at < pg_catalog.now()', '{EVERY_SECOND}', 500, 1000);
             INSERT INTO token_cleanup.rules (name, table_name, condition, schedule) VALUES
               ('twin_a', 'alice.shared', 'pg_catalog.pg_sleep(0.2) IS NOT NULL AND expires_at < pg_catalog.now()', '{EVERY_SECOND}'),
               ('twin_b', 'alice.shared', 'pg_catalog.pg_sleep(0.2) IS NOT NULL AND expires_at < pg_catalog.now()', '{EVERY_SECOND}');"
        ))
        .unwrap();
    wait_for("the long purge to start", Duration::from_secs(5), || {
        (count(&mut admin, "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'weekly' AND status = 'running'") > 0).then_some(())
    });
    let purge_start = server_now(&mut admin);
    add_rule(&mut alice, "frequent", "alice.tokens", EVERY_SECOND);
    wait_for("the long purge to end", Duration::from_secs(60), || {
        (count(&mut admin, "SELECT count(*) FROM alice.big WHERE expires_at < now()") == 0
            && count(&mut admin, "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'weekly' AND status = 'running'") == 0)
            .then_some(())
    });
    let purge_seconds: f64 = admin
        .query_one(
            "SELECT extract(epoch FROM max(finished_at - started_at))::float8 FROM token_cleanup.runs WHERE rule_name = 'weekly'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        purge_seconds >= 25.0,
        "the purge took only {purge_seconds:.1} s"
    );
    let delays = start_delays(&mut admin, "frequent", &purge_start);
    assert!(
        delays.len() >= 20,
        "{} runs of the short rule during the purge",
        delays.len()
    );
    let frequent_p99 = p99(&delays);
    let late: Vec<String> = admin
        .query(
            "SELECT id || ' due ' || scheduled_for || ' started ' || started_at || ' ' || status
               FROM token_cleanup.runs WHERE rule_name = 'frequent' AND started_at - scheduled_for > interval '0.5 s'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        frequent_p99 < 1.0,
        "short rule p99 start delay {frequent_p99:.2} s: {late:?}"
    );

    // The twins share a table: no two of their runs overlap.
    let overlaps = count(
        &mut admin,
        "SELECT count(*) FROM token_cleanup.runs a JOIN token_cleanup.runs b
            ON a.rule_name = 'twin_a' AND b.rule_name = 'twin_b'
           AND a.started_at < coalesce(b.finished_at, now()) AND b.started_at < coalesce(a.finished_at, now())",
    );
    let twin_runs = count(
        &mut admin,
        "SELECT count(*) FROM token_cleanup.runs WHERE rule_name IN ('twin_a', 'twin_b')",
    );
    assert!(twin_runs >= 10, "{twin_runs} runs of the twins");
    assert_eq!(overlaps, 0, "runs of two rules on one table overlapped");
    figures.record(
        "30,000 rows purged at 1,000 rows/s; an every-second rule on another table; two every-second rules of 0.6 s on one shared table",
        &format!(
            "purge {purge_seconds:.1} s; the short rule ran {} times meanwhile, start delay p99 {frequent_p99:.3} s; {twin_runs} runs of the twins, none overlapping",
            delays.len()
        ),
        "",
    );
}

/// With one slot, a due run waits for it, starts as soon as it frees, and says how late it started;
/// it is never lost or doubled.
#[test]
fn a_run_waiting_for_a_slot_starts_when_one_frees_and_records_its_delay() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start("coord_oneslot", &["pg_token_cleanup.max_parallel_runs = 1"]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, "app", "alice", 0, 10);
    expiring_tokens(&mut alice, "alice.big", 3_000, 10);
    alice
        .batch_execute(&format!(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_rows_per_second)
               VALUES ('slow', 'alice.big', 'expires_at < pg_catalog.now()', '{EVERY_SECOND}', 100, 1000)"
        ))
        .unwrap();
    wait_for("the slow run to start", Duration::from_secs(5), || {
        (count(
            &mut admin,
            "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'slow'",
        ) > 0)
            .then_some(())
    });
    add_rule(&mut alice, "quick", "alice.tokens", EVERY_SECOND);
    wait_for(
        "the slow run to end and the quick rule to run",
        Duration::from_secs(20),
        || {
            (count(&mut admin, "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'quick' AND status = 'succeeded'") >= 2).then_some(())
        },
    );
    let waited: f64 = admin
        .query_one(
            "SELECT extract(epoch FROM start_delay)::float8 FROM token_cleanup.runs WHERE rule_name = 'quick' ORDER BY id LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        waited >= 1.0,
        "the first quick run waited only {waited:.2} s"
    );
    // One slot: no two runs overlap; each due time ran once.
    let overlaps = count(
        &mut admin,
        "SELECT count(*) FROM token_cleanup.runs a JOIN token_cleanup.runs b ON a.id < b.id
            AND a.started_at < coalesce(b.finished_at, now()) AND b.started_at < coalesce(a.finished_at, now())",
    );
    assert_eq!(overlaps, 0);
    let doubled = count(
        &mut admin,
        "SELECT count(*) FROM (SELECT rule_name, scheduled_for FROM token_cleanup.runs GROUP BY 1, 2 HAVING count(*) > 1) d",
    );
    assert_eq!(doubled, 0);
}

/// `max_run_duration`: a 2 s limit on a purge that needs 10 s stops it between batches at 2-3 s,
/// recorded `stopped`; the next runs finish the job, deleting every matching row once and no other.
#[test]
fn max_run_duration_stops_a_run_and_the_next_runs_finish_the_job() {
    let mut figures = Figures::start("max_run_duration = 2 s on a purge needing 10 s");
    let _serial = one_at_a_time();
    let cluster = Cluster::start("coord_duration", &[]);
    let mut admin = cluster.database_with_extension("app");
    let mut alice = app_role(&cluster, "app", "alice", 10_000, 1_000);
    alice
        .batch_execute(&format!(
            "INSERT INTO token_cleanup.rules (name, table_name, condition, schedule, batch_size, max_rows_per_second, max_run_duration)
               VALUES ('capped', 'alice.tokens', 'expires_at < pg_catalog.now()', '{EVERY_SECOND}', 200, 1000, '2 s')"
        ))
        .unwrap();
    wait_for("the purge to finish", Duration::from_secs(40), || {
        (count(
            &mut admin,
            "SELECT count(*) FROM alice.tokens WHERE expires_at < now()",
        ) == 0
            && count(
                &mut admin,
                "SELECT count(*) FROM token_cleanup.runs WHERE status = 'running'",
            ) == 0)
            .then_some(())
    });
    let first = admin
        .query_one(
            "SELECT status, rows_deleted, extract(epoch FROM finished_at - started_at)::float8, error
               FROM token_cleanup.runs WHERE rule_name = 'capped' ORDER BY id LIMIT 1",
            &[],
        )
        .unwrap();
    let (status, rows, seconds): (String, i64, f64) = (first.get(0), first.get(1), first.get(2));
    assert_eq!(status, "stopped");
    assert!(
        (2.0..3.0).contains(&seconds),
        "the first run lasted {seconds:.2} s"
    );
    assert!(
        (1_000..4_000).contains(&rows),
        "the first run deleted {rows} rows"
    );
    assert!(first
        .get::<_, String>(3)
        .starts_with("stopped after max_run_duration (2 s)"));
    let stopped = count(
        &mut admin,
        "SELECT count(*) FROM token_cleanup.runs WHERE rule_name = 'capped' AND status = 'stopped'",
    );
    assert!(stopped >= 3, "{stopped} stopped runs");
    assert_eq!(
        count(
            &mut admin,
            "SELECT sum(rows_deleted)::int8 FROM token_cleanup.runs WHERE rule_name = 'capped'"
        ),
        10_000,
        "rows deleted in all runs"
    );
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM alice.tokens"),
        1_000
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM alice.tokens WHERE id <= 10000"
        ),
        0
    );
    figures.record(
        "10,000 expired + 1,000 live rows at 1,000 rows/s, every-second schedule",
        &format!("first run stopped after {seconds:.2} s with {rows} rows deleted; {stopped} stopped runs in all; 10,000 rows deleted once, the 1,000 live rows untouched"),
        "",
    );
}

/// Finding 4: a lone DROP EXTENSION left a scheduler that logged a warning every few seconds.
#[test]
fn a_lone_drop_extension_ends_the_scheduler_quietly() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start("coord_dropext", &[]);
    let mut admin = cluster.database_with_extension("app");
    wait_for("a scheduler", Duration::from_secs(10), || {
        scheduler_pid(&mut admin, "app")
    });
    admin
        .batch_execute("DROP EXTENSION pg_token_cleanup")
        .unwrap();
    let started = Instant::now();
    wait_for("the scheduler to leave", Duration::from_secs(2), || {
        scheduler_pid(&mut admin, "app").is_none().then_some(())
    });
    let left = started.elapsed();
    std::thread::sleep(Duration::from_secs(6));
    let warnings: Vec<String> = cluster
        .log()
        .lines()
        .filter(|l| l.contains("WARNING") && l.contains("pg_token_cleanup"))
        .map(str::to_string)
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(scheduler_pid(&mut admin, "app").is_none());
    assert!(left < Duration::from_secs(2));
}
