//! One run of one rule, inside a background worker: batches of deletes, each its own transaction, as
//! the rule's owner, with identifiers quoted, timeouts armed, and a stop check between batches.
//!
//! Why not the naive loop `DELETE … WHERE ctid = ANY(ARRAY(SELECT ctid … LIMIT n))`: every batch
//! rescans the table from its start and walks over the rows earlier batches deleted, so a run costs
//! O(rows deleted × table size). Here a run first *collects* the ctids of matching rows with one scan
//! (the planner's choice: an index on the condition's columns when there is one) into one array,
//! sorts them into physical order, then deletes them batch by batch by ctid (a TID scan touching only
//! those rows). Each batch re-checks the condition, so a row that changed since the scan, or a slot
//! reused by a new row, is never deleted unless it matches now. Work is one scan plus O(rows
//! deleted); a backlog larger than [`COLLECT_LIMIT`] takes one more scan per limit's worth of rows.
//!
//! Rows locked by other sessions are skipped (`FOR UPDATE SKIP LOCKED`, tried only when a batch meets
//! a lock, see [`delete_batch`]) when the owner holds UPDATE on the table (PostgreSQL requires it for
//! row locks); otherwise a batch waits for them, bounded by the rule's lock_timeout.

use crate::catalog::Rule;
use crate::history::{self, Outcome};
use crate::security::{self, CaughtSqlError, Limits};
use crate::target::{self, ResolvedTable};
use pgrx::array::RawArray;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ptr::NonNull;
use std::time::Instant;

/// Most ctids collected by one scan (6 bytes each in PostgreSQL, 8 here: 8 MB).
pub const COLLECT_LIMIT: usize = 1_000_000;
/// How long a batch's plain DELETE waits for a row lock before the batch is redone with SKIP LOCKED.
const OPTIMISTIC_LOCK_WAIT_MS: i32 = 1;
/// SQLSTATE of a lock timeout.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// First key of the advisory locks that keep a rule from running twice at once ("tknc").
const RULE_LOCK_CLASS: i32 = 0x746b_6e63;

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    pub rows_deleted: i64,
    pub batches: i32,
    pub elapsed_ms: u128,
    /// Of which spent finding candidate rows (the scans), as opposed to deleting them.
    pub scan_ms: u128,
    /// The longest batch, from its transaction's start to its commit: how long it held row locks.
    pub longest_batch_ms: u128,
}

impl RunReport {
    pub fn counts(&self) -> history::Counts {
        history::Counts {
            rows_deleted: self.rows_deleted,
            batches: self.batches,
            longest_batch_ms: self.longest_batch_ms.min(i32::MAX as u128) as i32,
        }
    }
}

/// What the executor needs to know about the table at the start of a run.
struct Plan {
    table: ResolvedTable,
    owner: pg_sys::Oid,
    limits: Limits,
    batch_size: usize,
    /// A batch's DELETE by ctid, re-checking the condition (built once per run).
    delete_sql: String,
    /// The same with `FOR UPDATE SKIP LOCKED`; `None` when the owner may not lock rows.
    skip_locked_sql: Option<String>,
}

