//! Inodes: attributes in memory and on the medium, and the table of free inode numbers.
//!
//! Every in-use inode is loaded at mount ([`scan_table`] reads the table in batches): its
//! attributes, its extent map and, for directories, the data its name index is built from on
//! first use. Changes are logged as the 128 attribute bytes of the slot (plus extent-slot
//! and directory-entry entries made by their own modules).

use std::hash::BuildHasherDefault;
use std::time::{SystemTime, UNIX_EPOCH};

use zerocopy::IntoBytes;

use crate::alloc::Run;
use crate::device::Device;
use crate::dir::{DirIndex, LazyIndex};
use crate::error::{Error, Result};
use crate::extent::{ExtentMap, Piece, State};
use crate::journal::Tx;
use crate::layout::{mode, off, Geometry, RawInode, RawTime, INODE_ATTR_LEN, INODE_EXTENTS_OFF};
use crate::xattr::Xattrs;

#[cfg(feature = "crash-test")]
thread_local! {
    static FROZEN: std::cell::Cell<Option<Timespec>> = const { std::cell::Cell::new(None) };
}

/// The longest tick of the coarse clock, in nanoseconds: Linux's is one jiffy, 1/HZ s, and HZ
/// is at least 100.
const COARSE_TICK_MAX_NS: i128 = 10_000_000;

/// A point in time with nanoseconds, as stat(2) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Timespec {
    /// Seconds since the Unix epoch (negative before it).
    pub sec: i64,
    /// Nanoseconds past `sec`, below 1,000,000,000.
    pub nsec: u32,
}

impl Timespec {
    /// The coarse clock (one tick is a few milliseconds), which pure overwrites compare times
    /// against, as Linux stamps them.
    pub fn coarse_now() -> Timespec {
        #[cfg(feature = "crash-test")]
        if let Some(t) = FROZEN.get() {
            return t;
        }
        let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        Timespec { sec: t.tv_sec, nsec: t.tv_nsec as u32 }
    }

    /// Whether a time a write stamped is still current at `tick` (a reading of
    /// [`Timespec::coarse_now`]): it lies inside the coarse tick that began at `tick`. A time
    /// from an earlier tick is stale, and so is one set ahead of the clock (by `utimensat`), as
    /// Linux replaces any time that differs from its clock's. A tick is taken to last at most
    /// 10 ms: a time set less than that ahead of the clock counts as current.
    pub fn in_tick(self, tick: Timespec) -> bool {
        let ns = |t: Timespec| i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec);
        (0..COARSE_TICK_MAX_NS).contains(&(ns(self) - ns(tick)))
    }

    /// The current time from the precise real-time clock.
    pub fn now() -> Timespec {
        #[cfg(feature = "crash-test")]
        if let Some(t) = FROZEN.get() {
            return t;
        }
        Timespec::from_system(SystemTime::now())
    }

    /// Stops the calling thread's clock at `t` (`None` starts it again), so that runs of the
    /// same operations stamp the same times (test machinery, `crash-test` feature).
    #[cfg(feature = "crash-test")]
    pub fn freeze_clock(t: Option<Timespec>) {
        FROZEN.set(t);
    }

    /// A `SystemTime`, before the epoch too (negative seconds, nanoseconds counted forward).
    pub fn from_system(t: SystemTime) -> Timespec {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                let (sec, nsec) = if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                };
                Timespec { sec, nsec }
            }
        }
    }

    pub(crate) fn raw(self) -> RawTime {
        RawTime { sec: self.sec.into(), nsec: self.nsec.into(), reserved: 0.into() }
    }

    fn decode(r: &RawTime, at: u64) -> Result<Timespec> {
        if r.nsec.get() >= 1_000_000_000 {
            return Err(Error::Corrupt { what: "inode timestamp nanoseconds", at });
        }
        Ok(Timespec { sec: r.sec.get(), nsec: r.nsec.get() })
    }
}

