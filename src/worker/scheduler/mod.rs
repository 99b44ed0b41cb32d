//! The scheduler: one dynamic worker per database with the extension. Its loop reads like a table of
//! contents: notice rule changes → collect finished runs → reload the rules that changed (see
//! `reload`) → hand due rules to runners → prune history → sleep until the next due time, a
//! runner's end, or a signal.
//!
//! Due rules go to pooled runners (see `runner`), at most `pg_token_cleanup.max_parallel_runs` at
//! once, round-robin by owner, each owner at most its share (see `dispatch` and [`runs`]). So a long
//! purge delays no other rule beyond the slot limit, and nothing a rule does (a lock it waits for, a
//! statement that never ends) stalls the scheduler. When the cluster's worker budget has no runner
//! to give, the scheduler runs due rules itself, one at a time; and when another database or a
//! `run()` waits for a slot, it hands its own over between runs, once it has served its turn
//! ([`MIN_TURN`], [`MAX_TURN`]), and the launcher starts it again when its next rule is due.
//!
//! Rule changes arrive as a relcache invalidation of the rules table, sent at commit (COMMIT
//! PREPARED included) by the rules trigger, which also sets this process's latch. The scheduler
//! reads invalidations at least every [`POLL`], so a change made without the latch (two-phase
//! commit) still takes effect within it. Reloads are coalesced: at most one per [`RELOAD_GAP`],
//! whatever the number of wake-ups. Its own statements wait at most [`OWN_LOCK_TIMEOUT`] for a
//! lock: when it cannot read the rules (a role holds `LOCK TABLE token_cleanup.rules`), it keeps
//! serving the rules it has and tries again.

use super::agenda::Agenda;
use super::dispatch::RoundRobin;
use super::handoff::Handoff;
use super::registry::{self, budget, Kind, Refused};
use super::{extension_present, signals};
use crate::errors::{in_subtransaction, Error};
use crate::gucs;
use crate::history;
use crate::rules::Rule;
use chrono::Utc;
use pgrx::bgworkers::{BackgroundWorker, DynamicBackgroundWorker};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod rules;
mod runs;

/// Longest sleep: invalidations (rule changes committed by two-phase commit) are read this often.
const POLL: Duration = Duration::from_secs(1);
/// At most one reload of the rules per this much time, however many wake-ups arrive.
const RELOAD_GAP: Duration = Duration::from_millis(250);
/// How long the scheduler's own statements wait for a lock.
const OWN_LOCK_TIMEOUT: &str = "500ms";
/// Pause after an unexpected error in the loop before trying again.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// History is pruned every tenth of the retention, within these bounds.
const PRUNE_EVERY_MIN: Duration = Duration::from_secs(10);
const PRUNE_EVERY_MAX: Duration = Duration::from_secs(600);
/// A runner started this long ago that has not registered is no longer waited for.
const SPAWN_PATIENCE: Duration = Duration::from_secs(5);
/// The same warning (no worker slot, rules unreadable) at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// A scheduler serves at least this long before it gives its slot to a waiting database or run()
/// (and so runs what is due when it starts)…
const MIN_TURN: Duration = Duration::from_millis(500);
/// …and gives it at the first pause between runs after this long, even with rules still due.
const MAX_TURN: Duration = Duration::from_secs(5);
/// While the database's extension is at an older version than the library, the version is read
/// again this often (ALTER EXTENSION … UPDATE also wakes the scheduler at once).
const OUTDATED_RECHECK: Duration = Duration::from_secs(5);

/// Set by the relcache callback when the rules table is invalidated (a committed rule change).
static RULES_CHANGED: AtomicBool = AtomicBool::new(false);
/// The rules table's OID, for the callback to recognise it.
static RULES_OID: AtomicU32 = AtomicU32::new(0);

/// A rule in service, and the version of its row it was read at.
struct Served {
    rule: Rule,
    version: i64,
}

/// A run handed to a runner and not yet finished.
struct InFlight {
    runner_slot: usize,
    runner_pid: i32,
    table: String,
    owner: String,
    started: Instant,
    /// The request, then the result: kept mapped until the runner is done with it.
    handoff: Handoff,
}

