//! Rules: the [`Rule`] type, loading rules via SPI, and the validation that the rules table's
//! BEFORE INSERT OR UPDATE trigger runs for every row (`token_cleanup.check_rule`).

use crate::condition;
use crate::errors::refuse;
use crate::gucs;
use crate::owner::{self, Limits};
use crate::schedule::{Schedule, SCHEDULE_HINT};
use crate::target::{self, ResolvedTable};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Longest rule name accepted.
pub const MAX_NAME_LEN: usize = 200;

/// A row of `token_cleanup.rules`, as the scheduler and the executor use it (and as a runner
/// receives it, see `worker::handoff`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    pub id: i64,
    pub name: String,
    pub table_name: String,
    pub condition: String,
    pub schedule: String,
    pub batch_size: Option<i32>,
    pub enabled: bool,
    pub owner: String,
    pub lock_timeout_ms: Option<i64>,
    pub statement_timeout_ms: Option<i64>,
    pub max_rows_per_second: Option<i32>,
    pub max_run_duration_ms: Option<i64>,
    /// IANA time zone of the schedule; NULL: pg_token_cleanup.timezone.
    pub timezone: Option<String>,
    /// The table each batch moves its rows to (canonical name), if any.
    pub archive_table: Option<String>,
    pub max_rows_per_run: Option<i64>,
    pub max_fraction: Option<f32>,
    /// `never`, `detach` or `drop`: what a run does with a leaf partition all of whose rows match.
    pub drop_partitions: String,
    /// Pacing (see `executor::pacing`); NULL: the settings of the same names.
    pub max_replica_lag_ms: Option<i64>,
    pub max_wal_rate_mb: Option<f32>,
    pub yield_to_waiters: Option<bool>,
    /// Seconds since the epoch of the rule's last change.
    pub updated_at: f64,
}

impl Rule {
    /// Rows per batch: the rule's own size, else the setting.
    pub fn effective_batch_size(&self) -> i32 {
        self.batch_size.unwrap_or_else(gucs::batch_size)
    }

    /// The pace a run may not exceed on average (rows deleted per second; 0 = no limit): the rule's
    /// own, else the setting.
    pub fn effective_max_rows_per_second(&self) -> u32 {
        self.max_rows_per_second
            .unwrap_or_else(gucs::max_rows_per_second)
            .max(0) as u32
    }

    /// How long a run may go on before it stops between batches: the rule's own, lowered to
    /// pg_token_cleanup.max_run_duration; `None`: no limit.
    pub fn max_run_duration(&self) -> Option<std::time::Duration> {
        let own = self
            .max_run_duration_ms
            .filter(|ms| *ms > 0)
            .map(|ms| std::time::Duration::from_millis(ms as u64));
        match (own, gucs::max_run_duration()) {
            (Some(own), Some(ceiling)) => Some(own.min(ceiling)),
            (own, ceiling) => own.or(ceiling),
        }
    }

    /// The time zone the rule's schedule is evaluated in: its own, else the setting.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.timezone
            .as_deref()
            .and_then(gucs::parse_timezone)
            .unwrap_or_else(gucs::timezone)
    }

    /// The largest fraction of live rows a run may delete (1: no limit): the rule's own, else the
    /// setting.
    pub fn effective_max_fraction(&self) -> f64 {
        self.max_fraction
            .map(f64::from)
            .unwrap_or_else(gucs::max_fraction)
    }

    /// What a run is paced by: the rule's own limits, else the settings; 0 is off.
    pub fn pace_limits(&self) -> crate::executor::pacing::PaceLimits {
        let lag_ms = self
            .max_replica_lag_ms
            .unwrap_or_else(gucs::max_replica_lag_ms);
        let wal_mb = self
            .max_wal_rate_mb
            .map(f64::from)
            .unwrap_or_else(gucs::max_wal_rate_mb);
        crate::executor::pacing::PaceLimits {
            max_replica_lag: (lag_ms > 0).then(|| std::time::Duration::from_millis(lag_ms as u64)),
            max_wal_rate: (wal_mb > 0.0).then_some(wal_mb * 1024.0 * 1024.0),
            yield_to_waiters: self.yield_to_waiters.unwrap_or_else(gucs::yield_to_waiters),
        }
    }

    /// Timeouts: the rule's own, else the settings.
    pub fn limits(&self) -> Limits {
        let clamp = |v: i64| v.clamp(0, i64::from(i32::MAX)) as i32;
        Limits {
            lock_timeout_ms: self
                .lock_timeout_ms
                .map(clamp)
                .unwrap_or_else(gucs::lock_timeout_ms),
            statement_timeout_ms: capped(
                self.statement_timeout_ms
                    .map(clamp)
                    .unwrap_or_else(gucs::statement_timeout_ms),
                gucs::max_statement_timeout_ms(),
            ),
        }
    }
}

