//! The SQL functions users call: `run`, `preview`, `next_runs`, `next_run`, and the two wake-ups the
//! extension's own triggers call. Thin: each delegates to the modules that own the work.

use crate::errors::refuse;
use crate::errors::Error;
use crate::gucs;
use crate::history;
use crate::owner;
use crate::rules;
use crate::schedule::{Schedule, SCHEDULE_HINT};
use crate::target;
use crate::worker::{registry, runner};
use chrono::{DateTime, Utc};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Most fire times `next_runs` lists.
const MAX_NEXT_RUNS: i32 = 10_000;

fn to_chrono(t: TimestampWithTimeZone) -> DateTime<Utc> {
    crate::pgtime::from_pg(pg_sys::TimestampTz::from(t))
}

fn to_pg(t: DateTime<Utc>) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(crate::pgtime::to_pg(t))
        .expect("fire times lie within PostgreSQL's timestamp range")
}

fn parse_schedule(text: &str) -> Schedule {
    Schedule::parse(text).unwrap_or_else(|e| {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid schedule \"{text}\": {e}"),
            SCHEDULE_HINT,
        )
    })
}

/// The next `n` fire times of `schedule` after `after`, evaluated in `pg_token_cleanup.timezone` —
/// the same code the scheduler uses.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn next_runs(
    schedule: &str,
    after: default!(TimestampWithTimeZone, "now()"),
    n: default!(i32, 5),
) -> SetOfIterator<'static, TimestampWithTimeZone> {
    if !(0..=MAX_NEXT_RUNS).contains(&n) {
        refuse(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("n = {n} is out of range 0-{MAX_NEXT_RUNS}"),
            "Ask for fewer fire times.",
        );
    }
    let schedule = parse_schedule(schedule);
    let after = to_chrono(after).with_timezone(&gucs::timezone());
    let times: Vec<TimestampWithTimeZone> = schedule
        .upcoming(&after, n as usize)
        .into_iter()
        .map(|t| to_pg(t.with_timezone(&Utc)))
        .collect();
    SetOfIterator::new(times)
}

/// The next fire time of `schedule` after now, in `timezone` (NULL: pg_token_cleanup.timezone);
/// NULL if it never fires again. Used by `rule_stats`.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn next_run(
    schedule: &str,
    timezone: default!(Option<&str>, "NULL"),
) -> Option<TimestampWithTimeZone> {
    let schedule = Schedule::parse(schedule).ok()?;
    let tz = timezone
        .and_then(gucs::parse_timezone)
        .unwrap_or_else(gucs::timezone);
    let now = Utc::now().with_timezone(&tz);
    schedule
        .next_after(&now)
        .map(|t| to_pg(t.with_timezone(&Utc)))
}

/// How many rows the rule would delete now, deleting nothing. Counts as the rule's owner.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn preview(
    rule_name: &str,
) -> TableIterator<
    'static,
    (
        name!(rule, String),
        name!(table_name, String),
        name!(condition, String),
        name!(matching_rows, i64),
        name!(batch_size, i32),
        name!(batches, i64),
    ),
> {
    let rule = rules::visible_rule_by_name(rule_name);
    let (table, owner) = crate::inspect::resolve(&rule).unwrap_or_else(|e| e.raise());
    let sql = format!(
        "SELECT count(*) FROM ONLY {} WHERE {}",
        table.qualified_name,
        crate::condition::embedded(&rule.condition)
    );
    let matching = crate::owner::as_role(owner, rule.limits(), || Spi::get_one::<i64>(&sql))
        .unwrap_or_else(|e| e.raise())
        .unwrap_or_else(|e| Error::from(e).raise())
        .unwrap_or(0);
    let batch_size = rule.effective_batch_size();
    let batches = (matching + i64::from(batch_size) - 1) / i64::from(batch_size);
    TableIterator::once((
        rule.name,
        table.qualified_name,
        rule.condition,
        matching,
        batch_size,
        batches,
    ))
}

