//! Every `pg_token_cleanup.*` setting: private statics, one [`init`] that registers them, and typed
//! accessors. All are `SIGHUP` settings (postgresql.conf or `ALTER SYSTEM` + `pg_reload_conf()`),
//! because the background workers read them; the README documents each one.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr, CString};

/// Default rows per batch (one transaction each) for rules whose `batch_size` is NULL.
pub const DEFAULT_BATCH_SIZE: i32 = 5000;
/// Largest batch a rule or the setting may ask for.
pub const MAX_BATCH_SIZE: i32 = 1_000_000;

static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
static TIMEZONE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"UTC"));
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_BATCH_SIZE);
static HISTORY_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(30 * 86_400);
static LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
static STATEMENT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(300_000);
/// Ceilings a rule cannot exceed or turn off (0: none): the DBA's, not the rule owner's.
static MAX_STATEMENT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(0);
static MAX_RUN_DURATION_S: GucSetting<i32> = GucSetting::<i32>::new(0);
static MAX_PAUSE_S: GucSetting<i32> = GucSetting::<i32>::new(600);
/// How the WAL of a run's batches is compressed (PostgreSQL's `wal_compression`, for our
/// transactions only).
#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum WalCompression {
    /// Whatever the server's `wal_compression` says.
    #[name = c"server"]
    Server,
    #[name = c"pglz"]
    Pglz,
    #[name = c"lz4"]
    Lz4,
    #[name = c"zstd"]
    Zstd,
}

impl WalCompression {
    /// The `wal_compression` value to set, `None` for the server's own.
    pub fn setting(self) -> Option<&'static str> {
        match self {
            WalCompression::Server => None,
            WalCompression::Pglz => Some("pglz"),
            WalCompression::Lz4 => Some("lz4"),
            WalCompression::Zstd => Some("zstd"),
        }
    }
}

static WAL_COMPRESSION: GucSetting<WalCompression> =
    GucSetting::<WalCompression>::new(WalCompression::Lz4);
static MAX_ROWS_PER_SECOND: GucSetting<i32> = GucSetting::<i32>::new(0);
static DATABASE_PROBE_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(60);
/// Default and largest number of runs a database's scheduler has going at once.
pub const DEFAULT_MAX_PARALLEL_RUNS: i32 = 4;
const MAX_MAX_PARALLEL_RUNS: i32 = 64;
static MAX_PARALLEL_RUNS: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_MAX_PARALLEL_RUNS);
/// The cluster's worker budget. 4 fits PostgreSQL's default `max_worker_processes = 8` beside what
/// the server's own defaults need ([`WORKER_ROOM`]).
pub const DEFAULT_MAX_WORKERS: i32 = 4;
/// The most `max_workers` may be: the slots of the workers' registry in shared memory.
pub const MAX_WORKERS_LIMIT: usize = 512;
static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_MAX_WORKERS);
/// Background worker slots the user's own work needs on a server with PostgreSQL's defaults: the
/// logical replication launcher, one logical replication worker, and the two workers of a parallel
/// query (`max_parallel_workers_per_gather = 2`).
pub const WORKER_ROOM: i32 = 4;
static MAX_FRACTION: GucSetting<f64> = GucSetting::<f64>::new(1.0);
static MAX_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(3);
static RETRY_BACKOFF_S: GucSetting<i32> = GucSetting::<i32>::new(60);
static MAX_REPLICA_LAG_MS: GucSetting<i32> = GucSetting::<i32>::new(0);
static MAX_WAL_RATE_MB: GucSetting<f64> = GucSetting::<f64>::new(0.0);
static YIELD_TO_WAITERS: GucSetting<bool> = GucSetting::<bool>::new(false);

/// When a run's end is announced with `NOTIFY token_cleanup`.
#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Notify {
    #[name = c"off"]
    Off,
    #[name = c"failures"]
    Failures,
    #[name = c"all"]
    All,
}

static NOTIFY: GucSetting<Notify> = GucSetting::<Notify>::new(Notify::Off);

/// Which finished runs stay in the history and get a LOG line.
#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogRuns {
    /// Every run.
    #[name = c"all"]
    All,
    /// Runs that deleted rows or did not succeed.
    #[name = c"nonzero"]
    Nonzero,
    /// Runs that failed, were interrupted or refused.
    #[name = c"errors"]
    Errors,
}

