//! The runner of one `token_cleanup.run()` call: a slot of the budget reserved in turn (the
//! caller's role within its share), the runner started with the request in a [`Handoff`], the
//! caller waiting for its result (a cancelled caller ends the run), and the errors `run()` gives
//! when no runner is to be had.

use super::{start, Args};
use crate::errors::refuse;
use crate::gucs;
use crate::history::{self, RunResult, Trigger};
use crate::rules::Rule;
use crate::worker::handoff::Handoff;
use crate::worker::registry::{budget, Kind};
use crate::worker::run::RunRequest;
use pgrx::bgworkers::{BackgroundWorkerStatus, DynamicBackgroundWorker};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Runs `rule` now in a runner of its own and waits for it (`token_cleanup.run()`): waits for a
/// slot of the budget up to the rule's lock_timeout, raises the refusal if none came, and returns
/// how the run ended as the runner handed it back.
pub fn run_manual(rule: Rule) -> RunResult {
    let name = rule.name.clone();
    let patience = rule.limits().lock_timeout_ms;
    let run_id = history::allocate_run_id();
    let handoff = Handoff::create(&RunRequest {
        rule,
        trigger: Trigger::Manual,
        scheduled_for: None,
        run_id: Some(run_id),
    });
    let patience_left = (patience > 0).then(|| Duration::from_millis(patience as u64));
    let worker = start_manual(&handoff, &name, patience_left)
        .unwrap_or_else(|no_worker| no_worker.refuse(&name, patience));
    if wait_for_run(&worker, &handoff).is_err() {
        refuse(
            PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
            format!("the server shut down while rule \"{name}\" was running"),
            format!("See run {run_id} in token_cleanup.runs."),
        );
    }
    // A runner ended by a die inside the rule's code records the run at its exit, without handing
    // it back.
    handoff
        .result()
        .or_else(|| history::recorded(run_id))
        .unwrap_or_else(|| {
            refuse(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("rule \"{name}\" did not run"),
                "The rule was deleted, or it was created in this transaction and is not committed yet: commit, then run it.",
            )
        })
}

/// Reserves a slot of the budget for the runner of a manual run, waiting in turn for one (idle
/// runners and schedulers between runs give theirs up) for at most `patience` (`None`: until the
/// caller is cancelled). `false`: none came in time.
fn reserve_for_manual(patience: Option<Duration>) -> bool {
    // SAFETY: reading this backend's database OID and user.
    let (database, role) = unsafe { (pg_sys::MyDatabaseId, capped_role()) };
    if budget::reserve(Kind::Runner, database, role) {
        return true;
    }
    let since = Instant::now();
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| loop {
        budget::wait(Kind::Runner, database, role);
        if budget::reserve(Kind::Runner, database, role) {
            return true;
        }
        if patience.is_some_and(|p| since.elapsed() >= p) {
            return false;
        }
        // Woken when a slot frees or is handed over.
        nap();
    }))
    // A cancelled caller leaves the queue, and gives back a slot handed to it meanwhile.
    .finally(|| budget::stop_waiting(Kind::Runner, database))
    .execute()
}

/// The role whose share of the budget a `run()` call counts against: the calling role, or none
/// for a superuser (a DBA's calls wait in turn, but hold any number of slots).
///
/// # Safety
/// In a backend with a current user.
unsafe fn capped_role() -> pg_sys::Oid {
    // SAFETY: as the caller promises.
    unsafe {
        if pg_sys::superuser() {
            pg_sys::InvalidOid
        } else {
            pg_sys::GetUserId()
        }
    }
}

/// Why a manual run got no runner: what stayed full.
#[derive(Debug, PartialEq, Eq)]
enum NoWorker {
    /// pg_token_cleanup.max_workers stayed full.
    Budget,
    /// The caller's role held its share of the budget ([`budget::role_share`]) all along.
    RoleShare,
    /// The budget had room, but the postmaster had no background worker slot (other work holds
    /// them, or workers that just left are not reaped yet).
    Server,
}

