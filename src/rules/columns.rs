//! The columns of `token_cleanup.rules`, read by name in one place: from the rows the loader selects
//! (`SELECT r.*`) and from the row the validation trigger is given ([`super::validate`]). A new
//! column of the rules table is a field of [`Rule`] read here, and, if it needs checking, a check
//! in the trigger; nothing else names the columns.

use super::{DropPartitions, Rule};
use pgrx::datum::{FromDatum, Interval, IntoDatum, TimestampWithTimeZone};
use pgrx::pg_sys;
use std::ffi::{CStr, CString};

/// A row of the rules table whose columns are read by name.
pub trait Row {
    /// The value of `column`; `None` for NULL. The column exists (the loaders check the extension's
    /// version first; the trigger's row is the table's).
    fn column<T: FromDatum + IntoDatum>(&self, column: &str) -> Option<T>;
}

impl Row for pgrx::spi::SpiHeapTupleData<'_> {
    fn column<T: FromDatum + IntoDatum>(&self, column: &str) -> Option<T> {
        self.get_by_name::<T, _>(column)
            .unwrap_or_else(|e| panic!("column {column} of token_cleanup.rules: {e}"))
    }
}

/// A row the trigger is given: its columns as datums, read and changed by name, then formed into
/// the row to write.
pub struct Tuple {
    desc: pg_sys::TupleDesc,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl Tuple {
    /// The columns of `tuple`.
    ///
    /// # Safety
    /// `tuple` is a valid heap tuple described by `desc`, and both outlive the returned value (the
    /// tuples and the relation of a firing trigger do, for the trigger's call).
    pub unsafe fn deform(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> Tuple {
        // SAFETY: as the caller promises; the arrays have one element per attribute.
        unsafe {
            let natts = (*desc).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![true; natts];
            pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            Tuple {
                desc,
                values,
                nulls,
            }
        }
    }

    /// The index and type of `column`, which must exist and have a type `T` reads or writes.
    fn attribute<T: IntoDatum>(&self, column: &str) -> (usize, pg_sys::Oid) {
        let name = CString::new(column).expect("no NUL");
        // SAFETY: a valid descriptor (see `deform`); SPI_fnumber only reads it.
        let attnum = unsafe { pg_sys::SPI_fnumber(self.desc, name.as_ptr()) };
        assert!(attnum > 0, "token_cleanup.rules has no column {column}");
        let index = attnum as usize - 1;
        // SAFETY: a valid descriptor (see `deform`), not released by the wrapper.
        let typid = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(self.desc) }
            .get(index)
            .expect("an attribute SPI_fnumber found")
            .atttypid;
        assert!(
            T::is_compatible_with(typid),
            "column {column} of token_cleanup.rules is not read as {}",
            std::any::type_name::<T>()
        );
        (index, typid)
    }

    /// Sets `column` to `value` (NULL for `None`).
    pub fn set<T: IntoDatum>(&mut self, column: &str, value: Option<T>) {
        let (index, _) = self.attribute::<T>(column);
        match value.and_then(IntoDatum::into_datum) {
            Some(datum) => {
                self.values[index] = datum;
                self.nulls[index] = false;
            }
            None => self.nulls[index] = true,
        }
    }

    /// The row to write: `original` with every column as set here.
    ///
    /// # Safety
    /// `original` is the tuple this was deformed from.
    pub unsafe fn form(&self, original: pg_sys::HeapTuple) -> pg_sys::HeapTuple {
        let mut values = self.values.clone();
        let mut nulls = self.nulls.clone();
        let mut replace = vec![true; self.values.len()];
        // SAFETY: arrays of one element per attribute of `desc`, which describes `original`.
        unsafe {
            pg_sys::heap_modify_tuple(
                original,
                self.desc,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
                replace.as_mut_ptr(),
            )
        }
    }
}

impl Row for Tuple {
    fn column<T: FromDatum + IntoDatum>(&self, column: &str) -> Option<T> {
        let (index, typid) = self.attribute::<T>(column);
        if self.nulls[index] {
            return None;
        }
        // SAFETY: a datum of the column's type, from a tuple still valid (see `deform`).
        unsafe { T::from_polymorphic_datum(self.values[index], false, typid) }
    }
}

impl Rule {
    /// The rule in `row`.
    pub fn read(row: &impl Row) -> Rule {
        Rule {
            id: row.column("id").unwrap_or_default(),
            name: row.column("name").unwrap_or_default(),
            table_name: row.column("table_name").unwrap_or_default(),
            condition: row.column("condition").unwrap_or_default(),
            schedule: row.column("schedule").unwrap_or_default(),
            batch_size: row.column("batch_size"),
            enabled: row.column("enabled").unwrap_or(false),
            owner: row
                .column::<SqlName>("owner")
                .map(|n| n.0)
                .unwrap_or_default(),
            lock_timeout_ms: milliseconds(row.column("lock_timeout")),
            statement_timeout_ms: milliseconds(row.column("statement_timeout")),
            max_rows_per_second: row.column("max_rows_per_second"),
            max_run_duration_ms: milliseconds(row.column("max_run_duration")),
            timezone: row.column("timezone"),
            archive_table: row.column("archive_table"),
            max_rows_per_run: row.column("max_rows_per_run"),
            max_fraction: row.column("max_fraction"),
            drop_partitions: row
                .column::<String>("drop_partitions")
                .and_then(|text| DropPartitions::parse(&text))
                .unwrap_or(DropPartitions::Never),
            max_replica_lag_ms: milliseconds(row.column("max_replica_lag")),
            max_wal_rate_mb: row.column("max_wal_rate"),
            yield_to_waiters: row.column("yield_to_waiters"),
            parallel_workers: row.column("parallel_workers"),
            updated_at: row
                .column::<TimestampWithTimeZone>("updated_at")
                .map_or(0.0, |t| {
                    crate::pgtime::from_pg(t.into()).timestamp_micros() as f64 / 1e6
                }),
        }
    }
}

/// An interval as `extract(epoch FROM …)` gives it: seconds, a year counted as 365.25 days and a
/// month as 30.
pub fn seconds(interval: &Interval) -> f64 {
    const SECS_PER_DAY: f64 = 86_400.0;
    let months = interval.months();
    interval.micros() as f64 / 1e6
        + 365.25 * SECS_PER_DAY * f64::from(months / 12)
        + 30.0 * SECS_PER_DAY * f64::from(months % 12)
        + SECS_PER_DAY * f64::from(interval.days())
}

fn milliseconds(interval: Option<Interval>) -> Option<i64> {
    interval.map(|i| (seconds(&i) * 1000.0).round() as i64)
}

/// A value of type `name` (the owner column): pgrx reads `text`, and `name` is not binary
/// compatible with it.
pub struct SqlName(pub String);

impl FromDatum for SqlName {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<SqlName> {
        if is_null {
            return None;
        }
        // SAFETY: a non-null `name` datum points to a NameData, a NUL-terminated C string.
        let text = unsafe { CStr::from_ptr(datum.cast_mut_ptr::<std::ffi::c_char>()) };
        Some(SqlName(text.to_string_lossy().into_owned()))
    }
}

impl IntoDatum for SqlName {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let text = CString::new(self.0.replace('\0', "")).expect("no NUL");
        // SAFETY: a NameData palloc'd in the current context, filled by namestrcpy (which truncates
        // to NAMEDATALEN - 1 bytes and terminates it).
        unsafe {
            let name =
                pg_sys::palloc0(std::mem::size_of::<pg_sys::NameData>()).cast::<pg_sys::NameData>();
            pg_sys::namestrcpy(name, text.as_ptr());
            Some(pg_sys::Datum::from(name))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::NAMEOID
    }
}

#[cfg(test)]
mod tests {
    use super::seconds;
    use pgrx::datum::Interval;

    #[test]
    fn intervals_count_as_extract_epoch_counts_them() {
        let i = |months, days, micros| Interval::new(months, days, micros).unwrap();
        assert_eq!(seconds(&i(0, 0, 1_500_000)), 1.5);
        assert_eq!(seconds(&i(0, 0, -1_000_000)), -1.0);
        assert_eq!(seconds(&i(0, 2, 0)), 172_800.0);
        assert_eq!(seconds(&i(1, 0, 0)), 2_592_000.0);
        // As PostgreSQL 15 computes them: extract(epoch FROM interval '1 year 1 month') = 34149600,
        // of '-1 year -2 days -3 seconds' = -31730403, of '-14 months' = -36741600.
        assert_eq!(seconds(&i(13, 0, 0)), 34_149_600.0);
        assert_eq!(seconds(&i(-12, -2, -3_000_000)), -31_730_403.0);
        assert_eq!(seconds(&i(-14, 0, 0)), -36_741_600.0);
    }
}
