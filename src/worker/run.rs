//! One run, the same for scheduled and manual runs, in one place: a [`RunRequest`] in, a
//! [`RunResult`] out. [`perform`] checks that the role the rule runs as may delete from its table
//! (before anything else, so a rule on a table its owner cannot touch never claims it nor plans
//! anything), claims the rule and its table, records the run as `running` (committed before any row
//! is deleted), waits for the table's lock, checks that the rule and table are still the ones the
//! run was given (see `executor::binding`), executes, and ends the run in [`end`]: the one place
//! a run's outcome is recorded, announced and logged. The claim goes on drop, whatever happens.

use super::registry::{self, Busy};
use crate::errors::Error;
use crate::executor::binding::Binding;
use crate::executor::{self, RunReport};
use crate::history::{self, Outcome, RunResult, Trigger};
use crate::rules::resolve::{self, When};
use crate::rules::Rule;
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
pub struct RunRequest {
    pub rule: Rule,
    pub trigger: Trigger,
    /// The due time of a scheduled run, epoch seconds.
    pub scheduled_for: Option<f64>,
    /// The run id to record under (`run()` allocates it, to name the run even if its runner dies).
    pub run_id: Option<i64>,
}

/// Performs `request` in this (registered) worker and returns how it ended.
pub fn perform(request: &RunRequest) -> RunResult {
    let rule = &request.rule;
    let (table, binding, refused) = BackgroundWorker::transaction(|| {
        let table = target::lookup_table(&rule.table_name).ok().flatten();
        let refused = table.as_ref().and_then(|t| may_not_delete(rule, t));
        let table = table.map_or(pg_sys::InvalidOid, |t| t.oid);
        let binding = Binding::new(rule, request.trigger != Trigger::Manual, table);
        (table, binding, refused)
    });
    if let Some(refused) = refused {
        return end_unstarted(request, Outcome::Failed(refused));
    }
    let _claim = match registry::claim(rule.id, table, request.run_id.unwrap_or(0)) {
        Ok(claim) => claim,
        Err(busy) if request.trigger == Trigger::Manual => {
            return end_unstarted(request, Outcome::Failed(already_running(rule, busy)));
        }
        Err(busy) => {
            log!(
                "pg_token_cleanup: rule \"{}\" is busy ({}); skipping its run due at {}",
                rule.name,
                already_running(rule, busy).message,
                request.scheduled_for.unwrap_or_default()
            );
            return RunResult::skipped();
        }
    };
    let begun = BackgroundWorker::transaction(|| begin(request));
    registry::set_claimed_run(begun.run_id);
    let _recorded_at_exit = UnfinishedRun::new(begun.run_id);
    executor::report_activity(&format!(
        "pg_token_cleanup: rule {} run {}: starting",
        rule.name, begun.run_id
    ));
    if table != pg_sys::InvalidOid {
        let waited = wait_for_table(rule, table).and_then(|()| {
            BackgroundWorker::transaction(|| {
                binding.check_rule()?;
                binding.check_table()
            })
        });
        if let Err(why) = waited {
            return end(request, begun, &RunReport::ended_before_work(why));
        }
    }
    // The deadline the executor counts max_run_duration from, for ending the rule's code past it.
    super::signals::set_run_deadline(rule.max_run_duration());
    let report = executor::execute(rule, begun.run_id, &binding, &WorkerControl);
    end(request, begun, &report)
}

/// Records, announces and logs the end of a run begun as `begun`: the one place a run ends.
fn end(request: &RunRequest, begun: history::Begun, report: &RunReport) -> RunResult {
    let run_id = begun.run_id;
    let finished_at =
        BackgroundWorker::transaction(|| history::finish(run_id, &report.outcome, &report.stats));
    announce(
        request,
        run_id,
        &report.outcome,
        report.stats.rows_deleted,
        report.stats.elapsed_ms,
    );
    super::log_run(&request.rule, run_id, request.trigger, report);
    RunResult {
        run_id,
        status: report.outcome.status().to_string(),
        rows_deleted: report.stats.rows_deleted,
        batches: report.stats.batches,
        started_at: begun.started_at,
        finished_at,
        error: report.outcome.error().cloned(),
    }
}

