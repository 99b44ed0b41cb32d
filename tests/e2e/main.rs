//! The end-to-end tests, one binary: each module is a suite run against live clusters that its tests
//! start themselves (tests/e2e/common), with the extension installed into the server `PG_BIN` names.
//! A suite runs alone with a filter on its module: `cargo test --test e2e -- worker::`.
//!
//! - [`worker`]: scheduled purges and their records, rule changes, a failing rule isolated, two
//!   databases, SIGTERM mid-run, DROP EXTENSION / DROP DATABASE never blocked;
//! - [`manual_run`]: `run()`, batches, methods, skipped locked rows, WAL compression;
//! - [`reliability`]: crashes, immediate shutdown, locks, timeouts, standby, pg_dump and restore;
//! - [`coordination`]: ordinary roles' rules, terminated schedulers, long purges beside short rules;
//! - [`shared_server`]: the worker budget on PostgreSQL's default settings beside the user's work;
//! - [`pacing`]: replicas, WAL rate, waiters;
//! - [`parallel`]: parallel runs (`parallel_workers`): exact rows, helpers within the budget, stops;
//! - [`operations`], [`recipes`]: the SQL surface as operators and the README's recipes use it;
//! - [`monitoring`]: Prometheus and Debian's prometheus-sql-exporter with the shipped configuration,
//!   the alerts (and their promtool tests), the Grafana dashboard;
//! - [`migrations`]: rules as code: the examples' migrations (plain SQL, Django, Alembic, Knex) and an
//!   application's start-up, run with the real tools, each applied twice;
//! - [`hostile`], [`security`], [`security_bounds`], [`security_rights`], [`security_runs`]: attacks,
//!   each with a positive control;
//! - [`load`]: 10,000 rules and a soak; it runs with no other test beside it;
//! - [`citus`]: rules on Citus tables, on a coordinator and two workers;
//! - [`citus`], [`upgrade`], [`package`]: ignored unless scripts/citus_test.sh, scripts/upgrade_test.sh
//!   and scripts/package_test.sh
//!   run them with what they need.

mod common;

mod citus;
mod coordination;
mod hostile;
mod load;
mod manual_run;
mod migrations;
mod monitoring;
mod operations;
mod pacing;
mod package;
mod parallel;
mod recipes;
mod reliability;
mod security;
mod security_bounds;
mod security_rights;
mod security_runs;
mod shared_server;
mod upgrade;
mod worker;
