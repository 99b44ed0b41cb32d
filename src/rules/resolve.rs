//! Whether a rule's owner, table and archive table are usable, decided in one place for every
//! moment that asks: writing the rule (its trigger refuses it at once, and stores the names in
//! canonical form), running it (the run records why it failed; the table may have gone since the
//! rule was written), and inspecting it (`explain()`, `preview()`, the backlog estimate). The
//! checks are the same; only the words differ, since a writer fixes the statement it just ran and
//! a run's reader fixes the rule.

use crate::errors::Error;
use crate::owner;
use crate::target::{self, ResolvedTable};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// When a rule is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// By the rules table's trigger, for the statement writing the rule.
    Writing,
    /// By a run, or by the functions that inspect a rule.
    Running,
}

const TABLE_NAME_HINT: &str =
    "Use the name of an existing table, schema-qualified and quoted as in SQL: \
     'public.refresh_tokens', 'dbo.\"ClientAccessTokens\"'.";
const ARCHIVE_HINT: &str = "Name a table with the source's columns (any order, same types); extra columns need defaults, e.g. archived_at timestamptz DEFAULT now().";
const ARCHIVE_FIX: &str = "Fix the archive table or set the rule's archive_table to NULL.";

/// The OID of role `owner`, the owner of rule `rule`.
pub fn owner(rule: &str, owner: &str, when: When) -> Result<pg_sys::Oid, Error> {
    owner::role_oid(owner).ok_or_else(|| {
        Error::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("owner role \"{owner}\" of rule \"{rule}\" does not exist"),
        )
        .with_hint(match when {
            When::Writing => "Name an existing role; the rule's deletes run with its privileges.",
            When::Running => "Make an existing role the rule's owner (as a superuser).",
        })
    })
}

/// The table `name` of rule `rule`, as `regclass` input reads it with the current `search_path`:
/// it exists and is a kind of relation a rule may clean.
pub fn table(rule: &str, name: &str, when: When) -> Result<ResolvedTable, Error> {
    let table = match (target::lookup_table(name), when) {
        (Ok(Some(t)), _) => t,
        (Ok(None), When::Writing) => {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("table \"{name}\" of rule \"{rule}\" does not exist"),
            )
            .with_hint(TABLE_NAME_HINT))
        }
        (Ok(None), When::Running) => {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("table {name} of rule \"{rule}\" does not exist (dropped or renamed?)"),
            )
            .with_hint(
                "Point the rule at the table again: UPDATE token_cleanup.rules SET table_name = … WHERE name = ….",
            ))
        }
        (Err(why), When::Writing) => {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_INVALID_NAME,
                format!("invalid table_name \"{name}\" for rule \"{rule}\": {why}"),
            )
            .with_hint(TABLE_NAME_HINT))
        }
        (Err(why), When::Running) => {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_INVALID_NAME,
                format!("invalid table name {name}: {why}"),
            ))
        }
    };
    // Not a plain table, or a Citus table that cannot be purged shard by shard.
    let refusal = target::unsupported_kind(table.oid)
        .map(|r| (PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE, r))
        .or_else(|| {
            crate::citus::unsupported(table.oid)
                .map(|r| (PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, r))
        });
    if let Some((sqlstate, (what, fix))) = refusal {
        let subject = match when {
            When::Writing => format!("table_name {} of rule \"{rule}\"", table.qualified_name),
            When::Running => format!("table {}", table.qualified_name),
        };
        return Err(Error::new(sqlstate, format!("{subject} {what}")).with_hint(fix));
    }
    Ok(table)
}

/// The role rule `rule`'s code runs as on `table` (see `owner::run_as`), which must hold DELETE on
/// it.
pub fn deleting_role(
    rule: &str,
    table: &ResolvedTable,
    owner_oid: pg_sys::Oid,
    when: When,
) -> Result<pg_sys::Oid, Error> {
    let role = owner::run_as(owner_oid, table.oid);
    if has_privilege(table.oid, role, pg_sys::ACL_DELETE) {
        return Ok(role);
    }
    let role_name = owner::role_name(role);
    Err(match when {
        When::Writing => {
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
            Error::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("{who} has no DELETE privilege on table {}", table.qualified_name),
            )
            .with_hint(format!(
                "GRANT DELETE, SELECT ON {} TO {}; {fix}",
                table.qualified_name,
                pgrx::spi::quote_identifier(&role_name)
            ))
        }
        When::Running => Error::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "role \"{role_name}\", as whom rule \"{rule}\" runs, has no DELETE privilege on table {}",
                table.qualified_name
            ),
        )
        .with_hint("Grant DELETE on the table to that role, or delete the rule."),
    })
}

