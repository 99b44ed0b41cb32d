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
//! a lock, see [`delete_batch`]) when the owner holds UPDATE on the table (PostgreSQL requires it for
//! row locks); otherwise a batch waits for them, bounded by the rule's lock_timeout.

mod batch_cap;
pub mod binding;
mod blast_radius;
mod method;
pub mod pacing;
mod partitions;
mod prepare;
mod range_delete;
mod sizer;
mod statements;

use crate::catalog::Rule;
use crate::errors::Error;
use crate::history::{self, Outcome};
use crate::owner::{self, Limits};
use crate::target::ResolvedTable;
use method::Method;
use pgrx::array::RawArray;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use sizer::BatchSizer;
use statements::{Archive, BatchSql};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

/// Most ctids collected by one scan (6 bytes each in PostgreSQL, 8 here: 8 MB).
pub const COLLECT_LIMIT: usize = 1_000_000;
/// How long a batch's plain DELETE waits for a row lock before the batch is redone with SKIP LOCKED.
const OPTIMISTIC_LOCK_WAIT_MS: i32 = 1;
/// A long run's row in token_cleanup.runs gets its progress at most this often (rewriting it after
/// every batch left a dead row version per batch); between writes, progress lives in this process
/// (pg_stat_activity shows it) and is recorded if the process exits mid-run.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    pub rows_deleted: i64,
    pub batches: i32,
    pub elapsed_ms: u128,
    /// Of which spent finding candidate rows apart from deleting them (planning, index collection).
    pub scan_ms: u128,
    /// The longest batch, from its transaction's start to its commit: how long it held row locks.
    pub longest_batch_ms: u128,
    /// How the run found its rows ([`Method::name`]); `None` when it failed before deciding.
    pub method: Option<&'static str>,
    /// Batches that met a row locked by another session and were redone skipping locked rows.
    pub batches_redone: i32,
    /// Per leaf partition of a partitioned table: its name, rows, and what was done.
    pub partitions: Vec<(String, i64, &'static str)>,
    pub partitions_dropped: i32,
    /// Time spent paused by pacing (see [`pacing`]), and per reason as JSON.
    pub paused: Duration,
    pub pause_reasons: Option<String>,
}

