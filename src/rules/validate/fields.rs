//! The checks of single fields of a rule row: values in range, a schedule that parses and fires, a
//! time zone chrono-tz knows, pacing limits that make sense. Each refuses with an error that names
//! the field, the value and the fix.

use crate::errors::refuse;
use crate::gucs;
use crate::rules::columns::{self, Row};
use crate::rules::DropPartitions;
use crate::schedule::{Schedule, SCHEDULE_HINT};
use crate::target::ResolvedTable;
use pgrx::datum::Interval;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Pacing limits: a replica lag that is not negative, a WAL rate that is a rate.
pub(super) fn check_pacing(rule: &str, row: &impl Row) {
    if let Some(lag) = row.column::<Interval>("max_replica_lag") {
        if columns::seconds(&lag) < 0.0 {
            refuse(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("max_replica_lag of rule \"{rule}\" must not be negative, got {}", output_text(lag)),
                "Give the replica lag at which runs pause between batches, e.g. '1 second', 0 for off, or NULL for pg_token_cleanup.max_replica_lag.",
            );
        }
    }
    if let Some(rate) = row.column::<f32>("max_wal_rate") {
        if rate < 0.0 || rate.is_nan() {
            refuse(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!("max_wal_rate {} of rule \"{rule}\" is not a rate", output_text(rate)),
                "Give the MB of WAL per second a run may write, e.g. 16, 0 for no limit, or NULL for pg_token_cleanup.max_wal_rate.",
            );
        }
    }
}

/// `value` as PostgreSQL prints it (the output function of its type), as errors quote values.
pub(super) fn output_text<T: IntoDatum>(value: T) -> String {
    let mut output = pg_sys::Oid::INVALID;
    let mut varlena = false;
    let datum = value.into_datum().expect("a value");
    // SAFETY: the type's output function, given a datum of that type; the result is a palloc'd C
    // string.
    unsafe {
        pg_sys::getTypeOutputInfo(T::type_oid(), &mut output, &mut varlena);
        let text = pg_sys::OidOutputFunctionCall(output, datum);
        std::ffi::CStr::from_ptr(text)
            .to_string_lossy()
            .into_owned()
    }
}

/// The rule's own time zone, checked as the setting is; `None` when it has none.
pub(super) fn check_timezone(rule: &str, timezone: Option<&str>) -> chrono_tz::Tz {
    match timezone {
        None => gucs::timezone(),
        Some(name) => gucs::parse_timezone(name).unwrap_or_else(|| {
            refuse(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid timezone \"{name}\" for rule \"{rule}\""),
                "Use an IANA time zone name such as UTC, Europe/Berlin or America/New_York, or NULL for pg_token_cleanup.timezone.",
            )
        }),
    }
}

pub(super) fn check_schedule(rule: &str, schedule: &str, timezone: chrono_tz::Tz) {
    let now = chrono::Utc::now().with_timezone(&timezone);
    if let Err(e) = Schedule::parse_firing(schedule, &now) {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid schedule \"{schedule}\" for rule \"{rule}\": {e}"),
            SCHEDULE_HINT,
        );
    }
}

pub(super) fn check_batch_size(rule: &str, batch_size: Option<i32>) {
    if let Some(size) = batch_size {
        if !(1..=gucs::MAX_BATCH_SIZE).contains(&size) {
            refuse(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!(
                    "batch_size {size} of rule \"{rule}\" is out of range 1-{}",
                    gucs::MAX_BATCH_SIZE
                ),
                format!(
                    "Leave batch_size NULL to use pg_token_cleanup.batch_size (now {}); a few thousand rows per batch keeps each transaction short.",
                    gucs::batch_size()
                ),
            );
        }
    }
}

pub(super) fn check_parallel_workers(rule: &str, workers: Option<i32>) {
    if let Some(workers) = workers {
        if !(1..=gucs::MAX_PARALLEL_WORKERS).contains(&workers) {
            refuse(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!(
                    "parallel_workers {workers} of rule \"{rule}\" is out of range 1-{}",
                    gucs::MAX_PARALLEL_WORKERS
                ),
                format!(
                    "Give the runners one run may use at once, e.g. 2 (each beyond the first takes a free slot of pg_token_cleanup.max_workers = {} while it works), or NULL for pg_token_cleanup.parallel_workers.",
                    gucs::max_workers()
                ),
            );
        }
    }
}

pub(super) fn check_max_rows_per_second(rule: &str, rate: Option<i32>) {
    if let Some(rate) = rate.filter(|r| *r < 0) {
        refuse(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("max_rows_per_second {rate} of rule \"{rule}\" is negative"),
            format!(
                "Give the most rows a run may delete per second on average, 0 for no limit, or NULL to use pg_token_cleanup.max_rows_per_second (now {}).",
                gucs::max_rows_per_second()
            ),
        );
    }
}

pub(super) fn check_drop_partitions(rule: &str, table: &ResolvedTable, mode: &str) {
    if DropPartitions::parse(mode).is_none() {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid drop_partitions \"{mode}\" for rule \"{rule}\""),
            "Use 'never' (delete row by row), 'detach' or 'drop' (whole partitions all of whose rows match).",
        );
    }
    // SAFETY: syscache lookup.
    let partitioned = unsafe { pg_sys::get_rel_relkind(table.oid) } as u8 == b'p';
    if mode != "never" && !partitioned {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "drop_partitions '{mode}' of rule \"{rule}\" needs a partitioned table; {} is not one",
                table.qualified_name
            ),
            "Leave drop_partitions 'never' for a plain table.",
        );
    }
}

pub(super) fn check_blast_radius(rule: &str, max_rows: Option<i64>, max_fraction: Option<f32>) {
    if let Some(rows) = max_rows.filter(|r| *r < 1) {
        refuse(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("max_rows_per_run {rows} of rule \"{rule}\" must be at least 1"),
            "Give the most rows one run may delete, or NULL for no limit.",
        );
    }
    if let Some(f) = max_fraction.filter(|f| !(*f > 0.0 && *f <= 1.0)) {
        refuse(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("max_fraction {f} of rule \"{rule}\" is out of range (0, 1]"),
            "Give the largest fraction of the table's live rows one run may delete, e.g. 0.2, or NULL for pg_token_cleanup.max_fraction.",
        );
    }
}

pub(super) fn check_max_run_duration(rule: &str, seconds: Option<f64>) {
    if let Some(s) = seconds.filter(|s| !(*s > 0.0 && *s <= 1e9)) {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_run_duration of rule \"{rule}\" must be positive, got {s} seconds"),
            "Give the longest a run may go on, e.g. '10 minutes' (it stops between batches and the rest goes in the next run), or NULL for no limit.",
        );
    }
}

pub(super) fn check_timeout(rule: &str, field: &str, seconds: Option<f64>) {
    if let Some(s) = seconds {
        if !(0.0..=f64::from(i32::MAX) / 1000.0).contains(&s) {
            refuse(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "{field} of rule \"{rule}\" must be between 0 and 24 days, got {s} seconds"
                ),
                format!("Leave {field} NULL to use pg_token_cleanup.{field}; 0 means no limit."),
            );
        }
    }
}