/// A timeout (0: none) lowered to a ceiling (0: none): a rule cannot exceed the DBA's ceiling, nor
/// turn it off with 0.
fn capped(timeout_ms: i32, ceiling_ms: i32) -> i32 {
    match (timeout_ms, ceiling_ms) {
        (t, 0) => t,
        (0, c) => c,
        (t, c) => t.min(c),
    }
}

const RULE_COLUMNS: &str = "r.id, r.name, r.table_name, r.condition, r.schedule, r.batch_size, r.enabled, \
     r.owner::text, (extract(epoch FROM r.lock_timeout) * 1000)::int8, \
     (extract(epoch FROM r.statement_timeout) * 1000)::int8, extract(epoch FROM r.updated_at)::float8, \
     r.max_rows_per_second, (extract(epoch FROM r.max_run_duration) * 1000)::int8, r.timezone, \
     r.archive_table, r.max_rows_per_run, r.max_fraction, r.drop_partitions, \
     (extract(epoch FROM r.max_replica_lag) * 1000)::int8, r.max_wal_rate, r.yield_to_waiters";

fn rule_from_row(row: &pgrx::spi::SpiHeapTupleData) -> pgrx::spi::Result<Rule> {
    Ok(Rule {
        id: row.get(1)?.unwrap_or_default(),
        name: row.get(2)?.unwrap_or_default(),
        table_name: row.get(3)?.unwrap_or_default(),
        condition: row.get(4)?.unwrap_or_default(),
        schedule: row.get(5)?.unwrap_or_default(),
        batch_size: row.get(6)?,
        enabled: row.get(7)?.unwrap_or(false),
        owner: row.get(8)?.unwrap_or_default(),
        lock_timeout_ms: row.get(9)?,
        statement_timeout_ms: row.get(10)?,
        updated_at: row.get(11)?.unwrap_or_default(),
        max_rows_per_second: row.get(12)?,
        max_run_duration_ms: row.get(13)?,
        timezone: row.get(14)?,
        archive_table: row.get(15)?,
        max_rows_per_run: row.get(16)?,
        max_fraction: row.get(17)?,
        drop_partitions: row.get(18)?.unwrap_or_else(|| "never".into()),
        max_replica_lag_ms: row.get(19)?,
        max_wal_rate_mb: row.get(20)?,
        yield_to_waiters: row.get(21)?,
    })
}

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
    let sql = format!(
        "SELECT {RULE_COLUMNS}, \
           (SELECT extract(epoch FROM h.started_at)::float8 \
              FROM token_cleanup.runs h WHERE h.rule_id = r.id AND h.trigger IN ('schedule', 'retry') \
             ORDER BY h.started_at DESC LIMIT 1) AS last_run, \
           r.xmin::text::int8 AS version \
         FROM token_cleanup.rules r WHERE r.enabled {filter} ORDER BY r.id"
    );
    let args = only
        .map(|ids| vec![ids.to_vec().into()])
        .unwrap_or_default();
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(sql.as_str(), None, &args)? {
            out.push(LoadedRule {
                rule: rule_from_row(&row)?,
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
    let sql = format!("SELECT {RULE_COLUMNS} FROM token_cleanup.rules r WHERE {filter}");
    Spi::connect(|client| {
        let rows = client.select(sql.as_str(), Some(1), &[arg])?;
        match rows.into_iter().next() {
            Some(row) => Ok::<_, pgrx::spi::Error>(Some(rule_from_row(&row)?)),
            None => Ok(None),
        }
    })
    .expect("reading token_cleanup.rules")
}

/// One rule by id (as the worker sees it), `None` if it no longer exists.
pub fn load_rule_by_id(id: i64) -> Option<Rule> {
    one_rule("r.id = $1", id.into())
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
    // SAFETY: GetUserId is always valid in a transaction; the name is a palloc'd C string.
    unsafe {
        CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false))
            .to_string_lossy()
            .into_owned()
    }
}

