//! DAX file mappings: [`crate::File::mmap`] and the userfaultfd fault service behind it.
//!
//! A mapping is a [`Region`]: anonymous memory reserved for the mapping's length and registered
//! with one of the service's userfaultfds. At mmap time every written, page-aligned run of the
//! file is mapped straight from the device (`mmap(MAP_FIXED)` of the device's descriptor), so
//! loads and stores to existing data never fault. What is left faults to the service, which
//! plays the kernel's `fault` / `page_mkwrite` roles (SPEC §5):
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

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::extent::{Extent, ExtentMap, Piece, State};
use crate::fs::{lock, rd, wr, Fs, Inner, Node};
use crate::inode::{Inode, Timespec};
use crate::journal::Tx;
use crate::sync::{
    thread, AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};
use crate::uffd::{Region, Uffd, FEATURE_EVENT_REMAP, FEATURE_POISON, FEATURE_THREAD_ID, MODE_MISSING, MODE_WP};

/// The page size mappings work in.
pub const PAGE: u64 = 4096;
/// Size of a large first-store allocation.
pub const HUGE: u64 = 2 << 20;
/// What a device piece mapped into a region costs against the mapping budget: its own VMA, and
/// the split of the reservation around it.
const PIECE_COST: u64 = 2;
/// vm.max_map_count when /proc does not say.
const DEFAULT_MAX_MAP_COUNT: u64 = 65_530;
/// Pieces that have another way (eager mapping at mmap time, loads of written pages, which can
/// fault later or take a copy) stop at this share of the mapping budget, in 1/8ths: the rest
/// stays for new mappings and for stores.
const OPTIONAL_SHARE: u64 = 3;
/// First stores into holes allocate clusters of pages once this share (in 1/8ths) of the mapping
/// budget is in use, and larger ones past [`PRESSURE_HIGH`].
const PRESSURE_LOW: u64 = 4;
const PRESSURE_HIGH: u64 = 6;
/// Cluster sizes, in pages (64 KiB and 2 MiB).
const CLUSTER_LOW: u64 = 16;
const CLUSTER_HIGH: u64 = 512;

/// A page of zeros: the content of a hole page that a shared writable mapping loads.
static ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];

/// What a mapping's pages allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    Read,
    ReadWrite,
}

/// Whether stores reach the file (`Shared`) or copy on write (`Private`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    Shared,
    Private,
}

/// Fault-service counters since mount (`udax io stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MmapStats {
    /// Loads from pages with no data, served with zeros.
    pub faults_zero_page: u64,
    /// First stores (and loads of partly written pages) that allocated or converted a page.
    pub faults_first_store: u64,
    /// First stores that allocated and mapped 2 MiB at once.
    pub faults_huge: u64,
    /// First stores that allocated a cluster of hole pages at once (mapping budget pressure).
    pub faults_clustered: u64,
    /// Faults at or past the page holding EOF, and faults that could not be served: SIGBUS.
    pub faults_sigbus: u64,
    /// Faults on written pages mapped from the device at fault time.
    pub faults_mapped: u64,
    /// Faults served with a copy (private mappings, or written pages past the map budget).
    pub faults_copied: u64,
    /// Pages mapped from the device at mmap time.
    pub pages_mapped_eagerly: u64,
    /// Pages reset in live mappings by truncate, punch, zero range and writes into holes.
    pub pages_invalidated: u64,
}

#[derive(Debug, Default)]
struct Counters {
    zero_page: AtomicU64,
    first_store: AtomicU64,
    huge: AtomicU64,
    clustered: AtomicU64,
    sigbus: AtomicU64,
    mapped: AtomicU64,
    copied: AtomicU64,
    eager: AtomicU64,
    invalidated: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Most worker threads one file system's fault service runs at once.
const MAX_WORKERS: usize = 64;
/// How long an idle worker waits for a fault before it retires (the last one stays).
const WORKER_IDLE: Duration = Duration::from_secs(2);

/// The fault service of one mounted file system: its userfaultfd, the live mappings by address,
/// the reader threads and the workers (started with the first mapping).
#[derive(Debug)]
pub(crate) struct Service {
    /// One userfaultfd per reader thread; mappings are spread over them in turn, so readers
    /// never contend for a message and every fault wakes exactly one of them.
    uffds: Vec<Arc<Uffd>>,
    next_uffd: AtomicUsize,
    regions: RwLock<BTreeMap<u64, Arc<MapState>>>,
    counters: Counters,
    stop: AtomicBool,
    /// Service threads holding a strong reference to the file system (serving a fault).
    busy: AtomicUsize,
    /// Faults a reader handed on because serving them means waiting.
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
    workers: usize,
}

#[derive(Debug)]
struct Job {
    m: Arc<MapState>,
    off: u64,
    store: bool,
}

/// Which service thread serves a fault. Readers take the messages off the userfaultfd; they must
/// never wait for an inode lock (an operation may hold it for a long copy) nor reset a mapping
/// (the reset's mremap waits until a reader has read its REMAP event), so a fault that needs
/// either goes to a worker, which may wait for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Reader,
    Worker,
}