/// Takes the rule's run lock for this session; false when another session holds it.
pub fn try_lock_rule(rule_id: i64) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_try_advisory_lock($1, $2)",
        &[RULE_LOCK_CLASS.into(), rule_key(rule_id).into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

pub fn unlock_rule(rule_id: i64) {
    let _ = Spi::get_one_with_args::<bool>(
        "SELECT pg_advisory_unlock($1, $2)",
        &[RULE_LOCK_CLASS.into(), rule_key(rule_id).into()],
    );
}

/// Whether another session holds a lock on the rule's table that a DELETE would wait for. The
/// scheduler asks before starting a run, so a rule whose table is locked waits (up to its
/// lock_timeout) without holding up the other rules. A missing table is "not locked": the run then
/// fails with a clear error.
pub fn table_locked_by_others(rule: &Rule) -> bool {
    let Ok(Some(table)) = target::lookup_table(&rule.table_name) else {
        return false;
    };
    // SAFETY: a conditional lock in the current (short) transaction, released at its end.
    !unsafe {
        pg_sys::ConditionalLockRelationOid(table.oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE)
    }
}

fn rule_key(rule_id: i64) -> i32 {
    (rule_id % i64::from(i32::MAX)) as i32
}

/// Runs `rule` as run `run_id` (already committed as `running`), recording progress after every
/// batch and the outcome at the end. `stop_requested` is polled between batches. Must be called
/// outside a transaction; opens its own.
pub fn execute(rule: &Rule, run_id: i64, stop_requested: &dyn Fn() -> bool) -> RunReport {
    let started = Instant::now();
    let mut rows_deleted: i64 = 0;
    let mut batches: i32 = 0;
    let mut scan_ms: u128 = 0;
    let mut longest_batch_ms: u128 = 0;
    let outcome = (|| -> Outcome {
        let plan = match BackgroundWorker::transaction(|| prepare(rule)) {
            Ok(plan) => plan,
            Err(why) => return Outcome::Failed(why),
        };
        loop {
            if stop_requested() {
                return interrupted();
            }
            let scan_started = Instant::now();
            let collected = BackgroundWorker::transaction(|| collect(rule, &plan));
            scan_ms += scan_started.elapsed().as_millis();
            let candidates = match collected {
                Ok(c) => c,
                Err(_) if stop_requested() => return interrupted(),
                Err(e) => return Outcome::Failed(format!("finding rows to delete: {e}")),
            };
            let full_scan = candidates.len() >= COLLECT_LIMIT;
            let mut deleted_this_round = 0;
            for chunk in candidates.chunks(plan.batch_size) {
                if stop_requested() {
                    return interrupted();
                }
                let batch_started = Instant::now();
                let batch = BackgroundWorker::transaction(|| {
                    relax_commit();
                    let n = delete_batch(&plan, chunk);
                    if let Ok(n) = n {
                        history::progress(run_id, rows_deleted + n, batches + 1);
                    }
                    n
                });
                match batch {
                    Ok(n) => {
                        rows_deleted += n;
                        deleted_this_round += n;
                        batches += 1;
                        longest_batch_ms =
                            longest_batch_ms.max(batch_started.elapsed().as_millis());
                    }
                    Err(_) if stop_requested() => return interrupted(),
                    Err(e) => {
                        return Outcome::Failed(format!("deleting batch {}: {e}", batches + 1))
                    }
                }
            }
            // A short scan saw every matching row; a full one may have left some for the next scan,
            // unless nothing could be deleted (all locked), which would loop for ever.
            if !full_scan || deleted_this_round == 0 {
                return Outcome::Succeeded;
            }
        }
    })();
    let report = RunReport {
        outcome,
        rows_deleted,
        batches,
        elapsed_ms: started.elapsed().as_millis(),
        scan_ms,
        longest_batch_ms,
    };
    BackgroundWorker::transaction(|| history::finish(run_id, &report.outcome, &report.counts()));
    report
}

/// Batches commit without waiting for their WAL flush (one fsync per batch would dominate small
/// batches). A crash can lose only the last few batches' deletes, and those rows still match and go
/// in the next run; the run's `running` and final records commit synchronously.
fn relax_commit() {
    Spi::run("SET LOCAL synchronous_commit = off").expect("SET LOCAL synchronous_commit");
}

fn interrupted() -> Outcome {
    Outcome::Interrupted(
        "stopped by SIGTERM (server shutdown, DROP DATABASE or pg_terminate_backend); \
         committed batches stay deleted, the rest go in the next run"
            .into(),
    )
}

/// Resolves the owner and the table as they are *now* (a dropped or renamed table, a dropped owner,
/// a revoked privilege fail this run only).
fn prepare(rule: &Rule) -> Result<Plan, String> {
    let owner = security::role_oid(&rule.owner).ok_or_else(|| {
        format!(
            "owner role \"{}\" of rule \"{}\" does not exist",
            rule.owner, rule.name
        )
    })?;
    let table = match target::lookup_table(&rule.table_name) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(format!(
                "table {} of rule \"{}\" does not exist (dropped or renamed?)",
                rule.table_name, rule.name
            ))
        }
        Err(why) => return Err(format!("invalid table name {}: {why}", rule.table_name)),
    };
    if let Some((what, _)) = target::unsupported_kind(table.oid) {
        return Err(format!("table {} {what}", table.qualified_name));
    }
    // SAFETY: catalog privilege check.
    let skip_locked = unsafe {
        pg_sys::pg_class_aclcheck(table.oid, owner, pg_sys::ACL_UPDATE as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    };
    let name = &table.qualified_name;
    let condition = target::embedded_condition(&rule.condition);
    let delete_sql = format!("DELETE FROM ONLY {name} WHERE ctid = ANY($1) AND {condition}");
    let skip_locked_sql = skip_locked.then(|| {
        format!(
            "DELETE FROM ONLY {name} WHERE ctid = ANY(ARRAY(SELECT ctid FROM ONLY {name} \
               WHERE ctid = ANY($1) AND {condition} FOR UPDATE SKIP LOCKED))"
        )
    });
    Ok(Plan {
        owner,
        limits: rule.limits(),
        batch_size: rule.effective_batch_size().max(1) as usize,
        delete_sql,
        skip_locked_sql,
        table,
    })
}