/// Validates one rule row; called by the rules table's BEFORE INSERT OR UPDATE trigger. Refuses a bad
/// field with an error naming it and the fix; returns the table name in canonical form, which the
/// trigger stores so that the rule shows exactly which table it deletes from.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn check_rule(
    name: Option<&str>,
    table_name: Option<&str>,
    condition: Option<&str>,
    schedule: Option<&str>,
    batch_size: Option<i32>,
    owner: Option<&str>,
    lock_timeout_s: Option<f64>,
    statement_timeout_s: Option<f64>,
    max_rows_per_second: Option<i32>,
    max_run_duration_s: Option<f64>,
    timezone: Option<&str>,
    archive_table: Option<&str>,
    max_rows_per_run: Option<i64>,
    max_fraction: Option<f32>,
    drop_partitions: Option<&str>,
) -> Vec<Option<String>> {
    let name = required(
        "name",
        name,
        "Give the rule a unique name, e.g. 'refresh_tokens'.",
    );
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid rule name \"{name}\": a name has 1 to {MAX_NAME_LEN} characters"),
            "Give the rule a short unique name, e.g. 'refresh_tokens'.",
        );
    }
    let owner_oid = check_owner(name, owner);
    let timezone = check_timezone(name, timezone);
    let schedule = required("schedule", schedule, SCHEDULE_HINT);
    check_schedule(name, schedule, timezone);
    check_batch_size(name, batch_size);
    check_timeout(name, "lock_timeout", lock_timeout_s);
    check_timeout(name, "statement_timeout", statement_timeout_s);
    check_max_rows_per_second(name, max_rows_per_second);
    check_max_run_duration(name, max_run_duration_s);
    check_blast_radius(name, max_rows_per_run, max_fraction);
    let table_name = required(
        "table_name",
        table_name,
        "Name the table to clean, e.g. 'public.refresh_tokens' or 'dbo.\"ClientAccessTokens\"'.",
    );
    let restoring = restoring();
    let table = check_table(name, table_name, owner_oid, restoring);
    let condition = required(
        "condition",
        condition,
        "Give a boolean expression such as 'expires_at < now()'.",
    );
    check_condition(name, &table, condition, owner_oid, restoring);
    check_drop_partitions(name, &table, drop_partitions.unwrap_or("never"));
    let archive = archive_table.map(|a| check_archive(name, &table, a, owner_oid, restoring));
    vec![Some(table.qualified_name), archive]
}

/// Whether rules are being restored (pg_dump's output, pg_restore): PostgreSQL's own signal for
/// it, `check_function_bodies = off`, which every dump sets and under which CREATE FUNCTION checks
/// syntax only. A restore loads the rules before it grants privileges, and whoever restores is
/// usually a superuser: so the rule's syntax is checked but nothing of its owner's is evaluated, and
/// its privileges are not checked yet. A role that sets it itself gains nothing: every run checks
/// everything again as the role the rule runs as.
fn restoring() -> bool {
    // SAFETY: reading a GUC variable of this backend.
    !unsafe { pg_sys::check_function_bodies }
}

fn required<'a>(field: &str, value: Option<&'a str>, hint: &str) -> &'a str {
    value.unwrap_or_else(|| {
        refuse(
            PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
            format!("rule field \"{field}\" must not be NULL"),
            hint,
        )
    })
}

fn check_owner(rule: &str, owner: Option<&str>) -> pg_sys::Oid {
    let owner = required(
        "owner",
        owner,
        "Leave owner unset: it defaults to current_user.",
    );
    let me = current_user_name();
    // SAFETY: plain catalog check of the current user.
    let superuser = unsafe { pg_sys::superuser() };
    if owner != me && !superuser {
        refuse(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to make role \"{owner}\" the owner of rule \"{rule}\""),
            format!("Only a superuser may set another role as owner; leave owner unset to own the rule as \"{me}\"."),
        );
    }
    owner::role_oid(owner).unwrap_or_else(|| {
        refuse(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("owner role \"{owner}\" of rule \"{rule}\" does not exist"),
            "Name an existing role; the rule's deletes run with its privileges.",
        )
    })
}

/// The rule's own time zone, checked as the setting is; `None` when it has none.
fn check_timezone(rule: &str, timezone: Option<&str>) -> chrono_tz::Tz {
    match timezone {
        None => gucs::timezone(),
        Some(name) => gucs::parse_timezone(name).unwrap_or_else(|| {
            refuse(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid timezone \"{name}\" for rule \"{rule}\""),
                "Use an IANA time zone name such as UTC, Europe/Berlin or America/New_York, or NULL for pg_token_cleanup.timezone.",
            )
        }),
    }
}

fn check_schedule(rule: &str, schedule: &str, timezone: chrono_tz::Tz) {
    let now = chrono::Utc::now().with_timezone(&timezone);
    if let Err(e) = Schedule::parse_firing(schedule, &now) {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid schedule \"{schedule}\" for rule \"{rule}\": {e}"),
            SCHEDULE_HINT,
        );
    }
}

