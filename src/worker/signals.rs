//! Signals and waiting for the workers.
//!
//! SIGHUP: pgrx's handler (flag + latch); the loop calls `ProcessConfigFile` itself.
//! SIGTERM: our handler sets a stop flag and the latch. While an owner statement (a collecting scan
//! or a batch) runs, it also raises PostgreSQL's own *die* (`ProcDiePending`), as `die()` does in a
//! backend: the statement ends at its next interrupt check with a FATAL that no PL/pgSQL
//! `EXCEPTION` block can catch (a query cancel can be caught, `WHEN query_canceled`, and a hostile
//! function looping on that would outlive every stop). The run is recorded `interrupted` on the
//! way out ([`on_exit_record`]). Outside owner statements the worker stops between batches, where
//! it records the run itself.
//! Timeouts: a statement of the owner's code that is still running [`ESCALATION_GRACE`] after its
//! statement timeout (its cancel was swallowed), or after the run's `max_run_duration`, is ended
//! the same way.
//! SIGUSR1: PostgreSQL's handler sets the latch; the rules trigger and CREATE EXTENSION use it to
//! wake a scheduler or the launcher.

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);
static IN_OWNER_STATEMENT: AtomicBool = AtomicBool::new(false);

/// How long an owner statement may go on after its statement timeout fired (a statement that
/// honours the cancel ends at once) or after the run's deadline (a batch in flight may finish)
/// before the worker ends it with a die.
pub const ESCALATION_GRACE: Duration = Duration::from_secs(1);

/// Why this worker raised a die inside owner code: what the run's record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DieReason {
    None = 0,
    Sigterm = 1,
    /// The statement timeout's cancel was ignored.
    StatementTimeout = 2,
    /// The run's max_run_duration passed while owner code ran.
    RunDuration = 3,
}

static DIE_REASON: AtomicU8 = AtomicU8::new(DieReason::None as u8);
/// The timeout id PostgreSQL assigned to our escalation timer; -1 until registered.
static ESCALATION_TIMEOUT: AtomicI32 = AtomicI32::new(-1);
/// What the escalation timer, when it fires, says ended the statement.
static ESCALATION_REASON: AtomicU8 = AtomicU8::new(DieReason::None as u8);
/// The run this process has recorded `running` and not yet finished (0: none).
static CURRENT_RUN: AtomicI64 = AtomicI64::new(0);
/// When the current run must be over (max_run_duration), as microseconds of PostgreSQL's clock;
/// 0: no deadline.
static RUN_DEADLINE: AtomicI64 = AtomicI64::new(0);

extern "C-unwind" {
    // utils/timeout.h, not in pgrx's bindings. Called only through `guarded`.
    fn RegisterTimeout(id: i32, handler: Option<unsafe extern "C-unwind" fn()>) -> i32;
    fn enable_timeout_at(id: i32, fin_time: pg_sys::TimestampTz);
    fn disable_timeout(id: i32, keep_indicator: bool);
}

/// Any id at or above USER_TIMEOUT asks RegisterTimeout for a free user timeout. USER_TIMEOUT is 11
/// to 13 in PostgreSQL 14 to 18, MAX_TIMEOUTS 10 more.
const ASK_FOR_USER_TIMEOUT: i32 = 20;

/// Installs the handlers and unblocks signals; call first thing in a worker's main.
pub fn install() {
    // Ours first: attach_signal_handlers unblocks signals, and a SIGTERM arriving after that must
    // already find this handler.
    // SAFETY: installing an async-signal-safe SIGTERM handler for this process.
    unsafe {
        // PostgreSQL 18 made pqsignal a macro for the backend's pqsignal_be.
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(on_sigterm));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(on_sigterm));
    }
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    crate::owner::install_statement_guard(guard_statement);
}

unsafe extern "C-unwind" fn on_sigterm(_signal: i32) {
    // SetLatch may change errno (a write to the self-pipe or a kill); the interrupted code may be
    // about to read it. PostgreSQL's own handlers save and restore it the same way.
    // SAFETY: errno is thread-local; reading and writing it is async-signal-safe.
    let saved_errno = unsafe { *libc::__errno_location() };
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: only sig_atomic_t stores and SetLatch, as PostgreSQL's own die() does.
    unsafe {
        if IN_OWNER_STATEMENT.load(Ordering::SeqCst) {
            raise_die(DieReason::Sigterm);
        }
        pg_sys::SetLatch(pg_sys::MyLatch);
        *libc::__errno_location() = saved_errno;
    }
}

