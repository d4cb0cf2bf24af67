//! In-memory inodes and their live mappings, and the fault service's shared state: the
//! types the mount, the namespace, the data path and the fault service all hold.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::error::Result;
use crate::inode::{InoHasher, Inode};
use crate::sync::{lock, rd, wr, AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, RwLock};
use crate::uffd::{Region, Uffd};

use super::types::{Share, PAGE};

/// Why an inode slot could not be loaded: the decoder's `Error::Corrupt` fields, returned by
/// every operation that reaches the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Damage {
    pub(crate) what: &'static str,
    pub(crate) at: u64,
}

/// An inode and its lock. `parent` mirrors a directory's parent outside the lock so the
/// rename loop check can walk up without taking inode locks (it changes only under `rename`);
/// `is_dir` never changes, so checks that must not lock (lock order) can read it.
#[derive(Debug)]
pub(crate) struct Node {
    /// The data lock (the role of the kernel's i_rwsem): writes, truncates and fallocate hold it
    /// exclusively, reads shared; faults only wait on it (a first store beside a write that is
    /// copying, in a worker, holding nothing). Taken before the inode lock.
    pub(crate) io: RwLock<()>,
    pub(crate) inode: RwLock<Inode>,
    pub(crate) parent: AtomicU64,
    /// The inode's number; a node is one inode's life, never reused for another.
    pub(crate) ino: u64,
    pub(crate) is_dir: bool,
    /// A symbolic link (a file's type never changes): path walks test it without the lock.
    pub(crate) is_symlink: bool,
    /// Live mappings of the file (`mmap`), pruned as they go.
    pub(crate) maps: Mutex<Vec<std::sync::Weak<MapState>>>,
}

impl Node {
    pub(super) fn new(inode: Inode) -> Arc<Node> {
        let parent = AtomicU64::new(inode.attr.parent);
        let (ino, is_dir) = (inode.ino, inode.is_dir());
        let is_symlink = crate::layout::mode::is_symlink(inode.attr.mode);
        let inode = RwLock::new(inode);
        Arc::new(Node { io: RwLock::new(()), inode, parent, ino, is_dir, is_symlink, maps: Mutex::new(Vec::new()) })
    }
}

/// Inode number → node, as mount builds it.
pub(crate) type NodeMap = HashMap<u64, Arc<Node>, BuildHasherDefault<InoHasher>>;

/// Shards of the node table: threads working on different inodes take different locks.
const NODE_SHARDS: usize = 16;

/// Every live inode's node, by number, in shards by number. Each shard's lock is a leaf (held
/// for one lookup, insert or removal).
#[derive(Debug)]
pub(crate) struct NodeTable {
    shards: [RwLock<NodeMap>; NODE_SHARDS],
}

impl NodeTable {
    pub(crate) fn new(all: NodeMap) -> NodeTable {
        let shards: [RwLock<NodeMap>; NODE_SHARDS] = std::array::from_fn(|_| RwLock::new(NodeMap::default()));
        for (ino, node) in all {
            wr(&shards[ino as usize % NODE_SHARDS]).insert(ino, node);
        }
        NodeTable { shards }
    }

    fn shard(&self, ino: u64) -> &RwLock<NodeMap> {
        &self.shards[ino as usize % NODE_SHARDS]
    }

    pub(crate) fn get(&self, ino: u64) -> Option<Arc<Node>> {
        rd(self.shard(ino)).get(&ino).cloned()
    }

    pub(crate) fn insert(&self, node: Arc<Node>) {
        wr(self.shard(node.ino)).insert(node.ino, node);
    }

    pub(crate) fn remove(&self, ino: u64) {
        wr(self.shard(ino)).remove(&ino);
    }

    /// A copy of the whole table, for passes over every inode (orphans, repair): nodes added or
    /// removed meanwhile may or may not be in it.
    pub(crate) fn to_map(&self) -> NodeMap {
        let mut all = NodeMap::default();
        for s in &self.shards {
            all.extend(rd(s).iter().map(|(&i, n)| (i, n.clone())));
        }
        all
    }
}

/// What a device piece mapped into a region costs against the mapping budget: its own VMA, and
/// the split of the reservation around it.
pub(super) const PIECE_COST: u64 = 2;

/// vm.max_map_count when /proc does not say.
pub(super) const DEFAULT_MAX_MAP_COUNT: u64 = 65_530;

