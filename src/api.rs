//! The SQL functions users call: `run`, `preview`, `next_runs`, `next_run`, and the two wake-ups the
//! extension's own triggers call. Thin: each delegates to the modules that own the work.

use crate::catalog;
use crate::errors::refuse;
use crate::gucs;
use crate::owner;
use crate::schedule::{Schedule, SCHEDULE_HINT};
use crate::target;
use crate::worker::{self, runner};
use chrono::{DateTime, TimeZone, Utc};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Most fire times `next_runs` lists.
const MAX_NEXT_RUNS: i32 = 10_000;
/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

extern "C-unwind" {
    // commands/sequence.h, not in pgrx's bindings; called through `guarded` (it raises ERRORs).
    fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

fn to_chrono(t: TimestampWithTimeZone) -> DateTime<Utc> {
    let us = pg_sys::TimestampTz::from(t).saturating_add(PG_EPOCH_OFFSET_US);
    Utc.timestamp_micros(us).single().unwrap_or_else(Utc::now)
}

fn to_pg(t: DateTime<Utc>) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(t.timestamp_micros() - PG_EPOCH_OFFSET_US)
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

/// The next fire time of `schedule` after now (NULL if it never fires again); used by `rule_stats`.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn next_run(schedule: &str) -> Option<TimestampWithTimeZone> {
    let schedule = Schedule::parse(schedule).ok()?;
    let now = Utc::now().with_timezone(&gucs::timezone());
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
    let rule = catalog::visible_rule_by_name(rule_name);
    let owner = owner::role_oid(&rule.owner).unwrap_or_else(|| {
        refuse(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "owner role \"{}\" of rule \"{}\" does not exist",
                rule.owner, rule.name
            ),
            "Make an existing role the rule's owner (as a superuser).",
        )
    });
    let table = match target::lookup_table(&rule.table_name) {
        Ok(Some(t)) => t,
        _ => refuse(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("table {} of rule \"{}\" does not exist (dropped or renamed?)", rule.table_name, rule.name),
            "Point the rule at the table again: UPDATE token_cleanup.rules SET table_name = … WHERE name = ….",
        ),
    };
    let owner = owner::run_as(owner, table.oid);
    let sql = format!(
        "SELECT count(*) FROM ONLY {} WHERE {}",
        table.qualified_name,
        crate::condition::embedded(&rule.condition)
    );
    let limits = rule.limits();
    let matching = owner::as_owner(owner, limits, || {
        owner::timed(limits, || {
            Spi::get_one::<i64>(&sql).ok().flatten().unwrap_or(0)
        })
    });
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
    // SAFETY: reading the isolation level of the current transaction.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        refuse(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "token_cleanup.run() cannot be called in a REPEATABLE READ or SERIALIZABLE transaction",
            "Call it in a READ COMMITTED transaction (the default): it waits for the run, which commits in its own transactions.",
        );
    }
    let rule = catalog::visible_rule_by_name(rule_name);
    let run_id = allocate_run_id();
    let Some(worker) = runner::spawn(rule.id, run_id, &rule.name) else {
        refuse(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!("could not start a background worker to run rule \"{}\"", rule.name),
            "All background worker slots are in use: raise max_worker_processes (restart needed) or try again.",
        );
    };
    if worker.wait_for_shutdown().is_err() {
        refuse(
            PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
            format!(
                "the server shut down while rule \"{}\" was running",
                rule.name
            ),
            format!("See run {run_id} in token_cleanup.runs."),
        );
    }
    // update() rather than select(): a read-write SPI call takes a fresh snapshot, which sees the
    // runner's commits (a read-only one would reuse this statement's snapshot).
    let row = Spi::connect_mut(|client| {
        let rows = client.update(
            "SELECT status, rows_deleted, batches, started_at, finished_at, error FROM token_cleanup.runs WHERE id = $1",
            Some(1),
            &[run_id.into()],
        )?;
        let Some(r) = rows.into_iter().next() else { return Ok(None) };
        Ok::<_, pgrx::spi::Error>(Some((
            r.get::<String>(1)?.unwrap_or_default(),
            r.get::<i64>(2)?.unwrap_or(0),
            r.get::<i32>(3)?.unwrap_or(0),
            r.get::<TimestampWithTimeZone>(4)?,
            r.get::<TimestampWithTimeZone>(5)?,
            r.get::<String>(6)?,
        )))
    })
    .expect("reading token_cleanup.runs");
    let Some((status, rows, batches, started, finished, error)) = row else {
        refuse(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rule \"{}\" did not run", rule.name),
            "The rule was deleted, or it was created in this transaction and is not committed yet: commit, then run it.",
        );
    };
    if status != "succeeded" {
        raise_run_error(
            &rule.name,
            run_id,
            &status,
            error.as_deref().unwrap_or("no error recorded"),
        );
    }
    let started = started.expect("started_at is NOT NULL");
    TableIterator::once((run_id, rule.name, status, rows, batches, started, finished))
}

