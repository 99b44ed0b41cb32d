//! Cron text -> [`Schedule`] -> next fire times. Pure Rust (no pgrx), tested with plain `#[test]`.
//!
//! Accepted forms:
//! - 5 fields, crontab (Vixie cron / pg_cron): `minute hour day-of-month month day-of-week`;
//! - 6 fields: a seconds field first, then the 5 crontab fields;
//! - 7 fields, Quartz (as in Ed-Fi's samples): `second minute hour day-of-month month day-of-week year`;
//! - macros `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`.
//!
//! Every field takes `*`, numbers, names (`JAN`-`DEC`, `SUN`-`SAT`), lists `a,b`, ranges `a-b` and steps
//! `*/s`, `a-b/s`, `a/s` (Quartz: from `a` to the end). `?` means "any" in the two day fields.
//!
//! Day-of-week numbers: 0 or 7 = Sunday, 1 = Monday … 6 = Saturday, as in crontab, except in 7-field
//! lines and 6-field lines that use `?`, which are Quartz lines: there 1 = Sunday … 7 = Saturday.
//! Names mean the same everywhere.
//!
//! Day fields follow Vixie cron: when both day-of-month and day-of-week are restricted (neither starts
//! with `*` or `?`), a day matches when *either* matches; otherwise both must match.
//!
//! The `cron` crate does the calendar arithmetic. It only reads 6/7-field Quartz lines, numbers weekdays
//! from Sunday = 1 and ANDs the two day fields, so this module parses and validates the text itself,
//! expands each field to the set of values it allows, and hands the crate explicit lists (weekdays as
//! names). For the OR rule it builds two crate schedules and merges their fire times.

use chrono::{DateTime, Offset, TimeZone};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

mod fields;
use fields::*;

/// Longest schedule text accepted; real lines are a few dozen characters.
pub const MAX_SCHEDULE_LEN: usize = 200;

/// The hint every schedule error carries.
pub const SCHEDULE_HINT: &str = "Use 5 fields \"minute hour day-of-month month day-of-week\" (e.g. '0 3 * * *'), \
6 fields with seconds first (e.g. '*/10 * * * * *'), 7 Quartz fields with a year (e.g. '0 0/30 * 1/1 * ? *'), \
or @hourly, @daily, @weekly, @monthly, @yearly.";

/// Why a schedule text was refused. `Display` gives the message users read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    Empty,
    TooLong(usize),
    UnknownMacro(String),
    FieldCount(usize),
    Field {
        field: &'static str,
        text: String,
        reason: String,
    },
    Never,
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::Empty => write!(f, "schedule is empty"),
            ScheduleError::TooLong(n) => {
                write!(
                    f,
                    "schedule is {n} characters long; at most {MAX_SCHEDULE_LEN} are allowed"
                )
            }
            ScheduleError::UnknownMacro(m) => write!(f, "unknown schedule macro \"{m}\""),
            ScheduleError::FieldCount(n) => {
                write!(f, "schedule has {n} fields; expected 5, 6 or 7")
            }
            ScheduleError::Field {
                field,
                text,
                reason,
            } => {
                write!(f, "{field} field \"{text}\": {reason}")
            }
            ScheduleError::Never => write!(f, "schedule never fires"),
        }
    }
}

/// A parsed, validated schedule that can list its fire times in any time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    source: String,
    /// One crate schedule, or two whose fire times are merged (day-of-month OR day-of-week). They
    /// list wall-clock times; [`Schedule::next_after`] maps those to instants.
    plans: Vec<cron::Schedule>,
    /// It fires in every hour of the day (hourly or more often): across a daylight-saving change
    /// it keeps its real spacing. Otherwise it is a fixed-time schedule. As in cronie.
    frequent: bool,
}

