//! Schedule arithmetic: Vixie numbering and day rules, Quartz lines, macros, time zones, errors.

use super::*;
use chrono::{Datelike, Timelike, Utc, Weekday};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn next(text: &str, after: &str, n: usize) -> Vec<String> {
    Schedule::parse(text)
        .unwrap()
        .upcoming(&at(after), n)
        .iter()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S %a").to_string())
        .collect()
}

fn err(text: &str) -> String {
    Schedule::parse(text).unwrap_err().to_string()
}

#[test]
fn five_field_daily_at_three() {
    assert_eq!(
        next("0 3 * * *", "2026-01-01T05:00:00Z", 2),
        ["2026-01-02 03:00:00 Fri", "2026-01-03 03:00:00 Sat"]
    );
}

#[test]
fn crontab_weekday_numbers_mean_monday_to_friday() {
    // 2026-01-03 is a Saturday: the next 1-5 (Mon-Fri) slot is Monday 5th, never Sunday.
    let times = Schedule::parse("0 22 * * 1-5")
        .unwrap()
        .upcoming(&at("2026-01-02T23:00:00Z"), 5);
    let days: Vec<Weekday> = times.iter().map(|t| t.weekday()).collect();
    assert_eq!(
        days,
        [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri
        ]
    );
}

#[test]
fn sunday_is_zero_and_seven_in_crontab() {
    let zero = next("0 0 * * 0", "2026-01-01T00:00:00Z", 3);
    let seven = next("0 0 * * 7", "2026-01-01T00:00:00Z", 3);
    let name = next("0 0 * * SUN", "2026-01-01T00:00:00Z", 3);
    assert_eq!(zero, seven);
    assert_eq!(zero, name);
    assert!(zero.iter().all(|t| t.ends_with("Sun")), "{zero:?}");
}

#[test]
fn weekday_range_wrapping_through_seven() {
    // 5-7 = Friday, Saturday, Sunday.
    let days = next("0 0 * * 5-7", "2026-01-01T12:00:00Z", 3);
    assert_eq!(
        days,
        [
            "2026-01-02 00:00:00 Fri",
            "2026-01-03 00:00:00 Sat",
            "2026-01-04 00:00:00 Sun"
        ]
    );
}

#[test]
fn weekday_step_over_star() {
    // */2 = 0,2,4,6 = Sun, Tue, Thu, Sat.
    let days = next("0 0 * * */2", "2026-01-01T12:00:00Z", 4);
    let names: Vec<&str> = days.iter().map(|d| &d[20..]).collect();
    assert_eq!(names, ["Sat", "Sun", "Tue", "Thu"]);
}

#[test]
fn day_fields_or_when_both_restricted() {
    // The 1st of the month OR any Monday (Vixie cron, pg_cron).
    let times = next("0 0 1 * MON", "2026-01-01T12:00:00Z", 4);
    assert_eq!(
        times,
        [
            "2026-01-05 00:00:00 Mon",
            "2026-01-12 00:00:00 Mon",
            "2026-01-19 00:00:00 Mon",
            "2026-01-26 00:00:00 Mon"
        ]
    );
    let feb = next("0 0 1 * MON", "2026-01-26T12:00:00Z", 2);
    assert_eq!(feb, ["2026-02-01 00:00:00 Sun", "2026-02-02 00:00:00 Mon"]);
}

#[test]
fn day_fields_and_when_one_starts_with_star() {
    // */2 starts with '*': both must match (odd days that are Mondays), as in Vixie cron.
    let times = next("0 0 */2 * 1", "2026-01-01T12:00:00Z", 3);
    for t in &times {
        let day: u32 = t[8..10].parse().unwrap();
        assert!(t.ends_with("Mon") && day % 2 == 1, "{t}");
    }
}

#[test]
fn lists_ranges_steps_and_names() {
    assert_eq!(
        next("15,45 9-10 * JAN-FEB *", "2026-01-01T00:00:00Z", 5),
        [
            "2026-01-01 09:15:00 Thu",
            "2026-01-01 09:45:00 Thu",
            "2026-01-01 10:15:00 Thu",
            "2026-01-01 10:45:00 Thu",
            "2026-01-02 09:15:00 Fri"
        ]
    );
    assert_eq!(
        next("*/20 0 1 */6 *", "2026-02-01T00:00:00Z", 2),
        ["2026-07-01 00:00:00 Wed", "2026-07-01 00:20:00 Wed"]
    );
}

