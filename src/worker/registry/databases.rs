//! What the launcher must know of each database when its scheduler is not there to say: the
//! extension was found absent, a utility statement asked the workers to stay away for a while, or
//! the scheduler gave its slot to another database and is due back at a time.

use super::REGISTRY;
use pgrx::pg_sys;

#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct DatabaseState {
    pub(super) database: u32,
    /// The scheduler found no extension here: probe again only after the probe interval.
    pub(super) no_extension: bool,
    /// A utility statement (DROP DATABASE, …) stopped the workers: start none before this time
    /// (PostgreSQL timestamp, µs).
    hold_until: i64,
    /// Its scheduler gave its slot to another database: start it again at this time (PostgreSQL
    /// timestamp, µs; 0: as soon as it is needed).
    come_back_at: i64,
    /// The launcher's wake count read just before its scheduler last looked at pg_extension: every
    /// ask up to this count was committed before that look, so it is answered.
    looked_at_wake: u64,
}

impl DatabaseState {
    pub(super) const NONE: DatabaseState = DatabaseState {
        database: 0,
        no_extension: false,
        hold_until: 0,
        come_back_at: 0,
        looked_at_wake: 0,
    };
}

fn database_state<R>(database: pg_sys::Oid, f: impl FnOnce(&mut DatabaseState) -> R) -> Option<R> {
    let database = u32::from(database);
    let mut registry = REGISTRY.exclusive();
    let index = registry
        .databases
        .iter()
        .position(|d| d.database == database)
        .or_else(|| registry.databases.iter().position(|d| d.database == 0))?;
    let state = &mut registry.databases[index];
    state.database = database;
    Some(f(state))
}

/// Records whether the extension was found in `database` (by its scheduler).
pub fn set_no_extension(database: pg_sys::Oid, absent: bool) {
    database_state(database, |d| d.no_extension = absent);
}

/// Records that the scheduler of `database` looked at pg_extension after the launcher had been
/// asked `wakes` times.
pub fn looked_for_extension(database: pg_sys::Oid, wakes: u64) {
    database_state(database, |d| d.looked_at_wake = d.looked_at_wake.max(wakes));
}

/// Asks the launcher to start no worker in `database` before `until` (PostgreSQL timestamp).
pub fn hold(database: pg_sys::Oid, until: pg_sys::TimestampTz) {
    database_state(database, |d| d.hold_until = until);
}

/// Records when the scheduler of `database`, which gave its slot away, wants to be started again.
pub fn come_back_at(database: pg_sys::Oid, at: pg_sys::TimestampTz) {
    database_state(database, |d| d.come_back_at = at);
}

/// What the launcher knows of `database`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DatabaseView {
    /// Its scheduler found no extension.
    pub no_extension: bool,
    /// Start no worker there before this (PostgreSQL timestamp).
    pub hold_until: pg_sys::TimestampTz,
    /// Its scheduler gave its slot away and is due back then (0: no such time).
    pub come_back_at: pg_sys::TimestampTz,
    /// Its scheduler's last look at pg_extension answered the launcher's asks up to this count.
    pub looked_at_wake: u64,
}

/// What the launcher knows of `database`.
pub fn database_view(database: pg_sys::Oid) -> DatabaseView {
    let database = u32::from(database);
    REGISTRY
        .share()
        .databases
        .iter()
        .find(|d| d.database == database)
        .map_or(DatabaseView::default(), |d| DatabaseView {
            no_extension: d.no_extension,
            hold_until: d.hold_until,
            come_back_at: d.come_back_at,
            looked_at_wake: d.looked_at_wake,
        })
}

/// Forgets databases that no longer exist.
pub fn retain_databases(exists: impl Fn(pg_sys::Oid) -> bool) {
    let mut registry = REGISTRY.exclusive();
    for d in registry.databases.iter_mut() {
        if d.database != 0 && !exists(pg_sys::Oid::from(d.database)) {
            *d = DatabaseState::NONE;
        }
    }
}
