//! Extent maps: which device blocks back which file blocks, and whether they hold data yet.
//!
//! An extent is `(logical, physical, len, state)`. `Unwritten` extents own their blocks but read
//! as zeros. On the medium an inode holds five extent slots and chains overflow blocks of more;
//! slots are an unordered set (an all-zero slot is empty). In memory the extents are a sorted
//! vector, each remembering its slot, and every change is logged into the caller's transaction
//! as rewrites of 24-byte slots. Adjacent extents of one state that are contiguous on the device
//! are merged.

use zerocopy::IntoBytes;

use crate::alloc::Run;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::journal::Tx;
use crate::layout::{
    off, Geometry, RawExtent, RawExtentBlockHeader, RawInode, EXTENT_BLOCK_HEADER, EXTENT_BLOCK_MAGIC,
    EXTENT_BLOCK_NEXT_OFF, EXTENT_IN_USE, EXTENT_SIZE, EXTENT_UNWRITTEN, INLINE_EXTENTS, INODE_EXTENTS_OFF,
};

/// Longest extent one slot can describe.
const MAX_EXTENT_BLOCKS: u64 = u32::MAX as u64;

/// Whether an extent's blocks hold data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The blocks hold the file's bytes.
    Written,
    /// The blocks are allocated but read as zeros (preallocated, or zeroed by a zero range).
    Unwritten,
}

/// A run of file blocks backed by a run of device blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First file block.
    pub logical: u64,
    /// First device block.
    pub physical: u64,
    /// Length in blocks.
    pub len: u64,
    /// Whether the blocks hold data yet.
    pub state: State,
}

impl Extent {
    /// The file block just past the extent.
    pub fn end(&self) -> u64 {
        self.logical + self.len
    }

    /// The device blocks it covers.
    pub fn run(&self) -> Run {
        Run { start: self.physical, len: self.len }
    }

    fn raw(&self) -> RawExtent {
        let flags = EXTENT_IN_USE | if self.state == State::Unwritten { EXTENT_UNWRITTEN } else { 0 };
        RawExtent {
            logical: self.logical.into(),
            physical: self.physical.into(),
            len: (self.len as u32).into(),
            flags: flags.into(),
        }
    }

    /// Checks a slot read from `at`; `None` for an empty slot.
    pub fn decode(raw: &RawExtent, at: u64, geo: &Geometry) -> Result<Option<Extent>> {
        if *raw == RawExtent::default() {
            return Ok(None);
        }
        let flags = raw.flags.get();
        if flags & EXTENT_IN_USE == 0 || flags & !(EXTENT_IN_USE | EXTENT_UNWRITTEN) != 0 {
            return Err(Error::Corrupt { what: "extent flags", at });
        }
        let len = u64::from(raw.len.get());
        if !geo.contains(raw.physical.get(), len) {
            return Err(Error::Corrupt { what: "extent device range", at });
        }
        if raw.logical.get().checked_add(len).is_none_or(|e| e > crate::MAX_FILE_SIZE / geo.block_size) {
            return Err(Error::Corrupt { what: "extent file range", at });
        }
        let state = if flags & EXTENT_UNWRITTEN != 0 { State::Unwritten } else { State::Written };
        Ok(Some(Extent { logical: raw.logical.get(), physical: raw.physical.get(), len, state }))
    }
}

/// A piece of a file range as the map sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// File blocks no extent backs: they read as zeros.
    Hole {
        /// First file block.
        logical: u64,
        /// Length in blocks.
        len: u64,
    },
    /// File blocks an extent backs (the part of it inside the range).
    Mapped(Extent),
}

/// The pieces of a block range: most ranges a call touches are one or two, kept without a heap
/// allocation.
pub type Pieces = smallvec::SmallVec<[Piece; 4]>;

/// Extents made for one call, kept without a heap allocation when few.
pub type Extents = smallvec::SmallVec<[Extent; 4]>;

