//! Counts of the persistence work a device issued: write-backs, fences, non-temporal bytes and
//! lines left in the cache, kept per thread and summed when read.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of persistence work issued, for the flush/fence table and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Cache-line write-back instructions issued (one per 64-byte line per flush).
    pub flush_lines: u64,
    /// Store fences.
    pub fences: u64,
    /// Bytes copied or filled with non-temporal stores.
    pub nt_bytes: u64,
    /// Lines stored with plain stores and left in the cache, to be written back later (the
    /// journal's entries applied in place, written back at the checkpoint).
    pub cached_lines: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            flush_lines: self.flush_lines - o.flush_lines,
            fences: self.fences - o.fences,
            nt_bytes: self.nt_bytes - o.nt_bytes,
            cached_lines: self.cached_lines - o.cached_lines,
        }
    }
}

/// The counters, striped: each thread adds to a stripe of its own (its own cache line), so
/// threads storing to the device side by side do not pass one line between their CPUs on
/// every store. [`super::Device::counters`] sums the stripes.
#[derive(Debug, Default)]
pub(super) struct AtomicCounters {
    stripes: [Stripe; STRIPES],
}

const STRIPES: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct Stripe {
    pub(super) flush_lines: AtomicU64,
    pub(super) fences: AtomicU64,
    pub(super) nt_bytes: AtomicU64,
    pub(super) cached_lines: AtomicU64,
}

impl AtomicCounters {
    /// The calling thread's stripe (threads take stripes in turn as they first count).
    pub(super) fn mine(&self) -> &Stripe {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        }
        &self.stripes[STRIPE.with(|s| *s)]
    }

    pub(super) fn sum(&self, field: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.stripes.iter().map(|s| field(s).load(Ordering::Relaxed)).sum()
    }
}