impl RunReport {
    pub fn counts(&self) -> history::Counts {
        history::Counts {
            rows_deleted: self.rows_deleted,
            batches: self.batches,
            longest_batch_ms: self.longest_batch_ms.min(i32::MAX as u128) as i32,
            method: self.method,
            partitions: (!self.partitions.is_empty()).then(|| {
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
            }),
            partitions_dropped: self.partitions_dropped,
            paused_s: self.paused.as_secs_f64(),
            pause_reasons: self.pause_reasons.clone(),
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
    /// Rows per second a run may not exceed on average; 0: no limit.
    max_rows_per_second: u32,
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
}

/// The rows one batch covers.
enum Batch<'a> {
    /// Collected ctids (index method).
    Ctids(&'a [pg_sys::ItemPointerData]),
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

/// A run's running totals, recorded after every batch.
struct Tally<'a> {
    run_id: i64,
    /// When the run's row last got its progress: at most every [`PROGRESS_EVERY`].
    progress_written: Instant,
    rule_name: &'a str,
    /// What the run was given: checked before every batch (see [`binding`]).
    binding: &'a binding::Binding,
    started: Instant,
    stop_requested: &'a dyn Fn() -> bool,
    /// The rule's max_run_duration: the run stops between batches once it has run this long.
    max_duration: Option<Duration>,
    rows_deleted: i64,
    batches: i32,
    scan_ms: u128,
    longest_batch_ms: u128,
    method: Option<&'static str>,
    batches_redone: i32,
    partitions: Vec<(String, i64, &'static str)>,
    partitions_dropped: i32,
    pacer: pacing::Pacer,
}

/// Runs `rule` as run `run_id` (already committed as `running`), recording progress after every
/// batch and the outcome at the end. `stop_requested` is polled between batches. Must be called
/// outside a transaction; opens its own.
pub fn execute(
    rule: &Rule,
    run_id: i64,
    binding: &binding::Binding,
    stop_requested: &dyn Fn() -> bool,
) -> RunReport {
    let started = Instant::now();
    let mut tally = Tally {
        run_id,
        progress_written: started,
        rule_name: &rule.name,
        binding,
        started,
        stop_requested,
        max_duration: rule.max_run_duration(),
        rows_deleted: 0,
        batches: 0,
        scan_ms: 0,
        longest_batch_ms: 0,
        method: None,
        batches_redone: 0,
        partitions: Vec::new(),
        partitions_dropped: 0,
        pacer: pacing::Pacer::new(rule.pace_limits(), pg_sys::InvalidOid),
    };
    let outcome = run(rule, &mut tally).unwrap_or_else(|stopped| stopped);
    let report = RunReport {
        outcome,
        rows_deleted: tally.rows_deleted,
        batches: tally.batches,
        elapsed_ms: started.elapsed().as_millis(),
        scan_ms: tally.scan_ms,
        longest_batch_ms: tally.longest_batch_ms,
        method: tally.method,
        batches_redone: tally.batches_redone,
        partitions: std::mem::take(&mut tally.partitions),
        partitions_dropped: tally.partitions_dropped,
        paused: tally.pacer.paused,
        pause_reasons: tally.pacer.reasons_json(),
    };
    BackgroundWorker::transaction(|| history::finish(run_id, &report.outcome, &report.counts()));
    report
}

/// The run itself; `Err` carries an outcome that ended it early (failure or stop).
fn run(rule: &Rule, tally: &mut Tally) -> Result<Outcome, Outcome> {
    let planning = Instant::now();
    let plans = BackgroundWorker::transaction(|| prepare::prepare(rule, tally.binding.table));
    tally.scan_ms += planning.elapsed().as_millis();
    let plans = match plans {
        Ok(plans) => plans,
        Err(_) if (tally.stop_requested)() => return Err(interrupted()),
        Err(why) => return Err(Outcome::Failed(why)),
    };
    tally.method = plans.first().map(|p| p.method.name());
    let checked = BackgroundWorker::transaction(|| blast_radius::check(rule, &plans));
    if let Err(refused) = checked {
        return Err(Outcome::Refused(refused));
    }
    for plan in &plans {
        let before = tally.rows_deleted;
        if plan.partition {
            tally.check_stop()?;
            match partitions::remove_if_all_match(rule, plan, tally.binding) {
                Ok(Some((rows, action))) => {
                    tally.rows_deleted += rows;
                    tally.partitions_dropped += 1;
                    tally
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
            } => walk_table(plan, end_block, first_pages, tally)?,
            Method::Index => delete_through_index(rule, plan, tally)?,
        };
        if plan.partition {
            let rows = tally.rows_deleted - before;
            tally
                .partitions
                .push((plan.table.qualified_name.clone(), rows, "deleted"));
        }
    }
    // A SIGTERM that came during the last batch (whose error was then not a cancel) still ends the
    // run as interrupted: the scan that would have said nothing is left did not happen.
    if (tally.stop_requested)() {
        return Err(interrupted());
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
    let mut sizer = BatchSizer::new(plan.batch_size, first_pages, u64::from(end_block));
    let mut from = tid(0, 0);
    while block_number(&from) < end_block {
        let start_block = block_number(&from);
        let units = tally.pacer.batch_units(sizer.units());
        let to_block = (u64::from(start_block) + units).min(u64::from(end_block)) as u32;
        let (deleted, ms) = tally.batch(
            plan,
            Batch::Range {
                from,
                to: tid(to_block, 0),
                limit: plan.batch_size,
            },
        )?;
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
        tally.pacer.batch_done(u64::from(pages_done));
        sizer.observe(u64::from(pages_done), deleted.rows, ms);
    }
    Ok(Outcome::Succeeded)
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
            Ok(collect(rule, plan))
        });
        tally.scan_ms += scan_started.elapsed().as_millis();
        let candidates = match collected {
            Err(stale) => return Err(stale),
            Ok(Ok(c)) => c,
            Ok(Err(_)) if (tally.stop_requested)() => return Err(interrupted()),
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
            let units = tally.pacer.batch_units(sizer.units());
            let (chunk, tail) = rest.split_at((units as usize).min(rest.len()));
            let (deleted, ms) = tally.batch(plan, Batch::Ctids(chunk))?;
            tally.pacer.batch_done(chunk.len() as u64);
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

impl<'a> Tally<'a> {
    /// One batch in its own transaction, progress recorded in it. Returns what it deleted and how
    /// long it took (ms, start to commit); `Err` ends the run (stop requested, or a failure).
    fn batch(&mut self, plan: &Plan, batch: Batch) -> Result<(Deleted, f64), Outcome> {
        self.keep_pace(plan.max_rows_per_second);
        let stop = self.stop_check();
        let done_so_far = self.rows_deleted;
        self.pacer.set_table(plan.table.oid);
        self.pacer.wait(
            self.rule_name,
            || stop.check(),
            |paused, reason| {
                Outcome::Stopped(format!(
                    "paused for {:.0} s at one stretch ({}), past pg_token_cleanup.max_pause; stopped with {} rows deleted, the rest go in the next run",
                    paused.as_secs_f64(),
                    reason.as_str(),
                    done_so_far
                ))
            },
        )?;
        self.check_stop()?;
        let started = Instant::now();
        let (run_id, done, batches) = (self.run_id, self.rows_deleted, self.batches);
        let write_progress = self.progress_written.elapsed() >= PROGRESS_EVERY;
        let watch_waiters = self.pacer.watches_waiters();
        let binding = self.binding;
        let result = BackgroundWorker::transaction(|| {
            if let Err(stale) = still_bound(plan, binding) {
                return Ok(Err(stale));
            }
            batch_settings(plan.wal_compression);
            let deleted = delete_batch(plan, &batch)?;
            if write_progress {
                history::progress(run_id, done + deleted.rows, batches + 1);
            }
            // Before commit, while this batch's row locks are held.
            let blocked_someone = watch_waiters && pacing::blocking_sessions();
            Ok::<_, Error>(Ok((deleted, blocked_someone)))
        });
        let elapsed = started.elapsed();
        match result {
            Ok(Err(stale)) => Err(stale),
            Ok(Ok((deleted, blocked_someone))) => {
                if blocked_someone {
                    self.pacer.give_way_after(elapsed);
                }
                if write_progress {
                    self.progress_written = Instant::now();
                }
                self.rows_deleted += deleted.rows;
                self.batches_redone += i32::from(deleted.redone);
                self.batches += 1;
                crate::worker::signals::set_progress(self.rows_deleted, self.batches);
                report_activity(&format!(
                    "pg_token_cleanup: rule {} run {}: batch {}, {} rows",
                    self.rule_name, self.run_id, self.batches, self.rows_deleted
                ));
                self.longest_batch_ms = self.longest_batch_ms.max(elapsed.as_millis());
                Ok((deleted, elapsed.as_secs_f64() * 1000.0))
            }
            Err(_) if (self.stop_requested)() => Err(interrupted()),
            Err(e) => Err(Outcome::Failed(
                e.context(format!("deleting batch {}", self.batches + 1)),
            )),
        }
    }

    /// Ends the run between batches: interrupted on SIGTERM, stopped at max_run_duration.
    fn check_stop(&self) -> Result<(), Outcome> {
        self.stop_check().check()
    }

    /// What [`Tally::check_stop`] reads, apart from the tally (for a pause, which borrows it).
    fn stop_check(&self) -> StopCheck<'a> {
        StopCheck {
            stop_requested: self.stop_requested,
            started: self.started,
            max_duration: self.max_duration,
            rows_deleted: self.rows_deleted,
        }
    }

    /// Waits, between batches and so holding no lock, until the rows deleted so far are within
    /// `max_rows_per_second` of the run's time. Wakes every 100 ms to notice SIGTERM; leaves the
    /// latch alone (a scheduler's wake-up for a rule change must survive the run).
    fn keep_pace(&self, max_rows_per_second: u32) {
        if max_rows_per_second == 0 {
            return;
        }
        let due =
            Duration::from_secs_f64(self.rows_deleted as f64 / f64::from(max_rows_per_second));
        while self.check_stop().is_ok() {
            let Some(ahead) = due.checked_sub(self.started.elapsed()) else {
                return;
            };
            std::thread::sleep(ahead.min(Duration::from_millis(100)));
        }
    }
}

/// At the start of a transaction that names the plan's relations (a batch, a collecting scan, a
/// partition's removal): locks the table and archive by OID (within the rule's lock_timeout), then
/// checks that their names still name them and that the rule is still the one the run was given.
/// `Err` ends the run, nothing deleted in this transaction.
fn still_bound(plan: &Plan, bound: &binding::Binding) -> Result<(), Outcome> {
    let what = if plan.partition { "partition" } else { "table" };
    let wait = plan.limits.lock_timeout_ms;
    binding::lock_and_check(plan.table.oid, &plan.table.qualified_name, what, wait)?;
    if let Some(archive) = &plan.archive {
        binding::lock_and_check(archive.oid, &archive.table, "archive_table", wait)?;
    }
    bound.check_rule()
}

/// Why a run ends between batches: SIGTERM, or max_run_duration reached.
struct StopCheck<'a> {
    stop_requested: &'a dyn Fn() -> bool,
    started: Instant,
    max_duration: Option<Duration>,
    rows_deleted: i64,
}

impl StopCheck<'_> {
    fn check(&self) -> Result<(), Outcome> {
        if (self.stop_requested)() {
            return Err(interrupted());
        }
        match self.max_duration {
            Some(max) if self.started.elapsed() >= max => Err(Outcome::Stopped(format!(
                "stopped after max_run_duration ({} s) with {} rows deleted; the rest go in the next run",
                max.as_secs_f64(),
                self.rows_deleted
            ))),
            _ => Ok(()),
        }
    }
}

/// What this worker is doing, in `pg_stat_activity.query` (visible to superusers, the members of
/// pg_read_all_stats, and the worker's role).
pub fn report_activity(what: &str) {
    let what = std::ffi::CString::new(what.replace('\0', "")).expect("no NUL");
    // SAFETY: copies the text into this backend's status entry.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, what.as_ptr()) };
}

/// The settings of a batch's transaction.
///
/// Batches commit without waiting for their WAL flush (one fsync per batch would dominate small
/// batches). A crash can lose only the last few batches' deletes, and those rows still match and go
/// in the next run; the run's `running` and final records commit synchronously.
///
/// The batches' full-page images are compressed (see pg_token_cleanup.wal_compression): less WAL
/// to write, replicate and archive, and shorter WAL flushes for concurrent commits. Recovery reads
/// compressed records whatever the server's own setting.
fn batch_settings(wal_compression: Option<&str>) {
    owner::set_for_transaction("synchronous_commit", "off");
    if let Some(method) = wal_compression {
        owner::set_for_transaction("wal_compression", method);
    }
}

/// The method pg_token_cleanup.wal_compression asks for, if this build of PostgreSQL has it (lz4
/// and zstd are build options). The build's methods are read once per process.
#[cfg(not(feature = "pg14"))]
fn supported_wal_compression() -> Option<&'static str> {
    static BUILT_IN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let method = crate::gucs::wal_compression().setting()?;
    let built_in = BUILT_IN.get_or_init(|| {
        Spi::get_one::<Vec<String>>(
            "SELECT enumvals FROM pg_catalog.pg_settings WHERE name = 'wal_compression'",
        )
        .ok()
        .flatten()
        .unwrap_or_default()
    });
    built_in.iter().any(|m| m == method).then_some(method)
}

/// PostgreSQL 14's wal_compression is a boolean that means pglz (the methods came in 15): any method
/// asked for turns it on.
#[cfg(feature = "pg14")]
fn supported_wal_compression() -> Option<&'static str> {
    crate::gucs::wal_compression().setting().map(|_| "on")
}

