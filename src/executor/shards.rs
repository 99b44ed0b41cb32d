//! A run on a sharded Citus table, from the coordinator: the table here is an empty shell, so the
//! run purges each shard on the node that holds it ([`super::on_shard`] is the node's side).
//!
//! Planning asks every shard for its size, rows and matching rows (the blast-radius limits add
//! them up over the whole table) and whether its planner would use an index. Then the run goes in
//! steps: each step calls `token_cleanup.shard_purge()` for up to [`BATCHES_AT_ONCE_PER_NODE`]
//! shards on each node, all at once, and each call deletes batch after batch from its shard for up
//! to [`STEP_MS`]; each batch is a local transaction on its node (no two-phase commit), at most
//! `batch_size` rows, the condition re-checked, locked rows skipped, moved into the co-located
//! archive's shard when the rule archives, as on one server. A shard is walked in page ranges sized
//! from what its previous batch measured, or, where its planner would use an index, taken
//! `batch_size` rows at a time through the index. Stop checks, the run's deadline and pacing come
//! between steps.
//!
//! The statements reach the nodes through Citus's `master_run_on_worker()`, connected as the role
//! the rule runs as: that role must be able to log in to every node from the coordinator, as for
//! any statement Citus sends for it.

use super::tally::{Counted, Tally};
use super::Plan;
use crate::citus::{self, Reply, Shard};
use crate::errors::Error;
use crate::history::Outcome;
use crate::owner::{self, Limits};
use crate::rules::Rule;
use crate::target::ResolvedTable;
use pgrx::prelude::*;
use std::collections::HashMap;

/// Most batches (and planning statements) one node is given at once by one run.
const BATCHES_AT_ONCE_PER_NODE: usize = 4;
/// The first range of a walk is never more pages than this (as on one server).
const FIRST_RANGE_MAX_PAGES: u64 = 1024;
/// How long one call on a node goes on giving a shard batch after batch (each committed on its
/// own): opening the connection costs more than a batch, and the run checks for a stop, its
/// deadline and pacing between calls.
const STEP_MS: u32 = 500;

/// One shard as planning found it.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    pub shard: Shard,
    pub blocks: u32,
    pub live: f64,
    pub matching: f64,
    /// Its planner would find the matching rows through an index.
    pub index: bool,
    /// The co-located archive's shard for the same rows, when the rule archives.
    pub archive: Option<String>,
}

/// Asks every shard of `table`, as `role`, for its size, rows and matching rows: one statement per
/// node, for all the shards it holds.
pub(crate) fn plan(
    table: &ResolvedTable,
    condition: &str,
    role: pg_sys::Oid,
    limits: Limits,
) -> Result<Vec<ShardPlan>, Error> {
    let shards = citus::shards(table.oid)?;
    let mut by_node: Vec<(&Shard, Vec<usize>)> = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        match by_node
            .iter_mut()
            .find(|(s, _)| s.node == shard.node && s.port == shard.port)
        {
            Some((_, held)) => held.push(i),
            None => by_node.push((shard, vec![i])),
        }
    }
    let step: Vec<(&Shard, String)> = by_node
        .iter()
        .map(|(node, held)| {
            let names: Vec<String> = held
                .iter()
                .map(|&i| quote_literal(&shards[i].name))
                .collect();
            let sql = format!(
                "SELECT token_cleanup.shard_plan(ARRAY[{}]::text[], {}, {}, {})",
                names.join(", "),
                quote_literal(condition),
                limits.lock_timeout_ms,
                limits.statement_timeout_ms
            );
            (*node, sql)
        })
        .collect();
    let replies = send(&step, role, limits)?;
    let mut plans: Vec<Option<ShardPlan>> = vec![None; shards.len()];
    for ((node, held), reply) in by_node.iter().zip(replies) {
        let reply = answer(node, &reply).map_err(|e| e.context("planning the run"))?;
        for (k, &i) in held.iter().enumerate() {
            let one = &reply[k];
            plans[i] = Some(ShardPlan {
                shard: shards[i].clone(),
                blocks: one["blocks"].as_u64().unwrap_or(0) as u32,
                live: one["live"].as_f64().unwrap_or(0.0),
                matching: one["matching"].as_f64().unwrap_or(0.0),
                index: one["index"].as_bool().unwrap_or(false),
                archive: None,
            });
        }
    }
    plans
        .into_iter()
        .zip(&shards)
        .map(|(plan, shard)| {
            plan.ok_or_else(|| {
                Error::new(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("no plan came back for shard {}", shard.name),
                )
            })
        })
        .collect()
}

