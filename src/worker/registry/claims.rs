//! Claims: the rule and table each worker is running, so that a rule never runs twice at once and
//! two rules on one table never run together; the claimed run's live progress; a run stopped by
//! its scheduler for another owner's rule.

use super::{with_my_slot, Kind, MAX_WORKERS, MY_SLOT, REGISTRY};
use pgrx::pg_sys;
use std::sync::atomic::Ordering;

/// Who holds a claim that conflicts with the one asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub rule_id: i64,
    pub run_id: i64,
    /// The same rule, rather than another rule on the same table.
    pub same_rule: bool,
}

/// A claim of a rule and its table in this database; released when dropped.
pub struct Claim(());

impl Drop for Claim {
    fn drop(&mut self) {
        with_my_slot(|slot| {
            slot.rule_id = 0;
            slot.table = 0;
            slot.run_id = 0;
            slot.rows_deleted = 0;
            slot.batches = 0;
        });
    }
}

/// Claims `rule_id` (and `table`, unless 0) for this process: no other worker of this database
/// runs the same rule, or another rule on the same table, until the claim is dropped.
pub fn claim(rule_id: i64, table: pg_sys::Oid, run_id: i64) -> Result<Claim, Busy> {
    let index = MY_SLOT.load(Ordering::SeqCst);
    assert!(index < MAX_WORKERS, "claim by an unregistered process");
    let table = u32::from(table);
    let mut registry = REGISTRY.exclusive();
    let database = registry.slots[index].database;
    if let Some(other) = registry.slots.iter().enumerate().find(|(i, s)| {
        *i != index
            && s.database == database
            && s.rule_id != 0
            && (s.rule_id == rule_id || (table != 0 && s.table == table))
            && s.alive()
    }) {
        return Err(Busy {
            rule_id: other.1.rule_id,
            run_id: other.1.run_id,
            same_rule: other.1.rule_id == rule_id,
        });
    }
    let slot = &mut registry.slots[index];
    slot.rule_id = rule_id;
    slot.table = table;
    slot.run_id = run_id;
    Ok(Claim(()))
}

/// Records the run this process is performing (visible to conflicting claimers).
pub fn set_claimed_run(run_id: i64) {
    with_my_slot(|slot| slot.run_id = run_id);
}

/// Records the claimed run's progress after a committed batch.
pub fn set_progress(rows_deleted: i64, batches: i32) {
    with_my_slot(|slot| {
        slot.rows_deleted = rows_deleted;
        slot.batches = batches;
    });
}

/// Live progress of the runs going on in `database`: (run id, rows deleted, batches).
pub fn progress_in(database: pg_sys::Oid) -> Vec<(i64, i64, i32)> {
    let database = u32::from(database);
    REGISTRY
        .share()
        .slots
        .iter()
        .filter(|s| s.database == database && s.rule_id != 0 && s.run_id != 0 && s.alive())
        .map(|s| (s.run_id, s.rows_deleted, s.batches))
        .collect()
}

/// The rules claimed in `database` by any worker, and the tables they claimed.
pub fn claims_in(database: pg_sys::Oid) -> Vec<(i64, u32)> {
    let database = u32::from(database);
    REGISTRY
        .share()
        .slots
        .iter()
        .filter(|s| s.database == database && s.rule_id != 0 && s.alive())
        .map(|s| (s.rule_id, s.table))
        .collect()
}

/// Stops the run of the runner in `slot` (still `pid`): its owner holds more than its share of the
/// database's runner slots while another owner's rule waits for one. SIGTERM, as for any stop: the
/// run ends between batches, or at once if the owner's code is running; the runner then exits.
pub fn preempt(slot: usize, pid: i32) {
    let mut registry = REGISTRY.exclusive();
    let s = &mut registry.slots[slot];
    if s.pid == pid && s.alive() && s.kind == Kind::Runner {
        s.preempted = true;
        // SAFETY: SIGTERM to our own runner, alive as checked under the registry's lock.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// Whether this runner's run was stopped by [`preempt`].
pub fn preempted() -> bool {
    with_my_slot(|slot| slot.preempted).unwrap_or(false)
}