/// The attributes of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// File type and permission bits.
    pub mode: u32,
    /// Hard links (a directory: 2 plus one per subdirectory).
    pub nlink: u32,
    /// Owner user ID.
    pub uid: u32,
    /// Owner group ID.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Generation of the slot: bumped each time the number is reused.
    pub generation: u32,
    /// Last content change.
    pub mtime: Timespec,
    /// Last inode change.
    pub ctime: Timespec,
    /// Last access.
    pub atime: Timespec,
    /// Creation.
    pub crtime: Timespec,
    /// Device number of a device node; 0 otherwise.
    pub rdev: u64,
    /// A directory's parent directory (the root's is itself); 0 for other files.
    pub parent: u64,
}

impl Attr {
    /// Fresh attributes for a new inode: size 0, one link (two for a directory), every time
    /// now.
    pub fn new(mode: u32, uid: u32, gid: u32, generation: u32) -> Attr {
        let now = Timespec::now();
        Attr {
            mode,
            nlink: if mode::is_dir(mode) { 2 } else { 1 },
            uid,
            gid,
            size: 0,
            generation,
            mtime: now,
            ctime: now,
            atime: now,
            crtime: now,
            rdev: 0,
            parent: 0,
        }
    }
}

/// A loaded inode.
#[derive(Debug)]
pub struct Inode {
    /// Inode number.
    pub ino: u64,
    /// Its attributes.
    pub attr: Attr,
    /// Its extent map.
    pub ext: ExtentMap,
    /// A directory's index of entries, built on first use; `None` for other files.
    pub dir: Option<Box<LazyIndex>>,
    /// Its extended attributes.
    pub xattr: Xattrs,
    /// Open handles; an unlinked inode is freed at the last close.
    pub open: u32,
    /// Set when the slot was freed. A thread that found this inode before it was freed and
    /// locked it after sees this and must not touch the slot (it may belong to a new inode).
    pub freed: bool,
    /// File bytes a write is copying into without holding the inode lock (see `io`): first
    /// stores whose allocation could touch them wait for the write.
    pub(crate) writing: Option<(u64, u64)>,
    /// Whether the bytes past EOF in its page are known to be zero (a new inode's are; after a
    /// mount they may hold what a crash left there, until the first mapping zeroes them).
    pub(crate) tail_clean: bool,
    /// The slot's lane word as decoded (nonzero: a direct client appended under a lease that
    /// recovery has not folded yet; see `Fs::fold_lane`).
    pub(crate) lane: u64,
}

impl Inode {
    /// A new, empty inode `ino` with `attr` (a directory gets an empty index).
    pub fn new(ino: u64, attr: Attr, geo: &Geometry) -> Inode {
        let dir = mode::is_dir(attr.mode).then(|| Box::new(LazyIndex::built(DirIndex::default())));
        Inode {
            ino,
            attr,
            ext: ExtentMap::empty(geo.inode_at(ino)),
            dir,
            xattr: Xattrs::default(),
            open: 0,
            freed: false,
            writing: None,
            tail_clean: true,
            lane: 0,
        }
    }

    /// Decodes slot `ino`; `Ok(None)` for a free slot. Every field is checked; directory
    /// contents are indexed separately (they need the extent map first).
    pub fn load(dev: &Device, geo: &Geometry, ino: u64) -> Result<Option<Inode>> {
        Inode::decode(dev, geo, ino, &dev.read_obj(geo.inode_at(ino))?)
    }

