//! Preparing a run: resolving the owner, the table (and for a partitioned table its leaf
//! partitions) and the archive as they are *now*, and choosing, from the planner's own plan, how the
//! run finds its rows ([`super::method`]); then the batch statements ([`super::statements`]).

use super::statements::{self, Archive, Shape};
use super::{supported_wal_compression, Method, Plan};
use crate::errors::Error;
use crate::owner;
use crate::rules::resolve::{self, When};
use crate::rules::Rule;
use crate::target::ResolvedTable;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Resolves the owner and the table as they are *now* (a dropped or renamed table, a dropped owner,
/// a revoked privilege fail this run only), and chooses the run's [`Method`].
/// `bound` is the table the run was given (see `binding`): a name that now means another relation
/// fails the run.
pub(super) fn prepare(rule: &Rule, bound: pg_sys::Oid) -> Result<Vec<Plan>, Error> {
    let owner = resolve::owner(&rule.name, &rule.owner, When::Running)?;
    // The bound table first, by OID: holding its lock, nobody can rename it, drop it or put another
    // relation under its name while this transaction plans the run (the name is checked below).
    if bound != pg_sys::InvalidOid {
        super::binding::lock(bound, rule.limits().lock_timeout_ms)
            .map_err(|e| e.context(format!("locking table {}", rule.table_name)))?;
    }
    let table = resolve::table(&rule.name, &rule.table_name, When::Running)?;
    if table.oid != bound {
        return Err(Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "table {} of rule \"{}\" is no longer the relation the run was given (renamed or replaced); nothing was deleted",
                rule.table_name, rule.name
            ),
        )
        .with_hint("The next run resolves the table again."));
    }
    // A superuser's rule on another role's table runs as that role (see owner::run_as); each leaf
    // partition as its own owner, whose triggers it runs.
    if !super::partitions::is_partitioned(table.oid) {
        let role = owner::run_as(owner, table.oid);
        return Ok(vec![prepare_table(rule, table, role, false)?]);
    }
    super::partitions::leaves(&table)?
        .into_iter()
        .map(|leaf| {
            // Each leaf too, before it is planned under its name.
            super::binding::lock(leaf.oid, rule.limits().lock_timeout_ms)
                .map_err(|e| e.context(format!("locking partition {}", leaf.qualified_name)))?;
            if super::binding::relation_is(leaf.oid, &leaf.qualified_name, "partition").is_err() {
                return Err(Error::new(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "partition {} was renamed or replaced while the run was planned",
                        leaf.qualified_name
                    ),
                ));
            }
            let role = owner::run_as(owner, leaf.oid);
            prepare_table(rule, leaf, role, true)
        })
        .collect()
}

/// The plan for one table (the rule's, or one leaf partition of it), run as `owner`.
fn prepare_table(
    rule: &Rule,
    table: ResolvedTable,
    owner: pg_sys::Oid,
    partition: bool,
) -> Result<Plan, Error> {
    // Row locks (SKIP LOCKED) need UPDATE on the table.
    let skip_locked = resolve::has_privilege(table.oid, owner, pg_sys::ACL_UPDATE);
    let archive = match &rule.archive_table {
        Some(name) => Some(archive_for(rule, &table, owner, name)?),
        None => None,
    };
    let mut plan = Plan {
        partition,
        owner,
        limits: rule.limits(),
        batch_size: rule.effective_batch_size().max(1) as usize,
        wal_compression: supported_wal_compression(),
        method: Method::Index,
        estimated_rows: 0.0,
        archive,
        delete_sql: statements::build("", "", Shape::Ctids, None).0,
        skip_locked_sql: None,
        shards: Vec::new(),
        table,
    };
    // A sharded Citus table: the table here is an empty shell; its shards are planned (and
    // purged) on their nodes.
    if crate::citus::kind(plan.table.oid) == Some(crate::citus::Kind::Sharded) {
        plan.shards = super::shards::plan(&plan.table, &rule.condition, owner, plan.limits)?;
        if let Some(archive) = &plan.archive {
            let archive = ResolvedTable {
                oid: archive.oid,
                qualified_name: archive.table.clone(),
            };
            super::shards::with_archive(&mut plan.shards, &plan.table, &archive)?;
        }
        plan.method = Method::Shards;
        plan.estimated_rows = plan.shards.iter().map(|s| s.matching).sum();
        return Ok(plan);
    }
    let (method, estimated_rows) =
        choose_method(rule, &plan).map_err(|e| e.context("planning the run"))?;
    plan.method = method;
    plan.estimated_rows = estimated_rows;
    let shape = match plan.method {
        Method::TableWalk { .. } => Shape::Walk {
            limit: plan.batch_size,
        },
        Method::Index | Method::Shards => Shape::Ctids,
    };
    let (optimistic, skipping) = statements::build(
        &plan.table.qualified_name,
        &crate::condition::embedded(&rule.condition),
        shape,
        plan.archive.as_ref(),
    );
    plan.delete_sql = optimistic;
    plan.skip_locked_sql = skip_locked.then_some(skipping);
    Ok(plan)
}

/// The archive of a rule, checked again at every run as when the rule was written.
fn archive_for(
    rule: &Rule,
    table: &ResolvedTable,
    role: pg_sys::Oid,
    name: &str,
) -> Result<Archive, Error> {
    let (archive, columns) = resolve::archive(&rule.name, table, role, name, When::Running, true)?;
    Ok(Archive {
        oid: archive.oid,
        table: archive.qualified_name,
        columns,
    })
}

/// Asks the planner, as the owner, how it would find the matching rows (see [`method`]).
fn choose_method(rule: &Rule, plan: &Plan) -> Result<(Method, f64), Error> {
    let node = planned_scan(&plan.table, &rule.condition, plan.owner, plan.limits)?;
    let node_type = node["Node Type"].as_str().unwrap_or("");
    let estimated_rows = node["Plan Rows"].as_f64().unwrap_or(0.0);
    let blocks = Spi::get_one_with_args::<i64>(
        "SELECT pg_relation_size($1) / current_setting('block_size')::bigint",
        &[plan.table.oid.into()],
    )?
    .unwrap_or(0);
    let method = Method::from_plan(
        node_type,
        estimated_rows,
        u32::try_from(blocks).unwrap_or(u32::MAX),
        plan.batch_size,
    );
    Ok((method, estimated_rows))
}

/// The planner's top node, as JSON, for `SELECT ctid FROM ONLY <table> WHERE <condition>` planned
/// as `role` within `limits`, without parallel workers (the walk and the collection run without
/// them; so must the plan that chooses between them). Used by runs and by `explain()`.
pub(crate) fn planned_scan(
    table: &ResolvedTable,
    condition: &str,
    role: pg_sys::Oid,
    limits: crate::owner::Limits,
) -> Result<serde_json::Value, Error> {
    let explain = format!(
        "EXPLAIN (FORMAT JSON) SELECT ctid FROM ONLY {} WHERE {}",
        table.qualified_name,
        crate::condition::embedded(condition)
    );
    let json = crate::owner::as_role(role, limits, || {
        // SAFETY: scoped to as_owner's GUC nest level.
        unsafe { owner::set_local("max_parallel_workers_per_gather", "0") };
        Spi::get_one::<pgrx::Json>(&explain)
    })??
    .ok_or_else(|| {
        Error::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "EXPLAIN returned no plan",
        )
    })?;
    Ok(json.0[0]["Plan"].clone())
}
