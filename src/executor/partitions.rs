//! Partitioned tables: a run works through the leaf partitions one after another (batches per
//! partition, as for a plain table), and with `drop_partitions` = `detach` or `drop` removes a
//! leaf partition whole instead, when all its rows match.
//!
//! No ACCESS EXCLUSIVE lock is held while rows are read (pg_partman's users report 20-minute locks
//! from counting under it). Under a SHARE lock (readers go on; writers to that partition wait), the
//! partition's bounds prove that every row matches when they can (PostgreSQL's
//! `predicate_implied_by`, as constraint exclusion uses it: the partition constraint implies the
//! condition, its stable functions such as `now()` evaluated once), else its rows and its matching
//! rows are counted; the rows it holds are counted either way, for the run's record. Only then does
//! DROP or DETACH take ACCESS EXCLUSIVE, within the rule's lock_timeout, for catalog work alone. No
//! row that does not match can be lost: nobody can write to the partition meanwhile. The role the
//! rule runs as must own the partition (and, to detach it, the partitioned table); otherwise, or
//! when a lock is not granted in time, or the rule archives its rows, the run deletes row by row.

use super::{owner_statement, Plan};
use crate::errors::Error;
use crate::history::Outcome;
use crate::rules::{DropPartitions, Rule};
use crate::target::{self, ResolvedTable};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;

pub(super) fn is_partitioned(table: pg_sys::Oid) -> bool {
    // SAFETY: syscache lookup.
    unsafe { pg_sys::get_rel_relkind(table) as u8 == b'p' }
}

