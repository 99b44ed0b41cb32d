//! The scheduler's runs: handing due rules to runners (or running one itself when no runner is to
//! be had), stopping an over-share owner's run for another owner's due rule, collecting runs that
//! ended and scheduling retries of failed ones, starting pooled runners within the budget.

use super::{InFlight, Scheduler, Served, SPAWN_PATIENCE};

/// The postmaster refusing runners this long is warned about.
const SPAWN_FAILURE_WARNING: std::time::Duration = std::time::Duration::from_secs(10);
use crate::gucs;
use crate::history::{self, RunResult, Trigger};
use crate::worker::agenda::RetryPolicy;
use crate::worker::dispatch::{self, Candidate};
use crate::worker::handoff::Handoff;
use crate::worker::registry::{self, budget, Assignment, Kind};
use crate::worker::run::{self, RunRequest};
use crate::worker::runner;
use chrono::{DateTime, Utc};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerStatus};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// What [`Scheduler::start_runners`] did.
#[derive(Debug, PartialEq, Eq)]
enum Started {
    /// This many (0: none wanted, or max_parallel_runs reached).
    Some(usize),
    /// None: the cluster's worker budget is full, or the postmaster has no worker slot.
    NoneToBeHad,
}

impl Scheduler {
    /// Collects runs that ended: the rule's next due time is the first slot after the end.
    pub(super) fn collect_finished(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        // SAFETY: reading this process's pid.
        let runners = registry::runners_of(unsafe { pg_sys::MyProcPid });
        let mut ended = Vec::new();
        let mut lost_runner = false;
        for (id, flight) in &self.in_flight {
            match runners
                .iter()
                .find(|r| r.slot == flight.runner_slot && r.pid == flight.runner_pid)
            {
                Some(r) if r.assignment == Assignment::Done => {
                    registry::acknowledge(r.slot, r.pid);
                    let failed = flight
                        .handoff
                        .result::<RunResult>()
                        .is_some_and(|result| result.failed());
                    ended.push((*id, failed));
                }
                Some(_) => {}
                None => {
                    // The runner died mid-run (a crash restart ends everything else too; this is
                    // a runner killed alone): its run is marked interrupted below.
                    lost_runner = true;
                    ended.push((*id, false));
                }
            }
        }
        if lost_runner {
            BackgroundWorker::transaction(history::mark_interrupted);
        }
        for (id, failed) in ended {
            self.in_flight.remove(&id);
            self.ran(id, failed);
        }
    }

    /// Records that the run of rule `id` ended: when it runs next, a retry if it failed (see
    /// [`crate::worker::agenda::RetryPolicy`]).
    fn ran(&mut self, id: i64, failed: bool) {
        let policy = RetryPolicy {
            backoff: gucs::retry_backoff(),
            max_retries: gucs::max_retries(),
        };
        self.agenda.ran(id, Utc::now(), failed, Some(&policy));
    }

    /// Hands due rules to idle runners, starting runners up to max_parallel_runs; runs one here
    /// when no runner is to be had. `true` when it ran one here.
    pub(super) fn dispatch_due(&mut self, now: DateTime<Utc>) -> bool {
        let due: Vec<(i64, DateTime<Utc>)> = self
            .agenda
            .due(now)
            .into_iter()
            .filter(|(id, _)| !self.in_flight.contains_key(id))
            .collect();
        if due.is_empty() {
            return false;
        }
        // A rule a manual run holds is skipped for this slot, as before.
        let claimed: HashSet<i64> = registry::claims_in(self.database)
            .into_iter()
            .map(|(rule, _)| rule)
            .collect();
        let mut candidates = Vec::new();
        for (id, due_at) in due {
            let Some(Served { rule, .. }) = self.rules.get(&id) else {
                self.agenda.skipped(id, now);
                continue;
            };
            if claimed.contains(&id) {
                log!("pg_token_cleanup: rule \"{}\" is already running in another session; skipping the run due at {due_at}", rule.name);
                self.agenda.skipped(id, now);
                continue;
            }
            candidates.push(Candidate {
                id,
                due_at,
                owner: rule.owner.clone(),
                table: rule.table_name.clone(),
            });
        }
        let slots = gucs::max_parallel_runs();
        let free = slots.saturating_sub(self.in_flight.len());
        let mut running = dispatch::Running::default();
        for flight in self.in_flight.values() {
            running.tables.insert(flight.table.clone());
            *running.by_owner.entry(flight.owner.clone()).or_default() += 1;
        }
        let share = dispatch::share(slots, self.owners);
        let chosen = dispatch::choose(&candidates, &running, free, share, &mut self.turn);
        if chosen.is_empty() {
            if free == 0 {
                self.preempt_over_share(&candidates, &running, share);
            }
            return false;
        }
        // SAFETY: reading this process's pid.
        let my_pid = unsafe { pg_sys::MyProcPid };
        let runners = registry::runners_of(my_pid);
        let busy_slots: HashSet<usize> = self.in_flight.values().map(|f| f.runner_slot).collect();
        let mut idle = runners
            .into_iter()
            .filter(|r| r.assignment == Assignment::Idle && !busy_slots.contains(&r.slot));
        let due_at: HashMap<i64, DateTime<Utc>> =
            candidates.iter().map(|c| (c.id, c.due_at)).collect();
        let mut unserved = Vec::new();
        for id in chosen {
            let Some(runner) = idle.next() else {
                unserved.push(id);
                continue;
            };
            let request = self.request(id, due_at[&id]);
            let (table, owner) = (request.rule.table_name.clone(), request.rule.owner.clone());
            let handoff = Handoff::create(&request);
            if registry::give(runner.slot, runner.pid, handoff.handle()) {
                self.in_flight.insert(
                    id,
                    InFlight {
                        runner_slot: runner.slot,
                        runner_pid: runner.pid,
                        table,
                        owner,
                        started: Instant::now(),
                        handoff,
                    },
                );
            }
        }
        let no_runner_to_be_had = self.start_runners(unserved.len()) == Started::NoneToBeHad;
        if no_runner_to_be_had && self.starting.is_empty() {
            // The budget is full (or owed to others who wait), or the server's worker slots are: the
            // scheduler runs the first of them itself, and comes back for the rest. (Runners still starting, or
            // max_parallel_runs taken, are waited for instead.)
            if let Some(&id) = unserved.first() {
                self.run_here(id, due_at[&id]);
                return true;
            }
        }
        false
    }

