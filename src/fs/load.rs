//! Mount's passes over the image — the inode table, then every directory's entries, then the
//! directories' parent fields — and the loading of a file's node on first use.
//!
//! The passes decode everything mount must see to refuse what it cannot serve and to keep what
//! it tolerates out of harm's way (DESIGN "Recovery", "Damaged images"), with the same decoders
//! that serve the inodes later, but keep little: a directory gets its node and its data (its
//! index is built on first use), a file only its number (`Inner::unloaded`); its node is decoded again
//! from its slot when something first reaches it ([`Fs::load_node`]). Until then nothing can
//! have changed the slot: every change to an inode goes through its node.
//!
//! The table and the directories are split among threads, each working on its own share; what
//! each slot turned out to be goes into per-number arrays ([`Slots`]) that the entry checks read
//! without a node or a lock.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use crate::alloc::Run;
use crate::device::Device;
use crate::dir::{self, Entry, LazyIndex, NameHasher, Unit, DT_DIR};
use crate::error::{Error, Result};
use crate::inode::{scan_table, Inode, InodeSet, InodeTable};
use crate::layout::{off, Geometry, RawInode, ROOT_INO};
use crate::sync::{lock, rd};

use super::node::{Damage, Node, NodeMap};
use super::state::Fs;
use super::types::MountReport;

/// Slots per thread below which a pass is not split (thread start-up would cost more).
const SLOTS_PER_THREAD: u64 = 1 << 15;

/// Most threads a pass is split among.
const MAX_THREADS: usize = 8;

/// What a slot holds, as the table pass found it.
const FREE: u8 = 0;
const FILE: u8 = 1;
const DIR: u8 = 2;
const DAMAGED: u8 = 3;

/// What mount knows of each inode slot, indexed by number (0 unused).
struct Slots {
    kind: Vec<u8>,
    nlink: Vec<u32>,
    /// Directories' parent fields (0 for the rest).
    parent: Vec<u64>,
}

/// What the table pass found in one range of slots.
#[derive(Default)]
struct TablePart {
    /// Directories, with their data (read whole), to be decoded next and indexed on first use.
    dirs: Vec<(Inode, Box<[u8]>)>,
    used: Vec<Run>,
    held: Vec<Run>,
    damaged: Vec<(u64, Damage)>,
    /// Files with a lane to fold.
    lanes: Vec<u64>,
    /// Free slots whose last owner had a generation.
    generations: Vec<(u64, u32)>,
}

/// Everything mount loaded: the directories' nodes, the files not loaded yet, free space's
/// ingredients, the inode-number table, and the orphans.
pub(super) struct Loaded {
    pub(super) nodes: NodeMap,
    pub(super) unloaded: InodeSet,
    pub(super) used: Vec<Run>,
    pub(super) held: Vec<Run>,
    pub(super) damaged: BTreeMap<u64, Damage>,
    pub(super) itable: InodeTable,
    /// Inodes no entry names that have no links (see [`load`]).
    pub(super) orphans: Vec<u64>,
    /// Files whose lane holds appends to fold into their size (`Fs::fold_lane`).
    pub(super) lanes: Vec<u64>,
}

