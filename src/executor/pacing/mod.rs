//! Pacing by what the database shows, between batches (a run holds no lock there): the lag of
//! streaming replicas, the WAL the run writes, and sessions waiting on the run's table. Each signal
//! is a rule column with a setting of the same name (NULL: the setting; 0 or off: not paced by it).
//!
//! - **Replica lag**, as gh-ost's `--max-lag-millis`: pause while any streaming replica is further
//!   behind than `max_replica_lag`. `pg_stat_replication.replay_lag` is refreshed only when the
//!   standby replays something, so a standby that stopped replaying keeps showing its last, small
//!   value. So the run also keeps its own samples of `(time, WAL insert position)`, and a replica's
//!   lag is the age of the oldest sample its `replay_lsn` has not reached: a stalled standby's lag
//!   grows with the clock. The reported `replay_lag` counts too when larger (a standby already
//!   behind before the run's first sample), but not once the replica has replayed the newest
//!   sample: after catching up, PostgreSQL keeps showing the old lag for a while.
//!   The age of what is unreplayed grows only as time passes, so a burst of batches could write far
//!   more WAL than the standby replays in `max_replica_lag` before that age reaches it. So the lag
//!   also counts what the standby has still to replay, plus what the next batch will write, at its
//!   capacity (its replay rate while it had WAL waiting, [`ReplayRates`]): the time it needs to
//!   catch up. And a batch writes no more WAL than the slowest standby replays in half the limit
//!   ([`Gate::batch_units`]). A standby that keeps up never holds up a batch.
//!   While paused for lag, the run writes a tiny WAL record (a logical message) at every recheck:
//!   a standby reports its replay position when new WAL reaches it, and otherwise only every
//!   `wal_receiver_status_interval` (10 s), which would keep a run paused long after the standby
//!   caught up.
//! - **WAL rate**: pause while the WAL this process wrote over the last second (`pgWalUsage`) is
//!   above `max_wal_rate` MB/s.
//! - **Waiters** (`yield_to_waiters`): pause while any session waits for a lock on the run's table
//!   (a migration's ALTER or CREATE INDEX queued behind other sessions, which the next batch's DELETE
//!   would otherwise queue behind and lengthen); and after a batch whose row locks made a session
//!   wait, give way for as long as that batch took (at most a second) before the next.
//!
//! A pause wakes every 100 ms (for replica lag, sooner when the standby needs less to catch up) to
//! notice SIGTERM and `max_run_duration`; `runs.paused` and `runs.pause_reasons` record it.
//!
//! - **Rows per second** (`max_rows_per_second`): before a batch, wait until the rows deleted so
//!   far are within the rate of the run's time. Not a pause: the run is as fast as it was asked to be.
//!
//! Here: the [`Gate`] every batch passes ([`Gate::before_batch`]): every wait between batches, in
//! one loop with one stop check, decided and recorded. It reads time from a [`Clock`] and the
//! server through a [`Server`], so its decisions are tested with fakes of both (`tests.rs`). The
//! estimators it decides with are pure Rust with plain `#[test]`s ([`estimators`]); what it reads
//! from the server is in [`probes`].

use crate::clock::Clock;
use pgrx::pg_sys;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod estimators;
mod limits;
mod probes;
#[cfg(test)]
mod tests;

use estimators::{units_within, FIRST_WAL_BUDGET, MAX_WAL_BUDGET};
pub use estimators::{LagClock, ReplayRates, Replica, WalMeter};
pub use limits::{Look, PaceLimits, Reason, Server};
pub use probes::{blocking_sessions, LiveServer};

/// How often a pause looks again.
const RECHECK: Duration = Duration::from_millis(100);
/// The shortest pause for replica lag (see `reason_to_pause`).
const MIN_RECHECK: Duration = Duration::from_millis(10);
/// Longest a run gives way after a batch that made a session wait.
const MAX_YIELD: Duration = Duration::from_secs(1);

/// The gate before every batch: decides and records a run's waits.
pub struct Gate {
    clock: Box<dyn Clock>,
    server: Box<dyn Server>,
    /// When the run started (its rows-per-second rate counts from here).
    started: Instant,
    limits: PaceLimits,
    table: pg_sys::Oid,
    lag: LagClock,
    rates: ReplayRates,
    /// This process's WAL total when the last batch started, and what that batch wrote (under
    /// max_replica_lag, the only signal that needs it).
    wal_at_batch_start: Option<u64>,
    last_batch_wal: u64,
    /// The last look found a replica too far behind: the next one probes for fresh positions.
    paused_for_lag: bool,
    /// WAL the last batch wrote per unit (page or ctid) it covered.
    wal_per_unit: f64,
    /// WAL the next batch may write (under max_replica_lag), and whether the next look is the
    /// first after a batch (which adjusts it).
    wal_budget: f64,
    batch_to_judge: bool,
    wal: WalMeter,
    /// Set by a batch whose row locks made a session wait: give way this long before the next.
    give_way: Option<Duration>,
    pub paused: Duration,
    pub reasons: BTreeMap<Reason, Duration>,
    /// The worst replica lag and byte gap seen while pacing by lag, and the latest.
    worst_lag: (Duration, u64),
    last_lag: (Duration, u64),
}

