//! The runs table: begin a run (committed by the caller before any row is deleted), record progress
//! and the outcome, mark runs left `running` by a dead process as `interrupted`, and prune old history.
//! Every function runs inside the caller's transaction, as the worker (no row-level security).

mod read;
mod totals;

pub use read::*;
use totals::{add_to_totals, keep_bounded};
pub use totals::{lifetime_rate, prune};

use crate::errors::Error;
use pgrx::prelude::*;

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Trigger {
    Schedule,
    Manual,
    /// A scheduled run tried again after it failed.
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Retry => "retry",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(Error),
    /// Stopped by SIGTERM (shutdown, DROP DATABASE, pg_terminate_backend) or a cancel.
    Interrupted(Error),
    /// Stopped between batches at the rule's max_run_duration; the rest goes in the next run.
    Stopped(String),
    /// Refused before deleting anything: it would pass max_rows_per_run or max_fraction.
    Refused(Error),
}

impl Outcome {
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Interrupted(_) => "interrupted",
            Outcome::Stopped(_) => "stopped",
            Outcome::Refused(_) => "refused",
        }
    }

    pub fn error(&self) -> Option<&Error> {
        match self {
            Outcome::Succeeded | Outcome::Stopped(_) => None,
            Outcome::Failed(e) | Outcome::Interrupted(e) | Outcome::Refused(e) => Some(e),
        }
    }

    /// What the `error` column says: the error's message, or why a run stopped.
    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Succeeded => None,
            Outcome::Stopped(why) => Some(why),
            Outcome::Failed(e) | Outcome::Interrupted(e) | Outcome::Refused(e) => Some(&e.message),
        }
    }
}

/// A run recorded `running`: its id and when it started (the row's `started_at`).
#[derive(Debug, Clone, Copy)]
pub struct Begun {
    pub run_id: i64,
    pub started_at: pg_sys::TimestampTz,
}

/// Inserts a `running` row for `rule`; `id` may be preallocated by the caller (`run()` passes the
/// id it names the run by). `scheduled_for` is the due time, epoch seconds.
pub fn begin(
    id: Option<i64>,
    rule_id: i64,
    rule_name: &str,
    owner: &str,
    trigger: Trigger,
    scheduled_for: Option<f64>,
) -> Begun {
    let (run_id, started_at) = Spi::get_two_with_args::<i64, TimestampWithTimeZone>(
        "INSERT INTO token_cleanup.runs (id, rule_id, rule_name, owner, trigger, status, scheduled_for, pid) \
         VALUES (coalesce($1, nextval('token_cleanup.runs_id_seq')), $2, $3, $4, $5, 'running', \
                 to_timestamp($6), pg_backend_pid()) RETURNING id, started_at",
        &[
            id.into(),
            rule_id.into(),
            rule_name.into(),
            owner.into(),
            trigger.as_str().into(),
            scheduled_for.into(),
        ],
    )
    .expect("inserting into token_cleanup.runs");
    Begun {
        run_id: run_id.expect("INSERT … RETURNING gives a row"),
        started_at: started_at.expect("started_at is NOT NULL").into(),
    }
}

/// Records progress of a run still going on (visible to others once the batch commits).
pub fn progress(run_id: i64, rows_deleted: i64, batches: i32) {
    Spi::run_with_args(
        "UPDATE token_cleanup.runs SET rows_deleted = $2, batches = $3 WHERE id = $1",
        &[run_id.into(), rows_deleted.into(), batches.into()],
    )
    .expect("updating token_cleanup.runs");
}

/// What a run did: the one set of counters, kept by the executor as the run goes, recorded at its
/// end, logged, and handed back to whoever asked for the run.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub rows_deleted: i64,
    pub batches: i32,
    /// The whole run, in ms.
    pub elapsed_ms: u128,
    /// Of which spent finding candidate rows apart from deleting them (planning, index collection).
    pub scan_ms: u128,
    /// The longest batch, from its transaction's start to its commit: how long it held row locks.
    pub longest_batch_ms: u128,
    /// How the run found its rows: `table walk` or `index` (see the executor); `None` when it
    /// ended before deciding.
    pub method: Option<&'static str>,
    /// Batches that met a row locked by another session and were redone skipping locked rows.
    pub batches_redone: i32,
    /// Per leaf partition of a partitioned table: its name, rows, and what was done (`deleted`,
    /// `dropped` or `detached`).
    pub partitions: Vec<(String, i64, &'static str)>,
    /// Leaf partitions dropped or detached whole.
    pub partitions_dropped: i32,
    /// Time paused by pacing, and per reason (JSON: `{"replica_lag": s, …}`).
    pub paused: std::time::Duration,
    pub pause_reasons: Option<String>,
    /// The planner's estimate of the rows matching when the run planned (its backlog then); `None`
    /// when it ended before planning.
    pub estimated_rows: Option<i64>,
    /// Runners that worked on the run (1 plus the helpers of a parallel walk); `None` when it
    /// ended before planning.
    pub workers: Option<i32>,
}