/// Loads every inode and checks every directory entry; fills in the report's phases from
/// `inodes` to `tree`. Refuses an image whose root does not decode or whose directories do not
/// form trees (DESIGN "Known limits"). Entries that disagree with the inodes they name —
/// naming a free or damaged slot, or a file more or fewer times than its link count — put that
/// inode number in quarantine: kept out of use until the next mount, so a stale entry never
/// comes to name a new inode (of another type: the next mount would refuse that).
pub(super) fn load(dev: &Device, geo: &Geometry, report: &mut MountReport) -> Result<Loaded> {
    let n = geo.inode_count;
    let threads = threads_for(n);
    report.threads = threads;
    let t = Instant::now();
    let mut slots =
        Slots { kind: vec![FREE; n as usize + 1], nlink: vec![0; n as usize + 1], parent: vec![0; n as usize + 1] };
    let parts = load_table(dev, geo, threads, &mut slots)?;
    report.inodes = t.elapsed();

    let t = Instant::now();
    let mut damaged = BTreeMap::new();
    let (mut dirs, mut used, mut held) = (Vec::new(), Vec::new(), Vec::new());
    let (mut generations, mut lanes) = (Vec::new(), Vec::new());
    for p in parts {
        lanes.extend(p.lanes);
        dirs.extend(p.dirs);
        used.extend(p.used);
        held.extend(p.held);
        damaged.extend(p.damaged);
        generations.extend(p.generations);
    }
    match slots.kind[ROOT_INO as usize] {
        DIR => {}
        DAMAGED => {
            let d = damaged[&ROOT_INO];
            return Err(Error::Corrupt { what: d.what, at: d.at });
        }
        _ => return Err(Error::Corrupt { what: "root directory", at: geo.inode_at(ROOT_INO) }),
    }
    if slots.parent[ROOT_INO as usize] != ROOT_INO {
        let at = geo.inode_at(ROOT_INO) + off!(RawInode, parent);
        return Err(Error::Corrupt { what: "root directory parent", at });
    }
    let (refs, entries) = scan_dirs(&dirs, &slots, geo, threads)?;
    report.directories = t.elapsed();
    report.entries = entries;
    report.directories_used = dirs.len() as u64;

    let t = Instant::now();
    check_parents(&slots, dirs.len(), geo)?;
    report.tree = t.elapsed();

    let t = Instant::now();
    let mut itable = InodeTable::new(n);
    let mut unloaded = InodeSet::new(n);
    let mut orphans = Vec::new();
    for ino in 1..=n {
        let i = ino as usize;
        match slots.kind[i] {
            FREE if refs[i] > 0 => itable.quarantine(ino),
            FREE => {}
            DAMAGED => itable.quarantine(ino),
            kind => {
                itable.mark_used(ino);
                if kind == FILE {
                    unloaded.insert(ino);
                    if refs[i] > 0 && slots.nlink[i] != refs[i] {
                        itable.quarantine(ino);
                    }
                }
                // An orphan is an inode no entry names (a file unlinked while open); a named
                // one, or the root, with nlink 0 is a wrong link count, which fsck reports.
                if slots.nlink[i] == 0 && refs[i] == 0 && ino != ROOT_INO {
                    orphans.push(ino);
                }
            }
        }
    }
    for (ino, generation) in generations {
        itable.remember_generation(ino, generation);
    }
    report.inodes_used = unloaded.count() + dirs.len() as u64;
    let mut nodes = NodeMap::default();
    nodes.reserve(dirs.len());
    for (mut inode, data) in dirs {
        inode.dir = Some(Box::new(LazyIndex::from_data(data, geo.block_size, n)));
        nodes.insert(inode.ino, Node::new(inode));
    }
    report.numbers = t.elapsed();
    Ok(Loaded { nodes, unloaded, used, held, damaged, itable, orphans, lanes })
}

/// How many threads a pass over `slots` inode slots is split among.
fn threads_for(slots: u64) -> usize {
    if cfg!(any(feature = "model", miri)) {
        // The model check's locks belong to its scheduler's threads; miri interprets.
        return 1;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.min(MAX_THREADS).min((slots / SLOTS_PER_THREAD).max(1) as usize)
}

/// Runs `jobs`, each on a thread of its own (the first on the caller's); results in order.
fn run_all<T: Send>(jobs: Vec<impl FnOnce() -> T + Send>) -> Vec<T> {
    if jobs.len() <= 1 {
        return jobs.into_iter().map(|job| job()).collect();
    }
    std::thread::scope(|s| {
        let mut jobs = jobs.into_iter();
        let first = jobs.next().expect("more than one job");
        let rest: Vec<_> = jobs.map(|job| s.spawn(job)).collect();
        let mut out = vec![first()];
        out.extend(rest.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))));
        out
    })
}

/// The table pass: decodes every slot, `threads` ranges at once. A slot in use that does not
/// decode — any field, its extent map, its attribute block, a directory's data that cannot be
/// read whole — is damaged: its number and every block it may reference stay out of use.
fn load_table(dev: &Device, geo: &Geometry, threads: usize, slots: &mut Slots) -> Result<Vec<TablePart>> {
    let n = geo.inode_count;
    let per = n.div_ceil(threads as u64).max(1);
    let (mut kind, mut nlink, mut parent) = (&mut slots.kind[1..], &mut slots.nlink[1..], &mut slots.parent[1..]);
    let mut jobs = Vec::new();
    let mut first = 1;
    while first <= n {
        let len = per.min(n + 1 - first);
        let (k, kr) = std::mem::take(&mut kind).split_at_mut(len as usize);
        let (l, lr) = std::mem::take(&mut nlink).split_at_mut(len as usize);
        let (p, pr) = std::mem::take(&mut parent).split_at_mut(len as usize);
        (kind, nlink, parent) = (kr, lr, pr);
        let inos = first..first + len;
        jobs.push(move || table_part(dev, geo, inos, k, l, p));
        first += len;
    }
    run_all(jobs).into_iter().collect()
}

