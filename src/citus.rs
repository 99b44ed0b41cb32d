//! What Citus adds, read from its own catalogs when it is installed in this database: whether a
//! table is a Citus table and of which kind, its shards and the node that holds each, whether this
//! node is a worker, and sending one statement to each of several nodes at once.
//!
//! Citus keeps a distributed table's rows in shards, ordinary tables on the worker nodes; the table
//! on the coordinator is an empty shell whose statements Citus plans and sends out. A run purges the
//! shards on the nodes that hold them (`executor::shards`), each batch a local transaction there.
//! The statements go through Citus's `master_run_on_worker()`, which connects to each node as the
//! current user and runs each statement in its own transaction, in parallel.

use crate::errors::Error;
use pgrx::prelude::*;

/// What Citus made of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Rows spread over shards, each held by one node (hash-distributed, single-shard and
    /// Citus-local tables alike): a run purges each shard where it is.
    Sharded,
    /// One shard copied to every node: a delete must reach every copy in one transaction, which a
    /// per-node batch cannot do.
    Reference,
}

/// One shard of a sharded table and the node that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: i64,
    /// `schema.table_shardid`, quoted: the name the shard has on its node.
    pub name: String,
    pub node: String,
    pub port: i32,
}

/// One statement for one node, and what came back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The statement ran and committed; otherwise `text` is the error (or the failed connection).
    pub ok: bool,
    /// The statement's one value, or the error.
    pub text: String,
}