    /// As [`Inode::load`], from the slot's bytes `raw` as the caller read them. A directory's
    /// extents must cover its size exactly, with written blocks, so its data can be read whole.
    pub fn decode(dev: &Device, geo: &Geometry, ino: u64, raw: &RawInode) -> Result<Option<Inode>> {
        let at = geo.inode_at(ino);
        let m = raw.mode.get();
        if m == 0 {
            return Ok(None);
        }
        if !mode::is_valid_type(m) || m & !(mode::S_IFMT | 0o7777) != 0 {
            return Err(Error::Corrupt { what: "inode mode", at });
        }
        if raw.size.get() > crate::MAX_FILE_SIZE {
            return Err(Error::Corrupt { what: "inode size", at: at + off!(RawInode, size) });
        }
        if raw.flags.get() != 0 {
            return Err(Error::Corrupt { what: "inode flags", at: at + off!(RawInode, flags) });
        }
        let parent = raw.parent.get();
        if mode::is_dir(m) && (parent == 0 || parent > geo.inode_count) {
            return Err(Error::Corrupt { what: "directory parent", at: at + off!(RawInode, parent) });
        }
        let attr = Attr {
            mode: m,
            nlink: raw.nlink.get(),
            uid: raw.uid.get(),
            gid: raw.gid.get(),
            size: raw.size.get(),
            generation: raw.generation.get(),
            mtime: Timespec::decode(&raw.mtime, at + off!(RawInode, mtime))?,
            ctime: Timespec::decode(&raw.ctime, at + off!(RawInode, ctime))?,
            atime: Timespec::decode(&raw.atime, at + off!(RawInode, atime))?,
            crtime: Timespec::decode(&raw.crtime, at + off!(RawInode, crtime))?,
            rdev: raw.rdev.get(),
            parent,
        };
        if mode::is_symlink(m) && (attr.size == 0 || attr.size > crate::layout::SYMLINK_MAX as u64) {
            return Err(Error::Corrupt { what: "symlink size", at: at + off!(RawInode, size) });
        }
        let ext = ExtentMap::load(dev, geo, raw, ino, at)?;
        if mode::is_dir(m) {
            // The directory is read whole at mount: its size must be exactly what it owns.
            let owned: u64 = ext.iter().map(|e| e.len).sum();
            if attr.size % geo.block_size != 0 || attr.size / geo.block_size != owned {
                return Err(Error::Corrupt { what: "directory size", at: at + off!(RawInode, size) });
            }
        }
        if !mode::has_data(m) && !ext.is_empty() {
            return Err(Error::Corrupt { what: "extents on a special file", at: at + INODE_EXTENTS_OFF });
        }
        let xattr = Xattrs::load(dev, geo, raw.xattr.get(), ino, at + off!(RawInode, xattr))?;
        let lane = raw.lane.get();
        if lane != 0 && (!geo.lanes || !mode::is_reg(m) || crate::layout::lane_size(lane).is_none_or(|s| s > crate::MAX_FILE_SIZE)) {
            return Err(Error::Corrupt { what: "inode lane", at: at + off!(RawInode, lane) });
        }
        let inode =
            Inode { ino, attr, ext, dir: None, xattr, open: 0, freed: false, writing: None, tail_clean: false, lane };
        if mode::is_dir(m) {
            inode.check_dir_map(geo)?;
        }
        Ok(Some(inode))
    }

    /// As [`Inode::load`], with a directory's index built too: everything needed to serve the
    /// inode. An error here makes the slot a damaged inode (see DESIGN "Damaged images"); mount
    /// reads the same (see `fs::mount`) and leaves the index to be built on first use.
    pub fn load_full(dev: &Device, geo: &Geometry, ino: u64) -> Result<Option<Inode>> {
        let Some(mut inode) = Inode::load(dev, geo, ino)? else { return Ok(None) };
        if inode.is_dir() {
            inode.dir = Some(Box::new(LazyIndex::built(inode.load_dir(dev, geo)?)));
        }
        Ok(Some(inode))
    }

    /// The blocks slot `ino` may reference when it does not decode: what its extent slots and
    /// chain name (see [`ExtentMap::claimed_runs`]) and its attribute block.
    pub fn claimed_runs(dev: &Device, geo: &Geometry, ino: u64) -> Result<Vec<Run>> {
        let raw: RawInode = dev.read_obj(geo.inode_at(ino))?;
        let mut runs = ExtentMap::claimed_runs(dev, geo, &raw);
        if geo.contains(raw.xattr.get(), 1) {
            runs.push(Run { start: raw.xattr.get(), len: 1 });
        }
        Ok(runs)
    }

