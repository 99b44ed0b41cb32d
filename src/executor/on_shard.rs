//! The node's side of a run on a sharded Citus table ([`super::shards`] is the coordinator's): two
//! functions that the coordinator's runner calls on the node holding each shard, connected as the
//! role the rule runs as (Citus connects as the current user).
//!
//! - `token_cleanup.shard_plan(shards, condition, …)` says for each shard how many pages it has,
//!   how many live rows and how many match (the planner's estimates; the matching rows counted
//!   where the planner would use an index, and everything counted when the shard was never
//!   analyzed), whether its planner would use an index, and whether the role may skip locked rows;
//! - `token_cleanup.shard_batch(shard, condition, from, pages, limit, …)` deletes one batch: the
//!   matching rows of one page range, at most `limit`, in the node's own transaction, by the same
//!   statements as a local run (the condition re-checked, `limit` a hard cap, rows locked by other
//!   sessions skipped), and says where the next batch resumes and how many pages it should take.
//!   The procedure `token_cleanup.shard_purge()` (sql/finish.sql) calls it batch after batch,
//!   committing each, for as long as the coordinator allows one call.
//!
//! Both run as their caller with the caller's privileges, and only run the caller's condition on
//! the caller's own statement: nothing a caller could not do with a DELETE of its own.

use super::batch::{batch_settings, collect_up_to, delete_batch, tid};
use super::sizer::BatchSizer;
use super::statements::{self, Archive, Shape};
use super::{supported_wal_compression, Batch, Method, Plan};
use crate::errors::Error;
use crate::owner::{self, Limits};
use crate::rules::resolve;
use crate::target::{self, ResolvedTable};
use pgrx::prelude::*;
use serde_json::json;
use std::time::Instant;

/// Each shard's size, rows and matching rows, as a JSON array in the order of `shards`: `{"blocks",
/// "live", "matching", "index", "skip_locked"}`; `index`: the planner would find the matching rows
/// through an index. One call plans every shard of a table on this node.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn shard_plan(
    shards: Vec<String>,
    condition: &str,
    lock_timeout_ms: i32,
    statement_timeout_ms: i32,
) -> String {
    let plans: Vec<serde_json::Value> = shards
        .iter()
        .map(|shard| plan_one(shard, condition, lock_timeout_ms, statement_timeout_ms))
        .collect();
    serde_json::Value::Array(plans).to_string()
}

