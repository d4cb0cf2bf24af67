//! The `Fs` facade: mkfs, mount and every namespace operation, and the locking that orders them.
//!
//! Lock order (SPEC §5, kept from the kernel): the rename lock (cross-directory renames only) →
//! a file's data lock (`Node::io`: writes, truncates and fallocate; reads shared) →
//! inode locks (directories before non-directories; among directories an ancestor before its
//! descendant, unrelated ones by ascending number; non-directories by ascending number) → the
//! inode-number table → the allocator → the journal. Only cross-directory renames hold two
//! unrelated directories, and the rename lock makes them one at a time. Each operation builds one transaction, fences the new
//! content it links, commits — durable from here — and only then frees blocks (which become
//! reusable after the next checkpoint, see `alloc`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::alloc::{Allocator, Run};
use crate::device::Device;
use crate::dir::{DirIndex, Slot};
use crate::error::{Error, Result};
use crate::extent::{ExtentMap, Piece, State};
use crate::inode::{Attr, Inode, InodeTable, Timespec};
use crate::journal::{Journal, RecoveryReport, Tx};
use crate::layout::{self, check_name, mode, off, Geometry, ROOT_INO};
use crate::mmap::unmapped;
use crate::sync::{AtomicBool, AtomicU64, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Worst-case journal bytes per block a data transaction touches: a conversion rewrites two
/// extent slots and fills a third (3 × 40-byte entries), plus a share of overflow-block links.
const TX_BYTES_PER_BLOCK: u64 = 160;
/// Room for the record header, the inode's attributes and a directory's worth of entries.
const TX_FIXED_BYTES: u64 = 2048;

/// Size of the allocation groups that spread new files over the device.
const GROUP_BYTES: u64 = 8 << 20;

/// Most hard links one inode may have.
pub const LINK_MAX: u32 = 65000;

/// Who is acting: owner of what gets created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
}

impl Creds {
    pub const ROOT: Creds = Creds { uid: 0, gid: 0 };

    /// The effective ids of this process.
    pub fn current() -> Creds {
        #[cfg(miri)]
        return Creds::ROOT; // miri answers no id query; its subset acts as root
        #[cfg(not(miri))]
        Creds { uid: rustix::process::geteuid().as_raw(), gid: rustix::process::getegid().as_raw() }
    }
}

/// mkfs parameters.
#[derive(Debug, Clone)]
pub struct MkfsOptions {
    pub block_size: u32,
    /// 0: one inode per 16 KiB.
    pub inodes: u64,
    /// 0: chosen by size.
    pub journal_bytes: u64,
    pub label: String,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions { block_size: 4096, inodes: 0, journal_bytes: 0, label: String::new() }
    }
}

/// What stat(2) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stat {
    pub ino: u64,
    pub generation: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte units allocated.
    pub blocks: u64,
    pub blksize: u32,
    pub rdev: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
}

/// One directory entry as readdir reports it. `cookie` resumes after this entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    /// DT_* type.
    pub dtype: u8,
    pub cookie: u64,
}

/// A time to set: a given one, or now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(Timespec),
}

/// Attribute changes for [`Fs::setattr`]; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// The caller, when the change drops set-ID bits as Linux drops them (a front end serving
    /// other processes): a chown of a non-directory always, a size change when the caller
    /// lacks CAP_FSETID (the front end decides; udax takes it as asked). In the same
    /// transaction as the change, and not with an explicit `mode`.
    pub drop_set_id: Option<Creds>,
}

/// The set-ID bits a write, truncate or chown of a non-directory drops, as Linux decides it:
/// set-user-ID always; set-group-ID when the file is group-executable, and for a chown by
/// someone neither root nor in the file's group (`outsider`) even when it is not.
pub(crate) fn killed_set_id(mode: u32, outsider: bool) -> u32 {
    if mode::is_dir(mode) {
        return 0;
    }
    let sgid = mode & mode::S_ISGID != 0 && (mode & 0o010 != 0 || outsider);
    (mode & mode::S_ISUID) | if sgid { mode::S_ISGID } else { 0 }
}

/// Space and inode counts, as statfs(2) reports them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StatFs {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub inodes: u64,
    pub inodes_free: u64,
    pub name_max: u32,
}

/// rename(2) flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenameMode {
    #[default]
    Replace,
    NoReplace,
    Exchange,
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
    pub(crate) is_dir: bool,
    /// Live mappings of the file (`mmap`), pruned as they go.
    pub(crate) maps: Mutex<Vec<std::sync::Weak<crate::mmap::MapState>>>,
}

impl Node {
    fn new(inode: Inode) -> Arc<Node> {
        let parent = AtomicU64::new(inode.attr.parent);
        let is_dir = inode.is_dir();
        Arc::new(Node { io: RwLock::new(()), inode: RwLock::new(inode), parent, is_dir, maps: Mutex::new(Vec::new()) })
    }
}

/// A mounted udax image. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Fs {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) dev: Device,
    pub(crate) geo: Geometry,
    journal: Mutex<Journal>,
    alloc: Mutex<Allocator>,
    itable: Mutex<InodeTable>,
    pub(crate) nodes: RwLock<HashMap<u64, Arc<Node>>>,
    pub(crate) rename: Mutex<()>,
    recovery: RecoveryReport,
    uuid: [u8; 16],
    label: String,
    mkfs_time: i64,
    /// Opened read-only ([`Fs::open_image_read_only`]): every change is EROFS.
    read_only: bool,
    /// Why every change is refused until the image is mounted again: memory may no longer match
    /// the medium (a panic during a change, a failed change that could not be put back), or the
    /// host file system holding a sparse image is full.
    broken: Mutex<Option<String>>,
    /// Set once `broken` holds a reason: the one load every change makes.
    stopped: AtomicBool,
    pub(crate) mmap: crate::mmap::ServiceSlot,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn rd<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn wr<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// What [`Error::Stopped`] says after an internal error.
const FSCK_AFTER: &str = "{}: unmount it and run `udax fsck` on the image";

/// Held for one change (see [`Fs::writable`]): a panic while it is held stops all changes.
#[derive(Debug)]
#[must_use = "hold it for the whole change"]
pub(crate) struct Change<'a>(&'a Fs);

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop_changes(FSCK_AFTER.replace("{}", "a change panicked"));
        }
    }
}

/// Facts about a mounted image, for `udax info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsInfo {
    pub geometry: Geometry,
    pub device: crate::device::DeviceInfo,
    pub uuid: String,
    pub label: String,
    pub mkfs_time: i64,
    pub statfs: StatFs,
    pub recovery: RecoveryReport,
    pub durability: &'static str,
}

impl Fs {
    /// Formats `dev` and mounts it.
    pub fn mkfs(dev: Device, opts: &MkfsOptions) -> Result<Fs> {
        Self::mkfs_with_progress(dev, opts, &mut |_, _| {})
    }

