//! mkfs, mount (journal replay, inode and directory load, the tree check, orphans) and unmount.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::alloc::Allocator;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::inode::{Attr, Inode, InodeTable, Timespec};
use crate::journal::{Journal, Tx};
use crate::layout::{self, mode, off, Geometry, ROOT_INO};
use crate::sync::{lock, rd, wr, AtomicBool, Mutex, RwLock};

use super::node::{Damage, Node, NodeMap, NodeTable};
use super::state::{Fs, Inner};
use super::types::{Creds, MkfsOptions};

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
        let mut nodes = NodeMap::default();
        let mut used = Vec::new();
        // Slots that do not decode: their numbers and whatever they may reference stay out of
        // use, and every operation reaching them fails naming the damage, until repair clears
        // them.
        let mut damaged = BTreeMap::new();
        let mut held = Vec::new();
        for ino in 1..=geo.inode_count {
            match Inode::load_full(&dev, &geo, ino) {
                Ok(Some(inode)) => {
                    itable.mark_used(ino);
                    used.extend(inode.owned_runs());
                    nodes.insert(ino, Node::new(inode));
                }
                Ok(None) => {
                    let raw: layout::RawInode = dev.read_obj(geo.inode_at(ino))?;
                    itable.remember_generation(ino, raw.generation.get());
                }
                Err(Error::Corrupt { what, at }) => {
                    itable.quarantine(ino);
                    held.extend(Inode::claimed_runs(&dev, &geo, ino)?);
                    damaged.insert(ino, Damage { what, at });
                }
                Err(e) => return Err(e),
            }
        }
        let root = match (nodes.get(&ROOT_INO), damaged.get(&ROOT_INO)) {
            (Some(n), _) if rd(&n.inode).is_dir() => n.clone(),
            (_, Some(d)) => return Err(Error::Corrupt { what: d.what, at: d.at }),
            _ => return Err(Error::Corrupt { what: "root directory", at: geo.inode_at(ROOT_INO) }),
        };
        check_tree(&nodes, &geo)?;
        let alloc = Allocator::from_used(&geo, used, held)?;
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
                nodes: NodeTable::new(nodes),
                root,
                damaged: RwLock::new(damaged),
                rename: Mutex::new(()),
                recovery,
                uuid: sb.uuid,
                label: String::from_utf8_lossy(&sb.label).trim_end_matches('\0').to_string(),
                mkfs_time: sb.mkfs_time.get(),
                read_only,
                broken: Mutex::new(None),
                stopped: AtomicBool::new(false),
                mmap: Default::default(),
                owner: Creds::current(),
            }),
        };
        // An orphan is an inode no entry names (a file unlinked while open); a named one, or
        // the root, with nlink 0 is a wrong link count, which fsck reports, not a file to free.
        let orphans: Vec<u64> = fs
            .inner
            .nodes
            .to_map()
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

    /// Every in-use inode number (for fsck and tests).
    pub fn inode_numbers(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.inner.nodes.to_map().keys().copied().collect();
        v.sort_unstable();
        v
    }
}

/// Refuses directory trees the locking and recursion rely on being trees: the root is its own
/// parent, every other directory is named by at most one entry, in the directory its parent field
/// names, parent fields form no cycle, and every entry's type matches its inode. An unnamed
/// directory (its entry lost with a damaged inode or directory block) heads a detached tree,
/// which mounts: fsck reports it, repair links it into /lost+found. Other damage (link counts,
/// entries naming free inodes) mounts and is reported by fsck.
pub(super) fn check_tree(nodes: &NodeMap, geo: &Geometry) -> Result<()> {
    if nodes.get(&ROOT_INO).is_some_and(|root| root.parent.load(Ordering::Relaxed) != ROOT_INO) {
        return Err(Error::Corrupt {
            what: "root directory parent",
            at: geo.inode_at(ROOT_INO) + off!(layout::RawInode, parent),
        });
    }
    let mut named: HashSet<u64> = HashSet::new();
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
                if !named.insert(e.ino) || e.ino == ROOT_INO {
                    return Err(Error::Corrupt { what: "directory named twice", at: geo.inode_at(e.ino) });
                }
            }
        }
    }
    // Walking parent fields up from each directory (for a named one, the directory naming it)
    // must end at the root or leave the loaded directories (a detached tree whose parent was
    // lost); a cycle never does. Each walk stops at the first directory already known to end
    // well and marks the ones it passed, so the check is linear in the directories, whatever
    // the depth.
    let dirs = nodes.values().filter(|n| n.is_dir).count();
    let mut ends_well: HashSet<u64> = HashSet::from([ROOT_INO]);
    for (&ino, node) in nodes.iter().filter(|(_, n)| n.is_dir) {
        let mut path = Vec::new();
        let mut at = Some((ino, node));
        while let Some((i, n)) = at.filter(|(i, _)| !ends_well.contains(i)) {
            if path.len() > dirs {
                return Err(Error::Corrupt { what: "unreachable directory", at: geo.inode_at(ino) });
            }
            path.push(i);
            let p = n.parent.load(Ordering::Relaxed);
            at = nodes.get(&p).filter(|n| n.is_dir).map(|n| (p, n));
        }
        ends_well.extend(path);
    }
    Ok(())
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