fn allocate_run_id() -> i64 {
    let seq = target::lookup_table("token_cleanup.runs_id_seq")
        .ok()
        .flatten()
        .expect("token_cleanup.runs_id_seq exists");
    // SAFETY: nextval on our own sequence; the caller need not hold USAGE on it.
    unsafe { crate::errors::guarded(|| nextval_internal(seq.oid, false)) }
}

/// Raises the error a manual run recorded, with the SQLSTATE it carried where there was one.
fn raise_run_error(rule: &str, run_id: i64, status: &str, error: &str) -> ! {
    let code = if error.starts_with(runner::ALREADY_RUNNING) {
        PgSqlErrorCode::ERRCODE_OBJECT_IN_USE
    } else if status == "interrupted" {
        PgSqlErrorCode::ERRCODE_QUERY_CANCELED
    } else {
        recorded_sqlstate(error).unwrap_or(PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION)
    };
    refuse(
        code,
        format!("run {run_id} of rule \"{rule}\" {status}: {error}"),
        format!("The run is recorded in token_cleanup.runs (id {run_id}); fix the cause and run the rule again."),
    )
}

/// The SQLSTATE in a recorded error ending "(SQLSTATE xxxxx)".
fn recorded_sqlstate(error: &str) -> Option<PgSqlErrorCode> {
    let at = error.rfind("(SQLSTATE ")?;
    let code = error.get(at + 10..at + 15)?;
    if !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let packed = code.bytes().enumerate().fold(0i32, |acc, (i, b)| {
        acc | ((i32::from(b - b'0') & 0x3F) << (6 * i))
    });
    Some(PgSqlErrorCode::from(packed))
}

static SCHEDULER_WAKE_PENDING: AtomicBool = AtomicBool::new(false);
static LAUNCHER_WAKE_PENDING: AtomicBool = AtomicBool::new(false);

/// Wakes this database's scheduler when the current transaction commits, so it reloads the rules.
/// Called by the rules table's statement trigger.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn wake_scheduler() {
    wake_at_commit(worker::SCHEDULER_TYPE, true, &SCHEDULER_WAKE_PENDING);
}

/// Wakes the launcher when the current transaction commits, so it starts a scheduler for this
/// database now. Called at the end of CREATE EXTENSION.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn wake_launcher() {
    wake_at_commit(worker::LAUNCHER_TYPE, false, &LAUNCHER_WAKE_PENDING);
    wake_at_commit(worker::SCHEDULER_TYPE, true, &SCHEDULER_WAKE_PENDING);
}

/// Finds the worker processes of `backend_type` (in this database only if `this_database`) and
/// sends them SIGUSR1 after commit (sending earlier would let them read the rules before the change
/// is visible). One wake per transaction however many statements ask for it.
fn wake_at_commit(backend_type: &'static str, this_database: bool, pending: &'static AtomicBool) {
    if pending.swap(true, Ordering::SeqCst) {
        return;
    }
    let pids: Vec<i32> = Spi::connect(|client| {
        let rows = client.select(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = $1 \
               AND (NOT $2 OR datid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))",
            None,
            &[backend_type.into(), this_database.into()],
        )?;
        rows.map(|r| r.get::<i32>(1).map(|p| p.unwrap_or(0))).collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_default();
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        pending.store(false, Ordering::SeqCst);
        for pid in pids.into_iter().filter(|p| *p > 0) {
            // SAFETY: kill(2) of a PostgreSQL worker; SIGUSR1 only sets its latch.
            unsafe { libc::kill(pid, libc::SIGUSR1) };
        }
    });
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, move || {
        pending.store(false, Ordering::SeqCst);
    });
}
