//! A mounted file system's shared state (`Fs`, `Inner`) and what every operation does with it:
//! the change guard and undo, commits, block and inode allocation.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::alloc::{Allocator, Run, Runs};
use crate::device::Device;
use crate::dir::Slot;
use crate::error::{Error, Result};
use crate::extent::{ExtentMap, Piece, State};
use crate::inode::{Inode, InodeTable};
use crate::journal::{Journal, RecoveryReport, Tx};
use crate::layout::{self, Geometry};
use crate::sync::{lock, rd, AtomicBool, Mutex, RwLock};

use super::node::{Damage, Node, NodeTable, ServiceSlot};
use super::types::{Creds, FsInfo, Stat, StatFs};

/// Worst-case journal bytes per block a data transaction touches: a conversion rewrites two
/// extent slots and fills a third (3 × 40-byte entries), plus a share of overflow-block links.
pub(super) const TX_BYTES_PER_BLOCK: u64 = 160;

/// Room for the record header, the inode's attributes and a directory's worth of entries.
pub(super) const TX_FIXED_BYTES: u64 = 2048;

/// Size of the allocation groups that spread new files over the device.
pub(super) const GROUP_BYTES: u64 = 8 << 20;

/// A mounted udax image. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Fs {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) dev: Device,
    pub(crate) geo: Geometry,
    pub(super) journal: Mutex<Journal>,
    pub(super) alloc: Mutex<Allocator>,
    pub(super) itable: Mutex<InodeTable>,
    pub(crate) nodes: NodeTable,
    /// Files in use that have no node yet (see `fs::load`): taken before the node table's
    /// shards, by a lookup that missed.
    pub(crate) unloaded: Mutex<crate::inode::InodeSet>,
    /// The root directory's node (never freed: it has no name to unlink).
    pub(crate) root: Arc<Node>,
    /// Inode slots that did not decode at mount, until repair clears them (a leaf lock).
    pub(crate) damaged: RwLock<BTreeMap<u64, Damage>>,
    pub(crate) rename: Mutex<()>,
    pub(super) recovery: RecoveryReport,
    /// How long the mount took, step by step (set once, at the end of the mount).
    pub(super) mount_report: std::sync::OnceLock<super::types::MountReport>,
    pub(super) uuid: [u8; 16],
    pub(super) label: String,
    pub(super) mkfs_time: i64,
    /// Opened read-only ([`Fs::open_image_read_only`]): every change is EROFS.
    pub(super) read_only: bool,
    /// Why every change is refused until the image is mounted again: memory may no longer match
    /// the medium (a panic during a change, a failed change that could not be put back), or the
    /// host file system holding a sparse image is full.
    pub(super) broken: Mutex<Option<String>>,
    /// Set once `broken` holds a reason: the one load every change makes.
    pub(super) stopped: AtomicBool,
    pub(crate) mmap: ServiceSlot,
    /// The map generations published to direct clients, once a server publishes them.
    pub(crate) direct: std::sync::OnceLock<crate::direct::Publication>,
    /// Who owns what the path calls create: the process's effective ids at mount (taken once,
    /// not asked of the kernel on every call; the `_as` calls name someone else).
    pub(crate) owner: Creds,
}

/// What [`Error::Stopped`] says after an internal error.
pub(super) const FSCK_AFTER: &str = "{}: unmount it and run `udax fsck` on the image";

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

impl Fs {
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
    pub(super) fn stop_changes(&self, why: String) {
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
        change: impl FnOnce(&mut Inode, &mut Runs) -> Result<R>,
    ) -> Result<R> {
        let mut taken = Runs::new();
        let r = change(g, &mut taken);
        if r.is_err() {
            self.restore(g, taken);
        }
        r
    }

    pub(crate) fn restore(&self, g: &mut Inode, taken: impl IntoIterator<Item = Run>) {
        if crate::faults::keeps_memory() {
            return;
        }
        let geo = &self.inner.geo;
        let fresh = Inode::load_full(&self.inner.dev, geo, g.ino)
            .and_then(|i| i.ok_or(Error::Corrupt { what: "inode freed under a live node", at: geo.inode_at(g.ino) }));
        let Ok(mut fresh) = fresh else {
            self.stop_changes(FSCK_AFTER.replace("{}", "a failed change could not be undone"));
            return;
        };
        let ahead = crate::alloc::subtract(g.owned_runs().chain(taken).collect(), fresh.owned_runs().collect());
        self.unreserve(ahead);
        (fresh.open, fresh.freed, fresh.writing) = (g.open, g.freed, g.writing);
        // The change may have stored bytes past EOF (a growing write's, before its commit).
        fresh.tail_clean = false;
        *g = fresh;
    }

    /// Makes the image durable across power loss where the medium needs it (msync).
    pub fn sync(&self) -> Result<()> {
        self.inner.dev.fence();
        self.inner.dev.sync()
    }

    /// Plants a bug for the crash explorer (see [`crate::Device::sabotage`]). Never use it on
    /// data you keep.
    #[cfg(feature = "crash-test")]
    pub fn sabotage(&self, which: crate::sabotage::Sabotage) {
        self.inner.dev.sabotage(which);
    }

    /// Journal ring bytes left before a commit moves the checkpoint (for the crash explorer).
    #[cfg(feature = "crash-test")]
    pub fn journal_room(&self) -> u64 {
        lock(&self.inner.journal).room()
    }

