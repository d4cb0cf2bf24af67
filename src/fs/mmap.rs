//! DAX file mappings: [`crate::File::mmap`] and the userfaultfd fault service behind it.
//!
//! A mapping is a [`Region`]: anonymous memory reserved for the mapping's length and registered
//! with one of the service's userfaultfds. At mmap time every written, page-aligned run of the
//! file is mapped straight from the device (`mmap(MAP_FIXED)` of the device's descriptor), so
//! loads and stores to existing data never fault. What is left faults to the service, which
//! plays the kernel's `fault` / `page_mkwrite` roles (DESIGN.md "mmap and the fault service"):
//!
//! - a load from a page with no written block gets zeros (in a shared writable mapping a page
//!   of zeros installed write-protected in one step, elsewhere the shared zero page); nothing is
//!   allocated, and no load ever allocates;
//! - a store there (a missing page, or a write-protect fault on the zeros) allocates and zeroes
//!   the page's blocks, or zeroes and converts its unwritten ones, commits (durable before the
//!   store can happen: every shared mapping behaves as MAP_SYNC), then maps the device page
//!   writable; into a 2 MiB-aligned hole that the mapping and the file cover whole, it allocates
//!   and maps 2 MiB at once, and under mapping-budget pressure a cluster of hole pages;
//! - a page whose blocks are written but not one page-aligned device run (blocks smaller than a
//!   page) is served to loads as a write-protected copy; a store moves it to a fresh aligned run
//!   of blocks first, so every mapped page is one device page;
//! - a page at or past the one holding EOF is poisoned: the access raises SIGBUS (a system call
//!   touching it gets EFAULT);
//! - a private mapping gets copies (its stores copy on write into anonymous memory); written
//!   runs are mapped from the device privately at mmap time.
//!
//! Truncate, punch and zero range first reset the affected pages of every mapping (they fault
//! again), then free blocks; a write that fills holes resets those pages too, so every mapping
//! sees the data. A reset moves a registered placeholder over the pages in one mremap, so no
//! access can slip in between. Bytes a mapping stored past EOF are zeroed when the file grows
//! over them.
//!
//! Service threads and locking: readers (one userfaultfd each) serve what they can without
//! waiting and hand the rest to workers (see [`Server`]); faults take the inode lock, shared for
//! loads and exclusive for first stores. No thread touches memory of a udax mapping while it
//! holds a lock: buffers and arguments that lie in one are copied first (see
//! [`overlaps_mapping`]), so a fault never waits for a lock its own thread holds.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::error::{Error, Result};
use crate::extent::{Piece, State};
use crate::inode::Inode;
use crate::journal::Tx;
use crate::sabotage::Sabotage;
use crate::sync::{lock, rd, wr, AtomicBool, AtomicU64, Mutex};
use crate::uffd::{Dirty, Region, Span, MODE_MISSING, MODE_WP};

use super::fault::Server;
use super::node::{bump, map_budget, MapState, Node, Reach, VMAS_USED};
use super::state::Fs;
use super::types::{MmapStats, Prot, Share, HUGE, PAGE};

/// A live file mapping. Unmapped on drop; keeps the file open (an unlinked file's blocks stay
/// until every mapping of it is gone).
#[derive(Debug)]
pub struct Mapping {
    pub(super) fs: Fs,
    pub(super) state: Arc<MapState>,
    pub(super) len: u64,
    pub(super) prot: Prot,
}

impl Fs {
    /// Whether a first store into a large hole may allocate and map 2 MiB at once (on by
    /// default; off, every first store takes one page).
    pub fn set_mmap_huge(&self, on: bool) {
        self.inner.mmap.no_huge.store(!on, Ordering::Relaxed);
    }

    /// Whether shared writable mappings made from now on track which pages are stored to, so
    /// that msync and fsync write back only those (on by default where the kernel offers it:
    /// UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN, Linux 6.7; off, they write back every mapped
    /// block). Tracking costs a fault on the first store to each page after each sync, and
    /// loads of pages mapped at mmap time fault one page at a time.
    pub fn set_mmap_dirty_tracking(&self, on: bool) {
        self.inner.mmap.untracked.store(!on, Ordering::Relaxed);
    }