/// Runs a rule now and waits for it: a background worker performs the run exactly as the scheduler
/// would (batches in their own transactions, as the owner, recorded in token_cleanup.runs with
/// trigger 'manual'). Returns the run on success; raises the recorded error otherwise.
// pgrx reads the column names from the signature itself, so the type cannot move into an alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn run(
    rule_name: &str,
) -> TableIterator<
    'static,
    (
        name!(run_id, i64),
        name!(rule, String),
        name!(status, String),
        name!(rows_deleted, i64),
        name!(batches, i32),
        name!(started_at, TimestampWithTimeZone),
        name!(finished_at, Option<TimestampWithTimeZone>),
    ),
> {
    refuse_snapshot_isolation();
    let rule = rules::visible_rule_by_name(rule_name);
    refuse_uncommitted(&rule);
    let name = rule.name.clone();
    let run = runner::run_manual(rule);
    if let Some(error) = run.error {
        raise_failed_run(run.run_id, &name, &run.status, error);
    }
    let timestamp = |t: pg_sys::TimestampTz| TimestampWithTimeZone::try_from(t).ok();
    TableIterator::once((
        run.run_id,
        name,
        run.status,
        run.rows_deleted,
        run.batches,
        timestamp(run.started_at).expect("a run has started"),
        (run.finished_at != 0)
            .then(|| timestamp(run.finished_at))
            .flatten(),
    ))
}

/// `run()` waits for a run that commits in transactions of its own: a REPEATABLE READ or
/// SERIALIZABLE caller would not see them.
fn refuse_snapshot_isolation() {
    // SAFETY: reading the isolation level of the current transaction.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        refuse(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "token_cleanup.run() cannot be called in a REPEATABLE READ or SERIALIZABLE transaction",
            "Call it in a READ COMMITTED transaction (the default): it waits for the run, which commits in its own transactions.",
        );
    }
}

/// A run must run the rule as everyone sees it, not a version this transaction has not committed.
fn refuse_uncommitted(rule: &rules::Rule) {
    if changed_in_this_transaction(rule.id) {
        refuse(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rule \"{}\" has changes this transaction has not committed", rule.name),
            "Commit, then run it: a run commits in transactions of its own, and must run the rule as everyone sees it.",
        );
    }
}

/// Raises the error of run `run_id` of rule `name`, which ended `status`, as its runner handed it
/// back, saying where the run is recorded.
fn raise_failed_run(run_id: i64, name: &str, status: &str, recorded: Error) -> ! {
    let hint = recorded
        .hint
        .clone()
        .unwrap_or_else(|| "Fix the cause and run the rule again.".into());
    Error {
        message: format!(
            "run {run_id} of rule \"{name}\" {status}: {}",
            recorded.message
        ),
        hint: Some(format!(
            "{hint} The run is recorded in token_cleanup.runs (id {run_id})."
        )),
        ..recorded
    }
    .raise()
}

/// Deletes one of the caller's rules (a superuser: any rule). Rules are deleted through this
/// function rather than `DELETE`: PUBLIC holds no DELETE on `token_cleanup.rules`, because a role
/// with DELETE could `LOCK` the table and stall every other role (see SECURITY.md). Its run history
/// and lifetime counters stay, as they do for a deleted rule.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn delete_rule(rule_name: &str) -> bool {
    // Row-level security shows the caller only its own rules; a BYPASSRLS role sees every rule, so
    // ownership is checked as well.
    let rule = rules::visible_rule_by_name(rule_name);
    // SAFETY: reading the current user and whether it is a superuser.
    let (caller, superuser) = unsafe { (pg_sys::GetUserId(), pg_sys::superuser()) };
    if !superuser && owner::role_oid(&rule.owner) != Some(caller) {
        refuse(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "rule \"{}\" belongs to role \"{}\": only its owner or a superuser may delete it",
                rule.name, rule.owner
            ),
            "Ask the rule's owner, or a superuser, to delete it.",
        );
    }
    let no_limits = owner::Limits {
        lock_timeout_ms: 0,
        statement_timeout_ms: 0,
    };
    // As the bootstrap superuser, who owns the table, for this one statement of ours.
    owner::as_owner(
        pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
        no_limits,
        || {
            Spi::run_with_args(
                "DELETE FROM token_cleanup.rules WHERE id = $1",
                &[rule.id.into()],
            )
        },
    )
    .expect("deleting the rule");
    true
}

