//! Errors: raising the ones users read (a SQLSTATE, a message that names the bad value, and a hint
//! with the fix), and catching the ones a rule's code raises, inside an internal subtransaction, so
//! that a worker records them and carries on.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

/// An error as users read it, carried unchanged from where it is raised or caught to where it is
/// raised again or recorded (`token_cleanup.runs.sqlstate`, `error`, `error_detail`, `error_hint`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "Carried", from = "Carried")]
pub struct Error {
    pub sqlstate: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Error {
    pub fn new(sqlstate: PgSqlErrorCode, message: impl Into<String>) -> Error {
        Error {
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Error {
        self.detail = Some(detail.into());
        self
    }

    /// The same error, its message prefixed with where it happened: "deleting batch 3: …".
    pub fn context(mut self, what: impl std::fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The five-character SQLSTATE.
    pub fn sqlstate_text(&self) -> String {
        sqlstate_text(self.sqlstate as i32)
    }

    /// An error read back from its recorded form.
    pub fn from_recorded(
        sqlstate: Option<&str>,
        message: impl Into<String>,
        detail: Option<String>,
        hint: Option<String>,
    ) -> Error {
        let code = sqlstate
            .and_then(packed_sqlstate)
            .map(PgSqlErrorCode::from)
            .unwrap_or(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR);
        Error {
            sqlstate: code,
            message: message.into(),
            detail,
            hint,
        }
    }

    /// Raises this error as an ERROR; never returns.
    pub fn raise(&self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate, self.message.clone(), "pg_token_cleanup");
        if let Some(detail) = &self.detail {
            report = report.set_detail(detail.clone());
        }
        if let Some(hint) = &self.hint {
            report = report.set_hint(hint.clone());
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }

    /// Any caught error (PostgreSQL ERROR, Rust error!() or panic). Its texts are cut to
    /// [`MAX_TEXT_BYTES`] each: a rule's code chooses them, and they are stored, logged and raised.
    pub fn from_caught(caught: pg_sys::panic::CaughtError) -> Error {
        use pg_sys::panic::CaughtError;
        match &caught {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => Error {
                sqlstate: r.sql_error_code(),
                message: bounded(r.message()),
                detail: r.detail().map(bounded),
                hint: r.hint().map(bounded),
            },
            // A panic's report carries a Rust backtrace in its detail; that is for no client.
            CaughtError::RustPanic { ereport, .. } => Error {
                sqlstate: ereport.sql_error_code(),
                message: bounded(ereport.message()),
                detail: None,
                hint: None,
            },
        }
    }
}

/// Longest message, detail or hint kept from an error a rule's code raised.
pub const MAX_TEXT_BYTES: usize = 2048;

/// `text` cut to at most [`MAX_TEXT_BYTES`] on a character boundary, with a marker that says how
/// long it was: a condition that raises a megabyte must not fill the history and the log.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_string();
    }
    let marker = format!(" … [cut: {} bytes]", text.len());
    let keep = MAX_TEXT_BYTES - marker.len();
    let end = (0..=keep)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}{marker}", &text[..end])
}

/// An error's form when it crosses processes (a runner's result to its caller): the SQLSTATE as its
/// five characters.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Carried {
    sqlstate: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl From<Error> for Carried {
    fn from(e: Error) -> Carried {
        Carried {
            sqlstate: e.sqlstate_text(),
            message: e.message,
            detail: e.detail,
            hint: e.hint,
        }
    }
}

impl From<Carried> for Error {
    fn from(c: Carried) -> Error {
        Error::from_recorded(Some(&c.sqlstate), c.message, c.detail, c.hint)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate_text())
    }
}

impl From<pgrx::spi::Error> for Error {
    fn from(e: pgrx::spi::Error) -> Error {
        Error::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string())
    }
}

/// Raises an ERROR with `code`, `message` and `hint`; never returns.
pub fn refuse(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    Error::new(code, message).with_hint(hint).raise()
}

/// Calls `f`, a call into PostgreSQL through a declaration of ours (a function pgrx has no binding
/// for), so that an ERROR it raises becomes a Rust panic that unwinds properly, as pgrx's own
/// bindings do, instead of a longjmp across Rust frames.
///
/// # Safety
/// `f` must be a sound call into PostgreSQL on the main thread.
pub unsafe fn guarded<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: the caller's promise.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(f) }
}

/// Runs `f` in an internal subtransaction (as a PL/pgSQL EXCEPTION block does). On error the
/// subtransaction is rolled back, memory context and resource owner are restored, and the error is
/// returned so the caller can record it and carry on in the same transaction.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, Error> {
    // SAFETY: the standard BeginInternalSubTransaction / Release / Rollback protocol.
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);
        PgTryBuilder::new(AssertUnwindSafe(|| {
            let r = f();
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            Ok(r)
        }))
        .catch_others(|caught| {
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(old_context);
            pg_sys::CurrentResourceOwner = old_owner;
            Err(Error::from_caught(caught))
        })
        .execute()
    }
}

/// A packed SQLSTATE (PGSIXBIT encoding) as its five characters.
fn sqlstate_text(code: i32) -> String {
    (0..5)
        .map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char)
        .collect()
}

/// Five SQLSTATE characters packed as PostgreSQL packs them (PGSIXBIT); `None` if malformed.
fn packed_sqlstate(code: &str) -> Option<i32> {
    let bytes = code.as_bytes();
    if bytes.len() != 5
        || !bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return None;
    }
    Some(bytes.iter().enumerate().fold(0, |acc, (i, b)| {
        acc | ((i32::from(*b - b'0') & 0x3F) << (6 * i))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_with_a_marker() {
        assert_eq!(bounded("short"), "short");
        let exact = "x".repeat(MAX_TEXT_BYTES);
        assert_eq!(bounded(&exact), exact);
        let long = "é".repeat(1_000_000);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_TEXT_BYTES, "{} bytes", cut.len());
        assert!(
            cut.ends_with(" … [cut: 2000000 bytes]"),
            "{}",
            &cut[cut.len() - 40..]
        );
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn sqlstates_round_trip_through_their_text() {
        for code in [
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
        ] {
            let text = sqlstate_text(code as i32);
            assert_eq!(PgSqlErrorCode::from(packed_sqlstate(&text).unwrap()), code);
        }
        assert_eq!(
            sqlstate_text(PgSqlErrorCode::ERRCODE_OBJECT_IN_USE as i32),
            "55006"
        );
        assert_eq!(packed_sqlstate("5500"), None);
        assert_eq!(packed_sqlstate("55o06"), None);
    }
}
