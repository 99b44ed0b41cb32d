//! The launcher: the one static worker that finds databases and keeps a scheduler running in each
//! database that has the extension (see the design note in `worker/mod.rs`).

use super::registry::{self, budget, Kind};
use super::{signals, LIBRARY, SCHEDULER_TYPE};
use crate::gucs;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::ffi::CStr;
use std::time::{Duration, Instant};

/// How often the launcher rereads `pg_database` and checks its schedulers.
pub const TICK: Duration = Duration::from_secs(5);
/// At most this many schedulers started per tick, so probing many databases never takes every
/// worker slot at once.
const STARTS_PER_TICK: usize = 4;
/// A database is not probed twice within this time, however often the launcher is woken.
const MIN_PROBE_GAP: Duration = Duration::from_secs(1);
/// How often the launcher looks again while a database waits for a slot.
const WAITING_RECHECK: Duration = Duration::from_millis(100);
/// The postmaster refusing to start a scheduler this long is warned about (a worker that just left
/// holds its slot until it is reaped: a moment).
const START_FAILURE_WARNING: Duration = Duration::from_secs(10);
/// A scheduler that left while the extension was there (pg_terminate_backend, an error) is started
/// again after this.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Registers the launcher; called from `_PG_init` while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("pg_token_cleanup launcher")
        .set_type(super::LAUNCHER_TYPE)
        .set_library(LIBRARY)
        .set_function("pg_token_cleanup_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

struct Database {
    name: String,
    scheduler: Option<DynamicBackgroundWorker>,
    next_start: Instant,
    last_start: Option<Instant>,
    /// The launcher's wake count when CREATE EXTENSION (or a utility statement) last asked it to
    /// look again; 0: never, or forgotten when a scheduler that had found the extension left. The
    /// ask is answered by a scheduler started after it or by a look at pg_extension made after it,
    /// not by a probe already in flight (it may have looked before the extension was committed).
    asked_at_wake: u64,
    /// The launcher's wake count when it last started a scheduler here.
    started_at_wake: u64,
    /// Waiting for a slot of the budget (the launcher's latch is set when one frees).
    waiting: bool,
    /// Since when the postmaster has refused to start its scheduler (warned past a while).
    start_failing_since: Option<Instant>,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_token_cleanup_launcher_main(_arg: pg_sys::Datum) {
    signals::install();
    // No database: the launcher reads only the shared catalog pg_database, and so never stands in
    // the way of DROP DATABASE.
    BackgroundWorker::connect_worker_to_spi(None, None);
    signals::reload_config_if_asked();
    if registry::register(Kind::Launcher, pg_sys::InvalidOid, 0).is_err() {
        warning!("pg_token_cleanup: launcher not starting: the registry of workers is full");
        return;
    }
    log!("pg_token_cleanup: launcher started");

    let mut databases: HashMap<pg_sys::Oid, Database> = HashMap::new();
    let mut seen_wakes = 0;
    let mut budget_checked = None;
    while !signals::stop_requested() {
        signals::reload_config_if_asked();
        budget::warn_if_too_small(&mut budget_checked);
        let now = Instant::now();
        let wakes = registry::launcher_wakes();
        let woken = std::mem::replace(&mut seen_wakes, wakes) != wakes;
        let listed = list_databases();
        for (oid, _) in databases
            .iter()
            .filter(|(o, _)| !listed.iter().any(|(l, _)| l == *o))
        {
            budget::stop_waiting(Kind::Scheduler, *oid);
        }
        databases.retain(|oid, _| listed.iter().any(|(o, _)| o == oid));
        registry::retain_databases(|oid| listed.iter().any(|(o, _)| *o == oid));
        let mut started = 0;
        for (oid, name) in listed {
            let db = databases.entry(oid).or_insert_with(|| Database {
                name: name.clone(),
                scheduler: None,
                next_start: now,
                last_start: None,
                asked_at_wake: 0,
                started_at_wake: 0,
                waiting: false,
                start_failing_since: None,
            });
            if woken {
                db.asked_at_wake = wakes;
            }
            if registry::scheduler_serves(oid) {
                continue;
            }
            if db.scheduler.as_ref().is_some_and(is_alive) {
                continue;
            }
            let view = registry::database_view(oid);
            if db.scheduler.take().is_some() {
                // It left: the extension is absent (probe later), it gave its slot to another
                // database (start it again when its next rule is due), or it was stopped (start
                // again). Only a finding of "no extension" can miss a CREATE EXTENSION; a
                // scheduler that left for another reason answered every ask made while it ran.
                if !view.no_extension {
                    db.asked_at_wake = 0;
                }
                db.next_start = now
                    + if view.no_extension {
                        gucs::database_probe_interval()
                    } else if view.come_back_at > 0 {
                        until(view.come_back_at)
                    } else {
                        RESTART_DELAY
                    };
            }
            let asked = db.asked_at_wake > view.looked_at_wake.max(db.started_at_wake);
            if asked {
                let soonest = db.last_start.map_or(now, |t| t + MIN_PROBE_GAP).max(now);
                db.next_start = db.next_start.min(soonest);
            }
            // A utility statement (DROP DATABASE, …) asked the workers to stay away meanwhile.
            db.next_start = db.next_start.max(now + until(view.hold_until));
            if now < db.next_start || started >= STARTS_PER_TICK {
                continue;
            }
            // A database known to lack the extension is probed again only when a slot is free;
            // one that may have it waits its turn for a slot.
            if !budget::reserve(Kind::Scheduler, oid, pg_sys::InvalidOid) {
                if !view.no_extension || asked || db.waiting {
                    budget::wait(Kind::Scheduler, oid, pg_sys::InvalidOid);
                    db.waiting = true;
                }
                continue;
            }
            db.waiting = false;
            started += 1;
            db.last_start = Some(now);
            db.started_at_wake = wakes;
            db.next_start = now + gucs::database_probe_interval();
            db.scheduler = start_scheduler(oid, &db.name, &mut db.start_failing_since);
            if db.scheduler.is_none() {
                budget::cancel(Kind::Scheduler, oid);
                // Most often a worker that just left and is not reaped yet: try again soon.
                db.next_start = now + RESTART_DELAY;
            }
        }
        let next = databases
            .values()
            .filter(|d| d.scheduler.is_none())
            // A slot handed over becomes usable when the worker that gave it up has exited.
            .map(|d| {
                if d.waiting {
                    WAITING_RECHECK
                } else {
                    d.next_start.saturating_duration_since(Instant::now())
                }
            })
            .min()
            .unwrap_or(TICK);
        signals::wait(next.clamp(Duration::from_millis(100), TICK));
    }
    log!("pg_token_cleanup: launcher stopped");
    // Exit 1 so that the postmaster restarts a launcher ended by pg_terminate_backend (it does not
    // restart anything during shutdown).
    // SAFETY: ends this process, as a worker may.
    unsafe { pg_sys::proc_exit(1) };
}

/// Time from now until a PostgreSQL timestamp (zero if it is past).
fn until(at: pg_sys::TimestampTz) -> Duration {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    Duration::from_micros(at.saturating_sub(now).max(0) as u64)
}

fn is_alive(worker: &DynamicBackgroundWorker) -> bool {
    matches!(
        worker.pid(),
        Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted)
    )
}

fn start_scheduler(
    database: pg_sys::Oid,
    name: &str,
    failing_since: &mut Option<Instant>,
) -> Option<DynamicBackgroundWorker> {
    let worker = BackgroundWorkerBuilder::new(&format!("pg_token_cleanup scheduler {name}"))
        .set_type(SCHEDULER_TYPE)
        .set_library(super::LIBRARY)
        .set_function("pg_token_cleanup_scheduler_main")
        .enable_spi_access()
        .set_restart_time(None)
        .set_argument(database.into_datum())
        // Its exit wakes the launcher, which starts it again unless the extension is gone.
        // SAFETY: reading this process's pid.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    match worker {
        Ok(w) => {
            *failing_since = None;
            Some(w)
        }
        Err(_)
            if failing_since.get_or_insert_with(Instant::now).elapsed() < START_FAILURE_WARNING =>
        {
            None
        }
        Err(_) => {
            *failing_since = Some(Instant::now());
            warning!(
                "pg_token_cleanup: could not start a scheduler for database \"{name}\": every max_worker_processes slot is taken \
                 (by other work; pg_token_cleanup.max_workers had room); raise max_worker_processes to at least pg_token_cleanup.max_workers plus {}",
                gucs::WORKER_ROOM
            );
            None
        }
    }
}

/// Databases that accept connections and are not templates: (OID, name). Read with a catalog scan,
/// since the launcher is connected to no database.
fn list_databases() -> Vec<(pg_sys::Oid, String)> {
    BackgroundWorker::transaction(|| unsafe {
        // SAFETY: the autovacuum launcher's get_database_list(), in a transaction.
        let mut out = Vec::new();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            if (*form).datallowconn && !(*form).datistemplate {
                let name = CStr::from_ptr((*form).datname.data.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                out.push(((*form).oid, name));
            }
        }
        // table_endscan() is a static inline function; its body, without pgrx's C shim (which
        // needs the server's headers to build).
        if let Some(end) = (*(*(*scan).rs_rd).rd_tableam).scan_end {
            end(scan);
        }
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        out
    })
}
