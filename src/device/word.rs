//! Aligned 8-byte words of the device changed and read with atomic operations: what the journal
//! commits with, and the lanes that direct clients and the server share.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{persist, Device};
use crate::error::{Error, Result};

impl Device {
    /// The aligned word at `off`, as a pointer into the mapping (never a reference: other
    /// processes change it).
    fn word(&self, off: u64) -> Result<*const AtomicU64> {
        if off % 8 != 0 {
            return Err(Error::InvalidArgument("unaligned 8-byte word"));
        }
        let at = self.check(off, 8)?;
        // SAFETY: `check` proved the 8 bytes lie inside the mapping, which lives until drop.
        Ok(unsafe { self.base.as_ptr().add(at) } as *const AtomicU64)
    }

    /// Writes back the word at `p` (device offset `off`) and counts it.
    fn written_back(&self, p: *const AtomicU64, off: u64) {
        // SAFETY: `p` came from `word`, which checked it lies inside the mapping.
        let lines = unsafe { persist::flush_range(p as *mut u8, 8, self.flush) };
        self.counters.mine().flush_lines.fetch_add(lines, Ordering::Relaxed);
        self.note(off, 8);
    }

    raw! {
        /// Failure-atomic aligned 8-byte store, written back. The caller fences.
        fn store_u64(&self, off: u64, v: u64) -> Result<()> {
            let p = self.word(off)?;
            // SAFETY: `word` checked the 8 bytes lie inside the mapping and are 8-aligned (the
            // mapping base is page-aligned), so an AtomicU64 view of them is valid.
            unsafe { (*p).store(v, Ordering::Release) };
            self.written_back(p, off);
            Ok(())
        }
    }

    raw! {
        /// Compare-and-swap of the aligned 8-byte word at `off` (sequentially consistent): when
        /// it holds `current` it becomes `new`, written back. Returns what it held. The caller
        /// fences.
        fn compare_exchange_u64(&self, off: u64, current: u64, new: u64) -> Result<u64> {
            let p = self.word(off)?;
            // SAFETY: as in `store_u64`: inside the mapping and 8-aligned.
            let held = unsafe { (*p).compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst) };
            self.written_back(p, off);
            Ok(held.unwrap_or_else(|h| h))
        }
    }

    /// Aligned 8-byte load (pairs with [`Device::store_u64`]).
    pub(crate) fn load_u64(&self, off: u64) -> Result<u64> {
        let p = self.word(off)?;
        // SAFETY: as in `store_u64`: inside the mapping and 8-aligned.
        Ok(unsafe { (*p).load(Ordering::Acquire) })
    }
}