struct Scheduler {
    database: pg_sys::Oid,
    database_name: String,
    agenda: Agenda,
    /// The enabled rules, with the row version each was read at (see `reload`).
    rules: HashMap<i64, Served>,
    /// How many roles own them: what an owner's share of max_parallel_runs divides by (counted at
    /// each reload, not at each dispatch).
    owners: usize,
    reload_due: bool,
    /// Reloads are coalesced: none before this instant.
    next_reload_at: Option<Instant>,
    /// The extension's version in this database, while it is not the library's (warned once).
    outdated: Option<String>,
    /// Runs a crash left `running` were marked `interrupted` (once the tables are this version's).
    orphans_marked: bool,
    in_flight: HashMap<i64, InFlight>,
    turn: RoundRobin,
    /// Runners started and not yet registered.
    starting: Vec<(DynamicBackgroundWorker, Instant)>,
    last_prune: Option<Instant>,
    last_warning: Option<(String, Instant)>,
    /// When this scheduler started serving (its turn, when databases take turns).
    serving_since: Instant,
    /// Since when the postmaster has refused to start runners (warned past a while).
    spawn_failing_since: Option<Instant>,
}

/// Entry point of a scheduler; the argument is the database OID.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_token_cleanup_scheduler_main(arg: pg_sys::Datum) {
    signals::install();
    // SAFETY: the launcher passes an OID datum.
    let database = unsafe { pg_sys::Oid::from_datum(arg, false) }.expect("database OID argument");
    super::connect(database);

    // Registered first, into the slot the launcher reserved: a probe of a database without the
    // extension gives its slot back when it exits, at once.
    match registry::register(Kind::Scheduler, database, 0) {
        Ok(()) => {}
        Err(Refused::AlreadyServed) => {
            debug1!(
                "pg_token_cleanup: scheduler not starting: another scheduler serves this database"
            );
            return;
        }
        Err(Refused::Full) => {
            debug1!("pg_token_cleanup: scheduler not starting: its slot of the budget lapsed");
            return;
        }
    }
    if !looked_for_extension(database) {
        registry::set_no_extension(database, true);
        debug1!("pg_token_cleanup: scheduler not starting: extension not installed");
        return;
    }
    // SAFETY: registering a callback that only sets a flag and the latch.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(rules_invalidated), pg_sys::Datum::from(0))
    };
    registry::come_back_at(database, 0);
    log!("pg_token_cleanup: scheduler started");

    let mut scheduler = Scheduler {
        database,
        database_name: database_name(database),
        agenda: Agenda::new(gucs::timezone()),
        rules: HashMap::new(),
        owners: 0,
        reload_due: true,
        next_reload_at: None,
        outdated: None,
        orphans_marked: false,
        in_flight: HashMap::new(),
        turn: RoundRobin::default(),
        starting: Vec::new(),
        last_prune: None,
        last_warning: None,
        serving_since: Instant::now(),
        spawn_failing_since: None,
    };
    while !signals::stop_requested() {
        let step = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| Ok(scheduler.step())))
            .catch_others(|e| {
                // SAFETY: what PostgresMain does after an error: abort the transaction and go on.
                unsafe { pg_sys::AbortCurrentTransaction() };
                Err(Error::from_caught(e))
            })
            .execute();
        let sleep = match step {
            Ok(sleep) => sleep,
            Err(_) if !looked_for_extension(database) => None,
            Err(e) => {
                scheduler.warn(&format!("pg_token_cleanup: scheduler error: {e}; retrying"));
                Some(ERROR_BACKOFF)
            }
        };
        match sleep {
            Some(_) if scheduler.gave_slot_away() => {
                debug1!("pg_token_cleanup: scheduler gave its slot to a waiting database or run()");
                break;
            }
            Some(sleep) => {
                signals::wait(sleep);
            }
            None => {
                registry::set_no_extension(database, true);
                log!("pg_token_cleanup: extension dropped from this database; scheduler exiting");
                break;
            }
        }
    }
    scheduler.stop_runners();
    log!("pg_token_cleanup: scheduler stopped");
}

/// Whether the extension is in this database, recording for the launcher that this look answers
/// every ask it had received before (their CREATE EXTENSION was committed before the look began).
fn looked_for_extension(database: pg_sys::Oid) -> bool {
    let wakes = registry::launcher_wakes();
    // On a Citus worker the extension is there because Citus copied CREATE EXTENSION from the
    // coordinator, which keeps the rules and runs them: nothing to schedule here.
    let present =
        BackgroundWorker::transaction(|| extension_present() && !crate::citus::is_worker_node());
    registry::looked_for_extension(database, wakes);
    present
}

/// Relcache invalidation callback: only a flag and the latch (no catalog access is allowed here).
#[pg_guard]
unsafe extern "C-unwind" fn rules_invalidated(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let rules = RULES_OID.load(Ordering::SeqCst);
    if relid == pg_sys::InvalidOid || rules == 0 || u32::from(relid) == rules {
        RULES_CHANGED.store(true, Ordering::SeqCst);
        // SAFETY: setting this process's own latch.
        unsafe { pg_sys::SetLatch(pg_sys::MyLatch) };
    }
}

