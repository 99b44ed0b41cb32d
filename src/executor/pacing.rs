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
//!   also counts what the standby has still to replay, plus what the next batch will write (as much
//!   as the last one), at the rate it replayed over the last second: the time it needs to catch up
//!   ([`ReplayRates`]). A standby that is not behind never holds up a batch, however big.
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
//! A pause wakes every 100 ms to notice SIGTERM and `max_run_duration`; `runs.paused` and
//! `runs.pause_reasons` record it.

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How often a pause looks again.
const RECHECK: Duration = Duration::from_millis(100);
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
/// The shortest stretch a replay rate is measured over; before it, a standby behind counts as
/// unable to catch up (a pause of one recheck measures it).
const MIN_RATE_SPAN: Duration = Duration::from_millis(50);

/// A streaming replica's position as `pg_stat_replication` shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replica {
    /// Its WAL sender's process id: which replica it is from one look to the next.
    pub pid: i32,
    pub replay_lsn: u64,
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

/// Each replica's recent replay positions: how fast it replays while it is behind.
#[derive(Debug, Default)]
pub struct ReplayRates {
    /// Per WAL sender: (when, replay position, whether it was behind then).
    seen: std::collections::HashMap<i32, VecDeque<(Instant, u64, bool)>>,
}

impl ReplayRates {
    /// Records `replicas` as seen at `now`, with the primary at `lsn`, and returns the longest time
    /// one of them needs to replay what it has not, plus `next` bytes more: the bytes over its
    /// replay rate in the last second (measured from when it fell behind). A replica not behind needs
    /// nothing; one behind whose rate is not known yet (one look), or that replayed nothing, never
    /// catches up (so a run's first batches wait one recheck to measure it).
    pub fn catch_up(
        &mut self,
        now: Instant,
        lsn: u64,
        next: u64,
        replicas: &[Replica],
    ) -> Duration {
        self.seen
            .retain(|pid, _| replicas.iter().any(|r| r.pid == *pid));
        let mut longest = Duration::ZERO;
        for replica in replicas {
            let gap = lsn.saturating_sub(replica.replay_lsn);
            let seen = self.seen.entry(replica.pid).or_default();
            seen.push_back((now, replica.replay_lsn, gap > 0));
            while seen.len() > 2 && now.duration_since(seen[1].0) >= RATE_WINDOW {
                seen.pop_front();
            }
            if gap == 0 {
                continue;
            }
            // Measured from the last look before it fell behind, if it is in the window (replay
            // started after it: a rate no higher than the true one), else from the oldest look.
            let first_behind = seen.iter().position(|&(_, _, behind)| behind).unwrap_or(0);
            let start = seen.get(first_behind.saturating_sub(1)).copied();
            let need = match start {
                Some((since, from, _)) if now.duration_since(since) >= MIN_RATE_SPAN => {
                    let rate = replica.replay_lsn.saturating_sub(from) as f64
                        / now.duration_since(since).as_secs_f64();
                    let seconds = (gap + next) as f64 / rate;
                    if seconds.is_finite() {
                        Duration::from_secs_f64(seconds.min(1e9))
                    } else {
                        Duration::MAX
                    }
                }
                _ => Duration::MAX,
            };
            longest = longest.max(need);
        }
        longest
    }
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
    /// This process's WAL total when the last batch started, and what that batch wrote.
    wal_at_batch_start: Option<u64>,
    last_batch_wal: u64,
    /// The last look found a replica too far behind: the next one probes for fresh positions.
    paused_for_lag: bool,
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
    pub fn wait<E>(
        &mut self,
        rule_name: &str,
        mut check_stop: impl FnMut() -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.limits.any() {
            return Ok(());
        }
        let wal_total = process_wal_bytes();
        if let Some(start) = self.wal_at_batch_start {
            self.last_batch_wal = wal_total.saturating_sub(start);
        }
        let result = self.wait_for_signals(rule_name, &mut check_stop);
        self.wal_at_batch_start = Some(process_wal_bytes());
        result
    }