/// The table pass over slots `inos`; `kind`, `nlink` and `parent` are theirs in [`Slots`].
fn table_part(
    dev: &Device,
    geo: &Geometry,
    inos: Range<u64>,
    kind: &mut [u8],
    nlink: &mut [u32],
    parent: &mut [u64],
) -> Result<TablePart> {
    let mut part = TablePart::default();
    let first = inos.start;
    scan_table(dev, geo, inos, |ino, raw| {
        let i = (ino - first) as usize;
        let mut damaged = |e: Error| match e {
            Error::Corrupt { what, at } => {
                kind[i] = DAMAGED;
                part.held.extend(Inode::claimed_runs(dev, geo, ino)?);
                part.damaged.push((ino, Damage { what, at }));
                Ok(())
            }
            e => Err(e),
        };
        let inode = match Inode::decode(dev, geo, ino, raw) {
            Ok(Some(inode)) => inode,
            Ok(None) => {
                if raw.generation.get() != 0 {
                    part.generations.push((ino, raw.generation.get()));
                }
                return Ok(());
            }
            Err(e) => return damaged(e),
        };
        if !inode.is_dir() {
            (kind[i], nlink[i]) = (FILE, inode.attr.nlink);
            if inode.lane != 0 {
                part.lanes.push(ino);
            }
            part.used.extend(inode.owned_runs());
            return Ok(());
        }
        match inode.read_dir_data(dev, geo) {
            Ok(data) => {
                (kind[i], nlink[i], parent[i]) = (DIR, inode.attr.nlink, inode.attr.parent);
                part.used.extend(inode.owned_runs());
                part.dirs.push((inode, data));
                Ok(())
            }
            Err(e) => damaged(e),
        }
    })?;
    Ok(part)
}

/// The directory pass: decodes every directory's entries (the decoder its index will use, so
/// the index finds what this pass found), `threads` shares at once, and checks each entry
/// against the inode it names. Returns how many entries name each inode, and how many there are.
fn scan_dirs(dirs: &[(Inode, Box<[u8]>)], slots: &Slots, geo: &Geometry, threads: usize) -> Result<(Vec<u32>, u64)> {
    // Shares of about equal bytes, in order.
    let total: usize = dirs.iter().map(|(_, data)| data.len()).sum();
    let target = total.div_ceil(threads).max(1);
    let mut shares = Vec::new();
    let (mut from, mut bytes) = (0, 0);
    for (i, (_, data)) in dirs.iter().enumerate() {
        bytes += data.len();
        if bytes >= target && shares.len() + 1 < threads {
            shares.push(&dirs[from..=i]);
            (from, bytes) = (i + 1, 0);
        }
    }
    shares.push(&dirs[from..]);
    let jobs: Vec<_> = shares.into_iter().map(|share| move || dir_share(share, slots, geo)).collect();
    let mut parts = run_all(jobs).into_iter();
    let (mut refs, mut entries) = parts.next().expect("one share at least")?;
    for part in parts {
        let (more, n) = part?;
        // Only where the share counted something: the arrays are mostly untouched zero pages.
        for (r, m) in refs.iter_mut().zip(more).filter(|(_, m)| *m != 0) {
            *r = r.saturating_add(m);
        }
        entries += n;
    }
    Ok((refs, entries))
}

