//! Helper runners of a parallel run (`executor::parallel`): the leader reserves a free slot of the
//! budget (never ahead of anyone waiting), starts a helper with its slice in a [`Handoff`], and
//! watches it through [`Helper`]; the helper walks its slice and hands its report back. A helper
//! stops between batches on SIGTERM, when its leader is gone, and when someone waits for a slot of
//! the budget (its slot goes to them; the leader walks the rest).

use super::{start, Args};
use crate::errors::Error;
use crate::executor::parallel::{self, Helper, HelperState, SliceReport, SliceRequest};
use crate::executor::RunControl;
use crate::worker::handoff::{self, Handoff};
use crate::worker::registry::{self, budget, Kind};
use crate::worker::signals;
use pgrx::bgworkers::{BackgroundWorkerStatus, DynamicBackgroundWorker};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// A helper the leader started.
struct HelperWorker {
    worker: DynamicBackgroundWorker,
    handoff: Handoff,
}

/// Starts a helper for `slice` if a slot of the budget is free and nobody waits for one.
pub fn start_helper(slice: &SliceRequest) -> Option<Box<dyn Helper>> {
    // SAFETY: reading this process's database.
    let database = unsafe { pg_sys::MyDatabaseId };
    if budget::someone_waits() || !budget::reserve(Kind::Runner, database, pg_sys::InvalidOid) {
        return None;
    }
    let handoff = Handoff::create(slice);
    let title = format!("pg_token_cleanup helper {}", slice.rule.name);
    let args = Args::Helper {
        handle: handoff.handle(),
    };
    match start(&title, database, args) {
        Some(worker) => Some(Box::new(HelperWorker { worker, handoff })),
        None => {
            budget::cancel(Kind::Runner, database);
            None
        }
    }
}

impl Helper for HelperWorker {
    fn state(&self) -> HelperState {
        if self.handoff.done() {
            return HelperState::Ended(self.handoff.result());
        }
        match self.worker.pid() {
            Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => HelperState::Working,
            // Gone: it may have handed back just before it exited.
            Err(_) => HelperState::Ended(self.handoff.result()),
        }
    }

    fn stop(&self) {
        if let Ok(pid) = self.worker.pid() {
            // SAFETY: signals the helper this process started; it stops between batches.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// A helper's side: registers in the slot its leader reserved, walks the slice in segment
/// `handle`, hands the report back.
pub fn serve_slice(database: pg_sys::Oid, handle: u32) {
    if registry::register(Kind::Runner, database, 0).is_err() {
        debug1!("pg_token_cleanup: helper not starting: its slot of the budget lapsed");
        return;
    }
    let Some(request) = handoff::read::<SliceRequest>(handle) else {
        debug1!("pg_token_cleanup: helper not starting: its run already ended");
        return;
    };
    let control = HelperControl {
        leader_pid: request.leader_pid,
    };
    let report: SliceReport = parallel::walk_slice(&request, &control);
    handoff::hand_back(handle, &report);
}

/// When a helper stops: SIGTERM, its leader gone, or someone waiting for a slot of the budget.
struct HelperControl {
    leader_pid: i32,
}

impl RunControl for HelperControl {
    fn stop_requested(&self) -> bool {
        // SAFETY: signal 0 only checks that the leader still exists.
        let leader_alive = unsafe { libc::kill(self.leader_pid, 0) } == 0;
        signals::stop_requested() || !leader_alive || budget::someone_waits()
    }

    fn why_stopped(&self) -> Error {
        Error::new(
            PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
            "a helper of a parallel run stopped; its leader walks the rest of its pages",
        )
    }

    fn progress(&self, _rows_deleted: i64, _batches: i32) {}
}
