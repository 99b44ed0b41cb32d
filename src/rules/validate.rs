//! The rules table's BEFORE INSERT OR UPDATE trigger, `token_cleanup.rules_before_write()`: the
//! bookkeeping of every written row (owner defaulted to the current user, `id` and `created_at`
//! kept on UPDATE, `updated_at`), the owner's right to change it, and the validation of each field,
//! read from NEW by column name: a bad field is refused with an error that names it and the fix.
//! Table names are stored in their canonical, schema-qualified and quoted form, so that a rule
//! shows exactly which table it deletes from.
//!
//! It runs as the writing role, with its `search_path`: `table_name` is resolved as regclass input
//! is, then stored qualified.

use super::columns::{self, Row, SqlName, Tuple};
use super::{current_user_name, MAX_NAME_LEN};
use crate::condition;
use crate::errors::refuse;
use crate::gucs;
use crate::owner::{self, Limits};
use crate::schedule::{Schedule, SCHEDULE_HINT};
use crate::target::{self, ResolvedTable};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::trigger_support::{PgTrigger, PgTriggerOperation};
use pgrx::{AllocatedByPostgres, PgTupleDesc};

extension_sql!(
    r#"
-- Every INSERT and UPDATE of a rule: its bookkeeping and validation (rules_before_write()).
CREATE TRIGGER rules_validate BEFORE INSERT OR UPDATE ON token_cleanup.rules
    FOR EACH ROW EXECUTE FUNCTION token_cleanup.rules_before_write();
"#,
    name = "rules_validate",
    requires = [rules_before_write]
);

/// The trigger: the row to write, completed and checked.
#[pg_trigger]
fn rules_before_write<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    let data = trigger.trigger_data();
    // SAFETY: the relation of a firing trigger, and its tuples (NEW is tg_trigtuple on INSERT,
    // tg_newtuple on UPDATE; OLD is tg_trigtuple on UPDATE), valid for this call.
    let desc = unsafe { (*data.tg_relation).rd_att };
    let insert = matches!(trigger.op(), Ok(PgTriggerOperation::Insert));
    let original = if insert {
        data.tg_trigtuple
    } else {
        data.tg_newtuple
    };
    // SAFETY: as above.
    let mut new = unsafe { Tuple::deform(original, desc) };
    // SAFETY: reading the start of the current transaction, as now() does.
    let now =
        TimestampWithTimeZone::try_from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() })
            .expect("the transaction's start is a valid timestamp");
    if insert {
        if new.column::<SqlName>("owner").is_none() {
            new.set("owner", Some(SqlName(current_user_name())));
        }
        new.set("created_at", Some(now));
    } else {
        // SAFETY: as above.
        let old = unsafe { Tuple::deform(data.tg_trigtuple, desc) };
        refuse_unless_owner(&old);
        new.set("id", old.column::<i64>("id"));
        new.set(
            "created_at",
            old.column::<TimestampWithTimeZone>("created_at"),
        );
    }
    new.set("updated_at", Some(now));
    let (table, archive) = check_row(&new);
    new.set("table_name", Some(table));
    new.set("archive_table", archive);
    // SAFETY: `new` was deformed from `original`, described by the relation's descriptor.
    Ok(Some(unsafe {
        PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked(desc), new.form(original))
    }))
}

/// Row-level security keeps other roles' rules out of reach, except for a BYPASSRLS role, which
/// could otherwise rewrite a rule that runs as its owner.
fn refuse_unless_owner(old: &impl Row) {
    let owner = old
        .column::<SqlName>("owner")
        .map(|n| n.0)
        .unwrap_or_default();
    // SAFETY: a catalog check of the current user.
    if owner != current_user_name() && !unsafe { pg_sys::superuser() } {
        let name = old.column::<String>("name").unwrap_or_default();
        refuse(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("rule \"{name}\" belongs to role \"{owner}\": only its owner or a superuser may change it"),
            "Ask the rule's owner, or a superuser, to change it.",
        );
    }
}