impl Gate {
    pub fn new(limits: PaceLimits, clock: Box<dyn Clock>, server: Box<dyn Server>) -> Gate {
        let started = clock.now();
        let mut gate = Gate {
            clock,
            server,
            started,
            limits,
            table: pg_sys::InvalidOid,
            lag: LagClock::default(),
            rates: ReplayRates::default(),
            wal_at_batch_start: None,
            last_batch_wal: 0,
            paused_for_lag: false,
            wal_per_unit: 0.0,
            wal_budget: FIRST_WAL_BUDGET,
            batch_to_judge: false,
            wal: WalMeter::default(),
            give_way: None,
            paused: Duration::ZERO,
            reasons: BTreeMap::new(),
            worst_lag: (Duration::ZERO, 0),
            last_lag: (Duration::ZERO, 0),
        };
        if limits.max_replica_lag.is_some() {
            let (now, lsn) = (gate.clock.now(), gate.server.insert_lsn());
            gate.lag.sample(now, lsn);
        }
        gate
    }

    /// The table the next batch deletes from (a leaf partition, for a partitioned table).
    pub fn set_table(&mut self, table: pg_sys::Oid) {
        self.table = table;
    }

    /// Every wait before a batch, the run having deleted `rows_deleted` rows: until the run is within
    /// its rows-per-second rate, then while a signal of the server says so. `check_stop` ends the
    /// wait (SIGTERM, max_run_duration) with its error. `too_long` makes the error that ends the
    /// run when one stretch of pauses passes max_pause (a delayed standby never catches up).
    pub fn before_batch<E>(
        &mut self,
        rule_name: &str,
        rows_deleted: i64,
        mut check_stop: impl FnMut() -> Result<(), E>,
        too_long: impl FnOnce(Duration, Reason) -> E,
    ) -> Result<(), E> {
        self.keep_rate(rows_deleted, &mut check_stop)?;
        if !self.limits.any() {
            return Ok(());
        }
        let result = self.wait_for_signals(rule_name, &mut check_stop, too_long);
        self.wal_at_batch_start = Some(self.server.process_wal_bytes());
        result
    }

    /// Waits, holding no lock, until `rows_deleted` are within max_rows_per_second of the run's
    /// time, rechecking every [`RECHECK`] (the stop check, and a latch left alone: a scheduler's
    /// wake-up for a rule change must survive the run).
    fn keep_rate<E>(
        &self,
        rows_deleted: i64,
        check_stop: &mut impl FnMut() -> Result<(), E>,
    ) -> Result<(), E> {
        let rate = self.limits.max_rows_per_second;
        if rate == 0 {
            return Ok(());
        }
        let due = Duration::from_secs_f64(rows_deleted.max(0) as f64 / f64::from(rate));
        loop {
            check_stop()?;
            let elapsed = self.clock.now().saturating_duration_since(self.started);
            let Some(ahead) = due.checked_sub(elapsed).filter(|a| !a.is_zero()) else {
                return Ok(());
            };
            self.clock.sleep(ahead.min(RECHECK));
        }
    }

    fn wait_for_signals<E>(
        &mut self,
        rule_name: &str,
        check_stop: &mut impl FnMut() -> Result<(), E>,
        too_long: impl FnOnce(Duration, Reason) -> E,
    ) -> Result<(), E> {
        let started = self.clock.now();
        let longest = self.limits.max_pause;
        if let Some(give_way) = self.give_way.take() {
            check_stop()?;
            self.pause(rule_name, Reason::Waiters, give_way);
        }
        loop {
            check_stop()?;
            let Some((reason, how_long)) = self.reason_to_pause() else {
                return Ok(());
            };
            let paused = self.clock.now().saturating_duration_since(started);
            if longest.is_some_and(|longest| paused >= longest) {
                return Err(too_long(paused, reason));
            }
            self.pause(rule_name, reason, how_long);
        }
    }

    /// The units (pages or ctids) the next batch may cover, at most `units`: under max_replica_lag,
    /// no more than its WAL budget (see [`Gate::adjust_budget`]).
    pub fn batch_units(&self, units: u64) -> u64 {
        if self.limits.max_replica_lag.is_none() {
            return units;
        }
        units_within(units, self.wal_per_unit, self.wal_budget)
    }

    /// After a batch of `units`: learns the WAL it wrote per unit (under max_replica_lag only).
    pub fn batch_done(&mut self, units: u64) {
        if let (Some(_), Some(start)) = (self.limits.max_replica_lag, self.wal_at_batch_start) {
            self.last_batch_wal = self.server.process_wal_bytes().saturating_sub(start);
            self.wal_per_unit = self.last_batch_wal as f64 / units.max(1) as f64;
            self.batch_to_judge = true;
        }
    }

