//! One run of one rule, inside a background worker: batches of deletes, each its own transaction, as
//! the rule's owner, with identifiers quoted, timeouts armed, and a stop check between batches.
//!
//! Why not the naive loop `DELETE … WHERE ctid = ANY(ARRAY(SELECT ctid … LIMIT n))`: every batch
//! rescans the table from its start and walks over the rows earlier batches deleted, so a run costs
//! O(rows deleted × table size). Here a run reads the table (or its index) once: it either walks the
//! table in page ranges or collects matching ctids through an index ([`method`] says which and
//! why), and [`sizer`] sizes each batch from what the previous one measured. Each batch re-checks
//! the condition, so a row that changed since it was found, or a slot reused by a new row, is never
//! deleted unless it matches now. An index run whose backlog exceeds [`COLLECT_LIMIT`] collects
//! again after deleting that many.
//!
//! Rows locked by other sessions are skipped (`FOR UPDATE SKIP LOCKED`, tried only when a batch meets
//! a lock, see [`batch::delete_batch`]) when the owner holds UPDATE on the table (PostgreSQL requires it for
//! row locks); otherwise a batch waits for them, bounded by the rule's lock_timeout.

mod batch;
mod batch_cap;
pub mod binding;
mod bitmap;
mod blast_radius;
mod method;
mod on_shard;
pub mod pacing;
pub mod parallel;
mod partitions;
mod prepare;
mod range_delete;
mod shards;
mod sizer;
mod statements;
mod tally;

use crate::errors::Error;
use crate::history::{self, Outcome};
use crate::owner::{self, Limits};
use crate::rules::Rule;
use crate::target::ResolvedTable;
use batch::{at, block_number, collect, supported_wal_compression, tid};
use method::Method;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use sizer::BatchSizer;
use statements::{Archive, BatchSql};
use std::time::Instant;
use tally::{still_bound, Tally};

/// Most ctids collected by one scan (6 bytes each in PostgreSQL, 8 here: 8 MB).
pub const COLLECT_LIMIT: usize = 1_000_000;
/// How long a batch's plain DELETE waits for a row lock before the batch is redone with SKIP LOCKED.
const OPTIMISTIC_LOCK_WAIT_MS: i32 = 1;
/// A long run's row in token_cleanup.runs gets its progress at most this often (rewriting it after
/// every batch left a dead row version per batch); between writes, progress lives in this process
/// (pg_stat_activity shows it) and is recorded if the process exits mid-run.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How a run ended and what it did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    pub stats: history::RunStats,
}

impl RunReport {
    /// A run that ended before its executor started (refused, or its table stayed locked).
    pub fn ended_before_work(outcome: Outcome) -> RunReport {
        RunReport {
            outcome,
            stats: history::RunStats::default(),
        }
    }
}

/// What the executor needs to know about the table at the start of a run.
struct Plan {
    table: ResolvedTable,
    /// `table` is a leaf partition of the rule's (partitioned) table.
    partition: bool,
    owner: pg_sys::Oid,
    limits: Limits,
    batch_size: usize,
    /// `wal_compression` for the batches, when pg_token_cleanup.wal_compression names a method this
    /// server supports; `None` keeps the server's setting.
    wal_compression: Option<&'static str>,
    method: Method,
    /// The planner's estimate of the matching rows.
    estimated_rows: f64,
    /// Where each batch moves its rows, if anywhere.
    archive: Option<Archive>,
    /// A batch's DELETE, re-checking the condition (built once per run, for the run's method).
    delete_sql: BatchSql,
    /// The same with `FOR UPDATE SKIP LOCKED`; `None` when the owner may not lock rows.
    skip_locked_sql: Option<BatchSql>,
    /// A sharded Citus table's shards (method [`Method::Shards`]); empty otherwise.
    shards: Vec<shards::ShardPlan>,
}