/// The leaf partitions of `parent` that are plain tables, in name order.
pub(super) fn leaves(parent: &ResolvedTable) -> Result<Vec<ResolvedTable>, Error> {
    let oids: Vec<pg_sys::Oid> = Spi::connect(|client| {
        client
            .select(
                "SELECT relid FROM pg_catalog.pg_partition_tree($1) WHERE isleaf ORDER BY relid::regclass::text",
                None,
                &[parent.oid.into()],
            )?
            .map(|r| r.get::<pg_sys::Oid>(1).map(|o| o.unwrap_or(pg_sys::InvalidOid)))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(oids
        .into_iter()
        .filter(|oid| target::unsupported_kind(*oid).is_none() && !is_partitioned(*oid))
        .map(|oid| ResolvedTable {
            oid,
            qualified_name: target::qualified_name(oid),
        })
        .collect())
}

/// Detaches or drops the leaf partition of `plan` when the rule asks for it and every row of it
/// matches; returns the rows it held and what was done. `None`: delete row by row.
/// `Err` ends the run: the removal failed, or the rule or a relation is no longer the one the run
/// was given (checked under the leaf's lock, before anything of the owner's runs).
pub(super) fn remove_if_all_match(
    rule: &Rule,
    plan: &Plan,
    binding: &super::binding::Binding,
) -> Result<Option<(i64, &'static str)>, Outcome> {
    let (verb, action) = match rule.drop_partitions {
        DropPartitions::Drop => ("DROP TABLE", "dropped"),
        DropPartitions::Detach => ("DETACH", "detached"),
        DropPartitions::Never => return Ok(None),
    };
    if rule.archive_table.is_some() {
        return Ok(None);
    }
    let leaf = &plan.table;
    let parent = BackgroundWorker::transaction(|| {
        let parent = parent_of(leaf.oid)?;
        let owns = crate::owner::owns_relation(leaf.oid, plan.owner)
            && (action != "detached" || crate::owner::owns_relation(parent.oid, plan.owner));
        owns.then_some(parent)
    });
    let Some(parent) = parent else {
        return Ok(None);
    };
    let condition = crate::condition::embedded(&rule.condition);
    let statement = if verb == "DROP TABLE" {
        format!("DROP TABLE {}", leaf.qualified_name)
    } else {
        format!(
            "ALTER TABLE {} DETACH PARTITION {}",
            parent.qualified_name, leaf.qualified_name
        )
    };
    let removed = BackgroundWorker::transaction(|| {
        super::still_bound(plan, binding)?;
        Ok(owner_statement(plan, plan.limits, || {
            Spi::connect_mut(|client| {
                client.update(
                    &format!("LOCK TABLE {} IN SHARE MODE", leaf.qualified_name),
                    None,
                    &[],
                )?;
                let proven = bounds_imply(leaf.oid, &leaf.qualified_name, &condition);
                let count = |filter: &str| {
                    client
                        .select(
                            &format!("SELECT count(*) FROM ONLY {} {filter}", leaf.qualified_name),
                            None,
                            &[],
                        )?
                        .first()
                        .get_one::<i64>()
                        .map(|n| n.unwrap_or(0))
                };
                let total = count("")?;
                if total == 0 || (!proven && count(&format!("WHERE {condition}"))? != total) {
                    return Ok::<_, pgrx::spi::Error>(None);
                }
                if proven {
                    log!(
                        "pg_token_cleanup: rule \"{}\": every row of partition {} matches by its bounds",
                        rule.name,
                        leaf.qualified_name
                    );
                }
                client.update(&statement, None, &[])?;
                Ok(Some(total))
            })
        }))
    });
    match removed? {
        Ok(Ok(Some(rows))) => Ok(Some((rows, action))),
        Ok(Ok(None)) => Ok(None),
        // The lock was not granted within lock_timeout: delete row by row instead.
        Err(e) if e.sqlstate == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => Ok(None),
        Err(e) => Err(Outcome::Failed(
            e.context(format!("removing partition {}", leaf.qualified_name)),
        )),
        Ok(Err(e)) => Err(Outcome::Failed(Error::from(e))),
    }
}

unsafe extern "C-unwind" {
    /// partcache.c: the partition constraint of `relid` (its ancestors' included), NULL for a
    /// relation that is no partition. Not in pgrx's bindings.
    fn get_partition_qual_relid(relid: pg_sys::Oid) -> *mut pg_sys::Expr;
}

/// Whether the bounds of partition `leaf` prove that every row of it matches `condition`:
/// the partition constraint implies the condition, with the condition's stable functions
/// (`now()`) evaluated once, now. No row is read. Runs the owner's code (stable functions the
/// condition calls): call it as the rule's owner. `false` when nothing can be proved.
fn bounds_imply(leaf: pg_sys::Oid, leaf_name: &str, condition: &str) -> bool {
    let Ok(sql) = std::ffi::CString::new(format!("SELECT FROM ONLY {leaf_name} WHERE {condition}"))
    else {
        return false;
    };
    // SAFETY: in a transaction with SPI connected (the caller's Spi::connect_mut); every pointer
    // is checked before use, and the planner functions get the trees they expect: the analyzed
    // WHERE clause of a one-table query (Vars of range table entry 1) and the partition
    // constraint (also Vars of entry 1, the leaf's attribute numbers).
    unsafe {
        let plan = pg_sys::SPI_prepare(sql.as_ptr(), 0, std::ptr::null_mut());
        if plan.is_null() {
            return false;
        }
        let sources = pg_sys::SPI_plan_get_plan_sources(plan);
        let proven = (|| {
            let Some(source) = only_element::<pg_sys::CachedPlanSource>(sources) else {
                return false;
            };
            let Some(query) = only_element::<pg_sys::Query>((*source).query_list) else {
                return false;
            };
            let quals = (*(*query).jointree).quals;
            let bounds = get_partition_qual_relid(leaf);
            if quals.is_null() || bounds.is_null() {
                return false;
            }
            // estimate_expression_value reads root->glob->boundParams: an empty planner state.
            let root = pg_sys::palloc0(std::mem::size_of::<pg_sys::PlannerInfo>())
                .cast::<pg_sys::PlannerInfo>();
            (*root).glob = pg_sys::palloc0(std::mem::size_of::<pg_sys::PlannerGlobal>())
                .cast::<pg_sys::PlannerGlobal>();
            let folded = pg_sys::estimate_expression_value(root, quals);
            pg_sys::predicate_implied_by(
                pg_sys::make_ands_implicit(folded.cast()),
                pg_sys::make_ands_implicit(bounds),
                false,
            )
        })();
        pg_sys::SPI_freeplan(plan);
        proven
    }
}

/// The pointer in a List of one pointer (list_nth is a static inline function, and pgrx's list
/// wrapper needs its C shim).
///
/// # Safety
/// `list` is NULL or a valid List of pointers to `T`.
unsafe fn only_element<T>(list: *mut pg_sys::List) -> Option<*mut T> {
    // SAFETY: as the caller promises; a List of length 1 has one initialised cell.
    unsafe {
        (!list.is_null() && (*list).length == 1)
            .then(|| (*(*list).elements).ptr_value.cast::<T>())
            .filter(|p| !p.is_null())
    }
}

fn parent_of(leaf: pg_sys::Oid) -> Option<ResolvedTable> {
    let parent = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT inhparent FROM pg_catalog.pg_inherits WHERE inhrelid = $1",
        &[leaf.into()],
    )
    .ok()
    .flatten()?;
    Some(ResolvedTable {
        oid: parent,
        qualified_name: target::qualified_name(parent),
    })
}