/// Whether the rule's row was written by this (uncommitted) transaction.
fn changed_in_this_transaction(rule_id: i64) -> bool {
    Spi::get_one_with_args::<i64>(
        "SELECT xmin::text::int8 FROM token_cleanup.rules WHERE id = $1",
        &[rule_id.into()],
    )
    .ok()
    .flatten()
    // SAFETY: a transaction id read from the row; the check reads this backend's state.
    .is_some_and(|xmin| unsafe {
        pg_sys::TransactionIdIsCurrentTransactionId(pg_sys::TransactionId::from(xmin as u32))
    })
}

static SCHEDULER_WAKE_PENDING: AtomicBool = AtomicBool::new(false);
static LAUNCHER_WAKE_PENDING: AtomicBool = AtomicBool::new(false);

/// Live progress of the runs going on in this database that the caller may see in
/// `token_cleanup.runs` (its own; a superuser or BYPASSRLS role: all), from shared memory: what
/// `token_cleanup.progress` shows between the writes of a run's row.
#[pg_extern(volatile, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn live_progress() -> TableIterator<
    'static,
    (
        name!(run_id, i64),
        name!(rows_deleted, i64),
        name!(batches, i32),
    ),
> {
    // SAFETY: reading this backend's database OID.
    let live = registry::progress_in(unsafe { pg_sys::MyDatabaseId });
    let visible = history::visible_running(live.iter().map(|(id, _, _)| *id).collect());
    TableIterator::new(
        live.into_iter()
            .filter(move |(id, _, _)| visible.contains(id)),
    )
}

/// The worker budget now: slots held in the whole cluster (the launcher, schedulers, runners, idle
/// or not, and reservations), `pg_token_cleanup.max_workers`, and how many wait for a slot (idle
/// runners hand theirs over at once, so a waiter means the budget is really full). What the
/// monitoring reads; no table, no lock.
#[pg_extern(volatile, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn worker_budget(
) -> TableIterator<'static, (name!(in_use, i32), name!(budget, i32), name!(waiting, i32))> {
    let (in_use, waiting) = registry::budget::usage();
    TableIterator::once((
        in_use as i32,
        crate::gucs::max_workers() as i32,
        waiting as i32,
    ))
}

/// Tells this database's scheduler that the rules changed: a relcache invalidation of the rules
/// table, delivered at commit (COMMIT PREPARED included), and its latch set at commit so that it
/// reloads at once. Called by the rules table's statement trigger; not callable by PUBLIC.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn wake_scheduler() {
    if let Ok(Some(rules)) = target::lookup_table("token_cleanup.rules") {
        // SAFETY: queues an invalidation message in the current transaction.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rules.oid) };
    }
    at_commit(&SCHEDULER_WAKE_PENDING, || {
        // SAFETY: reading this backend's database.
        registry::wake_scheduler(unsafe { pg_sys::MyDatabaseId })
    });
}

/// Wakes the launcher when the current transaction commits, so it starts a scheduler for this
/// database now. Called at the end of CREATE EXTENSION.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn wake_launcher() {
    at_commit(&LAUNCHER_WAKE_PENDING, extension_created_here);
}

/// This database has the extension now: the launcher forgets an earlier probe that found none, so
/// the database waits its turn for a slot even when the budget is full, and is woken.
fn extension_created_here() {
    // SAFETY: this backend's database, set once it connected.
    registry::set_no_extension(unsafe { pg_sys::MyDatabaseId }, false);
    registry::wake_launcher();
}

/// Runs `wake` once when the current transaction commits, however many statements ask for it
/// (waking earlier would let a worker read the rules before the change is visible).
fn at_commit(pending: &'static AtomicBool, wake: fn()) {
    if pending.swap(true, Ordering::SeqCst) {
        return;
    }
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        pending.store(false, Ordering::SeqCst);
        wake();
    });
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, move || {
        pending.store(false, Ordering::SeqCst);
    });
}
