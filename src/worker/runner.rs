//! Runners: dynamic workers that perform runs, so that a long purge never holds up other rules.
//! - A **pooled** runner serves its database's scheduler: it waits for a job handed over in the
//!   registry, performs it, reports the run it recorded, and waits for the next; it leaves when idle
//!   for [`IDLE_EXIT`], when its scheduler is gone, or at once when idle while someone waits for a
//!   slot of the cluster's worker budget (its slot goes to them). A scheduler keeps at most
//!   `pg_token_cleanup.max_parallel_runs` of them.
//! - A **manual** runner performs the one run of a `token_cleanup.run()` call while the calling
//!   session waits for it.
//!
//! Both take a [`RunRequest`] from a [`Handoff`], go through the same [`run::perform`], and hand
//! the [`RunResult`] back through it.

use super::handoff::{self, Handoff};
use super::registry::{self, budget, Kind};
use super::run::{self, RunRequest};
use super::{signals, LIBRARY, RUNNER_TYPE};
use crate::catalog::Rule;
use crate::errors::refuse;
use crate::gucs;
use crate::history::{self, RunResult, Trigger};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// A pooled runner idle this long exits (it is started again when needed): an every-minute rule
/// keeps no runner, an every-second one keeps its runner.
const IDLE_EXIT: Duration = Duration::from_secs(5);
/// How often an idle pooled runner checks that its scheduler is still there.
const POLL: Duration = Duration::from_secs(1);

/// Starts a pooled runner for the calling scheduler, into the slot of the budget it reserved.
/// `None` when the postmaster has no worker slot free.
pub fn spawn_pooled(database: pg_sys::Oid, database_name: &str) -> Option<DynamicBackgroundWorker> {
    // SAFETY: reading this process's pid.
    let scheduler_pid = unsafe { pg_sys::MyProcPid };
    start(
        &format!("pg_token_cleanup runner {database_name}"),
        database,
        Args::Pool { scheduler_pid },
    )
}

/// What a runner is started for, passed in its `bgw_extra`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Args {
    /// Serve the scheduler with this pid.
    Pool { scheduler_pid: i32 },
    /// Perform the run requested in the handoff segment with this handle.
    Manual { handle: u32 },
}

impl Args {
    fn to_extra(self) -> String {
        match self {
            Args::Pool { scheduler_pid } => format!("pool {scheduler_pid}"),
            Args::Manual { handle } => format!("manual {handle}"),
        }
    }

    fn parse(extra: &str) -> Option<Args> {
        let (mode, number) = extra.trim().split_once(' ')?;
        match mode {
            "pool" => number
                .parse()
                .ok()
                .map(|scheduler_pid| Args::Pool { scheduler_pid }),
            "manual" => number.parse().ok().map(|handle| Args::Manual { handle }),
            _ => None,
        }
    }
}

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

/// Why a manual run got no runner.
#[derive(Debug, PartialEq, Eq)]
pub enum NoWorker {
    /// pg_token_cleanup.max_workers stayed full.
    BudgetFull,
    /// The caller's role held its share of the budget ([`budget::role_share`]) all along.
    RoleShareFull,
    /// The budget had room, but the postmaster had no background worker slot (other work holds
    /// them, or workers that just left are not reaped yet).
    ServerFull,
}