/// Names each shard's co-located archive shard (the rule archives into `archive`).
pub(super) fn with_archive(
    shards: &mut [ShardPlan],
    table: &ResolvedTable,
    archive: &ResolvedTable,
) -> Result<(), Error> {
    let archive_shards = citus::archive_shards(table.oid, archive.oid)?;
    for plan in shards {
        let found = archive_shards.get(&plan.shard.id).ok_or_else(|| {
            Error::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "archive_table {} has no shard for the rows of shard {}; nothing was deleted",
                    archive.qualified_name, plan.shard.name
                ),
            )
            .with_hint("Distribute the archive co-located with the table (create_distributed_table(…, colocate_with => …)).")
        })?;
        plan.archive = Some(found.clone());
    }
    Ok(())
}

/// Where one shard's purge stands.
struct Progress {
    /// Where its next batch starts; `None`: done.
    next: Option<(u32, u16)>,
    /// The pages its next batch takes (0: through the index), as the node sized it last.
    pages: u64,
}

/// What one picked shard's step came to.
enum Sent {
    /// Its call ran: the node's reply, or the error naming the shard and node.
    Done(Result<serde_json::Value, Error>),
    /// It was not sent: the shard is on another node now, or gone (`None`).
    Moved(Option<Shard>),
}

/// A shard's purge from its start: its first walk range sized from its planned rows per page, or
/// through its index.
fn start_of(shard: &ShardPlan, batch_size: usize) -> Progress {
    let per_page = (shard.matching / f64::from(shard.blocks.max(1))).max(f64::MIN_POSITIVE);
    let first = ((batch_size as f64 / per_page).ceil() as u64).clamp(1, FIRST_RANGE_MAX_PAGES);
    Progress {
        next: Some((0, 0)),
        pages: if shard.index { 0 } else { first },
    }
}

/// Purges every shard of the plan, step by step, until each is done or the run must end.
pub(super) fn purge(rule: &Rule, plan: &Plan, tally: &mut Tally) -> Result<Outcome, Outcome> {
    let mut shards: Vec<Shard> = plan.shards.iter().map(|s| s.shard.clone()).collect();
    let mut progress: Vec<Progress> = plan
        .shards
        .iter()
        .map(|s| start_of(s, plan.batch_size))
        .collect();
    // A rule paced by rows per second (its own, or the setting's) gets one batch per call, so
    // that the pacing sees each.
    let step_ms = if rule.effective_max_rows_per_second() > 0 {
        0
    } else {
        STEP_MS
    };
    let condition = quote_literal(&rule.condition);
    loop {
        let todo: Vec<usize> = (0..progress.len())
            .filter(|i| progress[*i].next.is_some())
            .collect();
        if todo.is_empty() {
            return Ok(Outcome::Succeeded);
        }
        let picked = one_step(&todo, &shards);
        let step: Vec<(&Shard, String)> = picked
            .iter()
            .map(|&i| {
                let (block, offset) = progress[i].next.unwrap_or((0, 0));
                let pages = match progress[i].pages {
                    0 => 0,
                    pages => tally.gate.batch_units(pages),
                };
                let archive = plan.shards[i]
                    .archive
                    .as_deref()
                    .map_or("NULL".to_string(), quote_literal);
                let sql = format!(
                    "CALL token_cleanup.shard_purge({}, {condition}, {block}, {offset}, {pages}, {}, {}, {}, {step_ms}, {archive}, NULL)",
                    quote_literal(&shards[i].name),
                    plan.batch_size,
                    plan.limits.lock_timeout_ms,
                    plan.limits.statement_timeout_ms
                );
                (&shards[i], sql)
            })
            .collect();
        let (replies, _) = tally.step(
            plan,
            || {
                // Where each picked shard is now: the rebalancer may have moved it since the last
                // step (a batch sent to its old placement would delete from a copy being retired).
                let placed: HashMap<i64, Shard> = citus::shards(plan.table.oid)?
                    .into_iter()
                    .map(|s| (s.id, s))
                    .collect();
                let moved: Vec<Option<Option<Shard>>> = picked
                    .iter()
                    .map(|&i| match placed.get(&shards[i].id) {
                        Some(now) if now.node == shards[i].node && now.port == shards[i].port => {
                            None
                        }
                        now => Some(now.cloned()),
                    })
                    .collect();
                let staying: Vec<(&Shard, String)> = step
                    .iter()
                    .zip(&moved)
                    .filter(|(_, m)| m.is_none())
                    .map(|(s, _)| s.clone())
                    .collect();
                let mut replies = send(&staying, plan.owner, plan.limits)?.into_iter();
                Ok(picked
                    .iter()
                    .zip(moved)
                    .map(|(&i, moved)| match moved {
                        Some(now) => Sent::Moved(now),
                        None => Sent::Done(answer(
                            &shards[i],
                            &replies.next().expect("a reply for every statement sent"),
                        )),
                    })
                    .collect::<Vec<_>>())
            },
            |replies| {
                let done = replies.iter().filter_map(|r| match r {
                    Sent::Done(Ok(reply)) => Some(reply),
                    _ => None,
                });
                let sum = |key: &str| {
                    done.clone()
                        .map(|r| r[key].as_i64().unwrap_or(0))
                        .sum::<i64>()
                };
                Counted {
                    rows: sum("rows"),
                    batches: sum("batches") as i32,
                    redone: sum("redone") as i32,
                    longest_ms: Some(
                        done.clone()
                            .map(|r| r["longest_ms"].as_f64().unwrap_or(0.0).ceil() as u128)
                            .max()
                            .unwrap_or(0),
                    ),
                }
            },
        )?;
        let mut failed = None;
        for (&i, reply) in picked.iter().zip(replies) {
            let reply = match reply {
                Sent::Done(Ok(reply)) => reply,
                Sent::Done(Err(e)) => {
                    failed.get_or_insert(e);
                    continue;
                }
                Sent::Moved(Some(now)) => {
                    log!(
                        "pg_token_cleanup: rule \"{}\": shard {} moved to node {}:{} during the run; purging it there from its start",
                        rule.name,
                        shards[i].name,
                        now.node,
                        now.port
                    );
                    shards[i] = now;
                    progress[i] = start_of(&plan.shards[i], plan.batch_size);
                    continue;
                }
                Sent::Moved(None) => {
                    failed.get_or_insert(
                        Error::new(
                            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                            format!(
                                "shard {} of table {} is gone (split or removed during the run); batches already committed stay deleted",
                                shards[i].name, plan.table.qualified_name
                            ),
                        )
                        .with_hint("The next run reads the table's shards again."),
                    );
                    continue;
                }
            };
            let before = progress[i].next.map_or(0, |(b, _)| b);
            let next = reply["next"].as_array().map(|at| {
                (
                    at.first().and_then(|v| v.as_u64()).unwrap_or(0) as u32,
                    at.get(1).and_then(|v| v.as_u64()).unwrap_or(0) as u16,
                )
            });
            let units = if progress[i].pages > 0 {
                let after = next.map_or(plan.shards[i].blocks, |(b, _)| b);
                u64::from(after.saturating_sub(before)).max(1)
            } else {
                reply["rows"].as_u64().unwrap_or(0)
            };
            tally.gate.batch_done(units);
            progress[i].next = next;
            progress[i].pages = reply["pages"].as_u64().unwrap_or(progress[i].pages);
        }
        if let Some(e) = failed {
            return Err(Outcome::Failed(e));
        }
    }
}

