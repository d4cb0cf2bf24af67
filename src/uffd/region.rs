//! The address range of a file mapping ([`Region`]): a reservation registered with a [`Uffd`],
//! the device pieces mapped into it, the placeholder that resets part of it in one step, and the
//! process-wide index of live regions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::dirty::{Dirty, Span, Track, Tracker};
use super::{kernel, Uffd, FEATURE_EVENT_REMAP, MODE_WP, PAGE};
use crate::device::Device;
use crate::error::{Error, Result};

/// Every live [`Region`] of the process, by start address (whatever file system it serves), and
/// their count: [`overlaps_region`] answers whether a buffer lies in one.
static REGIONS: RwLock<BTreeMap<u64, u64>> = RwLock::new(BTreeMap::new());
static LIVE_REGIONS: AtomicUsize = AtomicUsize::new(0);

/// Whether `[addr, addr+len)` touches a live [`Region`] of any file system in this process:
/// touching it may fault to a fault service, so code holding a file-system lock must copy such a
/// buffer first. One atomic load when the process maps nothing.
pub fn overlaps_region(addr: usize, len: usize) -> bool {
    if len == 0 || LIVE_REGIONS.load(Ordering::Acquire) == 0 {
        return false;
    }
    let (a, end) = (addr as u64, (addr as u64).saturating_add(len as u64));
    let regions = REGIONS.read().unwrap_or_else(|e| e.into_inner());
    regions.range(..end).next_back().is_some_and(|(&s, &l)| s + l > a)
}

/// Fresh anonymous memory that [`Region::reset`] registers and then moves over a range of a
/// region; unmapped on drop unless the move took it.
struct Placeholder {
    start: u64,
    len: u64,
}

impl Placeholder {
    fn new(len: u64, prot: i32) -> Result<Placeholder> {
        let start = kernel::map_anon(len, prot).map_err(|e| Error::io("reset mapping", e))?;
        // SAFETY: the mapping made just above, owned by the placeholder.
        unsafe { kernel::no_huge_pages(start, len) };
        Ok(Placeholder { start, len })
    }

