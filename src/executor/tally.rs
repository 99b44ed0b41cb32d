//! A run's running totals and the one batch step: stop checks (SIGTERM, max_run_duration, a
//! preempted run), pacing, the batch's transaction with the binding checked first, progress in the
//! run's row every few seconds and in shared memory after every batch.

use super::batch::{batch_settings, delete_batch};
use super::{binding, history, pacing, report_activity, Batch, Deleted, Plan, PROGRESS_EVERY};
use crate::errors::Error;
use crate::history::Outcome;
use pgrx::bgworkers::BackgroundWorker;
use std::time::{Duration, Instant};

/// A run's running totals, recorded after every batch.
pub(super) struct Tally<'a> {
    pub(super) run_id: i64,
    /// Whether this process writes the run's progress into its row (a parallel run's helpers do
    /// not: the leader records the run).
    pub(super) records_progress: bool,
    /// When the run's row last got its progress: at most every [`PROGRESS_EVERY`].
    pub(super) progress_written: Instant,
    pub(super) rule_name: &'a str,
    /// What the run was given: checked before every batch (see [`binding`]).
    pub(super) binding: &'a binding::Binding,
    pub(super) started: Instant,
    pub(super) control: &'a dyn super::RunControl,
    /// The rule's max_run_duration: the run stops between batches once it has run this long.
    pub(super) max_duration: Option<Duration>,
    /// What the run has done so far.
    pub(super) stats: history::RunStats,
    pub(super) gate: pacing::Gate,
    /// A parallel run's helpers: their pauses, and the reasons (`runs.pause_reasons` JSON).
    pub(super) helpers_paused: Duration,
    pub(super) helpers_reasons: Option<String>,
}