    fn raw(&self) -> RawInode {
        let a = &self.attr;
        let mut r = RawInode {
            mode: a.mode.into(),
            nlink: a.nlink.into(),
            uid: a.uid.into(),
            gid: a.gid.into(),
            size: a.size.into(),
            generation: a.generation.into(),
            flags: 0.into(),
            mtime: a.mtime.raw(),
            ctime: a.ctime.raw(),
            atime: a.atime.raw(),
            crtime: a.crtime.raw(),
            rdev: a.rdev.into(),
            parent: a.parent.into(),
            ext_next: self.ext.first_block().into(),
            xattr: self.xattr.block.into(),
            extents: Default::default(),
            lane: 0.into(),
        };
        r.extents = Default::default();
        r
    }

    /// Logs the attribute half of the slot.
    pub fn log_attr(&self, geo: &Geometry, tx: &mut Tx) {
        tx.changes_inode(self.ino);
        tx.put(geo.inode_at(self.ino), &self.raw().as_bytes()[..INODE_ATTR_LEN]);
    }

    /// Logs the whole slot of a new inode (clearing whatever a previous owner left in it) but
    /// its lane, which the journal never writes (a replayed record would overwrite a client's
    /// later store); a slot is freed only with its lane 0.
    pub fn log_new(&self, geo: &Geometry, tx: &mut Tx) {
        tx.changes_inode(self.ino);
        tx.put(geo.inode_at(self.ino), &self.raw().as_bytes()[..crate::layout::INODE_LANE_OFF as usize]);
    }

    /// Logs the slot as free.
    pub fn log_free(&self, geo: &Geometry, tx: &mut Tx) {
        tx.changes_inode(self.ino);
        // Keep the generation so the next owner of the slot gets a higher one.
        let mut r = RawInode { mode: 0.into(), nlink: 0.into(), ..self.raw() };
        r.size = 0.into();
        r.ext_next = 0.into();
        r.xattr = 0.into();
        tx.put(geo.inode_at(self.ino), &r.as_bytes()[..INODE_ATTR_LEN]);
    }

    /// Every block the inode owns: data, overflow extent blocks, the attribute block.
    pub fn owned_runs(&self) -> impl Iterator<Item = Run> + '_ {
        let xattr = (self.xattr.block != 0).then_some(Run { start: self.xattr.block, len: 1 });
        self.ext.owned_runs().chain(xattr)
    }

    /// 512-byte units allocated, as stat(2) counts them (the attribute block too, as ext4 does).
    pub fn blocks_512(&self, geo: &Geometry) -> u64 {
        (self.ext.owned_blocks() + u64::from(self.xattr.block != 0)) * geo.block_size / 512
    }

    /// `NotFound` once the inode has been freed (see [`Inode::freed`]).
    pub fn live(&self) -> Result<()> {
        if self.freed {
            Err(Error::NotFound)
        } else {
            Ok(())
        }
    }

    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        mode::is_dir(self.attr.mode)
    }

    /// A directory's index (built now if it was not); [`Error::NotDir`] for other files.
    pub fn dir(&self) -> Result<&DirIndex> {
        self.dir.as_deref().map(LazyIndex::index).ok_or(Error::NotDir)
    }

    /// As [`Inode::dir`], to change.
    pub fn dir_mut(&mut self) -> Result<&mut DirIndex> {
        self.dir.as_deref_mut().map(LazyIndex::index_mut).ok_or(Error::NotDir)
    }

    /// Checks that a directory's data can be read whole: its size is whole blocks, every block
    /// below it is written, and no extent lies past it.
    fn check_dir_map(&self, geo: &Geometry) -> Result<()> {
        let bs = geo.block_size;
        let at = geo.inode_at(self.ino);
        let size = self.attr.size;
        if size % bs != 0 {
            return Err(Error::Corrupt { what: "directory size", at: at + off!(RawInode, size) });
        }
        if self.ext.pieces(0, size / bs).iter().any(|p| !matches!(p, Piece::Mapped(e) if e.state == State::Written)) {
            return Err(Error::Corrupt { what: "directory data not mapped", at: at + INODE_EXTENTS_OFF });
        }
        if self.ext.iter().any(|e| e.end() * bs > size) {
            return Err(Error::Corrupt { what: "directory extent past its size", at: at + INODE_EXTENTS_OFF });
        }
        Ok(())
    }

    /// A directory's data, read whole (its map was checked when it was decoded).
    pub fn read_dir_data(&self, dev: &Device, geo: &Geometry) -> Result<Box<[u8]>> {
        let bs = geo.block_size;
        let mut data = vec![0u8; self.attr.size as usize].into_boxed_slice();
        for e in self.ext.iter() {
            let start = (e.logical * bs) as usize;
            dev.read(geo.block_at(e.physical), &mut data[start..start + (e.len * bs) as usize])?;
        }
        Ok(data)
    }

    /// Indexes a directory's entries from its blocks.
    pub fn load_dir(&self, dev: &Device, geo: &Geometry) -> Result<DirIndex> {
        Ok(DirIndex::load(&self.read_dir_data(dev, geo)?, geo.block_size, geo.inode_count))
    }
}

