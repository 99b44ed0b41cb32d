//! The fields of a schedule line: what each allows (range, names, `?`), macros expanded to lines,
//! each field expanded to the set of values it allows, and those sets rendered back for the `cron`
//! crate.

use super::ScheduleError;
use std::collections::BTreeSet;

pub(super) const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
pub(super) const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Weekday numbering of a line (see the module header).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum WeekdayNumbers {
    Crontab,
    Quartz,
}

/// One field's rules: its name in errors, its range and its names.
pub(super) struct FieldSpec {
    pub(super) name: &'static str,
    pub(super) min: u32,
    pub(super) max: u32,
    pub(super) names: &'static [&'static str],
    /// Value of the first name (`JAN` = 1, `SUN` = 0).
    pub(super) names_base: u32,
    pub(super) allows_question_mark: bool,
}

pub(super) const SECOND: FieldSpec = FieldSpec {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    names_base: 0,
    allows_question_mark: false,
};
pub(super) const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    ..SECOND
};
pub(super) const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    max: 23,
    ..SECOND
};
pub(super) const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    allows_question_mark: true,
    ..SECOND
};
pub(super) const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTH_NAMES,
    names_base: 1,
    ..SECOND
};
pub(super) const YEAR: FieldSpec = FieldSpec {
    name: "year",
    min: 1970,
    max: 2099,
    ..SECOND
};
pub(super) const WEEKDAY_CRONTAB: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &WEEKDAY_NAMES,
    names_base: 0,
    allows_question_mark: true,
};
pub(super) const WEEKDAY_QUARTZ: FieldSpec = FieldSpec {
    min: 1,
    max: 7,
    names_base: 1,
    ..WEEKDAY_CRONTAB
};

/// A field expanded to the values it allows, and whether it was written as "any" (`*…` or `?`).
pub(super) struct Expanded {
    pub(super) values: BTreeSet<u32>,
    pub(super) starts_unrestricted: bool,
}

pub(super) fn expand_macro(text: &str) -> Result<String, ScheduleError> {
    if !text.starts_with('@') {
        return Ok(text.to_string());
    }
    let line = match text.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return Err(ScheduleError::UnknownMacro(text.to_string())),
    };
    Ok(line.to_string())
}

pub(super) fn field_error(
    spec: &FieldSpec,
    text: &str,
    reason: impl Into<String>,
) -> ScheduleError {
    ScheduleError::Field {
        field: spec.name,
        text: text.to_string(),
        reason: reason.into(),
    }
}

/// Expands one field's text into the set of values it allows, checking every number and name.
pub(super) fn expand_field(spec: &FieldSpec, text: &str) -> Result<Expanded, ScheduleError> {
    let starts_unrestricted = text.starts_with('*') || text.starts_with('?');
    if text == "?" {
        if !spec.allows_question_mark {
            return Err(field_error(
                spec,
                text,
                "'?' is only allowed in the day-of-month and day-of-week fields",
            ));
        }
        return Ok(Expanded {
            values: (spec.min..=spec.max).collect(),
            starts_unrestricted,
        });
    }
    let mut values = BTreeSet::new();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(field_error(spec, text, "empty list item"));
        }
        for part in item.split(['-', '/']) {
            let quartz_only = part
                .chars()
                .find(|c| matches!(c, 'L' | 'W' | '#' | 'l' | 'w'));
            if let Some(c) = quartz_only.filter(|_| !is_name(spec, part)) {
                return Err(field_error(
                    spec,
                    text,
                    format!("'{c}' (Quartz last/nearest/nth) is not supported"),
                ));
            }
        }
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => {
                let step: u32 = s.parse().map_err(|_| {
                    field_error(spec, text, format!("step \"{s}\" is not a number"))
                })?;
                if step == 0 || step > spec.max {
                    return Err(field_error(
                        spec,
                        text,
                        format!("step {step} is out of range 1-{}", spec.max),
                    ));
                }
                (b, Some(step))
            }
            None => (item, None),
        };
        let (low, high) = if base == "*" || base == "?" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = base.split_once('-') {
            let (low, high) = (value(spec, text, a)?, value(spec, text, b)?);
            if low > high {
                return Err(field_error(
                    spec,
                    text,
                    format!("range {a}-{b} runs backwards"),
                ));
            }
            (low, high)
        } else {
            let start = value(spec, text, base)?;
            // "a/s" is Quartz's "from a to the end, every s"; a lone "a" is just a.
            (start, if step.is_some() { spec.max } else { start })
        };
        let step = step.unwrap_or(1) as usize;
        values.extend((low..=high).step_by(step));
    }
    Ok(Expanded {
        values,
        starts_unrestricted,
    })
}

pub(super) fn is_name(spec: &FieldSpec, text: &str) -> bool {
    spec.names.iter().any(|n| n.eq_ignore_ascii_case(text))
}

/// One number or name of a field, checked against the field's range.
pub(super) fn value(spec: &FieldSpec, field_text: &str, text: &str) -> Result<u32, ScheduleError> {
    if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(spec.names_base + i as u32);
    }
    let n: u32 = text.parse().map_err(|_| {
        let names = if spec.names.is_empty() {
            String::new()
        } else {
            format!(
                " or a name ({}-{})",
                spec.names[0],
                spec.names[spec.names.len() - 1]
            )
        };
        field_error(
            spec,
            field_text,
            format!("\"{text}\" is not a number{names}"),
        )
    })?;
    if n < spec.min || n > spec.max {
        return Err(field_error(
            spec,
            field_text,
            format!("{n} is out of range {}-{}", spec.min, spec.max),
        ));
    }
    Ok(n)
}

/// A set of values as the crate reads it: `*` when the whole range, else an explicit list.
pub(super) fn render(values: &BTreeSet<u32>, spec: &FieldSpec) -> String {
    if values.len() as u32 == spec.max - spec.min + 1 {
        return "*".to_string();
    }
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Weekdays (0 = Sunday) as names, which the crate reads without numbering ambiguity.
pub(super) fn render_weekdays(days: &BTreeSet<u32>) -> String {
    if days.len() == 7 {
        return "*".to_string();
    }
    days.iter()
        .map(|&d| WEEKDAY_NAMES[d as usize])
        .collect::<Vec<_>>()
        .join(",")
}