fn interrupted() -> Outcome {
    if crate::worker::registry::preempted() {
        return Outcome::Interrupted(crate::worker::signals::preempted());
    }
    Outcome::Interrupted(Error::new(
        PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
        "stopped by SIGTERM (server shutdown, DROP DATABASE or pg_terminate_backend); \
         committed batches stay deleted, the rest go in the next run",
    ))
}

fn owner_statement<R>(plan: &Plan, limits: Limits, f: impl FnOnce() -> R) -> Result<R, Error> {
    as_role(plan.owner, limits, f)
}

/// Runs `f` (statements of code that is not ours) as `role` within `limits`, in a subtransaction
/// whose error is returned, ended by SIGTERM in a worker, leaving no advisory lock behind.
pub(crate) fn as_role<R>(
    role: pg_sys::Oid,
    limits: Limits,
    f: impl FnOnce() -> R,
) -> Result<R, Error> {
    owner::leaving_no_advisory_locks(|| {
        crate::errors::in_subtransaction(|| {
            owner::as_owner(role, limits, || {
                owner::timed(limits, || {
                    crate::worker::signals::cancellable(limits.statement_timeout_ms, f)
                })
            })
        })
    })
}

pub(crate) use prepare::planned_scan;

/// One scan: the ctids of up to COLLECT_LIMIT rows matching the condition now, in physical order.
fn collect(rule: &Rule, plan: &Plan) -> Result<Vec<pg_sys::ItemPointerData>, Error> {
    // One array datum, copied out as raw bytes: a million rows through SPI tuples, or through
    // per-element conversion, costs several times the scan itself.
    let sql = format!(
        "SELECT array_agg(ctid) FROM (SELECT ctid FROM ONLY {} WHERE {} LIMIT {COLLECT_LIMIT}) candidates",
        plan.table.qualified_name,
        crate::condition::embedded(&rule.condition)
    );
    let mut ctids = owner_statement(plan, plan.limits, || {
        Spi::connect(|client| {
            let table = client.select(sql.as_str(), Some(1), &[])?;
            let Some(datum) = table.first().get_datum_by_ordinal(1)? else {
                return Ok::<_, pgrx::spi::Error>(Vec::new());
            };
            // SAFETY: array_agg(ctid) is a one-dimensional tid[] without NULLs; it is detoasted
            // before its elements (6 bytes each, as ItemPointerData) are copied out.
            let ctids = unsafe {
                let array = pg_sys::pg_detoast_datum(datum.cast_mut_ptr::<pg_sys::varlena>());
                let mut raw =
                    RawArray::from_ptr(NonNull::new(array.cast()).expect("detoasted array"));
                raw.data::<pg_sys::ItemPointerData>().as_ref().to_vec()
            };
            Ok(ctids)
        })
    })??;
    ctids.sort_unstable_by_key(|t| (block_number(t), t.ip_posid));
    Ok(ctids)
}

