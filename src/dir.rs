//! Directories: entries on the medium, and the in-memory index that makes lookup O(1).
//!
//! A directory's data is an array of 32-byte units; an entry (16-byte header and the name) fills
//! one to nine consecutive units inside one block, and a unit whose `ino` is zero is free. On the
//! medium nothing is sorted or hashed: the index — a hash map by name, a position-ordered map for
//! readdir, and the free spans — is rebuilt from the data ([`decode`] walks it unit by unit), on
//! a directory's first use after mount ([`LazyIndex`]). Free units are kept as maximal spans
//! inside a block (a removed entry merges with free neighbours), found by size through buckets
//! that may hold stale positions (checked against the span map when used). Insert and remove
//! return the bytes to log; the caller commits them.
//!
//! Names come from the image, which whoever made it chose, so the name map's hash is keyed
//! ([`NameHasher`]): a key drawn from the operating system's random source once per process,
//! and a seed of its own for each index.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use foldhash::fast::SeedableRandomState;
use foldhash::SharedSeed;
use zerocopy::{FromBytes, IntoBytes};

use crate::layout::{check_name, dirent_units, RawDirent, DIRENT_HEADER, DIRENT_UNIT, NAME_MAX};

/// One entry as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The inode the entry names.
    pub ino: u64,
    /// DT_* type of that inode.
    pub dtype: u8,
    /// Byte position in the directory's data.
    pub pos: u64,
    /// 32-byte units the entry fills.
    pub units: u64,
}

/// The hash of directory indexes: foldhash (a folded multiply per 16 bytes of name), keyed.
///
/// Hash flooding: an image may come from anyone, and names that all land in one bucket would
/// make each lookup in their directory linear in its size. The key is 64 bits from the
/// operating system's random source (std's `RandomState`, seeded by getrandom), drawn once per
/// process and expanded into foldhash's shared secrets, plus 64 fresh bits per index; an image is
/// written before either exists, so its names cannot be chosen to collide. foldhash mixes every
/// input word with a secret, so no set of names collides for every key. It is not a
/// cryptographic function: someone who could watch lookups of their own names long enough might
/// infer a key, which buys them slow lookups in directories they can write to — never a wrong
/// answer (the map compares whole names) — and nothing across a remount of a new process.
#[derive(Clone, Debug)]
pub struct NameHasher(SeedableRandomState);

impl Default for NameHasher {
    fn default() -> Self {
        static KEY: OnceLock<SharedSeed> = OnceLock::new();
        let key = KEY.get_or_init(|| SharedSeed::from_u64(os_random()));
        NameHasher(SeedableRandomState::with_seed(os_random(), key))
    }
}

impl BuildHasher for NameHasher {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// 64 bits the caller cannot predict: std's SipHash under its keys from the operating system's
/// random source (each `RandomState` has keys of its own).
fn os_random() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x7564_6178_u64)
}

/// One directory's entries in memory: by name, by position, and its free spans.
#[derive(Debug, Default, Clone)]
pub struct DirIndex {
    /// Entries by name; each name is one allocation shared with `by_pos`.
    names: HashMap<Arc<[u8]>, Entry, NameHasher>,
    by_pos: BTreeMap<u64, Arc<[u8]>>,
    /// Free spans: position -> units, maximal within a block.
    free: BTreeMap<u64, u64>,
    /// Positions of free spans by unit count; an entry is stale unless `free` agrees.
    by_units: Vec<Vec<u64>>,
    /// Block size (spans never cross a block).
    block: u64,
    /// Directory data length in bytes (whole blocks).
    size: u64,
    /// Subdirectories, for the link count.
    subdirs: u64,
    /// Runs of damaged units: position -> (units, what is wrong with the first), within a block.
    damaged: BTreeMap<u64, (u64, &'static str)>,
}

/// Where a new entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Inside the existing data, at this byte position.
    At(u64),
    /// The directory must grow by one block; the entry goes at its start.
    Grow(u64),
}

