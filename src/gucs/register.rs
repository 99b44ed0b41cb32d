//! The registration of every setting: name, descriptions shown by `SHOW`/`pg_settings`, bounds,
//! context, and the time zone's check hook.

use super::*;
use pgrx::guc::{GucContext, GucFlags, GucRegistry};
use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr, CString};

/// Registers every setting with its name, descriptions, bounds and context.
pub(super) fn all() {
    GucRegistry::define_bool_guc(
        c"pg_token_cleanup.enabled",
        c"Runs cleanup rules on their schedules.",
        c"When off, the schedulers start no scheduled run (manual token_cleanup.run() still works). No restart needed.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: the check hook has the signature PostgreSQL expects and only reads its argument.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"pg_token_cleanup.timezone",
            c"Time zone in which rule schedules are evaluated.",
            c"An IANA time zone name such as UTC or Europe/Berlin.",
            &TIMEZONE,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_timezone),
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.batch_size",
        c"Rows deleted per batch (one transaction) for rules whose batch_size is NULL.",
        c"",
        &BATCH_SIZE,
        1,
        MAX_BATCH_SIZE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.parallel_workers",
        c"Runners one run may use at once, on disjoint page ranges of its table, for rules whose parallel_workers is NULL.",
        c"Each runner beyond the first takes a free slot of pg_token_cleanup.max_workers only while nobody waits for one; a run that gets none proceeds with fewer.",
        &PARALLEL_WORKERS,
        1,
        MAX_PARALLEL_WORKERS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.max_rows_per_second",
        c"Most rows a run deletes per second on average, for rules whose max_rows_per_second is NULL; 0 = no limit.",
        c"A run that gets ahead of this pace pauses between batches (holding no locks), leaving CPU, I/O and WAL bandwidth to the live workload.",
        &MAX_ROWS_PER_SECOND,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_token_cleanup.wal_compression",
        c"wal_compression for the batches of runs: server, pglz, lz4 or zstd.",
        c"'server' (the default) keeps the server's wal_compression. Compressing the full-page images a purge writes (lz4) cuts its WAL by about a quarter for CPU: worth it where WAL volume, not CPU, is the limit. A method this build of PostgreSQL lacks is ignored.",
        &WAL_COMPRESSION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.history_retention",
        c"How long rows of token_cleanup.runs are kept; the schedulers delete older ones.",
        c"",
        &HISTORY_RETENTION_S,
        60,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.lock_timeout",
        c"lock_timeout for a rule's statements when the rule sets none.",
        c"A run waits at most this long for a lock on its table, then fails and is recorded. 0 waits forever.",
        &LOCK_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.statement_timeout",
        c"statement_timeout for each of a rule's statements when the rule sets none.",
        c"A statement of a run (one batch, or the scan that finds candidate rows) running longer fails the run. 0 disables.",
        &STATEMENT_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.max_statement_timeout",
        c"The longest statement timeout any rule may have; 0: no ceiling.",
        c"A rule's statement_timeout above it, or 0, is lowered to it. A statement of the rule's code still running a second after its timeout is ended by the worker, even if it catches the cancel.",
        &MAX_STATEMENT_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.max_run_duration",
        c"The longest any run may go on; 0: no ceiling.",
        c"A rule's max_run_duration above it, or none, is lowered to it. A run stops between batches at it; the rule's code still running a second later is ended by the worker.",
        &MAX_RUN_DURATION_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.max_pause",
        c"The longest a run stays paused at one stretch by pacing; then it stops. 0: no limit.",
        c"A standby that never catches up (a delayed one), a WAL rate or waiters that never drop would otherwise keep a run paused for ever. The run is recorded stopped; the rest goes in the next run.",
        &MAX_PAUSE_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.database_probe_interval",
        c"How often the launcher looks again at databases where the extension was not found.",
        c"CREATE EXTENSION wakes the launcher at once; this interval catches databases copied from a template.",
        &DATABASE_PROBE_INTERVAL_S,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.max_parallel_runs",
        c"Most scheduled runs going at once in one database, each in a runner worker.",
        c"Each runner takes a background worker slot (max_worker_processes) while it lives.",
        &MAX_PARALLEL_RUNS,
        1,
        MAX_MAX_PARALLEL_RUNS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.max_workers",
        c"Most background workers of pg_token_cleanup at once in the whole cluster: the launcher, one scheduler per database served, runners.",
        c"Each takes a max_worker_processes slot. Databases take turns when they need more; a scheduler with no runner runs its rules itself. Keep max_worker_processes at least this plus 4 (parallel query, logical replication).",
        &MAX_WORKERS,
        2,
        MAX_WORKERS_LIMIT as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"pg_token_cleanup.max_fraction",
        c"Largest fraction of a table's live rows a run may delete, for rules whose max_fraction is NULL.",
        c"A run that would delete more deletes nothing and is recorded 'refused'. 1 (the default) is no limit.",
        &MAX_FRACTION,
        0.0,
        1.0,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.max_replica_lag",
        c"Runs pause between batches while a streaming replica is further behind than this, for rules whose max_replica_lag is NULL; 0 = off.",
        c"A standby that stopped replaying counts as behind by the age of the oldest WAL it has not replayed.",
        &MAX_REPLICA_LAG_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_float_guc(
        c"pg_token_cleanup.max_wal_rate",
        c"MB of WAL per second a run may write, averaged over the last second, for rules whose max_wal_rate is NULL; 0 = no limit.",
        c"A run over it pauses between batches, holding no locks.",
        &MAX_WAL_RATE_MB,
        0.0,
        1e6,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_token_cleanup.yield_to_waiters",
        c"Runs pause between batches while a session waits for a lock on their table, for rules whose yield_to_waiters is NULL.",
        c"And after a batch whose row locks made a session wait, they give way for as long as that batch took (at most a second).",
        &YIELD_TO_WAITERS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_token_cleanup.notify",
        c"Announces the end of runs with NOTIFY token_cleanup: off, failures or all.",
        c"The payload is JSON: database, rule, owner, run id, trigger, status, rows deleted, duration and SQLSTATE (never the error's text).",
        &NOTIFY,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_token_cleanup.log_runs",
        c"Which finished runs are kept in token_cleanup.runs and logged: all, nonzero or errors.",
        c"nonzero: runs that deleted rows or did not succeed; errors: failed, interrupted and refused runs. A rule's newest run is always kept. Lifetime counters (rule_totals) count every run.",
        &LOG_RUNS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.history_per_rule",
        c"Most runs of each status kept per rule in token_cleanup.runs (0: no cap).",
        c"On top of pg_token_cleanup.history_retention: an every-second rule would otherwise keep 86,400 runs a day. Lifetime counters (rule_totals) count every run.",
        &HISTORY_PER_RULE,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.max_retries",
        c"How often a failed scheduled run is tried again before its next slot (0: never).",
        c"",
        &MAX_RETRIES,
        0,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_token_cleanup.retry_backoff",
        c"Wait before the first retry of a failed scheduled run; it doubles for each further retry.",
        c"",
        &RETRY_BACKOFF_S,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    // SAFETY: called while loading the library, as PostgreSQL requires.
    unsafe {
        // PostgreSQL 15 renamed EmitWarningsOnPlaceholders to MarkGUCPrefixReserved.
        #[cfg(feature = "pg14")]
        pg_sys::EmitWarningsOnPlaceholders(c"pg_token_cleanup".as_ptr());
        #[cfg(not(feature = "pg14"))]
        pg_sys::MarkGUCPrefixReserved(c"pg_token_cleanup".as_ptr());
    }
}

/// GUC check hook: refuses time zone names that chrono-tz does not know, with a hint.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_timezone(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to a (possibly NULL) C string.
    let value = unsafe {
        let p = *newval;
        if p.is_null() {
            return true;
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    if value.parse::<chrono_tz::Tz>().is_ok() {
        return true;
    }
    let hint =
        CString::new("Use an IANA time zone name such as UTC, Europe/Berlin or America/New_York.")
            .expect("no NUL");
    // SAFETY: GUC_check_errhint copies the string (format "%s").
    unsafe {
        pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32);
        pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(hint.as_ptr());
    }
    false
}
