//! Dirty tracking: which device pages mapped into shared writable regions were stored to since
//! they were last written back, found by the kernel's page tables rather than by faults.
//!
//! Device pieces mapped into a region are registered, write-protect mode only, with one
//! process-wide userfaultfd opened with `UFFD_FEATURE_WP_ASYNC`. A store to a page that is
//! write-protected through it is resolved by the kernel in the fault itself (the protection
//! comes off and the store lands; no message, no service thread), so the page table entry is
//! the record: protected means "not stored to since protected", anything else — unprotected,
//! never faulted in, or zapped — reads as stored to. `PAGEMAP_SCAN` (an ioctl on
//! /proc/self/pagemap, Linux 6.7) with `PM_SCAN_WP_MATCHING` reports the pages that read as
//! stored to (`PAGE_IS_WRITTEN`) and protects them again, each entry under its page-table lock,
//! and flushes the TLB before it returns. It skips memory not registered with an async
//! userfaultfd (the region's reservation, registered with a fault-service userfaultfd), so it
//! can be run over a whole region. A separate userfaultfd is needed because the feature makes
//! every write-protect fault of its userfaultfd asynchronous, and the fault service's own
//! write-protected pages (zeros, copies) must fault to it.
//!
//! Layouts follow `include/uapi/linux/fs.h` (the machine's headers predate them).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use super::{kernel, Uffd, MODE_WP};
use crate::error::{Error, Result};
use crate::sync::{lock, Mutex, MutexGuard};

/// UFFDIO_API feature: write-protect faults of this userfaultfd are resolved by the kernel.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;

/// `PAGE_IS_WRITTEN`: stored to since last write-protected (or never protected).
#[cfg_attr(feature = "model", allow(dead_code))]
pub(super) const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported.
pub(super) const PM_SCAN_WP_MATCHING: u64 = 1 << 0;

/// `struct page_region`, 24 bytes: one run of pages `[start, end)` and its categories.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PageRegion {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) categories: u64,
}
const _: () = assert!(std::mem::size_of::<PageRegion>() == 24);

/// `struct pm_scan_arg`, 96 bytes.
#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct PmScanArg {
    pub(super) size: u64,
    pub(super) flags: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    /// Set by the kernel: where the walk stopped (`end` unless the output filled up).
    pub(super) walk_end: u64,
    pub(super) vec: u64,
    pub(super) vec_len: u64,
    pub(super) max_pages: u64,
    pub(super) category_inverted: u64,
    pub(super) category_mask: u64,
    pub(super) category_anyof_mask: u64,
    pub(super) return_mask: u64,
}
const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

/// Runs of output one scan call takes (the walk resumes where a full buffer stopped it).
const RUNS_PER_CALL: usize = 256;

/// The process's dirty tracker: the write-protect-async userfaultfd and /proc/self/pagemap.
#[derive(Debug)]
pub struct Tracker {
    uffd: Uffd,
    pagemap: kernel::Pagemap,
}

static TRACKER: OnceLock<Option<Arc<Tracker>>> = OnceLock::new();

/// The process's tracker, opened at the first call; `None` where the kernel lacks what it needs
/// (UFFD_FEATURE_WP_ASYNC, PAGEMAP_SCAN: Linux before 6.7), and then mappings write back
/// everything they map.
pub fn tracker() -> Option<Arc<Tracker>> {
    TRACKER.get_or_init(|| Tracker::open().ok().map(Arc::new)).clone()
}

impl Tracker {
    fn open() -> Result<Tracker> {
        let pagemap = kernel::open_pagemap().map_err(|e| Error::io("open /proc/self/pagemap", e))?;
        let uffd = Uffd::new(FEATURE_WP_ASYNC)?;
        let t = Tracker { uffd, pagemap };
        // PAGEMAP_SCAN exists: a scan of an empty range answers nothing (ENOTTY without it).
        let mut none = [PageRegion::default(); 1];
        // SAFETY: an empty range: no page's protection can change.
        unsafe { kernel::pagemap_scan(&t.pagemap, 0, 0, &mut none, PM_SCAN_WP_MATCHING) }
            .map_err(|e| Error::io("PAGEMAP_SCAN", e))?;
        Ok(t)
    }

    /// Registers a device piece just mapped at `[start, start+len)` for tracking.
    ///
    /// # Safety
    /// The range must be memory the caller owns and keeps mapped while registered (a piece of
    /// its region); only its write protection changes through this tracker.
    pub(super) unsafe fn register(&self, start: u64, len: u64) -> Result<()> {
        // SAFETY: the caller owns the range (this function's contract).
        unsafe { self.uffd.register_unrecorded(start, len, MODE_WP) }
    }

    /// Appends to `out` the runs of `[start, end)` stored to since they were last protected, as
    /// address ranges (ascending, adjacent runs merged), and protects them again.
    ///
    /// # Safety
    /// `[start, end)` must be memory the caller owns (its region): the scan protects the tracked
    /// pages there, which another owner's tracking would count as not stored to.
    pub(super) unsafe fn harvest(&self, start: u64, end: u64, out: &mut Vec<(u64, u64)>) -> Result<()> {
        let mut buf = [PageRegion::default(); RUNS_PER_CALL];
        let mut at = start;
        while at < end {
            // SAFETY: `[at, end)` lies inside the caller's range (this function's contract).
            let (n, walk_end) = unsafe { kernel::pagemap_scan(&self.pagemap, at, end, &mut buf, PM_SCAN_WP_MATCHING) }
                .map_err(|e| Error::io("PAGEMAP_SCAN", e))?;
            for r in &buf[..n] {
                match out.last_mut() {
                    Some(last) if last.1 == r.start => last.1 = r.end,
                    _ => out.push((r.start, r.end)),
                }
            }
            if walk_end <= at || walk_end > end {
                return Err(Error::io("PAGEMAP_SCAN", std::io::Error::from_raw_os_error(libc::EIO)));
            }
            at = walk_end;
        }
        Ok(())
    }
}