/// The rows one batch covers.
enum Batch<'a> {
    /// Collected ctids (index method, collected through SQL: each the row's version then).
    Ctids(&'a [pg_sys::ItemPointerData]),
    /// Index entries (index method, from the index alone, see [`bitmap`]): each the root of a HOT
    /// chain, resolved to its visible row in the batch's transaction.
    IndexEntries(&'a [pg_sys::ItemPointerData]),
    /// The rows from ctid `from` up to (not including) ctid `to`, at most `limit` of them (table
    /// walk). The DELETE returns the ctids it deleted, and stops after `limit`.
    Range {
        from: pg_sys::ItemPointerData,
        to: pg_sys::ItemPointerData,
        limit: usize,
    },
}

/// What one batch did.
struct Deleted {
    rows: i64,
    /// Whether it met a locked row and was redone with SKIP LOCKED.
    redone: bool,
    /// Where the next batch resumes when this one's limit cut its range short (table walk only).
    resume: Option<batch_cap::At>,
}

/// Whether another session holds a lock on `table` that a DELETE would wait for. A run asks before
/// it starts, and waits (up to its lock_timeout) without holding a lock itself.
pub fn table_locked_by_others(table: pg_sys::Oid) -> bool {
    // SAFETY: a conditional lock in the current (short) transaction, released at its end.
    !unsafe {
        pg_sys::ConditionalLockRelationOid(table, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE)
    }
}

/// What the worker performing a run gives it: whether to stop and why (polled between batches and
/// after an error), and where the progress after each committed batch goes.
pub trait RunControl {
    fn stop_requested(&self) -> bool;
    /// What the run's record says when it stops for [`RunControl::stop_requested`].
    fn why_stopped(&self) -> Error;
    fn progress(&self, rows_deleted: i64, batches: i32);
    /// Starts a helper runner for one slice of a table walk (see [`parallel`]); `None` when no
    /// worker slot is free now (the run then walks that slice itself).
    fn start_helper(&self, _slice: &parallel::SliceRequest) -> Option<Box<dyn parallel::Helper>> {
        None
    }
}

/// Runs `rule` as run `run_id` (already committed as `running`), recording progress, stopping
/// between batches when `control` says so; returns what it did, for the caller to record. Must be
/// called outside a transaction; opens its own.
pub fn execute(
    rule: &Rule,
    run_id: i64,
    binding: &binding::Binding,
    control: &dyn RunControl,
) -> RunReport {
    let mut tally = Tally::live(run_id, rule, binding, control, rule.max_run_duration());
    let started = tally.started;
    let outcome = run(rule, &mut tally).unwrap_or_else(|stopped| stopped);
    let mut stats = std::mem::take(&mut tally.stats);
    stats.elapsed_ms = started.elapsed().as_millis();
    stats.paused = tally.gate.paused + tally.helpers_paused;
    stats.pause_reasons =
        parallel::merge_reasons(tally.gate.reasons_json(), tally.helpers_reasons.as_deref());
    RunReport { outcome, stats }
}

/// The run itself; `Err` carries an outcome that ended it early (failure or stop).
fn run(rule: &Rule, tally: &mut Tally) -> Result<Outcome, Outcome> {
    let planning = Instant::now();
    let plans = BackgroundWorker::transaction(|| prepare::prepare(rule, tally.binding.table));
    tally.stats.scan_ms += planning.elapsed().as_millis();
    let plans = match plans {
        Ok(plans) => plans,
        Err(_) if tally.control.stop_requested() => return Err(tally.interrupted()),
        Err(why) => return Err(Outcome::Failed(why)),
    };
    tally.stats.method = plans.first().map(|p| p.method.name());
    tally.stats.workers = Some(1);
    tally.stats.estimated_rows =
        Some(plans.iter().map(|p| p.estimated_rows).sum::<f64>().round() as i64);
    let checked = BackgroundWorker::transaction(|| blast_radius::check(rule, &plans));
    if let Err(refused) = checked {
        return Err(Outcome::Refused(refused));
    }
    for plan in &plans {
        let before = tally.stats.rows_deleted;
        if plan.partition {
            tally.check_stop()?;
            match partitions::remove_if_all_match(rule, plan, tally.binding) {
                Ok(Some((rows, action))) => {
                    tally.stats.rows_deleted += rows;
                    tally.stats.partitions_dropped += 1;
                    tally
                        .stats
                        .partitions
                        .push((plan.table.qualified_name.clone(), rows, action));
                    continue;
                }
                Ok(None) => {}
                Err(ended) => return Err(ended),
            }
        }
        match plan.method {
            Method::TableWalk {
                end_block,
                first_pages,
            } if parallel::worth_it(rule, plans.len(), plan, end_block) => {
                parallel::walk(rule, plan, end_block, first_pages, tally)?
            }
            Method::TableWalk {
                end_block,
                first_pages,
            } => walk_table(plan, end_block, first_pages, tally)?,
            Method::Index => delete_through_index(rule, plan, tally)?,
            Method::Shards => shards::purge(rule, plan, tally)?,
        };
        if plan.partition {
            let rows = tally.stats.rows_deleted - before;
            tally
                .stats
                .partitions
                .push((plan.table.qualified_name.clone(), rows, "deleted"));
        }
    }
    // A SIGTERM that came during the last batch (whose error was then not a cancel) still ends the
    // run as interrupted: the scan that would have said nothing is left did not happen.
    if tally.control.stop_requested() {
        return Err(tally.interrupted());
    }
    Ok(Outcome::Succeeded)
}

/// Walks pages `0..end_block` in ranges sized by a [`BatchSizer`], deleting each range's matching
/// rows in one batch. A batch stops at the rule's batch_size rows (a hard limit, even where the
/// estimate of rows per page was wrong); the next one resumes right after the last row it deleted.
fn walk_table(
    plan: &Plan,
    end_block: u32,
    first_pages: u64,
    tally: &mut Tally,
) -> Result<Outcome, Outcome> {
    walk_range(plan, 0..end_block, first_pages, tally, &mut || Ok(()))
        .map(|()| Outcome::Succeeded)
        .map_err(|(ended, _)| ended)
}

/// Walks pages `blocks` as [`walk_table`] does, calling `between` before each batch (a parallel
/// run's leader looks at its helpers there). `Err` carries what ended the walk and the first page
/// not walked to its end (walking it again deletes nothing twice: every batch re-checks the
/// condition).
fn walk_range(
    plan: &Plan,
    blocks: std::ops::Range<u32>,
    first_pages: u64,
    tally: &mut Tally,
    between: &mut dyn FnMut() -> Result<(), Outcome>,
) -> Result<(), (Outcome, u32)> {
    let end_block = blocks.end;
    let pages = u64::from(end_block.saturating_sub(blocks.start));
    let mut sizer = BatchSizer::new(plan.batch_size, first_pages.min(pages), pages);
    let mut from = tid(blocks.start, 0);
    while block_number(&from) < end_block {
        let start_block = block_number(&from);
        between().map_err(|ended| (ended, start_block))?;
        let units = tally.gate.batch_units(sizer.units());
        let to_block = (u64::from(start_block) + units).min(u64::from(end_block)) as u32;
        let (deleted, ms) = tally
            .batch(
                plan,
                Batch::Range {
                    from,
                    to: tid(to_block, 0),
                    limit: plan.batch_size,
                },
            )
            .map_err(|ended| (ended, start_block))?;
        from = match deleted.resume {
            // Never behind where this batch began (only a condition that calls within_batch() itself
            // could make the cap refuse the range's first row): a run always moves on.
            Some(resume) => {
                let (block, offset) = resume.max((start_block, from.ip_posid + 1));
                tid(block, offset)
            }
            None => tid(to_block, 0),
        };
        let pages_done = (block_number(&from) - start_block).max(1);
        tally.gate.batch_done(u64::from(pages_done));
        sizer.observe(u64::from(pages_done), deleted.rows, ms);
    }
    Ok(())
}

/// Collects matching ctids through the planner's index (up to [`COLLECT_LIMIT`] at a time) and
/// deletes them in batches sized by a [`BatchSizer`] (never more than the rule's batch_size).
fn delete_through_index(rule: &Rule, plan: &Plan, tally: &mut Tally) -> Result<Outcome, Outcome> {
    loop {
        tally.check_stop()?;
        let scan_started = Instant::now();
        let binding = tally.binding;
        let collected = BackgroundWorker::transaction(|| {
            still_bound(plan, binding)?;
            Ok(from_index_or_scan(rule, plan))
        });
        tally.stats.scan_ms += scan_started.elapsed().as_millis();
        let (candidates, index_entries) = match collected {
            Err(stale) => return Err(stale),
            Ok(Ok(c)) => c,
            Ok(Err(_)) if tally.control.stop_requested() => return Err(tally.interrupted()),
            Ok(Err(e)) => return Err(Outcome::Failed(e.context("finding rows to delete"))),
        };
        let full_scan = candidates.len() >= COLLECT_LIMIT;
        let mut sizer = BatchSizer::new(
            plan.batch_size,
            plan.batch_size as u64,
            plan.batch_size as u64,
        );
        let mut rest = candidates.as_slice();
        let mut deleted_this_round = 0;
        while !rest.is_empty() {
            let units = tally.gate.batch_units(sizer.units());
            let (chunk, tail) = rest.split_at((units as usize).min(rest.len()));
            let batch = if index_entries {
                Batch::IndexEntries(chunk)
            } else {
                Batch::Ctids(chunk)
            };
            let (deleted, ms) = tally.batch(plan, batch)?;
            tally.gate.batch_done(chunk.len() as u64);
            sizer.observe(chunk.len() as u64, deleted.rows, ms);
            deleted_this_round += deleted.rows;
            rest = tail;
        }
        // A short scan saw every matching row; a full one may have left some for the next scan,
        // unless nothing could be deleted (all locked), which would loop for ever.
        if !full_scan || deleted_this_round == 0 {
            return Ok(Outcome::Succeeded);
        }
    }
}

/// The candidates of an index run: from the index alone when the planner's plan is a bitmap scan
/// (see [`bitmap`]), else through SQL (which reads the heap to check them).
/// `true` with candidates from the index.
fn from_index_or_scan(
    rule: &Rule,
    plan: &Plan,
) -> Result<(Vec<pg_sys::ItemPointerData>, bool), Error> {
    match bitmap::collect_from_index(plan, &rule.condition, COLLECT_LIMIT - 1)? {
        Some(candidates) => Ok((candidates, true)),
        None => collect(rule, plan).map(|candidates| (candidates, false)),
    }
}

/// What this worker is doing, in `pg_stat_activity.query` (visible to superusers, the members of
/// pg_read_all_stats, and the worker's role).
pub fn report_activity(what: &str) {
    let what = std::ffi::CString::new(what.replace('\0', "")).expect("no NUL");
    // SAFETY: copies the text into this backend's status entry.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, what.as_ptr()) };
}

fn owner_statement<R>(plan: &Plan, limits: Limits, f: impl FnOnce() -> R) -> Result<R, Error> {
    owner::as_role(plan.owner, limits, f)
}

pub(crate) use prepare::planned_scan;
pub(crate) use shards::{plan as shard_plans, ShardPlan};