impl NoWorker {
    /// Raises the error `run()` of `rule` gives, having waited `patience_ms`.
    pub fn refuse(&self, rule: &str, patience_ms: i32) -> ! {
        let (message, hint) = match self {
            NoWorker::Budget => (
                format!(
                    "could not run rule \"{rule}\": all {} workers of pg_token_cleanup.max_workers stayed busy for {patience_ms} ms",
                    gucs::max_workers()
                ),
                "Try again, or raise pg_token_cleanup.max_workers (and max_worker_processes to hold it plus 4, restart needed). \
                 run() waits for a worker up to the rule's lock_timeout."
                    .to_string(),
            ),
            NoWorker::RoleShare => (
                format!(
                    "could not run rule \"{rule}\": run() calls of your role already hold {} of the workers, its share of \
                     pg_token_cleanup.max_workers = {}, and none ended within {patience_ms} ms",
                    budget::role_share(),
                    gucs::max_workers()
                ),
                "A role's run() calls hold at most half the workers beside the launcher (at least one): wait for yours to \
                 finish, or raise pg_token_cleanup.max_workers (and max_worker_processes to hold it plus 4, restart needed)."
                    .to_string(),
            ),
            NoWorker::Server => (
                format!(
                    "could not start a background worker to run rule \"{rule}\": every max_worker_processes slot stayed taken \
                     for {patience_ms} ms"
                ),
                format!(
                    "Other work holds the server's background worker slots: raise max_worker_processes (restart needed) to at \
                     least pg_token_cleanup.max_workers plus {}, or try again.",
                    gucs::WORKER_ROOM
                ),
            ),
        };
        crate::errors::refuse(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            message,
            hint,
        )
    }
}

/// Starts a runner for one manual run, the request in `handoff`, notifying this backend when it
/// stops: reserves a slot of the budget, waiting in turn for one for at most `patience` (`None`:
/// until the caller is cancelled), then asks the postmaster, again within `patience`.
fn start_manual(
    handoff: &Handoff,
    rule_name: &str,
    patience: Option<Duration>,
) -> Result<DynamicBackgroundWorker, NoWorker> {
    // SAFETY: reading this backend's database OID.
    let database = unsafe { pg_sys::MyDatabaseId };
    let since = Instant::now();
    loop {
        let left = patience.map(|p| p.saturating_sub(since.elapsed()));
        if !reserve_for_manual(left) {
            // SAFETY: reading this backend's user.
            let role = unsafe { capped_role() };
            if role != pg_sys::InvalidOid && budget::held_by_role(role) >= budget::role_share() {
                return Err(NoWorker::RoleShare);
            }
            return Err(NoWorker::Budget);
        }
        let worker = start(
            &format!("pg_token_cleanup runner {rule_name}"),
            database,
            Args::Manual {
                handle: handoff.handle(),
            },
        );
        if let Some(worker) = worker {
            return Ok(worker);
        }
        budget::cancel(Kind::Runner, database);
        if patience.is_some_and(|p| since.elapsed() >= p) {
            return Err(NoWorker::Server);
        }
        nap();
    }
}

/// Waits up to 100 ms on this backend's latch, then checks for interrupts (a cancel ends the
/// wait with its error). The timeout bounds a missed wake-up.
fn nap() {
    // SAFETY: waits on this backend's own latch and resets it.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            100,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

/// Waits until the runner of a manual run says it is done (its outcome committed), or stopped
/// without saying so; `Err` if the postmaster died. A caller that is cancelled (pg_cancel_backend,
/// its own statement_timeout) or terminated while it waits ends the run too: a run nobody waits for
/// would hold its worker slot for ever, and a few cancelled calls would take every slot.
fn wait_for_run(
    worker: &DynamicBackgroundWorker,
    handoff: &Handoff,
) -> Result<(), BackgroundWorkerStatus> {
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        wait_for_done(worker, handoff)
    }))
    .catch_others(|caught| {
        if let Some(pid) = started_pid(worker) {
            // SAFETY: signals the runner this call started (it records the run interrupted).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        caught.rethrow()
    })
    .execute()
}

/// The pid of the runner this call started, once the postmaster has started it: a runner still
/// starting when its caller is cancelled would otherwise run with nobody to end it. Waits for the
/// start up to [`START_GRACE`]; `None` if the runner stopped or never started by then.
fn started_pid(worker: &DynamicBackgroundWorker) -> Option<i32> {
    let deadline = Instant::now() + START_GRACE;
    loop {
        match worker.pid() {
            Ok(pid) => return Some(pid),
            Err(BackgroundWorkerStatus::NotYetStarted) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return None,
        }
    }
}

/// How long a cancelled caller waits for its runner to start, so as to stop it.
const START_GRACE: Duration = Duration::from_secs(2);

/// [`wait_for_run`]'s wait.
fn wait_for_done(
    worker: &DynamicBackgroundWorker,
    handoff: &Handoff,
) -> Result<(), BackgroundWorkerStatus> {
    loop {
        // SAFETY: this backend's own latch, reset before the flag is read (no wake-up is lost).
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        if handoff.done() {
            return Ok(());
        }
        match worker.pid() {
            // The postmaster sets this backend's latch when the worker starts and when it stops.
            Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => {}
            Err(BackgroundWorkerStatus::PostmasterDied) => {
                return Err(BackgroundWorkerStatus::PostmasterDied)
            }
            Err(_) => return Ok(()),
        }
        // SAFETY: waits on this backend's latch; a second's timeout bounds any missed signal.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32,
                1000,
                pg_sys::PG_WAIT_EXTENSION,
            );
        }
        pgrx::check_for_interrupts!();
    }
}
