//! The scheduler's agenda: when each rule is next due. Pure Rust (no pgrx): time is passed in, so
//! catch-up after downtime, rescheduling and rule changes are tested without sleeping.
//!
//! Rules:
//! - a rule's first due time is the first fire time after the later of its last scheduled run and its
//!   last change; if that is already past (the server was down, or the worker was busy), the rule is
//!   due now and fires **once**, not once per missed slot;
//! - after a run, the next due time is the first fire time after the run *ended*, so a run longer
//!   than the schedule's interval never queues a second run of the same rule;
//! - a failed scheduled run is tried again after the [`RetryPolicy`]'s backoff, doubling each time,
//!   up to its number of retries, and only if the retry comes before the rule's next fire time;
//! - a rule whose schedule and `updated_at` did not change keeps its due time (and its retries)
//!   across reloads.

use crate::schedule::Schedule;
use chrono::{DateTime, TimeZone, Utc};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::rc::{Rc, Weak};

/// What the agenda needs to know of a rule.
#[derive(Debug, Clone)]
pub struct AgendaRule {
    pub id: i64,
    pub schedule: String,
    /// The rule's own time zone; `None`: the agenda's (the setting).
    pub timezone: Option<String>,
    /// Epoch seconds of the rule's last change.
    pub updated_at: f64,
    /// Epoch seconds of the start of its last scheduled run.
    pub last_scheduled: Option<f64>,
}

#[derive(Debug)]
struct Entry {
    updated_at: f64,
    /// The time zone the schedule is evaluated in.
    tz: chrono_tz::Tz,
    /// Shared by every rule with the same schedule text: a parsed schedule holds a few kB of
    /// ordinal sets, which 100,000 rules would otherwise multiply.
    schedule: Rc<Schedule>,
    next_due: Option<DateTime<Utc>>,
    /// Retries of the latest failed run so far (0: the next run is a scheduled one).
    retries: u32,
}

/// How failed scheduled runs are tried again (`pg_token_cleanup.retry_backoff`, `max_retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the first retry; it doubles for each further one.
    pub backoff: std::time::Duration,
    pub max_retries: u32,
}

impl RetryPolicy {
    /// The wait before retry `attempt` (1-based).
    pub fn wait_before(&self, attempt: u32) -> std::time::Duration {
        self.backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
    }
}

/// Due times of the rules of one database, evaluated in one time zone.
///
/// Every question the scheduler asks on each wake-up (what is due, when is the next due time) is
/// answered from the front of `queue`, in O(log n + answers): with 100,000 rules a scan of all of
/// them at each wake-up cost the idle scheduler half a percent of a core.
#[derive(Debug)]
pub struct Agenda {
    tz: chrono_tz::Tz,
    entries: HashMap<i64, Entry>,
    /// `(next_due, id)` of every rule that has a next due time: the entries' due times, ordered.
    queue: BTreeSet<(DateTime<Utc>, i64)>,
    /// Parsed schedules by their text, so that rules changed one at a time still share them.
    schedules: HashMap<String, Weak<Schedule>>,
    /// `schedules` is swept of schedules no rule uses when it grows past this.
    sweep_at: usize,
}

/// A rule the agenda could not take, with the reason (a schedule made invalid by an upgrade, say).
#[derive(Debug, PartialEq)]
pub struct Rejected {
    pub id: i64,
    pub reason: String,
}

fn from_epoch(seconds: f64) -> DateTime<Utc> {
    let whole = seconds.floor();
    let nanos = ((seconds - whole) * 1e9) as u32;
    Utc.timestamp_opt(whole as i64, nanos.min(999_999_999))
        .single()
        .unwrap_or_else(Utc::now)
}

const SWEEP_AT_LEAST: usize = 64;

impl Agenda {
    pub fn new(tz: chrono_tz::Tz) -> Agenda {
        Agenda {
            tz,
            entries: HashMap::new(),
            queue: BTreeSet::new(),
            schedules: HashMap::new(),
            sweep_at: SWEEP_AT_LEAST,
        }
    }

