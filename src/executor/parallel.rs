//! One run's table walk shared by several runners (a rule's `parallel_workers`): the run's own
//! runner, the **leader**, cuts the table's pages into as many slices, starts a **helper** runner
//! for each slice but its own, walks its slice, then waits for the helpers.
//!
//! Every guarantee of a run holds per batch, so it holds in every runner: each batch re-checks the
//! condition and is capped at batch_size rows, skips locked rows, archives its rows, passes the
//! pacing gate and checks the binding (rule version, table OID) in its own transaction. The run has
//! one claim and one record, both the leader's; the blast radius was checked before any runner
//! started. The rates a run is paced by (rows and WAL per second) are divided among the runners
//! asked for; replica lag and waiters are the server's, watched by each.
//!
//! Helpers take only free slots of the worker budget, when nobody waits for one, and give theirs
//! back between batches as soon as someone does: a slice a helper could not start, or left, is
//! walked by the leader itself (from the page where the helper stopped), so a run proceeds with
//! whatever runners it gets. A helper stops when the leader goes; the leader, when it stops
//! (SIGTERM, max_run_duration, a failure in any runner), stops its helpers and waits for them, so
//! no helper outlives the run's record.

use super::tally::Tally;
use super::{walk_range, Plan};
use crate::errors::Error;
use crate::history::Outcome;
use crate::rules::Rule;
use pgrx::pg_sys;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Fewest pages a slice holds (32 MB): a runner costs a worker start and a slot, worth it only for
/// a walk of some seconds.
pub const MIN_SLICE_PAGES: u32 = 4096;
/// How often a stopping leader signals helpers that have not ended yet.
const RESIGNAL: Duration = Duration::from_secs(1);

/// What a helper is asked to do: walk `blocks` of the rule's table for run `run_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceRequest {
    pub rule: Rule,
    pub run_id: i64,
    /// Whether the run is scheduled (it then also ends when the rule is disabled).
    pub scheduled: bool,
    /// The table's OID as the leader bound it.
    pub table: u32,
    pub blocks: Range<u32>,
    /// Pages of the first batch, as the leader's plan estimated.
    pub first_pages: u64,
    pub leader_pid: i32,
    /// What is left of the run's max_run_duration when the helper is started.
    pub time_left_ms: Option<u64>,
    /// Runners the run asked for (the pacing rates are divided among them).
    pub runners: u32,
}

/// What a helper did, handed back to the leader.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SliceReport {
    pub rows_deleted: i64,
    pub batches: i32,
    pub batches_redone: i32,
    pub longest_batch_ms: u64,
    pub scan_ms: u64,
    pub paused_ms: u64,
    pub pause_reasons: Option<String>,
    /// The first page of its slice it did not walk to the end (it stopped or gave its slot up);
    /// the leader walks from there.
    pub rest_from: Option<u32>,
    /// An error that ends the run (the condition, a trigger, the table swapped).
    pub failed: Option<Error>,
}

/// Where a helper is.
pub enum HelperState {
    Working,
    /// Ended, with its report (`None`: it ended without one, e.g. killed).
    Ended(Option<SliceReport>),
}

/// A started helper, as the leader sees it (implemented by the worker layer).
pub trait Helper {
    fn state(&self) -> HelperState;
    /// Asks it to stop between batches (SIGTERM).
    fn stop(&self);
}

/// Whether a run of `rule` walks its table with helpers: a rule asking for more than one runner,
/// a plain (unpartitioned) table, and at least two slices' worth of pages.
pub(super) fn worth_it(rule: &Rule, plans: usize, plan: &Plan, end_block: u32) -> bool {
    plans == 1 && !plan.partition && runners_for(rule.effective_parallel_workers(), end_block) > 1
}

/// Runners for a walk of `pages` pages when `asked` are allowed: no slice under
/// [`MIN_SLICE_PAGES`].
pub fn runners_for(asked: u32, pages: u32) -> u32 {
    asked.min(pages / MIN_SLICE_PAGES).max(1)
}

/// `0..pages` cut into `runners` contiguous slices of near-equal size, in order.
pub fn slices(pages: u32, runners: u32) -> Vec<Range<u32>> {
    let runners = runners.max(1);
    (0..runners)
        .map(|i| {
            let cut = |i: u32| (u64::from(pages) * u64::from(i) / u64::from(runners)) as u32;
            cut(i)..cut(i + 1)
        })
        .filter(|slice| !slice.is_empty())
        .collect()
}

/// A helper the leader started, and what it reported.
struct Started {
    helper: Box<dyn Helper>,
    blocks: Range<u32>,
    report: Option<SliceReport>,
    ended: bool,
}