    /// As [`Fs::mkfs`], reporting `(bytes done, bytes total)` while the inode table is cleared.
    pub fn mkfs_with_progress(dev: Device, opts: &MkfsOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<Fs> {
        let geo = Geometry::plan(dev.len(), opts.block_size, opts.inodes, opts.journal_bytes)?;
        // A sparse image takes host space for its metadata now (data blocks as they are
        // allocated), so a full host fails here rather than at a store.
        dev.back(0, geo.data_start * geo.block_size)?;
        // Invalidate any old superblock first, so a crash mid-mkfs leaves no half-made image
        // that looks valid.
        dev.zero(0, 4096)?;
        dev.fence();
        Journal::format(&dev, &geo)?;
        let table = geo.inode_count * layout::INODE_SIZE;
        let chunk = 8 << 20;
        let mut done = 0;
        while done < table {
            let n = chunk.min(table - done);
            dev.zero(geo.inode_off + done, n)?;
            done += n;
            progress(done, table);
        }
        let now = Timespec::now();
        let mut root = Inode::new(ROOT_INO, Attr::new(mode::S_IFDIR | 0o755, 0, 0, 1), &geo);
        root.attr.parent = ROOT_INO;
        let raw_root = {
            let mut tx = Tx::new();
            root.log_new(&geo, &mut tx);
            tx
        };
        for (off, bytes) in raw_root.entries() {
            dev.write(off, bytes)?;
        }
        dev.fence();
        let uuid = uuid_from(now);
        let sb = geo.superblock(now.sec, uuid, &opts.label);
        dev.write_obj(layout::SUPERBLOCK_OFF, &sb)?;
        dev.fence();
        dev.sync()?;
        Fs::mount(dev)
    }

    /// Opens an image file (or device-dax) and mounts it.
    pub fn open_image(path: &std::path::Path) -> Result<Fs> {
        Fs::mount(Device::open(path)?)
    }

    /// Opens an image without write access and mounts it read-only: nothing reaches the image
    /// (a journal replay stays in this process's view), and every change is EROFS.
    pub fn open_image_read_only(path: &std::path::Path) -> Result<Fs> {
        Fs::mount(Device::open_read_only(path)?)
    }

    /// Whether the file system was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// The first step of every change, before anything: EROFS on a read-only file system or one
    /// that stopped taking changes. The guard it returns, held for the change, stops them when
    /// the change panics (its locks may guard memory half updated, as ext4's errors=remount-ro).
    pub(crate) fn writable(&self) -> Result<Change<'_>> {
        if self.inner.read_only {
            return Err(Error::ReadOnly);
        }
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(Error::Stopped(lock(&self.inner.broken).clone().unwrap_or_default()));
        }
        Ok(Change(self))
    }

    /// Stops all further changes: memory may differ from the medium.
    fn stop_changes(&self, why: String) {
        lock(&self.inner.broken).get_or_insert(why);
        self.inner.stopped.store(true, Ordering::Release);
    }

    /// Puts `g` back as the medium holds it after a change to it failed part way (memory may
    /// have run ahead of the last commit), and gives back the blocks the change took: `taken`
    /// (allocated for it, linked or not) and whatever memory owned that the medium does not.
    /// The medium is the truth: before the change memory matched it. When even that fails,
    /// the file system stops taking changes.
    /// Runs `change` on `g`, which pushes every run of blocks it allocates onto its second
    /// argument; when it fails, puts `g` back as the medium holds it (see [`Fs::restore`]).
    pub(crate) fn undoable<R>(
        &self,
        g: &mut Inode,
        change: impl FnOnce(&mut Inode, &mut Vec<Run>) -> Result<R>,
    ) -> Result<R> {
        let mut taken = Vec::new();
        let r = change(g, &mut taken);
        if r.is_err() {
            self.restore(g, taken);
        }
        r
    }

    pub(crate) fn restore(&self, g: &mut Inode, taken: Vec<Run>) {
        if crate::faults::keeps_memory() {
            return;
        }
        let geo = &self.inner.geo;
        let fresh = Inode::load(&self.inner.dev, geo, g.ino).and_then(|i| match i {
            Some(mut i) if i.is_dir() => load_dir(&self.inner.dev, geo, &i).map(|d| {
                i.dir = Some(d);
                i
            }),
            Some(i) => Ok(i),
            None => Err(Error::Corrupt { what: "inode freed under a live node", at: geo.inode_at(g.ino) }),
        });
        let Ok(mut fresh) = fresh else {
            self.stop_changes(FSCK_AFTER.replace("{}", "a failed change could not be undone"));
            return;
        };
        let ahead = crate::alloc::subtract(g.owned_runs().chain(taken).collect(), fresh.owned_runs().collect());
        self.unreserve(ahead);
        (fresh.open, fresh.freed, fresh.writing) = (g.open, g.freed, g.writing);
        *g = fresh;
    }

    /// Mounts: checks the superblock, replays the journal, loads every inode, rebuilds free
    /// space, and frees orphans (inodes unlinked while open when the last mount ended).
    pub fn mount(dev: Device) -> Result<Fs> {
        if dev.len() < 4096 {
            return Err(Error::NotUdax(format!("{} bytes is too small to hold a udax image", dev.len())));
        }
        let sb: layout::RawSuperblock = dev.read_obj(layout::SUPERBLOCK_OFF)?;
        let geo = Geometry::from_superblock(&sb, dev.len())?;
        let ro_features = sb.features_ro_compat.get() & !layout::FEATURES_RO_COMPAT_KNOWN;
        if ro_features != 0 && !dev.is_read_only() {
            return Err(Error::Unsupported(format!(
                "read-only-compatible feature flags {ro_features:#x}: this udax can read the image but \
                 not change it; open it read-only"
            )));
        }
        // Recovery and every operation write the metadata area: on a sparse image its host
        // space is taken first (a no-op once it has been).
        dev.back(0, geo.data_start * geo.block_size)?;
        let (journal, recovery) = Journal::recover(&dev, &geo)?;
        let mut itable = InodeTable::new(geo.inode_count);
        let mut nodes = HashMap::new();
        let mut used = Vec::new();
        for ino in 1..=geo.inode_count {
            match Inode::load(&dev, &geo, ino)? {
                Some(mut inode) => {
                    itable.mark_used(ino);
                    used.extend(inode.owned_runs());
                    if inode.is_dir() {
                        inode.dir = Some(load_dir(&dev, &geo, &inode)?);
                    }
                    nodes.insert(ino, Node::new(inode));
                }
                None => {
                    let raw: layout::RawInode = dev.read_obj(geo.inode_at(ino))?;
                    itable.remember_generation(ino, raw.generation.get());
                }
            }
        }
        match nodes.get(&ROOT_INO) {
            Some(n) if rd(&n.inode).is_dir() => {}
            _ => return Err(Error::Corrupt { what: "root directory", at: geo.inode_at(ROOT_INO) }),
        }
        check_tree(&nodes, &geo)?;
        let alloc = Allocator::from_used(&geo, used)?;
        // Entries that disagree with the inodes they name are damage mount keeps for fsck to
        // report; their inode numbers are never handed out again while mounted, so a stale entry
        // can never come to name a new inode (of another type: the next mount would refuse it).
        let refs = count_entries(&nodes);
        for (&ino, &n) in &refs {
            match nodes.get(&ino) {
                None => itable.quarantine(ino),
                Some(node) if !node.is_dir && u64::from(rd(&node.inode).attr.nlink) != n => itable.quarantine(ino),
                Some(_) => {}
            }
        }
        let read_only = dev.is_read_only();
        let fs = Fs {
            inner: Arc::new(Inner {
                dev,
                geo,
                journal: Mutex::new(journal),
                alloc: Mutex::new(alloc),
                itable: Mutex::new(itable),
                nodes: RwLock::new(nodes),
                rename: Mutex::new(()),
                recovery,
                uuid: sb.uuid,
                label: String::from_utf8_lossy(&sb.label).trim_end_matches('\0').to_string(),
                mkfs_time: sb.mkfs_time.get(),
                read_only,
                broken: Mutex::new(None),
                stopped: AtomicBool::new(false),
                mmap: Default::default(),
            }),
        };
        // An orphan is an inode no entry names (a file unlinked while open); a named one, or
        // the root, with nlink 0 is a wrong link count, which fsck reports, not a file to free.
        let orphans: Vec<u64> = rd(&fs.inner.nodes)
            .iter()
            .filter(|&(&i, n)| rd(&n.inode).attr.nlink == 0 && i != ROOT_INO && !refs.contains_key(&i))
            .map(|(&i, _)| i)
            .collect();
        for ino in orphans {
            let node = fs.node(ino)?;
            let mut g = wr(&node.inode);
            fs.free_inode(&mut g)?;
        }
        Ok(fs)
    }

    /// Flushes everything to the medium (msync for page-cache-backed images) and, when this is
    /// the last handle, hands the device back.
    pub fn unmount(self) -> Result<Option<Device>> {
        // A checkpoint first, so the next mount has nothing to replay.
        let cp = lock(&self.inner.journal).checkpoint(&self.inner.dev)?;
        lock(&self.inner.alloc).release(cp);
        self.sync()?;
        let mut inner = self.inner;
        let mut retried = false;
        loop {
            match Arc::try_unwrap(inner) {
                Ok(inner) => return Ok(Some(inner.dev)),
                // The fault handler may still hold the file system for a moment after waking
                // the thread that is unmounting.
                Err(back) if back.mmap.busy() || !retried => {
                    retried = !back.mmap.busy();
                    inner = back;
                    crate::sync::thread::yield_now();
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Makes the image durable across power loss where the medium needs it (msync).
    pub fn sync(&self) -> Result<()> {
        self.inner.dev.fence();
        self.inner.dev.sync()
    }

    /// Test-only sabotage switch for the crash explorer: commits drop one fence of the protocol.
    /// Never use it on data you keep.
    #[cfg(feature = "crash-test")]
    pub fn sabotage(&self, which: crate::journal::Sabotage) {
        lock(&self.inner.journal).sabotage(which);
    }

    pub fn device(&self) -> &Device {
        &self.inner.dev
    }

    pub fn geometry(&self) -> &Geometry {
        &self.inner.geo
    }

    pub fn recovery(&self) -> RecoveryReport {
        self.inner.recovery
    }

    pub fn statfs(&self) -> StatFs {
        let g = &self.inner.geo;
        let free = lock(&self.inner.alloc).available_blocks();
        StatFs {
            block_size: g.block_size,
            blocks: g.data_blocks,
            blocks_free: free,
            inodes: g.inode_count,
            inodes_free: lock(&self.inner.itable).free_count(),
            name_max: layout::NAME_MAX as u32,
        }
    }

    pub fn info(&self) -> FsInfo {
        let dev = self.inner.dev.info();
        let durability = if dev.map_sync {
            "MAP_SYNC held: flush+fence reach the persistence domain"
        } else if dev.backend == "anonymous" {
            "anonymous memory: gone when the process exits"
        } else {
            "no MAP_SYNC: every return is crash-safe for the process; power-loss safe after sync (udax msyncs at unmount)"
        };
        FsInfo {
            geometry: self.inner.geo,
            device: dev,
            uuid: self.inner.uuid.iter().map(|b| format!("{b:02x}")).collect(),
            label: self.inner.label.clone(),
            mkfs_time: self.inner.mkfs_time,
            statfs: self.statfs(),
            recovery: self.inner.recovery,
            durability,
        }
    }

    // ---- internal helpers ----

    pub(crate) fn node(&self, ino: u64) -> Result<Arc<Node>> {
        rd(&self.inner.nodes).get(&ino).cloned().ok_or(Error::NotFound)
    }

    pub(crate) fn stat_of(&self, i: &Inode) -> Stat {
        let a = &i.attr;
        Stat {
            ino: i.ino,
            generation: a.generation,
            mode: a.mode,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            blocks: i.blocks_512(&self.inner.geo),
            blksize: self.inner.geo.block_size.max(4096) as u32,
            rdev: a.rdev,
            atime: a.atime,
            mtime: a.mtime,
            ctime: a.ctime,
            crtime: a.crtime,
        }
    }

    /// Commits `tx`; returns the journal position after it (for [`Allocator::free_after`]).
    pub(crate) fn commit(&self, tx: &Tx) -> Result<u64> {
        crate::faults::check(crate::faults::Step::Commit)?;
        let mut j = lock(&self.inner.journal);
        let done = j.commit(&self.inner.dev, tx)?;
        let head = j.head();
        drop(j);
        if let Some(cp) = done.checkpoint {
            lock(&self.inner.alloc).release(cp);
        }
        Ok(head)
    }

    /// Most blocks one data transaction may touch: every block can cost a few extent-slot entries
    /// (a split, a conversion) and the record must fit in half the journal.
    pub(crate) fn max_tx_blocks(&self) -> u64 {
        let record = lock(&self.inner.journal).max_record_len();
        (record.saturating_sub(TX_FIXED_BYTES) / TX_BYTES_PER_BLOCK).max(16)
    }

    /// Allocates `n` blocks (all or nothing), checkpointing first if only freed-but-pending
    /// blocks would satisfy it.
    pub(crate) fn alloc_blocks(&self, goal: u64, n: u64) -> Result<Vec<Run>> {
        crate::faults::check(crate::faults::Step::Alloc)?;
        let runs = {
            let mut a = lock(&self.inner.alloc);
            match a.alloc(goal, n) {
                Err(Error::NoSpace) if a.has_pending() && a.available_blocks() >= n => {
                    drop(a);
                    let cp = lock(&self.inner.journal).checkpoint(&self.inner.dev)?;
                    let mut a = lock(&self.inner.alloc);
                    a.release(cp);
                    a.alloc(goal, n)
                }
                r => r,
            }?
        };
        self.back(runs)
    }

    /// Reserves host space for newly allocated `runs` of a sparse image (see
    /// [`Device::back`]); gives them back to the allocator when the host is full.
    /// A full host stops all changes, as a kernel file system on a failing device turns
    /// read-only: the operation fails with ENOSPC, later ones with EROFS saying why.
    fn back(&self, runs: Vec<Run>) -> Result<Vec<Run>> {
        let geo = &self.inner.geo;
        if let Err(e) = runs.iter().try_for_each(|r| self.inner.dev.back(geo.block_at(r.start), r.len * geo.block_size))
        {
            self.unreserve(runs);
            if let Error::HostFull(why) = &e {
                self.stop_changes(format!("the host file system holding the image filled up ({why})"));
            }
            return Err(e);
        }
        Ok(runs)
    }

    /// Allocates one run of `n` blocks starting at a multiple of `align` blocks (a device offset
    /// aligned to `align` blocks), checkpointing first if pending frees might make room.
    pub(crate) fn alloc_aligned_blocks(&self, n: u64, align: u64) -> Result<Run> {
        crate::faults::check(crate::faults::Step::Alloc)?;
        let run = {
            let mut a = lock(&self.inner.alloc);
            match a.alloc_aligned(n, align) {
                Some(r) => r,
                None if !a.has_pending() => return Err(Error::NoSpace),
                None => {
                    drop(a);
                    let cp = lock(&self.inner.journal).checkpoint(&self.inner.dev)?;
                    let mut a = lock(&self.inner.alloc);
                    a.release(cp);
                    a.alloc_aligned(n, align).ok_or(Error::NoSpace)?
                }
            }
        };
        Ok(self.back(vec![run])?[0])
    }

    /// Where file block `lblk` of `inode` should go: right after the extent before it, or for
    /// a file with nothing before it, at the start of the inode's allocation group (8 MiB
    /// groups chosen by inode number), so files growing side by side do not interleave.
    pub(crate) fn goal(&self, inode: &Inode, lblk: u64) -> u64 {
        let geo = &self.inner.geo;
        inode.ext.goal_for(lblk).unwrap_or_else(|| {
            let group = (GROUP_BYTES / geo.block_size).min(geo.data_blocks);
            geo.data_start + (inode.ino % (geo.data_blocks / group)) * group
        })
    }

    pub(crate) fn unreserve(&self, runs: Vec<Run>) {
        if !runs.is_empty() {
            lock(&self.inner.alloc).unreserve(runs);
        }
    }

    pub(crate) fn free_after(&self, pos: u64, runs: Vec<Run>) {
        if !runs.is_empty() {
            lock(&self.inner.alloc).free_after(pos, runs);
        }
    }

    /// Device offset of byte `pos` of a directory's data.
    pub(crate) fn dir_off(&self, dir: &Inode, pos: u64) -> Result<u64> {
        let bs = self.inner.geo.block_size;
        match dir.ext.pieces(pos / bs, 1).first() {
            Some(Piece::Mapped(e)) if e.state == State::Written => Ok(self.inner.geo.block_at(e.physical) + pos % bs),
            _ => Err(Error::Corrupt { what: "directory data not mapped", at: self.inner.geo.inode_at(dir.ino) }),
        }
    }

    /// Reserves `slots` extent slots on `inode`, allocating overflow blocks (zeroed and headed
    /// as content of `tx`, which links them). All or nothing.
    /// Returns whether it took blocks.
    pub(crate) fn reserve_slots(&self, inode: &mut Inode, slots: usize, tx: &mut Tx) -> Result<bool> {
        let inner = &self.inner;
        let goal = self.goal(inode, inode.ext.last().map_or(0, |e| e.end()));
        let mut got = Vec::new();
        let reserved = inode.ext.reserve_slots(slots, &inner.dev, &inner.geo, inode.ino, tx, &mut |n| {
            got = self.alloc_blocks(goal, n)?;
            Ok(got.iter().flat_map(|r| r.start..r.start + r.len).collect())
        });
        match reserved {
            Ok(taken) => Ok(!taken.is_empty()),
            Err(e) => {
                self.unreserve(got);
                Err(e)
            }
        }
    }

    /// Adds `name -> child` to `dir`, growing it by a zeroed block when full. Logs the entry and
    /// extent changes; the caller logs the directory's attributes.
    /// A new block it takes goes onto `taken` (see [`Fs::undoable`]).
    pub(crate) fn add_entry(
        &self,
        dir: &mut Inode,
        name: &[u8],
        child: u64,
        dtype: u8,
        tx: &mut Tx,
        taken: &mut Vec<Run>,
    ) -> Result<()> {
        let bs = self.inner.geo.block_size;
        let slot = dir.dir_mut()?.find_slot(name.len());
        if let Slot::Grow(pos) = slot {
            let blk = self.alloc_blocks(self.goal(dir, pos / bs), 1)?[0];
            taken.push(blk);
            self.reserve_slots(dir, ExtentMap::slots_needed(1), tx)?;
            tx.content_zero(&self.inner.dev, self.inner.geo.block_at(blk.start), bs)?;
            let e = crate::extent::Extent { logical: pos / bs, physical: blk.start, len: 1, state: State::Written };
            dir.ext.insert(e, tx)?;
            dir.attr.size += bs;
        }
        let (pos, bytes) = dir.dir_mut()?.insert(name, child, dtype, slot, bs);
        tx.put(self.dir_off(dir, pos)?, &bytes);
        Ok(())
    }

    /// Frees an inode with no links and no open handles: one transaction clears the slot, then
    /// its blocks are freed.
    pub(crate) fn free_inode(&self, inode: &mut Inode) -> Result<()> {
        let mut tx = Tx::new();
        inode.log_free(&self.inner.geo, &mut tx);
        let head = self.commit(&tx)?;
        self.forget_freed(inode, head);
        Ok(())
    }

    // ---- namespace ----

    /// Attributes of inode `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Stat> {
        self.getattr_node(&*self.node(ino)?)
    }

    pub(crate) fn getattr_node(&self, n: &Node) -> Result<Stat> {
        let g = rd(&n.inode);
        g.live()?;
        Ok(self.stat_of(&g))
    }

    /// Looks `name` up in directory `parent` ("." and ".." included).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Stat> {
        let ino = self.lookup_ino(parent, name)?;
        self.getattr(ino)
    }

    pub(crate) fn lookup_ino(&self, parent: u64, name: &[u8]) -> Result<u64> {
        let name = &*unmapped(name);
        let p = self.node(parent)?;
        let g = rd(&p.inode);
        let dir = g.dir()?;
        match name {
            b"." => Ok(parent),
            b".." => Ok(g.attr.parent),
            _ => {
                if name.len() > layout::NAME_MAX {
                    return Err(Error::NameTooLong);
                }
                dir.get(name).map(|e| e.ino).ok_or(Error::NotFound)
            }
        }
    }

    /// Creates a regular file.
    pub fn create(&self, parent: u64, name: &[u8], perm: u32, who: Creds) -> Result<Stat> {
        self.make_node(parent, name, mode::S_IFREG | (perm & 0o7777), 0, who, None)
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: u64, name: &[u8], perm: u32, who: Creds) -> Result<Stat> {
        self.make_node(parent, name, mode::S_IFDIR | (perm & 0o7777), 0, who, None)
    }

    /// Creates a special file (FIFO, socket, device) or a regular file: an inode without data.
    pub fn mknod(&self, parent: u64, name: &[u8], mode_bits: u32, rdev: u64, who: Creds) -> Result<Stat> {
        if mode::is_dir(mode_bits) || mode::is_symlink(mode_bits) || !mode::is_valid_type(mode_bits) {
            return Err(Error::InvalidArgument("mknod makes files, FIFOs, sockets and devices"));
        }
        self.make_node(parent, name, mode_bits & (mode::S_IFMT | 0o7777), rdev, who, None)
    }

    /// Creates a symbolic link to `target`.
    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], who: Creds) -> Result<Stat> {
        if target.is_empty() || target.contains(&0) {
            return Err(Error::InvalidArgument("symlink target is empty or holds a NUL"));
        }
        if target.len() > layout::SYMLINK_MAX {
            return Err(Error::NameTooLong);
        }
        self.make_node(parent, name, mode::S_IFLNK | 0o777, 0, who, Some(target))
    }

    fn make_node(
        &self,
        parent: u64,
        name: &[u8],
        mode_bits: u32,
        rdev: u64,
        who: Creds,
        target: Option<&[u8]>,
    ) -> Result<Stat> {
        let _change = self.writable()?;
        let (name, target) = (&*unmapped(name), target.map(unmapped));
        let target = target.as_deref();
        check_name(name)?;
        let geo = self.inner.geo;
        let p = self.node(parent)?;
        let mut pg = wr(&p.inode);
        let dir = pg.dir()?;
        if pg.attr.nlink == 0 {
            return Err(Error::NotFound);
        }
        if dir.get(name).is_some() {
            return Err(Error::Exists);
        }
        let is_dir = mode::is_dir(mode_bits);
        if is_dir && pg.attr.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        crate::faults::check(crate::faults::Step::Alloc)?;
        let (ino, generation) = lock(&self.inner.itable).alloc()?;
        let mut inode = Inode::new(ino, Attr::new(mode_bits, who.uid, who.gid, generation), &geo);
        inode.attr.rdev = rdev;
        // As Linux does: a set-group-ID directory gives what is made in it its group, and new
        // directories the bit; a new executable file keeps the bit only for a member (root
        // counts) of that group.
        if pg.attr.mode & mode::S_ISGID != 0 {
            inode.attr.gid = pg.attr.gid;
            if is_dir {
                inode.attr.mode |= mode::S_ISGID;
            } else if inode.attr.mode & (mode::S_ISGID | 0o010) == mode::S_ISGID | 0o010
                && who.uid != 0
                && who.gid != pg.attr.gid
            {
                inode.attr.mode &= !mode::S_ISGID;
            }
        }
        if is_dir {
            inode.attr.parent = parent;
        }
        // Memory changes with the transaction; a failure puts the parent back from the medium
        // and gives back the inode number and every block taken.
        let mut tx = Tx::new();
        let mut taken = Vec::new();
        let made = (|| {
            let mut runs = Vec::new();
            if let Some(t) = target {
                runs = self.alloc_blocks(self.goal(&inode, 0), (t.len() as u64).div_ceil(geo.block_size))?;
                taken.extend_from_slice(&runs);
            }
            self.add_entry(&mut pg, name, ino, mode::dtype(mode_bits), &mut tx, &mut taken)?;
            inode.attr.size = target.map_or(0, |t| t.len() as u64);
            inode.log_new(&geo, &mut tx);
            if let Some(t) = target {
                let mut at = 0usize;
                for run in &runs {
                    let bytes = (run.len * geo.block_size) as usize;
                    let off = geo.block_at(run.start);
                    let n = bytes.min(t.len() - at);
                    tx.content_write(&self.inner.dev, off, &t[at..at + n])?;
                    tx.content_zero(&self.inner.dev, off + n as u64, (bytes - n) as u64)?;
                    at += n;
                }
                for e in ExtentMap::extents_for(0, &runs, State::Written) {
                    inode.ext.insert(e, &mut tx)?;
                }
            }
            let now = Timespec::now();
            pg.attr.mtime = now;
            pg.attr.ctime = now;
            if is_dir {
                pg.attr.nlink += 1;
            }
            pg.log_attr(&geo, &mut tx);
            self.commit(&tx)
        })();
        if let Err(e) = made {
            self.restore(&mut pg, taken);
            lock(&self.inner.itable).release(ino, generation.wrapping_sub(1));
            return Err(e);
        }
        let st = self.stat_of(&inode);
        wr(&self.inner.nodes).insert(ino, Node::new(inode));
        Ok(st)
    }

    /// Reads a symbolic link's target.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let n = self.node(ino)?;
        let g = rd(&n.inode);
        g.live()?;
        if !mode::is_symlink(g.attr.mode) {
            return Err(Error::InvalidArgument("not a symbolic link"));
        }
        let mut buf = vec![0; g.attr.size as usize];
        self.read_locked(&g, 0, &mut buf)?;
        Ok(buf)
    }

    /// Adds a hard link `newparent/newname` to `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<Stat> {
        let _change = self.writable()?;
        let newname = &*unmapped(newname);
        check_name(newname)?;
        let p = self.node(newparent)?;
        let mut pg = wr(&p.inode);
        let dir = pg.dir()?;
        if pg.attr.nlink == 0 {
            return Err(Error::NotFound);
        }
        if dir.get(newname).is_some() {
            return Err(Error::Exists);
        }
        let c = self.node(ino)?;
        // Checked before locking the child: a directory could be an ancestor of `newparent`,
        // and locking it after its descendant would invert the lock order.
        if c.is_dir {
            return Err(Error::NotPermitted("hard links to directories are not allowed"));
        }
        let mut cg = wr(&c.inode);
        if cg.attr.nlink == 0 {
            return Err(Error::NotFound);
        }
        if cg.attr.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        let nlink = cg.attr.nlink + 1;
        self.link_locked(&mut pg, newname, &mut cg, nlink)?;
        Ok(self.stat_of(&cg))
    }

    /// Names the locked non-directory `cg` as `name` in the locked directory `dg`, giving it
    /// `nlink` links, in one transaction; a failure puts both back.
    pub(crate) fn link_locked(&self, dg: &mut Inode, name: &[u8], cg: &mut Inode, nlink: u32) -> Result<()> {
        let geo = self.inner.geo;
        let mut tx = Tx::new();
        let mut taken = Vec::new();
        let linked = (|| {
            self.add_entry(dg, name, cg.ino, mode::dtype(cg.attr.mode), &mut tx, &mut taken)?;
            let now = Timespec::now();
            dg.attr.mtime = now;
            dg.attr.ctime = now;
            dg.log_attr(&geo, &mut tx);
            cg.attr.nlink = nlink;
            cg.attr.ctime = now;
            cg.log_attr(&geo, &mut tx);
            self.commit(&tx)
        })();
        if let Err(e) = linked {
            self.restore(dg, taken);
            self.restore(cg, Vec::new());
            return Err(e);
        }
        Ok(())
    }

    /// Removes a non-directory entry.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.remove_entry(parent, name, false)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(Error::InvalidArgument("cannot remove '.'"));
        }
        if name == b".." {
            return Err(Error::NotEmpty);
        }
        self.remove_entry(parent, name, true)
    }

    fn remove_entry(&self, parent: u64, name: &[u8], want_dir: bool) -> Result<()> {
        let _change = self.writable()?;
        let name = &*unmapped(name);
        if name.len() > layout::NAME_MAX {
            return Err(Error::NameTooLong);
        }
        let geo = self.inner.geo;
        let p = self.node(parent)?;
        let mut pg = wr(&p.inode);
        let e = *pg.dir()?.get(name).ok_or(Error::NotFound)?;
        if e.ino == parent {
            return Err(Error::Corrupt { what: "directory entry names its own directory", at: geo.inode_at(parent) });
        }
        let Ok(c) = self.node(e.ino) else {
            return self.remove_dangling(&mut pg, name, want_dir);
        };
        let mut cg = wr(&c.inode);
        match (want_dir, cg.is_dir()) {
            (true, false) => return Err(Error::NotDir),
            (false, true) => return Err(Error::IsDir),
            (true, true) if !cg.dir()?.is_empty() => return Err(Error::NotEmpty),
            _ => {}
        }
        let mut tx = Tx::new();
        let free_now = (want_dir || cg.attr.nlink <= 1) && cg.open == 0;
        let removed = (|| {
            let (_, zeros) = pg.dir_mut()?.remove(name).expect("entry looked up under the same lock");
            tx.put(self.dir_off(&pg, e.pos)?, &zeros);
            let now = Timespec::now();
            pg.attr.mtime = now;
            pg.attr.ctime = now;
            if want_dir {
                pg.attr.nlink = pg.attr.nlink.saturating_sub(1);
            }
            pg.log_attr(&geo, &mut tx);
            cg.attr.nlink = if want_dir { 0 } else { cg.attr.nlink.saturating_sub(1) };
            cg.attr.ctime = now;
            if free_now {
                cg.log_free(&geo, &mut tx);
            } else {
                cg.log_attr(&geo, &mut tx);
            }
            self.commit(&tx)
        })();
        let head = match removed {
            Ok(head) => head,
            Err(e) => {
                self.restore(&mut pg, Vec::new());
                self.restore(&mut cg, Vec::new());
                return Err(e);
            }
        };
        if free_now {
            self.forget_freed(&mut cg, head);
        }
        Ok(())
    }

    /// Removes an entry that names a free inode (damage mount keeps and fsck reports): removing
    /// the name is the repair. Its type says whether it is unlink's or rmdir's to remove.
    pub(crate) fn remove_dangling(&self, pg: &mut Inode, name: &[u8], want_dir: bool) -> Result<()> {
        let is_dir = pg.dir()?.get(name).ok_or(Error::NotFound)?.dtype == crate::dir::DT_DIR;
        match (want_dir, is_dir) {
            (true, false) => return Err(Error::NotDir),
            (false, true) => return Err(Error::IsDir),
            _ => {}
        }
        self.undoable(pg, |pg, _| {
            let mut tx = Tx::new();
            let (e, zeros) = pg.dir_mut()?.remove(name).expect("entry looked up under the same lock");
            tx.put(self.dir_off(pg, e.pos)?, &zeros);
            let now = Timespec::now();
            pg.attr.mtime = now;
            pg.attr.ctime = now;
            if is_dir {
                pg.attr.nlink = pg.attr.nlink.saturating_sub(1);
            }
            pg.log_attr(&self.inner.geo, &mut tx);
            self.commit(&tx)?;
            Ok(())
        })
    }

    /// Drops a freed inode from memory after the transaction that cleared its slot (at `head`).
    fn forget_freed(&self, inode: &mut Inode, head: u64) {
        let runs: Vec<Run> = inode.owned_runs().collect();
        self.free_after(head, runs);
        inode.freed = true;
        inode.ext = ExtentMap::empty(self.inner.geo.inode_at(inode.ino));
        inode.xattr = Default::default();
        wr(&self.inner.nodes).remove(&inode.ino);
        lock(&self.inner.itable).release(inode.ino, inode.attr.generation);
    }

    /// Renames `parent/name` to `newparent/newname` atomically, replacing a target unless
    /// `mode` says otherwise.
    pub fn rename(&self, parent: u64, name: &[u8], newparent: u64, newname: &[u8], how: RenameMode) -> Result<()> {
        let _change = self.writable()?;
        let (name, newname) = (&*unmapped(name), &*unmapped(newname));
        check_name(newname)?;
        if name.len() > layout::NAME_MAX {
            return Err(Error::NameTooLong);
        }
        check_name(name)?;
        let geo = self.inner.geo;
        let cross = parent != newparent;
        let sp = self.node(parent)?;
        let dp = self.node(newparent)?;
        if !sp.is_dir || !dp.is_dir {
            return Err(Error::NotDir);
        }
        // Any rename that holds two directories besides one parent takes the rename lock: a
        // cross-directory one (two parents), and one that moves or replaces a directory (a
        // directory child). Peek at the entries first, one lock at a time; if they change
        // before the real locking, that is noticed below and the rename starts over.
        let is_dir_entry = |n: &Node, nm: &[u8]| {
            rd(&n.inode).dir().ok().and_then(|d| d.get(nm)).is_some_and(|e| e.dtype == crate::dir::DT_DIR)
        };
        let exclusive = cross || is_dir_entry(&sp, name) || is_dir_entry(&dp, newname);
        let _rename_guard = exclusive.then(|| lock(&self.inner.rename));
        // Parents: an ancestor before its descendant, else in ascending inode order (the
        // rename lock keeps the tree's shape still while this is decided).
        let source_first = cross
            && (self.is_ancestor(parent, newparent)? || (!self.is_ancestor(newparent, parent)? && parent < newparent));
        let (mut sg, mut dg_own) = if !cross {
            (wr(&sp.inode), None)
        } else if source_first {
            let s = wr(&sp.inode);
            (s, Some(wr(&dp.inode)))
        } else {
            let d = wr(&dp.inode);
            (wr(&sp.inode), Some(d))
        };
        let src = *sg.dir()?.get(name).ok_or(Error::NotFound)?;
        let dst = match &dg_own {
            Some(d) => d.dir()?.get(newname).copied(),
            None => {
                if name == newname {
                    return Ok(());
                }
                sg.dir()?.get(newname).copied()
            }
        };
        if dg_own.as_ref().is_some_and(|d| d.attr.nlink == 0) {
            return Err(Error::NotFound);
        }
        let src_is_dir = src.dtype == crate::dir::DT_DIR;
        if !exclusive && (src_is_dir || dst.is_some_and(|d| d.dtype == crate::dir::DT_DIR)) {
            drop((sg, dg_own));
            return self.rename(parent, name, newparent, newname, how);
        }
        if src.ino == parent || dst.is_some_and(|d| d.ino == newparent) {
            return Err(Error::Corrupt { what: "directory entry names its own directory", at: geo.inode_at(parent) });
        }
        if cross && src_is_dir && self.is_ancestor(src.ino, newparent)? {
            return Err(Error::InvalidArgument("cannot move a directory into itself"));
        }
        if let Some(d) = dst {
            if how == RenameMode::NoReplace {
                return Err(Error::Exists);
            }
            if d.ino == src.ino {
                return Ok(());
            }
            // A target that is an ancestor of the source is never empty.
            if cross && d.dtype == crate::dir::DT_DIR && self.is_ancestor(d.ino, parent)? {
                return Err(match how {
                    RenameMode::Exchange => Error::InvalidArgument("cannot move a directory into itself"),
                    _ => Error::NotEmpty,
                });
            }
        } else if how == RenameMode::Exchange {
            return Err(Error::NotFound);
        }
        // Children: directories before non-directories (a file hard-linked into a directory
        // that is another operation's parent must come after it), then ascending number.
        let sc = self.node(src.ino)?;
        let dc = dst.map(|d| self.node(d.ino)).transpose()?;
        let (mut scg, mut dcg) = match &dc {
            None => (wr(&sc.inode), None),
            Some(dcn) if (!sc.is_dir, src.ino) < (!dcn.is_dir, dst.map_or(0, |d| d.ino)) => {
                let a = wr(&sc.inode);
                (a, Some(wr(&dcn.inode)))
            }
            Some(dcn) => {
                let b = wr(&dcn.inode);
                (wr(&sc.inode), Some(b))
            }
        };
        if how == RenameMode::Replace {
            if let Some(v) = dcg.as_ref() {
                match (src_is_dir, v.is_dir()) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) if !v.dir()?.is_empty() => return Err(Error::NotEmpty),
                    _ => {}
                }
            }
        }
        if how != RenameMode::Exchange && dst.is_none() && cross && src_is_dir {
            let d = dg_own.as_ref().expect("cross rename holds the destination");
            if d.attr.nlink >= LINK_MAX {
                return Err(Error::TooManyLinks);
            }
        }

        let now = Timespec::now();
        let mut tx = Tx::new();
        let mut taken = Vec::new();
        let src_dtype = src.dtype;
        // Memory changes with the transaction; a failure puts all four inodes back.
        let renamed = (|| {
            match how {
                RenameMode::Exchange => {
                    let d = dst.expect("checked above");
                    let dcg = dcg.as_mut().expect("exchange holds both");
                    // Point each name at the other inode.
                    let (e1, h1) = sg.dir_mut()?.retarget(name, d.ino, d.dtype).expect("present");
                    tx.put(self.dir_off(&sg, e1.pos)?, &h1);
                    let dg = dg_own.as_deref_mut().unwrap_or(&mut sg);
                    let (e2, h2) = dg.dir_mut()?.retarget(newname, src.ino, src_dtype).expect("present");
                    tx.put(self.dir_off(dg, e2.pos)?, &h2);
                    if cross {
                        let dg = dg_own.as_deref_mut().expect("cross");
                        let s_dir = scg.is_dir();
                        let d_dir = dcg.is_dir();
                        if s_dir {
                            scg.attr.parent = newparent;
                        }
                        if d_dir {
                            dcg.attr.parent = parent;
                        }
                        match (s_dir, d_dir) {
                            (true, false) => {
                                sg.attr.nlink = sg.attr.nlink.saturating_sub(1);
                                dg.attr.nlink = dg.attr.nlink.saturating_add(1);
                            }
                            (false, true) => {
                                sg.attr.nlink = sg.attr.nlink.saturating_add(1);
                                dg.attr.nlink = dg.attr.nlink.saturating_sub(1);
                            }
                            _ => {}
                        }
                    }
                    dcg.attr.ctime = now;
                    dcg.log_attr(&geo, &mut tx);
                }
                RenameMode::Replace | RenameMode::NoReplace => {
                    // The new name first: adding may fail (ENOSPC) and must leave nothing changed.
                    {
                        let dg = dg_own.as_deref_mut().unwrap_or(&mut sg);
                        match dst {
                            Some(_) => {
                                let (e, h) = dg.dir_mut()?.retarget(newname, src.ino, src_dtype).expect("present");
                                tx.put(self.dir_off(dg, e.pos)?, &h);
                            }
                            None => {
                                self.add_entry(dg, newname, src.ino, src_dtype, &mut tx, &mut taken)?;
                            }
                        }
                    }
                    let (removed, zeros) = sg.dir_mut()?.remove(name).expect("present");
                    tx.put(self.dir_off(&sg, removed.pos)?, &zeros);
                    let dg = dg_own.as_deref_mut().unwrap_or(&mut sg);
                    if let Some(v) = dcg.as_mut() {
                        if v.is_dir() {
                            v.attr.nlink = 0;
                            dg.attr.nlink = dg.attr.nlink.saturating_sub(1);
                        } else {
                            v.attr.nlink = v.attr.nlink.saturating_sub(1);
                        }
                        v.attr.ctime = now;
                        if v.attr.nlink == 0 && v.open == 0 {
                            v.log_free(&geo, &mut tx);
                        } else {
                            v.log_attr(&geo, &mut tx);
                        }
                    }
                    if src_is_dir && cross {
                        scg.attr.parent = newparent;
                        sg.attr.nlink = sg.attr.nlink.saturating_sub(1);
                        let d = dg_own.as_deref_mut().expect("cross");
                        d.attr.nlink = d.attr.nlink.saturating_add(1);
                    }
                }
            }
            scg.attr.ctime = now;
            scg.log_attr(&geo, &mut tx);
            sg.attr.mtime = now;
            sg.attr.ctime = now;
            sg.log_attr(&geo, &mut tx);
            if let Some(d) = dg_own.as_deref_mut() {
                d.attr.mtime = now;
                d.attr.ctime = now;
                d.log_attr(&geo, &mut tx);
            }
            self.commit(&tx)
        })();
        let head = match renamed {
            Ok(head) => head,
            Err(e) => {
                self.restore(&mut sg, taken);
                for g in [dg_own.as_deref_mut(), Some(&mut *scg), dcg.as_deref_mut()].into_iter().flatten() {
                    self.restore(g, Vec::new());
                }
                return Err(e);
            }
        };
        sc.parent.store(scg.attr.parent, Ordering::Release);
        if let (Some(v), Some(dcn)) = (dcg.as_mut(), dc.as_ref()) {
            dcn.parent.store(v.attr.parent, Ordering::Release);
            if how != RenameMode::Exchange && v.attr.nlink == 0 && v.open == 0 {
                self.forget_freed(v, head);
            }
        }
        Ok(())
    }

    /// Whether directory `a` is `b` or one of its ancestors (walks `b`'s parent pointers; the
    /// caller holds the rename lock, so they do not move).
    fn is_ancestor(&self, a: u64, b: u64) -> Result<bool> {
        let mut at = b;
        for _ in 0..=self.inner.geo.inode_count {
            if at == a {
                return Ok(true);
            }
            if at == ROOT_INO {
                return Ok(false);
            }
            at = self.node(at)?.parent.load(Ordering::Acquire);
        }
        Err(Error::Corrupt { what: "directory parent loop", at: self.inner.geo.inode_at(b) })
    }

    /// Entries of directory `ino` after `cookie` (0 from the start), without "." and "..".
    pub fn readdir(&self, ino: u64, cookie: u64) -> Result<Vec<DirEntry>> {
        let n = self.node(ino)?;
        let g = rd(&n.inode);
        let dir = g.dir()?;
        let after = cookie.checked_sub(1);
        Ok(dir
            .entries_after(after)
            .map(|(name, e)| DirEntry { name: name.to_vec(), ino: e.ino, dtype: e.dtype, cookie: e.pos + 1 })
            .collect())
    }

    /// Changes attributes; `size` truncates or extends (SPEC §4). Returns the new attributes.
    pub fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Stat> {
        let _change = self.writable()?;
        let geo = self.inner.geo;
        let n = self.node(ino)?;
        let _io = set.size.map(|_| wr(&n.io));
        let mut g = wr(&n.inode);
        g.live()?;
        if let Some(size) = set.size {
            // The size and every other change commit together.
            self.undoable(&mut g, |g, _| self.truncate_locked(&n, g, size, &|g| apply_attrs(g, set)))?;
            return Ok(self.stat_of(&g));
        }
        let drops = set.drop_set_id.is_some() && killed_set_id(g.attr.mode, true) != 0;
        if set.mode.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.atime.is_none()
            && set.mtime.is_none()
            && !drops
        {
            return Ok(self.stat_of(&g));
        }
        self.undoable(&mut g, |g, _| {
            apply_attrs(g, set);
            let mut tx = Tx::new();
            g.log_attr(&geo, &mut tx);
            self.commit(&tx)
        })?;
        Ok(self.stat_of(&g))
    }

    /// Marks `ino` open (an unlinked inode lives until its last close).
    pub fn open_ino(&self, ino: u64) -> Result<Stat> {
        self.open_node(&*self.node(ino)?)
    }

    pub(crate) fn open_node(&self, n: &Node) -> Result<Stat> {
        let mut g = wr(&n.inode);
        g.live()?;
        g.open += 1;
        Ok(self.stat_of(&g))
    }

    /// Closes one open of `ino`, freeing it if it was the last and the inode has no links.
    pub fn release(&self, ino: u64) -> Result<()> {
        self.release_node(&*self.node(ino)?)
    }

    pub(crate) fn release_node(&self, n: &Node) -> Result<()> {
        let mut g = wr(&n.inode);
        if g.freed {
            return Ok(());
        }
        g.open = g.open.saturating_sub(1);
        if g.open == 0 && g.attr.nlink == 0 {
            // A file system that stopped taking changes leaves it to the next mount (an orphan).
            if let Ok(_change) = self.writable() {
                self.free_inode(&mut g)?;
            }
        }
        Ok(())
    }

    /// Every in-use inode number (for fsck and tests).
    pub fn inode_numbers(&self) -> Vec<u64> {
        let mut v: Vec<u64> = rd(&self.inner.nodes).keys().copied().collect();
        v.sort_unstable();
        v
    }
}

