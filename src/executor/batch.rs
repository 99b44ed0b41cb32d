//! The statements of a batch: the transaction's settings, collecting the ctids of matching rows,
//! deleting one batch (by ctid list or page range) with its SKIP LOCKED redo.

use super::{
    batch_cap, owner_statement, range_delete, statements, Batch, Deleted, Plan, COLLECT_LIMIT,
    OPTIMISTIC_LOCK_WAIT_MS,
};
use crate::errors::Error;
use crate::owner::{self, Limits};
use crate::rules::Rule;
use pgrx::array::RawArray;
use pgrx::pg_sys;
use pgrx::prelude::*;
use statements::BatchSql;
use std::ptr::NonNull;

/// The settings of a batch's transaction.
///
/// Batches commit without waiting for their WAL flush (one fsync per batch would dominate small
/// batches). A crash can lose only the last few batches' deletes, and those rows still match and go
/// in the next run; the run's `running` and final records commit synchronously.
///
/// The batches' full-page images are compressed (see pg_token_cleanup.wal_compression): less WAL
/// to write, replicate and archive, and shorter WAL flushes for concurrent commits. Recovery reads
/// compressed records whatever the server's own setting.
pub(super) fn batch_settings(wal_compression: Option<&str>) {
    owner::set_for_transaction("synchronous_commit", "off");
    if let Some(method) = wal_compression {
        owner::set_for_transaction("wal_compression", method);
    }
}

/// The method pg_token_cleanup.wal_compression asks for, if this build of PostgreSQL has it (lz4
/// and zstd are build options). The build's methods are read once per process.
#[cfg(not(feature = "pg14"))]
pub(super) fn supported_wal_compression() -> Option<&'static str> {
    static BUILT_IN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let method = crate::gucs::wal_compression().setting()?;
    let built_in = BUILT_IN.get_or_init(|| {
        Spi::get_one::<Vec<String>>(
            "SELECT enumvals FROM pg_catalog.pg_settings WHERE name = 'wal_compression'",
        )
        .ok()
        .flatten()
        .unwrap_or_default()
    });
    built_in.iter().any(|m| m == method).then_some(method)
}

/// PostgreSQL 14's wal_compression is a boolean that means pglz (the methods came in 15): any method
/// asked for turns it on.
#[cfg(feature = "pg14")]
pub(super) fn supported_wal_compression() -> Option<&'static str> {
    crate::gucs::wal_compression().setting().map(|_| "on")
}

/// One scan: the ctids of up to COLLECT_LIMIT rows matching the condition now, in physical order.
pub(super) fn collect(rule: &Rule, plan: &Plan) -> Result<Vec<pg_sys::ItemPointerData>, Error> {
    collect_up_to(plan, &rule.condition, COLLECT_LIMIT)
}

/// The ctids of up to `limit` rows matching `condition` now, in physical order.
pub(super) fn collect_up_to(
    plan: &Plan,
    condition: &str,
    limit: usize,
) -> Result<Vec<pg_sys::ItemPointerData>, Error> {
    // One array datum, copied out as raw bytes: a million rows through SPI tuples, or through
    // per-element conversion, costs several times the scan itself.
    let sql = format!(
        "SELECT array_agg(ctid) FROM (SELECT ctid FROM ONLY {} WHERE {} LIMIT {limit}) candidates",
        plan.table.qualified_name,
        crate::condition::embedded(condition)
    );
    let mut ctids = owner_statement(plan, plan.limits, || {
        Spi::connect(|client| {
            let table = client.select(sql.as_str(), Some(1), &[])?;
            let Some(datum) = table.first().get_datum_by_ordinal(1)? else {
                return Ok::<_, pgrx::spi::Error>(Vec::new());
            };
            // SAFETY: array_agg(ctid) is a one-dimensional tid[] without NULLs; it is detoasted
            // before its elements (6 bytes each, as ItemPointerData) are copied out.
            let ctids = unsafe {
                let array = pg_sys::pg_detoast_datum(datum.cast_mut_ptr::<pg_sys::varlena>());
                let mut raw =
                    RawArray::from_ptr(NonNull::new(array.cast()).expect("detoasted array"));
                raw.data::<pg_sys::ItemPointerData>().as_ref().to_vec()
            };
            Ok(ctids)
        })
    })??;
    ctids.sort_unstable_by_key(|t| (block_number(t), t.ip_posid));
    Ok(ctids)
}

pub(super) fn block_number(t: &pg_sys::ItemPointerData) -> u32 {
    (u32::from(t.ip_blkid.bi_hi) << 16) | u32::from(t.ip_blkid.bi_lo)
}