/// The leader's walk of `0..end_block` with helpers.
pub(super) fn walk(
    rule: &Rule,
    plan: &Plan,
    end_block: u32,
    first_pages: u64,
    tally: &mut Tally,
) -> Result<Outcome, Outcome> {
    let runners = runners_for(rule.effective_parallel_workers(), end_block);
    let mut slices = slices(end_block, runners).into_iter();
    let mut todo: VecDeque<Range<u32>> = slices.next().into_iter().collect();
    let mut started = Vec::new();
    for blocks in slices {
        let request = SliceRequest {
            rule: rule.clone(),
            run_id: tally.run_id,
            scheduled: tally.binding.scheduled,
            table: u32::from(plan.table.oid),
            blocks: blocks.clone(),
            first_pages,
            // SAFETY: reading this process's pid.
            leader_pid: unsafe { pg_sys::MyProcPid },
            time_left_ms: tally
                .max_duration
                .map(|max| max.saturating_sub(tally.started.elapsed()).as_millis() as u64),
            runners,
        };
        match tally.control.start_helper(&request) {
            Some(helper) => started.push(Started {
                helper,
                blocks,
                report: None,
                ended: false,
            }),
            None => todo.push_back(blocks),
        }
    }
    tally.stats.workers = Some(1 + started.len() as i32);
    tally.gate.share_with(runners);
    let result = lead(plan, first_pages, tally, &mut todo, &mut started);
    if result.is_err() {
        stop_all(&mut started);
    }
    for report in started.iter().filter_map(|s| s.report.as_ref()) {
        add_to(tally, report);
    }
    result.map(|()| Outcome::Succeeded)
}

/// Walks the leader's slices, then waits for the helpers, walking whatever they leave.
fn lead(
    plan: &Plan,
    first_pages: u64,
    tally: &mut Tally,
    todo: &mut VecDeque<Range<u32>>,
    started: &mut [Started],
) -> Result<(), Outcome> {
    loop {
        if let Some(blocks) = todo.pop_front() {
            let mut look = || look_at(started, todo);
            walk_range(plan, blocks, first_pages, tally, &mut look).map_err(|(ended, _)| ended)?;
            continue;
        }
        look_at(started, todo)?;
        if !todo.is_empty() {
            continue;
        }
        if started.iter().all(|s| s.ended) {
            return Ok(());
        }
        tally.check_stop()?;
        nap(Duration::from_millis(100));
    }
}

/// Collects the reports of helpers that ended: a failure ends the run; pages a helper left are
/// queued for the leader (all of its slice when it ended without a report).
fn look_at(started: &mut [Started], todo: &mut VecDeque<Range<u32>>) -> Result<(), Outcome> {
    for s in started.iter_mut().filter(|s| !s.ended) {
        let HelperState::Ended(report) = s.helper.state() else {
            continue;
        };
        s.ended = true;
        let rest_from = match &report {
            Some(report) => report.rest_from,
            None => Some(s.blocks.start),
        };
        if let Some(failed) = report.as_ref().and_then(|r| r.failed.clone()) {
            s.report = report;
            return Err(Outcome::Failed(failed));
        }
        if let Some(from) = rest_from.filter(|from| *from < s.blocks.end) {
            todo.push_back(from.max(s.blocks.start)..s.blocks.end);
        }
        s.report = report;
    }
    Ok(())
}

/// Stops every helper still working and waits for each to end (signalled again every
/// [`RESIGNAL`]): none may outlive the run's record.
fn stop_all(started: &mut [Started]) {
    let mut signalled: Option<Instant> = None;
    loop {
        let mut working = false;
        for s in started.iter_mut().filter(|s| !s.ended) {
            match s.helper.state() {
                HelperState::Ended(report) => {
                    s.ended = true;
                    s.report = report;
                }
                HelperState::Working => working = true,
            }
        }
        if !working {
            return;
        }
        if signalled.is_none_or(|at| at.elapsed() >= RESIGNAL) {
            for s in started.iter().filter(|s| !s.ended) {
                s.helper.stop();
            }
            signalled = Some(Instant::now());
        }
        nap(Duration::from_millis(20));
    }
}

/// Adds what a helper did to the run's totals.
fn add_to(tally: &mut Tally, report: &SliceReport) {
    let stats = &mut tally.stats;
    stats.rows_deleted += report.rows_deleted;
    stats.batches += report.batches;
    stats.batches_redone += report.batches_redone;
    stats.longest_batch_ms = stats
        .longest_batch_ms
        .max(u128::from(report.longest_batch_ms));
    stats.scan_ms += u128::from(report.scan_ms);
    tally.helpers_paused += Duration::from_millis(report.paused_ms);
    tally.helpers_reasons = merge_reasons(
        tally.helpers_reasons.take(),
        report.pause_reasons.as_deref(),
    );
}

/// Two runners' `pause_reasons` (seconds per reason; the worst replica lag seen) as one.
pub fn merge_reasons(a: Option<String>, b: Option<&str>) -> Option<String> {
    let parse = |text: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).unwrap_or_default()
    };
    let Some(b) = b.map(parse) else {
        return a;
    };
    let mut merged = a.as_deref().map(parse).unwrap_or_default();
    for (key, value) in b {
        let value = value.as_f64().unwrap_or(0.0);
        let mine = merged.get(&key).and_then(|v| v.as_f64()).unwrap_or(0.0);
        let combined = if key.starts_with("worst_") {
            mine.max(value)
        } else {
            mine + value
        };
        let combined = if key.ends_with("_bytes") {
            serde_json::json!(combined as u64)
        } else {
            serde_json::json!((combined * 1000.0).round() / 1000.0)
        };
        merged.insert(key, combined);
    }
    Some(serde_json::Value::Object(merged).to_string())
}

