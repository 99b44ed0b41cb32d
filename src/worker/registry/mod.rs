//! The registry: this extension's workers in shared memory, where they find each other without
//! `pg_stat_activity` (which hides other roles' sessions), signals to pids, or advisory locks (which
//! any role can take or fake).
//!
//! One slot per worker: its kind, pid, PGPROC number (for its latch) and database; for a runner, the
//! scheduler it serves, its current assignment, and the **claim** of the rule and table it is
//! running. One entry per database for what the launcher must know when a scheduler has left: the
//! extension was absent, or a utility statement asked the workers to stay away for a while.
//!
//! A slot is released by its process at exit (`before_shmem_exit`); a crash restart re-creates the
//! registry. Slots of processes that died without releasing them are recognised (their pid no longer
//! matches their PGPROC) and reused.
//!
//! The slots held at once are bounded by the cluster's worker budget ([`budget`]): a worker is
//! started only into a slot reserved for it beforehand.

pub mod budget;
mod claims;
mod databases;
mod runners;

pub use claims::*;
use databases::DatabaseState;
pub use databases::*;
pub use runners::*;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most workers of this extension at once (launcher, schedulers, runners), cluster-wide.
pub const MAX_WORKERS: usize = crate::gucs::MAX_WORKERS_LIMIT;
/// Most databases the launcher keeps state for.
const MAX_DATABASES: usize = 512;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Kind {
    Free = 0,
    Launcher = 1,
    Scheduler = 2,
    Runner = 3,
    /// Reserved for a worker about to start (see [`budget`]).
    Reserved = 4,
}

/// A runner's assignment, as the scheduler and the runner hand it over.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Assignment {
    /// Waiting for work.
    Idle = 0,
    /// The scheduler handed over a run request (`handoff`); the runner has not taken it yet.
    Given = 1,
    /// The runner is performing it.
    Taken = 2,
    /// Done: `run_id` is the run it recorded (0: it recorded none, the slot was skipped).
    Done = 3,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    kind: Kind,
    pid: i32,
    procno: i32,
    database: u32,
    /// Runner: the pid of the scheduler it serves; 0 for a runner of `token_cleanup.run()`.
    scheduler_pid: i32,
    assignment: Assignment,
    /// The DSM handle of the run request handed over.
    handoff: u32,
    /// The run recorded for the assignment.
    run_id: i64,
    /// The claim: the rule being run and its table (0: none).
    rule_id: i64,
    table: u32,
    /// Reserved: the kind of worker it is kept for (its `pid` and `procno` are the reserver's).
    reserved_for: Kind,
    /// Reserved: until when (PostgreSQL timestamp, µs); a worker that has not adopted it by then
    /// never will.
    reserved_until: i64,
    /// Reserved: handed to a waiter by a worker that gave its slot up (see [`budget`]); usable
    /// once that worker (`yielder`: pid, PGPROC number) is gone, as the postmaster's slot it
    /// held is free only then. A free slot keeps its last worker there too, for the same reason.
    handed_over: bool,
    yielder: (i32, i32),
    /// Runner: its scheduler stopped its run to give the slot to another owner's due rule.
    preempted: bool,
    /// The claimed run's progress: rows deleted and batches committed so far (its row in
    /// token_cleanup.runs gets them only every few seconds).
    rows_deleted: i64,
    batches: i32,
    /// A manual runner (or its reservation): the role whose `run()` call it serves (see
    /// [`budget`]); 0 otherwise.
    role: u32,
}

impl Slot {
    /// Whether this is a reservation for a worker of `kind` in `database`, made by (or handed to)
    /// process `pid`.
    fn is_reserved_for(&self, kind: Kind, database: u32, pid: i32) -> bool {
        self.kind == Kind::Reserved
            && self.reserved_for == kind
            && self.database == database
            && self.pid == pid
    }

    const FREE: Slot = Slot {
        kind: Kind::Free,
        pid: 0,
        procno: -1,
        database: 0,
        scheduler_pid: 0,
        assignment: Assignment::Idle,
        handoff: 0,
        run_id: 0,
        rule_id: 0,
        table: 0,
        reserved_for: Kind::Free,
        reserved_until: 0,
        handed_over: false,
        yielder: (0, -1),
        preempted: false,
        rows_deleted: 0,
        batches: 0,
        role: 0,
    };

