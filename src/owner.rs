//! Running code that is not ours: as which role, with which settings, and leaving nothing behind.
//!
//! Conditions, and the triggers, policies, rewrite rules and functions of a target table, are
//! written by other roles and run inside our processes. [`as_owner`] runs them the way REFRESH
//! MATERIALIZED VIEW, ANALYZE and autovacuum run index and table code:
//! `SetUserIdAndSecContext(role, SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION)`
//! inside a GUC nest level that is ended with `AtEOXact_GUC(false, …)`. `current_user` becomes the
//! role, missing privileges raise `permission denied`, `SET ROLE` back to the worker's superuser is
//! refused, and every setting the code changed, even with `set_config(…, false)`, is rolled back
//! when it returns. On error, the caller's (sub)transaction abort restores user and settings.
//!
//! [`run_as`] chooses the role: the rule's owner, except that a superuser's rule on a table owned by
//! another role runs as the table's owner, so that code that role wrote never runs as superuser.

use crate::errors::{guarded, Error};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CString;
use std::panic::AssertUnwindSafe;

/// The `search_path` of every statement that evaluates a rule's condition, and of the extension's
/// own statements: built-ins cannot be shadowed by a user's `now()` or operators, and temporary
/// objects come last.
pub const OWNER_SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// Settings fixed for every statement of the owner's code, on top of the timeouts: the condition
/// means the same in the worker as where it was validated (a database or role default of
/// `standard_conforming_strings = off` would re-read its string literals, `transform_null_equals`
/// its `= NULL`).
///
/// `DateStyle`, `IntervalStyle` and `TimeZone` change what a literal in a condition means
/// (`'01/02/2026'`, `'1 day'::interval`, `'2026-01-01'::timestamptz`, `now()::date`): a database
/// owner's `ALTER DATABASE … SET DateStyle` would change which rows another role's rule deletes. They
/// are pinned to PostgreSQL's defaults for a fresh cluster, with time zone UTC: a condition means the
/// same in every database, session and worker.
const OWNER_SETTINGS: [(&str, &str); 6] = [
    ("search_path", OWNER_SEARCH_PATH),
    ("standard_conforming_strings", "on"),
    ("transform_null_equals", "off"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
];

// utils/timeout.h is not in pgrx's bindings; TimeoutId::STATEMENT_TIMEOUT is 3 in PostgreSQL 14
// to 18 (later ids were appended after it). The statement-timeout tests, run on every version by
// scripts/matrix.sh, fail if it is not.
const STATEMENT_TIMEOUT_ID: i32 = 3;
extern "C-unwind" {
    // Called only through `guarded`: they raise ERRORs for bad arguments.
    fn enable_timeout_after(id: i32, delay_ms: i32);
    fn enable_timeout_at(id: i32, fin_time: pg_sys::TimestampTz);
    fn disable_timeout(id: i32, keep_indicator: bool);
    fn get_timeout_active(id: i32) -> bool;
    fn get_timeout_finish_time(id: i32) -> pg_sys::TimestampTz;
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

/// The role a rule's code runs as: its owner, or, when the owner is a superuser and the table
/// belongs to another role, the table's owner. PostgreSQL's own maintenance commands (VACUUM,
/// ANALYZE, REFRESH MATERIALIZED VIEW) run table code as the table's owner for the same reason: a
/// DBA's rule on an application's table must not run the application's triggers, policies and
/// functions as superuser. The table's owner may delete its own rows, so the rule still works.
pub fn run_as(rule_owner: pg_sys::Oid, table: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: catalog lookups of existing objects.
    unsafe {
        if !pg_sys::superuser_arg(rule_owner) {
            return rule_owner;
        }
        let table_owner = table_owner(table);
        if table_owner == pg_sys::InvalidOid {
            rule_owner
        } else {
            table_owner
        }
    }
}

/// `pg_class.relowner` of a relation; InvalidOid if it is gone.
pub fn table_owner(table: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: syscache lookup of pg_class by OID; the tuple is released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(table),
        );
        if tuple.is_null() {
            return pg_sys::InvalidOid;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple);
        let owner = (*form).relowner;
        pg_sys::ReleaseSysCache(tuple);
        owner
    }
}

/// Whether `role` owns relation `rel` (or is a superuser), as PostgreSQL's ownership checks say.
pub fn owns_relation(rel: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: catalog ownership check, inside a transaction.
    unsafe {
        // PostgreSQL 16 replaced the per-class pg_*_ownercheck functions by object_ownercheck.
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        return pg_sys::pg_class_ownercheck(rel, role);
        #[cfg(not(any(feature = "pg14", feature = "pg15")))]
        return pg_sys::object_ownercheck(pg_sys::RelationRelationId, rel, role);
    }
}