/// The archive table `name` of rule `rule` on `source`: a plain table other than the source, with
/// every column of the source (by name, same type) and defaults for its others, into which `role`
/// (as whom the rule runs) may insert, and which `role` owns. Returns it with the columns the
/// batches move. `check_contents: false` (a restore writing the rule) checks only that it exists
/// and its kind: the contents and grants come later in a restore.
pub fn archive(
    rule: &str,
    source: &ResolvedTable,
    role: pg_sys::Oid,
    name: &str,
    when: When,
    check_contents: bool,
) -> Result<(ResolvedTable, Vec<String>), Error> {
    let hint = match when {
        When::Writing => ARCHIVE_HINT,
        When::Running => ARCHIVE_FIX,
    };
    let archive = match (target::lookup_table(name), when) {
        (Ok(Some(a)), _) => a,
        (Ok(None), When::Writing) => {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("archive_table \"{name}\" of rule \"{rule}\" does not exist"),
            )
            .with_hint(hint))
        }
        (Err(why), When::Writing) => {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_INVALID_NAME,
                format!("invalid archive_table \"{name}\" for rule \"{rule}\": {why}"),
            )
            .with_hint(hint))
        }
        (_, When::Running) => {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!(
                    "archive_table {name} of rule \"{rule}\" does not exist (dropped or renamed?)"
                ),
            )
            .with_hint(hint))
        }
    };
    if archive.oid == source.oid {
        return Err(Error::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "archive_table of rule \"{rule}\" is its own table {}",
                source.qualified_name
            ),
        )
        .with_hint(hint));
    }
    if let Some((what, fix)) = target::unsupported_kind(archive.oid) {
        return Err(Error::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "archive_table {} of rule \"{rule}\" {what}",
                archive.qualified_name
            ),
        )
        .with_hint(fix));
    }
    if crate::citus::kind(source.oid).is_some()
        && !crate::citus::archive_colocated(source.oid, archive.oid)
    {
        return Err(Error::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "archive_table {} of rule \"{rule}\" is not co-located with Citus table {}: each batch moves a shard's rows into the archive's shard on the same node",
                archive.qualified_name, source.qualified_name
            ),
        )
        .with_hint(format!(
            "Distribute the archive co-located with the table: SELECT create_distributed_table('{}', '<distribution column>', colocate_with => '{}'); a Citus-local table cannot be archived by a rule.",
            archive.qualified_name, source.qualified_name
        )));
    }
    if !check_contents {
        return Ok((archive, Vec::new()));
    }
    let columns = target::archive_columns(source, &archive).map_err(|why| {
        Error::new(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "archive_table {} of rule \"{rule}\" does not fit table {}: {why}",
                archive.qualified_name, source.qualified_name
            ),
        )
        .with_hint(hint)
    })?;
    if !has_privilege(archive.oid, role, pg_sys::ACL_INSERT) {
        let role_name = owner::role_name(role);
        return Err(Error::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "role \"{role_name}\", as whom rule \"{rule}\" runs, has no INSERT privilege on archive_table {}",
                archive.qualified_name
            ),
        )
        .with_hint(format!(
            "GRANT INSERT ON {} TO {};",
            archive.qualified_name,
            pgrx::spi::quote_identifier(&role_name)
        )));
    }
    target::archive_owned_by(&archive, rule, role)?;
    Ok((archive, columns))
}

/// Whether `role` holds `privilege` (an `ACL_*` bit) on relation `oid`.
pub fn has_privilege(oid: pg_sys::Oid, role: pg_sys::Oid, privilege: u32) -> bool {
    // SAFETY: a catalog privilege check.
    unsafe {
        pg_sys::pg_class_aclcheck(oid, role, privilege as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    }
}
