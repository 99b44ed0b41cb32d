//! PostgreSQL timestamps (microseconds since 2000-01-01 UTC) and chrono's, converted in one place.

use chrono::{DateTime, TimeZone, Utc};
use pgrx::pg_sys;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A chrono time as a PostgreSQL timestamp.
pub fn to_pg(t: DateTime<Utc>) -> pg_sys::TimestampTz {
    t.timestamp_micros() - PG_EPOCH_OFFSET_US
}

/// A PostgreSQL timestamp as a chrono time (now, for one chrono cannot hold).
pub fn from_pg(t: pg_sys::TimestampTz) -> DateTime<Utc> {
    Utc.timestamp_micros(t.saturating_add(PG_EPOCH_OFFSET_US))
        .single()
        .unwrap_or_else(Utc::now)
}
