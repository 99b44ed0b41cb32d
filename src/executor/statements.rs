//! The text of a batch's statements, built once per run: a plain DELETE, or with an archive table a
//! `WITH d AS (DELETE … RETURNING …) INSERT INTO <archive> SELECT … FROM d` that moves the rows in
//! the batch's own transaction (a row is either still in the table or in the archive, never lost and
//! never in both). Each comes in two forms: the optimistic one, and one that skips rows locked by
//! other sessions (`FOR UPDATE SKIP LOCKED`).
//!
//! A table walk's batch must stop at `batch_size` rows and tell where the next batch resumes. The
//! optimistic plain DELETE ends in `token_cleanup.within_batch(ctid)`, which does both (see
//! `batch_cap`). The others return the ctids they deleted (the next batch resumes after the last):
//! the one that skips locked rows picks them by a `LIMIT` in a sub-select, and so does an archiving
//! one, because a data-modifying WITH runs to its end whatever its outer query reads.

/// A batch statement around the clause that picks the batch's rows: `before` + rows + `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSql {
    before: String,
    after: String,
    /// A walk's batch stopped by `token_cleanup.within_batch(ctid)` (see `batch_cap`), returning
    /// nothing; otherwise a walk's batch returns the ctids it deleted and SPI stops it.
    capped: bool,
}

impl BatchSql {
    pub fn with(&self, rows: &str) -> String {
        format!("{}{rows}{}", self.before, self.after)
    }

    pub fn capped(&self) -> bool {
        self.capped
    }
}

/// The last condition of a capped walk's DELETE (the extension's schema is fixed: not relocatable).
const CAP: &str = "token_cleanup.within_batch(ctid)";

/// How a run finds its rows, as the statements need to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Collected ctids: the batch's rows are `ctid = ANY($1)`; its result is a row count.
    Ctids,
    /// A page range, at most `limit` rows: the statement returns the ctids it deleted.
    Walk { limit: usize },
}

/// Where archived rows go: the archive's name and the columns copied, quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// Bound by OID: see `binding`.
    pub oid: pgrx::pg_sys::Oid,
    pub table: String,
    pub columns: Vec<String>,
}

/// The column a walk's archive statement returns the deleted ctids in.
const CTID_ALIAS: &str = "\"pg_token_cleanup ctid\"";