fn check_batch_size(rule: &str, batch_size: Option<i32>) {
    if let Some(size) = batch_size {
        if !(1..=gucs::MAX_BATCH_SIZE).contains(&size) {
            refuse(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!(
                    "batch_size {size} of rule \"{rule}\" is out of range 1-{}",
                    gucs::MAX_BATCH_SIZE
                ),
                format!(
                    "Leave batch_size NULL to use pg_token_cleanup.batch_size (now {}); a few thousand rows per batch keeps each transaction short.",
                    gucs::batch_size()
                ),
            );
        }
    }
}

fn check_max_rows_per_second(rule: &str, rate: Option<i32>) {
    if let Some(rate) = rate.filter(|r| *r < 0) {
        refuse(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("max_rows_per_second {rate} of rule \"{rule}\" is negative"),
            format!(
                "Give the most rows a run may delete per second on average, 0 for no limit, or NULL to use pg_token_cleanup.max_rows_per_second (now {}).",
                gucs::max_rows_per_second()
            ),
        );
    }
}

fn check_drop_partitions(rule: &str, table: &ResolvedTable, mode: &str) {
    if !matches!(mode, "never" | "detach" | "drop") {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid drop_partitions \"{mode}\" for rule \"{rule}\""),
            "Use 'never' (delete row by row), 'detach' or 'drop' (whole partitions all of whose rows match).",
        );
    }
    // SAFETY: syscache lookup.
    let partitioned = unsafe { pg_sys::get_rel_relkind(table.oid) } as u8 == b'p';
    if mode != "never" && !partitioned {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "drop_partitions '{mode}' of rule \"{rule}\" needs a partitioned table; {} is not one",
                table.qualified_name
            ),
            "Leave drop_partitions 'never' for a plain table.",
        );
    }
}

fn check_blast_radius(rule: &str, max_rows: Option<i64>, max_fraction: Option<f32>) {
    if let Some(rows) = max_rows.filter(|r| *r < 1) {
        refuse(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("max_rows_per_run {rows} of rule \"{rule}\" must be at least 1"),
            "Give the most rows one run may delete, or NULL for no limit.",
        );
    }
    if let Some(f) = max_fraction.filter(|f| !(*f > 0.0 && *f <= 1.0)) {
        refuse(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("max_fraction {f} of rule \"{rule}\" is out of range (0, 1]"),
            "Give the largest fraction of the table's live rows one run may delete, e.g. 0.2, or NULL for pg_token_cleanup.max_fraction.",
        );
    }
}

/// The archive table: a plain table with every column of the source (by name, same type), whose
/// other columns can be left to their defaults, into which the role the rule runs as may insert.
/// Returns its canonical name. While restoring, only its existence and kind are checked.
fn check_archive(
    rule: &str,
    source: &ResolvedTable,
    name: &str,
    owner_oid: pg_sys::Oid,
    restoring: bool,
) -> String {
    let hint = "Name a table with the source's columns (any order, same types); extra columns need defaults, e.g. archived_at timestamptz DEFAULT now().";
    let archive = match target::lookup_table(name) {
        Ok(Some(t)) => t,
        Ok(None) => refuse(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("archive_table \"{name}\" of rule \"{rule}\" does not exist"),
            hint,
        ),
        Err(why) => refuse(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("invalid archive_table \"{name}\" for rule \"{rule}\": {why}"),
            hint,
        ),
    };
    if archive.oid == source.oid {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "archive_table of rule \"{rule}\" is its own table {}",
                source.qualified_name
            ),
            hint,
        );
    }
    if let Some((what, fix)) = target::unsupported_kind(archive.oid) {
        refuse(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "archive_table {} of rule \"{rule}\" {what}",
                archive.qualified_name
            ),
            fix,
        );
    }
    if restoring {
        return archive.qualified_name;
    }
    if let Err(why) = target::archive_columns(source, &archive) {
        refuse(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "archive_table {} of rule \"{rule}\" does not fit table {}: {why}",
                archive.qualified_name, source.qualified_name
            ),
            hint,
        );
    }
    let role = owner::run_as(owner_oid, source.oid);
    // SAFETY: catalog privilege check.
    let can_insert = unsafe {
        pg_sys::pg_class_aclcheck(archive.oid, role, pg_sys::ACL_INSERT as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    };
    if !can_insert {
        let role_name = owner::role_name(role);
        refuse(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "role \"{role_name}\", as whom rule \"{rule}\" runs, has no INSERT privilege on archive_table {}",
                archive.qualified_name
            ),
            format!(
                "GRANT INSERT ON {} TO {};",
                archive.qualified_name,
                pgrx::spi::quote_identifier(&role_name)
            ),
        );
    }
    if let Err(e) = target::archive_owned_by(&archive, rule, role) {
        e.raise();
    }
    archive.qualified_name
}