    /// Whether the process that took this slot still lives (its PGPROC still carries its pid); a
    /// reservation, whether its reserver lives and it has not expired.
    fn alive(&self) -> bool {
        if self.kind == Kind::Free || self.procno < 0 {
            return false;
        }
        if self.kind == Kind::Reserved && self.reserved_until < now() {
            return false;
        }
        process_alive(self.pid, self.procno)
    }
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Registry {
    slots: [Slot; MAX_WORKERS],
    databases: [DatabaseState; MAX_DATABASES],
    /// Who waits for a slot of the budget, oldest first served (see [`budget`]).
    waiters: [budget::Waiter; budget::MAX_WAITERS],
    /// How many times the launcher was asked to look again (CREATE EXTENSION, a utility statement
    /// done): a count, so that a scheduler can say which asks its look at pg_extension answered.
    /// (The launcher's latch is also set when its children start and stop, which is no ask.)
    launcher_wakes: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            slots: [Slot::FREE; MAX_WORKERS],
            databases: [DatabaseState::NONE; MAX_DATABASES],
            waiters: [budget::Waiter::NONE; budget::MAX_WAITERS],
            launcher_wakes: 0,
        }
    }
}

// SAFETY: plain data of fixed size, no pointers into process memory.
unsafe impl PGRXSharedMemory for Registry {}

// SAFETY: the name is ours alone.
static REGISTRY: PgLwLock<Registry> = unsafe { PgLwLock::new(c"pg_token_cleanup registry") };

/// This process's slot, once registered.
static MY_SLOT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Requests the shared memory; called from `_PG_init` while preloading.
pub fn init() {
    pg_shmem_init!(REGISTRY);
}

/// # Safety
/// `procno` must be a PGPROC number of this cluster.
unsafe fn proc_of(procno: i32) -> *mut pg_sys::PGPROC {
    // SAFETY: the caller's promise.
    unsafe { (*pg_sys::ProcGlobal).allProcs.add(procno as usize) }
}

/// The current time (PostgreSQL timestamp, µs).
fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Whether the process `pid` still holds PGPROC number `procno`.
fn process_alive(pid: i32, procno: i32) -> bool {
    if procno < 0 {
        return false;
    }
    // SAFETY: ProcGlobal->allProcs has MaxBackends + auxiliary entries; procno came from MyProc.
    unsafe { (*proc_of(procno)).pid == pid }
}

fn my_identity() -> (i32, i32) {
    // This process's PGPROC number: its index in ProcGlobal->allProcs (PGPROC.pgprocno until
    // PostgreSQL 16; GetNumberFromPGProc(), a static inline, from 17 on).
    // SAFETY: MyProc points into ProcGlobal->allProcs in every worker that registers.
    unsafe {
        let number = pg_sys::MyProc.offset_from((*pg_sys::ProcGlobal).allProcs);
        (pg_sys::MyProcPid, number as i32)
    }
}

/// Why a worker could not register.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Another live scheduler serves this database.
    AlreadyServed,
    /// The budget (`pg_token_cleanup.max_workers`) or the registry is full.
    Full,
}

