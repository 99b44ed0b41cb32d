//! What a run is paced by (its limits, resolved once per run), why it paused, and the [`Server`]
//! the gate reads the signals from: the interface between the gate's decisions and the server.

use super::Replica;
use pgrx::pg_sys;
use std::time::Duration;

/// The limits a run is paced by, resolved once when it starts; `None`/false/0: not paced by it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PaceLimits {
    pub max_replica_lag: Option<Duration>,
    /// Bytes of WAL per second.
    pub max_wal_rate: Option<f64>,
    pub yield_to_waiters: bool,
    /// Rows deleted per second on average over the run.
    pub max_rows_per_second: u32,
    /// Longest one stretch of pauses may last before the run stops (pg_token_cleanup.max_pause).
    pub max_pause: Option<Duration>,
}

impl PaceLimits {
    /// What a run of `rule` is paced by: the rule's own limits, else the settings; 0 is off.
    pub fn of(rule: &crate::rules::Rule) -> PaceLimits {
        use crate::gucs;
        let lag_ms = rule
            .max_replica_lag_ms
            .unwrap_or_else(gucs::max_replica_lag_ms);
        let wal_mb = rule
            .max_wal_rate_mb
            .map(f64::from)
            .unwrap_or_else(gucs::max_wal_rate_mb);
        PaceLimits {
            max_replica_lag: (lag_ms > 0).then(|| Duration::from_millis(lag_ms as u64)),
            max_wal_rate: (wal_mb > 0.0).then_some(wal_mb * 1024.0 * 1024.0),
            yield_to_waiters: rule.yield_to_waiters.unwrap_or_else(gucs::yield_to_waiters),
            max_rows_per_second: rule.effective_max_rows_per_second(),
            max_pause: gucs::max_pause(),
        }
    }

    /// The share of one of `runners` runners working on one run at once: the rates (rows per
    /// second, WAL per second) are the run's, divided among them; the other signals are the
    /// server's, watched by each.
    pub fn shared_by(self, runners: u32) -> PaceLimits {
        let runners = runners.max(1);
        PaceLimits {
            max_wal_rate: self.max_wal_rate.map(|rate| rate / f64::from(runners)),
            max_rows_per_second: self.max_rows_per_second.div_ceil(runners),
            ..self
        }
    }

    /// Whether a signal of the server is watched (the rows-per-second rate needs none).
    pub(super) fn any(&self) -> bool {
        self.max_replica_lag.is_some() || self.max_wal_rate.is_some() || self.yield_to_waiters
    }
}

/// Why a run paused (the keys of `runs.pause_reasons`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    ReplicaLag,
    WalRate,
    Waiters,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ReplicaLag => "replica_lag",
            Reason::WalRate => "wal_rate",
            Reason::Waiters => "waiters",
        }
    }
}
/// What one look at the server found (see [`Server::look`]).
#[derive(Debug, Clone, Default)]
pub struct Look {
    /// Under max_replica_lag: the WAL insert position and the streaming replicas.
    pub position: Option<(u64, Vec<Replica>)>,
    /// Under max_wal_rate: the WAL this process has written.
    pub wal_total: Option<u64>,
    /// Under yield_to_waiters: whether a session waits for a lock on the table.
    pub waiting: bool,
}

/// What the gate reads from the server, and where it says that the run is paused.
pub trait Server {
    /// What the signals `limits` watches show now, for the table `table`; with `probe`, standbys
    /// are asked to report their replay position (see the module's header).
    fn look(&mut self, limits: &PaceLimits, table: pg_sys::Oid, probe: bool) -> Look;
    /// The WAL this process has written.
    fn process_wal_bytes(&self) -> u64;
    /// Where the primary inserts WAL now.
    fn insert_lsn(&self) -> u64;
    /// Says what the run is doing (`pg_stat_activity`).
    fn report(&self, what: &str);
}