impl<'a> Tally<'a> {
    /// The totals of a run (or a helper's slice of one) starting now, paced by the rule's limits
    /// against the live server and clock.
    pub(super) fn live(
        run_id: i64,
        rule: &'a crate::rules::Rule,
        binding: &'a binding::Binding,
        control: &'a dyn super::RunControl,
        max_duration: Option<Duration>,
    ) -> Tally<'a> {
        let started = Instant::now();
        Tally {
            run_id,
            records_progress: true,
            progress_written: started,
            rule_name: &rule.name,
            binding,
            started,
            control,
            max_duration,
            stats: history::RunStats::default(),
            gate: pacing::Gate::new(
                pacing::PaceLimits::of(rule),
                Box::new(crate::clock::SystemClock),
                Box::new(pacing::LiveServer),
            ),
            helpers_paused: Duration::ZERO,
            helpers_reasons: None,
        }
    }

    /// One batch in its own transaction, progress recorded in it. Returns what it deleted and how
    /// long it took (ms, start to commit); `Err` ends the run (stop requested, or a failure).
    pub(super) fn batch(&mut self, plan: &Plan, batch: Batch) -> Result<(Deleted, f64), Outcome> {
        self.step(
            plan,
            || {
                batch_settings(plan.wal_compression);
                delete_batch(plan, &batch)
            },
            |deleted| Counted {
                rows: deleted.rows,
                batches: 1,
                redone: i32::from(deleted.redone),
                longest_ms: None,
            },
        )
    }

    /// One step of a run in its own transaction: `work` is one batch here, or the batches of
    /// several shards on their nodes (`shards`, each committed there), and `count` says what it
    /// did. Pacing and the stop
    /// checks come first; the table and rule are checked still bound; progress is recorded in the
    /// step's transaction. Returns the work's result and how long the step took (ms, start to
    /// commit); `Err` ends the run (stop requested, or a failure).
    pub(super) fn step<T>(
        &mut self,
        plan: &Plan,
        work: impl FnOnce() -> Result<T, Error>,
        count: impl Fn(&T) -> Counted,
    ) -> Result<(T, f64), Outcome> {
        let stop = self.stop_check();
        let done_so_far = self.stats.rows_deleted;
        self.gate.set_table(plan.table.oid);
        self.gate.before_batch(
            self.rule_name,
            done_so_far,
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
        let (run_id, done, batches) = (self.run_id, self.stats.rows_deleted, self.stats.batches);
        let write_progress =
            self.records_progress && self.progress_written.elapsed() >= PROGRESS_EVERY;
        let watch_waiters = self.gate.watches_waiters();
        let binding = self.binding;
        // The work and its count are this run's own code (no state shared across the unwind).
        let result = BackgroundWorker::transaction(std::panic::AssertUnwindSafe(|| {
            if let Err(stale) = still_bound(plan, binding) {
                return Ok(Err(stale));
            }
            let done_here = work()?;
            if write_progress {
                let counted = count(&done_here);
                history::progress(run_id, done + counted.rows, batches + counted.batches);
            }
            // Before commit, while this batch's row locks are held.
            let blocked_someone = watch_waiters && pacing::blocking_sessions();
            Ok::<_, Error>(Ok((done_here, blocked_someone)))
        }));
        let elapsed = started.elapsed();
        match result {
            Ok(Err(stale)) => Err(stale),
            Ok(Ok((done_here, blocked_someone))) => {
                if blocked_someone {
                    self.gate.give_way_after(elapsed);
                }
                if write_progress {
                    self.progress_written = Instant::now();
                }
                let counted = count(&done_here);
                self.stats.rows_deleted += counted.rows;
                self.stats.batches_redone += counted.redone;
                self.stats.batches += counted.batches;
                self.control
                    .progress(self.stats.rows_deleted, self.stats.batches);
                report_activity(&format!(
                    "pg_token_cleanup: rule {} run {}: batch {}, {} rows",
                    self.rule_name, self.run_id, self.stats.batches, self.stats.rows_deleted
                ));
                // A step of shard batches on their nodes says how long its longest batch took.
                let longest = counted.longest_ms.unwrap_or(elapsed.as_millis());
                self.stats.longest_batch_ms = self.stats.longest_batch_ms.max(longest);
                Ok((done_here, elapsed.as_secs_f64() * 1000.0))
            }
            Err(_) if self.control.stop_requested() => Err(self.interrupted()),
            Err(e) => Err(Outcome::Failed(
                e.context(format!("deleting batch {}", self.stats.batches + 1)),
            )),
        }
    }

    /// The outcome of a run its worker stopped.
    pub(super) fn interrupted(&self) -> Outcome {
        Outcome::Interrupted(self.control.why_stopped())
    }

    /// Ends the run between batches: interrupted on SIGTERM, stopped at max_run_duration.
    pub(super) fn check_stop(&self) -> Result<(), Outcome> {
        self.stop_check().check()
    }

    /// What [`Tally::check_stop`] reads, apart from the tally (for a pause, which borrows it).
    fn stop_check(&self) -> StopCheck<'a> {
        StopCheck {
            control: self.control,
            started: self.started,
            max_duration: self.max_duration,
            rows_deleted: self.stats.rows_deleted,
        }
    }
}

/// At the start of a transaction that names the plan's relations (a batch, a collecting scan, a
/// partition's removal): locks the table and archive by OID (within the rule's lock_timeout), then
/// checks that their names still name them and that the rule is still the one the run was given.
/// `Err` ends the run, nothing deleted in this transaction.
pub(super) fn still_bound(plan: &Plan, bound: &binding::Binding) -> Result<(), Outcome> {
    let what = if plan.partition { "partition" } else { "table" };
    let wait = plan.limits.lock_timeout_ms;
    binding::lock_and_check(plan.table.oid, &plan.table.qualified_name, what, wait)?;
    if let Some(archive) = &plan.archive {
        binding::lock_and_check(archive.oid, &archive.table, "archive_table", wait)?;
    }
    bound.check_rule()
}

/// What one step did: rows deleted, batches committed, batches redone with SKIP LOCKED, and for
/// batches on other nodes the longest of them (otherwise the step is the batch).
pub(super) struct Counted {
    pub(super) rows: i64,
    pub(super) batches: i32,
    pub(super) redone: i32,
    pub(super) longest_ms: Option<u128>,
}

/// Why a run ends between batches: SIGTERM, or max_run_duration reached.
struct StopCheck<'a> {
    control: &'a dyn super::RunControl,
    started: Instant,
    max_duration: Option<Duration>,
    rows_deleted: i64,
}

impl StopCheck<'_> {
    fn check(&self) -> Result<(), Outcome> {
        if self.control.stop_requested() {
            return Err(Outcome::Interrupted(self.control.why_stopped()));
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
