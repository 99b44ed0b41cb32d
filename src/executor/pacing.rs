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
//!   ([`Pacer::batch_units`]). A standby that keeps up never holds up a batch.
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

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How often a pause looks again.
const RECHECK: Duration = Duration::from_millis(100);
/// The shortest pause for replica lag (see `reason_to_pause`).
const MIN_RECHECK: Duration = Duration::from_millis(10);
/// Longest a run gives way after a batch that made a session wait.
const MAX_YIELD: Duration = Duration::from_secs(1);
/// Most WAL position samples kept (one per batch or recheck): hours of batches.
const MAX_SAMPLES: usize = 100_000;

/// The limits a run is paced by; `None`/false: that signal is not watched.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PaceLimits {
    pub max_replica_lag: Option<Duration>,
    /// Bytes of WAL per second.
    pub max_wal_rate: Option<f64>,
    pub yield_to_waiters: bool,
}

impl PaceLimits {
    fn any(&self) -> bool {
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

/// How long replay rates are measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// The shortest stretch a replay rate is measured over (a standby that replays in bursts, as one
/// busy with queries does, would show its bursts' rate over a shorter one).
const MIN_RATE_SPAN: Duration = Duration::from_millis(200);
/// The WAL a run's first batch may write under max_replica_lag, before any replica's capacity is
/// known; doubled after every batch all replicas kept up with (as TCP's slow start).
const FIRST_WAL_BUDGET: f64 = 1_048_576.0;
const MAX_WAL_BUDGET: f64 = 1_073_741_824.0;

/// A streaming replica's position as `pg_stat_replication` shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replica {
    /// Its WAL sender's process id: which replica it is from one look to the next.
    pub pid: i32,
    pub replay_lsn: u64,
    /// What it has received and flushed (reported with `replay_lsn`).
    pub flush_lsn: u64,
    /// `replay_lag`, which stops moving when replay stops.
    pub reported_lag: Duration,
}

/// The samples of the primary's WAL position a run keeps, to tell how far behind a replica is.
#[derive(Debug, Default)]
pub struct LagClock {
    samples: VecDeque<(Instant, u64)>,
}

impl LagClock {
    pub fn sample(&mut self, at: Instant, lsn: u64) {
        if self.samples.back().is_none_or(|&(_, last)| lsn > last) {
            self.samples.push_back((at, lsn));
        }
        if self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// The worst lag over `replicas` at `now` (and that replica's distance in bytes from `lsn`,
    /// the newest position, sampled last): for a replica behind it, the age of the oldest sample it
    /// has not replayed, or its reported lag if larger (it may have been behind before the run's
    /// first sample); none for a replica that replayed it. Forgets the samples every replica has
    /// replayed.
    pub fn worst(&mut self, now: Instant, lsn: u64, replicas: &[Replica]) -> (Duration, u64) {
        let mut worst = (Duration::ZERO, 0);
        for replica in replicas {
            // A replica that replayed the newest sample is caught up, whatever replay_lag still
            // shows: PostgreSQL keeps showing the last measured lag for a while after catch-up.
            let lag = self
                .samples
                .iter()
                .find(|&&(_, sampled)| sampled > replica.replay_lsn)
                .map_or(Duration::ZERO, |&(at, _)| {
                    now.saturating_duration_since(at).max(replica.reported_lag)
                });
            if lag >= worst.0 {
                worst = (lag, lsn.saturating_sub(replica.replay_lsn));
            }
        }
        if let Some(slowest) = replicas.iter().map(|r| r.replay_lsn).min() {
            while self.samples.front().is_some_and(|&(_, s)| s <= slowest) {
                self.samples.pop_front();
            }
        }
        worst
    }
}

/// Each replica's recent replay positions: how fast it can replay, and whether it keeps up.
///
/// A replica's replay rate tells its capacity only while it has WAL waiting: a replica that keeps up
/// replays just what arrives. So a capacity is measured only over a stretch in which it always had
/// WAL to replay (since a look whose primary position it has still not reached).
#[derive(Debug, Default)]
pub struct ReplayRates {
    /// Per WAL sender: its looks of the last second, (when, its replay position, what it had
    /// received and flushed).
    seen: std::collections::HashMap<i32, VecDeque<(Instant, u64, u64)>>,
    /// Per WAL sender: bytes/s it replayed over the last stretch in which it had WAL waiting.
    capacity: std::collections::HashMap<i32, f64>,
    /// Per WAL sender: bytes/s it replayed over its looks of the last second, waiting or not.
    average: std::collections::HashMap<i32, f64>,
    /// Per WAL sender: at the last look, it held no more WAL unreplayed than a healthy one does.
    kept_up: std::collections::HashMap<i32, bool>,
}

impl ReplayRates {
    /// Records a look at `replicas` at `now`. A replica holding at most `backlog` bytes received
    /// and not replayed keeps up: a standby reports its position when WAL reaches it, before
    /// replaying it, so a healthy one shows about what it has just received.
    pub fn look(&mut self, now: Instant, replicas: &[Replica], backlog: u64) {
        let present = |pid: &i32| replicas.iter().any(|r| r.pid == *pid);
        self.seen.retain(|pid, _| present(pid));
        self.capacity.retain(|pid, _| present(pid));
        self.average.retain(|pid, _| present(pid));
        self.kept_up.clear();
        for replica in replicas {
            let waiting = |replay: u64, received: u64| received.saturating_sub(replay) > backlog;
            let kept_up = !waiting(replica.replay_lsn, replica.flush_lsn);
            self.kept_up.insert(replica.pid, kept_up);
            let seen = self.seen.entry(replica.pid).or_default();
            seen.push_back((now, replica.replay_lsn, replica.flush_lsn));
            // Keep one look at or before the window's start.
            while seen.len() > 2 && now.duration_since(seen[1].0) >= RATE_WINDOW {
                seen.pop_front();
            }
            let rate_since = |since: Instant, from: u64| {
                let span = now.duration_since(since);
                (span >= MIN_RATE_SPAN)
                    .then(|| replica.replay_lsn.saturating_sub(from) as f64 / span.as_secs_f64())
            };
            if let Some(rate) = seen
                .front()
                .and_then(|&(since, from, _)| rate_since(since, from))
            {
                self.average.insert(replica.pid, rate);
            }
            if kept_up {
                // Nothing was waiting for it: an old measure (say, while it was stopped) no
                // longer holds.
                self.capacity.remove(&replica.pid);
                continue;
            }
            // Since the oldest look at which WAL was waiting for it, if it has not replayed all
            // it had received then, it always had WAL to replay: its rate is its capacity.
            let busy_since = seen.iter().find(|&&(_, replay, received)| {
                waiting(replay, received) && replica.replay_lsn < received
            });
            if let Some(rate) = busy_since.and_then(|&(since, from, _)| rate_since(since, from)) {
                self.capacity.insert(replica.pid, rate);
            }
        }
    }