/// Whether Citus is installed in this database (its catalog is there).
pub fn installed() -> bool {
    Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// What Citus made of `table`; `None` for a table Citus does not know (or no Citus at all).
pub fn kind(table: pg_sys::Oid) -> Option<Kind> {
    if !installed() {
        return None;
    }
    let replication = Spi::get_one_with_args::<String>(
        "SELECT repmodel::text FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1",
        &[table.into()],
    )
    .ok()
    .flatten()?;
    Some(if replication == "t" {
        Kind::Reference
    } else {
        Kind::Sharded
    })
}

/// Whether this node is a Citus worker: its rules would be the coordinator's to run, and a table
/// here is a shard or a copy of metadata, not the table users write to.
pub fn is_worker_node() -> bool {
    installed()
        && Spi::get_one::<i32>("SELECT groupid FROM pg_catalog.pg_dist_local_group")
            .ok()
            .flatten()
            .is_some_and(|group| group != 0)
}

/// The co-location group of a Citus table (0 for a Citus-local table, which is co-located with
/// nothing); `None` for a table Citus does not know.
pub fn colocation(table: pg_sys::Oid) -> Option<i32> {
    if !installed() {
        return None;
    }
    Spi::get_one_with_args::<i32>(
        "SELECT colocationid FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1",
        &[table.into()],
    )
    .ok()
    .flatten()
}

/// Whether `archive` can take the rows of `source` (a Citus table) batch by batch on each node:
/// it must be distributed and co-located with the source, so that each source shard's archive
/// shard is on the same node. A Citus-local source is co-located with nothing.
pub fn archive_colocated(source: pg_sys::Oid, archive: pg_sys::Oid) -> bool {
    let source_group = colocation(source).unwrap_or(0);
    source_group != 0 && colocation(archive) == Some(source_group)
}

/// The SQL expression for the name of shard `<alias>.shardid` on its node, schema-qualified and
/// quoted: the table's schema (`shard_name()` leaves `public` out) and the last part of
/// `shard_name()` (which shortens long names as Citus does). Needs the table's schema as `n`.
fn shard_name_sql(alias: &str) -> String {
    let shard_name = format!("pg_catalog.shard_name({alias}.logicalrelid, {alias}.shardid)");
    format!(
        "pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(\
         (pg_catalog.parse_ident({shard_name}))[pg_catalog.array_length(pg_catalog.parse_ident({shard_name}), 1)])"
    )
}

/// For each shard of `source` (by shard id), the name of the shard of `archive` that covers the
/// same hash range: co-located tables have their shards for one range on one node.
pub fn archive_shards(
    source: pg_sys::Oid,
    archive: pg_sys::Oid,
) -> Result<std::collections::HashMap<i64, String>, Error> {
    let rows = Spi::connect(|client| {
        let sql = format!(
            "SELECT s.shardid, {}
               FROM pg_catalog.pg_dist_shard s
               JOIN pg_catalog.pg_dist_shard a
                 ON a.logicalrelid = $2 AND a.shardminvalue = s.shardminvalue
               JOIN pg_catalog.pg_class c ON c.oid = a.logicalrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE s.logicalrelid = $1",
            shard_name_sql("a")
        );
        let table = client.select(&sql, None, &[source.into(), archive.into()])?;
        let mut rows = std::collections::HashMap::new();
        for row in table {
            rows.insert(
                row.get::<i64>(1)?.unwrap_or(0),
                row.get::<String>(2)?.unwrap_or_default(),
            );
        }
        Ok::<_, pgrx::spi::Error>(rows)
    })?;
    Ok(rows)
}

/// Why a Citus table cannot be a rule's target, if it cannot, and the fix.
pub fn unsupported(table: pg_sys::Oid) -> Option<(&'static str, &'static str)> {
    match kind(table)? {
        Kind::Sharded => None,
        Kind::Reference => Some((
            "is a Citus reference table",
            "A reference table is copied to every node, and a batch that deletes on one node at a time would leave the copies different. Delete from it with a plain DELETE (Citus updates every copy in one transaction), or make it a distributed table (create_distributed_table).",
        )),
    }
}

/// The shards of a sharded table, each with the node that holds it, in shard order. `Err` for a
/// shard with more or fewer than one placement (citus.shard_replication_factor above 1, or a shard
/// being moved): a batch on one copy would leave the others different.
pub fn shards(table: pg_sys::Oid) -> Result<Vec<Shard>, Error> {
    let rows = Spi::connect(|client| {
        let sql = format!(
            "SELECT s.shardid, {},
                    (SELECT pg_catalog.array_agg(d.nodename || ':' || d.nodeport)
                       FROM pg_catalog.pg_dist_placement p
                       JOIN pg_catalog.pg_dist_node d ON d.groupid = p.groupid AND d.noderole = 'primary'
                      WHERE p.shardid = s.shardid)
               FROM pg_catalog.pg_dist_shard s
               JOIN pg_catalog.pg_class c ON c.oid = s.logicalrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE s.logicalrelid = $1
              ORDER BY s.shardid",
            shard_name_sql("s")
        );
        let table = client.select(&sql, None, &[table.into()])?;
        let mut rows = Vec::new();
        for row in table {
            let id = row.get::<i64>(1)?.unwrap_or(0);
            let name = row.get::<String>(2)?.unwrap_or_default();
            let nodes = row.get::<Vec<String>>(3)?.unwrap_or_default();
            rows.push((id, name, nodes));
        }
        Ok::<_, pgrx::spi::Error>(rows)
    })?;
    rows.into_iter()
        .map(|(id, name, nodes)| {
            let [node] = nodes.as_slice() else {
                return Err(Error::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!(
                        "shard {name} has {} placements; pg_token_cleanup purges shards that have exactly one",
                        nodes.len()
                    ),
                )
                .with_hint("Shards copied to several nodes (citus.shard_replication_factor above 1) would be deleted from one copy at a time; use a replication factor of 1, or wait until a shard move has finished."));
            };
            let (host, port) = node.rsplit_once(':').unwrap_or((node, "5432"));
            Ok(Shard {
                id,
                name,
                node: host.to_string(),
                port: port.parse().unwrap_or(5432),
            })
        })
        .collect()
}

/// Runs each `(node, port, statement)` on its node, all at once, as the current user; each
/// statement is its own transaction there and returns one value. The replies come in the order of
/// the statements.
pub fn run_on_nodes(statements: &[(String, i32, String)]) -> Result<Vec<Reply>, Error> {
    let nodes: Vec<String> = statements.iter().map(|s| s.0.clone()).collect();
    let ports: Vec<i32> = statements.iter().map(|s| s.1).collect();
    let commands: Vec<String> = statements.iter().map(|s| s.2.clone()).collect();
    let replies = Spi::connect(|client| {
        let table = client.select(
            "SELECT success, result FROM pg_catalog.master_run_on_worker($1, $2, $3, true)",
            None,
            &[nodes.into(), ports.into(), commands.into()],
        )?;
        let mut replies = Vec::new();
        for row in table {
            replies.push(Reply {
                ok: row.get::<bool>(1)?.unwrap_or(false),
                text: row.get::<String>(2)?.unwrap_or_default(),
            });
        }
        Ok::<_, pgrx::spi::Error>(replies)
    })?;
    if replies.len() != statements.len() {
        return Err(Error::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!(
                "master_run_on_worker returned {} replies for {} statements",
                replies.len(),
                statements.len()
            ),
        ));
    }
    Ok(replies)
}
