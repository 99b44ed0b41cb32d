//! Signals and waiting for the workers.
//!
//! SIGHUP: pgrx's handler (flag + latch); the loop calls `ProcessConfigFile` itself.
//! SIGTERM: our handler sets a stop flag and the latch. While an owner statement (a collecting scan
//! or a batch) runs, it also raises a query cancel, so a long statement stops at once and the run
//! is recorded as `interrupted`; outside those statements a cancel would hit the worker's own
//! bookkeeping, so it is never raised there.
//! SIGUSR1: PostgreSQL's handler sets the latch; the rules trigger and CREATE EXTENSION use it to
//! wake a scheduler or the launcher.

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);
static IN_OWNER_STATEMENT: AtomicBool = AtomicBool::new(false);

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
            (&raw mut pg_sys::QueryCancelPending).write_volatile(1);
            (&raw mut pg_sys::InterruptPending).write_volatile(1);
        }
        pg_sys::SetLatch(pg_sys::MyLatch);
        *libc::__errno_location() = saved_errno;
    }
}

/// Whether SIGTERM arrived (not reset: once asked to stop, a worker stays stopping).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Runs `f` (a statement of the rule's owner) so that SIGTERM cancels it.
pub fn cancellable<R>(f: impl FnOnce() -> R) -> R {
    IN_OWNER_STATEMENT.store(true, Ordering::SeqCst);
    if stop_requested() {
        // SIGTERM came just before: cancel at the statement's first interrupt check.
        // SAFETY: as in the handler.
        unsafe {
            (&raw mut pg_sys::QueryCancelPending).write_volatile(1);
            (&raw mut pg_sys::InterruptPending).write_volatile(1);
        }
    }
    let result = pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        .finally(leave_owner_statement)
        .execute();
    result
}

fn leave_owner_statement() {
    IN_OWNER_STATEMENT.store(false, Ordering::SeqCst);
    if stop_requested() {
        // A cancel raised for a statement that already finished must not hit our bookkeeping.
        // SAFETY: plain store to a sig_atomic_t.
        unsafe { (&raw mut pg_sys::QueryCancelPending).write_volatile(0) };
    }
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