fn owner_statement<R>(
    plan: &Plan,
    limits: Limits,
    f: impl FnOnce() -> R,
) -> Result<R, CaughtSqlError> {
    security::in_subtransaction(|| {
        security::as_owner(plan.owner, limits, || {
            security::timed(limits, || crate::worker::signals::cancellable(f))
        })
    })
}

/// One scan: the ctids of up to COLLECT_LIMIT rows matching the condition now, in physical order.
fn collect(rule: &Rule, plan: &Plan) -> Result<Vec<pg_sys::ItemPointerData>, String> {
    // One array datum, copied out as raw bytes: a million rows through SPI tuples, or through
    // per-element conversion, costs several times the scan itself.
    let sql = format!(
        "SELECT array_agg(ctid) FROM (SELECT ctid FROM ONLY {} WHERE {} LIMIT {COLLECT_LIMIT}) candidates",
        plan.table.qualified_name,
        target::embedded_condition(&rule.condition)
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
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    ctids.sort_unstable_by_key(|t| (block_number(t), t.ip_posid));
    Ok(ctids)
}

fn block_number(t: &pg_sys::ItemPointerData) -> u32 {
    (u32::from(t.ip_blkid.bi_hi) << 16) | u32::from(t.ip_blkid.bi_lo)
}

/// Deletes the rows at `chunk` that still match the condition; returns how many.
///
/// Locking every row first (`FOR UPDATE SKIP LOCKED`) doubles the heap writes of a batch, so a batch
/// first tries a plain DELETE that gives up on the first row lock within [`OPTIMISTIC_LOCK_WAIT_MS`];
/// only a batch that meets a locked row is redone with SKIP LOCKED. Owners without UPDATE (which row
/// locks require) get the plain DELETE with the rule's lock timeout.
fn delete_batch(plan: &Plan, chunk: &[pg_sys::ItemPointerData]) -> Result<i64, String> {
    let Some(skipping) = &plan.skip_locked_sql else {
        return run_delete(plan, plan.limits, &plan.delete_sql, chunk).map_err(|e| e.to_string());
    };
    let optimistic = Limits {
        lock_timeout_ms: OPTIMISTIC_LOCK_WAIT_MS,
        ..plan.limits
    };
    match run_delete(plan, optimistic, &plan.delete_sql, chunk) {
        Err(e) if e.sqlstate == LOCK_NOT_AVAILABLE => {
            run_delete(plan, plan.limits, skipping, chunk).map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

fn run_delete(
    plan: &Plan,
    limits: Limits,
    sql: &str,
    chunk: &[pg_sys::ItemPointerData],
) -> Result<i64, CaughtSqlError> {
    let ctids: Vec<pg_sys::ItemPointerData> = chunk.to_vec();
    owner_statement(plan, limits, || {
        // Fetch exactly the batch's rows by ctid. Left to itself the planner may prefer an index on
        // the condition's columns and walk every matching row of the table for each batch, which
        // makes a run quadratic in the rows it deletes (seen at 10M rows).
        // SAFETY: settings scoped to as_owner's GUC nest level.
        unsafe {
            for scan in [
                "enable_seqscan",
                "enable_indexscan",
                "enable_bitmapscan",
                "enable_indexonlyscan",
            ] {
                security::set_local(scan, "off");
            }
        }
        Spi::connect_mut(|client| {
            client
                .update(sql, None, &[ctids.into()])
                .map(|t| t.len() as i64)
        })
    })?
    .map_err(|e| CaughtSqlError {
        sqlstate: "XX000".into(),
        message: e.to_string(),
    })
}
