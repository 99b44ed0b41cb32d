//! Preparing a run: resolving the owner, the table (and for a partitioned table its leaf
//! partitions) and the archive as they are *now*, and choosing, from the planner's own plan, how the
//! run finds its rows ([`super::method`]); then the batch statements ([`super::statements`]).

use super::statements::{self, Archive, Shape};
use super::{supported_wal_compression, Method, Plan};
use crate::errors::Error;
use crate::owner;
use crate::rules::Rule;
use crate::target::{self, ResolvedTable};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Resolves the owner and the table as they are *now* (a dropped or renamed table, a dropped owner,
/// a revoked privilege fail this run only), and chooses the run's [`Method`].
/// `bound` is the table the run was given (see `binding`): a name that now means another relation
/// fails the run.
pub(super) fn prepare(rule: &Rule, bound: pg_sys::Oid) -> Result<Vec<Plan>, Error> {
    let owner = owner::role_oid(&rule.owner).ok_or_else(|| {
        Error::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "owner role \"{}\" of rule \"{}\" does not exist",
                rule.owner, rule.name
            ),
        )
        .with_hint("Make an existing role the rule's owner (as a superuser).")
    })?;
    // The bound table first, by OID: holding its lock, nobody can rename it, drop it or put another
    // relation under its name while this transaction plans the run (the name is checked below).
    if bound != pg_sys::InvalidOid {
        super::binding::lock(bound, rule.limits().lock_timeout_ms)
            .map_err(|e| e.context(format!("locking table {}", rule.table_name)))?;
    }
    let table = match target::lookup_table(&rule.table_name) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!(
                    "table {} of rule \"{}\" does not exist (dropped or renamed?)",
                    rule.table_name, rule.name
                ),
            )
            .with_hint("Point the rule at the table again: UPDATE token_cleanup.rules SET table_name = … WHERE name = …."))
        }
        Err(why) => {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_INVALID_NAME,
                format!("invalid table name {}: {why}", rule.table_name),
            ))
        }
    };
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
    if let Some((what, fix)) = target::unsupported_kind(table.oid) {
        return Err(Error::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("table {} {what}", table.qualified_name),
        )
        .with_hint(fix));
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
    // SAFETY: catalog privilege check.
    let skip_locked = unsafe {
        pg_sys::pg_class_aclcheck(table.oid, owner, pg_sys::ACL_UPDATE as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    };
    let archive = match &rule.archive_table {
        Some(name) => Some(archive_for(rule, &table, owner, name)?),
        None => None,
    };
    let mut plan = Plan {
        partition,
        owner,
        limits: rule.limits(),
        batch_size: rule.effective_batch_size().max(1) as usize,
        max_rows_per_second: rule.effective_max_rows_per_second(),
        wal_compression: supported_wal_compression(),
        method: Method::Index,
        estimated_rows: 0.0,
        archive,
        delete_sql: statements::build("", "", Shape::Ctids, None).0,
        skip_locked_sql: None,
        table,
    };
    let (method, estimated_rows) =
        choose_method(rule, &plan).map_err(|e| e.context("planning the run"))?;
    plan.method = method;
    plan.estimated_rows = estimated_rows;
    let shape = match plan.method {
        Method::TableWalk { .. } => Shape::Walk {
            limit: plan.batch_size,
        },
        Method::Index => Shape::Ctids,
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

/// The archive of a rule, checked again at every run as at validation: it fits the table and the
/// role the rule runs as may insert into it.
fn archive_for(
    rule: &Rule,
    table: &ResolvedTable,
    role: pg_sys::Oid,
    name: &str,
) -> Result<Archive, Error> {
    let fix = "Fix the archive table or set the rule's archive_table to NULL.";
    let archive = match target::lookup_table(name) {
        Ok(Some(a)) => a,
        _ => {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!(
                    "archive_table {name} of rule \"{}\" does not exist (dropped or renamed?)",
                    rule.name
                ),
            )
            .with_hint(fix))
        }
    };
    let columns = target::archive_columns(table, &archive).map_err(|why| {
        Error::new(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "archive_table {} of rule \"{}\" does not fit table {}: {why}",
                archive.qualified_name, rule.name, table.qualified_name
            ),
        )
        .with_hint(fix)
    })?;
    // SAFETY: catalog privilege check.
    let can_insert = unsafe {
        pg_sys::pg_class_aclcheck(archive.oid, role, pg_sys::ACL_INSERT as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    };
    if !can_insert {
        return Err(Error::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "role \"{}\", as whom rule \"{}\" runs, has no INSERT privilege on archive_table {}",
                owner::role_name(role),
                rule.name,
                archive.qualified_name
            ),
        )
        .with_hint(format!(
            "GRANT INSERT ON {} TO {};",
            archive.qualified_name,
            pgrx::spi::quote_identifier(owner::role_name(role))
        )));
    }
    target::archive_owned_by(&archive, &rule.name, role)?;
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