/// Waits up to `timeout` on this process's latch (a helper's hand-back sets it).
fn nap(timeout: Duration) {
    // SAFETY: waits on this process's own latch and resets it.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// A helper's walk of its slice, in a runner connected to the run's database. Never fails: what
/// ended it early is in the report.
pub fn walk_slice(request: &SliceRequest, control: &dyn super::RunControl) -> SliceReport {
    use pgrx::bgworkers::BackgroundWorker;
    let started = Instant::now();
    let rule = &request.rule;
    let table = pg_sys::Oid::from(request.table);
    let binding = BackgroundWorker::transaction(|| {
        super::binding::Binding::new(rule, request.scheduled, table)
    });
    let mut report = SliceReport {
        rest_from: Some(request.blocks.start),
        ..SliceReport::default()
    };
    let plans = BackgroundWorker::transaction(|| super::prepare::prepare(rule, table));
    let plan = match plans {
        Ok(mut plans) if plans.len() == 1 && plans[0].table.oid == table => plans.remove(0),
        Ok(_) => {
            report.failed = Some(Error::new(
                pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "table {} of rule \"{}\" changed while the run started its helpers",
                    rule.table_name, rule.name
                ),
            ));
            return report;
        }
        Err(_) if control.stop_requested() => return report,
        Err(why) => {
            report.failed = Some(why);
            return report;
        }
    };
    let time_left = request.time_left_ms.map(Duration::from_millis);
    let mut tally = Tally::live(request.run_id, rule, &binding, control, time_left);
    // The leader records the run; this slice's progress goes into the leader's totals at the end.
    tally.records_progress = false;
    tally.gate.share_with(request.runners);
    tally.stats.scan_ms = started.elapsed().as_millis();
    let walked = walk_range(
        &plan,
        request.blocks.clone(),
        request.first_pages,
        &mut tally,
        &mut || Ok(()),
    );
    report.rest_from = match walked {
        Ok(()) => None,
        Err((Outcome::Failed(why), _)) => {
            report.failed = Some(why);
            None
        }
        // Stopped (SIGTERM, the leader gone, a waiter for its slot, max_run_duration): the
        // leader walks the rest, or ends the run for its own reason.
        Err((_, from)) => Some(from),
    };
    let stats = &tally.stats;
    report.rows_deleted = stats.rows_deleted;
    report.batches = stats.batches;
    report.batches_redone = stats.batches_redone;
    report.longest_batch_ms = stats.longest_batch_ms as u64;
    report.scan_ms = stats.scan_ms as u64;
    report.paused_ms = tally.gate.paused.as_millis() as u64;
    report.pause_reasons = tally.gate.reasons_json();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_table_once_in_order() {
        for (pages, runners) in [(10_000u32, 2u32), (10_001, 3), (4096, 1), (100_003, 16)] {
            let cut = slices(pages, runners);
            assert_eq!(cut.len(), runners as usize);
            assert_eq!(cut.first().unwrap().start, 0);
            assert_eq!(cut.last().unwrap().end, pages);
            for pair in cut.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            let (min, max) = cut.iter().fold((u32::MAX, 0), |(lo, hi), s| {
                (lo.min(s.len() as u32), hi.max(s.len() as u32))
            });
            assert!(max - min <= 1, "{cut:?}");
        }
    }

    #[test]
    fn small_tables_get_one_runner() {
        assert_eq!(runners_for(4, 0), 1);
        assert_eq!(runners_for(4, MIN_SLICE_PAGES * 2 - 1), 1);
        assert_eq!(runners_for(4, MIN_SLICE_PAGES * 2), 2);
        assert_eq!(runners_for(2, MIN_SLICE_PAGES * 100), 2);
        assert_eq!(runners_for(1, MIN_SLICE_PAGES * 100), 1);
    }

    #[test]
    fn pause_reasons_add_up_and_keep_the_worst_lag() {
        let merged = merge_reasons(
            Some(r#"{"wal_rate": 1.5, "worst_replica_lag": 2.0, "worst_replica_lag_bytes": 100}"#.into()),
            Some(r#"{"wal_rate": 0.25, "waiters": 1.0, "worst_replica_lag": 3.5, "worst_replica_lag_bytes": 50}"#),
        )
        .unwrap();
        let merged: serde_json::Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(
            merged,
            serde_json::json!({"wal_rate": 1.75, "waiters": 1.0, "worst_replica_lag": 3.5, "worst_replica_lag_bytes": 100})
        );
        assert_eq!(merge_reasons(None, None), None);
        assert_eq!(
            merge_reasons(Some("{}".into()), None).as_deref(),
            Some("{}")
        );
    }
}
