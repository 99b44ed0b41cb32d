//! pg_token_cleanup: purge expired and revoked rows (OAuth tokens, sessions, password resets, device
//! codes) from inside PostgreSQL, on cron schedules, in batches, as each rule's owner, exactly once per
//! cluster.
//!
//! Vocabulary (used throughout, and no other words for the same things):
//! - **rule**: a row of `token_cleanup.rules`: what to delete, from which table, on which schedule, as
//!   which role.
//! - **run**: one execution of a rule, a row of `token_cleanup.runs`.
//! - **batch**: one transaction inside a run.
//! - **launcher**: the one static background worker that finds databases with the extension and
//!   starts a **scheduler** (one dynamic worker per database) in each. A **runner** is a dynamic
//!   worker that performs runs: pooled runners serve a scheduler; a manual runner performs the one
//!   run of a `token_cleanup.run()` call. A scheduler with no runner to be had runs rules itself.
//! - **claim**: a worker's mark in shared memory on the rule it runs and that rule's table: a rule
//!   never runs twice at once, two rules on one table never run together.
//! - **fire time**: a time the rule's cron schedule names; **due time**: when the scheduler next
//!   starts the rule (its next fire time, or a retry's time, or now for a fire time missed).
//! - **budget**: `pg_token_cleanup.max_workers`, the most workers of the extension at once in the
//!   cluster; a **slot** is one worker's place in it ([`worker::registry::budget`]).
//! - **share**: the most of a limit one party holds while others wait: an owner's share of
//!   `max_parallel_runs`, a role's share of the budget for its `run()` calls.
//!
//! Where things are, in layers: each module imports only from layers below its own.
//! - [`api`] (SQL functions), [`inspect`] (what `preview()` and `explain()` show), [`hooks`]
//!   (DROP DATABASE support);
//! - [`worker`]: launcher, scheduler, runners; a run's request and result ([`worker::run`],
//!   through [`worker::handoff`]); when each rule is due ([`worker::agenda`], pure Rust); signals,
//!   and how a run ends when told, even inside the owner's code ([`worker::signals`]); the registry
//!   in shared memory and the worker budget ([`worker::registry`]);
//! - [`executor`]: one run (batches; [`executor::binding`]: the rule and relations a run was given,
//!   checked before every batch; [`executor::pacing`]: the gate every batch passes, with every wait
//!   between batches; [`executor::parallel`]: a walk shared with helper runners; on a sharded Citus table, `executor::shards` on the coordinator and
//!   `executor::on_shard` on the node holding each shard);
//! - [`rules`]: the rule, read by column name ([`rules::load`]), the trigger that validates every
//!   written rule, and the one place that decides whether a rule's owner, table and archive are
//!   usable ([`rules::resolve`]); [`history`]: every statement on the runs table and the lifetime
//!   counters; [`owner`]: running code that is not ours as the right role, within timeouts, leaving
//!   nothing behind; [`target`]: table names and kinds; [`condition`]: the proof that a condition is
//!   one expression, and the one place that embeds it; [`citus`]: Citus's catalogs (which tables are
//!   sharded, their shards and nodes) and statements sent to its nodes;
//! - ground: [`schedule`] (cron text → fire times, pure Rust), [`clock`] (time behind an
//!   interface), [`errors`], [`gucs`] (settings), [`pgtime`] (PostgreSQL's timestamps).
//!
//! `sql/`: tables, views, policies, the SQL functions that write rules (`sql/api.sql`), comments,
//! and the upgrade scripts.

use pgrx::prelude::*;

mod api;
mod citus;
mod clock;
mod condition;
mod errors;
mod executor;
mod gucs;
mod history;
mod hooks;
mod inspect;
mod owner;
mod pgtime;
mod rules;
mod schedule;
mod target;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/api.sql", name = "api", requires = ["schema"]);
extension_sql_file!("../sql/finish.sql", name = "finish", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    // SAFETY: reading a flag PostgreSQL sets while it preloads libraries.
    if !unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        errors::refuse(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_token_cleanup must be loaded via shared_preload_libraries",
            "Add pg_token_cleanup to shared_preload_libraries in postgresql.conf \
             (ALTER SYSTEM SET shared_preload_libraries = 'pg_token_cleanup') and restart the server.",
        );
    }
    // No Rust backtrace reaches a client: pgrx attaches one to the DETAIL of an error that crossed
    // into Rust when std captures backtraces, which a server started with RUST_BACKTRACE set would.
    // Set in the postmaster, before it forks anything, so every process of the server inherits it.
    // SAFETY: the postmaster is single-threaded while it preloads libraries.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    worker::registry::init();
    hooks::init();
    worker::launcher::register();
}

/// Settings for the `#[pg_test]` cluster that `cargo pgrx test` starts.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_token_cleanup'"]
    }
}
