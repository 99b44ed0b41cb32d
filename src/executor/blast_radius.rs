//! Blast-radius limits: before a run deletes anything, it compares what it would delete with the
//! rule's `max_rows_per_run` and `max_fraction` (of the table's live rows; the setting
//! `pg_token_cleanup.max_fraction` for rules that set none). A run past a limit deletes nothing and
//! is recorded `refused`, with what it found against the limit.
//!
//! The matching rows are counted when the run goes through an index (the count is what the run
//! would read anyway), and taken from the planner's estimate when it walks the table (counting
//! would double the run); the message says which. A sharded Citus table's figures are its shards'
//! own, added up over the whole table (the table on the coordinator is an empty shell).

use super::{owner_statement, Plan};
use crate::errors::Error;
use crate::rules::Rule;
use pgrx::prelude::*;

/// `Err` when the run would pass a limit. `plans`: one per table the run works through (the leaf
/// partitions of a partitioned table), checked together before anything is deleted.
pub(super) fn check(rule: &Rule, plans: &[Plan]) -> Result<(), Error> {
    let max_rows = rule.max_rows_per_run.filter(|n| *n > 0);
    let max_fraction = Some(rule.effective_max_fraction()).filter(|f| *f < 1.0);
    if max_rows.is_none() && max_fraction.is_none() {
        return Ok(());
    }
    let condition = crate::condition::embedded(&rule.condition);
    let mut matching = 0.0;
    let mut estimated = false;
    let mut sharded = false;
    for plan in plans {
        matching += match plan.method {
            super::Method::Index => count(
                plan,
                &format!(
                    "SELECT count(*) FROM ONLY {} WHERE {condition}",
                    plan.table.qualified_name
                ),
            )?,
            super::Method::TableWalk { .. } => {
                estimated = true;
                plan.estimated_rows.round()
            }
            super::Method::Shards => {
                sharded = true;
                plan.estimated_rows.round()
            }
        };
    }
    let how = if sharded {
        "from the shards: counted through their indexes, else their planners' estimates"
    } else if estimated {
        "the planner's estimate"
    } else {
        "counted"
    };
    let hint = "Check the condition with token_cleanup.preview(); if it is right, raise the rule's \
                max_rows_per_run or max_fraction (NULL: no limit, or pg_token_cleanup.max_fraction).";
    if let Some(max) = max_rows {
        if matching > max as f64 {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "refused: the run would delete {matching} rows ({how}), more than max_rows_per_run {max} of rule \"{}\"; nothing was deleted",
                    rule.name
                ),
            )
            .with_hint(hint));
        }
    }
    if let Some(max) = max_fraction {
        let mut live = 0.0;
        for plan in plans {
            live += live_rows(plan)?;
        }
        if live > 0.0 && matching / live > max {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "refused: the run would delete {matching} rows ({how}) of {live} live rows ({:.1}%), more than max_fraction {max} of rule \"{}\" allows; nothing was deleted",
                    100.0 * matching / live,
                    rule.name
                ),
            )
            .with_hint(hint));
        }
    }
    Ok(())
}

/// The table's live rows: the statistics' count, or a count when the table was never analyzed.
fn live_rows(plan: &Plan) -> Result<f64, Error> {
    // A sharded Citus table's rows are in its shards (each counted when never analyzed).
    if plan.method == super::Method::Shards {
        return Ok(plan.shards.iter().map(|s| s.live).sum());
    }
    let estimate = Spi::get_one_with_args::<f32>(
        "SELECT reltuples FROM pg_catalog.pg_class WHERE oid = $1",
        &[plan.table.oid.into()],
    )?
    .unwrap_or(-1.0);
    if estimate >= 0.0 {
        return Ok(f64::from(estimate));
    }
    count(
        plan,
        &format!("SELECT count(*) FROM ONLY {}", plan.table.qualified_name),
    )
}

/// A count, as the role the rule runs as, within its limits.
fn count(plan: &Plan, sql: &str) -> Result<f64, Error> {
    let n = owner_statement(plan, plan.limits, || Spi::get_one::<i64>(sql))??;
    Ok(n.unwrap_or(0) as f64)
}
