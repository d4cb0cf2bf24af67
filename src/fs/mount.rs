//! mkfs, mount (journal replay, then `fs::load`'s passes over inodes and directories, free
//! space, orphans) and unmount, and the report of how long each step of a mount took.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::alloc::Allocator;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::inode::{Attr, Inode, Timespec};
use crate::journal::{Journal, Tx};
use crate::layout::{self, mode, Geometry, ROOT_INO};
use crate::sync::{lock, rd, wr, AtomicBool, Mutex, RwLock};

use super::node::{NodeMap, NodeTable};
use super::state::{Fs, Inner};
use super::types::{Creds, MkfsOptions, MountReport};

impl Fs {
    /// Formats `dev` and mounts it. A device that already holds a udax file system is refused
    /// with [`Error::Exists`] unless [`MkfsOptions::overwrite`] says to format it anyway.
    pub fn mkfs(dev: Device, opts: &MkfsOptions) -> Result<Fs> {
        Self::mkfs_with_progress(dev, opts, &mut |_, _| {})
    }

    /// As [`Fs::mkfs`], reporting `(bytes done, bytes total)` while the inode table is cleared.
    pub fn mkfs_with_progress(dev: Device, opts: &MkfsOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<Fs> {
        let geo = Geometry::plan(dev.len(), opts.block_size, opts.inodes, opts.journal_bytes)?;
        if !opts.overwrite && dev.len() >= 8 {
            let mut magic = [0u8; 8];
            dev.read(0, &mut magic)?;
            if magic == layout::MAGIC {
                return Err(Error::Exists);
            }
        }
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
    pub fn open_image(path: impl AsRef<std::path::Path>) -> Result<Fs> {
        Fs::mount(Device::open(path)?)
    }

    /// Opens an image without write access and mounts it read-only: nothing reaches the image
    /// (a journal replay stays in this process's view), and every change is EROFS.
    pub fn open_image_read_only(path: impl AsRef<std::path::Path>) -> Result<Fs> {
        Fs::mount(Device::open_read_only(path)?)
    }

    /// Mounts: checks the superblock, replays the journal, loads every inode, checks every
    /// directory entry, rebuilds free space, and frees orphans (inodes unlinked while open when
    /// the last mount ended). Directory indexes are built on first use; [`Fs::mount_report`]
    /// says how long each step took.
    pub fn mount(dev: Device) -> Result<Fs> {
        let start = Instant::now();
        let mut report = MountReport::default();
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
        report.replay = start.elapsed();
        let loaded = super::load::load(&dev, &geo, &mut report)?;
        let t = Instant::now();
        let alloc = Allocator::from_used(&geo, loaded.used, loaded.held)?;
        report.free_space = t.elapsed();
        // `load` refused a root that is not a directory; directories have their nodes.
        let root = loaded
            .nodes
            .get(&ROOT_INO)
            .cloned()
            .ok_or(Error::Corrupt { what: "root directory", at: geo.inode_at(ROOT_INO) })?;
        let read_only = dev.is_read_only();
        let fs = Fs {
            inner: Arc::new(Inner {
                dev,
                geo,
                journal: Mutex::new(journal),
                alloc: Mutex::new(alloc),
                itable: Mutex::new(loaded.itable),
                nodes: NodeTable::new(loaded.nodes),
                unloaded: Mutex::new(loaded.unloaded),
                root,
                damaged: RwLock::new(loaded.damaged),
                rename: Mutex::new(()),
                recovery,
                mount_report: std::sync::OnceLock::new(),
                uuid: sb.uuid,
                label: String::from_utf8_lossy(&sb.label).trim_end_matches('\0').to_string(),
                mkfs_time: sb.mkfs_time.get(),
                read_only,
                broken: Mutex::new(None),
                stopped: AtomicBool::new(false),
                mmap: Default::default(),
                direct: Default::default(),
                owner: Creds::current(),
            }),
        };
        let t = Instant::now();
        // Lanes first: an orphan's slot is freed with its lane 0.
        for ino in loaded.lanes {
            let node = fs.node(ino)?;
            let mut g = wr(&node.inode);
            fs.fold_lane(&mut g)?;
        }
        report.orphans_freed = loaded.orphans.len() as u64;
        for ino in loaded.orphans {
            let node = fs.node(ino)?;
            let mut g = wr(&node.inode);
            fs.free_inode(&mut g)?;
        }
        report.orphans = t.elapsed();
        report.total = start.elapsed();
        fs.inner.mount_report.get_or_init(|| report);
        Ok(fs)
    }

    /// How long the mount of this file system took, step by step.
    pub fn mount_report(&self) -> MountReport {
        self.inner.mount_report.get().copied().unwrap_or_default()
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

    /// The device back, neither checkpointed nor synced, when this is the last handle: the
    /// crash explorer reuses it for the next image.
    #[cfg(feature = "crash-test")]
    pub(crate) fn into_device(self) -> Option<Device> {
        Arc::try_unwrap(self.inner).ok().map(|inner| inner.dev)
    }

    /// Every in-use inode number (for fsck and tests), loaded or not.
    pub fn inode_numbers(&self) -> Vec<u64> {
        let unloaded = lock(&self.inner.unloaded);
        let mut v: Vec<u64> = self.inner.nodes.to_map().keys().copied().chain(unloaded.iter()).collect();
        drop(unloaded);
        v.sort_unstable();
        v
    }
}

/// How many directory entries name each inode number.
pub(crate) fn count_entries(nodes: &NodeMap) -> HashMap<u64, u64> {
    let mut refs = HashMap::new();
    for node in nodes.values() {
        let g = rd(&node.inode);
        for (_, e) in g.dir.iter().flat_map(|d| d.entries_after(None)) {
            *refs.entry(e.ino).or_insert(0) += 1;
        }
    }
    refs
}

pub(super) fn uuid_from(t: Timespec) -> [u8; 16] {
    let mut u = [0u8; 16];
    let a = crc32c::crc32c(&t.sec.to_le_bytes()) as u64;
    let b = u64::from(std::process::id()) ^ u64::from(t.nsec) << 32;
    u[..8].copy_from_slice(&(a << 32 | u64::from(t.nsec)).to_le_bytes());
    u[8..].copy_from_slice(&b.to_le_bytes());
    u
}
