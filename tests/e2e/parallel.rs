//! Parallel runs (`parallel_workers`), on PostgreSQL's default worker settings, as an ordinary role:
//! the helpers really delete (a statement trigger records which process deleted what), exactly the
//! matching rows go, archive included; a run without a free slot proceeds alone; a helper gives its
//! slot to a `run()` that waits for one; a failure in a helper fails the run; a terminated leader
//! stops its helpers before its run is recorded.

use crate::common::{count, wait_for, Cluster};
use postgres::Client;
use std::time::Duration;

/// Rows of `public.sessions`: ids 1..=ROWS, the even ones expired. About 29 rows a page (a 200-byte
/// pad), so 300,000 rows are about 10,500 pages: two slices of at least 4,096 pages.
const ROWS: i64 = 300_000;

/// The table, an ordinary role `app` owning the rule (with the README's grants), and a statement
/// trigger that records, per DELETE statement, the deleting process and its rows.
fn sessions(db: &mut Client) {
    db.batch_execute(&format!(
        "CREATE ROLE app LOGIN;
         CREATE TABLE public.sessions (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL, pad text NOT NULL);
         INSERT INTO public.sessions
           SELECT g, now() + CASE WHEN g % 2 = 0 THEN -interval '1 day' ELSE interval '1 day' END, repeat('x', 200)
             FROM generate_series(1, {ROWS}) g;
         GRANT SELECT, UPDATE, DELETE ON public.sessions TO app;
         CREATE TABLE public.deleted_by (pid int, rows bigint);
         GRANT INSERT ON public.deleted_by TO app;
         CREATE FUNCTION public.note_deleter() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO public.deleted_by SELECT pg_backend_pid(), count(*) FROM gone; RETURN NULL; END $$;
         CREATE TRIGGER note_deleter AFTER DELETE ON public.sessions REFERENCING OLD TABLE AS gone
           FOR EACH STATEMENT EXECUTE FUNCTION public.note_deleter();"
    ))
    .unwrap();
    db.batch_execute("VACUUM ANALYZE public.sessions").unwrap();
}

fn add_rule(app: &mut Client, extra: &str) {
    app.batch_execute(&format!(
        "SELECT token_cleanup.add_rule('sessions', 'public.sessions', 'expires_at < now()', '@yearly', \
                                       batch_size => 2000{extra})"
    ))
    .unwrap();
}

/// Runs the rule as `app`; returns status, rows deleted and the run's `workers`.
fn run(app: &mut Client) -> (String, i64, Option<i32>) {
    let row = app
        .query_one(
            "SELECT status, rows_deleted, run_id FROM token_cleanup.run('sessions')",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1), workers(app, row.get(2)))
}

/// The `workers` of run `run_id` (read after run() returned: its statement's snapshot predates
/// the run's record).
fn workers(client: &mut Client, run_id: i64) -> Option<i32> {
    client
        .query_one(
            "SELECT workers FROM token_cleanup.runs WHERE id = $1",
            &[&run_id],
        )
        .unwrap()
        .get(0)
}

/// Processes that deleted rows (by the trigger), and the rows they deleted.
fn deleters(db: &mut Client) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT count(DISTINCT pid), coalesce(sum(rows), 0)::bigint FROM public.deleted_by WHERE rows > 0",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn left(db: &mut Client) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE expires_at < now()), count(*) FILTER (WHERE expires_at >= now()) FROM public.sessions",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn helpers_running(db: &mut Client) -> i64 {
    count(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup runner' \
           AND query LIKE 'pg_token_cleanup: rule sessions %'",
    )
}

/// Waits for the run's runners to exit (a runner hands its result back just before it does).
fn runners_gone(db: &mut Client) {
    wait_for("the run's runners to exit", Duration::from_secs(5), || {
        (helpers_running(db) == 0).then_some(())
    });
}