fn plan_one(
    shard: &str,
    condition: &str,
    lock_timeout_ms: i32,
    statement_timeout_ms: i32,
) -> serde_json::Value {
    let (table, role, limits) =
        resolve_shard(shard, condition, lock_timeout_ms, statement_timeout_ms);
    let embedded = crate::condition::embedded(condition);
    let count = |sql: String| -> f64 {
        owner::as_role(role, limits, || Spi::get_one::<i64>(&sql))
            .and_then(|r| r.map_err(Error::from))
            .unwrap_or_else(|e| e.raise())
            .unwrap_or(0) as f64
    };
    let reltuples = Spi::get_one_with_args::<f32>(
        "SELECT reltuples FROM pg_catalog.pg_class WHERE oid = $1",
        &[table.oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(-1.0);
    // Never analyzed: the planner's figures would be guesses, and the blast-radius check rests on
    // them, so count.
    let (live, matching, index) = if reltuples < 0.0 {
        (
            count(format!(
                "SELECT count(*) FROM ONLY {}",
                table.qualified_name
            )),
            count(format!(
                "SELECT count(*) FROM ONLY {} WHERE {embedded}",
                table.qualified_name
            )),
            false,
        )
    } else {
        let node =
            super::planned_scan(&table, condition, role, limits).unwrap_or_else(|e| e.raise());
        let index = node["Node Type"].as_str() != Some("Seq Scan");
        // As on one server: counted where the run would read them through an index anyway,
        // estimated where it walks the table (a count would double the run).
        let matching = if index {
            count(format!(
                "SELECT count(*) FROM ONLY {} WHERE {embedded}",
                table.qualified_name
            ))
        } else {
            node["Plan Rows"].as_f64().unwrap_or(0.0)
        };
        (f64::from(reltuples), matching, index)
    };
    json!({
        "blocks": blocks(&table),
        "live": live,
        "matching": matching,
        "index": index,
        "skip_locked": resolve::has_privilege(table.oid, role, pg_sys::ACL_UPDATE),
    })
}

/// Deletes one batch of the shard, at most `batch_limit` rows matching `condition`, in this
/// transaction (moved into the shard `archive`, co-located here, when one is named): those from
/// page `from_block` (row `from_offset`) up to page `from_block + pages` (a walk), or with `pages`
/// 0 the first ones the planner's index finds. Returns `{"rows",
/// "redone", "next"}`: `next` is `[block, offset]` where the next batch resumes, or null when the
/// shard's end was reached (a walk) or no more rows could be deleted (through the index); `pages`
/// is the next range's size, sized from this one; `ms` the batch's time, start to end.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn shard_batch(
    shard: &str,
    condition: &str,
    from_block: i64,
    from_offset: i32,
    pages: i64,
    batch_limit: i32,
    lock_timeout_ms: i32,
    statement_timeout_ms: i32,
    archive: Option<&str>,
) -> String {
    let (table, role, limits) =
        resolve_shard(shard, condition, lock_timeout_ms, statement_timeout_ms);
    let archive = archive.map(|name| archive_shard(&table, name));
    let end = blocks(&table);
    let start = u32::try_from(from_block.max(0)).unwrap_or(u32::MAX);
    if pages <= 0 {
        return through_index(
            table,
            condition,
            archive,
            role,
            limits,
            batch_limit.max(1) as usize,
        );
    }
    if start >= end {
        return json!({"rows": 0, "redone": false, "next": null, "pages": pages, "ms": 0})
            .to_string();
    }
    let to_block = (u64::from(start) + pages.max(1) as u64).min(u64::from(end)) as u32;
    let limit = batch_limit.max(1) as usize;
    let walk = Method::TableWalk {
        end_block: end,
        first_pages: 1,
    };
    let plan = batch_plan(table, condition, archive, role, limits, limit, walk);
    let from_offset = u16::try_from(from_offset.max(0)).unwrap_or(u16::MAX);
    let from = tid(start, from_offset);
    let started = Instant::now();
    batch_settings(plan.wal_compression);
    let deleted = delete_batch(
        &plan,
        &Batch::Range {
            from,
            to: tid(to_block, 0),
            limit,
        },
    )
    .unwrap_or_else(|e| e.raise());
    // As a local walk moves on (see walk_table): never behind where this batch began.
    let (block, offset) = match deleted.resume {
        Some(resume) => resume.max((start, from_offset + 1)),
        None => (to_block, 0),
    };
    let next = (block < end).then(|| json!([block, offset]));
    // The next range's size, from what this one measured (as a local walk sizes its batches).
    let mut sizer = BatchSizer::new(limit, pages.max(1) as u64, u64::from(end));
    sizer.observe(
        u64::from(block.saturating_sub(start)).max(1),
        deleted.rows,
        ms(started),
    );
    json!({
        "rows": deleted.rows,
        "redone": deleted.redone,
        "next": next,
        "pages": sizer.units(),
        "ms": ms(started),
    })
    .to_string()
}

/// Milliseconds since `started`.
fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// One batch through the index: the first `limit` matching rows the planner finds, deleted by
/// ctid with the condition re-checked (the shard's batches go on while a batch deletes rows and
/// finds as many as it may).
fn through_index(
    table: ResolvedTable,
    condition: &str,
    archive: Option<Archive>,
    role: pg_sys::Oid,
    limits: Limits,
    limit: usize,
) -> String {
    let plan = batch_plan(
        table,
        condition,
        archive,
        role,
        limits,
        limit,
        Method::Index,
    );
    let started = Instant::now();
    let found = collect_up_to(&plan, condition, limit).unwrap_or_else(|e| e.raise());
    batch_settings(plan.wal_compression);
    let deleted = delete_batch(&plan, &Batch::Ctids(&found)).unwrap_or_else(|e| e.raise());
    let more = found.len() >= limit && deleted.rows > 0;
    let next = more.then(|| json!([0, 0]));
    json!({"rows": deleted.rows, "redone": deleted.redone, "next": next, "pages": 0, "ms": ms(started)})
        .to_string()
}

/// A batch's plan on `table` (a shard here), with the statements a local run of `method` would
/// build: at most `limit` rows, skipping locked rows where `role` may lock them.
fn batch_plan(
    table: ResolvedTable,
    condition: &str,
    archive: Option<Archive>,
    role: pg_sys::Oid,
    limits: Limits,
    limit: usize,
    method: Method,
) -> Plan {
    let shape = match method {
        Method::TableWalk { .. } => Shape::Walk { limit },
        Method::Index | Method::Shards => Shape::Ctids,
    };
    let (optimistic, skipping) = statements::build(
        &table.qualified_name,
        &crate::condition::embedded(condition),
        shape,
        archive.as_ref(),
    );
    let skip_locked = resolve::has_privilege(table.oid, role, pg_sys::ACL_UPDATE);
    Plan {
        table,
        partition: false,
        owner: role,
        limits,
        batch_size: limit,
        wal_compression: supported_wal_compression(),
        method,
        estimated_rows: 0.0,
        archive,
        delete_sql: optimistic,
        skip_locked_sql: skip_locked.then_some(skipping),
        shards: Vec::new(),
    }
}

/// The archive's shard for `shard`, named by the coordinator (co-located: on this node), as an
/// archive a batch moves rows into: every column of the shard, as a local run copies them.
fn archive_shard(shard: &ResolvedTable, name: &str) -> Archive {
    let archive = local_shard(name, "archive shard");
    let columns = target::archive_columns(shard, &archive).unwrap_or_else(|why| {
        Error::new(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "archive shard {} does not fit shard {}: {why}",
                archive.qualified_name, shard.qualified_name
            ),
        )
        .raise()
    });
    Archive {
        oid: archive.oid,
        table: archive.qualified_name,
        columns,
    }
}

