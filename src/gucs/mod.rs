//! Every `pg_token_cleanup.*` setting: private statics, one [`init`] that registers them (their
//! names, descriptions and bounds are in [`register`]), and typed accessors. All are `SIGHUP` settings (postgresql.conf or `ALTER SYSTEM` + `pg_reload_conf()`),
//! because the background workers read them; the README documents each one.

mod register;

use pgrx::guc::GucSetting;
use std::ffi::CString;

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
    GucSetting::<WalCompression>::new(WalCompression::Server);
/// Most runners one run may use at once (a rule's parallel_workers, or the setting).
pub const MAX_PARALLEL_WORKERS: i32 = 16;
static PARALLEL_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
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
    register::all();
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

/// Runners a run may use at once when its rule sets none.
pub fn parallel_workers() -> i32 {
    PARALLEL_WORKERS.get()
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
