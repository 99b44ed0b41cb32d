//! The utility hook that keeps our workers out of the way of statements that need a database to
//! themselves: a worker connected to a database makes a plain `DROP DATABASE`, `ALTER DATABASE …
//! RENAME`, `ALTER DATABASE … SET TABLESPACE` or `CREATE DATABASE … TEMPLATE` of it fail with "being
//! accessed by other users". Before such a statement runs, the hook finds this extension's workers in
//! that database in the registry, sends them SIGTERM and waits (up to [`STOP_WAIT`]) for them to
//! exit, and asks the launcher to start none there for [`HOLD`]; once the statement has succeeded
//! the launcher may start the scheduler again at once. A run stopped this way is recorded
//! `interrupted`.
//!
//! Only for a statement that will pass its own permission check: by a superuser or the database's
//! owner (with CREATEDB where the statement needs it). Another role's refused `DROP DATABASE` stops
//! nothing.

use crate::worker::registry;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::time::{Duration, Instant};

const STOP_WAIT: Duration = Duration::from_secs(5);
/// How long the launcher keeps away from a database whose workers the hook stopped, unless the
/// statement ends first.
const HOLD: Duration = Duration::from_secs(10);

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

extern "C-unwind" {
    // PostgreSQL's own, declared here so that it is called without pgrx's error translation.
    fn standard_ProcessUtility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// Installs the hook; called from `_PG_init`.
pub fn init() {
    // SAFETY: hook chaining while the library loads (single-threaded).
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// The hook itself is deliberately not `#[pg_guard]`ed: it owns nothing with a destructor, so an
/// ERROR raised by the statement longjmps across a plain frame, as RFC 2945 allows for "C-unwind",
/// and reaches the client untouched (pgrx's guard would re-raise it without its context, position
/// and object-name fields). Our own work runs in [`before_statement`] and [`after_statement`], which
/// are guarded.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: PostgreSQL passes a valid planned utility statement; the next hook is called with
    // exactly the arguments we were given.
    unsafe {
        let stopped = before_statement(pstmt);
        let next = PREVIOUS.unwrap_or(standard_ProcessUtility);
        next(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        );
        if stopped != pg_sys::InvalidOid {
            after_statement(stopped);
        }
    }
}

/// Stops this extension's workers in the database the statement needs to itself, if any and if
/// the statement will be allowed. Returns that database (InvalidOid if none was stopped).
#[pg_guard]
unsafe extern "C-unwind" fn before_statement(pstmt: *mut pg_sys::PlannedStmt) -> pg_sys::Oid {
    // SAFETY: PostgreSQL passes a valid planned utility statement.
    unsafe {
        let Some(needed) = database_needing_sole_access((*pstmt).utilityStmt) else {
            return pg_sys::InvalidOid;
        };
        let database = pg_sys::get_database_oid(needed.name, true);
        if database == pg_sys::InvalidOid || !will_be_allowed(database, needed.needs_createdb) {
            return pg_sys::InvalidOid;
        }
        let workers = registry::workers_in(database);
        if workers.is_empty() {
            return pg_sys::InvalidOid;
        }
        let hold = i64::try_from(HOLD.as_micros()).unwrap_or(i64::MAX);
        registry::hold(database, pg_sys::GetCurrentTimestamp().saturating_add(hold));
        stop(&workers);
        database
    }
}

/// The statement succeeded: the launcher need not keep away any longer.
#[pg_guard]
unsafe extern "C-unwind" fn after_statement(database: pg_sys::Oid) {
    registry::hold(database, 0);
    registry::wake_launcher();
}

/// Whether the current user passes the statement's own permission check: a superuser, or the
/// database's owner (holding CREATEDB when the statement needs it).
fn will_be_allowed(database: pg_sys::Oid, needs_createdb: bool) -> bool {
    // SAFETY: catalog checks of the current user.
    unsafe {
        if pg_sys::superuser() {
            return true;
        }
        let user = pg_sys::GetUserId();
        crate::owner::owns_database(database, user) && (!needs_createdb || has_createdb(user))
    }
}

/// Whether `role` has CREATEDB (what `have_createdb_privilege()` says; it is not exported before
/// PostgreSQL 15).
fn has_createdb(role: pg_sys::Oid) -> bool {
    // SAFETY: syscache lookup of pg_authid by OID; the tuple is released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::AUTHOID as i32,
            pg_sys::Datum::from(role),
        );
        if tuple.is_null() {
            return false;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_authid>(tuple);
        let createdb = (*form).rolcreatedb;
        pg_sys::ReleaseSysCache(tuple);
        createdb
    }
}

/// The database a statement needs to itself, and whether the statement requires CREATEDB.
struct SoleAccess {
    name: *const std::ffi::c_char,
    needs_createdb: bool,
}

/// The database a statement needs no other session in: the one dropped (`DROP DATABASE`), renamed
/// (`ALTER DATABASE … RENAME`), moved (`ALTER DATABASE … SET TABLESPACE`) or copied as a template
/// (`CREATE DATABASE … TEMPLATE`).
unsafe fn database_needing_sole_access(stmt: *mut pg_sys::Node) -> Option<SoleAccess> {
    // SAFETY: the caller passes a valid utility statement node (or null).
    unsafe {
        if stmt.is_null() {
            return None;
        }
        let access = |name, needs_createdb| {
            Some(SoleAccess {
                name,
                needs_createdb,
            })
        };
        match (*stmt).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                access((*(stmt as *mut pg_sys::DropdbStmt)).dbname, false)
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let rename = stmt as *mut pg_sys::RenameStmt;
                ((*rename).renameType == pg_sys::ObjectType::OBJECT_DATABASE)
                    .then_some(())
                    .and_then(|()| access((*rename).subname, true))
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                option((*(stmt as *mut pg_sys::CreatedbStmt)).options, b"template")
                    .and_then(|name| access(name, true))
            }
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let alter = stmt as *mut pg_sys::AlterDatabaseStmt;
                option((*alter).options, b"tablespace").and_then(|_| access((*alter).dbname, false))
            }
            _ => None,
        }
    }
}

/// The string value of the DefElem named `name` in `options`; `None` when absent or DEFAULT.
unsafe fn option(options: *mut pg_sys::List, name: &[u8]) -> Option<*const std::ffi::c_char> {
    // SAFETY: `options` is a valid List of DefElem (or null).
    unsafe {
        let count = if options.is_null() {
            0
        } else {
            (*options).length
        };
        for i in 0..count as usize {
            let def = (*(*options).elements.add(i)).ptr_value as *mut pg_sys::DefElem;
            if CStr::from_ptr((*def).defname).to_bytes() == name {
                // `TEMPLATE DEFAULT` (and `= DEFAULT`) has no argument: the default template, which
                // has no workers of ours (they never connect to template databases).
                if (*def).arg.is_null() {
                    return None;
                }
                return Some(pg_sys::defGetString(def));
            }
        }
        None
    }
}

/// SIGTERMs the given workers and waits for them to exit.
fn stop(pids: &[i32]) {
    for &pid in pids {
        // SAFETY: kill(2) of our own worker process (a pid from the registry).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_WAIT;
    // SAFETY: kill(pid, 0) only checks that the process exists.
    while pids.iter().any(|&pid| unsafe { libc::kill(pid, 0) } == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        pg_sys::check_for_interrupts!();
    }
}