    /// The longest a replica behind `lsn` needs to replay what it has not, plus `next` bytes more,
    /// at its capacity (one that replays nothing never catches up). A replica behind whose capacity
    /// is not measured yet needs nothing if it kept up at the last look, and never catches up if it
    /// did not: the run waits until it is measured (a run writes far more in the time it takes to
    /// measure than a slow standby replays).
    pub fn catch_up(&self, lsn: u64, next: u64, replicas: &[Replica]) -> Duration {
        let mut longest = Duration::ZERO;
        for replica in replicas {
            let gap = lsn.saturating_sub(replica.replay_lsn);
            if gap == 0 {
                continue;
            }
            let Some(&rate) = self.capacity.get(&replica.pid) else {
                if self.kept_up.get(&replica.pid) == Some(&false) {
                    longest = Duration::MAX;
                }
                continue;
            };
            let seconds = (gap + next) as f64 / rate;
            let need = if seconds.is_finite() {
                Duration::from_secs_f64(seconds.min(1e9))
            } else {
                Duration::MAX
            };
            longest = longest.max(need);
        }
        longest
    }

    /// Whether, at the last look, no replica held more WAL unreplayed than a healthy one does.
    pub fn kept_up(&self) -> bool {
        self.kept_up.values().all(|&kept| kept)
    }

