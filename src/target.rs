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
        let names = pg_sys::stringToQualifiedNameList(c_name.as_ptr());
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
        b'p' => Some((
            "is a partitioned table, which is not supported",
            "Create one rule per partition, or drop or detach whole partitions for time-based retention.",
        )),
        b'v' | b'm' => Some(("is a view, not a table", "Point the rule at the table the view reads.")),
        b'f' => Some(("is a foreign table", "Run the cleanup on the server that holds the table.")),
        _ => Some(("is not a table", "Point the rule at a plain table.")),
    }
}