/// Whether `role` owns database `database` (or is a superuser).
pub fn owns_database(database: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: catalog ownership check, inside a transaction.
    unsafe {
        // PostgreSQL 16 replaced the per-class pg_*_ownercheck functions by object_ownercheck.
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        return pg_sys::pg_database_ownercheck(database, role);
        #[cfg(not(any(feature = "pg14", feature = "pg15")))]
        return pg_sys::object_ownercheck(pg_sys::DatabaseRelationId, database, role);
    }
}

/// Name of a role, for messages.
pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: missing_ok = true; a palloc'd C string or NULL.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            format!("role {}", u32::from(role))
        } else {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// Runs `f` as `role` with the owner settings and `limits`, and rolls back on return every setting
/// changed meanwhile, by us or by the code `f` ran. Errors propagate; the caller's transaction or
/// subtransaction abort then restores the user and the settings.
pub fn as_owner<R>(role: pg_sys::Oid, limits: Limits, f: impl FnOnce() -> R) -> R {
    let lock_timeout = format!("{}ms", limits.lock_timeout_ms);
    // Kept for SHOW and for code that reads it; SPI does not arm it, so `timed` does.
    let statement_timeout = format!("{}ms", limits.statement_timeout_ms);
    let mut settings = OWNER_SETTINGS.to_vec();
    settings.push(("lock_timeout", &lock_timeout));
    settings.push(("statement_timeout", &statement_timeout));
    with_settings(&settings, || {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context: i32 = 0;
        // SAFETY: PostgreSQL's user-id switch within a transaction, undone below (or by the
        // caller's abort on error).
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
            pg_sys::SetUserIdAndSecContext(
                role,
                saved_context
                    | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                    | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
            );
        }
        let result = f();
        // SAFETY: restores exactly what was saved above.
        unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
        result
    })
}

/// Runs `f` with `settings` in a GUC nest level of its own, and rolls back on return every setting
/// changed meanwhile, ours and any that `f`'s code changed (`set_config(…, false)` included): the
/// `AtEOXact_GUC(false, …)` that ANALYZE and CREATE INDEX use after running user code. Must run
/// inside a transaction; on error, the caller's abort rolls the settings back.
pub fn with_settings<R>(settings: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level opened and closed around `f`, inside the caller's transaction.
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in settings {
        // SAFETY: scoped to the nest level just opened.
        unsafe { set_local(name, value) };
    }
    let result = f();
    // SAFETY: ends the nest level opened above; `false` rolls its changes back instead of keeping
    // them.
    unsafe { pg_sys::AtEOXact_GUC(false, nest) };
    result
}

/// Sets a setting until the current GUC nest level ends (inside [`as_owner`], until it returns).
///
/// # Safety
/// Must run inside a transaction, within a GUC nest level that its caller ends (as `as_owner` does).
pub unsafe fn set_local(name: &str, value: &str) {
    // SAFETY: the caller's GUC nest level restores the setting.
    unsafe {
        set(
            name,
            value,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
        )
    }
}

/// `SET LOCAL name = value` without a round-trip through SPI: until the current transaction ends.
/// Must run inside a transaction.
pub fn set_for_transaction(name: &str, value: &str) {
    // SAFETY: GUC_ACTION_LOCAL is undone by the transaction's end, as SET LOCAL is.
    unsafe {
        set(
            name,
            value,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
        )
    }
}

/// `SET name = value` for the rest of this session, outside any transaction; a worker pins its
/// settings this way when it starts (see `worker::connect`). Source `session` ranks above the
/// database's, the role's and the configuration file's defaults, so none of them reaches our
/// statements.
pub fn set_for_session(name: &str, value: &str) {
    // SAFETY: a plain session-level SET, as the SET command does.
    unsafe {
        set(
            name,
            value,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SET,
        )
    }
}

