//! The table a rule points at: resolved from any spelling `regclass` accepts to one canonical,
//! quoted, schema-qualified name, and checked to be a kind of relation a rule may clean.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// A table resolved to its OID and canonical name.
#[derive(Debug, Clone)]
pub struct ResolvedTable {
    pub oid: pg_sys::Oid,
    /// `schema.table`, each part quoted only where needed: `public.refresh_tokens`, `dbo."ClientAccessTokens"`.
    pub qualified_name: String,
}

/// Resolves `name` with the caller's `search_path`. `None` when no such relation exists; an ERROR for
/// text that is not a valid (possibly qualified, possibly quoted) name.
pub fn lookup_table(name: &str) -> Result<Option<ResolvedTable>, String> {
    let c_name = CString::new(name).map_err(|_| "contains a NUL character".to_string())?;
    let caught = PgTryBuilder::new(|| unsafe {
        // SAFETY: valid C string; stringToQualifiedNameList raises on bad syntax (caught below).
        // PostgreSQL 16 added a soft-error context argument; NULL raises errors as before.
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        let names = pg_sys::stringToQualifiedNameList(c_name.as_ptr());
        #[cfg(not(any(feature = "pg14", feature = "pg15")))]
        let names = pg_sys::stringToQualifiedNameList(c_name.as_ptr(), std::ptr::null_mut());
        let range_var = pg_sys::makeRangeVarFromNameList(names);
        let oid = pg_sys::RangeVarGetRelidExtended(
            range_var,
            pg_sys::NoLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        );
        Ok(oid)
    })
    .catch_others(|e| Err(crate::errors::Error::from_caught(e).message))
    .execute()?;
    if caught == pg_sys::InvalidOid {
        return Ok(None);
    }
    Ok(Some(ResolvedTable {
        oid: caught,
        qualified_name: qualified_name(caught),
    }))
}

/// The archive must belong to the role the rule runs as: its INSERT runs the archive's defaults,
/// triggers, rules and policies as that role, and code another role wrote must not run with rights
/// its author lacks (a superuser's rule would run it as superuser).
pub fn archive_owned_by(
    archive: &ResolvedTable,
    rule: &str,
    role: pg_sys::Oid,
) -> Result<(), crate::errors::Error> {
    let owner = crate::owner::table_owner(archive.oid);
    if owner == role {
        return Ok(());
    }
    let role_name = crate::owner::role_name(role);
    Err(crate::errors::Error::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "archive_table {} of rule \"{rule}\" is owned by role \"{}\", not by role \"{role_name}\", as whom the rule runs",
            archive.qualified_name,
            crate::owner::role_name(owner),
        ),
    )
    .with_hint(format!(
        "The archive's triggers and defaults run as the rule's role: ALTER TABLE {} OWNER TO {};",
        archive.qualified_name,
        pgrx::spi::quote_identifier(&role_name)
    )))
}

/// `schema.table` for a relation OID, quoted as `format('%I.%I')` would.
pub fn qualified_name(oid: pg_sys::Oid) -> String {
    // SAFETY: syscache lookups of an existing relation; results are palloc'd C strings.
    unsafe {
        let rel = pg_sys::get_rel_name(oid);
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(oid));
        if rel.is_null() || nsp.is_null() {
            return format!("{}", u32::from(oid));
        }
        let rel = CStr::from_ptr(rel).to_string_lossy();
        let nsp = CStr::from_ptr(nsp).to_string_lossy();
        format!(
            "{}.{}",
            pgrx::spi::quote_identifier(&*nsp),
            pgrx::spi::quote_identifier(&*rel)
        )
    }
}

/// Why a relation cannot be a rule's target, if it cannot: only plain, permanent tables qualify.
pub fn unsupported_kind(oid: pg_sys::Oid) -> Option<(&'static str, &'static str)> {
    // SAFETY: syscache lookups.
    let (kind, persistence) = unsafe {
        let kind = pg_sys::get_rel_relkind(oid) as u8;
        let persistence = pg_sys::get_rel_persistence(oid) as u8;
        (kind, persistence)
    };
    // SAFETY: catalog lookups.
    let (catalog, own) = unsafe {
        let nsp = pg_sys::get_rel_namespace(oid);
        let name = pg_sys::get_namespace_name(nsp);
        let own = !name.is_null() && CStr::from_ptr(name).to_bytes() == b"token_cleanup";
        (
            pg_sys::IsCatalogRelationOid(oid)
                || pg_sys::IsCatalogNamespace(nsp)
                || pg_sys::IsToastNamespace(nsp),
            own,
        )
    };
    if catalog {
        return Some((
            "is a system catalog",
            "Rules delete application rows; PostgreSQL manages its catalogs itself.",
        ));
    }
    if own {
        return Some((
            "belongs to pg_token_cleanup",
            "History is pruned by pg_token_cleanup.history_retention; rules are removed with DELETE.",
        ));
    }
    match kind {
        b'r' if persistence == b't' => Some((
            "is a temporary table",
            "Temporary tables belong to one session; a rule needs a permanent table.",
        )),
        b'r' => None,
        // A partitioned table: its runs work through its leaf partitions.
        b'p' => None,
        b'v' | b'm' => Some((
            "is a view, not a table",
            "Point the rule at the table the view reads.",
        )),
        b'f' => Some((
            "is a foreign table",
            "Run the cleanup on the server that holds the table.",
        )),
        _ => Some(("is not a table", "Point the rule at a plain table.")),
    }
}

/// The columns an archive batch copies: every column of `source` (not dropped, not generated), in
/// the source's order, quoted. `Err` names what `archive` lacks: a column of the source, a column of
/// another type, or a NOT NULL column without a default that the copy would leave empty.
pub fn archive_columns(
    source: &ResolvedTable,
    archive: &ResolvedTable,
) -> Result<Vec<String>, String> {
    let columns = |table: pg_sys::Oid| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                            a.atttypid, a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', \
                            a.attgenerated <> '' \
                       FROM pg_catalog.pg_attribute a \
                      WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                    None,
                    &[table.into()],
                )?
                .map(|r| {
                    Ok((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<String>(2)?.unwrap_or_default(),
                        r.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
                        r.get::<bool>(4)?.unwrap_or(false),
                        r.get::<bool>(5)?.unwrap_or(false),
                        r.get::<bool>(6)?.unwrap_or(false),
                    ))
                })
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        })
        .map_err(|e| e.to_string())
    };
    let source_columns = columns(source.oid)?;
    let archive_columns = columns(archive.oid)?;
    let mut copied = Vec::new();
    for (name, type_name, type_oid, _, _, generated) in &source_columns {
        if *generated {
            continue;
        }
        match archive_columns.iter().find(|a| &a.0 == name) {
            None => return Err(format!("it has no column \"{name}\"")),
            Some(a) if a.5 => return Err(format!("its column \"{name}\" is generated")),
            Some(a) if a.2 != *type_oid => {
                return Err(format!("its column \"{name}\" is {}, not {type_name}", a.1))
            }
            Some(_) => copied.push(pgrx::spi::quote_identifier(name)),
        }
    }
    if let Some(extra) = archive_columns
        .iter()
        .find(|a| a.3 && !a.4 && !source_columns.iter().any(|s| s.0 == a.0 && !s.5))
    {
        return Err(format!(
            "its column \"{}\" is NOT NULL without a default, and the source has no such column",
            extra.0
        ));
    }
    Ok(copied)
}