/// Pieces that have another way (eager mapping at mmap time, loads of written pages, which can
/// fault later or take a copy) stop at this share of the mapping budget, in 1/8ths: the rest
/// stays for new mappings and for stores.
pub(super) const OPTIONAL_SHARE: u64 = 3;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) zero_page: AtomicU64,
    pub(super) first_store: AtomicU64,
    pub(super) huge: AtomicU64,
    pub(super) clustered: AtomicU64,
    pub(super) sigbus: AtomicU64,
    pub(super) mapped: AtomicU64,
    pub(super) copied: AtomicU64,
    pub(super) eager: AtomicU64,
    pub(super) invalidated: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The fault service of one mounted file system: its userfaultfd, the live mappings by address,
/// the reader threads and the workers (started with the first mapping).
#[derive(Debug)]
pub(crate) struct Service {
    /// One userfaultfd per reader thread; mappings are spread over them in turn, so readers
    /// never contend for a message and every fault wakes exactly one of them.
    pub(super) uffds: Vec<Arc<Uffd>>,
    pub(super) next_uffd: AtomicUsize,
    pub(super) regions: RwLock<BTreeMap<u64, Arc<MapState>>>,
    pub(super) counters: Counters,
    pub(super) stop: AtomicBool,
    /// Service threads holding a strong reference to the file system (serving a fault).
    pub(super) busy: AtomicUsize,
    /// Faults a reader handed on because serving them means waiting.
    pub(super) queue: Mutex<Queue>,
    pub(super) ready: Condvar,
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) jobs: VecDeque<Job>,
    /// Workers waiting for a job.
    pub(super) idle: usize,
    pub(super) workers: usize,
}

#[derive(Debug)]
pub(super) struct Job {
    pub(super) m: Arc<MapState>,
    pub(super) off: u64,
    pub(super) store: bool,
}

/// Where `Inner` keeps the service; dropping it (the file system going away) stops the thread.
#[derive(Debug, Default)]
pub(crate) struct ServiceSlot {
    pub(super) svc: OnceLock<Arc<Service>>,
    pub(super) init: Mutex<()>,
    /// First stores allocate 4 KiB pages only (see [`Fs::set_mmap_huge`]).
    pub(super) no_huge: AtomicBool,
    /// New shared writable mappings write back every mapped block at msync rather than track
    /// stores (see [`Fs::set_mmap_dirty_tracking`]).
    pub(super) untracked: AtomicBool,
}

/// VMAs that the live mappings of every udax file system in the process use, as counted against
/// the budget: one per region, [`PIECE_COST`] per device piece mapped into one.
pub(super) static VMAS_USED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The mapping budget (0 until the first mapping: half of vm.max_map_count).
pub(super) static BUDGET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sets how many of the process's memory mappings (VMAs; the kernel allows vm.max_map_count)
/// the mappings of all udax file systems in the process may use together. The default is half
/// of vm.max_map_count, read at the first mapping. Past half of the budget, first stores into
/// holes allocate clusters of pages (64 KiB, then 2 MiB) so that mapped pieces stay few; `mmap`
/// past all of it fails with ENOMEM ([`Error::OutOfMappings`](crate::Error::OutOfMappings)); a store is never refused.
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
    pub(super) region: Region,
    pub(super) node: Arc<Node>,
    /// File offset of the region's first byte (page-aligned).
    pub(super) file_off: u64,
    pub(super) share: Share,
    pub(super) svc: Arc<Service>,
    /// Some pages hold copies of written data: overwrites, and a second shared writable
    /// mapping of the file, reset them.
    pub(super) copies: AtomicBool,
    /// Device pieces mapped into the region (region offset → length). They, and the region
    /// itself, are what this mapping counts against the budget.
    pub(super) pieces: Mutex<BTreeMap<u64, u64>>,
}

impl Drop for MapState {
    fn drop(&mut self) {
        let n = self.pieces.get_mut().unwrap_or_else(|e| e.into_inner()).len() as u64;
        VMAS_USED.fetch_sub(1 + n * PIECE_COST, Ordering::Relaxed);
    }
}

/// Drops `[s, e)` from a map of non-overlapping ranges, trimming the ranges it cuts.
pub(super) fn cut(pieces: &mut BTreeMap<u64, u64>, s: u64, e: u64) {
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
    pub(super) fn map_piece(
        &self,
        dev: &crate::Device,
        off: u64,
        len: u64,
        at: u64,
        optional: bool,
        eager: bool,
    ) -> Result<bool> {
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
    pub(super) fn reset_bytes(&self, from: u64, to: u64) -> Result<u64> {
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
pub(super) fn recount(before: usize, after: usize) {
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