impl NoWorker {
    /// Raises the error `run()` of `rule` gives, having waited `patience_ms`.
    pub fn refuse(&self, rule: &str, patience_ms: i32) -> ! {
        let (message, hint) = match self {
            NoWorker::BudgetFull => (
                format!(
                    "could not run rule \"{rule}\": all {} workers of pg_token_cleanup.max_workers stayed busy for {patience_ms} ms",
                    gucs::max_workers()
                ),
                "Try again, or raise pg_token_cleanup.max_workers (and max_worker_processes to hold it plus 4, restart needed). \
                 run() waits for a worker up to the rule's lock_timeout."
                    .to_string(),
            ),
            NoWorker::RoleShareFull => (
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
            NoWorker::ServerFull => (
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
                return Err(NoWorker::RoleShareFull);
            }
            return Err(NoWorker::BudgetFull);
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
            return Err(NoWorker::ServerFull);
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
        if let Ok(pid) = worker.pid() {
            // SAFETY: signals the runner this call started (it records the run interrupted).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        caught.rethrow()
    })
    .execute()
}

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

fn start(title: &str, database: pg_sys::Oid, args: Args) -> Option<DynamicBackgroundWorker> {
    // SAFETY: reading this process's pid.
    let my_pid = unsafe { pg_sys::MyProcPid };
    BackgroundWorkerBuilder::new(truncated(title, 90))
        .set_type(RUNNER_TYPE)
        .set_library(LIBRARY)
        .set_function("pg_token_cleanup_runner_main")
        .enable_spi_access()
        .set_restart_time(None)
        .set_argument(database.into_datum())
        .set_extra(&args.to_extra())
        .set_notify_pid(my_pid)
        .load_dynamic()
        .ok()
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary (a
/// worker's name has at most 96 bytes; rule names may hold multi-byte characters).
fn truncated(text: &str, max: usize) -> &str {
    let end = (0..=max.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_token_cleanup_runner_main(arg: pg_sys::Datum) {
    signals::install();
    // SAFETY: the spawner passes an OID datum.
    let database = unsafe { pg_sys::Oid::from_datum(arg, false) }.expect("database OID argument");
    let extra = BackgroundWorker::get_extra().to_string();
    let Some(args) = Args::parse(&extra) else {
        warning!("pg_token_cleanup: runner started without its request ({extra:?})");
        return;
    };
    super::connect(database);
    match args {
        Args::Manual { handle } => {
            if registry::register(Kind::Runner, database, 0).is_err() {
                warning!("pg_token_cleanup: runner not starting: its slot of the budget lapsed");
                return;
            }
            match handoff::read::<RunRequest>(handle) {
                Some(request) => handoff::hand_back(handle, &run::perform(&request)),
                None => {
                    warning!("pg_token_cleanup: the caller of run() left before its runner started")
                }
            }
        }
        Args::Pool { scheduler_pid } => serve(database, scheduler_pid),
    }
}

/// A pooled runner's loop: take a job, perform it, report, wait for the next.
fn serve(database: pg_sys::Oid, scheduler_pid: i32) {
    if registry::register(Kind::Runner, database, scheduler_pid).is_err() {
        debug1!("pg_token_cleanup: runner not starting: its slot of the budget lapsed");
        return;
    }
    // The scheduler started this runner for a due rule: it can hand it over now.
    registry::wake_scheduler_pid(scheduler_pid);
    let mut idle_since = Instant::now();
    while !signals::stop_requested() {
        signals::reload_config_if_asked();
        if let Some(handle) = registry::take() {
            if let Some(request) = handoff::read::<RunRequest>(handle) {
                handoff::hand_back(handle, &run::perform(&request));
            }
            registry::done();
            idle_since = Instant::now();
            continue;
        }
        if budget::someone_waits() && budget::give_to_waiter() {
            break;
        }
        let idle_too_long = idle_since.elapsed() >= IDLE_EXIT;
        if (idle_too_long || !registry::scheduler_alive(scheduler_pid)) && registry::leave_if_idle()
        {
            break;
        }
        signals::wait(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::{truncated, Args};

    #[test]
    fn start_arguments_round_trip() {
        for args in [
            Args::Pool {
                scheduler_pid: 4242,
            },
            Args::Manual { handle: u32::MAX },
        ] {
            assert_eq!(Args::parse(&args.to_extra()), Some(args));
        }
        assert_eq!(Args::parse("pool"), None);
        assert_eq!(Args::parse("manual x"), None);
        assert_eq!(Args::parse("other 1"), None);
    }

    #[test]
    fn titles_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("abc", 90), "abc");
        assert_eq!(truncated("abcdef", 3), "abc");
        // "é" is two bytes: byte 2 falls inside the second one.
        assert_eq!(truncated("aéé", 2), "a");
        assert_eq!(truncated("aéé", 3), "aé");
        assert_eq!(truncated("日本", 4), "日");
    }
}
