//! Free space: an in-memory set of free block runs, rebuilt at mount from the extent maps.
//!
//! Nothing about free space is stored on the medium, so allocation and freeing write nothing.
//! One rule keeps that safe: a freed block is not handed out again until the journal checkpoint
//! has passed the transaction that freed it, because until then recovery may replay older
//! records that write into it (a directory or extent block that used to live there).

use std::collections::{BTreeMap, VecDeque};

use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::layout::Geometry;

/// A run of device blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First block number.
    pub start: u64,
    /// Length in blocks.
    pub len: u64,
}

/// Runs of blocks, as one allocation returns them: most are one run, kept without a heap
/// allocation.
pub type Runs = SmallVec<[Run; 4]>;

/// Runs allocated together for several holes, handed out front first.
#[derive(Debug)]
pub struct RunQueue {
    runs: Runs,
    /// Runs before this one are used up.
    at: usize,
}

impl RunQueue {
    /// A queue of `runs`, in order.
    pub fn new(runs: &[Run]) -> RunQueue {
        RunQueue { runs: Runs::from_slice(runs), at: 0 }
    }

    /// Whether every block was taken.
    pub fn is_empty(&self) -> bool {
        self.runs[self.at..].iter().all(|r| r.len == 0)
    }

    /// Takes the first `len` blocks left, as the runs that back one hole, in order.
    pub fn take(&mut self, mut len: u64) -> Runs {
        let mut out = Runs::new();
        while len > 0 {
            let r = self.runs.get_mut(self.at).expect("allocated as many blocks as the holes hold");
            let n = r.len.min(len);
            out.push(Run { start: r.start, len: n });
            r.start += n;
            r.len -= n;
            if r.len == 0 {
                self.at += 1;
            }
            len -= n;
        }
        out
    }
}

/// How many extents carving `runs` into holes of `hole_lens` (in order) makes.
pub fn carved_extents(runs: &[Run], hole_lens: impl Iterator<Item = u64>) -> usize {
    let mut queue = RunQueue::new(runs);
    hole_lens.map(|len| queue.take(len).len()).sum()
}

/// The free block runs of the data area, and the runs freed but not yet reusable (see the
/// module docs).
#[derive(Debug)]
pub struct Allocator {
    /// start -> length, coalesced, non-overlapping.
    free: BTreeMap<u64, u64>,
    free_blocks: u64,
    /// Freed runs waiting for the checkpoint to pass the given journal position.
    pending: VecDeque<(u64, Run)>,
    pending_blocks: u64,
    /// Blocks that damaged inodes may reference (sorted, merged): never free while mounted,
    /// even when a decodable owner frees them.
    held: Vec<Run>,
}

impl Allocator {
    /// Builds the free set as the complement of `used` and `held` within the data area.
    /// Overlapping runs in `used` are corruption (a block owned twice); the error names the
    /// block. `held` (what damaged inodes may reference) may overlap anything; it stays out of
    /// use until the next mount.
    pub fn from_used(geo: &Geometry, mut used: Vec<Run>, held: Vec<Run>) -> Result<Allocator> {
        used.sort_unstable_by_key(|r| r.start);
        let mut at = geo.data_start;
        for r in &used {
            if r.start < at {
                return Err(Error::Corrupt { what: "block owned twice", at: geo.block_at(r.start) });
            }
            at = r.start + r.len;
        }
        let held = merged(held);
        used.extend_from_slice(&held);
        let mut free = BTreeMap::new();
        let mut at = geo.data_start;
        let mut free_blocks = 0;
        for r in merged(used) {
            if r.start > at {
                free.insert(at, r.start - at);
                free_blocks += r.start - at;
            }
            at = r.start + r.len;
        }
        if at < geo.data_end() {
            free.insert(at, geo.data_end() - at);
            free_blocks += geo.data_end() - at;
        }
        Ok(Allocator { free, free_blocks, pending: VecDeque::new(), pending_blocks: 0, held })
    }

    /// The runs held for damaged inodes (sorted, disjoint).
    pub fn held(&self) -> &[Run] {
        &self.held
    }

    /// Stops holding blocks for damaged inodes (repair has cleared them all): what no inode
    /// owns (`owned`) is freed at journal position `pos`.
    pub fn release_held(&mut self, pos: u64, owned: Vec<Run>) {
        let held = std::mem::take(&mut self.held);
        self.free_after(pos, subtract(held, owned));
    }

