//! A rule's condition: proved to be exactly one boolean SQL expression, in the context where it is
//! embedded, before it is ever placed inside a statement; and the one place that embeds it.
//!
//! A condition reaches SQL only as `(<condition>\n)`, inside statements such as
//! `DELETE … WHERE ctid >= … AND ctid < … AND (<condition>\n)`. Two proofs make that safe:
//! - [`check_tokens`] runs PostgreSQL's own scanner over the text (so string literals, quoted
//!   identifiers, dollar quotes and comments are read exactly as the server reads them, with
//!   `standard_conforming_strings = on` as every statement that embeds it runs): no `)` closes a
//!   parenthesis the condition did not open, every one it opens is closed, and there is no `;`.
//!   Without this, `a) OR (b` would pass as the one expression `(a) OR (b)` and regroup inside a
//!   batch as `(… AND (a)) OR (b)`, escaping the batch's bounds.
//! - [`check_single_expression`] parses `SELECT (<condition>\n)` and requires one plain target and
//!   nothing else: no clause can follow, and the newline ends a trailing `--` comment.
//!
//! [`check_semantics`] then plans and starts it as the owner (privileges, types, boolean), unless
//! rules are being restored (see `rules::validate`), when nothing of the owner's is evaluated.

use crate::errors::{in_subtransaction, refuse, Error};
use crate::owner;
use crate::target::ResolvedTable;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CString;

/// The condition as it is embedded in every statement.
pub fn embedded(condition: &str) -> String {
    format!("({condition}\n)")
}

/// Every syntactic proof: tokens, then one expression. `Err` says what is wrong.
pub fn check_syntax(condition: &str) -> Result<(), String> {
    if condition.trim().is_empty() {
        return Err("it is empty".into());
    }
    if condition.contains('\0') {
        return Err("it contains a NUL character".into());
    }
    // The parser reads string literals by the session's setting; the statements that embed the
    // condition always run with it on.
    owner::with_settings(&[("standard_conforming_strings", "on")], || {
        check_tokens(condition)?;
        check_single_expression(condition)
    })
}

/// What the scanner found wrong with the condition's parentheses or statements, if anything.
#[derive(Debug, PartialEq, Eq)]
enum TokenProblem {
    /// A `)` at this character position (1-based) closes a parenthesis the condition did not open.
    ClosesOutside(usize),
    /// A `(` is never closed.
    Unclosed,
    /// A `;` outside a string literal or comment, at this character position.
    Semicolon(usize),
}

/// Proves with PostgreSQL's scanner that the condition's parentheses balance within itself and that
/// it holds no `;`. Scanner errors (an unterminated string, comment or dollar quote) are returned.
fn check_tokens(condition: &str) -> Result<(), String> {
    let problem = scan(condition)?;
    let position = |at: usize| format!("at character {at}");
    match problem {
        None => Ok(()),
        Some(TokenProblem::ClosesOutside(at)) => Err(format!(
            "the ')' {} closes a parenthesis the condition did not open",
            position(at)
        )),
        Some(TokenProblem::Unclosed) => Err("a '(' is never closed".into()),
        Some(TokenProblem::Semicolon(at)) => Err(format!(
            "it contains ';' {} (a condition is one expression, not statements)",
            position(at)
        )),
    }
}

fn scan(condition: &str) -> Result<Option<TokenProblem>, String> {
    let char_position = |byte: usize| condition[..byte.min(condition.len())].chars().count() + 1;
    let mut depth: i64 = 0;
    let mut problem = None;
    for_each_token(condition, |token, location, _| {
        // Single-character tokens are returned as the character itself.
        match u8::try_from(token) {
            Ok(b'(') => depth += 1,
            Ok(b')') => {
                depth -= 1;
                if depth < 0 {
                    problem = Some(TokenProblem::ClosesOutside(char_position(location)));
                    return false;
                }
            }
            Ok(b';') => {
                problem = Some(TokenProblem::Semicolon(char_position(location)));
                return false;
            }
            _ => {}
        }
        true
    })?;
    if problem.is_none() && depth > 0 {
        problem = Some(TokenProblem::Unclosed);
    }
    Ok(problem)
}