#[test]
fn six_fields_with_seconds() {
    assert_eq!(
        next("*/15 * * * * *", "2026-01-01T00:00:05Z", 3),
        [
            "2026-01-01 00:00:15 Thu",
            "2026-01-01 00:00:30 Thu",
            "2026-01-01 00:00:45 Thu"
        ]
    );
    // Six fields without '?' number weekdays as crontab does: 1 = Monday.
    let t = Schedule::parse("0 0 9 * * 1")
        .unwrap()
        .next_after(&at("2026-01-01T00:00:00Z"))
        .unwrap();
    assert_eq!(t.weekday(), Weekday::Mon);
}

#[test]
fn quartz_ed_fi_sample() {
    assert_eq!(
        next("0 0/30 * 1/1 * ? *", "2026-01-01T00:10:00Z", 3),
        [
            "2026-01-01 00:30:00 Thu",
            "2026-01-01 01:00:00 Thu",
            "2026-01-01 01:30:00 Thu"
        ]
    );
}

#[test]
fn quartz_weekday_numbers_start_at_sunday() {
    // In a Quartz line 2 = Monday.
    let t = Schedule::parse("0 0 9 ? * 2 *")
        .unwrap()
        .next_after(&at("2026-01-01T00:00:00Z"))
        .unwrap();
    assert_eq!(t.weekday(), Weekday::Mon);
    let t = Schedule::parse("0 0 9 ? * 2")
        .unwrap()
        .next_after(&at("2026-01-01T00:00:00Z"))
        .unwrap();
    assert_eq!(t.weekday(), Weekday::Mon);
}

#[test]
fn quartz_year_field() {
    assert_eq!(
        next("0 0 12 1 1 ? 2030", "2026-01-01T00:00:00Z", 2),
        ["2030-01-01 12:00:00 Tue"]
    );
}

#[test]
fn macros() {
    let after = "2026-03-15T10:30:00Z";
    assert_eq!(next("@hourly", after, 1), ["2026-03-15 11:00:00 Sun"]);
    assert_eq!(next("@daily", after, 1), ["2026-03-16 00:00:00 Mon"]);
    assert_eq!(next("@midnight", after, 1), ["2026-03-16 00:00:00 Mon"]);
    assert_eq!(next("@weekly", after, 1), ["2026-03-22 00:00:00 Sun"]);
    assert_eq!(next("@monthly", after, 1), ["2026-04-01 00:00:00 Wed"]);
    assert_eq!(next("@yearly", after, 1), ["2027-01-01 00:00:00 Fri"]);
    assert_eq!(next("@annually", after, 1), ["2027-01-01 00:00:00 Fri"]);
    assert_eq!(next("@DAILY", after, 1), ["2026-03-16 00:00:00 Mon"]);
}

#[test]
fn time_zone_is_respected() {
    let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let after = at("2026-01-01T00:00:00Z").with_timezone(&tz);
    let t = Schedule::parse("0 3 * * *")
        .unwrap()
        .next_after(&after)
        .unwrap();
    assert_eq!((t.hour(), t.with_timezone(&Utc).hour()), (3, 2));
}

#[test]
fn next_after_is_strictly_after() {
    assert_eq!(
        next("0 3 * * *", "2026-01-01T03:00:00Z", 1),
        ["2026-01-02 03:00:00 Fri"]
    );
}

