//! The cluster's worker budget, `pg_token_cleanup.max_workers`: every worker of this extension
//! (launcher, schedulers, runners) holds a registry slot, and no more slots than the budget are held
//! at once, so the server keeps the `max_worker_processes` slots its own work needs (parallel
//! query, logical replication, other extensions).
//!
//! - **Reserve, then start.** Whoever starts a worker (the launcher a scheduler, a scheduler a pooled
//!   runner, `run()` a manual runner) first reserves a slot; the worker adopts it when it registers
//!   (found by its `bgw_notify_pid`, the starter). A reservation not adopted within
//!   [`RESERVATION_TTL`] lapses, and so does one whose reserver died. A slot a worker freed by
//!   exiting is reserved again only once the postmaster has reaped that worker (at most
//!   [`REAP_GRACE`] later): until then it still holds a postmaster slot, and a worker started into
//!   ours would take one that parallel query counts on.
//! - **Wait in turn.** A database whose scheduler the launcher cannot start, and a `run()` that finds
//!   the budget full, join the waiters. A free slot goes first to the waiter whose role holds the
//!   fewest slots (a database waiting for its scheduler holds none), the oldest among equals: one
//!   role's pile of `run()` calls cannot keep another role's out. Nobody else may reserve while the
//!   slots left are no more than the waiters ahead of them.
//! - **A role's share.** One role's `run()` calls hold at most [`role_share`] slots at once (half the
//!   budget beside the launcher, at least one; a superuser's are not capped); its further calls
//!   wait for one of its own to end. Runs that never end can then hold no more than that,
//!   whatever the role does.
//! - **Give slots back.** An idle pooled runner, and a scheduler between runs that has served its
//!   turn, hand their slot to the first waiter ([`give_to_waiter`]) and exit. So databases take
//!   turns when there are more of them than slots, and `run()` never waits long for a slot.

use super::{my_identity, now, process_alive, Assignment, Kind, Registry, Slot, MY_SLOT, REGISTRY};
use crate::gucs;
use pgrx::pg_sys;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Most waiters at once (databases waiting for their scheduler, `run()` calls).
pub const MAX_WAITERS: usize = 128;
/// A reservation lapses if its worker has not adopted it by then.
const RESERVATION_TTL: Duration = Duration::from_secs(10);
/// Longest a freed slot waits for its last worker to be reaped (a pid reused meanwhile would
/// otherwise hold it back for ever).
pub(super) const REAP_GRACE: Duration = Duration::from_secs(5);

/// One waiter for a slot: the launcher for a database's scheduler, or a backend in `run()`.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Waiter {
    /// The kind of worker it waits to start (Free: an empty entry).
    kind: Kind,
    pid: i32,
    procno: i32,
    database: u32,
    /// The role of a `run()` call (0: a database waiting for its scheduler).
    role: u32,
    /// Since when (PostgreSQL timestamp, µs): the oldest is served first among equals.
    since: i64,
}

impl Waiter {
    pub const NONE: Waiter = Waiter {
        kind: Kind::Free,
        pid: 0,
        procno: -1,
        database: 0,
        role: 0,
        since: 0,
    };

    fn alive(&self) -> bool {
        self.kind != Kind::Free && process_alive(self.pid, self.procno)
    }

    fn is(&self, kind: Kind, database: u32, pid: i32) -> bool {
        self.kind == kind && self.database == database && self.pid == pid
    }
}

/// Slots held: live workers and live reservations.
fn used(registry: &Registry) -> usize {
    registry.slots.iter().filter(|s| s.alive()).count()
}

/// Slots held by `role`'s `run()` calls (workers and reservations); 0 for role 0.
fn held_by(registry: &Registry, role: u32) -> usize {
    if role == 0 {
        return 0;
    }
    registry
        .slots
        .iter()
        .filter(|s| s.role == role && s.alive())
        .count()
}

/// Most slots one role's `run()` calls hold at once: half of the budget beside the launcher, at
/// least one (the default budget of 4: one).
pub fn role_share() -> usize {
    (gucs::max_workers().saturating_sub(1) / 2).max(1)
}

/// Slots `role`'s `run()` calls hold now.
pub fn held_by_role(role: pg_sys::Oid) -> usize {
    held_by(&REGISTRY.share(), u32::from(role))
}

/// A waiter's place in the queue: fewest slots held by its role first, then the oldest.
fn place(registry: &Registry, w: &Waiter) -> (usize, i64) {
    (held_by(registry, w.role), w.since)
}

