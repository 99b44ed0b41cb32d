//! Errors: raising the ones users read (a SQLSTATE, a message that names the bad value, and a hint
//! with the fix), and catching the ones a rule's code raises, inside an internal subtransaction, so
//! that a worker records them and carries on.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

/// Raises an ERROR with `code`, `message` and `hint`; never returns.
pub fn refuse(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    ErrorReport::new(code, message.into(), "pg_token_cleanup")
        .set_hint(hint.into())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Calls `f`, a call into PostgreSQL through a declaration of ours (a function pgrx has no binding
/// for), so that an ERROR it raises becomes a Rust panic that unwinds properly, as pgrx's own
/// bindings do, instead of a longjmp across Rust frames.
///
/// # Safety
/// `f` must be a sound call into PostgreSQL on the main thread.
pub unsafe fn guarded<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: the caller's promise.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(f) }
}

/// An error caught inside [`in_subtransaction`]: its SQLSTATE and message.
#[derive(Debug, Clone)]
pub struct CaughtSqlError {
    pub sqlstate: String,
    pub message: String,
}

impl std::fmt::Display for CaughtSqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)
    }
}

/// Runs `f` in an internal subtransaction (as a PL/pgSQL EXCEPTION block does). On error the
/// subtransaction is rolled back, memory context and resource owner are restored, and the error is
/// returned so the caller can record it and carry on in the same transaction.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, CaughtSqlError> {
    // SAFETY: the standard BeginInternalSubTransaction / Release / Rollback protocol.
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);
        PgTryBuilder::new(AssertUnwindSafe(|| {
            let r = f();
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            Ok(r)
        }))
        .catch_others(|caught| {
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            Err(describe(caught))
        })
        .execute()
    }
}

/// Message and SQLSTATE of any caught error (PostgreSQL ERROR, Rust error!() or panic).
pub fn describe(caught: pg_sys::panic::CaughtError) -> CaughtSqlError {
    use pg_sys::panic::CaughtError;
    let report = match &caught {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    CaughtSqlError {
        sqlstate: sqlstate_text(report.sql_error_code() as i32),
        message: report.message().to_string(),
    }
}

/// A packed SQLSTATE (PGSIXBIT encoding) as its five characters.
fn sqlstate_text(code: i32) -> String {
    (0..5)
        .map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char)
        .collect()
}