fn block_number(t: &pg_sys::ItemPointerData) -> u32 {
    (u32::from(t.ip_blkid.bi_hi) << 16) | u32::from(t.ip_blkid.bi_lo)
}

/// A tid as (block, offset), which orders as a walk reads the table.
fn at(t: &pg_sys::ItemPointerData) -> batch_cap::At {
    (block_number(t), t.ip_posid)
}

/// The tid `(block,offset)`; `(block,0)` precedes every row of the page (a TID range bound).
fn tid(block: u32, offset: u16) -> pg_sys::ItemPointerData {
    pg_sys::ItemPointerData {
        ip_blkid: pg_sys::BlockIdData {
            bi_hi: (block >> 16) as u16,
            bi_lo: (block & 0xffff) as u16,
        },
        ip_posid: offset,
    }
}

/// Deletes the batch's rows that still match the condition; returns how many.
///
/// Locking every row first (`FOR UPDATE SKIP LOCKED`) doubles the heap writes of a batch, so a batch
/// first tries a plain DELETE that gives up on the first row lock within [`OPTIMISTIC_LOCK_WAIT_MS`];
/// only a batch that meets a locked row is redone with SKIP LOCKED. Owners without UPDATE (which row
/// locks require) get the plain DELETE with the rule's lock timeout.
fn delete_batch(plan: &Plan, batch: &Batch) -> Result<Deleted, Error> {
    let Some(skipping) = &plan.skip_locked_sql else {
        return run_delete(plan, plan.limits, &plan.delete_sql, batch);
    };
    let optimistic = Limits {
        lock_timeout_ms: OPTIMISTIC_LOCK_WAIT_MS,
        ..plan.limits
    };
    match run_delete(plan, optimistic, &plan.delete_sql, batch) {
        Err(e) if e.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => {
            run_delete(plan, plan.limits, skipping, batch).map(|d| Deleted { redone: true, ..d })
        }
        other => other,
    }
}