    /// Whether bug `which` is planted (never, without `crash-test`).
    #[inline(always)]
    pub(crate) fn planted(&self, which: crate::sabotage::Sabotage) -> bool {
        self.inner.dev.planted(which)
    }

    /// The device the file system lives on.
    pub fn device(&self) -> &Device {
        &self.inner.dev
    }

    /// Where the image's structures lie (from the superblock).
    pub fn geometry(&self) -> &Geometry {
        &self.inner.geo
    }

    /// What journal recovery replayed when the image was mounted.
    pub fn recovery(&self) -> RecoveryReport {
        self.inner.recovery
    }

    /// statfs(2): block and inode counts, free ones included.
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

    /// Facts about the mounted image and its device, for `udax info`.
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
            mount: self.mount_report(),
            durability,
        }
    }

    // ---- internal helpers ----

    /// The inode numbered `ino`: `NotFound` for a free slot, `Corrupt` for a damaged one.
    pub(crate) fn node(&self, ino: u64) -> Result<Arc<Node>> {
        match self.inner.nodes.get(ino) {
            Some(node) => Ok(node),
            None => self.load_node(ino),
        }
    }

    /// The inode slots mount could not decode and repair has not cleared: number, what is wrong,
    /// and where.
    pub fn damaged_inodes(&self) -> Vec<(u64, &'static str, u64)> {
        rd(&self.inner.damaged).iter().map(|(&i, d)| (i, d.what, d.at)).collect()
    }

    /// The blocks kept out of use for damaged inodes.
    pub(crate) fn held_blocks(&self) -> Vec<Run> {
        lock(&self.inner.alloc).held().to_vec()
    }

    /// Stops holding blocks for damaged inodes once repair has cleared them all (the last
    /// clearing committed at `pos`); those not in `owned` are freed.
    pub(crate) fn release_held(&self, pos: u64, owned: Vec<Run>) {
        lock(&self.inner.alloc).release_held(pos, owned);
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
        // Before the record: a direct client that copied across this change sees it moved.
        if let Some(p) = self.inner.direct.get() {
            tx.inodes().iter().for_each(|&ino| p.table.bump(ino));
        }
        tx.fence_content(&self.inner.dev);
        let mut j = lock(&self.inner.journal);
        let done = j.commit_fenced(&self.inner.dev, tx)?;
        let head = j.head();
        drop(j);
        // The release is a locked instruction on x86: it orders this thread's earlier
        // write-backs as a fence does (the explorer's interleaved threads change turns here).
        #[cfg(feature = "crash-test")]
        self.inner.dev.ordered();
        if let Some(cp) = done.checkpoint {
            if let Some(p) = self.inner.direct.get() {
                p.drain(&self.inner.alloc);
            }
            lock(&self.inner.alloc).release(cp);
        }
        Ok(head)
    }

    /// Most blocks one data transaction may touch: every block can cost a few extent-slot entries
    /// (a split, a conversion) and the record must fit in half the journal.
    pub(crate) fn max_tx_blocks(&self) -> u64 {
        // The journal takes records of up to half its ring.
        let record = self.inner.geo.journal_len / 2;
        (record.saturating_sub(TX_FIXED_BYTES) / TX_BYTES_PER_BLOCK).max(16)
    }

    /// Allocates `n` blocks (all or nothing), checkpointing first if only freed-but-pending
    /// blocks would satisfy it.
    pub(crate) fn alloc_blocks(&self, goal: u64, n: u64) -> Result<Runs> {
        crate::faults::check(crate::faults::Step::Alloc)?;
        let runs = {
            let mut a = lock(&self.inner.alloc);
            if let Some(p) = self.inner.direct.get().filter(|_| a.available_blocks() < n) {
                // Blocks held from direct writers may make up the difference: wait for them.
                drop(a);
                p.wait_for_writers(&self.inner.alloc);
                a = lock(&self.inner.alloc);
            }
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
    pub(super) fn back(&self, runs: Runs) -> Result<Runs> {
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
                None if !a.has_pending() && self.inner.direct.get().is_none() => return Err(Error::NoSpace),
                None => {
                    drop(a);
                    self.wait_for_direct_writers();
                    let cp = lock(&self.inner.journal).checkpoint(&self.inner.dev)?;
                    let mut a = lock(&self.inner.alloc);
                    a.release(cp);
                    a.alloc_aligned(n, align).ok_or(Error::NoSpace)?
                }
            }
        };
        Ok(self.back(Runs::from_elem(run, 1))?[0])
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

    pub(crate) fn unreserve(&self, runs: impl IntoIterator<Item = Run>) {
        let mut runs = runs.into_iter().peekable();
        if runs.peek().is_some() {
            lock(&self.inner.alloc).unreserve(runs);
        }
    }

    /// Frees `runs`, which the commit at journal position `pos` unlinked from file `ino`.
    pub(crate) fn free_after(&self, ino: u64, pos: u64, runs: Vec<Run>) {
        if self.planted(crate::sabotage::Sabotage::EarlyReuse) {
            lock(&self.inner.alloc).unreserve(runs);
        } else if !runs.is_empty() {
            match self.inner.direct.get() {
                Some(p) => p.quarantine(ino, pos, runs, &self.inner.alloc),
                None => lock(&self.inner.alloc).free_after(pos, runs),
            }
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
        let mut got = Runs::new();
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

    /// Waits for direct writes that began before now (see [`crate::direct::Publication`]).
    pub(crate) fn wait_for_direct_writers(&self) {
        if let Some(p) = self.inner.direct.get() {
            p.wait_for_writers(&self.inner.alloc);
        }
    }
}