/// Device bytes a mapping may have stored to and not yet written back: `len` bytes at region
/// offset `off`, device offset `dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub off: u64,
    pub len: u64,
    pub dev: u64,
}

/// What a region must write back to make the stores made through it durable.
#[derive(Debug, PartialEq, Eq)]
pub enum Dirty {
    /// Exactly these (ascending by region offset, then the pieces taken out since): the pages
    /// stored to since the last take, and whole pieces that left the region since.
    Spans(Vec<Span>),
    /// Unknown (the region is not tracked, or tracking broke): every device page mapped into
    /// the region may have been stored to; these spans besides, which left it while tracked.
    Everything(Vec<Span>),
}

/// One region's tracking: its device pieces (registered with the tracker) and the pieces that
/// left it while their stores might not be written back.
#[derive(Debug)]
pub(super) struct Track {
    pub(super) tracker: Arc<Tracker>,
    state: Mutex<TrackState>,
}

#[derive(Debug, Default)]
pub(super) struct TrackState {
    /// Device pieces in the region: region offset → (length, device offset).
    pieces: BTreeMap<u64, (u64, u64)>,
    /// The parts of `pieces` not yet registered with the tracker (region offset → length): a
    /// scan does not see them, so they are registered, in runs, before every scan. Mapping a
    /// piece (a fault) then costs no registration; its page-table entries read as stored to
    /// until the scan after the registration protects them.
    unregistered: BTreeMap<u64, u64>,
    /// Pieces taken out of the region (reset, or mapped over) since they were last handed out.
    /// The page-table entries that knew whether they were stored to went with them, so they count
    /// as stored to.
    gone: Vec<Span>,
    /// A registration or a scan failed: from now on every piece counts as stored to.
    lost: bool,
}

impl Track {
    pub(super) fn new(tracker: Arc<Tracker>) -> Track {
        Track { tracker, state: Mutex::new(TrackState::default()) }
    }

    /// The state, locked. Held across every change of the region's pieces and every scan, so a
    /// scan never meets a piece mapped but not yet registered, nor misses one reset meanwhile.
    pub(super) fn lock(&self) -> MutexGuard<'_, TrackState> {
        lock(&self.state)
    }
}

impl TrackState {
    pub(super) fn lost(&self) -> bool {
        self.lost
    }

    pub(super) fn set_lost(&mut self) {
        self.lost = true;
    }

    /// Takes the pieces in `[off, off+len)` (region offsets) out of the record: the parts cut
    /// off count as stored to (see `gone`).
    pub(super) fn cut(&mut self, off: u64, len: u64) {
        let end = off + len;
        let hit: Vec<(u64, (u64, u64))> =
            self.pieces.range(..end).rev().take_while(|(&o, &(l, _))| o + l > off).map(|(&o, &v)| (o, v)).collect();
        for (o, (l, dev)) in hit {
            self.pieces.remove(&o);
            let (s, e) = (o.max(off), (o + l).min(end));
            self.gone.push(Span { off: s, len: e - s, dev: dev + (s - o) });
            if o < off {
                self.pieces.insert(o, (off - o, dev));
            }
            if o + l > end {
                self.pieces.insert(end, (o + l - end, dev + (end - o)));
            }
        }
        let hit: Vec<(u64, u64)> =
            self.unregistered.range(..end).rev().take_while(|(&o, &l)| o + l > off).map(|(&o, &l)| (o, l)).collect();
        for (o, l) in hit {
            self.unregistered.remove(&o);
            if o < off {
                self.unregistered.insert(o, off - o);
            }
            if o + l > end {
                self.unregistered.insert(end, o + l - end);
            }
        }
    }

    /// Records a device piece mapped at `[off, off+len)` (replacing what was there), not yet
    /// registered.
    pub(super) fn insert(&mut self, off: u64, len: u64, dev: u64) {
        self.cut(off, len);
        self.pieces.insert(off, (len, dev));
        self.unregistered.insert(off, len);
    }

    /// Registers the pieces not yet registered, one call per run of adjacent ones, in the
    /// region at `base`; a failure loses the tracking.
    ///
    /// # Safety
    /// `base` must be the start of the region this state records: the pieces lie in it.
    pub(super) unsafe fn register_pending(&mut self, tracker: &Tracker, base: u64) {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (&o, &l) in &self.unregistered {
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == o => r.1 += l,
                _ => runs.push((o, l)),
            }
        }
        self.unregistered.clear();
        for (o, l) in runs {
            // SAFETY: a run of pieces mapped in the region at `base` (this function's contract),
            // which the region owns and keeps mapped while they are recorded.
            if unsafe { tracker.register(base + o, l) }.is_err() {
                self.lost = true;
                return;
            }
        }
    }

    /// The pieces taken out since last asked.
    pub(super) fn take_gone(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.gone)
    }

    /// Translates runs of region offsets found stored to into device spans; `None` when a run
    /// lies outside every recorded piece (the record is wrong: count everything).
    pub(super) fn spans(&self, runs: &[(u64, u64)]) -> Option<Vec<Span>> {
        let mut out = Vec::new();
        for &(s, e) in runs {
            let mut at = s;
            while at < e {
                let (&o, &(l, dev)) = self.pieces.range(..=at).next_back().filter(|(&o, &(l, _))| o + l > at)?;
                let stop = (o + l).min(e);
                out.push(Span { off: at, len: stop - at, dev: dev + (at - o) });
                at = stop;
            }
        }
        Some(out)
    }
}
