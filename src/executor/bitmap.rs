//! Candidate ctids straight from the index, for a run that deletes through an index.
//!
//! `SELECT ctid … WHERE <condition>` through a bitmap scan reads every heap page holding a
//! candidate to check it, and the batches then read those pages again to delete: where the matching
//! rows are spread over the table (one per page), that is two passes over the heap against the
//! full-scan DELETE's one (scenario B: 1.44× it at 10M rows, 40% of the run spent collecting). Here
//! the planner's bitmap plan for that query is started in the executor and only its index side runs
//! (`MultiExecProcNode` of the bitmap heap scan's child): the TID bitmap it builds holds every
//! candidate without a heap page read. The candidates are a superset of the matching rows (entries
//! of dead rows, the parts of the condition the index cannot check, whole pages where the bitmap
//! went lossy), which is sound because every batch's DELETE re-checks the condition against the
//! row as it is now.
//!
//! When the planner's plan is not a bitmap heap scan at the top, or the bitmap holds more than
//! [`COLLECT_LIMIT`](super::COLLECT_LIMIT) candidates, the caller collects through SQL instead.

use super::batch::tid;
use super::{owner_statement, Plan};
use crate::errors::Error;
use crate::owner;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CString;

/// Every offset a heap page can hold (MaxHeapTuplesPerPage for 8 kB pages): a lossy page of the
/// bitmap stands for all of them (a batch skips the offsets the page does not have).
const TUPLES_PER_PAGE: u16 = 291;
/// `work_mem` for the bitmap, which goes lossy (whole pages) beyond it.
const BITMAP_WORK_MEM: &str = "64MB";

/// The candidates for `condition` on the plan's table from its index alone, in physical order, at
/// most `limit` of them; `Ok(None)` when the planner's plan is not a bitmap scan or there are more.
pub(super) fn collect_from_index(
    plan: &Plan,
    condition: &str,
    limit: usize,
) -> Result<Option<Vec<pg_sys::ItemPointerData>>, Error> {
    let sql = format!(
        "SELECT ctid FROM ONLY {} WHERE {}",
        plan.table.qualified_name,
        crate::condition::embedded(condition)
    );
    let sql = CString::new(sql).expect("no NUL in a statement built from quoted identifiers");
    owner_statement(plan, plan.limits, || {
        // SAFETY: scoped to as_role's GUC nest level. An index scan plan becomes a bitmap one;
        // parallel workers would put a Gather on top; the bitmap stays exact (a page per entry,
        // about 64 bytes each) for a million candidates on as many pages.
        unsafe {
            owner::set_local("max_parallel_workers_per_gather", "0");
            owner::set_local("enable_indexscan", "off");
            owner::set_local("work_mem", BITMAP_WORK_MEM);
        }
        let found = Spi::connect(|_| {
            // SAFETY: inside an SPI connection and a transaction, as the rule's owner.
            unsafe { candidates(&sql, limit) }
        });
        if let Some(found) = &found {
            debug1!(
                "pg_token_cleanup: {} candidates from the index of {} alone",
                found.len(),
                plan.table.qualified_name
            );
        }
        found
    })
}

/// Plans `sql` through SPI and, if the plan is a bitmap heap scan, runs its index side.
///
/// # Safety
/// Inside an SPI connection and a transaction.
unsafe fn candidates(sql: &CString, limit: usize) -> Option<Vec<pg_sys::ItemPointerData>> {
    // SAFETY: SPI calls inside the caller's connection; errors are raised, not returned. The plan
    // is not saved, so its cached plan has no resource owner.
    unsafe {
        let prepared = pg_sys::SPI_prepare(sql.as_ptr(), 0, std::ptr::null_mut());
        if prepared.is_null() {
            return None;
        }
        let cached = pg_sys::SPI_plan_get_cached_plan(prepared);
        if cached.is_null() {
            pg_sys::SPI_freeplan(prepared);
            return None;
        }
        let statements = (*cached).stmt_list;
        let found = if !statements.is_null() && (*statements).length == 1 {
            let statement = (*(*statements).elements)
                .ptr_value
                .cast::<pg_sys::PlannedStmt>();
            from_bitmap_scan(statement, sql, limit)
        } else {
            None
        };
        pg_sys::ReleaseCachedPlan(cached, std::ptr::null_mut());
        pg_sys::SPI_freeplan(prepared);
        found
    }
}