/// # Safety
/// With GUC_ACTION_SAVE, within a GUC nest level its caller ends.
unsafe fn set(
    name: &str,
    value: &str,
    source: pg_sys::GucSource::Type,
    action: pg_sys::GucAction::Type,
) {
    let name = CString::new(name).expect("no NUL in setting name");
    let value = CString::new(value).expect("no NUL in setting value");
    // SAFETY: valid C strings; ERROR on failure.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            source,
            action,
            true,
            PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// Runs `f`, owner code wrapped in a subtransaction that `f` itself ends (released or rolled back),
/// so that no session-level advisory lock the code took outlives it. Neither a subtransaction's
/// end nor a security-restricted operation releases those (`pg_advisory_lock` is allowed there):
/// left held, they would stall other rules' code in a pooled runner, or stay with the session that
/// scraped the metrics. A worker holds none of its own (it coordinates through shared memory), so it
/// releases them all; a backend does so only if it held no advisory lock before (its own are the
/// caller's business, and tell nothing apart from those the code took).
pub fn leaving_no_advisory_locks<R>(f: impl FnOnce() -> R) -> R {
    let release = in_background_worker() || !holds_advisory_locks();
    let result = f();
    if release {
        // SAFETY: releases this session's session-level user (advisory) locks; no LWLock is held
        // here (the subtransaction has ended).
        unsafe { pg_sys::LockReleaseSession(pg_sys::USER_LOCKMETHOD as pg_sys::LOCKMETHODID) };
    }
    result
}

/// Whether this process is a background worker (ours: a backend is a session of a client).
/// PostgreSQL 17 replaced the `IsBackgroundWorker` flag by `MyBackendType`, which 14 to 18 have.
pub fn in_background_worker() -> bool {
    // SAFETY: reading a process-wide value set at start.
    unsafe { pg_sys::MyBackendType == pg_sys::BackendType::B_BG_WORKER }
}

/// Whether this process holds an advisory lock (at session or transaction level).
fn holds_advisory_locks() -> bool {
    // SAFETY: a snapshot of the lock tables, palloc'd in the current context; read-only walk.
    unsafe {
        let data = pg_sys::GetLockStatusData();
        let my_pid = pg_sys::MyProcPid;
        (0..(*data).nelements as usize).any(|i| {
            let lock = &*(*data).locks.add(i);
            lock.pid == my_pid
                && lock.holdMask != 0
                && u32::from(lock.locktag.locktag_type) == pg_sys::LockTagType::LOCKTAG_ADVISORY
        })
    }
}

/// Runs one statement with a statement timeout armed (SPI statements are not timed by PostgreSQL
/// itself; only the top-level statement loop arms `statement_timeout`). A caller's own statement
/// timeout that would fire first is left alone; one that would fire later is armed again after.
pub fn timed<R>(limits: Limits, f: impl FnOnce() -> R) -> R {
    if limits.statement_timeout_ms <= 0 {
        return f();
    }
    // SAFETY: STATEMENT_TIMEOUT is registered by InitPostgres in every backend and worker.
    let callers = unsafe {
        guarded(|| {
            get_timeout_active(STATEMENT_TIMEOUT_ID)
                .then(|| get_timeout_finish_time(STATEMENT_TIMEOUT_ID))
        })
    };
    // SAFETY: reads the clock.
    let ours = unsafe { pg_sys::GetCurrentTimestamp() }
        .saturating_add(i64::from(limits.statement_timeout_ms) * 1000);
    if callers.is_some_and(|fin| fin <= ours) {
        return f();
    }
    // SAFETY: as above; replaces the caller's (later) timeout until `finally` arms it again.
    unsafe { guarded(|| enable_timeout_after(STATEMENT_TIMEOUT_ID, limits.statement_timeout_ms)) };
    PgTryBuilder::new(AssertUnwindSafe(f))
        // SAFETY: disarms the timeout armed above and re-arms the caller's, in this backend.
        .finally(|| unsafe {
            guarded(|| {
                disable_timeout(STATEMENT_TIMEOUT_ID, false);
                if let Some(fin) = callers {
                    enable_timeout_at(STATEMENT_TIMEOUT_ID, fin);
                }
            })
        })
        .execute()
}

/// How a background worker ends a statement of code that is not ours from outside (SIGTERM, a
/// statement timeout the code ignores, the run's deadline): given the statement's timeout in ms
/// (0: none) and the statement. The worker installs it when it starts; a backend has none, since
/// PostgreSQL's own die() already ends its statements.
pub type StatementGuard = fn(statement_timeout_ms: i32, statement: &mut dyn FnMut());

static STATEMENT_GUARD: std::sync::OnceLock<StatementGuard> = std::sync::OnceLock::new();

/// Installs this process's [`StatementGuard`] (once; later calls change nothing).
pub fn install_statement_guard(guard: StatementGuard) {
    let _ = STATEMENT_GUARD.set(guard);
}

/// Runs `f` under this process's [`StatementGuard`], if it has one.
fn guarded_statement<R>(statement_timeout_ms: i32, f: impl FnOnce() -> R) -> R {
    let Some(guard) = STATEMENT_GUARD.get() else {
        return f();
    };
    let mut f = Some(f);
    let mut result = None;
    guard(statement_timeout_ms, &mut || {
        result = f.take().map(|f| f());
    });
    result.expect("the guard runs the statement")
}

/// Runs `f` (statements of code that is not ours) as `role` within `limits`, in a subtransaction
/// whose error is returned, ended from outside as [`StatementGuard`] says, leaving no advisory lock
/// behind.
pub fn as_role<R>(role: pg_sys::Oid, limits: Limits, f: impl FnOnce() -> R) -> Result<R, Error> {
    leaving_no_advisory_locks(|| {
        crate::errors::in_subtransaction(|| {
            as_owner(role, limits, || {
                timed(limits, || guarded_statement(limits.statement_timeout_ms, f))
            })
        })
    })
}