/// One inode's extents in memory, sorted by file block, with the slots and overflow blocks
/// they live in on the medium.
#[derive(Debug, Clone, Default)]
pub struct ExtentMap {
    /// Sorted by `logical`, non-overlapping; each with the device offset of its slot.
    exts: Vec<(Extent, u64)>,
    /// Empty slots (device offsets).
    free_slots: Vec<u64>,
    /// Overflow blocks in chain order.
    blocks: Vec<u64>,
}

impl ExtentMap {
    /// The map of a fresh inode at `inode_off`: five empty inline slots.
    pub fn empty(inode_off: u64) -> ExtentMap {
        let free_slots =
            (0..INLINE_EXTENTS as u64).rev().map(|i| inode_off + INODE_EXTENTS_OFF + i * EXTENT_SIZE).collect();
        ExtentMap { exts: Vec::new(), free_slots, blocks: Vec::new() }
    }

    /// Loads and checks the map of the inode at `inode_off`.
    pub fn load(dev: &Device, geo: &Geometry, raw: &RawInode, ino: u64, inode_off: u64) -> Result<ExtentMap> {
        let mut map = ExtentMap { free_slots: Vec::with_capacity(INLINE_EXTENTS), ..Default::default() };
        for (i, r) in raw.extents.iter().enumerate() {
            map.load_slot(r, inode_off + INODE_EXTENTS_OFF + i as u64 * EXTENT_SIZE, geo)?;
        }
        let mut next = raw.ext_next.get();
        let per = geo.extents_per_block();
        let mut chained = std::collections::HashSet::new();
        while next != 0 {
            if !geo.contains(next, 1) || map.blocks.len() as u64 >= geo.data_blocks || !chained.insert(next) {
                return Err(Error::Corrupt { what: "extent block chain", at: inode_off });
            }
            let at = geo.block_at(next);
            let hdr: RawExtentBlockHeader = dev.read_obj(at)?;
            if hdr.magic.get() != EXTENT_BLOCK_MAGIC {
                return Err(Error::Corrupt { what: "extent block magic", at });
            }
            if hdr.owner.get() != ino {
                return Err(Error::Corrupt { what: "extent block owner", at: at + off!(RawExtentBlockHeader, owner) });
            }
            map.blocks.push(next);
            let mut slots = vec![RawExtent::default(); per as usize];
            dev.read(at + EXTENT_BLOCK_HEADER, slots.as_mut_bytes())?;
            for (i, r) in slots.iter().enumerate() {
                map.load_slot(r, at + EXTENT_BLOCK_HEADER + i as u64 * EXTENT_SIZE, geo)?;
            }
            next = hdr.next.get();
        }
        // Blocks owned twice are found once every map is loaded; until then nothing may size
        // memory by what the map claims, and no map can own more than the data area.
        let owned = map.exts.iter().fold(map.blocks.len() as u64, |n, (e, _)| n.saturating_add(e.len));
        if owned > geo.data_blocks {
            return Err(Error::Corrupt { what: "extent map size", at: inode_off });
        }
        map.exts.sort_unstable_by_key(|(e, _)| e.logical);
        for w in map.exts.windows(2) {
            if w[0].0.end() > w[1].0.logical {
                return Err(Error::Corrupt { what: "overlapping extents", at: w[1].1 });
            }
        }
        map.free_slots.reverse();
        Ok(map)
    }

