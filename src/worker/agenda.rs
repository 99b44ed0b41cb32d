//! The scheduler's agenda: when each rule is next due. Pure Rust (no pgrx): time is passed in, so
//! catch-up after downtime, rescheduling and rule changes are tested without sleeping.
//!
//! Rules:
//! - a rule's first due time is the first fire time after the later of its last scheduled run and its
//!   last change; if that is already past (the server was down, or the worker was busy), the rule is
//!   due now and fires **once**, not once per missed slot;
//! - after a run, the next due time is the first fire time after the run *ended*, so a run longer
//!   than the schedule's interval never queues a second run of the same rule;
//! - a rule whose schedule and `updated_at` did not change keeps its due time across reloads.

use crate::schedule::Schedule;
use chrono::{DateTime, TimeZone, Utc};
use std::collections::HashMap;
use std::rc::Rc;

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
    /// ordinal sets, which 10,000 rules would otherwise multiply.
    schedule: Rc<Schedule>,
    next_due: Option<DateTime<Utc>>,
}

/// Due times of the rules of one database, evaluated in one time zone.
#[derive(Debug)]
pub struct Agenda {
    tz: chrono_tz::Tz,
    entries: HashMap<i64, Entry>,
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

impl Agenda {
    pub fn new(tz: chrono_tz::Tz) -> Agenda {
        Agenda {
            tz,
            entries: HashMap::new(),
        }
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
        }
        let mut rejected = Vec::new();
        let mut fresh = HashMap::with_capacity(rules.len());
        let mut parsed: HashMap<&str, Rc<Schedule>> = HashMap::new();
        for rule in rules {
            let rule_tz = match rule.timezone.as_deref() {
                None => self.tz,
                Some(name) => match name.parse::<chrono_tz::Tz>() {
                    Ok(tz) => tz,
                    Err(_) => {
                        rejected.push(Rejected {
                            id: rule.id,
                            reason: format!("unknown time zone \"{name}\""),
                        });
                        continue;
                    }
                },
            };
            if let Some(old) = self.entries.remove(&rule.id) {
                if old.schedule.source() == rule.schedule.trim()
                    && old.updated_at == rule.updated_at
                    && old.tz == rule_tz
                {
                    parsed
                        .entry(&rule.schedule)
                        .or_insert_with(|| old.schedule.clone());
                    fresh.insert(rule.id, old);
                    continue;
                }
            }
            let schedule = match parsed.get(rule.schedule.as_str()) {
                Some(s) => s.clone(),
                None => match Schedule::parse(&rule.schedule) {
                    Ok(s) => {
                        let s = Rc::new(s);
                        parsed.insert(&rule.schedule, s.clone());
                        s
                    }
                    Err(e) => {
                        rejected.push(Rejected {
                            id: rule.id,
                            reason: e.to_string(),
                        });
                        continue;
                    }
                },
            };
            let base = match rule.last_scheduled {
                Some(last) if last > rule.updated_at => last,
                _ => rule.updated_at,
            };
            let base = from_epoch(base).min(now);
            let next_due = schedule
                .next_after(&base.with_timezone(&rule_tz))
                .map(|t| t.with_timezone(&Utc));
            fresh.insert(
                rule.id,
                Entry {
                    updated_at: rule.updated_at,
                    tz: rule_tz,
                    schedule,
                    next_due,
                },
            );
        }
        self.entries = fresh;
        rejected
    }

    /// Rules due at `now`, earliest first, with the time each was due.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<(i64, DateTime<Utc>)> {
        let mut due: Vec<(i64, DateTime<Utc>)> = self
            .entries
            .iter()
            .filter_map(|(id, e)| e.next_due.filter(|t| *t <= now).map(|t| (*id, t)))
            .collect();
        due.sort_by_key(|(id, t)| (*t, *id));
        due
    }

    /// Records that `id` ran (or was skipped) and finished at `now`: its next due time is the first
    /// fire time after `now`.
    pub fn done(&mut self, id: i64, now: DateTime<Utc>) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.next_due = e
                .schedule
                .next_after(&now.with_timezone(&e.tz))
                .map(|t| t.with_timezone(&Utc));
        }
    }

    /// Makes `id` due at `at` if that is before its next fire time (a retry of a failed run).
    /// Returns whether it did.
    pub fn due_earlier(&mut self, id: i64, at: DateTime<Utc>) -> bool {
        match self.entries.get_mut(&id) {
            Some(e) if e.next_due.is_none_or(|next| at < next) => {
                e.next_due = Some(at);
                true
            }
            _ => false,
        }
    }

    /// The earliest due time of any rule.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.next_wake_where(|_| true)
    }

    /// The earliest due time of the rules `include` accepts.
    pub fn next_wake_where(&self, include: impl Fn(i64) -> bool) -> Option<DateTime<Utc>> {
        self.entries
            .iter()
            .filter(|(id, _)| include(**id))
            .filter_map(|(_, e)| e.next_due)
            .min()
    }

    /// The earliest due time after `now` of the rules `include` accepts (rules already due are
    /// waiting for something that wakes the scheduler itself: a free slot, a table).
    pub fn next_wake_after(
        &self,
        now: DateTime<Utc>,
        include: impl Fn(i64) -> bool,
    ) -> Option<DateTime<Utc>> {
        self.entries
            .iter()
            .filter(|(id, _)| include(**id))
            .filter_map(|(_, e)| e.next_due)
            .filter(|t| *t > now)
            .min()
    }

    pub fn next_due(&self, id: i64) -> Option<DateTime<Utc>> {
        self.entries.get(&id).and_then(|e| e.next_due)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
        a.done(1, now);
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
        a.done(1, t("2026-01-01T00:00:47Z"));
        assert_eq!(a.next_wake(), Some(t("2026-01-01T00:00:50Z")));
    }

    #[test]
    fn unchanged_rules_keep_their_due_time_and_changed_ones_are_recomputed() {
        let mut a = Agenda::new(chrono_tz::UTC);
        let now = t("2026-01-01T10:00:00Z");
        let r1 = rule(1, "0 3 * * *", "2026-01-01T09:00:00Z", None);
        let r2 = rule(2, "0 4 * * *", "2026-01-01T09:00:00Z", None);
        a.sync(&[r1.clone(), r2.clone()], chrono_tz::UTC, now);
        a.done(1, t("2026-01-02T03:00:01Z"));
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
}