/// Applies the changes of `set` other than the size to `g`, and sets ctime.
fn apply_attrs(g: &mut Inode, set: &SetAttr) {
    let now = Timespec::now();
    if let Some(m) = set.mode {
        g.attr.mode = (g.attr.mode & mode::S_IFMT) | (m & 0o7777);
    } else if let Some(by) = set.drop_set_id {
        let chown = set.uid.is_some() || set.gid.is_some();
        let outsider = chown && by.uid != 0 && by.gid != g.attr.gid;
        g.attr.mode &= !killed_set_id(g.attr.mode, outsider);
    }
    if let Some(u) = set.uid {
        g.attr.uid = u;
    }
    if let Some(gid) = set.gid {
        g.attr.gid = gid;
    }
    let pick = |t: SetTime| match t {
        SetTime::Now => now,
        SetTime::At(t) => t,
    };
    if let Some(t) = set.atime {
        g.attr.atime = pick(t);
    }
    if let Some(t) = set.mtime {
        g.attr.mtime = pick(t);
    }
    g.attr.ctime = now;
}

/// Refuses directory trees the locking and recursion rely on being trees: the root is its own
/// parent, every other directory is named by exactly one entry, in the directory its parent field
/// names, and is reachable from the root (orphans aside), and every entry's type matches its
/// inode. Other damage (link counts, entries naming free inodes) mounts and is reported by fsck.
fn check_tree(nodes: &HashMap<u64, Arc<Node>>, geo: &Geometry) -> Result<()> {
    if nodes.get(&ROOT_INO).is_some_and(|root| root.parent.load(Ordering::Relaxed) != ROOT_INO) {
        return Err(Error::Corrupt {
            what: "root directory parent",
            at: geo.inode_at(ROOT_INO) + off!(layout::RawInode, parent),
        });
    }
    let mut named_by: HashMap<u64, u64> = HashMap::new();
    for (&holder, node) in nodes {
        let g = rd(&node.inode);
        let Some(dir) = &g.dir else { continue };
        for (_, e) in dir.entries_after(None) {
            let Some(target) = nodes.get(&e.ino) else { continue };
            let at = geo.inode_at(holder);
            if (e.dtype == crate::dir::DT_DIR) != target.is_dir || e.ino == holder {
                return Err(Error::Corrupt { what: "directory entry type", at });
            }
            if target.is_dir {
                if target.parent.load(Ordering::Relaxed) != holder {
                    return Err(Error::Corrupt { what: "directory parent", at: geo.inode_at(e.ino) });
                }
                if named_by.insert(e.ino, holder).is_some() || e.ino == ROOT_INO {
                    return Err(Error::Corrupt { what: "directory named twice", at: geo.inode_at(e.ino) });
                }
            }
        }
    }
    // Every directory but the root is named once, by its parent; walking parents from each must
    // reach the root (a cycle never does). An unnamed one with no links is an orphan (removed
    // while open), which mount frees. Each walk stops at the first directory already known to
    // reach the root and marks the ones it passed, so the check is linear in the directories,
    // whatever the depth.
    let mut reached: std::collections::HashSet<u64> = std::collections::HashSet::from([ROOT_INO]);
    for (&ino, n) in nodes.iter().filter(|(_, n)| n.is_dir) {
        if ino != ROOT_INO && !named_by.contains_key(&ino) && rd(&n.inode).attr.nlink == 0 {
            continue;
        }
        let mut path = Vec::new();
        let mut at = Some(ino);
        while let Some(i) = at.filter(|i| !reached.contains(i)) {
            if path.len() > named_by.len() {
                at = None; // a cycle
                break;
            }
            path.push(i);
            at = named_by.get(&i).copied();
        }
        if at.is_none() {
            return Err(Error::Corrupt { what: "unreachable directory", at: geo.inode_at(ino) });
        }
        reached.extend(path);
    }
    Ok(())
}

