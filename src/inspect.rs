//! What a rule would do, without doing it: `token_cleanup.explain(rule)` (the method a run would
//! choose and why, rows and pages, the duration past runs suggest, index advice) and
//! `token_cleanup.backlog_estimate(rule)` (the planner's estimate of its matching rows, for the
//! metrics view). Both plan the rule's condition as the role the rule runs as, like a run does; on
//! a sharded Citus table, each shard on its node.

use crate::condition;
use crate::errors::Error;
use crate::owner;
use crate::rules::resolve::{self, When};
use crate::rules::{self, Rule};
use crate::target::ResolvedTable;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Tables smaller than this many pages (8 MB) are walked cheaply: no index advice for them.
const ADVICE_MIN_PAGES: i64 = 1024;
/// Index advice when a walk of the table would find fewer than this fraction of its rows.
const ADVICE_MAX_FRACTION: f64 = 0.1;

/// What the planner says about a rule's condition.
struct Planned {
    node_type: String,
    index: Option<String>,
    rows: f64,
}

/// The rule's table and the role its code runs as (see `owner::run_as`), as they are now; the
/// errors name what is gone and the fix. Used by `explain()`, `preview()` and the backlog estimate.
pub(crate) fn resolve(rule: &Rule) -> Result<(ResolvedTable, pg_sys::Oid), Error> {
    let owner = resolve::owner(&rule.name, &rule.owner, When::Running)?;
    let table = resolve::table(&rule.name, &rule.table_name, When::Running)?;
    let role = owner::run_as(owner, table.oid);
    Ok((table, role))
}

/// EXPLAIN of the rule's condition, as `role`, with the rule's timeouts (as a run plans it).
fn plan(rule: &Rule, table: &ResolvedTable, role: pg_sys::Oid) -> Result<Planned, Error> {
    let top = crate::executor::planned_scan(table, &rule.condition, role, rule.limits())?;
    let index = top["Index Name"]
        .as_str()
        .or_else(|| top["Plans"][0]["Index Name"].as_str())
        .map(str::to_string);
    Ok(Planned {
        node_type: top["Node Type"].as_str().unwrap_or("").to_string(),
        index,
        rows: top["Plan Rows"].as_f64().unwrap_or(0.0),
    })
}

/// Limits of the backlog estimate's planning, whatever the rule says: a scrape of the metrics must
/// not wait on a lock, nor on the owner's code, longer than this (a rule's own lock_timeout may be 0).
const SCRAPE_LIMITS: owner::Limits = owner::Limits {
    lock_timeout_ms: 100,
    statement_timeout_ms: 1_000,
};

/// The planner's estimate of the rows the rule would delete now (NULL when it cannot be planned:
/// its table is gone, a privilege was revoked, a lock or the owner's code took too long). Used by
/// `token_cleanup.metrics`.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn backlog_estimate(rule_name: &str) -> Option<i64> {
    let rule = rules::visible_rule_by_name(rule_name);
    let (table, role) = resolve(&rule).ok()?;
    if crate::citus::kind(table.oid) == Some(crate::citus::Kind::Sharded) {
        let shards =
            crate::executor::shard_plans(&table, &rule.condition, role, SCRAPE_LIMITS).ok()?;
        return Some(shards.iter().map(|s| s.matching).sum::<f64>().round() as i64);
    }
    crate::executor::planned_scan(&table, &rule.condition, role, SCRAPE_LIMITS)
        .ok()
        .map(|top| top["Plan Rows"].as_f64().unwrap_or(0.0).round() as i64)
}

/// What a run of the rule would do now, deleting nothing.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn explain(
    rule_name: &str,
) -> TableIterator<
    'static,
    (
        name!(rule, String),
        name!(table_name, String),
        name!(method, String),
        name!(reason, String),
        name!(estimated_rows, i64),
        name!(live_rows, i64),
        name!(table_pages, i64),
        name!(pages_to_touch, i64),
        name!(expected_duration, Option<pgrx::datum::Interval>),
        name!(index_advice, Option<String>),
    ),