/// The table `name` (`what`: a shard, an archive shard) on this node, a plain table; the errors
/// say when it is not here (moved by the rebalancer, or dropped).
fn local_shard(name: &str, what: &str) -> ResolvedTable {
    let table = match target::lookup_table(name) {
        Ok(Some(table)) => table,
        Ok(None) => Error::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("{what} {name} is not on this node (moved by the rebalancer, or dropped)"),
        )
        .with_hint("The next run reads the shards' placements again.")
        .raise(),
        Err(why) => Error::new(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("invalid {what} name {name}: {why}"),
        )
        .raise(),
    };
    if let Some((kind, fix)) = target::unsupported_kind(table.oid) {
        Error::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{what} {} {kind}", table.qualified_name),
        )
        .with_hint(fix)
        .raise();
    }
    table
}

/// The shard named by the coordinator, as the caller (who must be able to read it), with the
/// condition proven one expression; errors are raised to the coordinator.
fn resolve_shard(
    shard: &str,
    condition: &str,
    lock_timeout_ms: i32,
    statement_timeout_ms: i32,
) -> (ResolvedTable, pg_sys::Oid, Limits) {
    let table = local_shard(shard, "shard");
    if let Err(why) = crate::condition::check_syntax(condition) {
        Error::new(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            format!("invalid condition: {why}"),
        )
        .raise();
    }
    // As in our workers: a batch is short, and its capped walk's estimated cost (within_batch is
    // priced high so that it runs last) would make every batch pay for JIT compilation.
    owner::set_for_transaction("jit", "off");
    // SAFETY: reads the current user.
    let role = unsafe { pg_sys::GetUserId() };
    let limits = Limits {
        lock_timeout_ms,
        statement_timeout_ms,
    };
    (table, role, limits)
}

/// The shard's size in pages now.
fn blocks(table: &ResolvedTable) -> u32 {
    let blocks = Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.pg_relation_size($1) / pg_catalog.current_setting('block_size')::bigint",
        &[table.oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    u32::try_from(blocks).unwrap_or(u32::MAX)
}