/// What decoding a directory's data finds, run by run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit<'a> {
    /// An entry that decodes, and its name.
    Entry(&'a [u8], Entry),
    /// Free units `[pos, pos + units)`, within one block.
    Free {
        /// Byte position of the first.
        pos: u64,
        /// How many.
        units: u64,
    },
    /// Damaged units `[pos, pos + units)`, within one block: none is free or starts an entry.
    Damaged {
        /// Byte position of the first.
        pos: u64,
        /// How many.
        units: u64,
        /// What is wrong with the first.
        what: &'static str,
    },
}

/// Decodes a directory's data (whole blocks of `block_size`) unit by unit, calling `found` for
/// each entry, free run and damaged run (not always in position order). A unit that is neither
/// free nor the start of an entry that decodes — inode number in the table, lengths, name,
/// type, and a name no earlier entry has — is damaged, and decoding goes on at the next unit.
/// For an entry, `found` answers whether it takes it: false says an earlier entry had the name,
/// which makes the unit damaged ("duplicate directory entry").
pub fn decode<'a>(data: &'a [u8], block_size: u64, inode_count: u64, mut found: impl FnMut(Unit<'a>) -> bool) {
    for (i, block) in data.chunks(block_size.max(DIRENT_UNIT) as usize).enumerate() {
        let base = i as u64 * block_size;
        let units = block.len() as u64 / DIRENT_UNIT;
        let at = |u: u64| base + u * DIRENT_UNIT;
        let mut u = 0;
        let mut free_from = None;
        let mut bad_from: Option<(u64, &'static str)> = None;
        while u < units {
            let off = (u * DIRENT_UNIT) as usize;
            let Ok((hdr, _)) = RawDirent::read_from_prefix(&block[off..]) else { break };
            let ino = hdr.ino.get();
            let taken = match ino {
                0 => None,
                _ => Some(decode_entry(&hdr, &block[off..], ino, inode_count).and_then(|name| {
                    let e = Entry { ino, dtype: hdr.file_type, pos: at(u), units: u64::from(hdr.units) };
                    if found(Unit::Entry(name, e)) {
                        Ok(e)
                    } else {
                        Err("duplicate directory entry")
                    }
                })),
            };
            if let Some(Err(what)) = taken {
                if let Some(f) = free_from.take() {
                    found(Unit::Free { pos: at(f), units: u - f });
                }
                bad_from.get_or_insert((u, what));
                u += 1;
                continue;
            }
            if let Some((b, what)) = bad_from.take() {
                found(Unit::Damaged { pos: at(b), units: u - b, what });
            }
            let Some(Ok(e)) = taken else {
                free_from.get_or_insert(u);
                u += 1;
                continue;
            };
            if let Some(f) = free_from.take() {
                found(Unit::Free { pos: at(f), units: u - f });
            }
            u += e.units;
        }
        if let Some(f) = free_from {
            found(Unit::Free { pos: at(f), units: units - f });
        }
        if let Some((b, what)) = bad_from {
            found(Unit::Damaged { pos: at(b), units: units - b, what });
        }
    }
}

/// A directory's index, built on first use from the directory's data as mount read it (see
/// DESIGN "In memory"). Threads that ask at once wait for one build; the data is dropped once
/// the index is built. Dereferences to the index.
#[derive(Debug)]
pub struct LazyIndex {
    index: OnceLock<DirIndex>,
    /// The directory's data until the index is built from it (`None` only once `index` is set).
    data: Mutex<Option<Box<[u8]>>>,
    block_size: u64,
    inode_count: u64,
}

impl LazyIndex {
    /// An index already built.
    pub fn built(index: DirIndex) -> LazyIndex {
        LazyIndex { index: OnceLock::from(index), data: Mutex::new(None), block_size: 0, inode_count: 0 }
    }

    /// An index to build from `data` (the directory's whole blocks) when first used.
    pub fn from_data(data: Box<[u8]>, block_size: u64, inode_count: u64) -> LazyIndex {
        LazyIndex { index: OnceLock::new(), data: Mutex::new(Some(data)), block_size, inode_count }
    }

    /// The index, built now if it was not.
    pub fn index(&self) -> &DirIndex {
        self.index.get_or_init(|| {
            // Only this closure takes the data, and only the build that it returns, so another
            // caller never finds neither; a build that panicked leaves the data for the next.
            let mut data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
            let index = DirIndex::load(data.as_deref().unwrap_or_default(), self.block_size, self.inode_count);
            *data = None;
            index
        })
    }

    /// As [`LazyIndex::index`], to change.
    pub fn index_mut(&mut self) -> &mut DirIndex {
        self.index();
        self.index.get_mut().expect("built just now")
    }

    /// Whether the index has been built.
    #[cfg(test)]
    fn is_built(&self) -> bool {
        self.index.get().is_some()
    }
}

impl std::ops::Deref for LazyIndex {
    type Target = DirIndex;

    fn deref(&self) -> &DirIndex {
        self.index()
    }
}

impl std::ops::DerefMut for LazyIndex {
    fn deref_mut(&mut self) -> &mut DirIndex {
        self.index_mut()
    }
}

impl DirIndex {
    /// Indexes a directory's data (whole blocks of `block_size`; see [`decode`]). Runs of
    /// damaged units are kept aside (never free, never an entry) for fsck to report and repair
    /// to clear.
    pub fn load(data: &[u8], block_size: u64, inode_count: u64) -> DirIndex {
        let mut d = DirIndex { size: data.len() as u64, block: block_size, ..Default::default() };
        decode(data, block_size, inode_count, |unit| match unit {
            Unit::Entry(name, e) => {
                if d.names.contains_key(name) {
                    return false;
                }
                let name: Arc<[u8]> = name.into();
                d.names.insert(Arc::clone(&name), e);
                d.by_pos.insert(e.pos, name);
                if e.dtype == DT_DIR {
                    d.subdirs += 1;
                }
                true
            }
            Unit::Free { pos, units } => {
                d.add_free(pos, units);
                true
            }
            Unit::Damaged { pos, units, what } => {
                d.damaged.insert(pos, (units, what));
                true
            }
        });
        d
    }

    /// Records `[pos, pos + units)` as free, merging it with free neighbours in its block.
    fn add_free(&mut self, mut pos: u64, mut units: u64) {
        if units == 0 {
            return;
        }
        let block_of = |p: u64| p / self.block.max(1);
        if let Some((&p, &u)) = self.free.range(..pos).next_back() {
            if p + u * DIRENT_UNIT == pos && block_of(p) == block_of(pos) {
                self.free.remove(&p);
                pos = p;
                units += u;
            }
        }
        let next = pos + units * DIRENT_UNIT;
        if let Some(&u) = self.free.get(&next) {
            if block_of(next) == block_of(pos) {
                self.free.remove(&next);
                units += u;
            }
        }
        self.free.insert(pos, units);
        let i = units as usize;
        if self.by_units.len() <= i {
            self.by_units.resize(i + 1, Vec::new());
        }
        self.by_units[i].push(pos);
    }

    /// The entry named `name`, if any.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.names.get(name)
    }

    /// Whether the directory has no entries (`.` and `..` are not stored) and no damaged units
    /// that may have been one.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.damaged.is_empty()
    }

    /// The runs of damaged units: `(position, units, what)`.
    pub fn damaged(&self) -> impl Iterator<Item = (u64, u64, &'static str)> + '_ {
        self.damaged.iter().map(|(&pos, &(units, what))| (pos, units, what))
    }

    /// Frees every damaged unit; returns each run's position and the zero bytes to log there.
    pub fn clear_damaged(&mut self) -> Vec<(u64, Vec<u8>)> {
        let runs = std::mem::take(&mut self.damaged);
        let mut out = Vec::with_capacity(runs.len());
        for (pos, (units, _)) in runs {
            self.add_free(pos, units);
            out.push((pos, vec![0; (units * DIRENT_UNIT) as usize]));
        }
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.names.len()
    }

    #[cfg(test)]
    fn size(&self) -> u64 {
        self.size
    }

    /// Entries that name directories.
    pub fn subdirs(&self) -> u64 {
        self.subdirs
    }

    /// Picks space for a name of `name_len` bytes without taking it yet.
    pub fn find_slot(&mut self, name_len: usize) -> Slot {
        let n = dirent_units(name_len) as usize;
        for units in n..self.by_units.len() {
            while let Some(&pos) = self.by_units[units].last() {
                if self.free.get(&pos) == Some(&(units as u64)) {
                    return Slot::At(pos);
                }
                self.by_units[units].pop();
            }
        }
        Slot::Grow(self.size)
    }

    /// Records a new entry at `slot` (from [`DirIndex::find_slot`] just before, under the same
    /// lock); `block_size` says how much a `Grow` adds. Returns the bytes to log at `pos`.
    pub fn insert(&mut self, name: &[u8], ino: u64, dtype: u8, slot: Slot, block_size: u64) -> (u64, Vec<u8>) {
        let n = dirent_units(name.len());
        let pos = match slot {
            Slot::At(pos) => {
                let units = self.free.remove(&pos).expect("slot came from find_slot");
                if units > n {
                    self.add_free(pos + n * DIRENT_UNIT, units - n);
                }
                pos
            }
            Slot::Grow(pos) => {
                self.block = block_size;
                self.size += block_size;
                self.add_free(pos + n * DIRENT_UNIT, block_size / DIRENT_UNIT - n);
                pos
            }
        };
        let e = Entry { ino, dtype, pos, units: n };
        let key: Arc<[u8]> = name.into();
        self.names.insert(Arc::clone(&key), e);
        self.by_pos.insert(pos, key);
        if dtype == DT_DIR {
            self.subdirs += 1;
        }
        (pos, encode(name, ino, dtype))
    }

    /// Forgets `name`; returns its entry and the zero bytes to log over it.
    pub fn remove(&mut self, name: &[u8]) -> Option<(Entry, Vec<u8>)> {
        let e = self.names.remove(name)?;
        self.by_pos.remove(&e.pos);
        self.add_free(e.pos, e.units);
        if e.dtype == DT_DIR {
            self.subdirs -= 1;
        }
        Some((e, vec![0; (e.units * DIRENT_UNIT) as usize]))
    }

    /// Points an existing entry at another inode (rename over a target); returns the new
    /// header bytes to log at the entry's position.
    pub fn retarget(&mut self, name: &[u8], ino: u64, dtype: u8) -> Option<(Entry, Vec<u8>)> {
        let e = self.names.get_mut(name)?;
        let was_dir = e.dtype == DT_DIR;
        e.ino = ino;
        e.dtype = dtype;
        let e = *e;
        match (was_dir, dtype == DT_DIR) {
            (true, false) => self.subdirs -= 1,
            (false, true) => self.subdirs += 1,
            _ => {}
        }
        let hdr = &encode(name, ino, dtype)[..DIRENT_HEADER];
        Some((e, hdr.to_vec()))
    }

    /// Entries in position order after byte position `after` (exclusive; `None` from the start).
    pub fn entries_after(&self, after: Option<u64>) -> impl Iterator<Item = (&[u8], &Entry)> {
        let range = match after {
            Some(p) => self.by_pos.range(p + 1..),
            None => self.by_pos.range(..),
        };
        range.map(|(_, name)| (&name[..], &self.names[name]))
    }
}