fn run_delete(
    plan: &Plan,
    limits: Limits,
    sql: &BatchSql,
    batch: &Batch,
) -> Result<Deleted, Error> {
    owner_statement(plan, limits, || {
        // Fetch exactly the batch's rows by ctid (a TID or TID range scan). Left to itself the
        // planner may prefer an index on the condition's columns and walk every matching row of the
        // table for each batch, which makes a run quadratic in the rows it deletes (seen at 10M rows).
        // SAFETY: settings scoped to as_owner's GUC nest level.
        unsafe {
            for scan in [
                "enable_seqscan",
                "enable_indexscan",
                "enable_bitmapscan",
                "enable_indexonlyscan",
            ] {
                owner::set_local(scan, "off");
            }
        }
        match batch {
            Batch::Ctids(chunk) => Spi::connect_mut(|client| {
                let deleted = client.update(
                    sql.with("ctid = ANY($1)").as_str(),
                    None,
                    &[chunk.to_vec().into()],
                )?;
                Ok::<_, pgrx::spi::Error>(Deleted {
                    rows: deleted.len() as i64,
                    redone: false,
                    resume: None,
                })
            }),
            Batch::Range { from, to, limit } => {
                // The bounds are tids this module made: numbers, not user text.
                let rows = format!(
                    "ctid >= '({},{})'::tid AND ctid < '({},{})'::tid",
                    block_number(from),
                    from.ip_posid,
                    block_number(to),
                    to.ip_posid
                );
                if sql.capped() {
                    let cap = batch_cap::Armed::new(*limit as u64, at(from), at(to));
                    return Spi::connect_mut(|client| {
                        let deleted = client.update(sql.with(&rows).as_str(), None, &[])?;
                        Ok(Deleted {
                            rows: deleted.len() as i64,
                            redone: false,
                            resume: cap.first_refused(),
                        })
                    });
                }
                // SPI says SELECT results sent to a DestNone receiver (ours) are "utility".
                let expected = if plan.archive.is_some() {
                    pg_sys::SPI_OK_UTILITY
                } else {
                    pg_sys::SPI_OK_DELETE_RETURNING
                };
                Spi::connect_mut(|_| {
                    let (rows, last) =
                        range_delete::execute(&sql.with(&rows), *limit as u64, expected as i32);
                    Ok(Deleted {
                        rows,
                        redone: false,
                        // Stopped at its limit: the rest of the range from the row after the last.
                        resume: last
                            .filter(|_| rows >= *limit as i64)
                            .map(|(block, offset)| (block, offset + 1)),
                    })
                })
            }
        }
    })?
    .map_err(Error::from)
}