/// Asks the running statement to end with PostgreSQL's die: a FATAL at its next interrupt check.
///
/// # Safety
/// Async-signal-safe: only atomics and sig_atomic_t stores.
unsafe fn raise_die(reason: DieReason) {
    let _ = DIE_REASON.compare_exchange(
        DieReason::None as u8,
        reason as u8,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    // SAFETY: what PostgreSQL's own die() stores.
    unsafe {
        (&raw mut pg_sys::ProcDiePending).write_volatile(1);
        (&raw mut pg_sys::InterruptPending).write_volatile(1);
    }
}

/// The escalation timer's handler (runs in the SIGALRM handler, like PostgreSQL's own).
unsafe extern "C-unwind" fn on_escalation() {
    // SAFETY: errno saved and restored as in on_sigterm; only atomics and SetLatch.
    unsafe {
        let saved_errno = *libc::__errno_location();
        if IN_OWNER_STATEMENT.load(Ordering::SeqCst) {
            let reason = match ESCALATION_REASON.load(Ordering::SeqCst) {
                3 => DieReason::RunDuration,
                _ => DieReason::StatementTimeout,
            };
            raise_die(reason);
        }
        pg_sys::SetLatch(pg_sys::MyLatch);
        *libc::__errno_location() = saved_errno;
    }
}

/// Why a die ended this worker's owner statement, if one did.
pub fn die_reason() -> DieReason {
    match DIE_REASON.load(Ordering::SeqCst) {
        1 => DieReason::Sigterm,
        2 => DieReason::StatementTimeout,
        3 => DieReason::RunDuration,
        _ => DieReason::None,
    }
}

/// Sets (or, with `None`, clears) the run this process is performing: if the process ends before
/// the run is finished, [`on_exit_record`] records it. Clearing it clears its deadline too.
pub fn set_current_run(run_id: Option<i64>) {
    CURRENT_RUN.store(run_id.unwrap_or(0), Ordering::SeqCst);
    set_progress(0, 0);
    if run_id.is_none() {
        set_run_deadline(None);
    }
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if run_id.is_some() && !REGISTERED.swap(true, Ordering::SeqCst) {
        // Registered after the registry's own exit callback, so it runs before it (PostgreSQL runs
        // them in reverse): the run is recorded while its claim still stands.
        // SAFETY: registers a callback for this process's exit.
        unsafe { pg_sys::before_shmem_exit(Some(on_exit_record), pg_sys::Datum::from(0)) };
    }
}

/// Rows deleted and batches committed by the current run so far (the run's row gets them only
/// every few seconds; an exit mid-run records these).
static PROGRESS_ROWS: AtomicI64 = AtomicI64::new(0);
static PROGRESS_BATCHES: AtomicI64 = AtomicI64::new(0);

/// Records the current run's progress after a committed batch, here and in the registry (where
/// `token_cleanup.progress` reads it).
pub fn set_progress(rows_deleted: i64, batches: i32) {
    PROGRESS_ROWS.store(rows_deleted, Ordering::SeqCst);
    PROGRESS_BATCHES.store(i64::from(batches), Ordering::SeqCst);
    super::registry::set_progress(rows_deleted, batches);
}

/// Why a run stopped by its scheduler to make room for another owner's rule ended.
pub fn preempted() -> crate::errors::Error {
    crate::errors::Error::new(
        PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
        "stopped to give its runner to another owner's due rule: the rule's owner held more than its share of \
         pg_token_cleanup.max_parallel_runs; committed batches stay deleted, the rest go in the next run",
    )
    .with_hint("Runs of one owner take at most max_parallel_runs divided by the owners with rules in the database while others wait.")
}

/// What the record of a run ended by this process's exit says.
fn unfinished_reason(reason: DieReason) -> crate::errors::Error {
    use crate::errors::Error;
    match reason {
        DieReason::StatementTimeout => Error::new(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "the rule's code ran past its statement timeout and ignored the cancel; the worker ended it",
        )
        .with_hint("A function the condition or a trigger calls catches query_canceled: fix it. Committed batches stay deleted."),
        DieReason::RunDuration => Error::new(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "the rule's code was still running at the run's max_run_duration; the worker ended it",
        )
        .with_hint("Committed batches stay deleted; the rest go in the next run."),
        DieReason::Sigterm if super::registry::preempted() => preempted(),
        DieReason::Sigterm => Error::new(
            PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
            "stopped by SIGTERM while the rule's code ran (server shutdown, DROP DATABASE or pg_terminate_backend); \
             committed batches stay deleted, the rest go in the next run",
        ),
        DieReason::None => Error::new(
            PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
            "the worker running it exited before the run finished (a FATAL error or the postmaster's exit); \
             committed batches stay deleted, the rest go in the next run",
        ),
    }
}

/// Sets when the current run must be over: its max_run_duration from now (when its batches start,
/// as the executor counts it); `None`: no deadline.
pub fn set_run_deadline(max_duration: Option<Duration>) {
    let deadline_us = max_duration.map_or(0, |d| {
        // SAFETY: reads the clock.
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        now.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    });
    RUN_DEADLINE.store(deadline_us, Ordering::SeqCst);
}

/// At process exit (a die, or any FATAL) with a run still `running`: records it `interrupted`, with
/// why, in a transaction of its own after aborting the one in progress, as PostgreSQL's own
/// temporary-schema cleanup does at exit. An error here is FATAL (the process is exiting anyway);
/// the run is then marked by the scheduler, or at the next start.
#[pg_guard]
unsafe extern "C-unwind" fn on_exit_record(_code: i32, _arg: pg_sys::Datum) {
    let run_id = CURRENT_RUN.swap(0, Ordering::SeqCst);
    if run_id == 0 {
        return;
    }
    let why = unfinished_reason(die_reason());
    // SAFETY: the exit protocol of RemoveTempRelationsCallback: abort what was going on, then a
    // transaction of our own, with a snapshot for its statements.
    unsafe {
        pg_sys::AbortOutOfAnyTransaction();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let progress = (
            PROGRESS_ROWS.load(Ordering::SeqCst),
            PROGRESS_BATCHES.load(Ordering::SeqCst) as i32,
        );
        crate::history::end_unfinished(run_id, &why, progress);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
}

/// Whether SIGTERM arrived (not reset: once asked to stop, a worker stays stopping).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// This worker's [`crate::owner::StatementGuard`]: runs `statement` (of the rule's owner, whose
/// statement timeout is `statement_timeout_ms`, 0 for none) so that SIGTERM ends it, and so that it
/// cannot outlive its statement timeout or the run's deadline by more than [`ESCALATION_GRACE`],
/// whatever it catches.
fn guard_statement(statement_timeout_ms: i32, statement: &mut dyn FnMut()) {
    IN_OWNER_STATEMENT.store(true, Ordering::SeqCst);
    if stop_requested() {
        // SIGTERM came just before: end at the statement's first interrupt check.
        // SAFETY: as in the handler.
        unsafe { raise_die(DieReason::Sigterm) };
    }
    let armed = arm_escalation(statement_timeout_ms);
    pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(statement))
        .finally(|| {
            IN_OWNER_STATEMENT.store(false, Ordering::SeqCst);
            if let Some(id) = armed {
                // SAFETY: disarms the timer armed above.
                unsafe { crate::errors::guarded(|| disable_timeout(id, false)) };
            }
        })
        .execute();
}

/// Arms the escalation timer at the earlier of the statement's timeout and the run's deadline, plus
/// the grace; returns its id, or `None` when neither is set.
fn arm_escalation(statement_timeout_ms: i32) -> Option<i32> {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let grace_us = ESCALATION_GRACE.as_micros() as i64;
    let statement = (statement_timeout_ms > 0)
        .then(|| now.saturating_add(i64::from(statement_timeout_ms) * 1000 + grace_us));
    let run = match RUN_DEADLINE.load(Ordering::SeqCst) {
        0 => None,
        deadline => Some(deadline.saturating_add(grace_us)),
    };
    let (fire_at, reason) = match (statement, run) {
        (None, None) => return None,
        (Some(s), Some(r)) if r < s => (r, DieReason::RunDuration),
        (Some(s), _) => (s, DieReason::StatementTimeout),
        (None, Some(r)) => (r, DieReason::RunDuration),
    };
    let mut id = ESCALATION_TIMEOUT.load(Ordering::SeqCst);
    if id < 0 {
        // SAFETY: registers a user timeout once per process (timeouts are initialised for every
        // background worker before its main runs).
        id = unsafe {
            crate::errors::guarded(|| RegisterTimeout(ASK_FOR_USER_TIMEOUT, Some(on_escalation)))
        };
        ESCALATION_TIMEOUT.store(id, Ordering::SeqCst);
    }
    ESCALATION_REASON.store(reason as u8, Ordering::SeqCst);
    // SAFETY: arms our own registered timeout.
    unsafe { crate::errors::guarded(|| enable_timeout_at(id, fire_at.max(now + 1))) };
    Some(id)
}

/// Applies a pending SIGHUP (reloads postgresql.conf into this process); returns whether it did.
pub fn reload_config_if_asked() -> bool {
    let asked = BackgroundWorker::sighup_received();
    if asked {
        // SAFETY: what PostgreSQL's own processes do on SIGHUP.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
    asked
}

/// Sleeps until `timeout` passes or the latch is set. Returns true when woken by the latch
/// (a signal: SIGUSR1 from a rule change, SIGHUP, SIGTERM). Exits if the postmaster dies.
pub fn wait(timeout: Duration) -> bool {
    let ms = timeout.as_millis().clamp(0, i64::from(i32::MAX) as u128) as std::ffi::c_long;
    // SAFETY: standard latch wait of a background worker.
    let events = unsafe {
        let events = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        pg_sys::check_for_interrupts!();
        events
    };
    events & pg_sys::WL_LATCH_SET as i32 != 0
}