impl RunStats {
    /// `runs.partitions`: `{"<leaf>": {"rows": n, "action": "deleted" | "dropped" | "detached"}}`.
    fn partitions_json(&self) -> Option<String> {
        (!self.partitions.is_empty()).then(|| {
            let map: serde_json::Map<String, serde_json::Value> = self
                .partitions
                .iter()
                .map(|(name, rows, action)| {
                    (
                        name.clone(),
                        serde_json::json!({"rows": rows, "action": action}),
                    )
                })
                .collect();
            serde_json::Value::Object(map).to_string()
        })
    }
}

/// Records the end of a run; returns when it ended (the row's `finished_at`).
pub fn finish(run_id: i64, outcome: &Outcome, stats: &RunStats) -> pg_sys::TimestampTz {
    let error = outcome.error();
    let finished_at = Spi::get_one_with_args::<TimestampWithTimeZone>(
        "UPDATE token_cleanup.runs SET status = $2, error = $3, rows_deleted = $4, batches = $5, \
                longest_batch_ms = $6, method = $7, sqlstate = $8, error_detail = $9, error_hint = $10, \
                partitions = $11::jsonb, partitions_dropped = $12, \
                paused = pg_catalog.make_interval(secs => $13), pause_reasons = $14::jsonb, \
                estimated_rows = $15, workers = $16, finished_at = pg_catalog.clock_timestamp() \
          WHERE id = $1 RETURNING finished_at",
        &[
            run_id.into(),
            outcome.status().into(),
            outcome.message().into(),
            stats.rows_deleted.into(),
            stats.batches.into(),
            (stats.longest_batch_ms.min(i32::MAX as u128) as i32).into(),
            stats.method.into(),
            error.map(Error::sqlstate_text).into(),
            error.and_then(|e| e.detail.clone()).into(),
            error.and_then(|e| e.hint.clone()).into(),
            stats.partitions_json().into(),
            stats.partitions_dropped.into(),
            stats.paused.as_secs_f64().into(),
            stats.pause_reasons.clone().into(),
            stats.estimated_rows.into(),
            stats.workers.into(),
        ],
    )
    .expect("updating token_cleanup.runs");
    add_to_totals(run_id);
    keep_bounded(run_id);
    // SAFETY: reads the clock (for a row someone deleted meanwhile).
    finished_at.map_or_else(|| unsafe { pg_sys::GetCurrentTimestamp() }, Into::into)
}

/// Whether pg_token_cleanup.log_runs keeps (and logs) a run that ended with `status` having deleted
/// `rows_deleted` rows.
pub fn kept(status: &str, rows_deleted: i64) -> bool {
    match crate::gucs::log_runs() {
        crate::gucs::LogRuns::All => true,
        crate::gucs::LogRuns::Nonzero => status != "succeeded" || rows_deleted > 0,
        crate::gucs::LogRuns::Errors => !matches!(status, "succeeded" | "stopped"),
    }
}

/// Records run `run_id`, still `running`, as `interrupted` with `why` and the progress its
/// committed batches made (its process is ending: see `worker::signals`).
pub fn end_unfinished(run_id: i64, why: &Error, (rows_deleted, batches): (i64, i32)) {
    let ended = Spi::get_one_with_args::<i64>(
        "UPDATE token_cleanup.runs SET status = 'interrupted', finished_at = pg_catalog.clock_timestamp(), \
                sqlstate = $2, error = $3, error_hint = $4, \
                rows_deleted = GREATEST(rows_deleted, $5), batches = GREATEST(batches, $6) \
          WHERE id = $1 AND status = 'running' RETURNING id",
        &[
            run_id.into(),
            why.sqlstate_text().into(),
            why.message.as_str().into(),
            why.hint.clone().into(),
            rows_deleted.into(),
            batches.into(),
        ],
    );
    if let Ok(Some(id)) = ended {
        add_to_totals(id);
    }
}

/// Marks runs left `running` by a process that no longer exists (crash, kill -9, immediate
/// shutdown) as `interrupted`. Returns how many were marked.
pub fn mark_interrupted() -> i64 {
    let marked: Vec<i64> = Spi::connect_mut(|client| {
        client
            .update(
                "UPDATE token_cleanup.runs SET status = 'interrupted', finished_at = clock_timestamp(), \
                        sqlstate = coalesce(sqlstate, '57P01'), \
                        error = coalesce(error, 'the process running it ended before the run finished (crash, kill or shutdown)') \
                  WHERE status = 'running' \
                    AND (pid IS NULL OR pid = pg_backend_pid() \
                         OR pid NOT IN (SELECT a.pid FROM pg_stat_activity a WHERE a.pid IS NOT NULL)) \
                  RETURNING id",
                None,
                &[],
            )?
            .map(|row| row.get::<i64>(1).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()
    })
    .expect("marking interrupted runs");
    for id in &marked {
        add_to_totals(*id);
    }
    marked.len() as i64
}