impl Schedule {
    /// Parses `text`; see the module header for the accepted forms.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ScheduleError::Empty);
        }
        if trimmed.len() > MAX_SCHEDULE_LEN {
            return Err(ScheduleError::TooLong(trimmed.len()));
        }
        let line = expand_macro(trimmed)?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (seconds, rest, year, numbers) = match fields.len() {
            5 => ("0", &fields[..], "*", WeekdayNumbers::Crontab),
            6 => {
                let quartz = fields.iter().any(|f| f.contains('?'));
                let numbers = if quartz {
                    WeekdayNumbers::Quartz
                } else {
                    WeekdayNumbers::Crontab
                };
                (fields[0], &fields[1..6], "*", numbers)
            }
            7 => (fields[0], &fields[1..6], fields[6], WeekdayNumbers::Quartz),
            n => return Err(ScheduleError::FieldCount(n)),
        };
        let weekday_spec = match numbers {
            WeekdayNumbers::Crontab => &WEEKDAY_CRONTAB,
            WeekdayNumbers::Quartz => &WEEKDAY_QUARTZ,
        };
        let second = expand_field(&SECOND, seconds)?;
        let minute = expand_field(&MINUTE, rest[0])?;
        let hour = expand_field(&HOUR, rest[1])?;
        let day_of_month = expand_field(&DAY_OF_MONTH, rest[2])?;
        let month = expand_field(&MONTH, rest[3])?;
        let weekday = expand_field(weekday_spec, rest[4])?;
        let year = expand_field(&YEAR, year)?;

        // Weekdays as 0 = Sunday … 6 = Saturday whatever the numbering, then as names for the crate.
        let weekday_days: BTreeSet<u32> = weekday
            .values
            .iter()
            .map(|&v| match numbers {
                WeekdayNumbers::Crontab => v % 7,
                WeekdayNumbers::Quartz => v - 1,
            })
            .collect();

        let common = |dom: &str, dow: &str| {
            format!(
                "{} {} {} {} {} {} {}",
                render(&second.values, &SECOND),
                render(&minute.values, &MINUTE),
                render(&hour.values, &HOUR),
                dom,
                render(&month.values, &MONTH),
                dow,
                render(&year.values, &YEAR)
            )
        };
        let dom_text = render(&day_of_month.values, &DAY_OF_MONTH);
        let dow_text = render_weekdays(&weekday_days);
        let lines = if !day_of_month.starts_unrestricted && !weekday.starts_unrestricted {
            vec![common(&dom_text, "*"), common("*", &dow_text)]
        } else {
            vec![common(&dom_text, &dow_text)]
        };
        let plans = lines
            .iter()
            .map(|l| {
                cron::Schedule::from_str(l).map_err(|e| ScheduleError::Field {
                    field: "schedule",
                    text: trimmed.to_string(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule {
            source: trimmed.to_string(),
            plans,
            frequent: hour.values.len() == 24,
        })
    }

    /// Parses `text` and refuses a schedule with no fire time after `now`.
    pub fn parse_firing<Z: TimeZone>(
        text: &str,
        now: &DateTime<Z>,
    ) -> Result<Schedule, ScheduleError> {
        let schedule = Schedule::parse(text)?;
        match schedule.next_after(now) {
            Some(_) => Ok(schedule),
            None => Err(ScheduleError::Never),
        }
    }

    /// The text this schedule was parsed from, trimmed.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first fire time strictly after `after`, in `after`'s time zone.
    ///
    /// Fire times are wall-clock times in that zone; across a daylight-saving change they map to
    /// instants as cronie maps them:
    /// - a fixed-time slot in the spring-forward gap (`30 2 * * *` on a night without 02:30) runs
    ///   at the first instant after the gap; a schedule that fires every hour or more often skips
    ///   the missing wall times and keeps its real spacing;
    /// - in the repeated autumn hour a fixed-time slot runs once (its first occurrence); a schedule
    ///   that fires every hour or more often runs in both occurrences (`0 * * * *` runs at 01:00
    ///   summer time, 01:00 winter time, 02:00), keeping its real spacing.
    pub fn next_after<Z: TimeZone>(&self, after: &DateTime<Z>) -> Option<DateTime<Z>> {
        let tz = after.timezone();
        let local = after.naive_local();
        // How far the wall clock jumps near `after`: walls up to that much before it can map to
        // instants after it (the repeated hour), and mapped instants are out of order by at most it.
        let utc = after.naive_utc();
        let window = chrono::Duration::hours(3);
        let offset_at = |t: chrono::NaiveDateTime| {
            i64::from(tz.offset_from_utc_datetime(&t).fix().local_minus_utc())
        };
        let jump =
            chrono::Duration::seconds((offset_at(utc + window) - offset_at(utc - window)).abs());
        let mut walls = self.walls_after(local - jump);
        let mut best: Option<DateTime<Z>> = None;
        for wall in walls.by_ref().take(MAX_WALLS_SCANNED) {
            if best.as_ref().is_some_and(|b| wall > b.naive_local() + jump) {
                break;
            }
            for t in self.instants(&tz, wall) {
                if t > *after && best.as_ref().is_none_or(|b| t < *b) {
                    best = Some(t);
                }
            }
        }
        best
    }

    /// The wall-clock fire times strictly after `start`, in order (the crate's schedules are
    /// evaluated in UTC, which has no daylight saving: a plain calendar).
    fn walls_after(
        &self,
        start: chrono::NaiveDateTime,
    ) -> impl Iterator<Item = chrono::NaiveDateTime> + '_ {
        let start = chrono::Utc.from_utc_datetime(&start);
        let mut heads: Vec<_> = self
            .plans
            .iter()
            .map(|p| p.after(&start).peekable())
            .collect();
        std::iter::from_fn(move || {
            let (i, _) = heads
                .iter_mut()
                .enumerate()
                .filter_map(|(i, h)| h.peek().map(|t| (i, *t)))
                .min_by_key(|(_, t)| *t)?;
            let next = heads[i].next()?;
            // Both plans may list the same time (a day matching both day fields): once.
            for h in heads.iter_mut() {
                while h.peek() == Some(&next) {
                    h.next();
                }
            }
            Some(next.naive_utc())
        })
    }

    /// The instants a wall-clock fire time stands for in `tz` (see [`Schedule::next_after`]).
    fn instants<Z: TimeZone>(&self, tz: &Z, wall: chrono::NaiveDateTime) -> Vec<DateTime<Z>> {
        match tz.from_local_datetime(&wall) {
            chrono::LocalResult::Single(t) => vec![t],
            chrono::LocalResult::Ambiguous(a, b) if self.frequent => vec![a, b],
            chrono::LocalResult::Ambiguous(a, b) => vec![if a < b { a } else { b }],
            chrono::LocalResult::None if self.frequent => Vec::new(),
            chrono::LocalResult::None => first_instant_after_gap(tz, wall).into_iter().collect(),
        }
    }

    /// The next `n` fire times strictly after `after`.
    pub fn upcoming<Z: TimeZone>(&self, after: &DateTime<Z>, n: usize) -> Vec<DateTime<Z>> {
        let mut out = Vec::with_capacity(n.min(1024));
        let mut cursor = after.clone();
        while out.len() < n {
            match self.next_after(&cursor) {
                Some(t) => {
                    cursor = t.clone();
                    out.push(t);
                }
                None => break,
            }
        }
        out
    }
}

/// Most wall-clock times looked at for one next fire time (a once-a-second schedule across a
/// one-hour daylight-saving change looks at 3,600).
const MAX_WALLS_SCANNED: usize = 100_000;

/// The first instant whose wall-clock time in `tz` is at or after `wall`, a time that does not
/// exist (it falls in a spring-forward gap): the instant the clocks jumped.
fn first_instant_after_gap<Z: TimeZone>(
    tz: &Z,
    wall: chrono::NaiveDateTime,
) -> Option<DateTime<Z>> {
    // Every offset in use lies within ±15 hours: the instant is in this window. Binary search to
    // the second on "its wall-clock time has reached `wall`", which only grows here (a gap).
    let mut low = wall - chrono::Duration::hours(15);
    let mut high = wall + chrono::Duration::hours(15);
    let reached = |utc: chrono::NaiveDateTime| tz.from_utc_datetime(&utc).naive_local() >= wall;
    if !reached(high) {
        return None;
    }
    while high - low > chrono::Duration::seconds(1) {
        let mid = low + (high - low) / 2;
        if reached(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    Some(tz.from_utc_datetime(&high))
}

#[cfg(test)]
mod tests;
