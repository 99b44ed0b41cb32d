//! What outlives a run's row: its rule's lifetime counters (`token_cleanup.rule_totals`), and the
//! bounds on the history (`pg_token_cleanup.log_runs`, `history_per_rule`, `history_retention`).

use pgrx::prelude::*;

/// Keeps the history of run `run_id`'s rule bounded, now that the run's counts are in its lifetime
/// totals (which so stay exact): drops the rule's earlier runs that pg_token_cleanup.log_runs does
/// not keep, and all but the newest pg_token_cleanup.history_per_rule runs of each status. The run
/// itself stays until the next one ends, so that `rule_stats` always shows a rule's last run.
pub(super) fn keep_bounded(run_id: i64) {
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

/// Adds a finished run to its rule's lifetime counters (`token_cleanup.rule_totals`), and its
/// backlog: the rows that matched when it started, counted by a run that succeeded (it deleted
/// them all), else the planner's estimate (which reads high on a table full of dead rows that
/// autovacuum has not reached yet).
pub(super) fn add_to_totals(run_id: i64) {
    Spi::run_with_args(
        "INSERT INTO token_cleanup.rule_totals AS t (rule_id, rule_name, owner, runs, succeeded, failed, \
                interrupted, stopped, refused, rows_deleted, run_time, longest_run, longest_batch_ms, \
                last_success_at, last_failure_at, consecutive_failures, batches, pause_seconds, \
                backlog_rows, backlog_at) \
         SELECT h.rule_id, h.rule_name, h.owner, 1, (h.status = 'succeeded')::int, (h.status = 'failed')::int, \
                (h.status = 'interrupted')::int, (h.status = 'stopped')::int, (h.status = 'refused')::int, \
                h.rows_deleted, h.finished_at - h.started_at, h.finished_at - h.started_at, h.longest_batch_ms, \
                CASE WHEN h.status IN ('succeeded', 'stopped') THEN h.finished_at END, \
                CASE WHEN h.status IN ('failed', 'refused') THEN h.finished_at END, \
                (h.status IN ('failed', 'refused'))::int, h.batches, coalesce(h.pause_reasons, '{}'), \
                CASE WHEN h.status = 'succeeded' THEN h.rows_deleted ELSE h.estimated_rows END, \
                CASE WHEN h.status = 'succeeded' OR h.estimated_rows IS NOT NULL THEN h.started_at END \
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
                    ELSE t.consecutive_failures END, \
                batches = t.batches + excluded.batches, \
                pause_seconds = (SELECT coalesce(pg_catalog.jsonb_object_agg(k, \
                                        coalesce((t.pause_seconds ->> k)::float8, 0) \
                                      + coalesce((excluded.pause_seconds ->> k)::float8, 0)), '{}') \
                                   FROM (SELECT pg_catalog.jsonb_object_keys(t.pause_seconds) \
                                         UNION SELECT pg_catalog.jsonb_object_keys(excluded.pause_seconds)) r(k)), \
                backlog_rows = coalesce(excluded.backlog_rows, t.backlog_rows), \
                backlog_at = coalesce(excluded.backlog_at, t.backlog_at)",
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

/// Rows rule `rule_id` deleted in its lifetime, and the seconds its runs took; `None` where it has
/// no counters yet (the caller's row-level security applies).
pub fn lifetime_rate(rule_id: i64) -> Option<(f64, f64)> {
    let (deleted, seconds) = Spi::get_two_with_args::<f64, f64>(
        "SELECT rows_deleted::float8, extract(epoch FROM run_time)::float8 \
           FROM token_cleanup.rule_totals WHERE rule_id = $1",
        &[rule_id.into()],
    )
    .ok()?;
    Some((deleted?, seconds?))
}
