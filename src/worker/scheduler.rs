//! The scheduler: one dynamic worker per database with the extension. Its loop reads like a table of
//! contents: reload rules if told to → run what is due → prune history → sleep until the next due
//! time or a signal.

use super::agenda::{Agenda, AgendaRule};
use super::{extension_present, signals};
use crate::catalog::{self, Rule};
use crate::executor;
use crate::gucs;
use crate::history::{self, Trigger};
use chrono::{DateTime, Utc};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest sleep even with nothing due: guards against clock jumps and lost signals.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Pause after an unexpected error in the loop before trying again.
const ERROR_BACKOFF: Duration = Duration::from_secs(5);
/// How often history is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Advisory lock class that keeps a second scheduler out of a database ("tkns").
const SCHEDULER_LOCK_CLASS: i32 = 0x746b_6e73;

struct Scheduler {
    agenda: Agenda,
    rules: HashMap<i64, Rule>,
    reload: bool,
    last_prune: Option<Instant>,
}

/// Entry point of a scheduler; the argument is the database OID.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_token_cleanup_scheduler_main(arg: pg_sys::Datum) {
    signals::install();
    // SAFETY: the launcher passes an OID datum.
    let database = unsafe { pg_sys::Oid::from_datum(arg, false) }.expect("database OID argument");
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    signals::reload_config_if_asked();

    let start = BackgroundWorker::transaction(|| {
        if !extension_present() {
            return Err("extension not installed");
        }
        if !try_lock_scheduler() {
            return Err("another scheduler serves this database");
        }
        Ok(history::mark_interrupted())
    });
    match start {
        Ok(marked) => {
            if marked > 0 {
                log!("pg_token_cleanup: marked {marked} unfinished run(s) as interrupted");
            }
            log!("pg_token_cleanup: scheduler started");
        }
        Err(why) => {
            debug1!("pg_token_cleanup: scheduler not starting: {why}");
            return;
        }
    }

    let mut scheduler = Scheduler {
        agenda: Agenda::new(gucs::timezone()),
        rules: HashMap::new(),
        reload: true,
        last_prune: None,
    };
    while !signals::stop_requested() {
        let step = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| scheduler.step()))
            .catch_others(|e| {
                let e = crate::security::describe(e);
                // SAFETY: what PostgresMain does after an error: abort the transaction and go on.
                unsafe { pg_sys::AbortCurrentTransaction() };
                warning!(
                    "pg_token_cleanup: scheduler error: {e}; retrying in {}s",
                    ERROR_BACKOFF.as_secs()
                );
                // Session advisory locks survive the abort: drop a rule lock the error may have left.
                if !BackgroundWorker::transaction(relock_scheduler_only) {
                    return None;
                }
                Some(ERROR_BACKOFF)
            })
            .execute();
        match step {
            Some(sleep) => {
                if signals::wait(sleep) {
                    scheduler.reload = true;
                }
            }
            None => break,
        }
    }
    log!("pg_token_cleanup: scheduler stopped");
}

impl Scheduler {
    /// One pass of the loop; returns how long to sleep, or `None` to exit (extension dropped).
    fn step(&mut self) -> Option<Duration> {
        signals::reload_config_if_asked();
        if self.reload {
            self.reload = false;
            if !self.reload_rules() {
                log!("pg_token_cleanup: extension dropped from this database; scheduler exiting");
                return None;
            }
        }
        if gucs::enabled() {
            self.run_due();
        }
        self.prune_if_due();
        if !gucs::enabled() {
            return Some(MAX_SLEEP);
        }
        let sleep = match self.agenda.next_wake() {
            Some(t) => (t - Utc::now()).to_std().unwrap_or(Duration::ZERO),
            None => MAX_SLEEP,
        };
        Some(sleep.min(MAX_SLEEP))
    }

    /// Reloads the enabled rules; false when the extension is gone.
    fn reload_rules(&mut self) -> bool {
        let loaded = BackgroundWorker::transaction(|| {
            if !extension_present() {
                return None;
            }
            Some(catalog::load_enabled_rules())
        });
        let Some(loaded) = loaded else { return false };
        let agenda_rules: Vec<AgendaRule> = loaded
            .iter()
            .map(|(r, last)| AgendaRule {
                id: r.id,
                schedule: r.schedule.clone(),
                updated_at: r.updated_at,
                last_scheduled: *last,
            })
            .collect();
        for rejected in self
            .agenda
            .sync(&agenda_rules, gucs::timezone(), Utc::now())
        {
            warning!(
                "pg_token_cleanup: rule {} skipped: {}",
                rejected.id,
                rejected.reason
            );
        }
        self.rules = loaded.into_iter().map(|(r, _)| (r.id, r)).collect();
        debug1!(
            "pg_token_cleanup: loaded {} enabled rule(s)",
            self.rules.len()
        );
        true
    }

    /// Runs every due rule once, earliest first, stopping early on SIGTERM.
    fn run_due(&mut self) {
        for (id, due_at) in self.agenda.due(Utc::now()) {
            if signals::stop_requested() {
                return;
            }
            if let Some(rule) = self.rules.get(&id).cloned() {
                run_scheduled(&rule, due_at);
            }
            self.agenda.done(id, Utc::now());
        }
    }

    fn prune_if_due(&mut self) {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        let pruned =
            BackgroundWorker::transaction(|| history::prune(gucs::history_retention_seconds()));
        if pruned > 0 {
            log!("pg_token_cleanup: pruned {pruned} run(s) older than pg_token_cleanup.history_retention");
        }
    }
}

/// Runs one due rule, unless another session (a manual run) is running it.
fn run_scheduled(rule: &Rule, due_at: DateTime<Utc>) {
    let scheduled_for = due_at.timestamp_micros() as f64 / 1e6;
    let run_id = BackgroundWorker::transaction(|| {
        if !executor::try_lock_rule(rule.id) {
            return None;
        }
        Some(history::begin(
            None,
            rule.id,
            &rule.name,
            &rule.owner,
            Trigger::Schedule,
            Some(scheduled_for),
        ))
    });
    let Some(run_id) = run_id else {
        log!("pg_token_cleanup: rule \"{}\" is already running in another session; skipping the run due at {due_at}", rule.name);
        return;
    };
    let report = executor::execute(rule, run_id, &signals::stop_requested);
    BackgroundWorker::transaction(|| executor::unlock_rule(rule.id));
    // A failure is recorded and logged like any outcome; the loop goes on with the other rules.
    super::log_run(rule, run_id, Trigger::Schedule, &report);
}

/// Takes this database's scheduler lock (session level); false if another scheduler holds it.
fn try_lock_scheduler() -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_try_advisory_lock($1, 0)",
        &[SCHEDULER_LOCK_CLASS.into()],
    ) == Ok(Some(true))
}

/// Releases every advisory lock of this session and takes the scheduler lock again.
fn relock_scheduler_only() -> bool {
    let _ = Spi::run("SELECT pg_advisory_unlock_all()");
    try_lock_scheduler()
}