/// A tid as (block, offset), which orders as a walk reads the table.
pub(super) fn at(t: &pg_sys::ItemPointerData) -> batch_cap::At {
    (block_number(t), t.ip_posid)
}

/// The tid `(block,offset)`; `(block,0)` precedes every row of the page (a TID range bound).
pub(super) fn tid(block: u32, offset: u16) -> pg_sys::ItemPointerData {
    pg_sys::ItemPointerData {
        ip_blkid: pg_sys::BlockIdData {
            bi_hi: (block >> 16) as u16,
            bi_lo: (block & 0xffff) as u16,
        },
        ip_posid: offset,
    }
}

/// Deletes the batch's rows that still match the condition; returns how many.
///
/// Locking every row first (`FOR UPDATE SKIP LOCKED`) doubles the heap writes of a batch, so a batch
/// first tries a plain DELETE that gives up on the first row lock within [`OPTIMISTIC_LOCK_WAIT_MS`];
/// only a batch that meets a locked row is redone with SKIP LOCKED. Owners without UPDATE (which row
/// locks require) get the plain DELETE with the rule's lock timeout.
pub(super) fn delete_batch(plan: &Plan, batch: &Batch) -> Result<Deleted, Error> {
    let Some(skipping) = &plan.skip_locked_sql else {
        return run_delete(plan, plan.limits, &plan.delete_sql, batch);
    };
    let optimistic = Limits {
        lock_timeout_ms: OPTIMISTIC_LOCK_WAIT_MS,
        ..plan.limits
    };
    match run_delete(plan, optimistic, &plan.delete_sql, batch) {
        Err(e) if e.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => {
            run_delete(plan, plan.limits, skipping, batch).map(|d| Deleted { redone: true, ..d })
        }
        other => other,
    }
}

pub(super) fn run_delete(
    plan: &Plan,
    limits: Limits,
    sql: &BatchSql,
    batch: &Batch,
) -> Result<Deleted, Error> {
    owner_statement(plan, limits, || {
        // Fetch exactly the batch's rows by ctid (a TID or TID range scan). Left to itself the
        // planner may prefer an index on the condition's columns and walk every matching row of the
        // table for each batch, which makes a run quadratic in the rows it deletes (seen at 10M rows).
        // SAFETY: settings scoped to as_owner's GUC nest level.
        unsafe {
            for scan in [
                "enable_seqscan",
                "enable_indexscan",
                "enable_bitmapscan",
                "enable_indexonlyscan",
            ] {
                owner::set_local(scan, "off");
            }
        }
        let by_ctid = |ctids: Vec<pg_sys::ItemPointerData>| {
            Spi::connect_mut(|client| {
                let deleted =
                    client.update(sql.with("ctid = ANY($1)").as_str(), None, &[ctids.into()])?;
                Ok::<_, pgrx::spi::Error>(Deleted {
                    rows: deleted.len() as i64,
                    redone: false,
                    resume: None,
                })
            })
        };
        match batch {
            Batch::Ctids(chunk) => by_ctid(chunk.to_vec()),
            Batch::IndexEntries(entries) => {
                by_ctid(super::bitmap::visible_members(plan.table.oid, entries))
            }
            Batch::Range { from, to, limit } => {
                // The bounds are tids this module made: numbers, not user text.
                let rows = format!(
                    "ctid >= '({},{})'::tid AND ctid < '({},{})'::tid",
                    block_number(from),
                    from.ip_posid,
                    block_number(to),
                    to.ip_posid
                );
                if sql.capped() {
                    let cap = batch_cap::Armed::new(*limit as u64, at(from), at(to));
                    return Spi::connect_mut(|client| {
                        let deleted = client.update(sql.with(&rows).as_str(), None, &[])?;
                        Ok(Deleted {
                            rows: deleted.len() as i64,
                            redone: false,
                            resume: cap.first_refused(),
                        })
                    });
                }
                // SPI says SELECT results sent to a DestNone receiver (ours) are "utility".
                let expected = if plan.archive.is_some() {
                    pg_sys::SPI_OK_UTILITY
                } else {
                    pg_sys::SPI_OK_DELETE_RETURNING
                };
                Spi::connect_mut(|_| {
                    let (rows, last) =
                        range_delete::execute(&sql.with(&rows), *limit as u64, expected as i32);
                    Ok(Deleted {
                        rows,
                        redone: false,
                        // Stopped at its limit: the rest of the range from the row after the last.
                        resume: last
                            .filter(|_| rows >= *limit as i64)
                            .map(|(block, offset)| (block, offset + 1)),
                    })
                })
            }
        }
    })?
    .map_err(Error::from)
}