/// How many inode slots [`scan_table`] reads at a time (64 KiB).
const SCAN_BATCH: u64 = 256;

/// Reads the inode slots `inos` in batches and calls `slot(ino, raw)` for each: mount's pass
/// over the table (see `fs::mount`).
pub fn scan_table(
    dev: &Device,
    geo: &Geometry,
    inos: std::ops::Range<u64>,
    mut slot: impl FnMut(u64, &RawInode) -> Result<()>,
) -> Result<()> {
    let mut batch = vec![<RawInode as zerocopy::FromZeros>::new_zeroed(); SCAN_BATCH as usize];
    let mut ino = inos.start;
    while ino < inos.end {
        let n = SCAN_BATCH.min(inos.end - ino);
        let raws = &mut batch[..n as usize];
        dev.read(geo.inode_at(ino), raws.as_mut_bytes())?;
        for (i, raw) in (ino..).zip(raws.iter()) {
            slot(i, raw)?;
        }
        ino += n;
    }
    Ok(())
}

/// Hashes inode numbers for the node table and the inode table's maps: one multiply, its high half folded into the low
/// half (where the table picks its bucket) and kept in the high bits (its tag). Inode numbers
/// come from the image, but only `1..=inode count`: an image cannot name more inodes than its
/// table holds, so colliding numbers cannot outnumber the inodes themselves.
#[derive(Debug, Default, Clone, Copy)]
pub struct InoHasher(u64);

impl std::hash::Hasher for InoHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0 ^ self.0 >> 32
    }
}

/// Free inode numbers: a bitmap rebuilt at mount.
#[derive(Debug)]
pub struct InodeTable {
    used: Vec<u64>,
    count: u64,
    free: u64,
    hint: usize,
    /// Generation of each freed slot's last owner, so reuse bumps it.
    generations: std::collections::HashMap<u64, u32, BuildHasherDefault<InoHasher>>,
    /// Numbers that stay in use until the next mount even when freed (see [`InodeTable::quarantine`]).
    quarantined: std::collections::HashSet<u64, BuildHasherDefault<InoHasher>>,
}

impl InodeTable {
    /// A table of `count` inodes, all free.
    pub fn new(count: u64) -> InodeTable {
        InodeTable {
            used: vec![0; count.div_ceil(64) as usize],
            count,
            free: count,
            hint: 0,
            generations: Default::default(),
            quarantined: Default::default(),
        }
    }