/// Whether a fault was served, or handed on to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Done,
    Deferred,
}

/// Where `Inner` keeps the service; dropping it (the file system going away) stops the thread.
#[derive(Debug, Default)]
pub(crate) struct ServiceSlot {
    svc: OnceLock<Arc<Service>>,
    init: Mutex<()>,
    /// First stores allocate 4 KiB pages only (see [`Fs::set_mmap_huge`]).
    no_huge: AtomicBool,
}

/// VMAs that the live mappings of every udax file system in the process use, as counted against
/// the budget: one per region, [`PIECE_COST`] per device piece mapped into one.
static VMAS_USED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The mapping budget (0 until the first mapping: half of vm.max_map_count).
static BUDGET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sets how many of the process's memory mappings (VMAs; the kernel allows vm.max_map_count)
/// the mappings of all udax file systems in the process may use together. The default is half
/// of vm.max_map_count, read at the first mapping. Past half of the budget, first stores into
/// holes allocate clusters of pages (64 KiB, then 2 MiB) so that mapped pieces stay few; `mmap`
/// past all of it fails with ENOMEM ([`Error::OutOfMappings`]); a store is never refused.
pub fn set_map_budget(vmas: u64) {
    BUDGET.store(vmas.max(1), Ordering::Relaxed);
}

/// The mapping budget (see [`set_map_budget`]).
pub fn map_budget() -> u64 {
    match BUDGET.load(Ordering::Relaxed) {
        0 => {
            let max = std::fs::read_to_string("/proc/sys/vm/max_map_count")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(DEFAULT_MAX_MAP_COUNT);
            // Another thread may have set one meanwhile: it wins.
            let _ = BUDGET.compare_exchange(0, max / 2, Ordering::Relaxed, Ordering::Relaxed);
            BUDGET.load(Ordering::Relaxed)
        }
        n => n,
    }
}

impl ServiceSlot {
    /// Whether a service thread is serving a fault (and so holds the file system alive for a
    /// moment after waking the faulting thread).
    pub(crate) fn busy(&self) -> bool {
        self.svc.get().is_some_and(|s| s.busy.load(Ordering::Acquire) > 0)
    }
}

impl Drop for ServiceSlot {
    fn drop(&mut self) {
        if let Some(s) = self.svc.get() {
            // Under the queue lock, so that a worker about to wait sees the flag or the notify.
            let q = lock(&s.queue);
            s.stop.store(true, Ordering::Release);
            drop(q);
            s.ready.notify_all();
            for u in &s.uffds {
                u.interrupt();
            }
        }
    }
}

/// One live mapping, shared by its [`Mapping`] handle, the service's address index and (weakly)
/// its inode's list.
#[derive(Debug)]
pub(crate) struct MapState {
    region: Region,
    node: Arc<Node>,
    /// File offset of the region's first byte (page-aligned).
    file_off: u64,
    share: Share,
    svc: Arc<Service>,
    /// Some pages hold copies of written data: overwrites, and a second shared writable
    /// mapping of the file, reset them.
    copies: AtomicBool,
    /// Device pieces mapped into the region (region offset → length). They, and the region
    /// itself, are what this mapping counts against the budget.
    pieces: Mutex<BTreeMap<u64, u64>>,
}

impl Drop for MapState {
    fn drop(&mut self) {
        let n = self.pieces.get_mut().unwrap_or_else(|e| e.into_inner()).len() as u64;
        VMAS_USED.fetch_sub(1 + n * PIECE_COST, Ordering::Relaxed);
    }
}

/// Drops `[s, e)` from a map of non-overlapping ranges, trimming the ranges it cuts.
fn cut(pieces: &mut BTreeMap<u64, u64>, s: u64, e: u64) {
    let hit: Vec<(u64, u64)> =
        pieces.range(..e).rev().take_while(|(&o, &l)| o + l > s).map(|(&o, &l)| (o, l)).collect();
    for (o, l) in hit {
        pieces.remove(&o);
        if o < s {
            pieces.insert(o, s - o);
        }
        if o + l > e {
            pieces.insert(e, o + l - e);
        }
    }
}