/// Registers this process as a worker of `kind` in `database` (0 for the launcher). A second
/// scheduler for a database is refused. A scheduler or runner takes the slot its starter reserved
/// for it (see [`budget`]), or else a free one within the budget. The slot is released when the
/// process exits.
pub fn register(kind: Kind, database: pg_sys::Oid, scheduler_pid: i32) -> Result<(), Refused> {
    let (pid, procno) = my_identity();
    let database = u32::from(database);
    let index = {
        let mut registry = REGISTRY.exclusive();
        let reserved = budget::reservation_for_me(&registry, kind, database);
        if kind == Kind::Scheduler
            && registry
                .slots
                .iter()
                .any(|s| s.kind == Kind::Scheduler && s.database == database && s.alive())
        {
            if let Some(index) = reserved {
                registry.slots[index] = Slot::FREE;
            }
            return Err(Refused::AlreadyServed);
        }
        let index = match reserved {
            Some(index) => index,
            // The launcher is the budget's first worker; any other needs room in the budget.
            None if kind != Kind::Launcher
                && !budget::has_room(&registry, kind, database, pid, 0) =>
            {
                return Err(Refused::Full)
            }
            None => registry
                .slots
                .iter()
                .position(|s| !s.alive())
                .ok_or(Refused::Full)?,
        };
        let role = reserved.map_or(0, |i| registry.slots[i].role);
        registry.slots[index] = Slot {
            kind,
            pid,
            procno,
            database,
            scheduler_pid,
            role,
            ..Slot::FREE
        };
        if kind == Kind::Scheduler {
            if let Some(state) = registry
                .databases
                .iter_mut()
                .find(|d| d.database == database)
            {
                state.no_extension = false;
            }
        }
        index
    };
    MY_SLOT.store(index, Ordering::SeqCst);
    // SAFETY: registering a plain callback for this process's exit.
    unsafe { pg_sys::before_shmem_exit(Some(release_at_exit), pg_sys::Datum::from(0)) };
    Ok(())
}

#[pg_guard]
unsafe extern "C-unwind" fn release_at_exit(_code: i32, _arg: pg_sys::Datum) {
    let index = MY_SLOT.swap(usize::MAX, Ordering::SeqCst);
    if index < MAX_WORKERS {
        let pid = my_identity().0;
        let mut registry = REGISTRY.exclusive();
        if registry.slots[index].pid == pid {
            // This process still holds its postmaster slot until the postmaster reaps it: the
            // slot is not reserved again before then (see budget::reserve), nor, should its pid
            // be reused meanwhile, held back for longer than a few seconds.
            registry.slots[index] = Slot {
                yielder: my_identity(),
                reserved_until: now() + budget::REAP_GRACE.as_micros() as i64,
                ..Slot::FREE
            };
            // A slot of the budget is free: whoever waits for one looks again.
            budget::wake_waiters(&registry);
        }
    }
}

fn with_my_slot<R>(f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
    let index = MY_SLOT.load(Ordering::SeqCst);
    if index >= MAX_WORKERS {
        return None;
    }
    let mut registry = REGISTRY.exclusive();
    Some(f(&mut registry.slots[index]))
}

/// Sets the latch of the process in `slot` if it is still the one registered there.
fn set_latch(slot: &Slot) {
    if slot.alive() {
        // SAFETY: the PGPROC belongs to a live process (checked just above, under the registry's
        // lock); SetLatch on another process's latch is how PostgreSQL wakes it.
        unsafe { pg_sys::SetLatch(&raw mut (*proc_of(slot.procno)).procLatch) };
    }
}

/// Wakes the scheduler of `database`, if one runs.
pub fn wake_scheduler(database: pg_sys::Oid) {
    let database = u32::from(database);
    let registry = REGISTRY.share();
    for slot in registry
        .slots
        .iter()
        .filter(|s| s.kind == Kind::Scheduler && s.database == database)
    {
        set_latch(slot);
    }
}

/// Wakes the launcher: CREATE EXTENSION happened somewhere, look again.
pub fn wake_launcher() {
    let mut registry = REGISTRY.exclusive();
    registry.launcher_wakes += 1;
    for slot in registry.slots.iter().filter(|s| s.kind == Kind::Launcher) {
        set_latch(slot);
    }
}

/// How many times the launcher has been asked to look again so far.
pub fn launcher_wakes() -> u64 {
    REGISTRY.share().launcher_wakes
}

/// Whether a live scheduler is registered for `database`.
pub fn scheduler_serves(database: pg_sys::Oid) -> bool {
    let database = u32::from(database);
    REGISTRY
        .share()
        .slots
        .iter()
        .any(|s| s.kind == Kind::Scheduler && s.database == database && s.alive())
}

/// Pids of this extension's schedulers and runners connected to `database`.
pub fn workers_in(database: pg_sys::Oid) -> Vec<i32> {
    let database = u32::from(database);
    REGISTRY
        .share()
        .slots
        .iter()
        .filter(|s| matches!(s.kind, Kind::Scheduler | Kind::Runner))
        .filter(|s| s.database == database && s.alive())
        .map(|s| s.pid)
        .collect()
}