    /// Fault-service counters since mount.
    pub fn mmap_stats(&self) -> MmapStats {
        let Some(s) = self.inner.mmap.svc.get() else { return MmapStats::default() };
        let c = &s.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MmapStats {
            faults_zero_page: g(&c.zero_page),
            faults_first_store: g(&c.first_store),
            faults_huge: g(&c.huge),
            faults_clustered: g(&c.clustered),
            faults_sigbus: g(&c.sigbus),
            faults_mapped: g(&c.mapped),
            faults_copied: g(&c.copied),
            pages_mapped_eagerly: g(&c.eager),
            pages_invalidated: g(&c.invalidated),
            user_mode_only: s.uffds.iter().any(|u| u.user_mode_only()),
        }
    }

    /// Maps `[off, off+len)` of the open file `node` (see [`crate::File::mmap`]).
    pub(crate) fn mmap_node(&self, node: &Arc<Node>, off: u64, len: u64, prot: Prot, share: Share) -> Result<Mapping> {
        if off % PAGE != 0 {
            return Err(Error::InvalidArgument("mmap offset must be a multiple of the page size"));
        }
        if len == 0 {
            return Err(Error::InvalidArgument("mmap length must be positive"));
        }
        let len = len.checked_next_multiple_of(PAGE).ok_or(Error::InvalidArgument("mmap length too large"))?;
        off.checked_add(len).filter(|&e| e <= crate::MAX_FILE_SIZE).ok_or(Error::FileTooBig)?;
        if node.is_dir {
            return Err(Error::IsDir);
        }
        if self.inner.dev.fd().is_none() {
            return Err(Error::NotMappable);
        }
        if prot == Prot::ReadWrite && share == Share::Shared {
            self.writable().map(drop)?;
        }
        let svc = self.service()?;
        let budget = map_budget();
        if VMAS_USED.load(Ordering::Relaxed) >= budget {
            return Err(Error::OutOfMappings { budget });
        }
        let writable = prot == Prot::ReadWrite;
        let mode = match (share, writable) {
            (Share::Shared, true) => MODE_MISSING | MODE_WP,
            _ => MODE_MISSING,
        };
        // Address congruent to the file offset modulo 2 MiB, so large pages can line up.
        let uffd = svc.uffds[svc.next_uffd.fetch_add(1, Ordering::Relaxed) % svc.uffds.len()].clone();
        let tracked = mode & MODE_WP != 0 && !self.inner.mmap.untracked.load(Ordering::Relaxed);
        let tracker = if tracked { crate::uffd::tracker() } else { None };
        let region = Region::new(uffd, len, HUGE, off % HUGE, writable, mode, tracker)?;
        let state = Arc::new(MapState {
            region,
            node: node.clone(),
            file_off: off,
            share,
            svc: svc.clone(),
            copies: AtomicBool::new(false),
            pieces: Mutex::new(BTreeMap::new()),
        });
        VMAS_USED.fetch_add(1, Ordering::Relaxed);
        let mut g = wr(&node.inode);
        g.live()?;
        if !crate::layout::mode::is_reg(g.attr.mode) {
            return Err(Error::Unsupported("only regular files can be mapped".into()));
        }
        self.clean_tail(&mut g)?;
        if mode & MODE_WP != 0 {
            // Copies of written pages in other mappings would miss this mapping's stores: they
            // go, and those pages are mapped from the device when loaded again.
            let copying: Vec<Arc<MapState>> = lock(&node.maps)
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|o| o.copies.load(Ordering::Relaxed))
                .collect();
            for o in copying {
                self.reset_pages(&o, 0, u64::MAX, Reach::Shared)?;
                o.copies.store(false, Ordering::Relaxed);
            }
        }
        g.open += 1;
        let eager = self.map_written(&g, &state);
        // Nothing has stored through the region yet: what its pieces hold is durable, or
        // tracked by the mappings that stored it.
        state.region.mark_clean();
        wr(&svc.regions).insert(state.region.start(), state.clone());
        let mut maps = lock(&node.maps);
        maps.retain(|m| m.strong_count() > 0);
        maps.push(Arc::downgrade(&state));
        drop(maps);
        drop(g);
        let mapping = Mapping { fs: self.clone(), state, len, prot };
        bump(&svc.counters.eager, eager?);
        Ok(mapping)
    }

    /// Maps every written, page-aligned run of `m`'s range from the device (budget allowing);
    /// returns the pages mapped.
    pub(super) fn map_written(&self, g: &Inode, m: &MapState) -> Result<u64> {
        let geo = &self.inner.geo;
        let bs = geo.block_size;
        let (from, to) = (m.file_off, m.file_off + m.region.len());
        let mut pages = 0;
        for e in g.ext.iter() {
            if e.state != State::Written || e.end() * bs <= from {
                continue;
            }
            if e.logical * bs >= to {
                break;
            }
            let s = (e.logical * bs).max(from).next_multiple_of(PAGE);
            let t = (e.end() * bs).min(to) / PAGE * PAGE;
            let dev = geo.block_at(e.physical) + s - e.logical * bs;
            if s >= t || dev % PAGE != 0 {
                continue;
            }
            if !m.map_piece(&self.inner.dev, s - from, t - s, dev, true, true)? {
                break;
            }
            pages += (t - s) / PAGE;
        }
        Ok(pages)
    }

    /// Resets `[from, to)` (file bytes) in the mappings of `n` that `reach` names, before blocks
    /// there go away or change. The caller holds the inode lock exclusively.
    pub(crate) fn unmap_range(&self, n: &Node, from: u64, to: u64, reach: Reach) -> Result<()> {
        self.unmap_others(n, from, to, reach, None)
    }

    /// [`Fs::unmap_range`] sparing the mapping `except` (one the caller maps itself).
    pub(super) fn unmap_others(
        &self,
        n: &Node,
        from: u64,
        to: u64,
        reach: Reach,
        except: Option<&MapState>,
    ) -> Result<()> {
        let maps: Vec<Arc<MapState>> = {
            let mut maps = lock(&n.maps);
            if maps.is_empty() {
                return Ok(());
            }
            maps.retain(|m| m.strong_count() > 0);
            maps.iter().filter_map(Weak::upgrade).collect()
        };
        for m in maps {
            if (reach == Reach::Shared && m.share == Share::Private) || except.is_some_and(|e| std::ptr::eq(e, &*m)) {
                continue;
            }
            let pages = self.reset_pages(&m, from, to, reach)?;
            bump(&m.svc.counters.invalidated, pages);
        }
        Ok(())
    }

    /// Resets `[from, to)` (file bytes) in `m` (see [`MapState::reset_bytes`]) and writes back
    /// the device pieces the reset took out: the page-table entries that knew whether they were
    /// stored to are gone. With `Reach::All` the blocks of the pages wholly inside the range go
    /// away or read zero (truncate, punch, zero range), so only the first and last page, which
    /// may keep bytes outside the range, are written back.
    pub(super) fn reset_pages(&self, m: &MapState, from: u64, to: u64, reach: Reach) -> Result<u64> {
        let pages = m.reset_bytes(from, to)?;
        let gone = m.region.take_gone();
        if gone.is_empty() {
            return Ok(pages);
        }
        let (first, last) = (from / PAGE * PAGE, to.saturating_sub(1) / PAGE * PAGE);
        let dead = |s: u64, e: u64| (s.max(first + PAGE), e.min(last));
        let spans: Vec<Span> = gone
            .into_iter()
            .flat_map(|sp| {
                let (s, e) = (m.file_off + sp.off, m.file_off + sp.off + sp.len);
                let (ds, de) = dead(s, e);
                let keep =
                    |a: u64, b: u64| (a < b).then(|| Span { off: a - m.file_off, len: b - a, dev: sp.dev + (a - s) });
                match reach {
                    Reach::All if ds < de => [keep(s, ds.min(e)), keep(de.max(s), e)],
                    _ => [Some(sp), None],
                }
            })
            .flatten()
            .collect();
        self.flush_spans(&spans)?;
        self.inner.dev.fence();
        Ok(pages)
    }

    /// Before an overwrite of `[from, to)`: resets the range in shared mappings that hold
    /// copies (private mappings keep theirs: they may hold the mapping's own stores).
    pub(crate) fn unmap_copies(&self, n: &Node, from: u64, to: u64) -> Result<()> {
        let copying: Vec<Arc<MapState>> =
            lock(&n.maps).iter().filter_map(Weak::upgrade).filter(|m| m.copies.load(Ordering::Relaxed)).collect();
        for m in copying {
            let pages = self.reset_pages(&m, from, to, Reach::Shared)?;
            bump(&m.svc.counters.invalidated, pages);
        }
        Ok(())
    }

    /// A file growing from `old` to `new` bytes: zero what mappings may have stored past the
    /// old EOF in its page (as content of `tx`, before the size commits), and reset the pages
    /// from the old EOF page on, so loads there stop raising SIGBUS and a partly unwritten old
    /// EOF page is faulted (and converted) again. `keep` is a range the caller writes itself.
    pub(crate) fn grow_over_tail(&self, n: &Node, g: &Inode, new: u64, keep_from: u64, tx: &mut Tx) -> Result<()> {
        let old = g.attr.size;
        if new <= old {
            return Ok(());
        }
        let geo = &self.inner.geo;
        let bs = geo.block_size;
        let stop = old.next_multiple_of(PAGE).min(keep_from).min(new);
        if stop > old {
            for p in g.ext.pieces(old / bs, (stop - 1) / bs - old / bs + 1) {
                if let Piece::Mapped(e) = p {
                    if e.state == State::Written {
                        let s = (e.logical * bs).max(old);
                        let t = (e.end() * bs).min(stop);
                        tx.content_zero(&self.inner.dev, geo.block_at(e.physical) + s - e.logical * bs, t - s)?;
                    }
                }
            }
        }
        self.unmap_range(n, old / PAGE * PAGE, new, Reach::Shared)?;
        self.unmap_range(n, old.next_multiple_of(PAGE), new, Reach::All)
    }

    /// Zeroes the bytes past EOF in its page unless they are known to be zero, so a mapping of
    /// the page shows zeros there. Running, every path keeps them zero (truncate zeroes the new
    /// tail, growth zeroes what mappings stored there); after a mount they may hold what a crash
    /// left: a growing write's bytes stored before its commit, a truncated tail before its
    /// zeroing. The caller holds the inode lock exclusively.
    pub(crate) fn clean_tail(&self, g: &mut Inode) -> Result<()> {
        if g.tail_clean {
            return Ok(());
        }
        for (at, _, len) in self.past_eof_runs(g) {
            let mut bytes = vec![0u8; len as usize];
            self.inner.dev.read(at, &mut bytes)?;
            if bytes.iter().any(|&b| b != 0) {
                self.inner.dev.zero(at, len)?;
            }
        }
        g.tail_clean = true;
        Ok(())
    }

    /// The written device bytes between EOF and the end of its page: `(device offset, bytes
    /// past EOF, length)` each (the rest of the page is holes or unwritten, which read zero).
    pub(crate) fn past_eof_runs(&self, g: &Inode) -> Vec<(u64, u64, u64)> {
        let (size, geo) = (g.attr.size, &self.inner.geo);
        let (end, bs) = (size.next_multiple_of(PAGE), geo.block_size);
        if end == size {
            return Vec::new();
        }
        let first = size / bs;
        let written = g.ext.pieces(first, (end - 1) / bs - first + 1).into_iter().filter_map(|p| match p {
            Piece::Mapped(e) if e.state == State::Written => Some(e),
            _ => None,
        });
        written
            .map(|e| {
                let (s, t) = ((e.logical * bs).max(size), (e.end() * bs).min(end));
                (geo.block_at(e.physical) + s - e.logical * bs, s - size, t - s)
            })
            .collect()
    }

    /// Writes back what the shared writable mappings of `n` stored (fsync; the caller fences).
    pub(crate) fn flush_mapped(&self, n: &Node) -> Result<()> {
        let maps: Vec<Arc<MapState>> = lock(&n.maps).iter().filter_map(Weak::upgrade).collect();
        for m in maps.iter().filter(|m| m.share == Share::Shared) {
            self.flush_state(m)?;
        }
        Ok(())
    }

    /// msync of `m`: writes back what `m` stored, and what the file's other shared writable
    /// mappings stored (msync covers the file's pages, whichever mapping stored to them). Where
    /// neither tracks, writing back every block under `m` covers the others' stores in its range.
    fn flush_for(&self, m: &MapState) -> Result<()> {
        self.flush_state(m)?;
        let others: Vec<Arc<MapState>> = lock(&m.node.maps)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|o| !std::ptr::eq(&**o, m) && o.share == Share::Shared)
            .collect();
        let tracked = m.region.tracks();
        for o in others.iter().filter(|o| tracked || o.region.tracks()) {
            self.flush_state(o)?;
        }
        Ok(())
    }

    /// Writes back what `m` stored since the last time: the pages its tracking found stored to
    /// (and pieces taken out of it since), else every written block under it.
    pub(super) fn flush_state(&self, m: &MapState) -> Result<()> {
        if !m.region.write_protects() {
            // Read-only or private: no store of this mapping reaches the device.
            return Ok(());
        }
        match m.region.take_dirty() {
            Dirty::Spans(mut spans) => {
                if self.planted(Sabotage::MsyncDropsPage) {
                    if let Some(first) = spans.first_mut() {
                        (first.dev, first.len) = (first.dev + PAGE, first.len - PAGE);
                    }
                }
                self.flush_spans(&spans)
            }
            Dirty::Everything(gone) => {
                self.flush_spans(&gone)?;
                self.flush_all(m)
            }
        }
    }

    /// Writes back device spans (the caller fences).
    fn flush_spans(&self, spans: &[Span]) -> Result<()> {
        for s in spans {
            self.inner.dev.flush(s.dev, s.len)?;
        }
        Ok(())
    }

    /// Writes back every written block under `m`'s range.
    fn flush_all(&self, m: &MapState) -> Result<()> {
        let g = rd(&m.node.inode);
        let geo = &self.inner.geo;
        let bs = geo.block_size;
        let (from, to) = (m.file_off, m.file_off + m.region.len());
        for e in g.ext.iter().filter(|e| e.state == State::Written) {
            let (s, t) = ((e.logical * bs).max(from), (e.end() * bs).min(to));
            if s < t {
                self.inner.dev.flush(geo.block_at(e.physical) + s - e.logical * bs, t - s)?;
            }
        }
        Ok(())
    }
}