/// The shards of `todo` that go in one step: the first of them on each node, up to
/// [`BATCHES_AT_ONCE_PER_NODE`] per node.
fn one_step(todo: &[usize], shards: &[Shard]) -> Vec<usize> {
    let mut given: HashMap<(&str, i32), usize> = HashMap::new();
    todo.iter()
        .copied()
        .filter(|&i| {
            let n = given
                .entry((shards[i].node.as_str(), shards[i].port))
                .or_insert(0);
            *n += 1;
            *n <= BATCHES_AT_ONCE_PER_NODE
        })
        .collect()
}

/// Sends each statement to its shard's node, all at once, as `role`. The call waits for the
/// slowest node: it gets the nodes' own statement timeout twice over, and 10 s more.
fn send(
    statements: &[(&Shard, String)],
    role: pg_sys::Oid,
    limits: Limits,
) -> Result<Vec<Reply>, Error> {
    let statements: Vec<(String, i32, String)> = statements
        .iter()
        .map(|(shard, sql)| (shard.node.clone(), shard.port, sql.clone()))
        .collect();
    let waiting = Limits {
        lock_timeout_ms: limits.lock_timeout_ms,
        statement_timeout_ms: if limits.statement_timeout_ms > 0 {
            limits
                .statement_timeout_ms
                .saturating_mul(2)
                .saturating_add(10_000)
        } else {
            0
        },
    };
    owner::as_role(role, waiting, || citus::run_on_nodes(&statements))?
}

/// A node's reply as JSON, or the error naming the shard and node.
fn answer(shard: &Shard, reply: &Reply) -> Result<serde_json::Value, Error> {
    if !reply.ok {
        return Err(Error::new(
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            format!(
                "shard {} on node {}:{}: {}",
                shard.name,
                shard.node,
                shard.port,
                reply.text.trim()
            ),
        )
        .with_hint("Batches already committed on other shards stay deleted; the next run goes on from there."));
    }
    serde_json::from_str(&reply.text).map_err(|e| {
        Error::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!(
                "shard {} on node {}:{} replied {:?}: {e}",
                shard.name, shard.node, shard.port, reply.text
            ),
        )
    })
}

fn quote_literal(text: &str) -> String {
    pgrx::spi::quote_literal(text)
}