static LOG_RUNS: GucSetting<LogRuns> = GucSetting::<LogRuns>::new(LogRuns::All);
static HISTORY_PER_RULE: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Registers every setting; called from `_PG_init` in every process that loads the library.
pub fn init() {
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
        c"Compressing the full-page images a purge writes cuts its WAL by about a third, which shortens the WAL flushes of concurrent commits. 'server' keeps the server's wal_compression. A method this build of PostgreSQL lacks is ignored.",
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

pub fn enabled() -> bool {
    ENABLED.get()
}

/// The time zone schedules are evaluated in (validated by the check hook, so parsing cannot fail
/// except for a value set before the library was loaded; that falls back to UTC).
pub fn timezone() -> chrono_tz::Tz {
    TIMEZONE
        .get()
        .and_then(|s| s.to_str().ok().and_then(|s| s.parse().ok()))
        .unwrap_or(chrono_tz::UTC)
}

pub fn batch_size() -> i32 {
    BATCH_SIZE.get()
}

pub fn wal_compression() -> WalCompression {
    WAL_COMPRESSION.get()
}

pub fn max_rows_per_second() -> i32 {
    MAX_ROWS_PER_SECOND.get()
}

pub fn history_retention_seconds() -> i64 {
    i64::from(HISTORY_RETENTION_S.get())
}

pub fn lock_timeout_ms() -> i32 {
    LOCK_TIMEOUT_MS.get()
}

pub fn statement_timeout_ms() -> i32 {
    STATEMENT_TIMEOUT_MS.get()
}

/// pg_token_cleanup.max_statement_timeout in ms; 0: no ceiling.
pub fn max_statement_timeout_ms() -> i32 {
    MAX_STATEMENT_TIMEOUT_MS.get()
}

/// pg_token_cleanup.max_run_duration; `None`: no ceiling.
pub fn max_run_duration() -> Option<std::time::Duration> {
    let s = MAX_RUN_DURATION_S.get();
    (s > 0).then(|| std::time::Duration::from_secs(s as u64))
}

/// pg_token_cleanup.max_pause; `None`: no limit.
pub fn max_pause() -> Option<std::time::Duration> {
    let s = MAX_PAUSE_S.get();
    (s > 0).then(|| std::time::Duration::from_secs(s as u64))
}

pub fn database_probe_interval() -> std::time::Duration {
    std::time::Duration::from_secs(DATABASE_PROBE_INTERVAL_S.get() as u64)
}

pub fn max_parallel_runs() -> usize {
    MAX_PARALLEL_RUNS.get().max(1) as usize
}

/// pg_token_cleanup.max_workers.
pub fn max_workers() -> usize {
    MAX_WORKERS.get().max(2) as usize
}

/// A time zone name as the setting takes it: an IANA name chrono-tz knows.
pub fn parse_timezone(name: &str) -> Option<chrono_tz::Tz> {
    name.parse().ok()
}

/// The largest fraction of live rows a run may delete when its rule sets none (1: no limit).
pub fn max_fraction() -> f64 {
    MAX_FRACTION.get()
}

/// Replica lag runs pause at when their rule sets none; 0: off.
pub fn max_replica_lag_ms() -> i64 {
    i64::from(MAX_REPLICA_LAG_MS.get().max(0))
}

/// MB/s of WAL a run may write when its rule sets none; 0: no limit.
pub fn max_wal_rate_mb() -> f64 {
    MAX_WAL_RATE_MB.get().max(0.0)
}

pub fn yield_to_waiters() -> bool {
    YIELD_TO_WAITERS.get()
}

pub fn notify() -> Notify {
    NOTIFY.get()
}

pub fn log_runs() -> LogRuns {
    LOG_RUNS.get()
}

/// pg_token_cleanup.history_per_rule; 0: no cap.
pub fn history_per_rule() -> i32 {
    HISTORY_PER_RULE.get()
}

pub fn max_retries() -> u32 {
    MAX_RETRIES.get().max(0) as u32
}

/// The wait before the first retry of a failed scheduled run.
pub fn retry_backoff() -> std::time::Duration {
    std::time::Duration::from_secs(RETRY_BACKOFF_S.get().max(1) as u64)
}