    /// Moves the placeholder over `[to, to+len)` in one step: whatever was mapped there is gone
    /// and the placeholder, with its registration, takes its place.
    ///
    /// # Safety
    /// `[to, to+len)` must be memory the caller owns (a range of its region).
    unsafe fn move_to(self, to: u64) -> Result<()> {
        // SAFETY: the source is this placeholder, one mapping of `len` bytes; the target is the
        // caller's own range (this function's contract), which the move replaces atomically.
        unsafe { kernel::move_to(self.start, self.len, to) }.map_err(|e| Error::io("reset mapping", e))?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Placeholder {
    fn drop(&mut self) {
        // SAFETY: the placeholder's own mapping, not moved (a move forgets `self`).
        unsafe { kernel::unmap(self.start, self.len) };
    }
}

/// The address range of one file mapping: anonymous memory this process reserved and registered
/// with a [`Uffd`]. Pages of the device are mapped into it, or zero and copied pages installed,
/// as faults arrive; [`Region::reset`] turns any part back into registered, empty reservation.
/// Dropping it unmaps the whole range. A writable region given a [`Tracker`] tracks which of its
/// device pages are stored to (see `dirty`).
#[derive(Debug)]
pub struct Region {
    uffd: Arc<Uffd>,
    start: u64,
    len: u64,
    prot: i32,
    mode: u64,
    track: Option<Track>,
}

/// A load or store through a mapping that the (simulated) kernel refused: SIGBUS in a real run.
fn access_err(e: std::io::Error) -> Error {
    Error::io("access through the mapping", e)
}

impl Region {
    /// Reserves `len` bytes (whole pages) at an address congruent to `phase` modulo `align` (a
    /// power of two, at least a page), registered with `mode`; `writable` sets PROT_WRITE. With
    /// `tracker`, a writable region tracks the stores into its device pieces.
    pub fn new(
        uffd: Arc<Uffd>,
        len: u64,
        align: u64,
        phase: u64,
        writable: bool,
        mode: u64,
        tracker: Option<Arc<Tracker>>,
    ) -> Result<Region> {
        if len == 0 || len % PAGE != 0 || !align.is_power_of_two() || align < PAGE {
            return Err(Error::InvalidArgument("mapping length must be whole pages"));
        }
        let total = len.checked_add(align).ok_or(Error::InvalidArgument("mapping too large"))?;
        usize::try_from(total).map_err(|_| Error::InvalidArgument("mapping too large"))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let base = kernel::map_anon(total, prot).map_err(|e| Error::io("reserve mapping", e))?;
        let start = base + (phase.wrapping_sub(base) & (align - 1));
        let (head, tail) = (start - base, base + total - (start + len));
        // SAFETY: both pieces lie inside the mapping made just above, outside `[start, start+len)`;
        // the advice is on the rest of it.
        unsafe {
            if head > 0 {
                kernel::unmap(base, head);
            }
            if tail > 0 {
                kernel::unmap(start + len, tail);
            }
            kernel::no_huge_pages(start, len);
        }
        // SAFETY: `[start, start+len)` is the reservation made above, owned by the region built
        // below, which unmaps it only on drop (after which no call of the `Uffd` can name it:
        // `forget`).
        if let Err(e) = unsafe { uffd.register(start, len, mode) } {
            // SAFETY: the reservation made above, not registered.
            unsafe { kernel::unmap(start, len) };
            return Err(e);
        }
        REGIONS.write().unwrap_or_else(|e| e.into_inner()).insert(start, len);
        LIVE_REGIONS.fetch_add(1, Ordering::Release);
        let track = tracker.filter(|_| writable).map(Track::new);
        Ok(Region { uffd, start, len, prot, mode, track })
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    #[allow(dead_code)] // beside `len`, as clippy asks
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the region was registered for write-protect faults (shared writable mappings).
    pub fn write_protects(&self) -> bool {
        self.mode & MODE_WP != 0
    }

    /// Whether `addr` lies in the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr - self.start < self.len
    }

    fn check(&self, off: u64, len: u64) -> Result<u64> {
        if off % PAGE != 0 || len % PAGE != 0 || len == 0 || off.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(Error::InvalidArgument("range outside the mapping"));
        }
        Ok(self.start + off)
    }

    /// Checks a byte range for a load or store; returns its address.
    fn bytes(&self, off: u64, len: u64, store: bool) -> Result<u64> {
        let end = off.checked_add(len).filter(|&e| e <= self.len);
        end.ok_or(Error::InvalidArgument("range outside the mapping"))?;
        if store && self.prot & libc::PROT_WRITE == 0 {
            return Err(Error::AccessDenied("the mapping is read-only"));
        }
        Ok(self.start + off)
    }

    /// Maps device bytes `[dev_off, dev_off+len)` over `[off, off+len)` of the region: shared
    /// (stores reach the device) or private (stores copy on write); `populate` fills the page
    /// tables at once. In a tracked region the piece is recorded (and registered for tracking
    /// by the next scan, before it scans), and what it replaces counts as stored to.
    pub fn map_device(
        &self,
        off: u64,
        len: u64,
        dev: &Device,
        dev_off: u64,
        shared: bool,
        populate: bool,
    ) -> Result<()> {
        let addr = self.check(off, len)?;
        if dev_off % PAGE != 0 || dev_off.checked_add(len).is_none_or(|e| e > dev.len()) {
            return Err(Error::InvalidArgument("device range outside the device"));
        }
        let fd = dev.fd().ok_or(Error::NotMappable)?;
        let mut track = self.track.as_ref().map(Track::lock);
        // SAFETY: `check` proved `[addr, addr+len)` lies inside this region, whose memory the
        // region owns (no Rust reference into it is kept by udax); the device range was checked
        // against the device's length just above.
        let mapped = unsafe { kernel::map_file_at(addr, len, self.prot, shared, populate, fd, dev_off) }
            .map_err(|e| Error::io("map device pages", e));
        if let Some(st) = track.as_mut() {
            // A failed MAP_FIXED may have unmapped what was there: it counts as taken out.
            st.cut(off, len);
            if mapped.is_ok() {
                st.insert(off, len, dev_off);
            }
        }
        mapped
    }

    /// Turns `[off, off+len)` back into empty, registered reservation in one step that no other
    /// thread can see halfway: a placeholder, registered first, is moved over the range with one
    /// mremap(2), so a touch at any moment finds either the old page or a page that faults to
    /// the service. The move waits until a fault-service thread has read the REMAP event it
    /// raises: never call it from the thread that reads the events.
    pub fn reset(&self, off: u64, len: u64) -> Result<()> {
        let addr = self.check(off, len)?;
        #[cfg(feature = "model")]
        if crate::model::planted(crate::model::Plant::TwoStepReset) {
            // The window this protocol closes: fresh memory first, registered afterwards.
            // SAFETY: `check` proved the range lies inside this region, which owns it.
            unsafe { kernel::map_anon_at(addr, len, self.prot) }.map_err(|e| Error::io("reset mapping", e))?;
            // SAFETY: as above.
            return unsafe { self.uffd.register_unrecorded(addr, len, self.mode) };
        }
        if self.uffd.features & FEATURE_EVENT_REMAP == 0 {
            return Err(Error::Unsupported("resetting a mapping needs UFFD_FEATURE_EVENT_REMAP".into()));
        }
        let p = Placeholder::new(len, self.prot)?;
        // SAFETY: the placeholder's fresh mapping, which nothing else knows of.
        unsafe { self.uffd.register_unrecorded(p.start, p.len, self.mode) }?;
        // Held across the move: a scan sees the pieces there or their spans taken out, never
        // neither. (Fault-service readers, which the move waits for, never take it.)
        let mut track = self.track.as_ref().map(Track::lock);
        // SAFETY: `check` proved the target lies inside this region, which owns it.
        unsafe { p.move_to(addr) }?;
        if let Some(st) = track.as_mut() {
            st.cut(off, len);
        }
        Ok(())
    }

    /// Whether stores into the region's device pages are tracked (else [`Region::take_dirty`]
    /// answers [`Dirty::Everything`]).
    pub fn tracks(&self) -> bool {
        self.track.as_ref().is_some_and(|t| !t.lock().lost())
    }

    /// Counts every device piece mapped so far as not stored to. Only for pieces nothing has
    /// stored to through this region (mapped before the region is handed out): what they hold
    /// is durable or tracked by the mappings that stored it.
    pub fn mark_clean(&self) {
        let Some(t) = &self.track else { return };
        let mut st = t.lock();
        // SAFETY: `start` is this region's, whose pieces the state records.
        unsafe { st.register_pending(&t.tracker, self.start) };
        let mut runs = Vec::new();
        // SAFETY: `[start, start+len)` is this region's own reservation (made in `new`, owned
        // until drop); the scan changes only the protection of the pieces tracked there.
        if st.lost() || unsafe { t.tracker.harvest(self.start, self.start + self.len, &mut runs) }.is_err() {
            st.set_lost();
        }
    }

    /// What to write back to make every store made through the region so far durable: the
    /// device pages stored to since the last take (protected again, so later stores count for
    /// the next take), and the pieces taken out since. A store racing the take lands either
    /// before its page is protected again (then the page is in this answer, and written back
    /// after the TLB flush that ends the scan) or after (then it counts for the next take).
    pub fn take_dirty(&self) -> Dirty {
        let Some(t) = &self.track else { return Dirty::Everything(Vec::new()) };
        let mut st = t.lock();
        let gone = st.take_gone();
        // SAFETY: `start` is this region's, whose pieces the state records.
        unsafe { st.register_pending(&t.tracker, self.start) };
        if st.lost() {
            return Dirty::Everything(gone);
        }
        let mut runs = Vec::new();
        // SAFETY: as in `mark_clean`: the region's own reservation.
        let scanned = unsafe { t.tracker.harvest(self.start, self.start + self.len, &mut runs) };
        let rel: Vec<(u64, u64)> = runs.iter().map(|&(s, e)| (s - self.start, e - self.start)).collect();
        match scanned.ok().and_then(|()| st.spans(&rel)) {
            Some(mut spans) => {
                spans.extend(gone);
                Dirty::Spans(spans)
            }
            None => {
                st.set_lost();
                Dirty::Everything(gone)
            }
        }
    }

    /// The pieces taken out of the region (reset or mapped over) since last asked: their stores
    /// may not be written back (see [`Region::take_dirty`], which hands them out too).
    pub fn take_gone(&self) -> Vec<Span> {
        self.track.as_ref().map(|t| t.lock().take_gone()).unwrap_or_default()
    }

    /// Takes every page out of the region for good (the mapping is going away): inaccessible
    /// memory replaces it, so no device page stays mapped once the blocks behind it may be freed.
    pub fn detach(&self) -> Result<()> {
        // SAFETY: the region's own range, which it owns until drop.
        unsafe { kernel::map_anon_at(self.start, self.len, libc::PROT_NONE) }
            .map_err(|e| Error::io("detach mapping", e))
    }

    /// Installs the shared zero page over `[off, off+len)`.
    pub fn zeropage(&self, off: u64, len: u64, wake: bool) -> Result<()> {
        self.uffd.zeropage(self.check(off, len)?, len, wake)
    }

    /// Installs a copy of `src` at `off`.
    pub fn copy(&self, off: u64, src: &[u8], wake: bool, write_protect: bool) -> Result<()> {
        self.uffd.copy(self.check(off, src.len() as u64)?, src, wake, write_protect)
    }

    #[cfg_attr(not(feature = "model"), allow(dead_code))]
    pub fn writeprotect(&self, off: u64, len: u64, protect: bool, wake: bool) -> Result<()> {
        self.uffd.writeprotect(self.check(off, len)?, len, protect, wake)
    }

    pub fn wake(&self, off: u64, len: u64) -> Result<()> {
        self.uffd.wake(self.check(off, len)?, len)
    }

    pub fn poison(&self, off: u64, len: u64, wake: bool) -> Result<()> {
        self.uffd.poison(self.check(off, len)?, len, wake)
    }

    /// Copies mapped bytes at `off` into `buf`. Touching pages may fault (the fault service
    /// resolves them); a page past EOF raises SIGBUS, as a load would.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let addr = self.bytes(off, buf.len() as u64, false)?;
        // SAFETY: the range lies inside the region (checked above), which stays mapped while
        // `self` lives.
        unsafe { kernel::load(addr, buf) }.map_err(access_err)
    }

