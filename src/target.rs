//! What a rule points at: the table (resolved from any spelling `regclass` accepts to one canonical,
//! quoted, schema-qualified name) and the condition (proved to be exactly one SQL expression before it
//! is ever placed inside a statement).
//!
//! A condition reaches SQL only as `(<condition>\n)`: the parser check below proves that this text
//! is a single parenthesised expression, so it cannot close the parenthesis and append clauses,
//! statements or a trailing `--` comment (the newline ends any comment).

use crate::errors::refuse;
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

/// The condition as it is embedded in every statement.
pub fn embedded_condition(condition: &str) -> String {
    format!("({condition}\n)")
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
    .catch_others(|e| Err(crate::security::describe(e).message))
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

/// Proves that `condition` is exactly one SQL expression: `SELECT (<condition>\n)` must parse to a
/// single plain SELECT with one unnamed target and nothing else. Returns the parser's message or a
/// description of what else was found.
pub fn check_single_expression(condition: &str) -> Result<(), String> {
    if condition.trim().is_empty() {
        return Err("it is empty".into());
    }
    if condition.contains(';') {
        // A ';' outside a string literal would be a second statement, inside one it is still suspect
        // enough that we refuse it rather than reason about quoting.
        return Err("it contains ';' (a condition is one expression, not statements)".into());
    }
    let sql = CString::new(format!("SELECT {}", embedded_condition(condition)))
        .map_err(|_| "it contains a NUL character".to_string())?;
    let parsed = PgTryBuilder::new(|| unsafe {
        // SAFETY: raw_parser only parses; errors are caught below.
        Ok(pg_sys::raw_parser(
            sql.as_ptr(),
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        ))
    })
    .catch_others(|e| Err(crate::security::describe(e).message))
    .execute()?;
    // SAFETY: raw_parser returns a valid List of RawStmt.
    unsafe {
        if parsed.is_null() || (*parsed).length != 1 {
            return Err("it is not a single expression".into());
        }
        let raw = (*(*parsed).elements).ptr_value as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            return Err("it is not a single expression".into());
        }
        let select = stmt as *mut pg_sys::SelectStmt;
        let s = &*select;
        let only_one_target = !s.targetList.is_null() && (*s.targetList).length == 1;
        let nothing_else = s.op == pg_sys::SetOperation::SETOP_NONE
            && s.distinctClause.is_null()
            && s.intoClause.is_null()
            && s.fromClause.is_null()
            && s.whereClause.is_null()
            && s.groupClause.is_null()
            && s.havingClause.is_null()
            && s.windowClause.is_null()
            && s.valuesLists.is_null()
            && s.sortClause.is_null()
            && s.limitOffset.is_null()
            && s.limitCount.is_null()
            && s.lockingClause.is_null()
            && s.withClause.is_null();
        if !only_one_target || !nothing_else {
            return Err(
                "it is not a single expression (it closes its parentheses and adds clauses)".into(),
            );
        }
        let target = (*(*s.targetList).elements).ptr_value as *mut pg_sys::ResTarget;
        if !(*target).name.is_null() {
            return Err("it is not a single expression".into());
        }
    }
    Ok(())
}

/// Proves, as the current user (the caller switches to the owner, inside a subtransaction), that the condition is a boolean
/// expression over the table's columns that the owner may evaluate: the statement is planned and
/// started (privileges on every table and function are checked) but reads no row (LIMIT 0).
pub fn check_condition_semantics(table: &ResolvedTable, condition: &str) -> Result<(), String> {
    let sql = format!(
        "SELECT 1 FROM ONLY {} WHERE {} LIMIT 0",
        table.qualified_name,
        embedded_condition(condition)
    );
    crate::security::in_subtransaction(|| {
        Spi::connect(|client| client.select(sql.as_str(), None, &[]).map(|_| ()))
            .map_err(|e| e.to_string())
    })
    .map_err(|e| e.message)?
}

/// Message of the error every condition refusal raises.
pub fn refuse_condition(rule: &str, condition: &str, why: &str, table: &str) -> ! {
    refuse(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("invalid condition for rule \"{rule}\": {why}"),
        format!(
            "The condition is one boolean SQL expression over the columns of {table}, as in a WHERE clause, \
             e.g. 'revoked OR expires_at < now()'. It is evaluated as the rule's owner with \
             search_path = {}, so schema-qualify your own functions and tables. Got: {condition}",
            crate::security::OWNER_SEARCH_PATH
        ),
    )
}