/// Whether `[addr, addr+len)` touches a live mapping of any udax file system in this process.
/// I/O between a file and such a buffer bounces through memory of its own, and every other
/// argument that may lie in one (names, link targets, attribute values) is copied before a lock
/// is taken: touching it under a lock could raise a fault that waits for that lock.
pub(crate) fn overlaps_mapping(addr: usize, len: usize) -> bool {
    crate::uffd::overlaps_region(addr, len)
}

/// `bytes`, or a copy of them when they lie in a mapping (see [`overlaps_mapping`]).
pub(crate) fn unmapped(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if overlaps_mapping(bytes.as_ptr() as usize, bytes.len()) {
        std::borrow::Cow::Owned(bytes.to_vec())
    } else {
        std::borrow::Cow::Borrowed(bytes)
    }
}

impl Mapping {
    /// First byte of the mapping, for callers that hand it to other code. Loads and stores
    /// through it are served like those of [`Mapping::read_at`] and [`Mapping::write_at`]. udax lends
    /// no Rust reference to mapped memory (other threads, mappings, processes and truncates may
    /// change it at any time): a slice formed from this pointer is the caller's unsafe promise.
    ///
    /// Safe code cannot borrow mapped bytes; this does not compile:
    ///
    /// ```compile_fail,E0133
    /// # use udax::{Device, Fs, MkfsOptions, OpenOptions, Prot, Share};
    /// # let fs = Fs::mkfs(Device::anonymous(16 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    /// # let f = fs.open("/f", OpenOptions::create()).unwrap();
    /// # f.set_len(4096).unwrap();
    /// let m = f.mmap(0, 4096, Prot::ReadWrite, Share::Shared).unwrap();
    /// let bytes: &mut [u8] = std::slice::from_raw_parts_mut(m.as_ptr(), 4096);
    /// ```
    ///
    /// [`Mapping::read_at`] and [`Mapping::write_at`] copy instead.
    pub fn as_ptr(&self) -> *mut u8 {
        self.state.region.start() as *mut u8
    }

