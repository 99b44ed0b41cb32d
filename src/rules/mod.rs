//! Rules: the [`Rule`] type and the settings it falls back on; loading rules via SPI ([`load`]);
//! the validation that the rules table's BEFORE INSERT OR UPDATE trigger runs for every row
//! (`token_cleanup.check_rule`, [`validate`]).

mod columns;
pub mod load;
pub mod resolve;
mod validate;

pub use load::*;

use crate::gucs;
use crate::owner::Limits;

/// Longest rule name accepted.
pub const MAX_NAME_LEN: usize = 200;

/// A row of `token_cleanup.rules`, as the scheduler and the executor use it (and as a runner
/// receives it, see `worker::handoff`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    pub id: i64,
    pub name: String,
    pub table_name: String,
    pub condition: String,
    pub schedule: String,
    pub batch_size: Option<i32>,
    pub enabled: bool,
    pub owner: String,
    pub lock_timeout_ms: Option<i64>,
    pub statement_timeout_ms: Option<i64>,
    pub max_rows_per_second: Option<i32>,
    pub max_run_duration_ms: Option<i64>,
    /// IANA time zone of the schedule; NULL: pg_token_cleanup.timezone.
    pub timezone: Option<String>,
    /// The table each batch moves its rows to (canonical name), if any.
    pub archive_table: Option<String>,
    pub max_rows_per_run: Option<i64>,
    pub max_fraction: Option<f32>,
    /// What a run does with a leaf partition all of whose rows match.
    pub drop_partitions: DropPartitions,
    /// Pacing (see `executor::pacing`); NULL: the settings of the same names.
    pub max_replica_lag_ms: Option<i64>,
    pub max_wal_rate_mb: Option<f32>,
    pub yield_to_waiters: Option<bool>,
    /// Runners one run may use at once (see `executor::parallel`); NULL: the setting.
    pub parallel_workers: Option<i32>,
    /// Seconds since the epoch of the rule's last change.
    pub updated_at: f64,
}

/// What a run does with a leaf partition all of whose rows match (`drop_partitions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DropPartitions {
    /// Delete its rows one by one, as for a plain table.
    Never,
    /// `ALTER TABLE … DETACH PARTITION`: the rows stay, in a table of their own.
    Detach,
    /// `DROP TABLE` of the partition.
    Drop,
}

impl DropPartitions {
    /// The column's text: `never`, `detach` or `drop` (the trigger refuses any other).
    pub fn parse(text: &str) -> Option<DropPartitions> {
        match text {
            "never" => Some(DropPartitions::Never),
            "detach" => Some(DropPartitions::Detach),
            "drop" => Some(DropPartitions::Drop),
            _ => None,
        }
    }
}

impl Rule {
    /// Rows per batch: the rule's own size, else the setting.
    pub fn effective_batch_size(&self) -> i32 {
        self.batch_size.unwrap_or_else(gucs::batch_size)
    }

    /// The pace a run may not exceed on average (rows deleted per second; 0 = no limit): the rule's
    /// own, else the setting.
    pub fn effective_max_rows_per_second(&self) -> u32 {
        self.max_rows_per_second
            .unwrap_or_else(gucs::max_rows_per_second)
            .max(0) as u32
    }

    /// How long a run may go on before it stops between batches: the rule's own, lowered to
    /// pg_token_cleanup.max_run_duration; `None`: no limit.
    pub fn max_run_duration(&self) -> Option<std::time::Duration> {
        let own = self
            .max_run_duration_ms
            .filter(|ms| *ms > 0)
            .map(|ms| std::time::Duration::from_millis(ms as u64));
        match (own, gucs::max_run_duration()) {
            (Some(own), Some(ceiling)) => Some(own.min(ceiling)),
            (own, ceiling) => own.or(ceiling),
        }
    }

    /// The largest fraction of live rows a run may delete (1: no limit): the rule's own, else the
    /// setting.
    pub fn effective_max_fraction(&self) -> f64 {
        // The column is a `real`: its value as written (0.1), not as its binary form widens to a
        // double (0.10000000149011612), which errors would show.
        self.max_fraction
            .map(|f| f.to_string().parse().unwrap_or(f64::from(f)))
            .unwrap_or_else(gucs::max_fraction)
    }

    /// Runners a run may use at once: the rule's own, else the setting (at least 1).
    pub fn effective_parallel_workers(&self) -> u32 {
        self.parallel_workers
            .unwrap_or_else(gucs::parallel_workers)
            .max(1) as u32
    }

    /// Timeouts: the rule's own, else the settings.
    pub fn limits(&self) -> Limits {
        let clamp = |v: i64| v.clamp(0, i64::from(i32::MAX)) as i32;
        Limits {
            lock_timeout_ms: self
                .lock_timeout_ms
                .map(clamp)
                .unwrap_or_else(gucs::lock_timeout_ms),
            statement_timeout_ms: capped(
                self.statement_timeout_ms
                    .map(clamp)
                    .unwrap_or_else(gucs::statement_timeout_ms),
                gucs::max_statement_timeout_ms(),
            ),
        }
    }
}

/// A timeout (0: none) lowered to a ceiling (0: none): a rule cannot exceed the DBA's ceiling, nor
/// turn it off with 0.
fn capped(timeout_ms: i32, ceiling_ms: i32) -> i32 {
    match (timeout_ms, ceiling_ms) {
        (t, 0) => t,
        (0, c) => c,
        (t, c) => t.min(c),
    }
}

#[cfg(test)]
mod tests {
    use super::capped;

    #[test]
    fn a_ceiling_lowers_a_timeout_and_replaces_none() {
        assert_eq!(capped(5_000, 0), 5_000, "no ceiling");
        assert_eq!(capped(0, 0), 0, "no timeout, no ceiling");
        assert_eq!(capped(5_000, 1_000), 1_000);
        assert_eq!(capped(500, 1_000), 500);
        assert_eq!(
            capped(0, 1_000),
            1_000,
            "a rule cannot turn the ceiling off"
        );
    }
}