/// Checks the entry whose header `hdr` starts `data` (the rest of its block) and names inode
/// `ino`; returns its name, or what is wrong with it.
fn decode_entry<'a>(hdr: &RawDirent, data: &'a [u8], ino: u64, inode_count: u64) -> std::result::Result<&'a [u8], &'static str> {
    let name_len = hdr.name_len.get() as usize;
    let n = u64::from(hdr.units);
    if ino > inode_count {
        return Err("directory entry inode number");
    }
    if name_len == 0 || name_len > NAME_MAX || n != dirent_units(name_len) || n * DIRENT_UNIT > data.len() as u64 {
        return Err("directory entry length");
    }
    let name = &data[DIRENT_HEADER..DIRENT_HEADER + name_len];
    if check_name(name).is_err() {
        return Err("directory entry name");
    }
    if !crate::layout::mode::is_valid_type(u32::from(hdr.file_type) << 12) {
        return Err("directory entry type");
    }
    Ok(name)
}

/// DT_DIR as readdir reports it.
pub const DT_DIR: u8 = 4;

/// The on-media bytes of an entry, padded to whole units.
pub fn encode(name: &[u8], ino: u64, dtype: u8) -> Vec<u8> {
    let n = dirent_units(name.len());
    let hdr = RawDirent {
        ino: ino.into(),
        name_len: (name.len() as u16).into(),
        file_type: dtype,
        units: n as u8,
        reserved: 0.into(),
    };
    let mut v = Vec::with_capacity((n * DIRENT_UNIT) as usize);
    v.extend_from_slice(hdr.as_bytes());
    v.extend_from_slice(name);
    v.resize((n * DIRENT_UNIT) as usize, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name map hashed with SipHash under the process's key; now it is foldhash under a key
    /// of the index's own (as well as the process's): one name lands differently in two
    /// indexes, so an image cannot carry names chosen to collide.
    #[test]
    fn name_hash_is_keyed_per_index() {
        let (a, b) = (NameHasher::default(), NameHasher::default());
        assert_eq!(a.hash_one(b"name"), a.hash_one(b"name"));
        assert_ne!(a.hash_one(b"name"), b.hash_one(b"name"));
    }

    /// Readers share a directory's inode lock, so the first uses of a directory mount left
    /// unindexed can come at once: they must meet in one index, built once, after which the
    /// data it was built from is gone.
    #[test]
    fn racing_first_uses_of_a_lazy_index_meet_in_one() {
        let bs = 1024;
        let mut data = vec![0u8; 4 * bs as usize];
        for i in 0..100u64 {
            let e = encode(format!("entry-{i}").as_bytes(), i + 2, 8);
            let at = (i / 32 * bs + i % 32 * 32) as usize;
            data[at..at + e.len()].copy_from_slice(&e);
        }
        let lazy = LazyIndex::from_data(data.into(), bs, 1000);
        assert!(!lazy.is_built());
        let seen: Vec<usize> = std::thread::scope(|s| {
            let all: Vec<_> = (0..4).map(|_| s.spawn(|| std::ptr::from_ref(lazy.index()) as usize)).collect();
            all.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(seen.iter().all(|&p| p == seen[0]), "two indexes were built");
        assert!(lazy.is_built() && lazy.data.lock().unwrap().is_none());
        assert_eq!(lazy.len(), 100);
        assert_eq!(lazy.get(b"entry-77").map(|e| e.ino), Some(79));
    }

    /// Removed entries' units used to stay separate spans, so after short names were removed,
    /// long names could not use their space and every round of churn grew the directory.
    #[test]
    fn churn_reuses_merged_space_and_does_not_grow() {
        let bs = 4096;
        let mut d = DirIndex::default();
        let mut names = Vec::new();
        loop {
            let name = format!("s{}", names.len());
            let slot = d.find_slot(name.len());
            if matches!(slot, Slot::Grow(_)) && d.size() > 0 {
                break;
            }
            d.insert(name.as_bytes(), 2, 8, slot, bs);
            names.push(name);
        }
        for n in &names {
            d.remove(n.as_bytes()).unwrap();
        }
        // Fewer rounds under miri, which interprets every step.
        for round in 0..if cfg!(miri) { 5 } else { 50 } {
            let long: Vec<String> = (0..4).map(|i| format!("{round}-{i}-{}", "L".repeat(240))).collect();
            for n in &long {
                let slot = d.find_slot(n.len());
                d.insert(n.as_bytes(), 3, 8, slot, bs);
            }
            for n in &long {
                d.remove(n.as_bytes()).unwrap();
            }
            assert_eq!(d.size(), bs, "round {round} grew the directory");
        }
    }

    /// A damaged unit used to fail the whole directory (and so the mount); now the entries
    /// around it decode, the damaged units are kept aside, and clearing them frees them.
    #[test]
    fn damaged_units_are_kept_aside_and_the_rest_decodes() {
        let bs = 1024u64;
        let mut data = vec![0u8; bs as usize];
        let a = encode(b"a", 5, 8);
        let long = encode(&[b'l'; 40], 6, 8);
        let b = encode(b"b", 7, 4);
        data[..32].copy_from_slice(&a);
        data[32..96].copy_from_slice(&long);
        data[96..128].copy_from_slice(&b);
        data[128..160].copy_from_slice(&a); // a duplicate name
        data[32] = 0xff; // the long entry's inode number: out of the table
        let d = DirIndex::load(&data, bs, 100);
        let names: Vec<_> = d.entries_after(None).map(|(n, e)| (n.to_vec(), e.ino)).collect();
        assert_eq!(names, vec![(b"a".to_vec(), 5), (b"b".to_vec(), 7)]);
        assert_eq!(d.subdirs(), 1);
        let damaged: Vec<_> = d.damaged().collect();
        assert_eq!(
            damaged,
            vec![(32, 2, "directory entry inode number"), (128, 1, "duplicate directory entry")],
            "the long entry's name unit is no entry either"
        );
        let mut d = d;
        assert!(!d.is_empty());
        let mut cleared = d.clone();
        assert!(cleared.clear_damaged().iter().map(|(p, z)| (*p, z.len())).eq([(32, 64), (128, 32)]));
        assert_eq!(cleared.damaged().count(), 0);
        assert!(matches!(cleared.find_slot(40), Slot::At(32)), "the cleared units are free");
        assert!(!matches!(d.find_slot(40), Slot::At(32)), "damaged units are never handed out");
    }

    #[test]
    fn insert_remove_reuse_and_reload() {
        let bs = 1024;
        let mut d = DirIndex::default();
        let mut data = vec![0u8; 0];
        let n: u32 = if cfg!(miri) { 60 } else { 200 };
        for i in 0..n {
            let name = format!("file-{i}-{}", "x".repeat((i % 50) as usize));
            let slot = d.find_slot(name.len());
            if let Slot::Grow(_) = slot {
                data.resize(data.len() + bs as usize, 0);
            }
            let (pos, bytes) = d.insert(name.as_bytes(), u64::from(i) + 2, 8, slot, bs);
            assert_eq!(pos / bs, (pos + bytes.len() as u64 - 1) / bs, "entry crosses a block");
            data[pos as usize..pos as usize + bytes.len()].copy_from_slice(&bytes);
        }
        for i in (0..n).step_by(3) {
            let name = format!("file-{i}-{}", "x".repeat((i % 50) as usize));
            let (e, z) = d.remove(name.as_bytes()).unwrap();
            data[e.pos as usize..e.pos as usize + z.len()].copy_from_slice(&z);
        }
        let size_before = d.size();
        let slot = d.find_slot(5);
        assert!(matches!(slot, Slot::At(_)), "freed space is reused");
        let (pos, bytes) = d.insert(b"again", 999, 8, slot, bs);
        data[pos as usize..pos as usize + bytes.len()].copy_from_slice(&bytes);
        assert_eq!(d.size(), size_before);
        assert_eq!(data.len() as u64, d.size());
        let back = DirIndex::load(&data, bs, 1000);
        assert_eq!(back.len(), d.len());
        assert_eq!(back.get(b"again").unwrap().ino, 999);
        let names: Vec<_> = d.entries_after(None).map(|(n, _)| n.to_vec()).collect();
        let back_names: Vec<_> = back.entries_after(None).map(|(n, _)| n.to_vec()).collect();
        assert_eq!(names, back_names);
    }
}