    /// Stores `data` at `off` through the mapping (see [`Region::read`] for faults).
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        let addr = self.bytes(off, data.len() as u64, true)?;
        // SAFETY: as in `read`; the range is writable memory of this region (PROT_WRITE checked).
        unsafe { kernel::store(addr, data) }.map_err(access_err)
    }

    /// Fills `[off, off+len)` with `byte` through the mapping.
    pub fn fill(&self, off: u64, len: u64, byte: u8) -> Result<()> {
        let addr = self.bytes(off, len, true)?;
        // SAFETY: as in `write`.
        unsafe { kernel::fill(addr, len, byte) }.map_err(access_err)
    }

    /// Whether a load of the byte at `off` succeeds, found without raising a signal (a poisoned
    /// page, at or past EOF, would raise SIGBUS). A fault the probe takes is served like any
    /// other.
    pub fn loadable(&self, off: u64) -> Result<bool> {
        let addr = self.bytes(off, 1, false)?;
        // SAFETY: the byte lies inside the region (checked above), which stays mapped while
        // `self` lives.
        unsafe { kernel::probe(addr) }.map_err(|e| Error::io("probe mapping", e))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        REGIONS.write().unwrap_or_else(|e| e.into_inner()).remove(&self.start);
        LIVE_REGIONS.fetch_sub(1, Ordering::Release);
        self.uffd.forget(self.start, self.len);
        // SAFETY: the region's own range, reserved in `new`; nothing refers to it any more.
        unsafe { kernel::unmap(self.start, self.len) };
    }
}
