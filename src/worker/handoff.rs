//! The one channel between whoever asks for a run (a scheduler, or `run()` in a backend) and the
//! runner that performs it: a dynamic shared memory segment holding the request, then the result.
//! The runner never reads the rules table for the request: a role holding a lock on that table
//! cannot stall a run, and a runner runs exactly the rule that was due. The asker never reads the
//! runs table for the result: it gets the run's outcome and error as the runner had them.
//!
//! Layout: the request's length (8 bytes), a "done" flag (8), the asker's latch (8), the result's
//! length (8), the request as JSON, then room for the result as JSON ([`RESULT_ROOM`] bytes). The
//! asker keeps the segment mapped (a [`Handoff`]) until it has the result; the runner attaches to
//! copy the request, and again to write the result and set the flag ([`hand_back`]): `run()` returns
//! when the run is recorded, not when the worker process is gone (tearing down a process that
//! touched a large table took 10-25 ms more).

use pgrx::pg_sys;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the flag, the latch, the result's length and the request start in a segment.
const DONE: usize = 8;
const LATCH: usize = 16;
const RESULT_LEN: usize = 24;
const REQUEST: usize = 32;
/// Room for a result. Texts of errors a rule's code raises are cut to
/// [`crate::errors::MAX_TEXT_BYTES`] each, so a result is a few kilobytes; a result that still does
/// not fit is not written, and the asker reads it from where it is recorded.
const RESULT_ROOM: usize = 64 * 1024;

/// A request in a DSM segment, mapped in this process until dropped.
pub struct Handoff {
    segment: *mut pg_sys::dsm_segment,
}

impl Handoff {
    /// Writes `request` into a new segment with room for its result.
    pub fn create<T: Serialize>(request: &T) -> Handoff {
        let bytes = serde_json::to_vec(request).expect("a request serializes");
        // SAFETY: a new segment of the size we write; pinned to this process's lifetime rather than
        // the current resource owner, so that it outlives the transaction that made it.
        unsafe {
            let segment = pg_sys::dsm_create(REQUEST + bytes.len() + RESULT_ROOM, 0);
            if !pg_sys::CurrentResourceOwner.is_null() {
                pg_sys::dsm_pin_mapping(segment);
            }
            let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
            write_u64(base, 0, bytes.len() as u64);
            flag(base).store(0, Ordering::SeqCst);
            // The latch is in shared memory (this process's PGPROC), at the same address in every
            // process of the cluster.
            write_u64(base, LATCH, pg_sys::MyLatch as u64);
            write_u64(base, RESULT_LEN, 0);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(REQUEST), bytes.len());
            Handoff { segment }
        }
    }

    /// Whether the runner said it is done with the request (its outcome is committed).
    pub fn done(&self) -> bool {
        // SAFETY: a segment this process has mapped, laid out by `create`.
        unsafe { flag(self.base()).load(Ordering::SeqCst) != 0 }
    }

    /// The result the runner handed back; `None` until it is done, or when it wrote none (it did
    /// not fit, or the runner ended before it could).
    pub fn result<R: DeserializeOwned>(&self) -> Option<R> {
        if !self.done() {
            return None;
        }
        // SAFETY: a segment this process has mapped; the runner wrote the result and its length
        // before the flag (SeqCst), and writes nothing after it.
        unsafe {
            let base = self.base();
            let len = read_u64(base, RESULT_LEN) as usize;
            let at = REQUEST + read_u64(base, 0) as usize;
            if len == 0 || len > RESULT_ROOM {
                return None;
            }
            let bytes = std::slice::from_raw_parts(base.add(at), len);
            serde_json::from_slice(bytes).ok()
        }
    }

    /// The handle a runner attaches with.
    pub fn handle(&self) -> u32 {
        // SAFETY: a segment this process has mapped.
        unsafe { pg_sys::dsm_segment_handle(self.segment) }
    }

    fn base(&self) -> *mut u8 {
        // SAFETY: a segment this process has mapped.
        unsafe { pg_sys::dsm_segment_address(self.segment).cast::<u8>() }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // SAFETY: detaches the mapping made in `create`; the segment goes when the last one does.
        unsafe { pg_sys::dsm_detach(self.segment) };
    }
}

/// The runner's side: reads the request in segment `handle`; `None` if the segment is gone (its
/// asker exited) or does not hold a request.
pub fn read<T: DeserializeOwned>(handle: u32) -> Option<T> {
    // SAFETY: attach, copy out, detach; the length was written before the handle was given.
    unsafe {
        let segment = pg_sys::dsm_attach(handle);
        if segment.is_null() {
            return None;
        }
        let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
        let len = read_u64(base, 0) as usize;
        let available = pg_sys::dsm_segment_map_length(segment).saturating_sub(REQUEST);
        let bytes = std::slice::from_raw_parts(base.add(REQUEST), len.min(available)).to_vec();
        pg_sys::dsm_detach(segment);
        serde_json::from_slice(&bytes).ok()
    }
}

/// The runner's side, once the run's outcome is committed: writes `result` (when it fits), sets the
/// segment's "done" flag and the asker's latch. Nothing to do if the asker is gone (it detached,
/// and so did the segment).
pub fn hand_back<R: Serialize>(handle: u32, result: &R) {
    let bytes = serde_json::to_vec(result).unwrap_or_default();
    // SAFETY: attach, write the result within the room `create` made, set the flag, wake the latch
    // written by `create`, detach.
    unsafe {
        let segment = pg_sys::dsm_attach(handle);
        if segment.is_null() {
            return;
        }
        let base = pg_sys::dsm_segment_address(segment).cast::<u8>();
        let at = REQUEST + read_u64(base, 0) as usize;
        let room = pg_sys::dsm_segment_map_length(segment).saturating_sub(at);
        if !bytes.is_empty() && bytes.len() <= room.min(RESULT_ROOM) {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(at), bytes.len());
            write_u64(base, RESULT_LEN, bytes.len() as u64);
        }
        flag(base).store(1, Ordering::SeqCst);
        let latch = read_u64(base, LATCH) as *mut pg_sys::Latch;
        if !latch.is_null() {
            pg_sys::SetLatch(latch);
        }
        pg_sys::dsm_detach(segment);
    }
}

/// The "done" flag of a segment mapped at `base` (MAXALIGNed, so the flag is 8-byte aligned).
///
/// # Safety
/// `base` is the address of a mapped segment of at least [`REQUEST`] bytes.
unsafe fn flag<'a>(base: *mut u8) -> &'a AtomicU64 {
    // SAFETY: as the caller promises; shared between processes, hence atomic.
    unsafe { &*base.add(DONE).cast::<AtomicU64>() }
}

/// # Safety
/// `base + at .. base + at + 8` lies in a mapped segment.
unsafe fn write_u64(base: *mut u8, at: usize, value: u64) {
    // SAFETY: as the caller promises.
    unsafe { std::ptr::copy_nonoverlapping(value.to_ne_bytes().as_ptr(), base.add(at), 8) };
}

/// # Safety
/// `base + at .. base + at + 8` lies in a mapped segment.
unsafe fn read_u64(base: *mut u8, at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: as the caller promises.
    unsafe { std::ptr::copy_nonoverlapping(base.add(at), bytes.as_mut_ptr(), 8) };
    u64::from_ne_bytes(bytes)
}