    /// Mapped length (whole pages).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the mapping has no pages (never true for a mapping [`File::mmap`](crate::File::mmap) made).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// File offset of the first mapped byte.
    pub fn offset(&self) -> u64 {
        self.state.file_off
    }

    /// What the mapping's pages allow.
    pub fn prot(&self) -> Prot {
        self.prot
    }

    /// Whether stores reach the file or stay private to the mapping.
    pub fn share(&self) -> Share {
        self.state.share
    }

    /// Loads `buf.len()` bytes at byte `off` of the mapping. A page at or past the file's EOF
    /// page raises SIGBUS, as a load would.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.state.region.read(off, buf)
    }

    /// Stores `data` at byte `off` of the mapping (EACCES on a read-only mapping).
    pub fn write_at(&self, data: &[u8], off: u64) -> Result<()> {
        self.state.region.write(off, data)
    }

    /// Stores `len` copies of `byte` at `off`.
    pub fn fill(&self, off: u64, len: u64, byte: u8) -> Result<()> {
        self.state.region.fill(off, len, byte)
    }

    /// Whether a load at `off` would succeed rather than raise SIGBUS (a page at or past the one
    /// holding EOF), found without raising the signal. Faults it takes are served as a load's.
    pub fn loadable(&self, off: u64) -> Result<bool> {
        let user_mode_only = self.state.svc.uffds.iter().any(|u| u.user_mode_only());
        loop {
            if self.state.region.loadable(off)? {
                return Ok(true);
            }
            if !user_mode_only {
                return Ok(false);
            }
            // The probe's access is the kernel's, which a user-mode-only userfaultfd never hears
            // of. A page past EOF would raise SIGBUS; any other is served as a load's fault
            // would be, and probed again (a racing reset may take it away again, as it would
            // make a load fault again).
            let fpage = (self.state.file_off + off) / PAGE;
            {
                let g = rd(&self.state.node.inode);
                if g.freed || fpage >= g.attr.size.div_ceil(PAGE) {
                    return Ok(false);
                }
            }
            self.fs.serve_fault(&self.state, off / PAGE * PAGE, false, Server::Worker)?;
        }
    }

    /// msync: makes every store through this mapping durable across power loss (and the stores
    /// of the file's other mappings, as msync(2) does).
    pub fn flush(&self) -> Result<()> {
        if self.state.share == Share::Shared {
            self.fs.flush_for(&self.state)?;
        }
        self.fs.sync()
    }

    /// Whether [`Mapping::flush`] writes back only the pages stored to since the last flush
    /// (see [`Fs::set_mmap_dirty_tracking`]) rather than every mapped block.
    pub fn tracks_stores(&self) -> bool {
        self.state.region.tracks()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        wr(&self.state.svc.regions).remove(&self.state.region.start());
        // What the mapping stored and no flush wrote back yet is written back now, while the
        // tracking still knows it (so a later fsync of the file needs no mapping).
        let dirty = self.state.region.tracks().then(|| self.state.region.take_dirty());
        // Unmapped before the close can free an unlinked file's blocks.
        let _ = self.state.region.detach();
        if let Some(Dirty::Spans(spans) | Dirty::Everything(spans)) = dirty {
            let _ = self.fs.flush_spans(&spans);
            self.fs.inner.dev.fence();
        }
        let _ = self.fs.release_node(&self.state.node);
    }
}