    /// The parts of `runs` that are not held.
    fn unheld(&self, runs: impl IntoIterator<Item = Run>) -> Vec<Run> {
        let runs: Vec<Run> = runs.into_iter().collect();
        if self.held.is_empty() {
            return runs;
        }
        subtract(runs, self.held.clone())
    }

    /// Blocks free now.
    #[cfg(test)]
    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    /// Blocks free now or once the checkpoint passes their free.
    pub fn available_blocks(&self) -> u64 {
        self.free_blocks + self.pending_blocks
    }

    /// Whether freed blocks wait for a checkpoint (a caller short of space checkpoints, then
    /// calls [`Allocator::release`]).
    pub fn has_pending(&self) -> bool {
        self.pending_blocks > 0
    }

    /// Allocates exactly `want` blocks in as few runs as it can find, starting at `goal` when
    /// it is free (the block after the file's last one, for sequential growth) and otherwise
    /// as near after it as a run that fits allows. All or nothing.
    pub fn alloc(&mut self, goal: u64, want: u64) -> Result<Runs> {
        if want == 0 {
            return Ok(Runs::new());
        }
        if want > self.free_blocks {
            return Err(Error::NoSpace);
        }
        let mut out = Runs::new();
        if let Some((&s, &l)) = self.free.range(..=goal).next_back() {
            if goal < s + l {
                out.push(self.take(s, l, goal, want.min(s + l - goal)));
            }
        }
        let mut need = want - out.iter().map(|r| r.len).sum::<u64>();
        if need > 0 {
            // One run that fits the rest whole, searching forward from the goal, else pieces.
            let fit =
                self.free.range(goal..).chain(self.free.range(..goal)).find(|(_, &l)| l >= need).map(|(&s, &l)| (s, l));
            if let Some((s, l)) = fit {
                out.push(self.take(s, l, s, need));
                need = 0;
            }
        }
        while need > 0 {
            let (&s, &l) = self.free.iter().next_back().expect("free_blocks covers the request");
            let n = need.min(l);
            out.push(self.take(s, l, s + l - n, n));
            need -= n;
        }
        Ok(out)
    }

    /// Allocates one run of `want` blocks starting at a multiple of `align` blocks, if any.
    pub fn alloc_aligned(&mut self, want: u64, align: u64) -> Option<Run> {
        let (s, l, at) = self.free.iter().find_map(|(&s, &l)| {
            let at = s.next_multiple_of(align);
            (at + want <= s + l).then_some((s, l, at))
        })?;
        Some(self.take(s, l, at, want))
    }

    /// Removes `[at, at+n)` from the free run `(s, l)` that contains it.
    fn take(&mut self, s: u64, l: u64, at: u64, n: u64) -> Run {
        debug_assert!(at >= s && at + n <= s + l);
        self.free.remove(&s);
        if at > s {
            self.free.insert(s, at - s);
        }
        if at + n < s + l {
            self.free.insert(at + n, s + l - at - n);
        }
        self.free_blocks -= n;
        Run { start: at, len: n }
    }

    /// Frees runs that the journal position `pos` made unreachable; they are reusable once the
    /// checkpoint reaches `pos`.
    pub fn free_after(&mut self, pos: u64, runs: impl IntoIterator<Item = Run>) {
        for r in self.unheld(runs) {
            self.pending_blocks += r.len;
            self.pending.push_back((pos, r));
        }
    }

    /// Returns runs that were allocated but never linked by a committed transaction.
    pub fn unreserve(&mut self, runs: impl IntoIterator<Item = Run>) {
        for r in self.unheld(runs) {
            self.insert_free(r);
        }
    }

    /// Makes runs freed at or before checkpoint position `checkpoint` reusable.
    pub fn release(&mut self, checkpoint: u64) {
        while let Some(&(pos, r)) = self.pending.front() {
            if pos > checkpoint {
                break;
            }
            self.pending.pop_front();
            self.pending_blocks -= r.len;
            self.insert_free(r);
        }
    }

    fn insert_free(&mut self, r: Run) {
        if r.len == 0 {
            return;
        }
        let mut start = r.start;
        let mut len = r.len;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            debug_assert!(ps + pl <= start, "double free of block {start}");
            if ps + pl == start {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(r.start + r.len)) {
            self.free.remove(&(r.start + r.len));
            len += nl;
        }
        self.free.insert(start, len);
        self.free_blocks += r.len;
    }
}