/// Starts `statement` in the executor and builds the bitmap of its bitmap heap scan, without
/// fetching a heap tuple.
///
/// # Safety
/// `statement` is a planned SELECT of `sql`, inside a transaction.
unsafe fn from_bitmap_scan(
    statement: *mut pg_sys::PlannedStmt,
    sql: &CString,
    limit: usize,
) -> Option<Vec<pg_sys::ItemPointerData>> {
    // SAFETY: as the caller promises; the executor's state, the bitmap and the snapshot pushed here
    // are released below, or by the transaction's abort if the index scan raises an error.
    unsafe {
        let top = (*statement).planTree;
        if top.is_null() || (*top).type_ != pg_sys::NodeTag::T_BitmapHeapScan {
            return None;
        }
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let receiver = pg_sys::CreateDestReceiver(pg_sys::CommandDest::DestNone);
        let query = pg_sys::CreateQueryDesc(
            statement,
            sql.as_ptr(),
            pg_sys::GetActiveSnapshot(),
            std::ptr::null_mut(),
            receiver,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
        pg_sys::ExecutorStart(query, 0);
        let scan = (*query).planstate;
        let index_side = (*scan).lefttree;
        let found = if index_side.is_null() {
            None
        } else {
            let bitmap = pg_sys::MultiExecProcNode(index_side).cast::<pg_sys::TIDBitmap>();
            read(bitmap, limit)
        };
        pg_sys::ExecutorFinish(query);
        pg_sys::ExecutorEnd(query);
        pg_sys::FreeQueryDesc(query);
        pg_sys::PopActiveSnapshot();
        found
    }
}

/// The TIDs of `bitmap` in block order (a lossy page as all its offsets); `None` past `limit`.
///
/// # Safety
/// `bitmap` is a TID bitmap built in this transaction (or null: no candidates).
#[cfg(not(feature = "pg18"))]
unsafe fn read(
    bitmap: *mut pg_sys::TIDBitmap,
    limit: usize,
) -> Option<Vec<pg_sys::ItemPointerData>> {
    let mut tids = Vec::new();
    if bitmap.is_null() {
        return Some(tids);
    }
    // SAFETY: iterates the bitmap as a bitmap heap scan does; each result is valid until the next.
    unsafe {
        let iterator = pg_sys::tbm_begin_iterate(bitmap);
        loop {
            let page = pg_sys::tbm_iterate(iterator);
            if page.is_null() {
                break;
            }
            let block = (*page).blockno;
            if (*page).ntuples < 0 {
                tids.extend((1..=TUPLES_PER_PAGE).map(|offset| tid(block, offset)));
            } else {
                let offsets = (*page).offsets.as_slice((*page).ntuples as usize);
                tids.extend(offsets.iter().map(|&offset| tid(block, offset)));
            }
            if tids.len() > limit {
                pg_sys::tbm_end_iterate(iterator);
                return None;
            }
        }
        pg_sys::tbm_end_iterate(iterator);
    }
    Some(tids)
}

/// PostgreSQL 18's iteration: the offsets of an exact page are extracted on request.
///
/// # Safety
/// `bitmap` is a TID bitmap built in this transaction (or null: no candidates).
#[cfg(feature = "pg18")]
unsafe fn read(
    bitmap: *mut pg_sys::TIDBitmap,
    limit: usize,
) -> Option<Vec<pg_sys::ItemPointerData>> {
    let mut tids = Vec::new();
    if bitmap.is_null() {
        return Some(tids);
    }
    // SAFETY: iterates the bitmap as a bitmap heap scan does, into a result of our own.
    unsafe {
        let iterator = pg_sys::tbm_begin_private_iterate(bitmap);
        let mut page = pg_sys::TBMIterateResult::default();
        let mut offsets = [0 as pg_sys::OffsetNumber; TUPLES_PER_PAGE as usize];
        while pg_sys::tbm_private_iterate(iterator, &mut page) {
            let block = page.blockno;
            if page.lossy {
                tids.extend((1..=TUPLES_PER_PAGE).map(|offset| tid(block, offset)));
            } else {
                let n = pg_sys::tbm_extract_page_tuple(
                    &mut page,
                    offsets.as_mut_ptr(),
                    u32::from(TUPLES_PER_PAGE),
                );
                let n = usize::try_from(n).unwrap_or(0).min(offsets.len());
                tids.extend(offsets[..n].iter().map(|&offset| tid(block, offset)));
            }
            if tids.len() > limit {
                pg_sys::tbm_end_private_iterate(iterator);
                return None;
            }
        }
        pg_sys::tbm_end_private_iterate(iterator);
    }
    Some(tids)
}

/// The visible row of each HOT chain whose root is in `roots`, in the current transaction: an index
/// entry points at the root of its chain, and an update that kept the row on its page (HOT) put the
/// row's current version at another offset, which a DELETE by the root's ctid would not reach.
/// Entries whose chain holds no visible row (dead rows, offsets a lossy page lacks, pages past the
/// table's end) are left out. Reads each page once, under a share lock, as an index scan does.
pub(super) fn visible_members(
    table: pg_sys::Oid,
    roots: &[pg_sys::ItemPointerData],
) -> Vec<pg_sys::ItemPointerData> {
    let mut visible = Vec::with_capacity(roots.len());
    // SAFETY: the table is locked by the batch's transaction (binding::lock_and_check); each page
    // is pinned and share-locked while its chains are followed, as heapam's index fetch does; the
    // snapshot is registered for the loop.
    unsafe {
        let relation = pg_sys::table_open(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let blocks =
            pg_sys::RelationGetNumberOfBlocksInFork(relation, pg_sys::ForkNumber::MAIN_FORKNUM);
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot());
        let mut page: Option<(u32, pg_sys::Buffer)> = None;
        for root in roots {
            let block = super::batch::block_number(root);
            if block >= blocks {
                continue;
            }
            let buffer = match page {
                Some((held, buffer)) if held == block => buffer,
                _ => {
                    if let Some((_, buffer)) = page {
                        pg_sys::UnlockReleaseBuffer(buffer);
                    }
                    let buffer = pg_sys::ReadBuffer(relation, block);
                    pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
                    page = Some((block, buffer));
                    buffer
                }
            };
            let mut member = *root;
            let mut tuple = pg_sys::HeapTupleData::default();
            let mut all_dead = false;
            if pg_sys::heap_hot_search_buffer(
                &mut member,
                relation,
                buffer,
                snapshot,
                &mut tuple,
                &mut all_dead,
                true,
            ) {
                visible.push(member);
            }
        }
        if let Some((_, buffer)) = page {
            pg_sys::UnlockReleaseBuffer(buffer);
        }
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::table_close(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    }
    visible
}
