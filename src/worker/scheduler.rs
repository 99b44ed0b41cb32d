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
/// History is pruned every tenth of the retention, within these bounds.
const PRUNE_EVERY_MIN: Duration = Duration::from_secs(10);
const PRUNE_EVERY_MAX: Duration = Duration::from_secs(600);
/// How often a rule whose table is locked by another session is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(100);
/// Advisory lock class that keeps a second scheduler out of a database ("tkns").
const SCHEDULER_LOCK_CLASS: i32 = 0x746b_6e73;

struct Scheduler {
    agenda: Agenda,
    rules: HashMap<i64, Rule>,
    /// Due rules whose table another session has locked, with the time of the first attempt: they
    /// are retried every [`LOCK_RETRY`] until their lock_timeout, while other rules run on time.
    waiting: HashMap<i64, Instant>,
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
    super::connect(database);

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
        waiting: HashMap::new(),
        reload: true,
        last_prune: None,
    };
    while !signals::stop_requested() {
        let step = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| scheduler.step()))
            .catch_others(|e| {
                let e = crate::errors::describe(e);
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
        let waiting = &self.waiting;
        let sleep = match self.agenda.next_wake_where(|id| !waiting.contains_key(&id)) {
            Some(t) => (t - Utc::now()).to_std().unwrap_or(Duration::ZERO),
            None => MAX_SLEEP,
        };
        let sleep = if self.waiting.is_empty() {
            sleep
        } else {
            sleep.min(LOCK_RETRY)
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
        let rules = &self.rules;
        self.waiting.retain(|id, _| rules.contains_key(id));
        debug1!(
            "pg_token_cleanup: loaded {} enabled rule(s)",
            self.rules.len()
        );
        // A reload of many rules briefly holds two copies and the query's result; give the freed
        // memory back to the system so the worker's footprint follows its live data.
        // SAFETY: glibc's malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        true
    }

    /// Runs every due rule once, earliest first, stopping early on SIGTERM. A rule whose table is
    /// locked stays due and is tried again on the next pass.
    fn run_due(&mut self) {
        for (id, due_at) in self.agenda.due(Utc::now()) {
            if signals::stop_requested() {
                return;
            }
            if let Some(rule) = self.rules.get(&id).cloned() {
                if run_scheduled(&rule, due_at, self.waiting.get(&id).copied())
                    == Attempt::TableLocked
                {
                    self.waiting.entry(id).or_insert_with(Instant::now);
                    continue;
                }
            }
            self.waiting.remove(&id);
            self.agenda.done(id, Utc::now());
        }
    }

    fn prune_if_due(&mut self) {
        let retention = Duration::from_secs(gucs::history_retention_seconds().max(0) as u64);
        let every = (retention / 10).clamp(PRUNE_EVERY_MIN, PRUNE_EVERY_MAX);
        if self.last_prune.is_some_and(|t| t.elapsed() < every) {
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

#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// Ran, failed, or was skipped: the rule is done with this due time.
    Done,
    /// Its table is locked by another session and its lock_timeout has not passed: try again.
    TableLocked,
}

/// Runs one due rule, unless another session (a manual run) is running it or its table is locked.
/// `waiting_since` is the first attempt of a rule whose table was locked.
fn run_scheduled(rule: &Rule, due_at: DateTime<Utc>, waiting_since: Option<Instant>) -> Attempt {
    let scheduled_for = due_at.timestamp_micros() as f64 / 1e6;
    let begin = |id| {
        history::begin(
            id,
            rule.id,
            &rule.name,
            &rule.owner,
            Trigger::Schedule,
            Some(scheduled_for),
        )
    };
    let started = BackgroundWorker::transaction(|| {
        if !executor::try_lock_rule(rule.id) {
            return None;
        }
        if executor::table_locked_by_others(rule) {
            let lock_timeout = rule.limits().lock_timeout_ms;
            let waited = waiting_since.map_or(0, |t| t.elapsed().as_millis());
            if lock_timeout <= 0 || waited < lock_timeout as u128 {
                executor::unlock_rule(rule.id);
                return Some(Err(Attempt::TableLocked));
            }
            let run_id = begin(None);
            let why = format!(
                "could not lock table {} within lock_timeout ({lock_timeout} ms): another session holds a conflicting lock (SQLSTATE 55P03)",
                rule.table_name
            );
            history::finish(
                run_id,
                &history::Outcome::Failed(why.clone()),
                &history::Counts::default(),
            );
            executor::unlock_rule(rule.id);
            log!(
                "pg_token_cleanup: rule \"{}\" run {run_id} (schedule) failed: {why}",
                rule.name
            );
            return Some(Err(Attempt::Done));
        }
        Some(Ok(begin(None)))
    });
    let run_id = match started {
        None => {
            log!("pg_token_cleanup: rule \"{}\" is already running in another session; skipping the run due at {due_at}", rule.name);
            return Attempt::Done;
        }
        Some(Err(attempt)) => return attempt,
        Some(Ok(run_id)) => run_id,
    };
    let report = executor::execute(rule, run_id, &signals::stop_requested);
    BackgroundWorker::transaction(|| executor::unlock_rule(rule.id));
    // A failure is recorded and logged like any outcome; the loop goes on with the other rules.
    super::log_run(rule, run_id, Trigger::Schedule, &report);
    Attempt::Done
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
