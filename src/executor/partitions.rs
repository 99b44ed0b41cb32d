//! Partitioned tables: a run works through the leaf partitions one after another (batches per
//! partition, as for a plain table), and with `drop_partitions` = `detach` or `drop` removes a
//! leaf partition whole instead, when all its rows match. That is decided under an ACCESS
//! EXCLUSIVE lock on the partition, taken within the rule's lock_timeout, by counting all its rows
//! and its matching rows in the same transaction: no row that does not match can be lost. The role
//! the rule runs as must own the partition (and, to detach it, the partitioned table); otherwise,
//! or when the lock is not granted in time, or the rule archives its rows, the run deletes row by
//! row.

use super::{owner_statement, Plan};
use crate::catalog::Rule;
use crate::errors::Error;
use crate::history::Outcome;
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
    let (verb, action) = match rule.drop_partitions.as_str() {
        "drop" => ("DROP TABLE", "dropped"),
        "detach" => ("DETACH", "detached"),
        _ => return Ok(None),
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
                    &format!(
                        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                        leaf.qualified_name
                    ),
                    None,
                    &[],
                )?;
                let total = client
                    .select(
                        &format!("SELECT count(*) FROM ONLY {}", leaf.qualified_name),
                        None,
                        &[],
                    )?
                    .first()
                    .get_one::<i64>()?
                    .unwrap_or(0);
                let matching = client
                    .select(
                        &format!(
                            "SELECT count(*) FROM ONLY {} WHERE {condition}",
                            leaf.qualified_name
                        ),
                        None,
                        &[],
                    )?
                    .first()
                    .get_one::<i64>()?
                    .unwrap_or(0);
                if total == 0 || total != matching {
                    return Ok::<_, pgrx::spi::Error>(None);
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
