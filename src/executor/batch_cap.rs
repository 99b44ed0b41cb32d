//! The cap on a table walk's batch: `token_cleanup.within_batch(ctid)`, the last condition of a
//! batch's DELETE, lets the first `batch_size` matching rows through and refuses every one after,
//! remembering where it first refused one, which is where the next batch resumes.
//!
//! Why not `DELETE … RETURNING ctid`, stopped by SPI after `batch_size` rows: RETURNING makes the
//! executor fetch every deleted row again to project it, and that cost a third of a run (docs/oncpu.md).
//! A function call per matching row costs a small fraction of that. The rows after the cap are still
//! read to the end of the page range (and read again by the next batch); the batch sizer keeps that
//! short by sizing ranges to about `batch_size` matching rows.
//!
//! Why it is sound whatever calls the function: a row is deleted only if the function let it through
//! in this statement, the function lets through at most `batch_size` calls while armed, and once it
//! refuses it refuses every later call. The range scan reads rows in ctid order, so every matching
//! row before the first refused ctid was let through (deleted, unless it changed meanwhile), and
//! resuming there skips no row. A re-check of a row updated by another session (EvalPlanQual) calls
//! it again with the new version's ctid; that only spends the budget sooner, and a refusal outside the
//! range is ignored. The function is declared COST 1000000 so that the planner evaluates it after the
//! rule's condition (quals run in order of cost): counting rows that do not match would only make
//! batches smaller.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// A ctid as (block, offset), ordered as the table is read.
pub type At = (u32, u16);

#[derive(Debug, Clone, Copy)]
struct Cap {
    limit: u64,
    passed: u64,
    /// The batch's range `[from, to)`: refusals elsewhere (re-checks of moved rows) do not count.
    from: At,
    to: At,
    first_refused: Option<At>,
}

thread_local! {
    /// The armed cap of the batch being deleted in this backend (one statement at a time).
    static CAP: Cell<Option<Cap>> = const { Cell::new(None) };
}

/// Lets the first rows of the armed batch through and refuses the rest; outside a batch of ours it
/// lets every row through (so a query that calls it elsewhere is not changed by it).
#[pg_extern(volatile, strict, parallel_unsafe, cost = 1000000)]
fn within_batch(row: pg_sys::ItemPointerData) -> bool {
    CAP.with(|cell| {
        let Some(mut cap) = cell.get() else {
            return true;
        };
        if cap.passed < cap.limit {
            cap.passed += 1;
            cell.set(Some(cap));
            return true;
        }
        let at = super::at(&row);
        if at >= cap.from && at < cap.to && cap.first_refused.is_none_or(|first| at < first) {
            cap.first_refused = Some(at);
            cell.set(Some(cap));
        }
        false
    })
}

/// The cap armed for one statement; disarmed when dropped (also when the statement fails).
pub struct Armed(());

impl Armed {
    /// Arms the cap: `limit` rows of the range `[from, to)`.
    pub fn new(limit: u64, from: At, to: At) -> Self {
        CAP.with(|cell| {
            cell.set(Some(Cap {
                limit,
                passed: 0,
                from,
                to,
                first_refused: None,
            }))
        });
        Armed(())
    }

    /// The first row of the range the cap refused, if it refused one: where the next batch resumes.
    pub fn first_refused(&self) -> Option<At> {
        CAP.with(|cell| cell.get().and_then(|cap| cap.first_refused))
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        CAP.with(|cell| cell.set(None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(block: u32, offset: u16) -> pg_sys::ItemPointerData {
        super::super::tid(block, offset)
    }

    #[test]
    fn lets_through_the_limit_then_refuses_and_remembers_the_first_refusal_in_range() {
        let armed = Armed::new(2, (1, 0), (5, 0));
        assert!(within_batch(tid(1, 3)));
        assert!(within_batch(tid(2, 1)));
        // A re-check of a row that moved out of the range: refused, not where to resume.
        assert!(!within_batch(tid(9, 1)));
        assert_eq!(armed.first_refused(), None);
        assert!(!within_batch(tid(2, 7)));
        assert!(!within_batch(tid(3, 1)));
        assert_eq!(armed.first_refused(), Some((2, 7)));
        // A re-check of a row that moved back within the range, before the first refusal.
        assert!(!within_batch(tid(1, 9)));
        assert_eq!(armed.first_refused(), Some((1, 9)));
        drop(armed);
        assert!(within_batch(tid(3, 2)), "disarmed: every row passes");
    }
}
