//! One run, the same for scheduled and manual runs, in one place: claim the rule and its table,
//! record the run as `running` (committed before any row is deleted), wait for the table's lock,
//! execute, record the outcome, log, release the claim (on drop, whatever happens).

use super::registry::{self, Busy};
use crate::catalog::Rule;
use crate::errors::Error;
use crate::executor;
use crate::history::{self, Counts, Outcome, Trigger};
use crate::target;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// How often a run whose table is locked by another session looks again.
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// What a runner is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub rule: Rule,
    pub trigger: Trigger,
    /// The due time of a scheduled run, epoch seconds.
    pub scheduled_for: Option<f64>,
    /// The run id to record under (manual runs allocate it, to read the result back).
    pub run_id: Option<i64>,
}

/// Performs `job` in this (registered) worker; returns the run it recorded, or 0 when it recorded
/// none (a scheduled slot skipped because a manual run of the rule is going on).
pub fn perform(job: &Job, stop_requested: &dyn Fn() -> bool) -> i64 {
    let rule = &job.rule;
    let table = BackgroundWorker::transaction(|| {
        target::lookup_table(&rule.table_name)
            .ok()
            .flatten()
            .map_or(pg_sys::InvalidOid, |t| t.oid)
    });
    let _claim = match registry::claim(rule.id, table, job.run_id.unwrap_or(0)) {
        Ok(claim) => claim,
        Err(busy) if job.trigger == Trigger::Manual => {
            return record_failure(job, already_running(rule, busy));
        }
        Err(busy) => {
            log!(
                "pg_token_cleanup: rule \"{}\" is busy ({}); skipping its run due at {}",
                rule.name,
                already_running(rule, busy).message,
                job.scheduled_for.unwrap_or_default()
            );
            return 0;
        }
    };
    let run_id = BackgroundWorker::transaction(|| begin(job));
    registry::set_claimed_run(run_id);
    executor::report_activity(&format!(
        "pg_token_cleanup: rule {} run {run_id}: starting",
        rule.name
    ));
    if table != pg_sys::InvalidOid {
        if let Err(why) = wait_for_table(rule, table, stop_requested) {
            BackgroundWorker::transaction(|| history::finish(run_id, &why, &Counts::default()));
            announce(job, run_id, &why, 0, 0);
            log!(
                "pg_token_cleanup: rule \"{}\" run {run_id} ({}) {}: {}",
                rule.name,
                job.trigger.as_str(),
                why.status(),
                why.message().unwrap_or_default()
            );
            return run_id;
        }
    }
    let report = executor::execute(rule, run_id, stop_requested);
    super::log_run(rule, run_id, job.trigger, &report);
    announce(
        job,
        run_id,
        &report.outcome,
        report.rows_deleted,
        report.elapsed_ms,
    );
    run_id
}

/// `NOTIFY token_cleanup, '<json>'` at the end of a run, as `pg_token_cleanup.notify` asks.
fn announce(job: &Job, run_id: i64, outcome: &Outcome, rows_deleted: i64, elapsed_ms: u128) {
    let wanted = match crate::gucs::notify() {
        crate::gucs::Notify::Off => false,
        crate::gucs::Notify::Failures => {
            matches!(outcome, Outcome::Failed(_) | Outcome::Refused(_))
        }
        crate::gucs::Notify::All => true,
    };
    if !wanted {
        return;
    }
    // SAFETY: reading this process's database.
    let database = unsafe { pg_sys::MyDatabaseId };
    let error = outcome.error();
    let database = BackgroundWorker::transaction(|| crate::worker::database_name(database));
    let payload = serde_json::json!({
        "database": database,
        "rule": job.rule.name,
        "owner": job.rule.owner,
        "run_id": run_id,
        "trigger": job.trigger.as_str(),
        "status": outcome.status(),
        "rows_deleted": rows_deleted,
        "duration_ms": elapsed_ms as u64,
        "error": outcome.message(),
        "sqlstate": error.map(Error::sqlstate_text),
    })
    .to_string();
    BackgroundWorker::transaction(|| {
        Spi::run_with_args(
            "SELECT pg_catalog.pg_notify('token_cleanup', $1)",
            &[payload.as_str().into()],
        )
    })
    .unwrap_or_else(|e| warning!("pg_token_cleanup: NOTIFY failed: {e}"));
}

fn begin(job: &Job) -> i64 {
    history::begin(
        job.run_id,
        job.rule.id,
        &job.rule.name,
        &job.rule.owner,
        job.trigger,
        job.scheduled_for,
    )
}

/// Records a run that did not start (committed), returning its id.
fn record_failure(job: &Job, why: Error) -> i64 {
    let outcome = Outcome::Failed(why);
    let run_id = BackgroundWorker::transaction(|| {
        let id = begin(job);
        history::finish(id, &outcome, &Counts::default());
        id
    });
    announce(job, run_id, &outcome, 0, 0);
    log!(
        "pg_token_cleanup: rule \"{}\" run {run_id} ({}) did not start: already running",
        job.rule.name,
        job.trigger.as_str()
    );
    run_id
}

fn already_running(rule: &Rule, busy: Busy) -> Error {
    let what = if busy.same_rule {
        format!(
            "already running as run {}: rule \"{}\" is being run by another session",
            busy.run_id, rule.name
        )
    } else {
        format!(
            "already running: table {} of rule \"{}\" is being cleaned by rule {} (run {})",
            rule.table_name, rule.name, busy.rule_id, busy.run_id
        )
    };
    Error::new(PgSqlErrorCode::ERRCODE_OBJECT_IN_USE, what)
        .with_hint("Wait for that run to finish (see token_cleanup.runs), then run the rule again.")
}

/// Waits, holding no lock, until no other session holds a lock on the table that the run's DELETE
/// would wait for, up to the rule's lock_timeout (0: for ever). A long migration holding
/// `ACCESS EXCLUSIVE` thus fails this run after its lock_timeout, and delays no other rule.
fn wait_for_table(
    rule: &Rule,
    table: pg_sys::Oid,
    stop_requested: &dyn Fn() -> bool,
) -> Result<(), Outcome> {
    let lock_timeout = rule.limits().lock_timeout_ms;
    let started = Instant::now();
    while BackgroundWorker::transaction(|| executor::table_locked_by_others(table)) {
        if stop_requested() {
            return Err(Outcome::Interrupted(Error::new(
                PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
                "stopped by SIGTERM while waiting for the table's lock",
            )));
        }
        if lock_timeout > 0 && started.elapsed() >= Duration::from_millis(lock_timeout as u64) {
            return Err(Outcome::Failed(
                Error::new(
                    PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                    format!(
                        "could not lock table {} within lock_timeout ({lock_timeout} ms): another session holds a conflicting lock",
                        rule.table_name
                    ),
                )
                .with_hint("See pg_locks for the session holding it; the rule runs again at its next slot."),
            ));
        }
        std::thread::sleep(LOCK_RETRY);
    }
    Ok(())
}
