//! What a run was given, bound by OID and version, and checked again after every wait.
//!
//! A run waits: for its table's lock (a migration), for pacing, for a slot. Meanwhile the rule may
//! be changed, disabled or deleted, and its table, a leaf or the archive renamed away, dropped, or
//! replaced by a look-alike of the same name whose triggers would then run with the run's rights.
//! So a run binds the rule by id and version (`updated_at`) and the relations by OID, and before
//! every batch, in the batch's own transaction, it locks each relation by OID and checks that its
//! canonical name still names that OID and that the rule is still the version it was given. Holding
//! the lock, nobody can rename or drop the relation until the batch commits, so the batch's
//! statements, which name the relations by that canonical name, reach exactly the bound ones. A
//! mismatch ends the run without deleting, recorded with the reason.

use crate::errors::Error;
use crate::history::Outcome;
use crate::rules::Rule;
use crate::target;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// The rule and table a run was given.
#[derive(Debug, Clone)]
pub struct Binding {
    pub rule_id: i64,
    pub rule_name: String,
    /// `updated_at` of the rule's row, epoch seconds, as loaded.
    pub version: f64,
    /// A scheduled run also ends when the rule was disabled; a manual one runs disabled rules.
    pub scheduled: bool,
    /// The rule's table (the partitioned parent, for a partitioned table).
    pub table: pg_sys::Oid,
    pub table_name: String,
    /// `token_cleanup.rules`, resolved once per run (the check reads it before every batch).
    rules: pg_sys::Oid,
}

impl Binding {
    /// Inside a transaction (it resolves the rules table).
    pub fn new(rule: &Rule, scheduled: bool, table: pg_sys::Oid) -> Binding {
        let rules = target::lookup_table("token_cleanup.rules")
            .ok()
            .flatten()
            .map_or(pg_sys::InvalidOid, |t| t.oid);
        Binding {
            rules,
            rule_id: rule.id,
            rule_name: rule.name.clone(),
            version: rule.updated_at,
            scheduled,
            table,
            table_name: rule.table_name.clone(),
        }
    }

    /// Whether the rule is still there, the version the run was given, and (for a scheduled run)
    /// enabled. Inside a transaction.
    ///
    /// While another session holds a lock on the rules table that a read would wait for (only a
    /// superuser, `ALTER EXTENSION`, or a role a DBA granted DELETE or UPDATE on it can), the run
    /// goes on with the rule as it was, as the scheduler keeps serving the rules it has: no change
    /// to the rules can commit meanwhile but the lock holder's, which is seen at the next batch after
    /// it commits. The relations are checked all the same.
    pub fn check_rule(&self) -> Result<(), Outcome> {
        if !self.rules_readable_now() {
            return Ok(());
        }
        let row = Spi::get_two_with_args::<bool, f64>(
            "SELECT enabled, extract(epoch FROM updated_at)::float8 FROM token_cleanup.rules WHERE id = $1",
            &[self.rule_id.into()],
        );
        let why = match row {
            Ok((Some(enabled), Some(version))) => {
                if version != self.version {
                    "was changed"
                } else if self.scheduled && !enabled {
                    "was disabled"
                } else {
                    return Ok(());
                }
            }
            _ => "was deleted",
        };
        Err(Outcome::Stopped(format!(
            "rule \"{}\" {why} while the run was going on; it stopped without deleting more, and the rule as it is now runs at its next slot",
            self.rule_name
        )))
    }

    /// Takes the rules table's read lock if no other session's lock is in the way.
    fn rules_readable_now(&self) -> bool {
        // SAFETY: a conditional relation lock in the current transaction, released at its end.
        self.rules != pg_sys::InvalidOid
            && unsafe {
                pg_sys::ConditionalLockRelationOid(
                    self.rules,
                    pg_sys::AccessShareLock as pg_sys::LOCKMODE,
                )
            }
    }

    /// Whether the rule's table still has the name it was given (before the first batch, when no
    /// lock is held yet: the batches check each relation under their lock).
    pub fn check_table(&self) -> Result<(), Outcome> {
        relation_is(self.table, &self.table_name, "table")
    }
}

/// Whether relation `oid` is still named `name` (canonical, schema-qualified), so that a statement
/// naming `name` reaches `oid`. `what` says which relation, for the message.
pub fn relation_is(oid: pg_sys::Oid, name: &str, what: &str) -> Result<(), Outcome> {
    match target::lookup_table(name) {
        Ok(Some(now)) if now.oid == oid => Ok(()),
        _ => Err(Outcome::Failed(
            Error::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "{what} {name} is no longer the relation the run was given (dropped, renamed or replaced during the run); nothing more was deleted"
                ),
            )
            .with_hint("Point the rule at the table it should clean; the next run resolves it again."),
        )),
    }
}

/// Locks `oid` as a DELETE (or the archive's INSERT) would, by OID, so that nobody renames or drops
/// it until the transaction ends, waiting at most `lock_timeout_ms` (0: for ever); the error when
/// it is not granted in time. No privilege is needed to lock by OID (the statements that follow
/// check privileges).
pub fn lock(oid: pg_sys::Oid, lock_timeout_ms: i32) -> Result<(), Error> {
    let lock_timeout = format!("{lock_timeout_ms}ms");
    crate::errors::in_subtransaction(|| {
        crate::owner::with_settings(&[("lock_timeout", &lock_timeout)], || {
            // SAFETY: a relation lock, kept by the transaction when the subtransaction is released.
            unsafe { pg_sys::LockRelationOid(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) }
        })
    })
}

/// Locks `oid` (see [`lock`]) and checks that `name` still names it: after this, statements of the
/// transaction that name `name` reach `oid`. A lock not granted in time fails the run.
pub fn lock_and_check(
    oid: pg_sys::Oid,
    name: &str,
    what: &str,
    lock_timeout_ms: i32,
) -> Result<(), Outcome> {
    lock(oid, lock_timeout_ms)
        .map_err(|e| Outcome::Failed(e.context(format!("locking {what} {name}"))))?;
    relation_is(oid, name, what)
}