/// Checks every field of `row`, in a fixed order (the first bad one is reported); returns the
/// canonical names of its table and archive table.
fn check_row(row: &impl Row) -> (String, Option<String>) {
    let name = row.column::<String>("name");
    let name = required(
        "name",
        name.as_deref(),
        "Give the rule a unique name, e.g. 'refresh_tokens'.",
    );
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid rule name \"{name}\": a name has 1 to {MAX_NAME_LEN} characters"),
            "Give the rule a short unique name, e.g. 'refresh_tokens'.",
        );
    }
    let seconds = |column: &str| row.column::<Interval>(column).map(|i| columns::seconds(&i));
    let owner = row.column::<SqlName>("owner").map(|n| n.0);
    let owner_oid = check_owner(name, owner.as_deref());
    let timezone = check_timezone(name, row.column::<String>("timezone").as_deref());
    let schedule = row.column::<String>("schedule");
    let schedule = required("schedule", schedule.as_deref(), SCHEDULE_HINT);
    check_schedule(name, schedule, timezone);
    check_batch_size(name, row.column("batch_size"));
    check_timeout(name, "lock_timeout", seconds("lock_timeout"));
    check_timeout(name, "statement_timeout", seconds("statement_timeout"));
    check_max_rows_per_second(name, row.column("max_rows_per_second"));
    check_max_run_duration(name, seconds("max_run_duration"));
    check_blast_radius(
        name,
        row.column("max_rows_per_run"),
        row.column("max_fraction"),
    );
    let table_name = row.column::<String>("table_name");
    let table_name = required(
        "table_name",
        table_name.as_deref(),
        "Name the table to clean, e.g. 'public.refresh_tokens' or 'dbo.\"ClientAccessTokens\"'.",
    );
    let restoring = restoring();
    let table = check_table(name, table_name, owner_oid, restoring);
    let condition = row.column::<String>("condition");
    let condition = required(
        "condition",
        condition.as_deref(),
        "Give a boolean expression such as 'expires_at < now()'.",
    );
    check_condition(name, &table, condition, owner_oid, restoring);
    let drop_partitions = row.column::<String>("drop_partitions");
    check_drop_partitions(name, &table, drop_partitions.as_deref().unwrap_or("never"));
    let archive = row
        .column::<String>("archive_table")
        .map(|a| check_archive(name, &table, &a, owner_oid, restoring));
    check_pacing(name, row);
    (table.qualified_name, archive)
}

/// Pacing limits: a replica lag that is not negative, a WAL rate that is a rate.
fn check_pacing(rule: &str, row: &impl Row) {
    if let Some(lag) = row.column::<Interval>("max_replica_lag") {
        if columns::seconds(&lag) < 0.0 {
            refuse(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("max_replica_lag of rule \"{rule}\" must not be negative, got {}", output_text(lag)),
                "Give the replica lag at which runs pause between batches, e.g. '1 second', 0 for off, or NULL for pg_token_cleanup.max_replica_lag.",
            );
        }
    }
    if let Some(rate) = row.column::<f32>("max_wal_rate") {
        if rate < 0.0 || rate.is_nan() {
            refuse(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!("max_wal_rate {} of rule \"{rule}\" is not a rate", output_text(rate)),
                "Give the MB of WAL per second a run may write, e.g. 16, 0 for no limit, or NULL for pg_token_cleanup.max_wal_rate.",
            );
        }
    }
}

/// `value` as PostgreSQL prints it (the output function of its type), as errors quote values.
fn output_text<T: IntoDatum>(value: T) -> String {
    let mut output = pg_sys::Oid::INVALID;
    let mut varlena = false;
    let datum = value.into_datum().expect("a value");
    // SAFETY: the type's output function, given a datum of that type; the result is a palloc'd C
    // string.
    unsafe {
        pg_sys::getTypeOutputInfo(T::type_oid(), &mut output, &mut varlena);
        let text = pg_sys::OidOutputFunctionCall(output, datum);
        std::ffi::CStr::from_ptr(text)
            .to_string_lossy()
            .into_owned()
    }
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
    let checked = crate::owner::as_role(role, limits, || condition::check_semantics(table, text))
        .unwrap_or_else(|e| e.raise());
    if let Err(why) = checked {
        condition::refuse_condition(rule, text, &why, &table.qualified_name);
    }
}
