//! A table walk's batch statement that returns the ctids it deleted (one that skips locked rows, or
//! archives them), run through SPI with a receiver of its own.
//!
//! Such a statement ends in `RETURNING ctid` so that SPI can stop it after `batch_size` rows and the
//! next batch can resume after the last row deleted. SPI's usual receiver copies every returned
//! row into a tuple table: on 1M deleted rows that cost a third of the whole run. [`LastCtid`]
//! keeps only the count and the highest ctid.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CString;

/// A DestReceiver that counts the rows it receives and remembers the highest `ctid` (column 1).
#[repr(C)]
struct LastCtid {
    /// First, so that a `*mut DestReceiver` handed to the executor is a `*mut LastCtid`.
    receiver: pg_sys::DestReceiver,
    rows: u64,
    last: Option<(u32, u16)>,
}

#[pg_guard]
unsafe extern "C-unwind" fn receive(
    slot: *mut pg_sys::TupleTableSlot,
    receiver: *mut pg_sys::DestReceiver,
) -> bool {
    // SAFETY: `receiver` is the LastCtid passed to SPI_execute_extended below (repr(C), first
    // field); the slot holds the RETURNING row, whose first column is a non-NULL tid.
    unsafe {
        let this = &mut *receiver.cast::<LastCtid>();
        this.rows += 1;
        // slot_getsomeattrs() is a static inline function; its body, without pgrx's C shim.
        if (*slot).tts_nvalid < 1 {
            pg_sys::slot_getsomeattrs_int(slot, 1);
        }
        if !*(*slot).tts_isnull {
            let tid = &*(*(*slot).tts_values).cast_mut_ptr::<pg_sys::ItemPointerData>();
            let at = super::at(tid);
            if this.last.is_none_or(|last| at > last) {
                this.last = Some(at);
            }
        }
    }
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    _receiver: *mut pg_sys::DestReceiver,
    _operation: std::ffi::c_int,
    _typeinfo: pg_sys::TupleDesc,
) {
}

#[pg_guard]
unsafe extern "C-unwind" fn nothing(_receiver: *mut pg_sys::DestReceiver) {}

/// Runs `sql` (a DELETE … RETURNING ctid, or an archiving WITH that returns the ctids it deleted)
/// stopping after `limit` rows; returns how many rows it deleted and the highest ctid among them.
/// `expected` is the SPI code of success. Must run inside an SPI connection; errors are raised.
pub fn execute(sql: &str, limit: u64, expected: i32) -> (i64, Option<(u32, u16)>) {
    let sql = CString::new(sql).expect("no NUL in a statement built from quoted identifiers");
    let mut receiver = LastCtid {
        receiver: pg_sys::DestReceiver {
            receiveSlot: Some(receive),
            rStartup: Some(startup),
            rShutdown: Some(nothing),
            rDestroy: Some(nothing),
            mydest: pg_sys::CommandDest::DestNone,
        },
        rows: 0,
        last: None,
    };
    let options = pg_sys::SPIExecuteOptions {
        tcount: limit,
        dest: &mut receiver.receiver,
        ..Default::default()
    };
    // SAFETY: a plain SPI call inside the caller's SPI connection; `receiver` outlives it.
    let code = unsafe { pg_sys::SPI_execute_extended(sql.as_ptr(), &options) };
    // SQL errors are raised, not returned; a negative code is SPI misuse (no connection, a
    // statement that is not a DELETE … RETURNING), which must not pass as "0 rows deleted".
    if code != expected {
        error!(
            "pg_token_cleanup: a batch's statement returned SPI code {code}, expected {expected}"
        );
    }
    (receiver.rows as i64, receiver.last)
}
