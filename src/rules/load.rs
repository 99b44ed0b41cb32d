//! Every read of `token_cleanup.rules`: the enabled rules and their row versions for the scheduler,
//! one rule by id or by name (as the caller sees it), the extension's installed version.

use super::Rule;
use crate::errors::refuse;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// An enabled rule as the scheduler loads it.
pub struct LoadedRule {
    pub rule: Rule,
    /// Start time (epoch seconds) of its last scheduled run, if any. The start, not the slot it was
    /// due for: after a catch-up run, the next due time is the first slot after the catch-up, so a
    /// restart does not fire the missed slots one by one.
    pub last_scheduled: Option<f64>,
    /// The row's version (see [`enabled_rule_versions`]).
    pub version: i64,
}

/// Each enabled rule's id and row version: the row's `xmin`, which every UPDATE of the row
/// renews. The scheduler compares them with the versions it loaded to read only what changed; a
/// row whose `xmin` reads differently for another reason (a freeze) is merely read again.
/// Runs as the worker (RLS does not apply to it).
pub fn enabled_rule_versions() -> Vec<(i64, i64)> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT id, xmin::text::int8 FROM token_cleanup.rules WHERE enabled",
            None,
            &[],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push((
                row.get::<i64>(1)?.unwrap_or_default(),
                row.get::<i64>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .expect("reading the versions of token_cleanup.rules")
}

/// The enabled rules, all of them or those of `only`, with their last scheduled run and version.
/// Runs as the worker (RLS does not apply to it).
pub fn load_enabled_rules(only: Option<&[i64]>) -> Vec<LoadedRule> {
    let filter = if only.is_some() {
        "AND r.id = ANY($1)"
    } else {
        ""
    };
    let last_run = crate::history::last_scheduled_start_sql("r.id");
    let sql = format!(
        "SELECT r.*, {last_run} AS last_run, r.xmin::text::int8 AS version \
         FROM token_cleanup.rules r WHERE r.enabled {filter} ORDER BY r.id"
    );
    let args = only
        .map(|ids| vec![ids.to_vec().into()])
        .unwrap_or_default();
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(sql.as_str(), None, &args)? {
            out.push(LoadedRule {
                rule: Rule::read(&row),
                last_scheduled: row.get_by_name::<f64, _>("last_run")?,
                version: row.get_by_name::<i64, _>("version")?.unwrap_or_default(),
            });
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .expect("loading token_cleanup.rules")
}

/// The version of the extension's SQL objects in this database when it is not this library's: after
/// the files of a new version are installed and the server restarted, until
/// `ALTER EXTENSION pg_token_cleanup UPDATE` brings the tables and functions along.
pub fn outdated_sql_version() -> Option<String> {
    let installed = Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_token_cleanup'",
    )
    .ok()
    .flatten()?;
    (installed != env!("CARGO_PKG_VERSION")).then_some(installed)
}

/// Refuses to go on while this database's extension is at another version than the library (its
/// tables lack the columns the library reads).
pub fn require_current_version() {
    if let Some(installed) = outdated_sql_version() {
        crate::errors::Error::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "pg_token_cleanup is at version {installed} in this database, but the library loaded is {}",
                env!("CARGO_PKG_VERSION")
            ),
        )
        .with_detail("The server runs a new version of pg_token_cleanup and this database's extension was not updated yet; its rules do not run until then.")
        .with_hint("Run ALTER EXTENSION pg_token_cleanup UPDATE in this database.")
        .raise()
    }
}

/// The rule matching `filter` (a WHERE condition on `r` with one parameter), if any.
fn one_rule(filter: &str, arg: pgrx::datum::DatumWithOid) -> Option<Rule> {
    require_current_version();
    let sql = format!("SELECT r.* FROM token_cleanup.rules r WHERE {filter}");
    Spi::connect(|client| {
        let rows = client.select(sql.as_str(), Some(1), &[arg])?;
        match rows.into_iter().next() {
            Some(row) => Ok::<_, pgrx::spi::Error>(Some(Rule::read(&row))),
            None => Ok(None),
        }
    })
    .expect("reading token_cleanup.rules")
}

/// One rule by name as the *calling user* sees it (row-level security applies), or an error that
/// says it does not exist (another role's rule is indistinguishable from a missing one).
pub fn visible_rule_by_name(name: &str) -> Rule {
    one_rule("r.name = $1", name.into()).unwrap_or_else(|| {
        refuse(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("rule \"{name}\" does not exist"),
            "List your rules with SELECT name FROM token_cleanup.rules; non-superusers see only the rules they own.",
        )
    })
}

/// Name of the current user.
pub fn current_user_name() -> String {
    // SAFETY: reading this backend's current user.
    crate::owner::role_name(unsafe { pg_sys::GetUserId() })
}