    fn wait_for_signals<E>(
        &mut self,
        rule_name: &str,
        check_stop: &mut impl FnMut() -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(give_way) = self.give_way.take() {
            check_stop()?;
            self.pause(rule_name, Reason::Waiters, give_way);
        }
        loop {
            check_stop()?;
            let Some(reason) = self.reason_to_pause() else {
                return Ok(());
            };
            self.pause(rule_name, reason, RECHECK);
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
    fn reason_to_pause(&mut self) -> Option<Reason> {
        let (limits, table) = (self.limits, self.table);
        let probe = self.paused_for_lag;
        let (position, wal_total, waiting) = BackgroundWorker::transaction(move || {
            (
                limits.max_replica_lag.map(|_| {
                    if probe {
                        ask_replicas_for_their_position();
                    }
                    (insert_lsn(), streaming_replicas())
                }),
                limits.max_wal_rate.map(|_| process_wal_bytes()),
                limits.yield_to_waiters && sessions_waiting_on(table),
            )
        });
        let now = Instant::now();
        if let (Some(max_lag), Some((lsn, replicas))) = (limits.max_replica_lag, position) {
            self.lag.sample(now, lsn);
            let (age, bytes) = self.lag.worst(now, lsn, &replicas);
            let catch_up = self
                .rates
                .catch_up(now, lsn, self.last_batch_wal, &replicas);
            // What is reported: how old the oldest unreplayed WAL is (what the standby shows).
            self.last_lag = (age, bytes);
            if age > self.worst_lag.0 {
                self.worst_lag = (age, bytes);
            }
            self.paused_for_lag = age > max_lag || catch_up > max_lag;
            if self.paused_for_lag {
                return Some(Reason::ReplicaLag);
            }
        }
        if let (Some(max_rate), Some(total)) = (limits.max_wal_rate, wal_total) {
            if self.wal.last_second(now, total) as f64 > max_rate {
                return Some(Reason::WalRate);
            }
        }
        waiting.then_some(Reason::Waiters)
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
        "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_logical_emit_message(false,                 'pg_token_cleanup', 'replica lag probe'), '0/0')::int8",
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
            let reported: f64 = row.get(3)?.unwrap_or(0.0);
            replicas.push(Replica {
                pid,
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
            reported_lag: Duration::ZERO,
        };
        let far = Replica {
            pid: 1,
            replay_lsn: 50,
            reported_lag: Duration::ZERO,
        };
        let (lag, bytes) = clock.worst(t0 + Duration::from_secs(4), 200, &[near, far]);
        assert_eq!((lag, bytes), (Duration::from_secs(4), 150));
    }

    fn at(pid: i32, replay_lsn: u64) -> Replica {
        Replica {
            pid,
            replay_lsn,
            reported_lag: Duration::ZERO,
        }
    }

    #[test]
    fn a_replica_behind_needs_its_gap_and_the_next_batch_over_its_replay_rate() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut rates = ReplayRates::default();
        // Caught up: needs nothing, however big the next batch.
        assert_eq!(rates.catch_up(t0, 1_000, 1 << 40, &[at(7, 1_000)]), ms(0));
        // Behind, and replayed nothing yet since the look at which it was caught up.
        assert_eq!(
            rates.catch_up(t0 + ms(100), 5_000, 1_000, &[at(7, 1_000)]),
            Duration::MAX
        );
        // 1,000 bytes replayed in the 500 ms since it was last caught up: 2,000 bytes/s. 3,000
        // behind and 1,000 to come: 2 s.
        assert_eq!(
            rates.catch_up(t0 + ms(500), 5_000, 1_000, &[at(7, 2_000)]),
            Duration::from_secs(2)
        );
        // Behind at its first look: its rate is not known.
        let mut first = ReplayRates::default();
        assert_eq!(first.catch_up(t0, 5_000, 0, &[at(3, 1_000)]), Duration::MAX);
        // Replayed nothing since: it never catches up.
        assert_eq!(
            first.catch_up(t0 + ms(300), 5_000, 0, &[at(3, 1_000)]),
            Duration::MAX
        );
        // Then 2,000 bytes in 400 ms: 5,000 bytes/s, 2,000 behind: 400 ms.
        assert_eq!(
            first.catch_up(t0 + ms(400), 5_000, 0, &[at(3, 3_000)]),
            ms(400)
        );
    }

    #[test]
    fn replay_rates_follow_the_last_second_and_the_slowest_replica() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut rates = ReplayRates::default();
        // Replica 1 replays 1,000 bytes/s for 3 s, then 4,000 bytes/s; replica 2 is always caught up.
        for second in 0..=3u64 {
            rates.catch_up(
                t0 + s(second),
                100_000,
                0,
                &[at(1, 1_000 * second), at(2, 100_000)],
            );
        }
        let need = rates.catch_up(t0 + s(4), 100_000, 0, &[at(1, 7_000), at(2, 100_000)]);
        // Over the last second only: 4,000 bytes/s, 93,000 bytes behind.
        assert_eq!(need, Duration::from_secs_f64(93_000.0 / 4_000.0));
        // A replica that went away is forgotten.
        rates.catch_up(t0 + s(5), 100_000, 0, &[at(2, 100_000)]);
        assert_eq!(rates.seen.len(), 1);
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