/// The directory pass over one share of the directories.
fn dir_share(dirs: &[(Inode, Box<[u8]>)], slots: &Slots, geo: &Geometry) -> Result<(Vec<u32>, u64)> {
    let mut refs = vec![0u32; slots.kind.len()];
    // Directories named so far. A directory may only be named in the one its parent field
    // names, which is in one share, so a second name is always seen by the same share.
    let mut named = vec![false; slots.kind.len()];
    let mut entries = 0;
    for (dir, data) in dirs {
        // At most one entry per unit.
        let units = data.len() / crate::layout::DIRENT_UNIT as usize;
        let mut seen: HashSet<&[u8], NameHasher> = HashSet::with_capacity_and_hasher(units, NameHasher::default());
        let mut bad = Ok(());
        dir::decode(data, geo.block_size, geo.inode_count, |unit| {
            let Unit::Entry(name, e) = unit else { return true };
            if !seen.insert(name) {
                return false;
            }
            entries += 1;
            let r = &mut refs[e.ino as usize];
            *r = r.saturating_add(1);
            if bad.is_ok() {
                bad = check_entry(dir.ino, &e, slots, &mut named, geo);
            }
            true
        });
        bad?;
    }
    Ok((refs, entries))
}

/// Refuses an entry of directory `holder` that breaks the tree the locking and recursion rely
/// on: its type must match the inode it names, and a directory must be named by the directory
/// its parent field names, once (the root never). Entries naming free or damaged slots pass
/// (fsck reports them).
fn check_entry(holder: u64, e: &Entry, slots: &Slots, named: &mut [bool], geo: &Geometry) -> Result<()> {
    let i = e.ino as usize;
    let is_dir = match slots.kind[i] {
        FILE => false,
        DIR => true,
        _ => return Ok(()),
    };
    if (e.dtype == DT_DIR) != is_dir || e.ino == holder {
        return Err(Error::Corrupt { what: "directory entry type", at: geo.inode_at(holder) });
    }
    if is_dir {
        if slots.parent[i] != holder {
            return Err(Error::Corrupt { what: "directory parent", at: geo.inode_at(e.ino) });
        }
        if std::mem::replace(&mut named[i], true) || e.ino == ROOT_INO {
            return Err(Error::Corrupt { what: "directory named twice", at: geo.inode_at(e.ino) });
        }
    }
    Ok(())
}

/// Walking parent fields up from each directory must end at the root or leave the directories
/// (a detached tree whose parent was lost); a cycle never does. Each walk stops at the first
/// directory already known to end well and marks the ones it passed, so the check is linear in
/// the directories, whatever the depth.
fn check_parents(slots: &Slots, dirs: usize, geo: &Geometry) -> Result<()> {
    let mut ends_well = vec![false; slots.kind.len()];
    ends_well[ROOT_INO as usize] = true;
    let mut path = Vec::new();
    for start in (1..slots.kind.len()).filter(|&i| slots.kind[i] == DIR) {
        let mut at = start;
        while slots.kind[at] == DIR && !ends_well[at] {
            if path.len() > dirs {
                return Err(Error::Corrupt { what: "unreachable directory", at: geo.inode_at(start as u64) });
            }
            path.push(at);
            at = slots.parent[at] as usize;
        }
        for i in path.drain(..) {
            ends_well[i] = true;
        }
    }
    Ok(())
}

impl Fs {
    /// The node of inode `ino` when the node table has none: a file mount left unloaded gets its
    /// node now, decoded from its slot; otherwise `NotFound` for a free slot, `Corrupt` for a
    /// damaged one. One thread at a time loads (under the `unloaded` lock, taken before the
    /// node table's shards): a second caller for the same number waits and then finds the node
    /// in the table, so an inode never has two nodes.
    pub(crate) fn load_node(&self, ino: u64) -> Result<Arc<Node>> {
        let inner = &self.inner;
        let mut unloaded = lock(&inner.unloaded);
        if unloaded.contains(ino) {
            let Some(inode) = Inode::load(&inner.dev, &inner.geo, ino)? else {
                // Mount decoded the slot; only a store from outside udax can have freed it.
                return Err(Error::Corrupt { what: "inode freed behind the mount", at: inner.geo.inode_at(ino) });
            };
            let node = Node::new(inode);
            inner.nodes.insert(node.clone());
            unloaded.remove(ino);
            return Ok(node);
        }
        drop(unloaded);
        // Loaded (or freed) by another thread since the caller looked.
        inner.nodes.get(ino).ok_or_else(|| match rd(&inner.damaged).get(&ino) {
            Some(d) => Error::Corrupt { what: d.what, at: d.at },
            None => Error::NotFound,
        })
    }
}