    /// The lowest capacity measured among the replicas of the last look.
    pub fn slowest(&self) -> Option<f64> {
        self.capacity.values().copied().reduce(f64::min)
    }

    /// The lowest replay rate over the last second among the replicas of the last look.
    pub fn slowest_average(&self) -> Option<f64> {
        self.average.values().copied().reduce(f64::min)
    }
}

/// At most `units`, and no more than write `budget` bytes of WAL at `wal_per_unit` bytes a unit
/// (unknown if 0); at least one.
fn units_within(units: u64, wal_per_unit: f64, budget: f64) -> u64 {
    if wal_per_unit <= 0.0 {
        return units;
    }
    units.min((budget / wal_per_unit) as u64).max(1)
}

/// WAL written by this process over the last second.
#[derive(Debug, Default)]
pub struct WalMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl WalMeter {
    /// Records the process's WAL total at `at` and returns the bytes written since one second
    /// before `at` (since the first sample, if the run is younger).
    pub fn last_second(&mut self, at: Instant, total: u64) -> u64 {
        self.samples.push_back((at, total));
        let window_start = at.checked_sub(Duration::from_secs(1));
        // Keep one sample at or before the window's start: the base the window is measured from.
        while self.samples.len() > 1 && window_start.is_some_and(|start| self.samples[1].0 <= start)
        {
            self.samples.pop_front();
        }
        total.saturating_sub(self.samples.front().map_or(total, |&(_, b)| b))
    }
}

/// Decides and records a run's pauses.
pub struct Pacer {
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

impl Pacer {
    pub fn new(limits: PaceLimits, table: pg_sys::Oid) -> Pacer {
        let mut pacer = Pacer {
            limits,
            table,
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
            pacer.lag.sample(Instant::now(), insert_lsn());
        }
        pacer
    }

    /// The table the next batch deletes from (a leaf partition, for a partitioned table).
    pub fn set_table(&mut self, table: pg_sys::Oid) {
        self.table = table;
    }

    /// Waits between batches while a signal says so. `check_stop` ends the wait (SIGTERM,
    /// max_run_duration) with its error.
    /// `too_long` makes the error that ends the run when one stretch of pauses passes
    /// pg_token_cleanup.max_pause (a delayed standby never catches up).
    pub fn wait<E>(
        &mut self,
        rule_name: &str,
        mut check_stop: impl FnMut() -> Result<(), E>,
        too_long: impl FnOnce(Duration, Reason) -> E,
    ) -> Result<(), E> {
        if !self.limits.any() {
            return Ok(());
        }
        let result = self.wait_for_signals(rule_name, &mut check_stop, too_long);
        self.wal_at_batch_start = Some(process_wal_bytes());
        result
    }

    fn wait_for_signals<E>(
        &mut self,
        rule_name: &str,
        check_stop: &mut impl FnMut() -> Result<(), E>,
        too_long: impl FnOnce(Duration, Reason) -> E,
    ) -> Result<(), E> {
        let started = Instant::now();
        let longest = crate::gucs::max_pause();
        if let Some(give_way) = self.give_way.take() {
            check_stop()?;
            self.pause(rule_name, Reason::Waiters, give_way);
        }
        loop {
            check_stop()?;
            let Some((reason, how_long)) = self.reason_to_pause() else {
                return Ok(());
            };
            if longest.is_some_and(|longest| started.elapsed() >= longest) {
                return Err(too_long(started.elapsed(), reason));
            }
            self.pause(rule_name, reason, how_long);
        }
    }

    /// The units (pages or ctids) the next batch may cover, at most `units`: under max_replica_lag,
    /// no more than its WAL budget (see [`Pacer::adjust_budget`]).
    pub fn batch_units(&self, units: u64) -> u64 {
        if self.limits.max_replica_lag.is_none() {
            return units;
        }
        units_within(units, self.wal_per_unit, self.wal_budget)
    }