#[test]
fn two_runners_delete_exactly_the_matching_rows_and_archive_them() {
    let cluster = Cluster::start("parallel_exact", &[]);
    let mut db = cluster.database_with_extension("app");
    sessions(&mut db);
    db.batch_execute(
        "CREATE TABLE public.sessions_archive (LIKE public.sessions);
         ALTER TABLE public.sessions_archive OWNER TO app;",
    )
    .unwrap();
    let mut app = cluster.connect_as("app", "app");
    add_rule(
        &mut app,
        ", parallel_workers => 2, archive_table => 'public.sessions_archive'",
    );
    let (status, rows, workers) = run(&mut app);
    assert_eq!(status, "succeeded");
    assert_eq!(rows, ROWS / 2);
    assert_eq!(workers, Some(2), "the run got its helper");
    assert_eq!(left(&mut db), (0, ROWS / 2));
    // Positive control: two processes deleted, between them every row once.
    assert_eq!(deleters(&mut db), (2, ROWS / 2));
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM public.sessions_archive WHERE id % 2 = 0"
        ),
        ROWS / 2
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM public.sessions_archive"),
        ROWS / 2
    );
    // The run's one record sums both runners.
    let batches = count(
        &mut db,
        "SELECT batches::bigint FROM token_cleanup.runs WHERE rule_name = 'sessions'",
    );
    assert!(batches >= ROWS / 2 / 2000, "{batches} batches");
    runners_gone(&mut db);
    // Without parallel_workers (the setting's 1): one runner.
    db.batch_execute(
        "TRUNCATE public.deleted_by;
         INSERT INTO public.sessions SELECT g, now() - interval '1 day', 'y' FROM generate_series(2, 300000, 2) g;",
    )
    .unwrap();
    app.batch_execute("SELECT token_cleanup.alter_rule('sessions', clear => '{parallel_workers}')")
        .unwrap();
    let (status, rows, workers) = run(&mut app);
    assert_eq!(
        (status.as_str(), rows, workers),
        ("succeeded", 150_000, Some(1))
    );
    assert_eq!(deleters(&mut db).0, 1);
}

#[test]
fn a_run_without_a_free_slot_proceeds_alone() {
    // A budget of 3: the launcher, the database's scheduler and run()'s own runner.
    let cluster = Cluster::start("parallel_full", &["pg_token_cleanup.max_workers = 3"]);
    let mut db = cluster.database_with_extension("app");
    sessions(&mut db);
    wait_for("the scheduler", Duration::from_secs(20), || {
        (count(
            &mut db,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler'",
        ) == 1)
            .then_some(())
    });
    let mut app = cluster.connect_as("app", "app");
    add_rule(&mut app, ", parallel_workers => 4");
    let (status, rows, workers) = run(&mut app);
    assert_eq!(
        (status.as_str(), rows, workers),
        ("succeeded", ROWS / 2, Some(1))
    );
    assert_eq!(deleters(&mut db), (1, ROWS / 2));
    assert_eq!(left(&mut db), (0, ROWS / 2));
}