/// How many directory entries name each inode number.
pub(crate) fn count_entries(nodes: &HashMap<u64, Arc<Node>>) -> HashMap<u64, u64> {
    let mut refs = HashMap::new();
    for node in nodes.values() {
        let g = rd(&node.inode);
        for (_, e) in g.dir.iter().flat_map(|d| d.entries_after(None)) {
            *refs.entry(e.ino).or_insert(0) += 1;
        }
    }
    refs
}

/// Indexes a directory's entries from its blocks.
pub(crate) fn load_dir(dev: &Device, geo: &Geometry, inode: &Inode) -> Result<DirIndex> {
    let bs = geo.block_size;
    let at = geo.inode_at(inode.ino);
    let size = inode.attr.size;
    if size % bs != 0 {
        return Err(Error::Corrupt { what: "directory size", at: at + off!(layout::RawInode, size) });
    }
    let mut data = vec![0u8; size as usize];
    for p in inode.ext.pieces(0, size / bs) {
        match p {
            Piece::Mapped(e) if e.state == State::Written => {
                let start = (e.logical * bs) as usize;
                dev.read(geo.block_at(e.physical), &mut data[start..start + (e.len * bs) as usize])?;
            }
            _ => return Err(Error::Corrupt { what: "directory data not mapped", at: at + layout::INODE_EXTENTS_OFF }),
        }
    }
    if inode.ext.iter().any(|e| e.end() * bs > size) {
        return Err(Error::Corrupt { what: "directory extent past its size", at: at + layout::INODE_EXTENTS_OFF });
    }
    let blocks = data.chunks(bs as usize).enumerate().map(|(i, b)| (i as u64 * bs, b));
    DirIndex::load(blocks, size, geo.inode_count, |pos| at + pos)
}

fn uuid_from(t: Timespec) -> [u8; 16] {
    let mut u = [0u8; 16];
    let a = crc32c::crc32c(&t.sec.to_le_bytes()) as u64;
    let b = u64::from(std::process::id()) ^ u64::from(t.nsec) << 32;
    u[..8].copy_from_slice(&(a << 32 | u64::from(t.nsec)).to_le_bytes());
    u[8..].copy_from_slice(&b.to_le_bytes());
    u
}