/// Whether a worker of `kind` in `database`, started by `pid` for `role`, fits in the budget now:
/// a slot is free beyond those owed to the waiters ahead of it.
pub(super) fn has_room(
    registry: &Registry,
    kind: Kind,
    database: u32,
    pid: i32,
    role: u32,
) -> bool {
    let limit = gucs::max_workers();
    let used = used(registry);
    if used >= limit || (role != 0 && held_by(registry, role) >= role_share()) {
        return false;
    }
    let since = registry
        .waiters
        .iter()
        .find(|w| w.is(kind, database, pid) && w.alive())
        .map_or_else(now, |w| w.since);
    let mine = (held_by(registry, role), since);
    let ahead = registry
        .waiters
        .iter()
        .filter(|w| w.alive() && !w.is(kind, database, pid))
        .filter(|w| place(registry, w) < mine)
        .count();
    limit - used > ahead
}

/// The slot reserved for this worker (of `kind`, in `database`) by the process that started it.
pub(super) fn reservation_for_me(registry: &Registry, kind: Kind, database: u32) -> Option<usize> {
    // SAFETY: MyBgworkerEntry is set in a background worker (null elsewhere).
    let starter = unsafe {
        let entry = pg_sys::MyBgworkerEntry;
        if entry.is_null() {
            return None;
        }
        (*entry).bgw_notify_pid
    };
    registry
        .slots
        .iter()
        .position(|s| s.is_reserved_for(kind, database, starter) && s.alive())
}

/// Reserves a slot for a worker of `kind` in `database` that this process is about to start (for
/// `role`'s `run()` call; 0 otherwise): one a worker gave up for it while it waited, or a free one
/// within the budget. Stops waiting when it gets one. `false`: the budget is full (or owed to
/// waiters ahead).
pub fn reserve(kind: Kind, database: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    let role = u32::from(role);
    let (pid, procno) = my_identity();
    let database = u32::from(database);
    let mut registry = REGISTRY.exclusive();
    let handed = registry
        .slots
        .iter()
        .position(|s| s.handed_over && s.is_reserved_for(kind, database, pid) && s.alive());
    let index = match handed {
        // The worker that gave it up holds its postmaster slot until the postmaster has reaped it.
        Some(index) if !reaped(registry.slots[index].yielder.0) => return false,
        Some(index) => index,
        None if !has_room(&registry, kind, database, pid, role) => return false,
        // A slot whose last worker has exited but is not reaped yet still stands for a postmaster
        // slot: starting a worker into it could take one that parallel query counts on.
        None => match registry
            .slots
            .iter()
            .position(|s| !s.alive() && (reaped(s.yielder.0) || s.reserved_until < now()))
        {
            Some(index) => index,
            None => return false,
        },
    };
    registry.slots[index] = Slot {
        role,
        ..reservation(kind, database, pid, procno, false)
    };
    for w in registry.waiters.iter_mut() {
        if w.is(kind, database, pid) {
            *w = Waiter::NONE;
        }
    }
    true
}

fn reservation(kind: Kind, database: u32, pid: i32, procno: i32, handed_over: bool) -> Slot {
    Slot {
        kind: Kind::Reserved,
        pid,
        procno,
        database,
        reserved_for: kind,
        reserved_until: now() + RESERVATION_TTL.as_micros() as i64,
        handed_over,
        ..Slot::FREE
    }
}

/// Whether process `pid` is gone and reaped (its PGPROC keeps its pid until reused, and a
/// zombie still answers signal 0).
fn reaped(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let answered = unsafe { libc::kill(pid, 0) } == 0;
    pid <= 0 || (!answered && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH))
}

/// Gives back a reservation this process made and will not use (the postmaster started no worker).
pub fn cancel(kind: Kind, database: pg_sys::Oid) {
    let pid = my_identity().0;
    let database = u32::from(database);
    let mut registry = REGISTRY.exclusive();
    if let Some(slot) = registry
        .slots
        .iter_mut()
        .find(|s| !s.handed_over && s.is_reserved_for(kind, database, pid))
    {
        *slot = Slot::FREE;
    }
    wake_waiters(&registry);
}

/// Joins the waiters for a slot to start a worker of `kind` in `database` (for `role`'s `run()`
/// call; 0 otherwise), once: the place in the queue is kept. Woken (latch) when a slot frees.
pub fn wait(kind: Kind, database: pg_sys::Oid, role: pg_sys::Oid) {
    let role = u32::from(role);
    let (pid, procno) = my_identity();
    let database = u32::from(database);
    let mut registry = REGISTRY.exclusive();
    // Already waiting, or already handed a slot (usable once its giver is reaped): a second entry
    // would get a second slot handed over, held for nothing until it lapsed.
    if registry
        .waiters
        .iter()
        .any(|w| w.is(kind, database, pid) && w.alive())
        || registry
            .slots
            .iter()
            .any(|s| s.handed_over && s.is_reserved_for(kind, database, pid) && s.alive())
    {
        return;
    }
    if let Some(w) = registry.waiters.iter_mut().find(|w| !w.alive()) {
        *w = Waiter {
            kind,
            pid,
            procno,
            database,
            role,
            since: now(),
        };
    }
}

