//! Runners: dynamic workers that perform runs, so that a long purge never holds up other rules.
//! - A **pooled** runner serves its database's scheduler: it waits for a run request handed over
//!   in the registry, performs it, hands the result back, and waits for the next; it leaves when idle
//!   for [`IDLE_EXIT`], when its scheduler is gone, or at once when idle while someone waits for a
//!   slot of the cluster's worker budget (its slot goes to them). A scheduler keeps at most
//!   `pg_token_cleanup.max_parallel_runs` of them.
//! - A **manual** runner performs the one run of a `token_cleanup.run()` call while the calling
//!   session waits for it.
//! - A **helper** walks one slice of a parallel run's table for the run's runner ([`helper`]).
//!
//! Pooled and manual runners take a [`RunRequest`] from a [`Handoff`], go through the same
//! [`run::perform`], and hand the [`RunResult`] back through it; a helper takes its slice the same
//! way and hands back what it did.

mod helper;
mod manual;

pub use helper::start_helper;
pub use manual::run_manual;

use super::handoff;
use super::registry::{self, budget, Kind};
use super::run::{self, RunRequest};
use super::{signals, LIBRARY, RUNNER_TYPE};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker};
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
    /// Walk the slice of a parallel run described in the handoff segment with this handle.
    Helper { handle: u32 },
}

impl Args {
    fn to_extra(self) -> String {
        match self {
            Args::Pool { scheduler_pid } => format!("pool {scheduler_pid}"),
            Args::Manual { handle } => format!("manual {handle}"),
            Args::Helper { handle } => format!("helper {handle}"),
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
            "helper" => number.parse().ok().map(|handle| Args::Helper { handle }),
            _ => None,
        }
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
        Args::Helper { handle } => helper::serve_slice(database, handle),
    }
}

/// A pooled runner's loop: take a request, perform it, hand the result back, wait for the next.
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
            Args::Helper { handle: 7 },
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