#[test]
fn bad_inputs_name_the_problem() {
    assert_eq!(err(""), "schedule is empty");
    assert_eq!(err("   "), "schedule is empty");
    assert_eq!(err("* * *"), "schedule has 3 fields; expected 5, 6 or 7");
    assert_eq!(
        err("0 0 0 0 0 0 0 0"),
        "schedule has 8 fields; expected 5, 6 or 7"
    );
    assert_eq!(
        err("61 * * * *"),
        "minute field \"61\": 61 is out of range 0-59"
    );
    assert_eq!(
        err("* 24 * * *"),
        "hour field \"24\": 24 is out of range 0-23"
    );
    assert_eq!(
        err("* * 32 * *"),
        "day-of-month field \"32\": 32 is out of range 1-31"
    );
    assert_eq!(
        err("* * 0 * *"),
        "day-of-month field \"0\": 0 is out of range 1-31"
    );
    assert_eq!(
        err("* * * 13 *"),
        "month field \"13\": 13 is out of range 1-12"
    );
    assert_eq!(
        err("* * * * 8"),
        "day-of-week field \"8\": 8 is out of range 0-7"
    );
    assert_eq!(
        err("0 0 0 ? * 0 *"),
        "day-of-week field \"0\": 0 is out of range 1-7"
    );
    assert_eq!(
        err("60 * * * * *"),
        "second field \"60\": 60 is out of range 0-59"
    );
    assert_eq!(
        err("0 0 0 1 1 ? 1960"),
        "year field \"1960\": 1960 is out of range 1970-2099"
    );
    assert_eq!(
        err("* * * FOO *"),
        "month field \"FOO\": \"FOO\" is not a number or a name (JAN-DEC)"
    );
    assert_eq!(
        err("a * * * *"),
        "minute field \"a\": \"a\" is not a number"
    );
    assert_eq!(
        err("*/0 * * * *"),
        "minute field \"*/0\": step 0 is out of range 1-59"
    );
    assert_eq!(
        err("*/x * * * *"),
        "minute field \"*/x\": step \"x\" is not a number"
    );
    assert_eq!(
        err("30-10 * * * *"),
        "minute field \"30-10\": range 30-10 runs backwards"
    );
    assert_eq!(
        err("1,,2 * * * *"),
        "minute field \"1,,2\": empty list item"
    );
    assert_eq!(
        err("? * * * *"),
        "minute field \"?\": '?' is only allowed in the day-of-month and day-of-week fields"
    );
    assert_eq!(
        err("0 0 0 L * ? *"),
        "day-of-month field \"L\": 'L' (Quartz last/nearest/nth) is not supported"
    );
    assert_eq!(
        err("0 0 0 ? * 2#1 *"),
        "day-of-week field \"2#1\": '#' (Quartz last/nearest/nth) is not supported"
    );
    assert_eq!(
        next("0 0 * * MON-WED", "2026-01-01T00:00:00Z", 1),
        ["2026-01-05 00:00:00 Mon"]
    );
    assert_eq!(
        err("@every_minute"),
        "unknown schedule macro \"@every_minute\""
    );
    let long = "1,".repeat(150) + "1 * * * *";
    assert_eq!(
        err(&long),
        format!(
            "schedule is {} characters long; at most 200 are allowed",
            long.len()
        )
    );
}

#[test]
fn never_firing_schedules_are_refused() {
    let now = at("2026-01-01T00:00:00Z");
    assert_eq!(
        Schedule::parse_firing("0 0 30 2 *", &now).unwrap_err(),
        ScheduleError::Never
    );
    assert_eq!(
        Schedule::parse_firing("0 0 0 1 1 ? 2020", &now).unwrap_err(),
        ScheduleError::Never
    );
    // 29 February fires in leap years: accepted.
    let leap = Schedule::parse_firing("0 0 29 2 *", &now).unwrap();
    assert_eq!(leap.next_after(&now).unwrap().year(), 2028);
}

/// Fire times in a zone, printed in that zone with their offset.
fn next_in(text: &str, tz: chrono_tz::Tz, after: &str, n: usize) -> Vec<String> {
    Schedule::parse(text)
        .unwrap()
        .upcoming(&at(after).with_timezone(&tz), n)
        .iter()
        .map(|t| t.format("%Y-%m-%d %H:%M %z").to_string())
        .collect()
}

#[test]
fn spring_forward_runs_a_fixed_slot_in_the_gap_right_after_it() {
    // New York, 2027-03-14: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
    assert_eq!(
        next_in(
            "30 2 * * *",
            chrono_tz::America::New_York,
            "2027-03-13T12:00:00Z",
            3
        ),
        [
            "2027-03-14 03:00 -0400",
            "2027-03-15 02:30 -0400",
            "2027-03-16 02:30 -0400"
        ]
    );
    // Two fixed slots in the same gap run once.
    assert_eq!(
        next_in(
            "0,30 2 * * *",
            chrono_tz::America::New_York,
            "2027-03-14T06:00:00Z",
            2
        ),
        ["2027-03-14 03:00 -0400", "2027-03-15 02:00 -0400"]
    );
}