/// The blocks of `a` that are not in `b`, as sorted disjoint runs (either may hold runs that
/// overlap or repeat).
pub fn subtract(a: Vec<Run>, b: Vec<Run>) -> Vec<Run> {
    let (a, b) = (merged(a), merged(b));
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        let (mut s, t) = (r.start, r.start + r.len);
        while j < b.len() && b[j].start + b[j].len <= s {
            j += 1;
        }
        let mut k = j;
        while s < t && k < b.len() && b[k].start < t {
            if b[k].start > s {
                out.push(Run { start: s, len: b[k].start - s });
            }
            s = s.max(b[k].start + b[k].len);
            k += 1;
        }
        if s < t {
            out.push(Run { start: s, len: t - s });
        }
    }
    out
}

/// `runs` sorted, with overlapping and touching runs joined.
pub fn merged(mut runs: Vec<Run>) -> Vec<Run> {
    runs.retain(|r| r.len > 0);
    runs.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Run> = Vec::with_capacity(runs.len());
    for r in runs {
        match out.last_mut() {
            Some(last) if r.start <= last.start + last.len => {
                last.len = last.len.max(r.start + r.len - last.start);
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry::plan(8 << 20, 4096, 64, 64 << 10).unwrap()
    }

    #[test]
    fn allocates_contiguously_at_the_goal_and_frees_after_checkpoint() {
        let g = geo();
        let mut a = Allocator::from_used(&g, vec![], vec![]).unwrap();
        let total = a.free_blocks();
        let r1 = a.alloc(g.data_start, 10).unwrap();
        assert_eq!(r1.len(), 1);
        let r2 = a.alloc(r1[0].start + 10, 5).unwrap();
        assert_eq!(r2[..], [Run { start: r1[0].start + 10, len: 5 }]);
        a.free_after(100, r1.clone());
        assert_eq!(a.free_blocks(), total - 15);
        a.release(99);
        assert_eq!(a.free_blocks(), total - 15);
        a.release(100);
        assert_eq!(a.free_blocks(), total - 5);
        assert!(matches!(a.alloc(g.data_start, total), Err(Error::NoSpace)));
        let all = a.alloc(g.data_start + 100, total - 5).unwrap();
        assert_eq!(all.iter().map(|r| r.len).sum::<u64>(), total - 5);
        assert_eq!(a.free_blocks(), 0);
    }

    #[test]
    fn overlapping_owners_are_corruption() {
        let g = geo();
        let s = g.data_start;
        let used = vec![Run { start: s, len: 4 }, Run { start: s + 3, len: 2 }];
        assert!(matches!(Allocator::from_used(&g, used, vec![]), Err(Error::Corrupt { .. })));
    }

    /// Blocks a damaged inode may reference are never free, even when a decodable owner frees
    /// them, until repair releases them (then only those no inode owns).
    #[test]
    fn held_blocks_stay_out_of_use_until_released() {
        let g = geo();
        let s = g.data_start;
        let owned = Run { start: s, len: 4 };
        let held = vec![Run { start: s + 2, len: 6 }, Run { start: s + 20, len: 1 }];
        let mut a = Allocator::from_used(&g, vec![owned], held).unwrap();
        let total = g.data_blocks;
        assert_eq!(a.free_blocks(), total - 4 - 4 - 1);
        a.free_after(10, vec![owned]);
        a.release(10);
        assert_eq!(a.free_blocks(), total - 6 - 1, "the held half of the freed run stays out");
        let all = a.alloc(s, a.free_blocks()).unwrap();
        assert!(all.iter().all(|r| r.start + r.len <= s + 2 || r.start >= s + 8 && (r.start > s + 20 || r.start + r.len <= s + 20)));
        a.release_held(11, vec![Run { start: s + 20, len: 1 }]);
        a.release(11);
        assert_eq!(a.free_blocks(), 6, "released, but for the block an inode owns");
    }

    #[test]
    fn aligned_runs_start_on_the_alignment() {
        let g = geo();
        let mut a = Allocator::from_used(&g, vec![Run { start: g.data_start, len: 1 }], vec![]).unwrap();
        let r = a.alloc_aligned(8, 512).unwrap();
        assert_eq!(r.start % 512, 0);
        assert_eq!(r.len, 8);
    }

    #[test]
    fn subtract_keeps_what_only_the_first_set_owns() {
        let r = |start, len| Run { start, len };
        assert_eq!(
            subtract(vec![r(10, 10), r(15, 10), r(40, 1)], vec![r(12, 2), r(18, 3), r(40, 1)]),
            vec![r(10, 2), r(14, 4), r(21, 4)]
        );
        assert_eq!(subtract(vec![r(5, 5)], vec![]), vec![r(5, 5)]);
        assert_eq!(subtract(vec![r(5, 5)], vec![r(0, 100)]), vec![]);
    }
}