impl MapState {
    /// Maps device bytes at `at` over `[off, off+len)` of the region and counts the piece.
    /// Pieces mapped at fault time are populated (their page-table entries filled at once: the
    /// woken thread touches them next, and a 2 MiB run would otherwise fault 512 times more);
    /// pieces mapped at mmap time are not. An `optional` piece (eager mapping, a load that another mapping cannot store under) is
    /// mapped only while the optional share of the budget has room: false, nothing mapped.
    /// Anything else has no other way, so past the budget the budget gives (first stores into
    /// holes allocate clusters long before that).
    fn map_piece(&self, dev: &crate::Device, off: u64, len: u64, at: u64, optional: bool, eager: bool) -> Result<bool> {
        if optional && (VMAS_USED.load(Ordering::Relaxed) + PIECE_COST) * 8 > map_budget() * OPTIONAL_SHARE {
            return Ok(false);
        }
        let mut pieces = lock(&self.pieces);
        let shared = self.share == Share::Shared;
        self.region.map_device(off, len, dev, at, shared, shared && !eager)?;
        let before = pieces.len();
        cut(&mut pieces, off, off + len);
        pieces.insert(off, len);
        recount(before, pieces.len());
        Ok(true)
    }

    /// Resets the pages of `[from, to)` (file bytes, widened to pages) that this mapping covers.
    fn reset_bytes(&self, from: u64, to: u64) -> Result<u64> {
        let s = (from / PAGE * PAGE).max(self.file_off);
        let e = to.div_ceil(PAGE).saturating_mul(PAGE).min(self.file_off + self.region.len());
        if s >= e {
            return Ok(0);
        }
        let mut pieces = lock(&self.pieces);
        self.region.reset(s - self.file_off, e - s)?;
        let before = pieces.len();
        cut(&mut pieces, s - self.file_off, e - self.file_off);
        recount(before, pieces.len());
        Ok((e - s) / PAGE)
    }
}

/// Moves the budget's count by the change in a mapping's pieces.
fn recount(before: usize, after: usize) {
    let (b, a) = (before as u64, after as u64);
    if a > b {
        VMAS_USED.fetch_add((a - b) * PIECE_COST, Ordering::Relaxed);
    } else {
        VMAS_USED.fetch_sub((b - a) * PIECE_COST, Ordering::Relaxed);
    }
}

/// Which mappings an invalidation reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Shared mappings only (new data under a zero page; private copies keep what they have).
    Shared,
    /// Every mapping (the pages' blocks go away).
    All,
}

/// A live file mapping. Unmapped on drop; keeps the file open (an unlinked file's blocks stay
/// until every mapping of it is gone).
#[derive(Debug)]
pub struct Mapping {
    fs: Fs,
    state: Arc<MapState>,
    len: u64,
    prot: Prot,
}

/// How a page of a shared mapping can be served.
enum PageState {
    /// No written block: zeros on loads.
    Empty,
    /// Every block written, one page-aligned device run starting here.
    Mappable(u64),
    /// Anything else: needs blocks allocated, converted or moved first.
    Mixed,
}

