//! The pure estimators pacing decides with (no PostgreSQL calls, plain `#[test]`s): a replica's
//! lag from the run's own samples of the WAL position, replicas' replay capacity, the WAL a batch
//! may write, the WAL this process wrote over the last second. See the header of `pacing`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most WAL position samples kept (one per batch or recheck): hours of batches.
const MAX_SAMPLES: usize = 100_000;
/// How long replay rates are measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// The shortest stretch a replay rate is measured over (a standby that replays in bursts, as one
/// busy with queries does, would show its bursts' rate over a shorter one).
const MIN_RATE_SPAN: Duration = Duration::from_millis(200);
/// The WAL a run's first batch may write under max_replica_lag, before any replica's capacity is
/// known; doubled after every batch all replicas kept up with (as TCP's slow start).
pub(super) const FIRST_WAL_BUDGET: f64 = 1_048_576.0;
pub(super) const MAX_WAL_BUDGET: f64 = 1_073_741_824.0;

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
pub(super) fn units_within(units: u64, wal_per_unit: f64, budget: f64) -> u64 {
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
