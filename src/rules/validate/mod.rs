//! The rules table's BEFORE INSERT OR UPDATE trigger, `token_cleanup.rules_before_write()`: the
//! bookkeeping of every written row (owner defaulted to the current user, `id` and `created_at`
//! kept on UPDATE, `updated_at`), the owner's right to change it, and the validation of each field,
//! read from NEW by column name: a bad field is refused with an error that names it and the fix.
//! Table names are stored in their canonical, schema-qualified and quoted form, so that a rule
//! shows exactly which table it deletes from.
//!
//! It runs as the writing role, with its `search_path`: `table_name` is resolved as regclass input
//! is, then stored qualified.

mod fields;

use super::columns::{self, Row, SqlName, Tuple};
use super::resolve::{self, When};
use super::{current_user_name, MAX_NAME_LEN};
use crate::condition;
use crate::errors::refuse;
use crate::gucs;
use crate::owner::{self, Limits};
use crate::schedule::SCHEDULE_HINT;
use crate::target::ResolvedTable;
use fields::*;
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
    if crate::citus::is_worker_node() {
        crate::errors::refuse(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "this node is a Citus worker: rules are written and run on the coordinator",
            "Connect to the coordinator and write the rule there; its runs purge the shards on this node.",
        );
    }
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
    check_parallel_workers(name, row.column("parallel_workers"));
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
    resolve::owner(rule, owner, When::Writing).unwrap_or_else(|e| e.raise())
}

/// The archive table, as [`resolve::archive`] checks it (while restoring, only its existence and
/// kind). Returns its canonical name.
fn check_archive(
    rule: &str,
    source: &ResolvedTable,
    name: &str,
    owner_oid: pg_sys::Oid,
    restoring: bool,
) -> String {
    let role = owner::run_as(owner_oid, source.oid);
    match resolve::archive(rule, source, role, name, When::Writing, !restoring) {
        Ok((archive, _)) => archive.qualified_name,
        Err(e) => e.raise(),
    }
}

fn check_table(
    rule: &str,
    table_name: &str,
    owner_oid: pg_sys::Oid,
    restoring: bool,
) -> ResolvedTable {
    let table = resolve::table(rule, table_name, When::Writing).unwrap_or_else(|e| e.raise());
    if !restoring {
        resolve::deleting_role(rule, &table, owner_oid, When::Writing)
            .unwrap_or_else(|e| e.raise());
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

/// The C symbol of `token_cleanup.check_rule(…)`, which validated rules from 0.1.0 to 0.5.0. The
/// upgrade scripts of those versions create that function, and PostgreSQL checks that its symbol
/// exists when they run against this library on the way to 0.6.0, whose script drops it. Nothing
/// calls it: since 0.6.0 the trigger itself validates.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn check_rule_wrapper(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    refuse(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "token_cleanup.check_rule() no longer exists: the rules table's trigger validates rules",
        "Finish the update: ALTER EXTENSION pg_token_cleanup UPDATE.",
    )
}

/// Version-1 calling convention of [`check_rule_wrapper`], as PostgreSQL asks of every C function.
#[unsafe(no_mangle)]
pub extern "C" fn pg_finfo_check_rule_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}