/// Records a run that did not start (refused before its claim, or its rule already running).
fn end_unstarted(request: &RunRequest, outcome: Outcome) -> RunResult {
    let begun = BackgroundWorker::transaction(|| begin(request));
    end(request, begun, &RunReport::ended_before_work(outcome))
}

/// How a worker controls the run it performs: SIGTERM stops it (or its scheduler, to give the
/// runner to another owner's rule: [`super::registry::preempt`]); progress goes to the registry.
struct WorkerControl;

impl executor::RunControl for WorkerControl {
    fn stop_requested(&self) -> bool {
        super::signals::stop_requested()
    }

    fn why_stopped(&self) -> Error {
        if super::registry::preempted() {
            return super::signals::preempted();
        }
        Error::new(
            PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
            "stopped by SIGTERM (server shutdown, DROP DATABASE or pg_terminate_backend); \
             committed batches stay deleted, the rest go in the next run",
        )
    }

    fn progress(&self, rows_deleted: i64, batches: i32) {
        super::signals::set_progress(rows_deleted, batches);
    }

    fn start_helper(
        &self,
        slice: &executor::parallel::SliceRequest,
    ) -> Option<Box<dyn executor::parallel::Helper>> {
        super::runner::start_helper(slice)
    }
}

/// `NOTIFY token_cleanup, '<json>'` at the end of a run, as `pg_token_cleanup.notify` asks.
fn announce(
    request: &RunRequest,
    run_id: i64,
    outcome: &Outcome,
    rows_deleted: i64,
    elapsed_ms: u128,
) {
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
    let payload = notify_payload(
        &database,
        request,
        run_id,
        outcome.status(),
        error.map(Error::sqlstate_text),
        rows_deleted,
        elapsed_ms,
    );
    BackgroundWorker::transaction(|| {
        Spi::run_with_args(
            "SELECT pg_catalog.pg_notify('token_cleanup', $1)",
            &[payload.as_str().into()],
        )
    })
    .unwrap_or_else(|e| warning!("pg_token_cleanup: NOTIFY failed: {e}"));
}

/// The payload of a run's NOTIFY: who, what and how it ended, never the error's text (it may quote
/// row values, any role that can connect may LISTEN, and a long one passed NOTIFY's 8000 bytes).
/// What is left is bounded: names of at most 200 characters (rules) and 63 bytes (roles, databases).
fn notify_payload(
    database: &str,
    request: &RunRequest,
    run_id: i64,
    status: &str,
    sqlstate: Option<String>,
    rows_deleted: i64,
    elapsed_ms: u128,
) -> String {
    serde_json::json!({
        "database": database,
        "rule": request.rule.name,
        "owner": request.rule.owner,
        "run_id": run_id,
        "trigger": request.trigger.as_str(),
        "status": status,
        "rows_deleted": rows_deleted,
        "duration_ms": elapsed_ms as u64,
        "sqlstate": sqlstate,
    })
    .to_string()
}

fn begin(request: &RunRequest) -> history::Begun {
    history::begin(
        request.run_id,
        request.rule.id,
        &request.rule.name,
        &request.rule.owner,
        request.trigger,
        request.scheduled_for,
    )
}

/// While it lives, the process's exit records the run `interrupted` (see `signals::set_current_run`);
/// dropped once the run's outcome is committed.
struct UnfinishedRun;

impl UnfinishedRun {
    fn new(run_id: i64) -> UnfinishedRun {
        super::signals::set_current_run(Some(run_id));
        UnfinishedRun
    }
}

impl Drop for UnfinishedRun {
    fn drop(&mut self) {
        super::signals::set_current_run(None);
    }
}

/// `Some(error)` when the role the rule runs as holds no DELETE privilege on the table: checked from
/// the catalog alone, so nothing of the rule's owner runs and the table is not claimed. A missing
/// owner or table is left to the run, which records it.
fn may_not_delete(rule: &Rule, table: &target::ResolvedTable) -> Option<Error> {
    let owner = resolve::owner(&rule.name, &rule.owner, When::Running).ok()?;
    resolve::deleting_role(&rule.name, table, owner, When::Running).err()
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
fn wait_for_table(rule: &Rule, table: pg_sys::Oid) -> Result<(), Outcome> {
    let lock_timeout = rule.limits().lock_timeout_ms;
    let started = Instant::now();
    while BackgroundWorker::transaction(|| executor::table_locked_by_others(table)) {
        if super::signals::stop_requested() {
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