impl Fs {
    fn service(&self) -> Result<Arc<Service>> {
        let slot = &self.inner.mmap;
        if let Some(s) = slot.svc.get() {
            return Ok(s.clone());
        }
        let _g = lock(&slot.init);
        if let Some(s) = slot.svc.get() {
            return Ok(s.clone());
        }
        let readers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        let features = FEATURE_THREAD_ID | FEATURE_POISON | FEATURE_EVENT_REMAP;
        let uffds = (0..readers).map(|_| Uffd::new(features).map(Arc::new)).collect::<Result<Vec<_>>>()?;
        let svc = Arc::new(Service {
            uffds,
            next_uffd: AtomicUsize::new(0),
            regions: RwLock::new(BTreeMap::new()),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        for i in 0..readers {
            let (s2, weak) = (svc.clone(), Arc::downgrade(&self.inner));
            let started = thread::Builder::new().name(format!("udax-faults-{i}")).spawn(move || read(s2, i, weak));
            if let Err(e) = started {
                // Readers already started stop with the service.
                svc.stop.store(true, Ordering::Release);
                return Err(Error::io("start the fault service", e));
            }
        }
        let _ = slot.svc.set(svc.clone());
        Ok(svc)
    }

    /// Whether a first store into a large hole may allocate and map 2 MiB at once (on by
    /// default; off, every first store takes one page).
    pub fn set_mmap_huge(&self, on: bool) {
        self.inner.mmap.no_huge.store(!on, Ordering::Relaxed);
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
        let region = Region::new(uffd, len, HUGE, off % HUGE, writable, mode)?;
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
        if mode & MODE_WP != 0 {
            // Copies of written pages in other mappings would miss this mapping's stores: they
            // go, and those pages are mapped from the device when loaded again.
            let copying: Vec<Arc<MapState>> = lock(&node.maps)
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|o| o.copies.load(Ordering::Relaxed))
                .collect();
            for o in copying {
                o.reset_bytes(0, u64::MAX)?;
                o.copies.store(false, Ordering::Relaxed);
            }
        }
        g.open += 1;
        let eager = self.map_written(&g, &state);
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
    fn map_written(&self, g: &Inode, m: &MapState) -> Result<u64> {
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
    fn unmap_others(&self, n: &Node, from: u64, to: u64, reach: Reach, except: Option<&MapState>) -> Result<()> {
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
            let pages = m.reset_bytes(from, to)?;
            bump(&m.svc.counters.invalidated, pages);
        }
        Ok(())
    }

    /// Before an overwrite of `[from, to)`: resets the range in shared mappings that hold
    /// copies (private mappings keep theirs: they may hold the mapping's own stores).
    pub(crate) fn unmap_copies(&self, n: &Node, from: u64, to: u64) -> Result<()> {
        let copying: Vec<Arc<MapState>> =
            lock(&n.maps).iter().filter_map(Weak::upgrade).filter(|m| m.copies.load(Ordering::Relaxed)).collect();
        for m in copying {
            let pages = m.reset_bytes(from, to)?;
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

    /// Flushes every written block under `n`'s shared writable mappings to the medium.
    pub(crate) fn flush_mapped(&self, n: &Node) -> Result<()> {
        let maps: Vec<Arc<MapState>> = lock(&n.maps).iter().filter_map(Weak::upgrade).collect();
        for m in maps.iter().filter(|m| m.share == Share::Shared) {
            self.flush_state(m)?;
        }
        Ok(())
    }

    fn flush_state(&self, m: &MapState) -> Result<()> {
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

    /// Serves one fault at byte `off` of mapping `m`, or hands it on when `by` is a reader and
    /// serving it means waiting (see [`Server`]). Loads take the inode lock shared; a store that
    /// must allocate or convert takes it exclusively and starts over, since the page may have
    /// changed in between. Every message is served from the state found under the lock, so a
    /// second or late message for a page is harmless: it installs what is already there.
    fn serve_fault(&self, m: &MapState, off: u64, store: bool, by: Server) -> Result<Served> {
        let fpage = (m.file_off + off) / PAGE;
        {
            let Some(g) = read_lock(&m.node.inode, by) else { return Ok(Served::Deferred) };
            if self.serve_in_place(&g, m, off, fpage, store)? {
                m.region.wake(off, PAGE)?;
                return Ok(Served::Done);
            }
        }
        let Some(mut g) = write_lock(&m.node.inode, by) else { return Ok(Served::Deferred) };
        if self.serve_in_place(&g, m, off, fpage, store)? {
            m.region.wake(off, PAGE)?;
            return Ok(Served::Done);
        }
        // A first store. A write copying around the page (without the inode lock) may be
        // filling the holes this store would allocate, or the blocks it would move: wait for
        // that write (a worker; a reader hands the fault on), then start over.
        let window = fpage * PAGE / HUGE * HUGE;
        let marked = g.writing.is_some_and(|(s, e)| s < window + HUGE && e > window);
        #[cfg(feature = "model")]
        let marked = marked && !crate::model::planted(crate::model::Plant::StoresIgnoreWrites);
        if marked {
            drop(g);
            if by == Server::Reader {
                return Ok(Served::Deferred);
            }
            drop(rd(&m.node.io));
            return self.serve_fault(m, off, store, by);
        }
        // Other shared mappings lose their zero page for this one (a reset).
        if by == Server::Reader && self.other_mapping(m, |o| o.share == Share::Shared) {
            return Ok(Served::Deferred);
        }
        let _change = self.writable()?;
        let c = &m.svc.counters;
        let huge = !self.inner.mmap.no_huge.load(Ordering::Relaxed);
        let empty = matches!(self.page_state(&g, fpage), PageState::Empty);
        if empty && huge && self.huge_store(&mut g, m, fpage)? {
            bump(&c.huge, 1);
        } else if empty && cluster_pages() > 1 && self.cluster_store(&mut g, m, fpage)? {
            bump(&c.clustered, 1);
        } else {
            let at = self.make_mappable(&mut g, fpage)?;
            // Other mappings drop their zero page or copy for the data (this one maps over its own).
            self.unmap_others(&m.node, fpage * PAGE, (fpage + 1) * PAGE, Reach::Shared, Some(m))?;
            m.map_piece(&self.inner.dev, off, PAGE, at, false, false)?;
            bump(&c.first_store, 1);
        }
        m.region.wake(off, PAGE)?;
        Ok(Served::Done)
    }

    /// Serves what needs no change to the file (the caller wakes the thread): a page past EOF
    /// is poisoned, a private mapping gets a copy, a written page is mapped (or copied past the
    /// map budget), a load from a page with no written block gets the zero page and a load from
    /// a partly written page a copy. Returns false for a store that must allocate or convert.
    fn serve_in_place(&self, g: &Inode, m: &MapState, off: u64, fpage: u64, store: bool) -> Result<bool> {
        let c = &m.svc.counters;
        if g.freed || fpage >= g.attr.size.div_ceil(PAGE) {
            bump(&c.sigbus, 1);
            m.region.poison(off, PAGE, false)?;
            return Ok(true);
        }
        if m.share == Share::Private {
            let mut buf = vec![0u8; PAGE as usize];
            self.read_locked(g, fpage * PAGE, &mut buf)?;
            bump(&c.copied, 1);
            m.region.copy(off, &buf, false, false)?;
            return Ok(true);
        }
        let wp = m.region.write_protects();
        #[cfg(feature = "model")]
        let wp = wp || crate::model::planted(crate::model::Plant::WriteProtectEveryCopy);
        match self.page_state(g, fpage) {
            // A copy of a written page would miss stores through another shared writable
            // mapping (they do not fault): mapped then, whatever the budget.
            PageState::Mappable(at)
                if m.map_piece(
                    &self.inner.dev,
                    off,
                    PAGE,
                    at,
                    !store && !self.other_mapping(m, |o| o.region.write_protects()),
                    false,
                )? =>
            {
                bump(&c.mapped, 1);
            }
            PageState::Mappable(_) | PageState::Mixed if !store => {
                // A copy, write-protected where stores can come: a store faults and maps the
                // device page; a write() over the page, and a store into a partly written page
                // through any mapping (which faults), reset copies.
                let mut buf = vec![0u8; PAGE as usize];
                self.read_locked(g, fpage * PAGE, &mut buf)?;
                m.copies.store(true, Ordering::Relaxed);
                bump(&c.copied, 1);
                m.region.copy(off, &buf, false, wp)?;
            }
            PageState::Empty if !store => {
                #[cfg(feature = "model")]
                if wp && crate::model::planted(crate::model::Plant::TwoStepZeroPage) {
                    // The window this step closes: zero page first, protected afterwards.
                    m.region.zeropage(off, PAGE, false)?;
                    m.region.writeprotect(off, PAGE, true, false)?;
                    bump(&c.zero_page, 1);
                    return Ok(true);
                }
                if wp {
                    // Zeros, write-protected in the same step, so a store faults to allocate.
                    // The shared zero page cannot be installed that way (UFFDIO_ZEROPAGE has no
                    // WP mode and refuses a page that carries a WP marker), and a store landing
                    // between installing and protecting it would go to a private copy.
                    m.region.copy(off, &ZEROS, false, true)?;
                } else {
                    m.region.zeropage(off, PAGE, false)?;
                }
                bump(&c.zero_page, 1);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether the file of `m` has a live mapping besides `m` that `what` holds for.
    fn other_mapping(&self, m: &MapState, what: impl Fn(&MapState) -> bool) -> bool {
        lock(&m.node.maps).iter().filter_map(Weak::upgrade).any(|o| !std::ptr::eq(&*o, m) && what(&o))
    }

    fn page_state(&self, g: &Inode, fpage: u64) -> PageState {
        let geo = &self.inner.geo;
        let per = PAGE / geo.block_size;
        let pieces = g.ext.pieces(fpage * per, per);
        let written = |p: &Piece| matches!(p, Piece::Mapped(e) if e.state == State::Written);
        if !pieces.iter().any(written) {
            return PageState::Empty;
        }
        match pieces[0] {
            Piece::Mapped(e)
                if one_run(&pieces) && pieces.iter().all(written) && geo.block_at(e.physical) % PAGE == 0 =>
            {
                PageState::Mappable(geo.block_at(e.physical))
            }
            _ => PageState::Mixed,
        }
    }

    /// Gives file page `fpage` one page-aligned run of written blocks (the page_mkwrite role):
    /// holes and unwritten blocks are zeroed, written blocks kept (moved to a fresh aligned run
    /// when they are not one already), all in one transaction. Returns the run's device offset.
    fn make_mappable(&self, g: &mut Inode, fpage: u64) -> Result<u64> {
        self.undoable(g, |g, taken| {
            let geo = self.inner.geo;
            let dev = &self.inner.dev;
            let bs = geo.block_size;
            let per = PAGE / bs;
            let first = fpage * per;
            let pieces = g.ext.pieces(first, per);
            let mut tx = Tx::new();
            let in_place = match pieces[0] {
                Piece::Mapped(e) => geo.block_at(e.physical) % PAGE == 0 && one_run(&pieces),
                Piece::Hole { .. } => false,
            };
            let (target, freed) = if in_place {
                let Piece::Mapped(e) = pieces[0] else { unreachable!("checked above") };
                let converts =
                    pieces.iter().filter(|p| matches!(p, Piece::Mapped(x) if x.state != State::Written)).count();
                self.reserve_slots(g, ExtentMap::slots_needed(2 * converts), &mut tx)?;
                for p in &pieces {
                    if let Piece::Mapped(x) = p {
                        if x.state != State::Written {
                            tx.content_zero(dev, geo.block_at(x.physical), x.len * bs)?;
                            g.ext.remove_range(x.logical, x.len, &mut tx)?;
                            g.ext.insert(Extent { state: State::Written, ..*x }, &mut tx)?;
                        }
                    }
                }
                (e.physical, Vec::new())
            } else {
                let run = if per == 1 {
                    self.alloc_blocks(self.goal(g, first), 1)?[0]
                } else {
                    self.alloc_aligned_blocks(per, per)?
                };
                taken.push(run);
                self.reserve_slots(g, ExtentMap::slots_needed(1), &mut tx)?;
                let base = geo.block_at(run.start);
                let mut buf = vec![0u8; bs as usize];
                for p in &pieces {
                    match p {
                        Piece::Mapped(x) if x.state == State::Written => {
                            for i in 0..x.len {
                                dev.read(geo.block_at(x.physical + i), &mut buf)?;
                                tx.content_write(dev, base + (x.logical + i - first) * bs, &buf)?;
                            }
                        }
                        Piece::Mapped(x) => tx.content_zero(dev, base + (x.logical - first) * bs, x.len * bs)?,
                        Piece::Hole { logical, len } => {
                            tx.content_zero(dev, base + (logical - first) * bs, len * bs)?
                        }
                    }
                }
                let freed = g.ext.remove_range(first, per, &mut tx)?;
                g.ext
                    .insert(Extent { logical: first, physical: run.start, len: per, state: State::Written }, &mut tx)?;
                (run.start, freed)
            };
            let now = Timespec::now();
            g.attr.mtime = now;
            g.attr.ctime = now;
            g.log_attr(&geo, &mut tx);
            let head = self.commit(&tx)?;
            self.free_after(head, freed.iter().map(Extent::run).collect());
            Ok(geo.block_at(target))
        })
    }

    /// A first store into a hole: when the 2 MiB around `fpage` is a hole wholly inside the
    /// file and the mapping, and an aligned 2 MiB device run is free, allocates, zeroes,
    /// commits and maps all of it. Returns whether it did.
    fn huge_store(&self, g: &mut Inode, m: &MapState, fpage: u64) -> Result<bool> {
        let start = fpage * PAGE / HUGE * HUGE;
        let covered = start >= m.file_off && start + HUGE <= m.file_off + m.region.len();
        let aligned = (m.region.start() + start - m.file_off) % HUGE == 0;
        if !covered || !aligned || start + HUGE > g.attr.size {
            return Ok(false);
        }
        self.store_run(g, m, start / PAGE, HUGE / PAGE, HUGE)
    }

    /// A first store into a hole while the mapping budget is under pressure: the run of hole
    /// pages around `fpage`, within its aligned cluster, the file's EOF page and the mapping, is
    /// allocated as one device run and mapped with one call. Returns whether it did (a run of
    /// one page gains nothing).
    fn cluster_store(&self, g: &mut Inode, m: &MapState, fpage: u64) -> Result<bool> {
        let per = PAGE / self.inner.geo.block_size;
        let window = cluster_pages();
        let hole = |p: u64| matches!(g.ext.pieces(p * per, per)[..], [Piece::Hole { .. }]);
        let low = (fpage / window * window).max(m.file_off / PAGE);
        let high = (fpage / window * window + window)
            .min((m.file_off + m.region.len()) / PAGE)
            .min(g.attr.size.div_ceil(PAGE));
        let (mut lo, mut hi) = (fpage, fpage + 1);
        while lo > low && hole(lo - 1) {
            lo -= 1;
        }
        while hi < high && hole(hi) {
            hi += 1;
        }
        if hi - lo < 2 || !hole(fpage) {
            return Ok(false);
        }
        self.store_run(g, m, lo, hi - lo, PAGE)
    }

    /// Allocates file pages `[first, first+pages)`, all a hole, as one device run aligned to
    /// `align` bytes: zeroed, committed as one written extent, then mapped into `m` with one
    /// call (other shared mappings drop what they showed there). False when no such run is free.
    fn store_run(&self, g: &mut Inode, m: &MapState, first: u64, pages: u64, align: u64) -> Result<bool> {
        let geo = self.inner.geo;
        let bs = geo.block_size;
        let blocks = pages * PAGE / bs;
        if !matches!(g.ext.pieces(first * PAGE / bs, blocks)[..], [Piece::Hole { .. }]) {
            return Ok(false);
        }
        let Ok(run) = self.alloc_aligned_blocks(blocks, align / bs) else { return Ok(false) };
        let at = geo.block_at(run.start);
        self.undoable(g, |g, taken| {
            taken.push(run);
            let mut tx = Tx::new();
            self.reserve_slots(g, ExtentMap::slots_needed(1), &mut tx)?;
            tx.content_zero(&self.inner.dev, at, pages * PAGE)?;
            let logical = first * PAGE / bs;
            g.ext.insert(Extent { logical, physical: run.start, len: blocks, state: State::Written }, &mut tx)?;
            let now = Timespec::now();
            g.attr.mtime = now;
            g.attr.ctime = now;
            g.log_attr(&geo, &mut tx);
            self.commit(&tx)
        })?;
        let (from, to) = (first * PAGE, (first + pages) * PAGE);
        self.unmap_others(&m.node, from, to, Reach::Shared, Some(m))?;
        m.map_piece(&self.inner.dev, from - m.file_off, to - from, at, false, false)?;
        Ok(true)
    }
}

/// Pages a first store into a hole allocates at once, by how much of the budget is in use.
fn cluster_pages() -> u64 {
    let (used, budget) = (VMAS_USED.load(Ordering::Relaxed), map_budget());
    if used * 8 >= budget * PRESSURE_HIGH {
        CLUSTER_HIGH
    } else if used * 8 >= budget * PRESSURE_LOW {
        CLUSTER_LOW
    } else {
        1
    }
}

/// Whether `pieces` are all mapped and physically contiguous (one device run).
fn one_run(pieces: &[Piece]) -> bool {
    matches!(pieces.first(), Some(Piece::Mapped(_)))
        && pieces.windows(2).all(|w| match (w[0], w[1]) {
            (Piece::Mapped(a), Piece::Mapped(b)) => a.physical + a.len == b.physical,
            _ => false,
        })
}

/// Takes `l` shared; a reader only when it is free now.
fn read_lock<T>(l: &RwLock<T>, by: Server) -> Option<RwLockReadGuard<'_, T>> {
    match by {
        Server::Worker => Some(rd(l)),
        Server::Reader => match l.try_read() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        },
    }
}

/// Takes `l` exclusively; a reader only when it is free now.
fn write_lock<T>(l: &RwLock<T>, by: Server) -> Option<RwLockWriteGuard<'_, T>> {
    match by {
        Server::Worker => Some(wr(l)),
        Server::Reader => match l.try_write() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        },
    }
}

/// Reader `i`: takes messages off its userfaultfd (reading a REMAP event is all a reset waits
/// for) and serves each fault it can without waiting; the rest go to the workers.
fn read(svc: Arc<Service>, i: usize, fs: Weak<Inner>) {
    let uffd = svc.uffds[i].clone();
    while !svc.stop.load(Ordering::Acquire) {
        let f = match uffd.next_fault(100) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(_) => break,
        };
        let found = rd(&svc.regions).range(..=f.addr).next_back().map(|(_, m)| m.clone());
        let Some(m) = found.filter(|m| m.region.contains(f.addr)) else { continue };
        let off = (f.addr - m.region.start()) / PAGE * PAGE;
        if !serve_one(&svc, &fs, Job { m, off, store: f.write }, Server::Reader) {
            break;
        }
    }
}

/// A worker: serves the faults readers hand on, waiting for locks as operations do.
fn work(svc: Arc<Service>, fs: Weak<Inner>) {
    let mut q = lock(&svc.queue);
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            if !serve_one(&svc, &fs, job, Server::Worker) {
                q = lock(&svc.queue);
                break;
            }
            q = lock(&svc.queue);
            continue;
        }
        if svc.stop.load(Ordering::Acquire) {
            break;
        }
        q.idle += 1;
        let (back, waited) = svc.ready.wait_timeout(q, WORKER_IDLE).unwrap_or_else(|e| e.into_inner());
        q = back;
        q.idle -= 1;
        if waited.timed_out() && q.jobs.is_empty() && q.workers > 1 {
            break;
        }
    }
    q.workers -= 1;
}

impl Service {
    /// Queues `job` for a worker, starting one when every worker is busy.
    fn defer(self: &Arc<Self>, job: Job, fs: &Weak<Inner>) {
        let mut q = lock(&self.queue);
        q.jobs.push_back(job);
        if q.jobs.len() > q.idle && q.workers < MAX_WORKERS {
            let (svc, fs) = (self.clone(), fs.clone());
            let started = thread::Builder::new().name("udax-fault-worker".into()).spawn(move || work(svc, fs));
            match started {
                Ok(_) => q.workers += 1,
                Err(_) if q.workers == 0 => {
                    // Nobody can serve it: the access fails with SIGBUS rather than hang.
                    let job = q.jobs.pop_back().expect("pushed above");
                    drop(q);
                    fail(self, &job);
                    return;
                }
                Err(_) => {}
            }
        }
        drop(q);
        self.ready.notify_one();
    }
}

/// Serves (or hands on) one fault; false once the file system is gone.
fn serve_one(svc: &Arc<Service>, fs: &Weak<Inner>, job: Job, by: Server) -> bool {
    svc.busy.fetch_add(1, Ordering::AcqRel);
    let Some(inner) = fs.upgrade() else {
        svc.busy.fetch_sub(1, Ordering::AcqRel);
        return false;
    };
    let fs = Fs { inner };
    match fs.serve_fault(&job.m, job.off, job.store, by) {
        Ok(Served::Done) => {}
        Ok(Served::Deferred) => svc.defer(job, &Arc::downgrade(&fs.inner)),
        Err(_) => fail(svc, &job),
    }
    drop(fs);
    svc.busy.fetch_sub(1, Ordering::AcqRel);
    true
}

/// A fault that cannot be served (no space for a first store, a device error, no mapping left
/// for the page) gets SIGBUS, as a kernel file system's failed page_mkwrite does: the page is
/// poisoned until the next reset of it (a write, truncate, punch or zero range over it). When a
/// page is there already the message was a late one, and the wake is all it needs.
fn fail(svc: &Service, job: &Job) {
    bump(&svc.counters.sigbus, 1);
    let _ = job.m.region.poison(job.off, PAGE, false);
    let _ = job.m.region.wake(job.off, PAGE);
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
    /// through it are served like those of [`Mapping::read`] and [`Mapping::write`]. udax lends
    /// no Rust reference to mapped memory (other threads, mappings, processes and truncates may
    /// change it at any time): a slice formed from this pointer is the caller's unsafe promise.
    pub fn as_ptr(&self) -> *mut u8 {
        self.state.region.start() as *mut u8
    }

    /// Mapped length (whole pages).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// File offset of the first mapped byte.
    pub fn offset(&self) -> u64 {
        self.state.file_off
    }

    pub fn prot(&self) -> Prot {
        self.prot
    }

    pub fn share(&self) -> Share {
        self.state.share
    }

    /// Loads `buf.len()` bytes at `off` of the mapping. A page at or past the file's EOF page
    /// raises SIGBUS, as a load would.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.state.region.read(off, buf)
    }

    /// Stores `data` at `off` of the mapping (EACCES on a read-only mapping).
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        self.state.region.write(off, data)
    }

    /// Stores `len` copies of `byte` at `off`.
    pub fn fill(&self, off: u64, len: u64, byte: u8) -> Result<()> {
        self.state.region.fill(off, len, byte)
    }

    /// Whether a load at `off` would succeed rather than raise SIGBUS (a page at or past the one
    /// holding EOF), found without raising the signal. Faults it takes are served as a load's.
    pub fn loadable(&self, off: u64) -> Result<bool> {
        self.state.region.loadable(off)
    }

    /// msync: makes every store through this mapping durable across power loss.
    pub fn flush(&self) -> Result<()> {
        if self.state.share == Share::Shared {
            self.fs.flush_state(&self.state)?;
        }
        self.fs.sync()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        wr(&self.state.svc.regions).remove(&self.state.region.start());
        // Unmapped before the close can free an unlinked file's blocks.
        let _ = self.state.region.detach();
        let _ = self.fs.release_node(&self.state.node);
    }
}
