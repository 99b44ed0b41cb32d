//! The runner: a dynamic worker that performs one manual run (`token_cleanup.run()`), so that a
//! manual run has exactly the behaviour of a scheduled one (batches in their own transactions, as the
//! owner, recorded before work starts) while the calling session waits for it.

use super::{signals, LIBRARY, RUNNER_TYPE};
use crate::catalog;
use crate::executor;
use crate::history::{self, Outcome, Trigger};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, DynamicBackgroundWorker};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Text the runner records when the rule is already running; `run()` recognises it.
pub const ALREADY_RUNNING: &str = "already running";

/// Starts a runner for `rule_id` as run `run_id` in the current database, notifying this backend
/// when it stops. `None` when no worker slot is free.
pub fn spawn(rule_id: i64, run_id: i64, rule_name: &str) -> Option<DynamicBackgroundWorker> {
    // SAFETY: reading this backend's database OID and PID.
    let (database, my_pid) = unsafe { (pg_sys::MyDatabaseId, pg_sys::MyProcPid) };
    let title = format!("pg_token_cleanup runner {rule_name}");
    let title = truncated(&title, 90);
    BackgroundWorkerBuilder::new(title)
        .set_type(RUNNER_TYPE)
        .set_library(LIBRARY)
        .set_function("pg_token_cleanup_runner_main")
        .enable_spi_access()
        .set_restart_time(None)
        .set_argument(database.into_datum())
        .set_extra(&format!("{rule_id} {run_id}"))
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
    // SAFETY: spawn() passes an OID datum.
    let database = unsafe { pg_sys::Oid::from_datum(arg, false) }.expect("database OID argument");
    let mut ids = BackgroundWorker::get_extra()
        .split_whitespace()
        .map(|s| s.parse::<i64>());
    let (Some(Ok(rule_id)), Some(Ok(run_id))) = (ids.next(), ids.next()) else {
        warning!("pg_token_cleanup: runner started without rule and run ids");
        return;
    };
    super::connect(database);

    // Record the run first, then take the rule's lock; a busy rule gets a failed run that says so.
    let started = BackgroundWorker::transaction(|| {
        let rule = catalog::load_rule_by_id(rule_id)?;
        history::begin(
            Some(run_id),
            rule.id,
            &rule.name,
            &rule.owner,
            Trigger::Manual,
            None,
        );
        if executor::try_lock_rule(rule.id) {
            return Some(Ok(rule));
        }
        let other = history::running_elsewhere(rule.id)
            .map(|id| format!(" as run {id}"))
            .unwrap_or_default();
        let why = format!("{ALREADY_RUNNING}{other}: rule \"{}\" is being run by another session; this manual run did not start", rule.name);
        history::finish(run_id, &Outcome::Failed(why), &history::Counts::default());
        Some(Err(()))
    });
    let Some(Ok(rule)) = started else { return };
    let report = executor::execute(&rule, run_id, &signals::stop_requested);
    BackgroundWorker::transaction(|| executor::unlock_rule(rule.id));
    super::log_run(&rule, run_id, Trigger::Manual, &report);
}

#[cfg(test)]
mod tests {
    use super::truncated;

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