/// Leaves the waiters (for `kind` in `database`), and gives back any slot handed over meanwhile.
pub fn stop_waiting(kind: Kind, database: pg_sys::Oid) {
    let pid = my_identity().0;
    let database = u32::from(database);
    let mut registry = REGISTRY.exclusive();
    for w in registry.waiters.iter_mut() {
        if w.is(kind, database, pid) {
            *w = Waiter::NONE;
        }
    }
    let mut freed = false;
    for s in registry.slots.iter_mut() {
        if s.handed_over && s.is_reserved_for(kind, database, pid) {
            *s = Slot::FREE;
            freed = true;
        }
    }
    if freed {
        wake_waiters(&registry);
    }
}

/// Whether anyone waits for a slot of the budget.
pub fn someone_waits() -> bool {
    REGISTRY.share().waiters.iter().any(Waiter::alive)
}

/// The budget's use now, from one reading of the registry: slots held in the whole cluster (live
/// workers of the extension and live reservations), and how many wait for one (schedulers of
/// databases waiting their turn, `run()` calls).
pub fn usage() -> (usize, usize) {
    let registry = REGISTRY.share();
    let waiting = registry.waiters.iter().filter(|w| w.alive()).count();
    (used(&registry), waiting)
}

/// Hands this worker's slot to the first waiter (see the module's header), if anyone waits: a
/// runner only while idle, a scheduler only between runs. `true`: the slot is theirs, and this
/// process must exit now.
pub fn give_to_waiter() -> bool {
    let index = MY_SLOT.load(Ordering::SeqCst);
    if index >= super::MAX_WORKERS {
        return false;
    }
    let mut registry = REGISTRY.exclusive();
    let mine = registry.slots[index];
    if mine.rule_id != 0 || (mine.kind == Kind::Runner && mine.assignment != Assignment::Idle) {
        return false;
    }
    let Some(first) = registry
        .waiters
        .iter()
        .enumerate()
        .filter(|(_, w)| w.alive())
        .filter(|(_, w)| w.role == 0 || held_by(&registry, w.role) < role_share())
        .min_by_key(|(_, w)| place(&registry, w))
        .map(|(i, _)| i)
    else {
        return false;
    };
    let w = registry.waiters[first];
    registry.waiters[first] = Waiter::NONE;
    registry.slots[index] = Slot {
        role: w.role,
        yielder: my_identity(),
        ..reservation(w.kind, w.database, w.pid, w.procno, true)
    };
    MY_SLOT.store(usize::MAX, Ordering::SeqCst);
    // SAFETY: the waiter's PGPROC, alive as checked under the registry's lock.
    unsafe { pg_sys::SetLatch(&raw mut (*super::proc_of(w.procno)).procLatch) };
    true
}

/// Sets the latch of every waiter (a slot was freed).
pub(super) fn wake_waiters(registry: &Registry) {
    for w in registry.waiters.iter().filter(|w| w.alive()) {
        // SAFETY: the waiter's PGPROC, alive as checked under the registry's lock.
        unsafe { pg_sys::SetLatch(&raw mut (*super::proc_of(w.procno)).procLatch) };
    }
}

/// Says once in the log, at startup and whenever a reload changes the numbers, when
/// `max_worker_processes` cannot hold the budget plus what the server's own work needs.
pub fn warn_if_too_small(last: &mut Option<(i32, usize)>) {
    // SAFETY: reading a setting fixed at server start.
    let processes = unsafe { pg_sys::max_worker_processes };
    let budget = gucs::max_workers();
    if *last == Some((processes, budget)) {
        return;
    }
    *last = Some((processes, budget));
    let needed = budget as i32 + gucs::WORKER_ROOM;
    if processes < needed {
        pgrx::warning!(
            "pg_token_cleanup: max_worker_processes = {processes} cannot hold pg_token_cleanup.max_workers = {budget} \
             plus the {} slots the server's own work needs (parallel query, logical replication): set max_worker_processes \
             to at least {needed} (restart needed), or lower pg_token_cleanup.max_workers to {}",
            gucs::WORKER_ROOM,
            (processes - gucs::WORKER_ROOM).max(2)
        );
    }
}