#[test]
fn spring_forward_keeps_the_real_spacing_of_frequent_schedules() {
    assert_eq!(
        next_in(
            "0 * * * *",
            chrono_tz::America::New_York,
            "2027-03-14T05:30:00Z",
            3
        ),
        [
            "2027-03-14 01:00 -0500",
            "2027-03-14 03:00 -0400",
            "2027-03-14 04:00 -0400"
        ]
    );
    assert_eq!(
        next_in(
            "*/30 * * * *",
            chrono_tz::America::New_York,
            "2027-03-14T06:20:00Z",
            2
        ),
        ["2027-03-14 01:30 -0500", "2027-03-14 03:00 -0400"]
    );
}

#[test]
fn fall_back_runs_hourly_schedules_in_both_repeated_hours() {
    // New York, 2027-11-07: 02:00 EDT falls back to 01:00 EST; 01:00-01:59 happens twice.
    assert_eq!(
        next_in(
            "0 * * * *",
            chrono_tz::America::New_York,
            "2027-11-07T04:30:00Z",
            4
        ),
        [
            "2027-11-07 01:00 -0400",
            "2027-11-07 01:00 -0500",
            "2027-11-07 02:00 -0500",
            "2027-11-07 03:00 -0500"
        ]
    );
}

#[test]
fn fall_back_runs_a_fixed_slot_once() {
    assert_eq!(
        next_in(
            "30 1 * * *",
            chrono_tz::America::New_York,
            "2027-11-06T12:00:00Z",
            2
        ),
        ["2027-11-07 01:30 -0400", "2027-11-08 01:30 -0500"]
    );
}

#[test]
fn in_the_repeated_hour_the_next_time_is_strictly_after_the_time_asked_from() {
    let schedule = Schedule::parse("30 1 * * *").unwrap();
    let tz = chrono_tz::America::New_York;
    // Asked from 01:45 EST (the second 01:xx): the next is tomorrow, not 01:30 EDT (earlier).
    for after in [
        "2027-11-07T05:45:00Z",
        "2027-11-07T06:15:00Z",
        "2027-11-07T06:30:00Z",
        "2027-11-07T06:45:00Z",
    ] {
        let from = at(after).with_timezone(&tz);
        let next = schedule.next_after(&from).unwrap();
        assert!(next > from, "{next} after {from}");
        assert_eq!(
            next.format("%Y-%m-%d %H:%M").to_string(),
            "2027-11-08 01:30"
        );
    }
    // Every second of the change, for a frequent schedule too.
    let every_minute = Schedule::parse("* * * * *").unwrap();
    let mut t = at("2027-11-07T04:50:00Z").with_timezone(&tz);
    for _ in 0..200 {
        let next = every_minute.next_after(&t).unwrap();
        assert!(next > t);
        assert!((next - t).num_seconds() <= 60, "{t} -> {next}");
        t = next;
    }
}

#[test]
fn london_changes_follow_the_same_rules() {
    // Europe/London, 2027-03-28 01:00 GMT -> 02:00 BST; 2027-10-31 02:00 BST -> 01:00 GMT.
    assert_eq!(
        next_in(
            "30 1 * * *",
            chrono_tz::Europe::London,
            "2027-03-27T12:00:00Z",
            2
        ),
        ["2027-03-28 02:00 +0100", "2027-03-29 01:30 +0100"]
    );
    assert_eq!(
        next_in(
            "15 * * * *",
            chrono_tz::Europe::London,
            "2027-10-31T00:00:00Z",
            3
        ),
        [
            "2027-10-31 01:15 +0100",
            "2027-10-31 01:15 +0000",
            "2027-10-31 02:15 +0000"
        ]
    );
}

#[test]
fn lord_howe_shifts_by_half_an_hour() {
    // Australia/Lord_Howe, 2027-10-03: 02:00 +1030 jumps to 02:30 +1100.
    assert_eq!(
        next_in(
            "15 2 * * *",
            chrono_tz::Australia::Lord_Howe,
            "2027-10-02T00:00:00Z",
            2
        ),
        ["2027-10-03 02:30 +1100", "2027-10-04 02:15 +1100"]
    );
    // 2027-04-04: 02:00 +1100 falls back to 01:30 +1030; 01:30-01:59 happens twice.
    assert_eq!(
        next_in(
            "45 * * * *",
            chrono_tz::Australia::Lord_Howe,
            "2027-04-03T14:00:00Z",
            3
        ),
        [
            "2027-04-04 01:45 +1100",
            "2027-04-04 01:45 +1030",
            "2027-04-04 02:45 +1030"
        ]
    );
}
