//! Handing a job (the rule as the scheduler or `run()` has it, and what run to record) to a runner
//! in a dynamic shared memory segment. The runner never reads the rules table for it: a role
//! holding a lock on that table cannot stall a run, and a runner runs exactly the rule that was
//! due.
//!
//! Layout: 8 bytes of length, a "done" flag (8 bytes), the giver's latch (8 bytes), then the job as
//! JSON. The giver keeps the segment mapped (a [`Handoff`]) until the runner is done with it; the
//! runner attaches, copies and detaches, and a manual run's runner attaches again to say it is done
//! ([`signal_done`]): `run()` returns when the run is recorded, not when the worker process is
//! gone (tearing down a process that touched a large table took 10-25 ms more).

use pgrx::pg_sys;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the flag, the latch and the job start in a segment.
const DONE: usize = 8;
const LATCH: usize = 16;
const JOB: usize = 24;

/// A job in a DSM segment, mapped in this process until dropped.
pub struct Handoff {
    segment: *mut pg_sys::dsm_segment,
}

impl Handoff {
    /// Writes `job` into a new segment.
    pub fn create<T: Serialize>(job: &T) -> Handoff {
        let bytes = serde_json::to_vec(job).expect("a job serializes");
        let len = bytes.len() as u64;
        // SAFETY: a new segment of the size we write; pinned to this process's lifetime rather than
        // the current resource owner, so that it outlives the transaction that made it.
        unsafe {
            let segment = pg_sys::dsm_create(JOB + bytes.len(), 0);
            if !pg_sys::CurrentResourceOwner.is_null() {
                pg_sys::dsm_pin_mapping(segment);
            }
            let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
            std::ptr::copy_nonoverlapping(len.to_ne_bytes().as_ptr(), base, 8);
            done_flag(base).store(0, Ordering::SeqCst);
            // The latch is in shared memory (this process's PGPROC), at the same address in every
            // process of the cluster.
            let latch = pg_sys::MyLatch as u64;
            std::ptr::copy_nonoverlapping(latch.to_ne_bytes().as_ptr(), base.add(LATCH), 8);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(JOB), bytes.len());
            Handoff { segment }
        }
    }

    /// Whether the runner said it is done with the job (its outcome is committed).
    pub fn done(&self) -> bool {
        // SAFETY: a segment this process has mapped, laid out by `create`.
        unsafe {
            let base = pg_sys::dsm_segment_address(self.segment).cast::<u8>();
            done_flag(base).load(Ordering::SeqCst) != 0
        }
    }

    /// The handle a runner attaches with.
    pub fn handle(&self) -> u32 {
        // SAFETY: a segment this process has mapped.
        unsafe { pg_sys::dsm_segment_handle(self.segment) }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // SAFETY: detaches the mapping made in `create`; the segment goes when the last one does.
        unsafe { pg_sys::dsm_detach(self.segment) };
    }
}

/// The runner's side: reads the job in segment `handle`; `None` if the segment is gone (its giver
/// exited) or does not hold a job.
pub fn read<T: DeserializeOwned>(handle: u32) -> Option<T> {
    // SAFETY: attach, copy out, detach; the length was written before the handle was given.
    unsafe {
        let segment = pg_sys::dsm_attach(handle);
        if segment.is_null() {
            return None;
        }
        let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
        let mut len = [0u8; 8];
        std::ptr::copy_nonoverlapping(base, len.as_mut_ptr(), 8);
        let len = u64::from_ne_bytes(len) as usize;
        let available = pg_sys::dsm_segment_map_length(segment).saturating_sub(JOB);
        let bytes = std::slice::from_raw_parts(base.add(JOB), len.min(available)).to_vec();
        pg_sys::dsm_detach(segment);
        serde_json::from_slice(&bytes).ok()
    }
}

/// The runner's side, once the job's outcome is committed: sets the segment's "done" flag and the
/// giver's latch. Nothing to do if the giver is gone (it detached, and so did the segment).
pub fn signal_done(handle: u32) {
    // SAFETY: attach, set the flag, wake the latch written by `create`, detach.
    unsafe {
        let segment = pg_sys::dsm_attach(handle);
        if segment.is_null() {
            return;
        }
        let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
        done_flag(base).store(1, Ordering::SeqCst);
        let mut latch = [0u8; 8];
        std::ptr::copy_nonoverlapping(base.add(LATCH), latch.as_mut_ptr(), 8);
        let latch = u64::from_ne_bytes(latch) as *mut pg_sys::Latch;
        if !latch.is_null() {
            pg_sys::SetLatch(latch);
        }
        pg_sys::dsm_detach(segment);
    }
}

/// The "done" flag of a segment mapped at `base` (MAXALIGNed, so the flag is 8-byte aligned).
///
/// # Safety
/// `base` is the address of a mapped segment of at least [`JOB`] bytes.
unsafe fn done_flag<'a>(base: *mut u8) -> &'a AtomicU64 {
    // SAFETY: as the caller promises; shared between processes, hence atomic.
    unsafe { &*base.add(DONE).cast::<AtomicU64>() }
}