> {
    let rule = rules::visible_rule_by_name(rule_name);
    let (table, role) = resolve(&rule).unwrap_or_else(|e| e.raise());
    if crate::citus::kind(table.oid) == Some(crate::citus::Kind::Sharded) {
        let shards = crate::executor::shard_plans(&table, &rule.condition, role, rule.limits())
            .unwrap_or_else(|e| e.context("planning").raise());
        let (reason, rows, live, pages, pages_to_touch) = sharded(&shards);
        let expected = expected_duration(&rule, rows);
        return TableIterator::once((
            rule.name,
            table.qualified_name,
            "per shard".to_string(),
            reason,
            rows,
            live,
            pages,
            pages_to_touch,
            expected,
            None,
        ));
    }
    let planned = plan(&rule, &table, role).unwrap_or_else(|e| e.context("planning").raise());
    let (pages, live) = Spi::get_two_with_args::<i64, f32>(
        "SELECT pg_catalog.pg_relation_size($1) / pg_catalog.current_setting('block_size')::int8, reltuples \
           FROM pg_catalog.pg_class WHERE oid = $1",
        &[table.oid.into()],
    )
    .unwrap_or((None, None));
    let pages = pages.unwrap_or(0);
    // reltuples is -1 for a table never vacuumed or analyzed.
    let analyzed = live.is_some_and(|l| l >= 0.0);
    let live = live.map_or(0, |l| l.max(0.0) as i64);
    let of_live = if analyzed {
        format!("of {live} rows")
    } else {
        "of a table never analyzed".to_string()
    };
    let rows = planned.rows.round() as i64;
    let walk = planned.node_type == "Seq Scan";
    let (method, reason, pages_to_touch) = if walk {
        (
            "table walk",
            format!(
                "the planner would read the whole table ({}) for about {rows} rows {of_live}: a run walks it once in page ranges, each batch deleting its range's matching rows",
                planned.node_type
            ),
            pages,
        )
    } else {
        (
            "index",
            format!(
                "the planner would use {} ({}) for about {rows} rows: a run collects their ctids through it and deletes them by ctid",
                planned.index.as_deref().map_or("an index".to_string(), |i| format!("index {i}")),
                planned.node_type
            ),
            rows.min(pages),
        )
    };
    let expected = expected_duration(&rule, rows);
    let advice = (walk
        && pages >= ADVICE_MIN_PAGES
        && live > 0
        && (rows as f64) < ADVICE_MAX_FRACTION * live as f64)
        .then(|| index_advice(&rule, &table))
        .flatten();
    TableIterator::once((
        rule.name,
        table.qualified_name,
        method.to_string(),
        reason,
        rows,
        live,
        pages,
        pages_to_touch,
        expected,
        advice,
    ))
}

/// What `explain()` says of a sharded Citus table, from its shards' own plans: the reason, the
/// matching rows, live rows, pages and pages a run would touch, over the whole table.
fn sharded(shards: &[crate::executor::ShardPlan]) -> (String, i64, i64, i64, i64) {
    let rows = shards.iter().map(|s| s.matching).sum::<f64>().round() as i64;
    let live = shards.iter().map(|s| s.live).sum::<f64>().round() as i64;
    let pages: i64 = shards.iter().map(|s| i64::from(s.blocks)).sum();
    let through_index = shards.iter().filter(|s| s.index).count();
    let touched: i64 = shards
        .iter()
        .map(|s| {
            let blocks = i64::from(s.blocks);
            if s.index {
                (s.matching.round() as i64).min(blocks)
            } else {
                blocks
            }
        })
        .sum();
    let mut nodes: Vec<(&str, i32)> = shards
        .iter()
        .map(|s| (s.shard.node.as_str(), s.shard.port))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    let reason = format!(
        "a Citus distributed table in {} shards on {} nodes, about {rows} matching rows of {live}: a run purges each shard on its node in batches that are local transactions there, {} shards by table walk and {through_index} through their index, as each shard's planner would",
        shards.len(),
        nodes.len(),
        shards.len() - through_index
    );
    (reason, rows, live, pages, touched)
}

/// From the rule's lifetime counters: its past rate, applied to `rows`.
fn expected_duration(rule: &Rule, rows: i64) -> Option<pgrx::datum::Interval> {
    let (deleted, seconds) = crate::history::lifetime_rate(rule.id)?;
    if deleted <= 0.0 || seconds <= 0.0 {
        return None;
    }
    let micros = (seconds / deleted * rows as f64 * 1e6) as i64;
    pgrx::datum::Interval::new(0, 0, micros).ok()
}

/// `CREATE INDEX CONCURRENTLY` on the table's columns that the condition names.
fn index_advice(rule: &Rule, table: &ResolvedTable) -> Option<String> {
    let names = condition::identifiers(&rule.condition);
    let columns: Vec<String> = Spi::connect(|client| {
        client
            .select(
                "SELECT attname::text FROM pg_catalog.pg_attribute \
                  WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                None,
                &[table.oid.into()],
            )?
            .map(|r| r.get::<String>(1).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()
    })
    .ok()?;
    let used: Vec<String> = columns
        .iter()
        .filter(|c| names.contains(c))
        .map(pgrx::spi::quote_identifier)
        .collect();
    (!used.is_empty()).then(|| {
        format!(
            "no index serves the condition and it matches few of the table's rows: CREATE INDEX CONCURRENTLY ON {} ({});",
            table.qualified_name,
            used.join(", ")
        )
    })
}
