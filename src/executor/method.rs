//! How a run finds the rows it deletes, decided once per run from the planner's own plan for
//! `SELECT ctid FROM <table> WHERE <condition>`:
//!
//! - **table walk** when the planner would read the whole table anyway (no index serves the
//!   condition, or so many rows match that a sequential scan is cheaper). The run then walks the
//!   table once, in ranges of pages (`ctid >= '(a,0)' AND ctid < '(b,0)'`, a TID range scan), and
//!   each batch deletes the matching rows of its range. That is the plain DELETE's single pass,
//!   cut into short transactions: no separate scan to find the rows first.
//! - **index** when the planner would use an index: the matching ctids are collected through it,
//!   sorted into physical order, and deleted batch by batch by ctid, so a run's cost follows the
//!   rows it deletes, not the table's size.

/// Pages of the first range of a table walk, at most: the first batch runs before anything has been
/// measured, on the planner's estimate alone (8 MB of heap).
const FIRST_RANGE_MAX_PAGES: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// Walk pages `0..end_block` (the table's size when the run started; rows added later are new).
    TableWalk { end_block: u32, first_pages: u64 },
    /// Collect matching ctids through an index, then delete them by ctid.
    Index,
    /// A sharded Citus table: each shard purged on its node, walked or through its index as its
    /// own planner says (see `shards`).
    Shards,
}

impl Method {
    /// The name recorded in `token_cleanup.runs.method` and the run's LOG line.
    pub fn name(&self) -> &'static str {
        match self {
            Method::TableWalk { .. } => "table walk",
            Method::Index => "index",
            Method::Shards => "per shard",
        }
    }

    /// Decides from the top node of the planner's (non-parallel) plan for the collecting query,
    /// its row estimate, and the table's size in pages.
    pub fn from_plan(node_type: &str, estimated_rows: f64, blocks: u32, batch_size: usize) -> Self {
        if node_type != "Seq Scan" {
            return Method::Index;
        }
        let rows_per_page = (estimated_rows / f64::from(blocks.max(1))).max(f64::MIN_POSITIVE);
        let pages = (batch_size as f64 / rows_per_page).ceil();
        Method::TableWalk {
            end_block: blocks,
            first_pages: (pages.min(FIRST_RANGE_MAX_PAGES as f64) as u64).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_the_table_when_the_planner_would_scan_it() {
        // 1M matching rows over 25,000 pages (40 a page): 5,000 rows are 125 pages.
        assert_eq!(
            Method::from_plan("Seq Scan", 1_000_000.0, 25_000, 5000),
            Method::TableWalk {
                end_block: 25_000,
                first_pages: 125
            }
        );
    }

    #[test]
    fn uses_the_index_the_planner_picks() {
        for node in [
            "Index Scan",
            "Bitmap Heap Scan",
            "Index Only Scan",
            "Result",
        ] {
            assert_eq!(Method::from_plan(node, 100.0, 27_000, 5000), Method::Index);
        }
    }

    #[test]
    fn bounds_the_first_range_when_few_rows_are_expected() {
        assert_eq!(
            Method::from_plan("Seq Scan", 0.0, 50_000, 5000),
            Method::TableWalk {
                end_block: 50_000,
                first_pages: FIRST_RANGE_MAX_PAGES
            }
        );
        // An empty table: a walk of no pages.
        assert!(matches!(
            Method::from_plan("Seq Scan", 10.0, 0, 5000),
            Method::TableWalk { end_block: 0, .. }
        ));
    }
}
