//! Background workers. Design note:
//!
//! - **launcher** (static, one per cluster, registered in `_PG_init`): connects to no database, reads
//!   `pg_database` every [`launcher::TICK`], and keeps one **scheduler** running per database that
//!   has the extension. It cannot see `pg_extension` of other databases, so it *probes*: it starts a
//!   scheduler, which exits at once where the extension is absent (and says so in the registry);
//!   such databases are probed again after `pg_token_cleanup.database_probe_interval`, or at once
//!   when `CREATE EXTENSION` wakes the launcher. A scheduler that left for any other reason
//!   (`pg_terminate_backend`, an error) is started again within a few seconds.
//! - **scheduler** (dynamic, one per database): loads enabled rules, sleeps until the next due time,
//!   hands due rules to **runners** (at most `pg_token_cleanup.max_parallel_runs`, round-robin by
//!   owner), prunes history. A committed rule change (relcache invalidation of the rules table, and a
//!   latch set at commit) makes it reload the rules whose rows changed ([`reload`]).
//! - **runner** (dynamic): performs runs. Pooled runners serve their scheduler; a manual runner
//!   performs the one run of a `token_cleanup.run()` call while the caller waits.
//!
//! All of them fit in one budget for the cluster, `pg_token_cleanup.max_workers` ([`registry::budget`]):
//! a worker starts only into a slot reserved for it; a database whose scheduler cannot start, and a
//! `run()` that finds the budget full, wait in turn for a slot, which idle runners and schedulers
//! between runs hand over. A scheduler with no runner to be had runs due rules itself, so one slot
//! per database serves it, and databases beyond the budget take turns.
//!
//! They meet in the [`registry`] in shared memory, not in `pg_stat_activity` (which hides other
//! roles' sessions) nor through advisory locks (which any role can take): which worker serves which
//! database, their latches, and which rule and table each runner is running. A rule never runs twice
//! at once, and two rules on one table never run together: every run claims both in the registry.
//! A scheduled slot that finds its rule claimed by a manual run is skipped; a manual run that finds
//! it claimed fails with 55006.
//!
//! All workers start only after recovery (`BgWorkerStart_RecoveryFinished`): a hot standby runs
//! nothing, and a promoted standby starts working at once.

pub mod agenda;
pub mod dispatch;
pub mod handoff;
pub mod launcher;
pub mod registry;
pub mod reload;
pub mod run;
pub mod runner;
pub mod scheduler;
pub mod signals;

use crate::executor::RunReport;
use crate::history::Trigger;
use crate::rules::Rule;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// `backend_type` of each worker in `pg_stat_activity`.
pub const LAUNCHER_TYPE: &str = "pg_token_cleanup launcher";
pub const SCHEDULER_TYPE: &str = "pg_token_cleanup scheduler";
pub const RUNNER_TYPE: &str = "pg_token_cleanup runner";

pub const LIBRARY: &str = "pg_token_cleanup";

/// What every scheduler and runner session fixes when it starts, whatever the database
/// (`ALTER DATABASE … SET`), the role (`ALTER ROLE … SET`) or postgresql.conf say: our statements
/// must mean the same in every database, and a database owner must not be able to shadow what they
/// call (`search_path`, including a `"$user"` schema named after the worker's role), stop them
/// (timeouts, read-only transactions), or change how a rule's condition reads.
const WORKER_SETTINGS: [(&str, &str); 12] = [
    ("search_path", crate::owner::OWNER_SEARCH_PATH),
    // Our statements are short, and a long-lived process that JIT-compiles (a reload of thousands
    // of rules costs enough to trigger it) loads LLVM and keeps growing its memory.
    ("jit", "off"),
    ("statement_timeout", "0"),
    // The scheduler's own statements set a short lock_timeout where they could wait; the owner's
    // statements set the rule's.
    ("lock_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
    ("default_transaction_isolation", "read committed"),
    ("default_transaction_read_only", "off"),
    ("default_transaction_deferrable", "off"),
    ("standard_conforming_strings", "on"),
    ("transform_null_equals", "off"),
    // Deletes fire the table's triggers as any other session's would.
    ("session_replication_role", "origin"),
    ("row_security", "on"),
];

/// Connects a scheduler or runner to `database` and pins [`WORKER_SETTINGS`].
pub fn connect(database: pg_sys::Oid) {
    pgrx::bgworkers::BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    for (name, value) in WORKER_SETTINGS {
        crate::owner::set_for_session(name, value);
    }
    signals::reload_config_if_asked();
}

/// Whether the extension exists in the connected database (inside a transaction).
pub fn extension_present() -> bool {
    // SAFETY: syscache lookup; missing_ok = true.
    unsafe { pg_sys::get_extension_oid(c"pg_token_cleanup".as_ptr(), true) != pg_sys::InvalidOid }
}

/// The one LOG line every run writes: rule, outcome, rows deleted, batches, duration.
pub fn log_run(rule: &Rule, run_id: i64, trigger: Trigger, report: &RunReport) {
    // pg_token_cleanup.log_runs: an every-second rule would otherwise write 86,400 lines a day.
    if !crate::history::kept(report.outcome.status(), report.stats.rows_deleted) {
        return;
    }
    let what = format!(
        "pg_token_cleanup: rule \"{}\" run {} ({}) {}: deleted {} rows from {} in {} batches in {} ms (by {}, {} ms planning and finding rows, longest batch {} ms, {} batches met locked rows)",
        rule.name,
        run_id,
        trigger.as_str(),
        report.outcome.status(),
        report.stats.rows_deleted,
        rule.table_name,
        report.stats.batches,
        report.stats.elapsed_ms,
        report.stats.method.unwrap_or("no method"),
        report.stats.scan_ms,
        report.stats.longest_batch_ms,
        report.stats.batches_redone
    );
    match report.outcome.message() {
        None => log!("{what}"),
        Some(why) => log!("{what}: {why}"),
    }
}

/// A database's name ("" if it is gone).
pub fn database_name(database: pg_sys::Oid) -> String {
    // SAFETY: syscache lookup (in a transaction when the caller has one; the name is copied).
    let name = unsafe { pg_sys::get_database_name(database) };
    if name.is_null() {
        String::new()
    } else {
        // SAFETY: a palloc'd C string.
        unsafe { std::ffi::CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    }
}
