//! Pooled runners and their scheduler: which runners serve it, and the handover of a request (Idle →
//! Given → Taken → Done → Idle), each side waking the other through its latch.

use super::{budget, set_latch, with_my_slot, Assignment, Kind, Slot, MY_SLOT, REGISTRY};
use std::sync::atomic::Ordering;

/// A runner as its scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerView {
    pub slot: usize,
    pub pid: i32,
    pub assignment: Assignment,
}

/// The live runners serving the scheduler `scheduler_pid`.
pub fn runners_of(scheduler_pid: i32) -> Vec<RunnerView> {
    REGISTRY
        .share()
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == Kind::Runner && s.scheduler_pid == scheduler_pid && s.alive())
        .map(|(i, s)| RunnerView {
            slot: i,
            pid: s.pid,
            assignment: s.assignment,
        })
        .collect()
}

/// Hands the request in DSM segment `handoff` to the idle runner in `slot` (still `pid`) and wakes it.
/// False if that runner is gone or busy.
pub fn give(slot: usize, pid: i32, handoff: u32) -> bool {
    let mut registry = REGISTRY.exclusive();
    let s = &mut registry.slots[slot];
    if s.pid != pid || !s.alive() || s.assignment != Assignment::Idle {
        return false;
    }
    s.assignment = Assignment::Given;
    s.handoff = handoff;
    set_latch(s);
    true
}

/// The scheduler takes back a finished assignment: the runner is idle again.
pub fn acknowledge(slot: usize, pid: i32) {
    let mut registry = REGISTRY.exclusive();
    let s = &mut registry.slots[slot];
    if s.pid == pid && s.assignment == Assignment::Done {
        s.assignment = Assignment::Idle;
    }
}

/// The runner's side: the handle of a request given to it, now taken.
pub fn take() -> Option<u32> {
    with_my_slot(|slot| {
        (slot.assignment == Assignment::Given).then(|| {
            slot.assignment = Assignment::Taken;
            slot.handoff
        })
    })
    .flatten()
}

/// The runner's side: the request is done (its result handed back); wakes its scheduler.
pub fn done() {
    let scheduler = with_my_slot(|slot| {
        slot.assignment = Assignment::Done;
        slot.scheduler_pid
    });
    if let Some(scheduler_pid) = scheduler {
        wake_scheduler_pid(scheduler_pid);
    }
}

/// Sets the latch of the scheduler `pid` (a runner that has registered or finished tells it so).
pub fn wake_scheduler_pid(pid: i32) {
    if pid == 0 {
        return;
    }
    let registry = REGISTRY.share();
    if let Some(s) = registry
        .slots
        .iter()
        .find(|s| s.kind == Kind::Scheduler && s.pid == pid)
    {
        set_latch(s);
    }
}

/// A pooled runner leaves: its slot is freed at once, unless a request was given to it meanwhile (then
/// it must take it first). True when it may exit.
pub fn leave_if_idle() -> bool {
    let left = with_my_slot(|slot| {
        let idle = slot.assignment == Assignment::Idle;
        if idle {
            *slot = Slot::FREE;
        }
        idle
    });
    if left == Some(true) {
        MY_SLOT.store(usize::MAX, Ordering::SeqCst);
        budget::wake_waiters(&REGISTRY.share());
    }
    left.unwrap_or(true)
}

/// Whether the scheduler `pid` is still registered (a pooled runner leaves when it is not).
pub fn scheduler_alive(pid: i32) -> bool {
    REGISTRY
        .share()
        .slots
        .iter()
        .any(|s| s.kind == Kind::Scheduler && s.pid == pid && s.alive())
}