    /// Every slot is taken and a due rule waits: if its owner holds less than its share while
    /// another owner holds more (runs started while it was alone, runs that never end), stops that
    /// owner's newest run. Its runner exits, and the slot goes to the rule that waits.
    fn preempt_over_share(&self, due: &[Candidate], running: &dispatch::Running, share: usize) {
        let held = |owner: &str| running.by_owner.get(owner).copied().unwrap_or(0);
        // A rule waiting for its table (a run on it going on), not for a slot, is no reason.
        if !due
            .iter()
            .any(|c| held(&c.owner) < share && !running.tables.contains(&c.table))
        {
            return;
        }
        let newest_over_share = self
            .in_flight
            .values()
            .filter(|f| held(&f.owner) > share)
            .max_by_key(|f| f.started);
        if let Some(f) = newest_over_share {
            log!(
                "pg_token_cleanup: stopping a run of {}'s rules on {} ({} runs going, share {share}) for another owner's due rule",
                f.owner,
                f.table,
                held(&f.owner)
            );
            registry::preempt(f.runner_slot, f.runner_pid);
        }
    }

    /// The request of a scheduled run (or a retry) of rule `id` due at `due_at`.
    fn request(&self, id: i64, due_at: DateTime<Utc>) -> RunRequest {
        let trigger = if self.agenda.retrying(id) {
            Trigger::Retry
        } else {
            Trigger::Schedule
        };
        RunRequest {
            rule: self.rules[&id].rule.clone(),
            trigger,
            scheduled_for: Some(due_at.timestamp_micros() as f64 / 1e6),
            run_id: None,
        }
    }

    /// Performs the run of rule `id` in this process, as a runner would.
    fn run_here(&mut self, id: i64, due_at: DateTime<Utc>) {
        let request = self.request(id, due_at);
        let failed = run::perform(&request).failed();
        self.ran(id, failed);
    }

    /// Starts up to `wanted` more runners, within max_parallel_runs and the cluster's budget;
    /// runners started and not yet registered count against both.
    fn start_runners(&mut self, wanted: usize) -> Started {
        // SAFETY: reading this process's pid.
        let registered: Vec<i32> = registry::runners_of(unsafe { pg_sys::MyProcPid })
            .iter()
            .map(|r| r.pid)
            .collect();
        self.starting.retain(|(worker, since)| {
            since.elapsed() < SPAWN_PATIENCE
                && match worker.pid() {
                    Err(BackgroundWorkerStatus::NotYetStarted) => true,
                    Ok(pid) => !registered.contains(&pid),
                    Err(_) => false,
                }
        });
        let pending = self.starting.len();
        let room = gucs::max_parallel_runs().saturating_sub(registered.len() + pending);
        let mut started = 0;
        for _ in 0..wanted.saturating_sub(pending).min(room) {
            if !budget::reserve(Kind::Runner, self.database, pg_sys::InvalidOid) {
                if started == 0 {
                    return Started::NoneToBeHad;
                }
                break;
            }
            match runner::spawn_pooled(self.database, &self.database_name) {
                Some(worker) => {
                    self.spawn_failing_since = None;
                    self.starting.push((worker, Instant::now()));
                    started += 1;
                }
                None => {
                    budget::cancel(Kind::Runner, self.database);
                    // A worker that just left holds its postmaster slot until it is reaped: warn
                    // only when this lasts.
                    let failing = self.spawn_failing_since.get_or_insert_with(Instant::now);
                    if failing.elapsed() < SPAWN_FAILURE_WARNING {
                        if started == 0 {
                            return Started::NoneToBeHad;
                        }
                        break;
                    }
                    self.warn(&format!(
                        "pg_token_cleanup: could not start a runner: every max_worker_processes slot is taken \
                         (by other work; pg_token_cleanup.max_workers had room); the scheduler runs due rules itself \
                         (raise max_worker_processes to at least pg_token_cleanup.max_workers plus {})",
                        gucs::WORKER_ROOM
                    ));
                    if started == 0 {
                        return Started::NoneToBeHad;
                    }
                    break;
                }
            }
        }
        Started::Some(started)
    }

    /// On exit, the runs going on stop too (recorded interrupted), as they did when the scheduler
    /// ran them itself: `pg_terminate_backend()` of the scheduler stops its database's purges.
    pub(super) fn stop_runners(&self) {
        // SAFETY: reading this process's pid.
        for r in registry::runners_of(unsafe { pg_sys::MyProcPid }) {
            // SAFETY: SIGTERM to a runner of ours, registered as alive just above.
            unsafe { libc::kill(r.pid, libc::SIGTERM) };
        }
    }
}