fn check_max_run_duration(rule: &str, seconds: Option<f64>) {
    if let Some(s) = seconds.filter(|s| !(*s > 0.0 && *s <= 1e9)) {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_run_duration of rule \"{rule}\" must be positive, got {s} seconds"),
            "Give the longest a run may go on, e.g. '10 minutes' (it stops between batches and the rest goes in the next run), or NULL for no limit.",
        );
    }
}

fn check_timeout(rule: &str, field: &str, seconds: Option<f64>) {
    if let Some(s) = seconds {
        if !(0.0..=f64::from(i32::MAX) / 1000.0).contains(&s) {
            refuse(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "{field} of rule \"{rule}\" must be between 0 and 24 days, got {s} seconds"
                ),
                format!("Leave {field} NULL to use pg_token_cleanup.{field}; 0 means no limit."),
            );
        }
    }
}

fn check_table(
    rule: &str,
    table_name: &str,
    owner_oid: pg_sys::Oid,
    restoring: bool,
) -> ResolvedTable {
    let hint = "Use the name of an existing table, schema-qualified and quoted as in SQL: \
                'public.refresh_tokens', 'dbo.\"ClientAccessTokens\"'.";
    let table = match target::lookup_table(table_name) {
        Ok(Some(t)) => t,
        Ok(None) => refuse(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("table \"{table_name}\" of rule \"{rule}\" does not exist"),
            hint,
        ),
        Err(why) => refuse(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("invalid table_name \"{table_name}\" for rule \"{rule}\": {why}"),
            hint,
        ),
    };
    if let Some((what, fix)) = target::unsupported_kind(table.oid) {
        refuse(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "table_name {} of rule \"{rule}\" {what}",
                table.qualified_name
            ),
            fix,
        );
    }
    if restoring {
        return table;
    }
    let role = owner::run_as(owner_oid, table.oid);
    // SAFETY: catalog privilege check.
    let can_delete = unsafe {
        pg_sys::pg_class_aclcheck(table.oid, role, pg_sys::ACL_DELETE as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    };
    if !can_delete {
        let role_name = owner::role_name(role);
        let (who, fix) = if role == owner_oid {
            (
                format!("owner \"{role_name}\" of rule \"{rule}\""),
                "or make a role that has them the rule's owner.",
            )
        } else {
            (
                format!("table owner \"{role_name}\", as whom superuser rule \"{rule}\" runs,"),
                "a superuser's rule runs as the table's owner.",
            )
        };
        refuse(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "{who} has no DELETE privilege on table {}",
                table.qualified_name
            ),
            format!(
                "GRANT DELETE, SELECT ON {} TO {}; {fix}",
                table.qualified_name,
                pgrx::spi::quote_identifier(&role_name)
            ),
        );
    }
    table
}

/// The condition's syntax always; its meaning (types, boolean, privileges) as the role the rule
/// runs as, except while restoring, when nothing of the owner's is evaluated.
fn check_condition(
    rule: &str,
    table: &ResolvedTable,
    text: &str,
    owner_oid: pg_sys::Oid,
    restoring: bool,
) {
    if let Err(why) = condition::check_syntax(text) {
        condition::refuse_condition(rule, text, &why, &table.qualified_name);
    }
    if restoring {
        return;
    }
    let limits = Limits {
        lock_timeout_ms: gucs::lock_timeout_ms(),
        statement_timeout_ms: 10_000,
    };
    let role = owner::run_as(owner_oid, table.oid);
    let checked =
        crate::executor::as_role(role, limits, || condition::check_semantics(table, text))
            .unwrap_or_else(|e| e.raise());
    if let Err(why) = checked {
        condition::refuse_condition(rule, text, &why, &table.qualified_name);
    }
}

#[cfg(test)]
mod tests {
    use super::capped;

    #[test]
    fn a_ceiling_lowers_a_timeout_and_replaces_none() {
        assert_eq!(capped(5_000, 0), 5_000, "no ceiling");
        assert_eq!(capped(0, 0), 0, "no timeout, no ceiling");
        assert_eq!(capped(5_000, 1_000), 1_000);
        assert_eq!(capped(500, 1_000), 500);
        assert_eq!(
            capped(0, 1_000),
            1_000,
            "a rule cannot turn the ceiling off"
        );
    }
}