/// The bare and quoted identifiers in a condition (not keywords, literals or operators), as the
/// scanner reads them (bare ones folded to lower case). Used to name the columns an index could
/// serve.
pub fn identifiers(condition: &str) -> Vec<String> {
    let bytes = condition.as_bytes();
    let mut found: Vec<String> = Vec::new();
    let scanned = for_each_token(condition, |token, at, value| {
        // Identifiers and literals carry a string; an identifier starts with a letter, an
        // underscore or a double quote in the text (numbers and parameters carry an integer in
        // the same union, which is never read here). E'…', B'…', X'…', N'…', U&'…' are literals.
        let starts_word = bytes
            .get(at)
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_' || *c == b'"' || *c >= 0x80);
        let literal_prefix = bytes.get(at + 1) == Some(&b'\'')
            || (bytes.get(at + 1) == Some(&b'&') && bytes.get(at + 2) == Some(&b'\''));
        // SAFETY: for an identifier or keyword token the scanner stores a NUL-terminated string.
        unsafe {
            if token >= 256 && starts_word && !literal_prefix && !value.str_.is_null() {
                let name = std::ffi::CStr::from_ptr(value.str_)
                    .to_string_lossy()
                    .into_owned();
                if !found.contains(&name) {
                    found.push(name);
                }
            }
        }
        true
    });
    scanned.map(|()| found).unwrap_or_default()
}

/// Runs PostgreSQL's scanner over `text`, with `standard_conforming_strings` on as the statements
/// that embed a condition run, calling `visit(token, byte offset, value)` for each token until it
/// returns false. A scanner error (an unterminated string, comment or dollar quote) is returned.
fn for_each_token(
    text: &str,
    mut visit: impl FnMut(i32, usize, &pg_sys::core_YYSTYPE) -> bool,
) -> Result<(), String> {
    let c_text = CString::new(text).map_err(|_| "it contains a NUL character".to_string())?;
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the scanner reads `c_text` (NUL-terminated, alive for the whole scan) and keeps
        // its state in `extra`; scanner errors are raised as ERRORs and caught below.
        unsafe {
            let mut extra = pg_sys::core_yy_extra_type::default();
            // The scanner keeps this pointer; every later access goes through it.
            let extra: *mut pg_sys::core_yy_extra_type = &mut extra;
            let scanner = pg_sys::scanner_init(
                c_text.as_ptr(),
                extra,
                &raw const pg_sys::ScanKeywords,
                (&raw const pg_sys::ScanKeywordTokens).cast(),
            );
            (*extra).standard_conforming_strings = true;
            let mut value = pg_sys::core_YYSTYPE::default();
            let mut location: i32 = 0;
            loop {
                let token = pg_sys::core_yylex(&mut value, &mut location, scanner);
                if token == 0 || !visit(token, location.max(0) as usize, &value) {
                    break;
                }
            }
            pg_sys::scanner_finish(scanner);
            Ok(())
        }
    }))
    .catch_others(|e| Err(Error::from_caught(e).message))
    .execute()
}

/// Proves that `condition` is exactly one SQL expression: `SELECT (<condition>\n)` must parse to a
/// single plain SELECT with one unnamed target and nothing else.
fn check_single_expression(condition: &str) -> Result<(), String> {
    let sql = CString::new(format!("SELECT {}", embedded(condition)))
        .map_err(|_| "it contains a NUL character".to_string())?;
    let parsed = PgTryBuilder::new(|| unsafe {
        // SAFETY: raw_parser only parses; errors are caught below.
        Ok(pg_sys::raw_parser(
            sql.as_ptr(),
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        ))
    })
    .catch_others(|e| Err(Error::from_caught(e).message))
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
        let s = &*(stmt as *mut pg_sys::SelectStmt);
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

/// Proves, as the current user (the caller switches to the run's role), that the condition is a
/// boolean expression over the table's columns that the role may evaluate: the statement is
/// planned and started (privileges on every table and function are checked) but reads no row.
pub fn check_semantics(table: &ResolvedTable, condition: &str) -> Result<(), String> {
    let sql = format!(
        "SELECT 1 FROM ONLY {} WHERE {} LIMIT 0",
        table.qualified_name,
        embedded(condition)
    );
    in_subtransaction(|| {
        Spi::connect(|client| client.select(sql.as_str(), None, &[]).map(|_| ()))
            .map_err(|e| e.to_string())
    })
    .map_err(|e| e.message)?
}

/// Raises the error every condition refusal raises.
pub fn refuse_condition(rule: &str, condition: &str, why: &str, table: &str) -> ! {
    refuse(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("invalid condition for rule \"{rule}\": {why}"),
        format!(
            "The condition is one boolean SQL expression over the columns of {table}, as in a WHERE clause, \
             e.g. 'revoked OR expires_at < now()'. It is evaluated as the rule's owner with \
             search_path = {}, so schema-qualify your own functions and tables. Got: {condition}",
            owner::OWNER_SEARCH_PATH
        ),
    )
}