#[test]
fn a_failure_in_a_helper_fails_the_run_and_stops_every_runner() {
    let cluster = Cluster::start("parallel_failure", &[]);
    let mut db = cluster.database_with_extension("app");
    sessions(&mut db);
    let mut app = cluster.connect_as("app", "app");
    // Rows of the second half divide by zero: only the helper meets them.
    add_rule(&mut app, ", parallel_workers => 2");
    app.batch_execute(&format!(
        "SELECT token_cleanup.alter_rule('sessions', condition => \
           'expires_at < now() AND (CASE WHEN id > {} THEN 1 / (id - id) ELSE 1 END) = 1')",
        ROWS * 3 / 4
    ))
    .unwrap();
    let err = app
        .query("SELECT * FROM token_cleanup.run('sessions')", &[])
        .unwrap_err();
    let err = err.as_db_error().expect("a database error");
    assert_eq!(err.code().code(), "22012");
    assert!(
        err.message().contains("division by zero"),
        "{}",
        err.message()
    );
    assert_eq!(
        count(&mut db, "SELECT workers::bigint FROM token_cleanup.runs WHERE rule_name = 'sessions' AND status = 'failed'"),
        2
    );
    let row = db
        .query_one(
            "SELECT sqlstate, error FROM token_cleanup.runs WHERE rule_name = 'sessions'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("22012"));
    assert!(
        row.get::<_, String>(1).contains("division by zero"),
        "{}",
        row.get::<_, String>(1)
    );
    runners_gone(&mut db);
    // Nothing past the failing rows went; no live row went.
    let (expired_left, live_left) = left(&mut db);
    assert_eq!(live_left, ROWS / 2);
    assert!(expired_left >= ROWS / 8, "{expired_left} expired rows left");
}

#[test]
fn a_terminated_leader_stops_its_helpers_before_its_run_is_recorded() {
    let cluster = Cluster::start("parallel_sigterm", &[]);
    let mut db = cluster.database_with_extension("app");
    sessions(&mut db);
    let mut app = cluster.connect_as("app", "app");
    // 2,000 rows a second between the two runners: the run takes over a minute.
    add_rule(
        &mut app,
        ", parallel_workers => 2, max_rows_per_second => 2000",
    );
    let port = cluster.port;
    let caller = std::thread::spawn(move || {
        let mut app = Client::connect(
            &format!("host=localhost port={port} user=app dbname=app"),
            postgres::NoTls,
        )
        .unwrap();
        app.query("SELECT * FROM token_cleanup.run('sessions')", &[])
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    wait_for("two runners deleting", Duration::from_secs(30), || {
        (deleters(&mut db).0 == 2).then_some(())
    });
    assert_eq!(helpers_running(&mut db), 2, "the leader and its helper");
    let leader = count(
        &mut db,
        "SELECT pid::bigint FROM token_cleanup.runs WHERE rule_name = 'sessions' AND status = 'running'",
    );
    db.execute("SELECT pg_terminate_backend($1::bigint::int)", &[&leader])
        .unwrap();
    // run() returns the interrupted run, or its error: either way the run has been recorded.
    let _ = caller.join().unwrap();
    let row = db
        .query_one(
            "SELECT status, rows_deleted FROM token_cleanup.runs WHERE rule_name = 'sessions'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "interrupted");
    // By the time the run is recorded no helper deletes: the count is what the record says, and
    // stays so.
    let recorded: i64 = row.get(1);
    let deleted = ROWS / 2 - left(&mut db).0;
    assert_eq!(recorded, deleted);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ROWS / 2 - left(&mut db).0, deleted);
    assert!(deleted < ROWS / 2);
    runners_gone(&mut db);
}

#[test]
fn a_helper_gives_its_slot_to_a_run_that_waits_for_one() {
    // The budget of 4: launcher, scheduler, the parallel run's leader and its helper.
    let cluster = Cluster::start("parallel_yield", &[]);
    let mut db = cluster.database_with_extension("app");
    sessions(&mut db);
    db.batch_execute(
        "CREATE TABLE public.codes (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL);
         INSERT INTO public.codes SELECT g, now() - interval '1 day' FROM generate_series(1, 100) g;
         GRANT SELECT, DELETE ON public.codes TO app;
         CREATE ROLE other LOGIN;
         GRANT SELECT, DELETE ON public.codes TO other;",
    )
    .unwrap();
    wait_for("the scheduler", Duration::from_secs(20), || {
        (count(
            &mut db,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_token_cleanup scheduler'",
        ) == 1)
            .then_some(())
    });
    let mut app = cluster.connect_as("app", "app");
    add_rule(
        &mut app,
        ", parallel_workers => 2, max_rows_per_second => 8000",
    );
    let mut other = cluster.connect_as("app", "other");
    other
        .batch_execute(
            "SELECT token_cleanup.add_rule('codes', 'public.codes', 'expires_at < now()', '@yearly', lock_timeout => '20s')",
        )
        .unwrap();
    let port = cluster.port;
    let caller = std::thread::spawn(move || {
        let mut app = Client::connect(
            &format!("host=localhost port={port} user=app dbname=app"),
            postgres::NoTls,
        )
        .unwrap();
        run(&mut app)
    });
    wait_for("two runners deleting", Duration::from_secs(30), || {
        (deleters(&mut db).0 == 2).then_some(())
    });
    // The budget is full; the other role's run() waits, and gets the helper's slot.
    let started = std::time::Instant::now();
    let row = other
        .query_one(
            "SELECT status, rows_deleted FROM token_cleanup.run('codes')",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0).as_str(), row.get::<_, i64>(1)),
        ("succeeded", 100)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The parallel run was not waiting on it: still going, and it finishes exactly.
    let (status, rows, workers) = caller.join().unwrap();
    assert_eq!(
        (status.as_str(), rows, workers),
        ("succeeded", ROWS / 2, Some(2))
    );
    assert_eq!(left(&mut db), (0, ROWS / 2));
    assert_eq!(deleters(&mut db), (2, ROWS / 2));
    // Positive control: the helper stopped early and the leader walked the rest of its slice (each
    // slice holds about a quarter of the rows).
    let most = count(
        &mut db,
        "SELECT max(rows)::bigint FROM (SELECT sum(rows) AS rows FROM public.deleted_by GROUP BY pid) p",
    );
    assert!(most > ROWS / 4 + 5_000, "the leader deleted {most} rows");
}
