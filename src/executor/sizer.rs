//! How much the next batch of a run takes on, from what the previous batch measured: enough to
//! delete about `batch_size` rows, but no more than fits in [`TARGET_BATCH_MS`], whichever is
//! smaller. A "unit" is a heap page when a run walks the table and a collected ctid when it deletes
//! rows found through an index. Pure arithmetic, tested without a server.

/// The duration a batch aims at. Row locks are held from a batch's first delete to its commit, so
/// this bounds how long a live transaction can wait on a purged row (the target: 100 ms).
pub const TARGET_BATCH_MS: f64 = 50.0;
/// How much a batch may grow over the previous one: a sparse stretch of the table must not turn the
/// next batch into a giant if the rows become dense again.
const MAX_GROWTH: f64 = 4.0;

#[derive(Debug, Clone)]
pub struct BatchSizer {
    batch_size: f64,
    units: u64,
    max_units: u64,
}

impl BatchSizer {
    /// `first`: the units of the first batch (an estimate); `max_units`: never more than this.
    pub fn new(batch_size: usize, first: u64, max_units: u64) -> Self {
        let max_units = max_units.max(1);
        BatchSizer {
            batch_size: batch_size.max(1) as f64,
            units: first.clamp(1, max_units),
            max_units,
        }
    }

    /// The units the next batch should take.
    pub fn units(&self) -> u64 {
        self.units
    }

    /// Learns from a batch of `units` that deleted `rows` in `elapsed_ms`.
    pub fn observe(&mut self, units: u64, rows: i64, elapsed_ms: f64) {
        let units = units.max(1) as f64;
        let for_rows = if rows > 0 {
            self.batch_size * units / rows as f64
        } else {
            f64::INFINITY
        };
        let for_time = if elapsed_ms > 0.0 {
            TARGET_BATCH_MS * units / elapsed_ms
        } else {
            f64::INFINITY
        };
        let next = for_rows.min(for_time).min(units * MAX_GROWTH);
        self.units = (next.floor() as u64).clamp(1, self.max_units);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_batches_to_the_rows_they_delete() {
        // 1,000 pages deleted 20,000 rows (20 a page): 5,000 rows need 250 pages.
        let mut s = BatchSizer::new(5000, 1000, 1_000_000);
        s.observe(1000, 20_000, 10.0);
        assert_eq!(s.units(), 250);
    }

    #[test]
    fn shrinks_batches_that_take_longer_than_the_target() {
        // 5,000 rows in 200 ms: the rows allow 5,000 units, the time only a quarter of them.
        let mut s = BatchSizer::new(5000, 5000, 5000);
        s.observe(5000, 5000, 200.0);
        assert_eq!(s.units(), (5000.0 * TARGET_BATCH_MS / 200.0) as u64);
    }

    #[test]
    fn grows_at_most_fourfold_through_stretches_without_matching_rows() {
        let mut s = BatchSizer::new(5000, 100, 1_000_000);
        s.observe(100, 0, 1.0);
        assert_eq!(s.units(), 400);
        s.observe(400, 0, 4.0);
        assert_eq!(s.units(), 1600);
    }

    #[test]
    fn stays_within_one_unit_and_the_maximum() {
        let mut s = BatchSizer::new(5000, 0, 300);
        assert_eq!(s.units(), 1);
        s.observe(1, 0, 0.0);
        assert_eq!(s.units(), 4);
        s.observe(200, 1, 0.01);
        assert_eq!(s.units(), 300);
        s.observe(300, 1_000_000, 10_000.0);
        assert_eq!(s.units(), 1);
    }
}