    /// After a batch of `units`: learns the WAL it wrote per unit (under max_replica_lag only).
    pub fn batch_done(&mut self, units: u64) {
        if let (Some(_), Some(start)) = (self.limits.max_replica_lag, self.wal_at_batch_start) {
            self.last_batch_wal = process_wal_bytes().saturating_sub(start);
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
        super::report_activity(&format!(
            "pg_token_cleanup: rule {rule_name}: paused ({}{detail})",
            reason.as_str()
        ));
        std::thread::sleep(how_long);
        self.paused += how_long;
        *self.reasons.entry(reason).or_default() += how_long;
    }

    /// The first signal over its limit, if any (read in a short transaction of its own).
    fn reason_to_pause(&mut self) -> Option<(Reason, Duration)> {
        let (limits, table) = (self.limits, self.table);
        let probe = self.paused_for_lag;
        let (position, wal_total, waiting) = BackgroundWorker::transaction(move || {
            (
                limits.max_replica_lag.map(|_| {
                    let seen = (insert_lsn(), streaming_replicas());
                    // After reading: this look's position is behind the probe, which standbys
                    // replay in time for the next look.
                    if probe {
                        ask_replicas_for_their_position();
                    }
                    seen
                }),
                limits.max_wal_rate.map(|_| process_wal_bytes()),
                limits.yield_to_waiters && sessions_waiting_on(table),
            )
        });
        let now = Instant::now();
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

/// The WAL this process has written.
fn process_wal_bytes() -> u64 {
    // SAFETY: this process's own WAL counters.
    unsafe { pg_sys::pgWalUsage.wal_bytes }
}

/// Writes a tiny WAL record and flushes it, so that streaming standbys receive new WAL and answer
/// with their replay position now (see the module's header).
fn ask_replicas_for_their_position() {
    let lsn = Spi::get_one::<i64>(
        "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_logical_emit_message(false, \
                'pg_token_cleanup', 'replica lag probe'), '0/0')::int8",
    );
    if let Ok(Some(lsn)) = lsn {
        // SAFETY: flushes WAL up to a position already inserted.
        unsafe { pg_sys::XLogFlush(lsn as u64) };
    }
}

/// Where the primary inserts WAL now.
fn insert_lsn() -> u64 {
    // SAFETY: reads the shared insert position; valid outside recovery, where runs happen.
    unsafe { pg_sys::GetXLogInsertRecPtr() }
}

/// Replicas that are streaming (catching up, backing up or stopping ones are ignored).
fn streaming_replicas() -> Vec<Replica> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT pid, pg_catalog.pg_wal_lsn_diff(replay_lsn, '0/0')::int8, \
                    pg_catalog.pg_wal_lsn_diff(coalesce(flush_lsn, replay_lsn), '0/0')::int8, \
                    coalesce(extract(epoch FROM replay_lag), 0)::float8 \
               FROM pg_catalog.pg_stat_replication \
              WHERE state = 'streaming' AND replay_lsn IS NOT NULL",
            None,
            &[],
        )?;
        let mut replicas = Vec::new();
        for row in rows {
            let pid: i32 = row.get(1)?.unwrap_or(0);
            let replay: i64 = row.get(2)?.unwrap_or(0);
            let flush: i64 = row.get(3)?.unwrap_or(0);
            let reported: f64 = row.get(4)?.unwrap_or(0.0);
            replicas.push(Replica {
                pid,
                flush_lsn: flush.max(replay).max(0) as u64,
                replay_lsn: replay.max(0) as u64,
                reported_lag: Duration::from_secs_f64(reported.max(0.0)),
            });
        }
        Ok::<_, pgrx::spi::Error>(replicas)
    })
    .unwrap_or_default()
}

/// Inside a batch's transaction, after its DELETE: whether a session waits for a lock this process
/// holds.
pub fn blocking_sessions() -> bool {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a \
                         WHERE pg_catalog.pg_backend_pid() = ANY (pg_catalog.pg_blocking_pids(a.pid)))",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Whether a session waits for a lock on `table` (the relation or one of its rows).
fn sessions_waiting_on(table: pg_sys::Oid) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_locks l \
                         WHERE NOT l.granted AND l.relation = $1 AND l.database = $2)",
        // SAFETY: this backend's database, set once it connected.
        &[table.into(), unsafe { pg_sys::MyDatabaseId }.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_replica_lags_by_the_age_of_what_it_has_not_replayed() {
        let t0 = Instant::now();
        let mut clock = LagClock::default();
        clock.sample(t0, 100);
        clock.sample(t0 + Duration::from_secs(1), 200);
        clock.sample(t0 + Duration::from_secs(2), 300);
        // Replayed up to 150 and stopped there, still reporting a small replay_lag.
        let stalled = Replica {
            pid: 1,
            replay_lsn: 150,
            flush_lsn: 150,
            reported_lag: Duration::from_millis(20),
        };
        let (lag, bytes) = clock.worst(t0 + Duration::from_secs(5), 300, &[stalled]);
        assert_eq!(lag, Duration::from_secs(4)); // the sample at 200, taken at t0 + 1 s
        assert_eq!(bytes, 150);
        // Forgot what every replica has replayed, kept the rest.
        assert_eq!(clock.samples.len(), 2);
    }

    #[test]
    fn a_replica_that_replayed_everything_does_not_lag_whatever_it_last_reported() {
        let t0 = Instant::now();
        let mut clock = LagClock::default();
        clock.sample(t0, 100);
        // Caught up after a stall: replay_lag still shows the stall for a while.
        let caught_up = Replica {
            pid: 1,
            replay_lsn: 100,
            flush_lsn: 100,
            reported_lag: Duration::from_secs(12),
        };
        assert_eq!(
            clock.worst(t0 + Duration::from_secs(9), 100, &[caught_up]),
            (Duration::ZERO, 0)
        );
        assert_eq!(clock.worst(t0, 100, &[]), (Duration::ZERO, 0));
    }

    #[test]
    fn a_replica_already_behind_at_the_first_sample_lags_by_what_it_reports() {
        let t0 = Instant::now();
        let mut clock = LagClock::default();
        clock.sample(t0, 100);
        let slow = Replica {
            pid: 1,
            replay_lsn: 90,
            flush_lsn: 90,
            reported_lag: Duration::from_secs(3),
        };
        assert_eq!(clock.worst(t0, 100, &[slow]), (Duration::from_secs(3), 10));
    }

    #[test]
    fn the_worst_replica_counts() {
        let t0 = Instant::now();
        let mut clock = LagClock::default();
        clock.sample(t0, 100);
        clock.sample(t0 + Duration::from_secs(3), 200);
        let near = Replica {
            pid: 2,
            replay_lsn: 150,
            flush_lsn: 150,
            reported_lag: Duration::ZERO,
        };
        let far = Replica {
            pid: 1,
            replay_lsn: 50,
            flush_lsn: 50,
            reported_lag: Duration::ZERO,
        };
        let (lag, bytes) = clock.worst(t0 + Duration::from_secs(4), 200, &[near, far]);
        assert_eq!((lag, bytes), (Duration::from_secs(4), 150));
    }

    fn at(pid: i32, replay_lsn: u64, flush_lsn: u64) -> Replica {
        Replica {
            pid,
            replay_lsn,
            flush_lsn,
            reported_lag: Duration::ZERO,
        }
    }

    #[test]
    fn capacity_is_measured_only_while_a_replica_has_wal_waiting() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let backlog = 100;
        let mut rates = ReplayRates::default();
        rates.look(t0, &[at(7, 1_000, 1_000)], backlog);
        assert!(rates.kept_up());
        // 4,000 bytes received, none replayed: behind, its capacity not known yet, so it never
        // catches up (the run waits to measure it).
        rates.look(t0 + ms(100), &[at(7, 1_000, 5_000)], backlog);
        assert!(!rates.kept_up());
        assert_eq!(
            (rates.slowest(), rates.slowest_average()),
            (None, None),
            "100 ms: too short"
        );
        assert_eq!(
            rates.catch_up(5_000, 1_000, &[at(7, 1_000, 5_000)]),
            Duration::MAX
        );
        // 1,000 bytes in the 400 ms since: 2,500 bytes/s. 3,000 behind and 1,000 to come: 1.6 s.
        rates.look(t0 + ms(500), &[at(7, 2_000, 5_000)], backlog);
        assert_eq!(rates.slowest(), Some(2_500.0));
        // Over its looks (500 ms, waiting or not): 2,000 bytes/s.
        assert_eq!(rates.slowest_average(), Some(2_000.0));
        assert_eq!(
            rates.catch_up(5_000, 1_000, &[at(7, 2_000, 5_000)]),
            Duration::from_secs_f64(1.6)
        );
        // Caught up: needs nothing, however big the next batch, and its old capacity is dropped.
        rates.look(t0 + ms(600), &[at(7, 5_000, 5_000)], backlog);
        assert!(rates.kept_up());
        assert_eq!(rates.slowest(), None);
        assert_eq!(
            rates.catch_up(5_000, 1 << 40, &[at(7, 5_000, 5_000)]),
            ms(0)
        );

        // Healthy: shows a little received and not replayed at every look (within the backlog),
        // with the primary further on (WAL not yet sent). It keeps up, and needs nothing.
        let mut healthy = ReplayRates::default();
        for i in 0..10u64 {
            let replay = 1_000 * (i + 1);
            healthy.look(t0 + ms(100 * i), &[at(3, replay, replay + 80)], backlog);
        }
        assert!(healthy.kept_up());
        assert_eq!(healthy.slowest(), None);
        assert_eq!(
            healthy.catch_up(20_000, 5_000, &[at(3, 10_000, 10_080)]),
            ms(0)
        );

        // Stopped replaying with WAL waiting: it never catches up.
        let mut stalled = ReplayRates::default();
        stalled.look(t0, &[at(4, 1_000, 5_000)], backlog);
        stalled.look(t0 + ms(300), &[at(4, 1_000, 5_000)], backlog);
        assert_eq!(stalled.slowest(), Some(0.0));
        assert_eq!(
            stalled.catch_up(5_000, 0, &[at(4, 1_000, 5_000)]),
            Duration::MAX
        );
    }

