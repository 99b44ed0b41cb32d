//! Running user text safely: as the rule's owner, with a fixed `search_path`, with timeouts, and
//! inside an internal subtransaction so that an error in one rule is caught and recorded instead of
//! ending the worker.
//!
//! The owner switch is the one REFRESH MATERIALIZED VIEW and autovacuum use:
//! `SetUserIdAndSecContext(owner, SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION)`.
//! `current_user` becomes the owner, missing privileges raise `permission denied`, and user code
//! cannot `SET ROLE` back to the worker's superuser. Transaction and subtransaction abort restore the
//! previous user, so an error never leaves the owner's identity in place.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CString;
use std::panic::AssertUnwindSafe;

/// The `search_path` of every statement that evaluates a rule's condition: built-ins cannot be
/// shadowed by a user's `now()` or operators, and temporary objects come last.
pub const OWNER_SEARCH_PATH: &str = "pg_catalog, pg_temp";

// timeout.h is not in pgrx's bindings; TimeoutId::STATEMENT_TIMEOUT is 3 in PostgreSQL 15.
const STATEMENT_TIMEOUT_ID: i32 = 3;
extern "C-unwind" {
    fn enable_timeout_after(id: i32, delay_ms: i32);
    fn disable_timeout(id: i32, keep_indicator: bool);
}

/// Limits applied to a rule's statements.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub lock_timeout_ms: i32,
    pub statement_timeout_ms: i32,
}

/// Looks up a role's OID by name; `None` when it does not exist.
pub fn role_oid(name: &str) -> Option<pg_sys::Oid> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid C string; missing_ok = true never raises for a missing role.
    let oid = unsafe { pg_sys::get_role_oid(c.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Runs `f` as `owner` with `search_path`, `lock_timeout` and `statement_timeout` set for its
/// duration only (GUC nest level, as a function's SET clause does). Errors propagate; the caller's
/// transaction or subtransaction abort restores the user and the settings.
pub fn as_owner<R>(owner: pg_sys::Oid, limits: Limits, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context: i32 = 0;
    // SAFETY: plain calls into PostgreSQL's user-id and GUC machinery within a transaction.
    let nest = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        let nest = pg_sys::NewGUCNestLevel();
        set_local("search_path", OWNER_SEARCH_PATH);
        set_local("lock_timeout", &format!("{}ms", limits.lock_timeout_ms));
        // Kept for SHOW and for code that reads it; SPI does not arm it, so arm_statement_timeout does.
        set_local(
            "statement_timeout",
            &format!("{}ms", limits.statement_timeout_ms),
        );
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        nest
    };
    let result = f();
    // SAFETY: restores exactly what was saved above.
    unsafe {
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
        pg_sys::AtEOXact_GUC(true, nest);
    }
    result
}

/// Sets a setting until the current GUC nest level ends (inside [`as_owner`], until it returns).
///
/// # Safety
/// Must run inside a transaction, within a GUC nest level that its caller ends (as `as_owner` does).
pub unsafe fn set_local(name: &str, value: &str) {
    // SAFETY: the caller's GUC nest level restores the setting.
    unsafe { set(name, value, pg_sys::GucAction::GUC_ACTION_SAVE) }
}

/// `SET LOCAL name = value` without a round-trip through SPI: until the current transaction ends.
/// Must run inside a transaction.
pub fn set_for_transaction(name: &str, value: &str) {
    // SAFETY: GUC_ACTION_LOCAL is undone by the transaction's end, as SET LOCAL is.
    unsafe { set(name, value, pg_sys::GucAction::GUC_ACTION_LOCAL) }
}

/// # Safety
/// Inside a transaction; with GUC_ACTION_SAVE, within a GUC nest level its caller ends.
unsafe fn set(name: &str, value: &str, action: pg_sys::GucAction::Type) {
    let name = CString::new(name).expect("no NUL in setting name");
    let value = CString::new(value).expect("no NUL in setting value");
    // SAFETY: valid C strings; ERROR on failure.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// Runs one statement with a statement timeout armed (SPI statements are not timed by PostgreSQL
/// itself; only the top-level statement loop arms `statement_timeout`).
pub fn timed<R>(limits: Limits, f: impl FnOnce() -> R) -> R {
    if limits.statement_timeout_ms <= 0 {
        return f();
    }
    // SAFETY: STATEMENT_TIMEOUT is registered by InitPostgres in every backend and worker.
    unsafe { enable_timeout_after(STATEMENT_TIMEOUT_ID, limits.statement_timeout_ms) };
    let result = PgTryBuilder::new(AssertUnwindSafe(f))
        .finally(|| unsafe { disable_timeout(STATEMENT_TIMEOUT_ID, false) })
        .execute();
    result
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