    /// At the first look after a batch: the next batch may write twice the WAL if every replica
    /// keeps up (see [`ReplayRates::look`]); if one does not, as much as the slowest replays in
    /// half of max_replica_lag. Either way no more than the slowest replayed in half of it over the
    /// last second, so that a standby replaying in bursts, which keeps up with small batches
    /// between them, does not let the budget grow past what it replays on average. A batch's WAL
    /// reaches a standby at once: a bigger one would put it behind by more than the limit however
    /// long the run paused before it.
    fn adjust_budget(&mut self, max_lag: Duration) {
        let half = max_lag.as_secs_f64() / 2.0;
        if self.rates.kept_up() {
            self.wal_budget = (self.wal_budget * 2.0).min(MAX_WAL_BUDGET);
        } else if let Some(capacity) = self.rates.slowest() {
            self.wal_budget = (capacity * half).clamp(1.0, MAX_WAL_BUDGET);
        }
        if let Some(average) = self.rates.slowest_average() {
            self.wal_budget = self.wal_budget.min((average * half).max(FIRST_WAL_BUDGET));
        }
    }

    /// Whether batches should look, before they commit, for sessions their row locks hold up.
    pub fn watches_waiters(&self) -> bool {
        self.limits.yield_to_waiters
    }

    /// After a batch whose row locks made a session wait: the next batch gives way for as long as
    /// this one took (at most [`MAX_YIELD`]).
    pub fn give_way_after(&mut self, batch_took: Duration) {
        self.give_way = Some(batch_took.min(MAX_YIELD));
    }

    fn pause(&mut self, rule_name: &str, reason: Reason, how_long: Duration) {
        let detail = match reason {
            Reason::ReplicaLag => format!(
                ": {:.1} s, {} kB behind",
                self.last_lag.0.as_secs_f64(),
                self.last_lag.1 / 1024
            ),
            _ => String::new(),
        };
        self.server.report(&format!(
            "pg_token_cleanup: rule {rule_name}: paused ({}{detail})",
            reason.as_str()
        ));
        self.clock.sleep(how_long);
        self.paused += how_long;
        *self.reasons.entry(reason).or_default() += how_long;
    }

    /// The first signal over its limit, if any, and how long to pause for it.
    fn reason_to_pause(&mut self) -> Option<(Reason, Duration)> {
        let limits = self.limits;
        let Look {
            position,
            wal_total,
            waiting,
        } = self.server.look(&limits, self.table, self.paused_for_lag);
        let now = self.clock.now();
        if let (Some(max_lag), Some((lsn, replicas))) = (limits.max_replica_lag, position) {
            self.lag.sample(now, lsn);
            let (age, bytes) = self.lag.worst(now, lsn, &replicas);
            let backlog = (2 * self.last_batch_wal).max(FIRST_WAL_BUDGET as u64);
            self.rates.look(now, &replicas, backlog);
            if std::mem::take(&mut self.batch_to_judge) {
                self.adjust_budget(max_lag);
            }
            let next = (self.last_batch_wal as f64).min(self.wal_budget) as u64;
            let catch_up = self.rates.catch_up(lsn, next, &replicas);
            // What is reported: how old the oldest unreplayed WAL is (what the standby shows).
            self.last_lag = (age, bytes);
            if age > self.worst_lag.0 {
                self.worst_lag = (age, bytes);
            }
            self.paused_for_lag = age > max_lag || catch_up > max_lag;
            if self.paused_for_lag {
                // Only as long as the standby needs to catch up, when that is what holds the run
                // (a small max_replica_lag would otherwise cap a run at a batch per recheck).
                let how_long = if age > max_lag {
                    RECHECK
                } else {
                    (catch_up - max_lag).clamp(MIN_RECHECK, RECHECK)
                };
                return Some((Reason::ReplicaLag, how_long));
            }
        }
        if let (Some(max_rate), Some(total)) = (limits.max_wal_rate, wal_total) {
            if self.wal.last_second(now, total) as f64 > max_rate {
                return Some((Reason::WalRate, RECHECK));
            }
        }
        waiting.then_some((Reason::Waiters, RECHECK))
    }

    /// Paces this runner as one of `runners` working on the run at once (see
    /// [`PaceLimits::shared_by`]).
    pub fn share_with(&mut self, runners: u32) {
        self.limits = self.limits.shared_by(runners);
    }

    /// For `runs.pause_reasons`: seconds paused per reason, as JSON, with the worst replica lag
    /// seen (seconds and bytes) when the run was paced by it; `None` if never paused.
    pub fn reasons_json(&self) -> Option<String> {
        (!self.reasons.is_empty()).then(|| {
            let mut map: serde_json::Map<String, serde_json::Value> = self
                .reasons
                .iter()
                .map(|(reason, d)| (reason.as_str().to_string(), serde_json::json!(round_ms(*d))))
                .collect();
            if self.worst_lag.0 > Duration::ZERO {
                map.insert(
                    "worst_replica_lag".into(),
                    serde_json::json!(round_ms(self.worst_lag.0)),
                );
                map.insert(
                    "worst_replica_lag_bytes".into(),
                    serde_json::json!(self.worst_lag.1),
                );
            }
            serde_json::Value::Object(map).to_string()
        })
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