    /// Every data-area block an inode slot that failed to decode might reference, read without
    /// trusting it: each nonempty extent slot's range clipped to the data area, and the overflow
    /// blocks its chain names (followed while they carry the block magic, each at most once).
    /// Mount keeps these out of use, so nothing a damaged inode may own is handed out before
    /// repair has cleared it.
    pub fn claimed_runs(dev: &Device, geo: &Geometry, raw: &RawInode) -> Vec<Run> {
        let clip = |runs: &mut Vec<Run>, r: &RawExtent| {
            let start = r.physical.get().max(geo.data_start);
            let end = r.physical.get().saturating_add(u64::from(r.len.get())).min(geo.data_end());
            if *r != RawExtent::default() && start < end {
                runs.push(Run { start, len: end - start });
            }
        };
        let mut runs = Vec::new();
        raw.extents.iter().for_each(|r| clip(&mut runs, r));
        let mut next = raw.ext_next.get();
        let mut chained = std::collections::HashSet::new();
        let mut slots = vec![RawExtent::default(); geo.extents_per_block() as usize];
        let mut merged_len = 0;
        while geo.contains(next, 1) && chained.insert(next) {
            runs.push(Run { start: next, len: 1 });
            let at = geo.block_at(next);
            let Ok(hdr) = dev.read_obj::<RawExtentBlockHeader>(at) else { break };
            if hdr.magic.get() != EXTENT_BLOCK_MAGIC || dev.read(at + EXTENT_BLOCK_HEADER, slots.as_mut_bytes()).is_err() {
                break;
            }
            slots.iter().for_each(|r| clip(&mut runs, r));
            // Disjoint runs in the data area number at most half its blocks: merging whenever
            // the list doubles bounds it by the device.
            if runs.len() > 2 * merged_len + 1024 {
                runs = crate::alloc::merged(runs);
                merged_len = runs.len();
            }
            next = hdr.next.get();
        }
        crate::alloc::merged(runs)
    }

    fn load_slot(&mut self, raw: &RawExtent, at: u64, geo: &Geometry) -> Result<()> {
        match Extent::decode(raw, at, geo)? {
            Some(e) => self.exts.push((e, at)),
            None => self.free_slots.push(at),
        }
        Ok(())
    }

    /// The first overflow block, stored in the inode.
    pub fn first_block(&self) -> u64 {
        self.blocks.first().copied().unwrap_or(0)
    }

