//! The utility hook that keeps our workers out of the way of statements that need a database to
//! themselves: a worker connected to a database makes a plain `DROP DATABASE`, `ALTER DATABASE …
//! RENAME` or `CREATE DATABASE … TEMPLATE` of it fail with "being accessed by other users". Before
//! such a statement runs, the hook sends SIGTERM to this extension's workers in that database and
//! waits (up to [`STOP_WAIT`]) for them to exit. A scheduler stopped this way records its current run
//! as `interrupted`; the launcher starts it again after `pg_token_cleanup.database_probe_interval`
//! if the database is still there.

use crate::worker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::time::{Duration, Instant};

const STOP_WAIT: Duration = Duration::from_secs(5);

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
/// and object-name fields). Our own work runs in [`before_statement`], which is guarded.
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
        before_statement(pstmt);
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
    }
}

/// Stops this extension's workers in the database the statement needs to itself, if any.
#[pg_guard]
unsafe extern "C-unwind" fn before_statement(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: PostgreSQL passes a valid planned utility statement.
    unsafe {
        let name = database_needing_sole_access((*pstmt).utilityStmt);
        if !name.is_null() {
            let database = pg_sys::get_database_oid(name, true);
            if database != pg_sys::InvalidOid {
                stop_workers_in(database);
            }
        }
    }
}

/// The database a statement needs no other session in: the one dropped (`DROP DATABASE`), renamed
/// (`ALTER DATABASE … RENAME`), or copied as a template (`CREATE DATABASE … TEMPLATE`). Null if none.
unsafe fn database_needing_sole_access(stmt: *mut pg_sys::Node) -> *const std::ffi::c_char {
    // SAFETY: the caller passes a valid utility statement node (or null).
    unsafe {
        if stmt.is_null() {
            return std::ptr::null();
        }
        match (*stmt).type_ {
            pg_sys::NodeTag::T_DropdbStmt => (*(stmt as *mut pg_sys::DropdbStmt)).dbname,
            pg_sys::NodeTag::T_RenameStmt => {
                let rename = stmt as *mut pg_sys::RenameStmt;
                if (*rename).renameType == pg_sys::ObjectType::OBJECT_DATABASE {
                    (*rename).subname
                } else {
                    std::ptr::null()
                }
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let options = (*(stmt as *mut pg_sys::CreatedbStmt)).options;
                let count = if options.is_null() {
                    0
                } else {
                    (*options).length
                };
                for i in 0..count as usize {
                    let def = (*(*options).elements.add(i)).ptr_value as *mut pg_sys::DefElem;
                    if CStr::from_ptr((*def).defname).to_bytes() == b"template" {
                        return pg_sys::defGetString(def);
                    }
                }
                std::ptr::null()
            }
            _ => std::ptr::null(),
        }
    }
}

/// SIGTERMs our schedulers and runners connected to `database` and waits for them to exit.
fn stop_workers_in(database: pg_sys::Oid) {
    let pids: Vec<i32> = Spi::connect(|client| {
        let rows = client.select(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datid = $1 AND backend_type IN ($2, $3)",
            None,
            &[database.into(), worker::SCHEDULER_TYPE.into(), worker::RUNNER_TYPE.into()],
        )?;
        rows.map(|r| r.get::<i32>(1).map(|p| p.unwrap_or(0))).collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_default();
    let pids: Vec<i32> = pids.into_iter().filter(|p| *p > 0).collect();
    for &pid in &pids {
        // SAFETY: kill(2) of our own worker process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_WAIT;
    // SAFETY: kill(pid, 0) only checks that the process exists.
    while pids.iter().any(|&pid| unsafe { libc::kill(pid, 0) } == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        pg_sys::check_for_interrupts!();
    }
}