/// The optimistic statement and the one that skips locked rows, for `table` (qualified) and the
/// embedded `condition`.
pub fn build(
    table: &str,
    condition: &str,
    shape: Shape,
    archive: Option<&Archive>,
) -> (BatchSql, BatchSql) {
    let pick = |skip_locked: bool, limit: Option<usize>| {
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let lock = if skip_locked {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        (
            format!("ctid = ANY(ARRAY(SELECT ctid FROM ONLY {table} WHERE "),
            format!(" AND {condition}{limit}{lock}))"),
        )
    };
    let (walk_limit, returning) = match shape {
        Shape::Walk { limit } => (Some(limit), " RETURNING ctid"),
        Shape::Ctids => (None, ""),
    };
    match archive {
        None => {
            let optimistic = match shape {
                Shape::Walk { .. } => BatchSql {
                    before: format!("DELETE FROM ONLY {table} WHERE "),
                    after: format!(" AND {condition} AND {CAP}"),
                    capped: true,
                },
                Shape::Ctids => BatchSql {
                    before: format!("DELETE FROM ONLY {table} WHERE "),
                    after: format!(" AND {condition}"),
                    capped: false,
                },
            };
            let (open, close) = pick(true, walk_limit);
            let skipping = BatchSql {
                before: format!("DELETE FROM ONLY {table} WHERE {open}"),
                after: format!("{close}{returning}"),
                capped: false,
            };
            (optimistic, skipping)
        }
        Some(archive) => {
            let columns = archive.columns.join(", ");
            let moved = |open: String, close: String| {
                match shape {
                Shape::Ctids => BatchSql {
                    before: format!("WITH d AS (DELETE FROM ONLY {table} WHERE {open}"),
                    after: format!(
                        "{close} AND {condition} RETURNING {columns}) INSERT INTO {} ({columns}) SELECT {columns} FROM d",
                        archive.table
                    ),
                    capped: false,
                },
                Shape::Walk { .. } => BatchSql {
                    before: format!("WITH d AS (DELETE FROM ONLY {table} WHERE {open}"),
                    after: format!(
                        "{close} AND {condition} RETURNING ctid AS {CTID_ALIAS}, {columns}), \
                         a AS (INSERT INTO {} ({columns}) SELECT {columns} FROM d) SELECT {CTID_ALIAS} FROM d",
                        archive.table
                    ),
                    capped: false,
                },
            }
            };
            let optimistic = match shape {
                Shape::Ctids => moved(String::new(), String::new()),
                Shape::Walk { .. } => {
                    let (open, close) = pick(false, walk_limit);
                    moved(open, close)
                }
            };
            let (open, close) = pick(true, walk_limit);
            (optimistic, moved(open, close))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "public.tokens";
    const C: &str = "(expires_at < now()\n)";

    #[test]
    fn plain_deletes() {
        let (ctids, skip) = build(T, C, Shape::Ctids, None);
        assert_eq!(
            ctids.with("ctid = ANY($1)"),
            "DELETE FROM ONLY public.tokens WHERE ctid = ANY($1) AND (expires_at < now()\n)"
        );
        assert_eq!(
            skip.with("ctid = ANY($1)"),
            "DELETE FROM ONLY public.tokens WHERE ctid = ANY(ARRAY(SELECT ctid FROM ONLY public.tokens WHERE ctid = ANY($1) AND (expires_at < now()\n) FOR UPDATE SKIP LOCKED))"
        );
        let (walk, skip) = build(T, C, Shape::Walk { limit: 100 }, None);
        assert_eq!(
            walk.with("R"),
            "DELETE FROM ONLY public.tokens WHERE R AND (expires_at < now()\n) AND token_cleanup.within_batch(ctid)"
        );
        assert!(walk.capped() && !skip.capped());
        assert!(skip
            .with("R")
            .ends_with("LIMIT 100 FOR UPDATE SKIP LOCKED)) RETURNING ctid"));
    }

    #[test]
    fn archiving_moves_rows_in_one_statement() {
        let archive = Archive {
            oid: pgrx::pg_sys::InvalidOid,
            table: "archive.tokens".into(),
            columns: vec!["id".into(), "\"Expires\"".into()],
        };
        let (ctids, _) = build(T, C, Shape::Ctids, Some(&archive));
        assert_eq!(
            ctids.with("ctid = ANY($1)"),
            "WITH d AS (DELETE FROM ONLY public.tokens WHERE ctid = ANY($1) AND (expires_at < now()\n) \
             RETURNING id, \"Expires\") INSERT INTO archive.tokens (id, \"Expires\") SELECT id, \"Expires\" FROM d"
        );
        let (walk, skip) = build(T, C, Shape::Walk { limit: 50 }, Some(&archive));
        let walk = walk.with("R");
        assert!(walk.starts_with(
            "WITH d AS (DELETE FROM ONLY public.tokens WHERE ctid = ANY(ARRAY(SELECT ctid FROM ONLY public.tokens WHERE R AND (expires_at < now()\n) LIMIT 50))"
        ));
        assert!(walk.ends_with(
            "RETURNING ctid AS \"pg_token_cleanup ctid\", id, \"Expires\"), a AS (INSERT INTO archive.tokens (id, \"Expires\") SELECT id, \"Expires\" FROM d) SELECT \"pg_token_cleanup ctid\" FROM d"
        ));
        assert!(skip.with("R").contains("LIMIT 50 FOR UPDATE SKIP LOCKED))"));
    }
}