    /// Keeps `ino` from being handed out until the next mount: mount found directory entries
    /// that disagree with it (naming it while it is free, or more or fewer times than its link
    /// count), so one may still name it after it is freed.
    pub fn quarantine(&mut self, ino: u64) {
        self.mark_used(ino);
        self.quarantined.insert(ino);
    }

    /// Marks `ino` in use (mount, for each inode it finds).
    pub fn mark_used(&mut self, ino: u64) {
        let i = ino - 1;
        let w = &mut self.used[(i / 64) as usize];
        if *w & (1 << (i % 64)) == 0 {
            *w |= 1 << (i % 64);
            self.free -= 1;
        }
    }

    /// Records the generation a free slot's last owner had, so its next owner gets a higher one.
    pub fn remember_generation(&mut self, ino: u64, generation: u32) {
        if generation != 0 {
            self.generations.insert(ino, generation);
        }
    }

    /// Takes the lowest free inode number at or after the hint; returns it with the generation
    /// its new owner gets.
    pub fn alloc(&mut self) -> Result<(u64, u32)> {
        if self.free == 0 {
            return Err(Error::NoInodes);
        }
        let n = self.used.len();
        for k in 0..n {
            let wi = (self.hint + k) % n;
            let w = self.used[wi];
            if w != u64::MAX {
                let bit = (!w).trailing_zeros() as u64;
                let ino = wi as u64 * 64 + bit + 1;
                if ino > self.count {
                    continue;
                }
                self.hint = wi;
                self.mark_used(ino);
                let generation = self.generations.remove(&ino).map_or(1, |g| g.wrapping_add(1).max(1));
                return Ok((ino, generation));
            }
        }
        Err(Error::NoInodes)
    }

    /// Frees `ino`, whose owner had `generation` (a quarantined number stays in use).
    pub fn release(&mut self, ino: u64, generation: u32) {
        if self.quarantined.contains(&ino) {
            return;
        }
        let i = ino - 1;
        let w = &mut self.used[(i / 64) as usize];
        if *w & (1 << (i % 64)) != 0 {
            *w &= !(1 << (i % 64));
            self.free += 1;
            self.generations.insert(ino, generation);
            self.hint = self.hint.min((i / 64) as usize);
        }
    }

    /// Inode numbers free to allocate.
    pub fn free_count(&self) -> u64 {
        self.free
    }
}

/// A set of inode numbers, one bit each.
#[derive(Debug)]
pub struct InodeSet {
    bits: Vec<u64>,
    len: u64,
}

impl InodeSet {
    /// An empty set for numbers up to `inodes`.
    pub fn new(inodes: u64) -> InodeSet {
        InodeSet { bits: vec![0; (inodes as usize + 1).div_ceil(64)], len: 0 }
    }

    /// Adds `ino` (at most the count the set was made for).
    pub fn insert(&mut self, ino: u64) {
        let w = &mut self.bits[(ino / 64) as usize];
        if *w & (1 << (ino % 64)) == 0 {
            *w |= 1 << (ino % 64);
            self.len += 1;
        }
    }

    /// Whether `ino` is in the set.
    pub fn contains(&self, ino: u64) -> bool {
        self.bits.get((ino / 64) as usize).is_some_and(|w| w & (1 << (ino % 64)) != 0)
    }

    /// Removes `ino`.
    pub fn remove(&mut self, ino: u64) {
        if self.contains(ino) {
            self.bits[(ino / 64) as usize] &= !(1 << (ino % 64));
            self.len -= 1;
        }
    }

    /// How many numbers the set holds.
    pub fn count(&self) -> u64 {
        self.len
    }

    /// The numbers, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().filter(|(_, &w)| w != 0).flat_map(|(i, &w)| {
            (0..64).filter(move |b| w & (1 << b) != 0).map(move |b| i as u64 * 64 + b)
        })
    }
}