fn database_name(database: pg_sys::Oid) -> String {
    BackgroundWorker::transaction(|| super::database_name(database))
}

impl Scheduler {
    /// One pass of the loop; returns how long to sleep, or `None` to exit (extension dropped).
    fn step(&mut self) -> Option<Duration> {
        if signals::reload_config_if_asked() && self.agenda.timezone() != gucs::timezone() {
            // A new pg_token_cleanup.timezone moves the rules without a zone of their own.
            self.reload_due = true;
        }
        // SAFETY: reads pending invalidation messages; our callback only sets a flag.
        unsafe { pg_sys::AcceptInvalidationMessages() };
        if RULES_CHANGED.swap(false, Ordering::SeqCst) {
            self.reload_due = true;
            if self.outdated.is_some() {
                // ALTER EXTENSION … UPDATE: read the version now, not at the next recheck.
                self.next_reload_at = None;
            }
        }
        self.collect_finished();
        let reload_now = self.reload_due && self.next_reload_at.is_none_or(|t| Instant::now() >= t);
        if reload_now {
            // Unreadable rules (a lock held on them) keep the loaded ones in service below.
            self.reload_rules()?;
        }
        // Rules due at `now` and not started wait for a slot or a table (a runner's end wakes us);
        // rules that fall due after `now`, even while this pass goes on, end the sleep.
        let now = Utc::now();
        // A rule run here took time, and more may be due: look again at once.
        if gucs::enabled() && self.dispatch_due(now) {
            return Some(Duration::ZERO);
        }
        self.prune_if_due();
        let in_flight = &self.in_flight;
        let next = self
            .agenda
            .next_wake_after(now, |id| !in_flight.contains_key(&id));
        let mut sleep = match next {
            // Rounded up to the millisecond: waking a hair early would find nothing due.
            Some(t) => (t - Utc::now())
                .to_std()
                .map_or(Duration::ZERO, |d| d + Duration::from_micros(999)),
            None => POLL,
        };
        if let (true, Some(at)) = (self.reload_due, self.next_reload_at) {
            sleep = sleep.min(at.saturating_duration_since(Instant::now()));
        }
        Some(sleep.min(POLL))
    }

    /// Between runs, hands this scheduler's slot to whoever waits for one (another database's
    /// scheduler, a `run()`), once it has served its turn: at a moment with nothing due after
    /// [`MIN_TURN`], at any pause between runs after [`MAX_TURN`]. The launcher starts it again when
    /// its next rule is due. `true`: this process must exit now.
    fn gave_slot_away(&mut self) -> bool {
        let served = self.serving_since.elapsed();
        if served < MIN_TURN || !self.in_flight.is_empty() || !budget::someone_waits() {
            return false;
        }
        let now = Utc::now();
        let due_now = !self.agenda.due(now).is_empty();
        if due_now && served < MAX_TURN {
            return false;
        }
        let back = if due_now {
            now
        } else {
            self.agenda
                .next_wake_after(now, |_| true)
                .unwrap_or(now + POLL)
        };
        registry::come_back_at(self.database, crate::pgtime::to_pg(back));
        if budget::give_to_waiter() {
            return true;
        }
        registry::come_back_at(self.database, 0);
        false
    }

    fn prune_if_due(&mut self) {
        if self.outdated.is_some() {
            return;
        }
        let retention = Duration::from_secs(gucs::history_retention_seconds().max(0) as u64);
        let every = (retention / 10).clamp(PRUNE_EVERY_MIN, PRUNE_EVERY_MAX);
        if self.last_prune.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_prune = Some(Instant::now());
        let pruned = BackgroundWorker::transaction(|| {
            crate::owner::set_for_transaction("lock_timeout", OWN_LOCK_TIMEOUT);
            in_subtransaction(|| history::prune(gucs::history_retention_seconds()))
        });
        match pruned {
            Ok(n) if n > 0 => log!(
                "pg_token_cleanup: pruned {n} run(s) older than pg_token_cleanup.history_retention"
            ),
            Ok(_) => {}
            Err(_) if !looked_for_extension(self.database) => {}
            Err(e) => self.warn(&format!("pg_token_cleanup: could not prune history: {e}")),
        }
    }

    /// Logs a warning, but the same one at most every [`WARN_EVERY`].
    fn warn(&mut self, message: &str) {
        if self
            .last_warning
            .as_ref()
            .is_some_and(|(m, at)| m == message && at.elapsed() < WARN_EVERY)
        {
            return;
        }
        warning!("{message}");
        self.last_warning = Some((message.to_string(), Instant::now()));
    }
}
