//! The runs table: begin a run (committed by the caller before any row is deleted), record progress
//! and the outcome, mark runs left `running` by a dead process as `interrupted`, and prune old history.
//! Every function runs inside the caller's transaction, as the worker (no row-level security).

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

/// What a run did, as recorded at its end.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub rows_deleted: i64,
    pub batches: i32,
    pub longest_batch_ms: i32,
    /// How the run found its rows: `table walk` or `index` (see the executor).
    pub method: Option<&'static str>,
    /// For a partitioned table, per leaf partition (JSON): `{"<leaf>": {"rows": n, "action":
    /// "deleted" | "dropped" | "detached"}}`.
    pub partitions: Option<String>,
    /// Leaf partitions dropped or detached whole.
    pub partitions_dropped: i32,
    /// Seconds paused by pacing, and per reason (JSON: `{"replica_lag": s, …}`).
    pub paused_s: f64,
    pub pause_reasons: Option<String>,
}

/// Records the end of a run; returns when it ended (the row's `finished_at`).
pub fn finish(run_id: i64, outcome: &Outcome, counts: &RunStats) -> pg_sys::TimestampTz {
    let error = outcome.error();
    let finished_at = Spi::get_one_with_args::<TimestampWithTimeZone>(
        "UPDATE token_cleanup.runs SET status = $2, error = $3, rows_deleted = $4, batches = $5, \
                longest_batch_ms = $6, method = $7, sqlstate = $8, error_detail = $9, error_hint = $10, \
                partitions = $11::jsonb, partitions_dropped = $12, \
                paused = pg_catalog.make_interval(secs => $13), pause_reasons = $14::jsonb, \
                finished_at = pg_catalog.clock_timestamp() WHERE id = $1 RETURNING finished_at",
        &[
            run_id.into(),
            outcome.status().into(),
            outcome.message().into(),
            counts.rows_deleted.into(),
            counts.batches.into(),
            counts.longest_batch_ms.into(),
            counts.method.into(),
            error.map(Error::sqlstate_text).into(),
            error.and_then(|e| e.detail.clone()).into(),
            error.and_then(|e| e.hint.clone()).into(),
            counts.partitions.clone().into(),
            counts.partitions_dropped.into(),
            counts.paused_s.into(),
            counts.pause_reasons.clone().into(),
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

/// Keeps the history of run `run_id`'s rule bounded, now that the run's counts are in its lifetime
/// totals (which so stay exact): drops the rule's earlier runs that pg_token_cleanup.log_runs does
/// not keep, and all but the newest pg_token_cleanup.history_per_rule runs of each status. The run
/// itself stays until the next one ends, so that `rule_stats` always shows a rule's last run.
fn keep_bounded(run_id: i64) {
    let log_runs = crate::gucs::log_runs();
    let cap = crate::gucs::history_per_rule();
    if log_runs == crate::gucs::LogRuns::All && cap == 0 {
        return;
    }
    let drop_unkept = match log_runs {
        crate::gucs::LogRuns::All => "false",
        crate::gucs::LogRuns::Nonzero => "r.status = 'succeeded' AND r.rows_deleted = 0",
        crate::gucs::LogRuns::Errors => "r.status IN ('succeeded', 'stopped')",
    };
    Spi::run_with_args(
        &format!(
            "WITH ranked AS ( \
                SELECT h.id, h.status, h.rows_deleted, \
                       pg_catalog.row_number() OVER (PARTITION BY h.status ORDER BY h.id DESC) AS nth \
                  FROM token_cleanup.runs h \
                 WHERE h.rule_id = (SELECT rule_id FROM token_cleanup.runs WHERE id = $1) \
                   AND h.status <> 'running') \
             DELETE FROM token_cleanup.runs d USING ranked r \
              WHERE d.id = r.id AND d.id <> $1 AND (($2 > 0 AND r.nth > $2) OR ({drop_unkept}))"
        ),
        &[run_id.into(), cap.into()],
    )
    .expect("bounding token_cleanup.runs");
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

/// Adds a finished run to its rule's lifetime counters (`token_cleanup.rule_totals`).
fn add_to_totals(run_id: i64) {
    Spi::run_with_args(
        "INSERT INTO token_cleanup.rule_totals AS t (rule_id, rule_name, owner, runs, succeeded, failed, \
                interrupted, stopped, refused, rows_deleted, run_time, longest_run, longest_batch_ms, \
                last_success_at, last_failure_at, consecutive_failures) \
         SELECT h.rule_id, h.rule_name, h.owner, 1, (h.status = 'succeeded')::int, (h.status = 'failed')::int, \
                (h.status = 'interrupted')::int, (h.status = 'stopped')::int, (h.status = 'refused')::int, \
                h.rows_deleted, h.finished_at - h.started_at, h.finished_at - h.started_at, h.longest_batch_ms, \
                CASE WHEN h.status IN ('succeeded', 'stopped') THEN h.finished_at END, \
                CASE WHEN h.status IN ('failed', 'refused') THEN h.finished_at END, \
                (h.status IN ('failed', 'refused'))::int \
           FROM token_cleanup.runs h WHERE h.id = $1 \
         ON CONFLICT (rule_id) DO UPDATE SET \
                rule_name = excluded.rule_name, owner = excluded.owner, runs = t.runs + 1, \
                succeeded = t.succeeded + excluded.succeeded, failed = t.failed + excluded.failed, \
                interrupted = t.interrupted + excluded.interrupted, stopped = t.stopped + excluded.stopped, \
                refused = t.refused + excluded.refused, rows_deleted = t.rows_deleted + excluded.rows_deleted, \
                run_time = t.run_time + excluded.run_time, \
                longest_run = greatest(t.longest_run, excluded.longest_run), \
                longest_batch_ms = greatest(t.longest_batch_ms, excluded.longest_batch_ms), \
                last_success_at = coalesce(excluded.last_success_at, t.last_success_at), \
                last_failure_at = coalesce(excluded.last_failure_at, t.last_failure_at), \
                consecutive_failures = CASE \
                    WHEN excluded.consecutive_failures > 0 THEN t.consecutive_failures + 1 \
                    WHEN excluded.last_success_at IS NOT NULL THEN 0 \
                    ELSE t.consecutive_failures END",
        &[run_id.into()],
    )
    .expect("updating token_cleanup.rule_totals");
}

/// Deletes finished runs older than `retention_seconds`. Returns how many were deleted.
pub fn prune(retention_seconds: i64) -> i64 {
    Spi::get_one_with_args::<i64>(
        "WITH gone AS (DELETE FROM token_cleanup.runs \
          WHERE started_at < now() - make_interval(secs => $1) AND status <> 'running' RETURNING 1) \
         SELECT count(*) FROM gone",
        &[(retention_seconds as f64).into()],
    )
    .expect("pruning token_cleanup.runs")
    .unwrap_or(0)
}

/// Whether another live process is running this rule now (for a clear "already running" error).
pub fn running_elsewhere(rule_id: i64) -> Option<i64> {
    Spi::get_one_with_args::<i64>(
        "SELECT id FROM token_cleanup.runs WHERE rule_id = $1 AND status = 'running' \
            AND pid <> pg_backend_pid() ORDER BY id DESC LIMIT 1",
        &[rule_id.into()],
    )
    .ok()
    .flatten()
}

/// How a run ended: what its runner hands back to whoever asked for the run, and what the runs
/// table holds of it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    /// 0: no run was recorded (a scheduled slot skipped because the rule was busy).
    pub run_id: i64,
    pub status: String,
    pub rows_deleted: i64,
    pub batches: i32,
    /// As the runs table has them (PostgreSQL timestamps); `finished_at` is 0 for a run still going.
    pub started_at: pg_sys::TimestampTz,
    pub finished_at: pg_sys::TimestampTz,
    /// The error of a run that neither succeeded nor stopped.
    pub error: Option<Error>,
}

impl RunResult {
    /// A scheduled slot that recorded no run.
    pub fn skipped() -> RunResult {
        RunResult {
            run_id: 0,
            status: String::new(),
            rows_deleted: 0,
            batches: 0,
            started_at: 0,
            finished_at: 0,
            error: None,
        }
    }

    pub fn failed(&self) -> bool {
        self.status == "failed"
    }
}

/// Run `run_id` as recorded (for a run whose runner ended without handing its result back);
/// `None`: there is no such run.
pub fn recorded(run_id: i64) -> Option<RunResult> {
    // update() rather than select(): a read-write SPI call takes a fresh snapshot, which sees the
    // runner's commits (a read-only one would reuse the calling statement's snapshot).
    Spi::connect_mut(|client| {
        let rows = client.update(
            "SELECT status, rows_deleted, batches, started_at, finished_at, error, sqlstate, error_detail, error_hint \
               FROM token_cleanup.runs WHERE id = $1",
            Some(1),
            &[run_id.into()],
        )?;
        let Some(r) = rows.into_iter().next() else {
            return Ok(None);
        };
        let status = r.get::<String>(1)?.unwrap_or_default();
        let error = (status != "succeeded" && status != "stopped").then(|| {
            Ok::<_, pgrx::spi::Error>(Error::from_recorded(
                r.get::<String>(7)?.as_deref(),
                r.get::<String>(6)?.unwrap_or_else(|| "no error recorded".into()),
                r.get::<String>(8)?,
                r.get::<String>(9)?,
            ))
        });
        let timestamp = |t: Option<TimestampWithTimeZone>| t.map_or(0, Into::into);
        Ok::<_, pgrx::spi::Error>(Some(RunResult {
            run_id,
            status,
            rows_deleted: r.get::<i64>(2)?.unwrap_or(0),
            batches: r.get::<i32>(3)?.unwrap_or(0),
            started_at: timestamp(r.get::<TimestampWithTimeZone>(4)?),
            finished_at: timestamp(r.get::<TimestampWithTimeZone>(5)?),
            error: error.transpose()?,
        }))
    })
    .expect("reading token_cleanup.runs")
}

extern "C-unwind" {
    // commands/sequence.h, not in pgrx's bindings; called through `guarded` (it raises ERRORs).
    fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// A new run id, for a caller that names its run before a runner records it (`run()`).
pub fn allocate_run_id() -> i64 {
    let seq = crate::target::lookup_table("token_cleanup.runs_id_seq")
        .ok()
        .flatten()
        .expect("token_cleanup.runs_id_seq exists");
    // SAFETY: nextval on our own sequence; the caller need not hold USAGE on it.
    unsafe { crate::errors::guarded(|| nextval_internal(seq.oid, false)) }
}

/// Which of `ids` are runs going on that the caller may see (row-level security decides).
pub fn visible_running(ids: Vec<i64>) -> Vec<i64> {
    if ids.is_empty() {
        return ids;
    }
    Spi::connect(|client| {
        client
            .select(
                "SELECT id FROM token_cleanup.runs WHERE id = ANY($1) AND status = 'running'",
                None,
                &[ids.into()],
            )?
            .map(|r| r.get::<i64>(1).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()
    })
    .expect("reading token_cleanup.runs")
}
