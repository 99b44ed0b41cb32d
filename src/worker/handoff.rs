//! Handing a job (the rule as the scheduler or `run()` has it, and what run to record) to a runner
//! in a dynamic shared memory segment. The runner never reads the rules table for it: a role
//! holding a lock on that table cannot stall a run, and a runner runs exactly the rule that was
//! due.
//!
//! Layout: 8 bytes of length, then the job as JSON. The giver keeps the segment mapped (a
//! [`Handoff`]) until the runner is done with it; the runner attaches, copies and detaches.

use pgrx::pg_sys;
use serde::{de::DeserializeOwned, Serialize};

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
            let segment = pg_sys::dsm_create(8 + bytes.len(), 0);
            if !pg_sys::CurrentResourceOwner.is_null() {
                pg_sys::dsm_pin_mapping(segment);
            }
            let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
            std::ptr::copy_nonoverlapping(len.to_ne_bytes().as_ptr(), base, 8);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(8), bytes.len());
            Handoff { segment }
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
        let available = pg_sys::dsm_segment_map_length(segment).saturating_sub(8);
        let bytes = std::slice::from_raw_parts(base.add(8), len.min(available)).to_vec();
        pg_sys::dsm_detach(segment);
        serde_json::from_slice(&bytes).ok()
    }
}