    /// The extents in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Extent> {
        self.exts.iter().map(|(e, _)| e)
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.exts.len()
    }

    /// Whether the file has no extents (all hole).
    pub fn is_empty(&self) -> bool {
        self.exts.is_empty()
    }

    /// Blocks the map owns: extents plus overflow blocks.
    pub fn owned_blocks(&self) -> u64 {
        self.exts.iter().map(|(e, _)| e.len).sum::<u64>() + self.blocks.len() as u64
    }

    /// Every run the map owns, for rebuilding free space.
    pub fn owned_runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.exts
            .iter()
            .map(|(e, _)| Run { start: e.physical, len: e.len })
            .chain(self.blocks.iter().map(|&b| Run { start: b, len: 1 }))
    }

    /// Index of the first extent ending after `lblk`.
    fn first_after(&self, lblk: u64) -> usize {
        self.exts.partition_point(|(e, _)| e.end() <= lblk)
    }

    /// The last extent, if any.
    pub fn last(&self) -> Option<&Extent> {
        self.exts.last().map(|(e, _)| e)
    }

    /// Where to put block `lblk` so it continues the extent before it on the device.
    pub fn goal_for(&self, lblk: u64) -> Option<u64> {
        let i = self.first_after(lblk);
        let (e, _) = self.exts.get(i.checked_sub(1)?)?;
        Some((e.physical + e.len).saturating_add(lblk - e.end()))
    }

    /// Describes `[lblk, lblk+count)` as holes and (clipped) extents, in order.
    pub fn pieces(&self, lblk: u64, count: u64) -> Pieces {
        let end = lblk + count;
        let mut out = Pieces::new();
        let mut at = lblk;
        for (e, _) in &self.exts[self.first_after(lblk)..] {
            if at >= end || e.logical >= end {
                break;
            }
            if e.logical > at {
                out.push(Piece::Hole { logical: at, len: e.logical - at });
                at = e.logical;
            }
            let skip = at - e.logical;
            let len = (e.end() - at).min(end - at);
            out.push(Piece::Mapped(Extent { logical: at, physical: e.physical + skip, len, state: e.state }));
            at += len;
        }
        if at < end {
            out.push(Piece::Hole { logical: at, len: end - at });
        }
        out
    }

    /// Makes sure `needed` empty slots exist, each insert or split taking at most one.
    /// Overflow blocks come from `alloc_blocks(n)` (all or nothing); each is written (header,
    /// zero slots) as content of `tx`, which links it. A failure changes nothing in the map (the
    /// caller gives back what `alloc_blocks` gave). Returns the blocks taken.
    pub fn reserve_slots(
        &mut self,
        needed: usize,
        dev: &Device,
        geo: &Geometry,
        ino: u64,
        tx: &mut Tx,
        alloc_blocks: &mut dyn FnMut(u64) -> Result<Vec<u64>>,
    ) -> Result<Vec<u64>> {
        let missing = needed.saturating_sub(self.free_slots.len()) as u64;
        if missing == 0 {
            return Ok(Vec::new());
        }
        let per = geo.extents_per_block();
        let taken = alloc_blocks(missing.div_ceil(per))?;
        for &blk in &taken {
            let at = geo.block_at(blk);
            tx.content_zero(dev, at, geo.block_size)?;
            let hdr = RawExtentBlockHeader {
                magic: EXTENT_BLOCK_MAGIC.into(),
                reserved0: 0.into(),
                owner: ino.into(),
                next: 0.into(),
                reserved: 0.into(),
            };
            tx.content_write(dev, at, hdr.as_bytes())?;
        }
        // Nothing changes in the map until every block is written: a failure links none.
        for &blk in &taken {
            let at = geo.block_at(blk);
            // The first block hangs off the inode's ext_next, which the caller logs with the
            // attributes; later ones off the previous block's `next`.
            if let Some(&prev) = self.blocks.last() {
                tx.put(geo.block_at(prev) + EXTENT_BLOCK_NEXT_OFF, &blk.to_le_bytes());
            }
            self.blocks.push(blk);
            self.free_slots.extend((0..per).rev().map(|i| at + EXTENT_BLOCK_HEADER + i * EXTENT_SIZE));
        }
        Ok(taken)
    }

    /// Slots a [`ExtentMap::remove_range`] plus `inserts` inserts can consume at worst.
    pub fn slots_needed(inserts: usize) -> usize {
        inserts + 1
    }

    /// Removes `[lblk, lblk+count)` from the map, splitting extents at the edges; returns the
    /// removed pieces (device runs the caller frees or reuses).
    pub fn remove_range(&mut self, lblk: u64, count: u64, tx: &mut Tx) -> Result<Vec<Extent>> {
        let end = lblk + count;
        let mut removed = Vec::new();
        let mut i = self.first_after(lblk);
        // Extents removed whole lie side by side (only the first and the last can keep a
        // part): they leave the list in one drain, not one shift of the rest each.
        let mut gone = i..i;
        while i < self.exts.len() && self.exts[i].0.logical < end {
            let (e, slot) = self.exts[i];
            let cut_start = e.logical.max(lblk);
            let cut_end = e.end().min(end);
            removed.push(Extent {
                logical: cut_start,
                physical: e.physical + (cut_start - e.logical),
                len: cut_end - cut_start,
                state: e.state,
            });
            let head = (e.logical < cut_start).then(|| Extent { len: cut_start - e.logical, ..e });
            let tail = (cut_end < e.end()).then(|| Extent {
                logical: cut_end,
                physical: e.physical + (cut_end - e.logical),
                len: e.end() - cut_end,
                state: e.state,
            });
            match (head, tail) {
                (Some(h), Some(t)) => {
                    self.set(i, h, tx);
                    let s = self.take_slot()?;
                    tx.put_obj(s, &t.raw());
                    self.exts.insert(i + 1, (t, s));
                    i += 2;
                }
                (Some(h), None) => {
                    self.set(i, h, tx);
                    i += 1;
                }
                (None, Some(t)) => {
                    self.set(i, t, tx);
                    i += 1;
                }
                (None, None) => {
                    tx.put_obj(slot, &RawExtent::default());
                    self.free_slots.push(slot);
                    if gone.is_empty() {
                        gone.start = i;
                    }
                    gone.end = i + 1;
                    i += 1;
                }
            }
        }
        self.exts.drain(gone);
        Ok(removed)
    }

    /// Inserts `e` into a range the map does not cover, merging with contiguous neighbours.
    pub fn insert(&mut self, e: Extent, tx: &mut Tx) -> Result<()> {
        let i = self.first_after(e.logical);
        debug_assert!(i == self.exts.len() || self.exts[i].0.logical >= e.end(), "insert over a mapped range");
        let joins = |a: &Extent, b: &Extent| {
            a.end() == b.logical
                && a.physical + a.len == b.physical
                && a.state == b.state
                && a.len + b.len <= MAX_EXTENT_BLOCKS
        };
        let prev = i.checked_sub(1).filter(|&p| joins(&self.exts[p].0, &e));
        let next = (i < self.exts.len() && joins(&e, &self.exts[i].0)).then_some(i);
        match (prev, next) {
            (Some(p), Some(n)) if self.exts[p].0.len + e.len + self.exts[n].0.len <= MAX_EXTENT_BLOCKS => {
                let merged = Extent { len: self.exts[p].0.len + e.len + self.exts[n].0.len, ..self.exts[p].0 };
                self.set(p, merged, tx);
                let (_, slot) = self.exts.remove(n);
                tx.put_obj(slot, &RawExtent::default());
                self.free_slots.push(slot);
            }
            (Some(p), _) => {
                let merged = Extent { len: self.exts[p].0.len + e.len, ..self.exts[p].0 };
                self.set(p, merged, tx);
            }
            (None, Some(n)) => {
                let merged = Extent { len: e.len + self.exts[n].0.len, ..e };
                self.set(n, merged, tx);
            }
            (None, None) => {
                let s = self.take_slot()?;
                tx.put_obj(s, &e.raw());
                self.exts.insert(i, (e, s));
            }
        }
        Ok(())
    }

    fn set(&mut self, i: usize, e: Extent, tx: &mut Tx) {
        self.exts[i].0 = e;
        tx.put_obj(self.exts[i].1, &e.raw());
    }

    fn take_slot(&mut self) -> Result<u64> {
        // Callers reserve first; running dry is a bug in the caller's count, reported as such.
        self.free_slots.pop().ok_or(Error::InvalidArgument("extent slots not reserved"))
    }

    /// Splits runs longer than one slot can hold into extents of at most `MAX_EXTENT_BLOCKS`.
    pub fn extents_for(logical: u64, runs: &[Run], state: State) -> Extents {
        let mut out = Extents::new();
        let mut l = logical;
        for r in runs {
            let mut done = 0;
            while done < r.len {
                let n = (r.len - done).min(MAX_EXTENT_BLOCKS);
                out.push(Extent { logical: l, physical: r.start + done, len: n, state });
                l += n;
                done += n;
            }
        }
        out
    }

    /// Overflow blocks (freed with the inode).
    #[cfg(any(test, feature = "crash-test"))]
    pub fn overflow_blocks(&self) -> &[u64] {
        &self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Device, Geometry, ExtentMap) {
        let g = Geometry::plan(8 << 20, 4096, 64, 64 << 10).unwrap();
        let d = Device::heap(8 << 20).unwrap();
        (d, g, ExtentMap::empty(g.inode_at(2)))
    }

    fn ext(l: u64, p: u64, n: u64) -> Extent {
        Extent { logical: l, physical: p, len: n, state: State::Written }
    }

    #[test]
    fn contiguous_inserts_merge() {
        let (_d, g, mut m) = setup();
        let s = g.data_start;
        let mut tx = Tx::new();
        m.insert(ext(0, s, 2), &mut tx).unwrap();
        m.insert(ext(4, s + 4, 2), &mut tx).unwrap();
        m.insert(ext(2, s + 2, 2), &mut tx).unwrap();
        assert_eq!(m.iter().copied().collect::<Vec<_>>(), vec![ext(0, s, 6)]);
        // Not contiguous on the device: no merge.
        m.insert(ext(6, s + 100, 1), &mut tx).unwrap();
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn punching_the_middle_splits_in_two() {
        let (_d, g, mut m) = setup();
        let s = g.data_start;
        let mut tx = Tx::new();
        m.insert(ext(0, s, 10), &mut tx).unwrap();
        let removed = m.remove_range(3, 4, &mut tx).unwrap();
        assert_eq!(removed, vec![ext(3, s + 3, 4)]);
        assert_eq!(m.iter().copied().collect::<Vec<_>>(), vec![ext(0, s, 3), ext(7, s + 7, 3)]);
        assert_eq!(
            m.pieces(0, 12)[..],
            [
                Piece::Mapped(ext(0, s, 3)),
                Piece::Hole { logical: 3, len: 4 },
                Piece::Mapped(ext(7, s + 7, 3)),
                Piece::Hole { logical: 10, len: 2 }
            ]
        );
    }

    /// A range over the end of one extent, several whole ones and the start of another keeps
    /// the two parts, drops the whole ones and gives back exactly their slots.
    #[test]
    fn a_range_over_many_extents_keeps_the_edges_and_frees_the_middle() {
        let (d, g, mut m) = setup();
        let s = g.data_start;
        let mut tx = Tx::new();
        let mut next = s + 1000;
        let mut alloc = |n: u64| {
            next += n;
            Ok((next - n..next).collect())
        };
        m.reserve_slots(16, &d, &g, 2, &mut tx, &mut alloc).unwrap();
        // Ten 2-block extents, each a block apart on the device so none merge.
        for k in 0..10 {
            m.insert(ext(2 * k, s + 3 * k, 2), &mut tx).unwrap();
        }
        let free_before = m.free_slots.len();
        let removed = m.remove_range(3, 14, &mut tx).unwrap();
        let mut want = vec![ext(3, s + 4, 1)];
        want.extend((2..8).map(|k| ext(2 * k, s + 3 * k, 2)));
        want.push(ext(16, s + 24, 1));
        assert_eq!(removed, want);
        let left: Vec<Extent> = m.iter().copied().collect();
        let mut kept = vec![ext(0, s, 2), ext(2, s + 3, 1), ext(17, s + 25, 1)];
        kept.extend((9..10).map(|k| ext(2 * k, s + 3 * k, 2)));
        assert_eq!(left, kept);
        assert_eq!(m.free_slots.len(), free_before + 6);
    }

    #[test]
    fn overflow_blocks_chain_and_reload() {
        let (d, g, mut m) = setup();
        let ino_off = g.inode_at(2);
        let mut tx = Tx::new();
        let mut next = g.data_start + 1000;
        let mut alloc = |n: u64| {
            next += n;
            Ok((next - n..next).collect())
        };
        m.reserve_slots(400, &d, &g, 2, &mut tx, &mut alloc).unwrap();
        assert_eq!(m.overflow_blocks().len(), 3);
        for i in 0..400 {
            m.insert(ext(i * 2, g.data_start + i * 2, 1), &mut tx).unwrap();
        }
        for (off, data) in tx.entries() {
            d.write(off, data).unwrap();
        }
        let mut raw: RawInode = d.read_obj(ino_off).unwrap();
        raw.ext_next = m.first_block().into();
        d.write_obj(ino_off, &raw).unwrap();
        let raw: RawInode = d.read_obj(ino_off).unwrap();
        let back = ExtentMap::load(&d, &g, &raw, 2, ino_off).unwrap();
        assert_eq!(back.iter().copied().collect::<Vec<_>>(), m.iter().copied().collect::<Vec<_>>());
    }
}