    /// The time zone rules without their own are evaluated in.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.tz
    }

    /// Replaces the set of rules; keeps due times of unchanged rules. A new time zone recomputes all.
    pub fn sync(
        &mut self,
        rules: &[AgendaRule],
        tz: chrono_tz::Tz,
        now: DateTime<Utc>,
    ) -> Vec<Rejected> {
        if tz != self.tz {
            self.tz = tz;
            self.entries.clear();
            self.queue.clear();
        }
        let keep: HashSet<i64> = rules.iter().map(|r| r.id).collect();
        let gone: Vec<i64> = self
            .entries
            .keys()
            .filter(|id| !keep.contains(id))
            .copied()
            .collect();
        self.update(rules, &gone, now)
    }

    /// Takes `changed` rules (new or changed; unchanged ones keep their due time) and drops `removed`
    /// ones, leaving every other rule as it is: a reload after one rule changed touches one entry.
    pub fn update(
        &mut self,
        changed: &[AgendaRule],
        removed: &[i64],
        now: DateTime<Utc>,
    ) -> Vec<Rejected> {
        for id in removed {
            self.remove(*id);
        }
        let mut rejected = Vec::new();
        for rule in changed {
            if let Err(reason) = self.take(rule, now) {
                self.remove(rule.id);
                rejected.push(Rejected {
                    id: rule.id,
                    reason,
                });
            }
        }
        self.sweep_schedules();
        rejected
    }

    /// Enters one rule, keeping its due time if its schedule, time zone and `updated_at` are those
    /// of the entry it has already.
    fn take(&mut self, rule: &AgendaRule, now: DateTime<Utc>) -> Result<(), String> {
        let rule_tz = match rule.timezone.as_deref() {
            None => self.tz,
            Some(name) => name
                .parse::<chrono_tz::Tz>()
                .map_err(|_| format!("unknown time zone \"{name}\""))?,
        };
        if self.entries.get(&rule.id).is_some_and(|old| {
            old.schedule.source() == rule.schedule.trim()
                && old.updated_at == rule.updated_at
                && old.tz == rule_tz
        }) {
            return Ok(());
        }
        let schedule = self.parsed(&rule.schedule)?;
        let base = match rule.last_scheduled {
            Some(last) if last > rule.updated_at => last,
            _ => rule.updated_at,
        };
        let base = from_epoch(base).min(now);
        let next_due = schedule
            .next_after(&base.with_timezone(&rule_tz))
            .map(|t| t.with_timezone(&Utc));
        self.remove(rule.id);
        self.entries.insert(
            rule.id,
            Entry {
                updated_at: rule.updated_at,
                tz: rule_tz,
                schedule,
                next_due: None,
                retries: 0,
            },
        );
        self.set_next_due(rule.id, next_due);
        Ok(())
    }

    /// The parsed schedule of `text`, shared with every rule that has the same text.
    fn parsed(&mut self, text: &str) -> Result<Rc<Schedule>, String> {
        if let Some(shared) = self.schedules.get(text).and_then(Weak::upgrade) {
            return Ok(shared);
        }
        let schedule = Rc::new(Schedule::parse(text).map_err(|e| e.to_string())?);
        self.schedules
            .insert(text.to_string(), Rc::downgrade(&schedule));
        Ok(schedule)
    }

    fn sweep_schedules(&mut self) {
        if self.schedules.len() > self.sweep_at {
            self.schedules.retain(|_, s| s.strong_count() > 0);
            self.sweep_at = (2 * self.schedules.len()).max(SWEEP_AT_LEAST);
        }
    }

    fn remove(&mut self, id: i64) {
        if let Some(old) = self.entries.remove(&id) {
            if let Some(t) = old.next_due {
                self.queue.remove(&(t, id));
            }
        }
    }

    /// The one place an entry's due time changes, so that `queue` always mirrors the entries.
    fn set_next_due(&mut self, id: i64, next_due: Option<DateTime<Utc>>) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if let Some(t) = entry.next_due {
            self.queue.remove(&(t, id));
        }
        entry.next_due = next_due;
        if let Some(t) = next_due {
            self.queue.insert((t, id));
        }
    }

    /// Rules due at `now`, earliest first, with the time each was due.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<(i64, DateTime<Utc>)> {
        self.queue
            .range(..=(now, i64::MAX))
            .map(|(t, id)| (*id, *t))
            .collect()
    }

    /// Records that the slot of `id` due now was skipped at `now` (its rule was busy): its next
    /// due time is the first fire time after `now`.
    pub fn skipped(&mut self, id: i64, now: DateTime<Utc>) {
        self.ran(id, now, false, None);
    }

    /// Records that a run of `id` ended at `now`, `failed` or not. Its next due time is the first
    /// fire time after `now`; but a failed run is due again after the policy's backoff when that
    /// comes first and retries are left. Returns the retry's attempt number, if one is due.
    pub fn ran(
        &mut self,
        id: i64,
        now: DateTime<Utc>,
        failed: bool,
        policy: Option<&RetryPolicy>,
    ) -> Option<u32> {
        let entry = self.entries.get_mut(&id)?;
        let next_fire = entry
            .schedule
            .next_after(&now.with_timezone(&entry.tz))
            .map(|t| t.with_timezone(&Utc));
        let attempt = entry.retries + 1;
        let retry_at = policy
            .filter(|p| failed && attempt <= p.max_retries)
            .and_then(|p| chrono::Duration::from_std(p.wait_before(attempt)).ok())
            .map(|wait| now + wait)
            .filter(|at| next_fire.is_none_or(|next| *at < next));
        entry.retries = if retry_at.is_some() { attempt } else { 0 };
        self.set_next_due(id, retry_at.or(next_fire));
        retry_at.map(|_| attempt)
    }

    /// Whether the run of `id` due next is a retry of a failed one.
    pub fn retrying(&self, id: i64) -> bool {
        self.entries.get(&id).is_some_and(|e| e.retries > 0)
    }

    /// The earliest due time of any rule.
    #[cfg(test)]
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.next_wake_where(|_| true)
    }

    /// The earliest due time of the rules `include` accepts.
    #[cfg(test)]
    pub fn next_wake_where(&self, include: impl Fn(i64) -> bool) -> Option<DateTime<Utc>> {
        self.queue
            .iter()
            .find(|(_, id)| include(*id))
            .map(|(t, _)| *t)
    }

    /// The earliest due time after `now` of the rules `include` accepts (rules already due are
    /// waiting for something that wakes the scheduler itself: a free slot, a table).
    pub fn next_wake_after(
        &self,
        now: DateTime<Utc>,
        include: impl Fn(i64) -> bool,
    ) -> Option<DateTime<Utc>> {
        self.queue
            .range((Bound::Excluded((now, i64::MAX)), Bound::Unbounded))
            .find(|(_, id)| include(*id))
            .map(|(t, _)| *t)
    }

    #[cfg(test)]
    pub fn next_due(&self, id: i64) -> Option<DateTime<Utc>> {
        self.entries.get(&id).and_then(|e| e.next_due)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn rule(id: i64, schedule: &str, updated: &str, last: Option<&str>) -> AgendaRule {
        AgendaRule {
            id,
            schedule: schedule.into(),
            timezone: None,
            updated_at: t(updated).timestamp() as f64,
            last_scheduled: last.map(|l| t(l).timestamp() as f64),
        }
    }

    #[test]
    fn new_rule_is_due_at_its_next_fire_time() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let now = t("2026-01-01T10:00:00Z");
        a.sync(
            &[rule(1, "0 3 * * *", "2026-01-01T10:00:00Z", None)],
            chrono_tz::UTC,
            now,
        );
        assert!(a.due(now).is_empty());
        assert_eq!(a.next_wake(), Some(t("2026-01-02T03:00:00Z")));
    }

    #[test]
    fn missed_slots_during_downtime_fire_once() {
        let mut a = Agenda::new(chrono_tz::UTC);
        // Last ran 3 days ago at 03:00; the worker comes back at 10:00: three slots were missed.
        let now = t("2026-01-04T10:00:00Z");
        a.sync(
            &[rule(
                1,
                "0 3 * * *",
                "2025-12-01T00:00:00Z",
                Some("2026-01-01T03:00:00Z"),
            )],
            chrono_tz::UTC,
            now,
        );
        let due = a.due(now);
        assert_eq!(due, vec![(1, t("2026-01-02T03:00:00Z"))]);
        a.skipped(1, now);
        assert!(
            a.due(now).is_empty(),
            "fires once, not once per missed slot"
        );
        assert_eq!(a.next_wake(), Some(t("2026-01-05T03:00:00Z")));
    }

    #[test]
    fn long_run_does_not_queue_another() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let start = t("2026-01-01T00:00:00Z");
        a.sync(
            &[rule(1, "*/10 * * * * *", "2026-01-01T00:00:00Z", None)],
            chrono_tz::UTC,
            start,
        );
        assert_eq!(a.next_wake(), Some(t("2026-01-01T00:00:10Z")));
        // The run due at :10 ends at :47; the next is :50, not :20, :30, :40.
        a.skipped(1, t("2026-01-01T00:00:47Z"));
        assert_eq!(a.next_wake(), Some(t("2026-01-01T00:00:50Z")));
    }

    #[test]
    fn unchanged_rules_keep_their_due_time_and_changed_ones_are_recomputed() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let now = t("2026-01-01T10:00:00Z");
        let r1 = rule(1, "0 3 * * *", "2026-01-01T09:00:00Z", None);
        let r2 = rule(2, "0 4 * * *", "2026-01-01T09:00:00Z", None);
        a.sync(&[r1.clone(), r2.clone()], chrono_tz::UTC, now);
        a.skipped(1, t("2026-01-02T03:00:01Z"));
        let later = t("2026-01-02T05:00:00Z");
        let mut r2_changed = rule(2, "30 4 * * *", "2026-01-02T05:00:00Z", None);
        a.sync(&[r1, r2_changed.clone()], chrono_tz::UTC, later);
        assert_eq!(a.next_due(1), Some(t("2026-01-03T03:00:00Z")));
        assert_eq!(a.next_due(2), Some(t("2026-01-03T04:30:00Z")));
        // Removing a rule drops it.
        r2_changed.id = 3;
        a.sync(&[r2_changed], chrono_tz::UTC, later);
        assert_eq!((a.len(), a.next_due(1)), (1, None));
    }

    #[test]
    fn time_zone_of_evaluation() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let now = t("2026-01-01T00:00:00Z");
        let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
        a.sync(
            &[rule(1, "0 3 * * *", "2026-01-01T00:00:00Z", None)],
            tz,
            now,
        );
        // 03:00 in New York (UTC-5 in January) is 08:00 UTC.
        assert_eq!(a.next_wake(), Some(t("2026-01-01T08:00:00Z")));
    }

    #[test]
    fn due_rules_come_earliest_first() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let now = t("2026-01-01T10:00:00Z");
        a.sync(
            &[
                rule(1, "0 9 * * *", "2026-01-01T00:00:00Z", None),
                rule(2, "0 8 * * *", "2026-01-01T00:00:00Z", None),
            ],
            chrono_tz::UTC,
            now,
        );
        assert_eq!(
            a.due(now),
            vec![
                (2, t("2026-01-01T08:00:00Z")),
                (1, t("2026-01-01T09:00:00Z"))
            ]
        );
    }

    #[test]
    fn invalid_schedule_is_rejected_not_fatal() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let now = t("2026-01-01T10:00:00Z");
        let rejected = a.sync(
            &[
                rule(1, "nonsense", "2026-01-01T00:00:00Z", None),
                rule(2, "@hourly", "2026-01-01T00:00:00Z", None),
            ],
            chrono_tz::UTC,
            now,
        );
        assert_eq!(
            rejected,
            vec![Rejected {
                id: 1,
                reason: "schedule has 1 fields; expected 5, 6 or 7".into()
            }]
        );
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn update_changes_only_the_rules_it_is_given() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let now = t("2026-01-01T10:00:00Z");
        let r1 = rule(1, "0 3 * * *", "2026-01-01T09:00:00Z", None);
        let r2 = rule(2, "0 4 * * *", "2026-01-01T09:00:00Z", None);
        let r3 = rule(3, "0 5 * * *", "2026-01-01T09:00:00Z", None);
        a.sync(&[r1, r2, r3], chrono_tz::UTC, now);
        // Rule 1 ran late; an update that does not name it keeps that due time.
        a.skipped(1, t("2026-01-02T03:00:01Z"));
        let later = t("2026-01-02T05:30:00Z");
        let r2_changed = rule(2, "0 6 * * *", "2026-01-02T05:30:00Z", None);
        let rejected = a.update(&[r2_changed], &[3], later);
        assert!(rejected.is_empty());
        assert_eq!(a.next_due(1), Some(t("2026-01-03T03:00:00Z")));
        assert_eq!(a.next_due(2), Some(t("2026-01-02T06:00:00Z")));
        assert_eq!((a.len(), a.next_due(3)), (2, None));
        // The queue follows: the earliest due time is rule 2's, and nothing of rule 3 is left in it.
        assert_eq!(a.next_wake(), Some(t("2026-01-02T06:00:00Z")));
        assert_eq!(a.due(t("2026-01-04T00:00:00Z")).len(), 2);
    }

    #[test]
    fn an_update_with_a_bad_schedule_drops_the_rule_and_says_why() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let now = t("2026-01-01T10:00:00Z");
        a.sync(
            &[rule(1, "0 3 * * *", "2026-01-01T09:00:00Z", None)],
            chrono_tz::UTC,
            now,
        );
        let mut bad = rule(1, "0 3 * * *", "2026-01-01T10:00:00Z", None);
        bad.timezone = Some("Mars/Olympus_Mons".into());
        let rejected = a.update(&[bad], &[], now);
        assert_eq!(
            rejected,
            vec![Rejected {
                id: 1,
                reason: "unknown time zone \"Mars/Olympus_Mons\"".into()
            }]
        );
        assert_eq!((a.len(), a.next_wake()), (0, None));
    }

    #[test]
    fn rules_changed_one_at_a_time_share_their_parsed_schedule() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let now = t("2026-01-01T10:00:00Z");
        a.sync(
            &[rule(1, "*/5 * * * * *", "2026-01-01T09:00:00Z", None)],
            chrono_tz::UTC,
            now,
        );
        a.update(
            &[rule(2, "*/5 * * * * *", "2026-01-01T09:30:00Z", None)],
            &[],
            now,
        );
        assert!(Rc::ptr_eq(&a.entries[&1].schedule, &a.entries[&2].schedule));
    }

    #[test]
    fn due_and_next_wake_follow_done_and_retries() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let start = t("2026-01-01T00:00:00Z");
        a.sync(
            &[
                rule(1, "*/10 * * * * *", "2026-01-01T00:00:00Z", None),
                rule(2, "0 * * * * *", "2026-01-01T00:00:00Z", None),
            ],
            chrono_tz::UTC,
            start,
        );
        let at_10 = t("2026-01-01T00:00:10Z");
        assert_eq!(a.due(at_10), vec![(1, at_10)]);
        // While rule 1 runs (excluded), the next wake-up after now is rule 2's.
        assert_eq!(
            a.next_wake_after(at_10, |id| id != 1),
            Some(t("2026-01-01T00:01:00Z"))
        );
        a.skipped(1, t("2026-01-01T00:00:12Z"));
        assert!(a.due(t("2026-01-01T00:00:12Z")).is_empty());
        assert_eq!(a.next_due(1), Some(t("2026-01-01T00:00:20Z")));
    }

    fn policy(backoff_s: u64, max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            backoff: std::time::Duration::from_secs(backoff_s),
            max_retries,
        }
    }

    fn one_rule(schedule: &str) -> Agenda {
        let mut a = Agenda::new(chrono_tz::UTC);
        a.sync(
            &[rule(1, schedule, "2026-01-01T00:00:00Z", None)],
            chrono_tz::UTC,
            t("2026-01-01T00:00:00Z"),
        );
        a
    }

    #[test]
    fn a_failed_run_is_retried_with_a_doubling_backoff_up_to_max_retries() {
        let mut a = one_rule("@hourly");
        let p = policy(10, 3);
        let failed_at = t("2026-01-01T01:00:05Z");
        assert_eq!(a.ran(1, failed_at, true, Some(&p)), Some(1));
        assert_eq!(a.next_due(1), Some(t("2026-01-01T01:00:15Z")));
        assert!(a.retrying(1));
        assert_eq!(a.ran(1, t("2026-01-01T01:00:16Z"), true, Some(&p)), Some(2));
        assert_eq!(a.next_due(1), Some(t("2026-01-01T01:00:36Z")));
        assert_eq!(a.ran(1, t("2026-01-01T01:00:37Z"), true, Some(&p)), Some(3));
        assert_eq!(a.next_due(1), Some(t("2026-01-01T01:01:17Z")));
        // The fourth failure in a row has no retry left: back to the schedule, streak reset.
        assert_eq!(a.ran(1, t("2026-01-01T01:01:18Z"), true, Some(&p)), None);
        assert_eq!(a.next_due(1), Some(t("2026-01-01T02:00:00Z")));
        assert!(!a.retrying(1));
        assert_eq!(a.ran(1, t("2026-01-01T02:00:01Z"), true, Some(&p)), Some(1));
    }

    #[test]
    fn a_success_ends_the_retries_and_a_retry_never_passes_the_next_fire_time() {
        let mut a = one_rule("*/10 * * * * *");
        let p = policy(3, 5);
        assert_eq!(a.ran(1, t("2026-01-01T00:00:12Z"), true, Some(&p)), Some(1));
        assert_eq!(a.next_due(1), Some(t("2026-01-01T00:00:15Z")));
        // The retry succeeds: the next run is the scheduled one, and a later failure starts over.
        assert_eq!(a.ran(1, t("2026-01-01T00:00:16Z"), false, Some(&p)), None);
        assert_eq!(a.next_due(1), Some(t("2026-01-01T00:00:20Z")));
        assert!(!a.retrying(1));
        // A retry 3 s after :28 would come after the :30 slot: the slot runs instead.
        assert_eq!(a.ran(1, t("2026-01-01T00:00:28Z"), true, Some(&p)), None);
        assert_eq!(a.next_due(1), Some(t("2026-01-01T00:00:30Z")));
        // No policy (retries off): a failure waits for the schedule.
        assert_eq!(a.ran(1, t("2026-01-01T00:00:31Z"), true, None), None);
        assert_eq!(a.next_due(1), Some(t("2026-01-01T00:00:40Z")));
    }

    #[test]
    fn the_backoff_doubles_without_overflowing() {
        let p = policy(60, 100);
        assert_eq!(p.wait_before(1), std::time::Duration::from_secs(60));
        assert_eq!(p.wait_before(2), std::time::Duration::from_secs(120));
        assert_eq!(p.wait_before(4), std::time::Duration::from_secs(480));
        assert_eq!(p.wait_before(64), p.wait_before(21));
    }
}