    #[test]
    fn capacity_follows_the_last_second_and_the_slowest_replica() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut rates = ReplayRates::default();
        // Replica 1 replays 1,000 bytes/s for 3 s, then 4,000 bytes/s, always behind; replica 2
        // is caught up.
        for second in 0..=3u64 {
            let replicas = [at(1, 1_000 * second, 100_000), at(2, 100_000, 100_000)];
            rates.look(t0 + s(second), &replicas, 100);
        }
        let replicas = [at(1, 7_000, 100_000), at(2, 100_000, 100_000)];
        rates.look(t0 + s(4), &replicas, 100);
        assert_eq!(rates.slowest(), Some(4_000.0));
        let need = rates.catch_up(100_000, 0, &replicas);
        assert_eq!(need, Duration::from_secs_f64(93_000.0 / 4_000.0));
        // A replica that went away is forgotten.
        rates.look(t0 + s(5), &[at(2, 100_000, 100_000)], 100);
        assert_eq!((rates.seen.len(), rates.slowest()), (1, None));
    }

    #[test]
    fn a_batch_writes_no_more_wal_than_its_budget() {
        // 1 MB at 8 kB a page: 128 pages.
        assert_eq!(units_within(1_000, 8_192.0, 1_048_576.0), 128);
        assert_eq!(units_within(100, 8_192.0, 1_048_576.0), 100);
        // Never none, and unchanged while the WAL per unit is not known.
        assert_eq!(units_within(1_000, 8_192.0, 0.0), 1);
        assert_eq!(units_within(1_000, 0.0, 1.0), 1_000);
    }

    #[test]
    fn wal_rate_is_what_was_written_over_the_last_second() {
        let t0 = Instant::now();
        let mut meter = WalMeter::default();
        assert_eq!(meter.last_second(t0, 1_000), 0);
        assert_eq!(
            meter.last_second(t0 + Duration::from_millis(500), 5_000),
            4_000
        );
        assert_eq!(
            meter.last_second(t0 + Duration::from_millis(900), 9_000),
            8_000
        );
        // Nothing written for a while: the window slides past the burst.
        assert_eq!(
            meter.last_second(t0 + Duration::from_millis(1_600), 9_000),
            4_000
        );
        assert_eq!(
            meter.last_second(t0 + Duration::from_millis(2_500), 9_000),
            0
        );
    }
}
