//! Blocks that direct clients map into their address space (DESIGN.md "Mappings served from the
//! image"). A client maps a file's written blocks straight from the image, and no request
//! reaches the server when it unmaps them, so a process's mappings of a file hold an open file
//! of its own (the kernel releases it once they are all gone). The blocks they map are
//! *pinned* to that open file: when the file frees one, the block waits here until
//! no open file pins it any more, so a mapping never shows or stores into another file's data.

use std::collections::{BTreeMap, HashMap};

use crate::alloc::{merged, Run};

/// The pins of one mount: the blocks each open file pinned, and the freed blocks they hold.
/// A program may keep thousands of mappings (fsx never unmaps its mapped reads), so each file's
/// pins are counted per block range and its held blocks kept by start: a free or a release
/// looks only at the ranges it touches.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    /// Open file (handle) → the file it pinned blocks of, and the blocks.
    by_owner: HashMap<u64, (u64, Vec<Run>)>,
    /// Per file: how many open files pin each block.
    counts: HashMap<u64, Coverage>,
    /// Per file: the blocks freed while pinned (disjoint), by first block: their length and the
    /// journal position of the commit that freed them.
    held: HashMap<u64, BTreeMap<u64, (u64, u64)>>,
}

/// How many pins cover each block, as a step function: from each key on (to the next), the
/// count it maps to; 0 before the first key.
#[derive(Debug, Default)]
struct Coverage(BTreeMap<u64, u32>);

impl Coverage {
    fn at(&self, block: u64) -> u32 {
        self.0.range(..=block).next_back().map_or(0, |(_, &c)| c)
    }

    fn split(&mut self, block: u64) {
        let c = self.at(block);
        self.0.entry(block).or_insert(c);
    }

    /// Adds `delta` to the count of every block of `r`.
    fn add(&mut self, r: Run, delta: i32) {
        let (s, t) = (r.start, r.start + r.len);
        self.split(s);
        self.split(t);
        for (_, c) in self.0.range_mut(s..t) {
            *c = c.saturating_add_signed(delta);
        }
        // Keys that no longer change the count go.
        let keys: Vec<u64> = self.0.range(..=t).rev().take_while(|&(&k, _)| k >= s).map(|(&k, _)| k).collect();
        for k in keys {
            let before = self.0.range(..k).next_back().map_or(0, |(_, &c)| c);
            if self.0.get(&k) == Some(&before) {
                self.0.remove(&k);
            }
        }
    }

    /// The parts of `r` that some pin covers (`pinned`) or none does (`!pinned`).
    fn parts(&self, r: Run, pinned: bool) -> Vec<Run> {
        let (s, t) = (r.start, r.start + r.len);
        let mut out = Vec::new();
        let mut at = s;
        let mut count = self.at(s);
        for (&k, &c) in self.0.range(s + 1..t) {
            if (count > 0) == pinned {
                out.push(Run { start: at, len: k - at });
            }
            (at, count) = (k, c);
        }
        if (count > 0) == pinned {
            out.push(Run { start: at, len: t - at });
        }
        merged(out)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Pins {
    /// Whether no open file pins anything (the common case: frees skip the rest).
    pub(crate) fn is_empty(&self) -> bool {
        self.by_owner.is_empty() && self.held.is_empty()
    }

    /// The file whose blocks open file `owner` pins, if it pins any.
    pub(crate) fn pins_of(&self, owner: u64) -> Option<u64> {
        self.by_owner.get(&owner).map(|&(ino, _)| ino)
    }

    /// Open file `owner` of file `ino` pins `runs` (added to what it pinned before).
    pub(crate) fn pin(&mut self, owner: u64, ino: u64, runs: Vec<Run>) {
        let entry = self.by_owner.entry(owner).or_insert_with(|| (ino, Vec::new()));
        let counts = self.counts.entry(ino).or_default();
        // Only what it did not pin yet counts again.
        for r in crate::alloc::subtract(runs, entry.1.clone()) {
            counts.add(r, 1);
            entry.1.push(r);
        }
        entry.1 = merged(std::mem::take(&mut entry.1));
    }

    /// `runs`, freed from file `ino` by the commit at `pos`: keeps the pinned part, returns the
    /// rest.
    pub(crate) fn hold(&mut self, ino: u64, pos: u64, runs: Vec<Run>) -> Vec<Run> {
        let Some(counts) = self.counts.get(&ino) else { return runs };
        let mut free = Vec::new();
        for r in runs {
            for kept in counts.parts(r, true) {
                self.held.entry(ino).or_default().insert(kept.start, (kept.len, pos));
            }
            free.extend(counts.parts(r, false));
        }
        free
    }

    /// Open file `owner` is released: its pins go, and the held blocks no other open file pins
    /// are returned with the journal positions that freed them.
    pub(crate) fn release(&mut self, owner: u64) -> Vec<(u64, Vec<Run>)> {
        let Some((ino, runs)) = self.by_owner.remove(&owner) else { return Vec::new() };
        let Some(counts) = self.counts.get_mut(&ino) else { return Vec::new() };
        for &r in &runs {
            counts.add(r, -1);
        }
        let mut out = Vec::new();
        if let Some(held) = self.held.get_mut(&ino) {
            for r in runs {
                let end = r.start + r.len;
                // Held runs are disjoint: the ones that reach into `r` start before its end,
                // and at most one of them starts before `r`.
                let from = held.range(..=r.start).next_back().map_or(r.start, |(&k, _)| k);
                let touched: Vec<(u64, (u64, u64))> = held.range(from..end).map(|(&k, &v)| (k, v)).collect();
                for (start, (len, pos)) in touched {
                    held.remove(&start);
                    let h = Run { start, len };
                    for kept in counts.parts(h, true) {
                        held.insert(kept.start, (kept.len, pos));
                    }
                    let gone = counts.parts(h, false);
                    if !gone.is_empty() {
                        out.push((pos, gone));
                    }
                }
            }
            if held.is_empty() {
                self.held.remove(&ino);
            }
        }
        if counts.is_empty() {
            self.counts.remove(&ino);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, len: u64) -> Run {
        Run { start, len }
    }

    #[test]
    fn freed_blocks_wait_for_every_open_file_that_pins_them() {
        let mut p = Pins::default();
        p.pin(1, 7, vec![run(100, 10)]);
        p.pin(2, 7, vec![run(105, 10)]);
        p.pin(2, 7, vec![run(105, 10)]);
        // Another file's blocks, and the unpinned part, are free at once.
        assert_eq!(p.hold(8, 1, vec![run(100, 4)]), vec![run(100, 4)]);
        assert_eq!(p.hold(7, 2, vec![run(90, 30)]), vec![run(90, 10), run(115, 5)]);
        // Owner 1 goes: the blocks only it pinned come back.
        assert_eq!(p.release(1), vec![(2, vec![run(100, 5)])]);
        assert!(!p.is_empty());
        assert_eq!(p.release(3), vec![]);
        assert_eq!(p.release(2), vec![(2, vec![run(105, 10)])]);
        assert!(p.is_empty() && p.counts.is_empty());
    }

    #[test]
    fn many_pins_count_each_block() {
        let mut p = Pins::default();
        for owner in 0..1000 {
            p.pin(owner, 1, vec![run(owner % 50, 3)]);
        }
        assert_eq!(p.hold(1, 5, vec![run(0, 60)]), vec![run(52, 8)]);
        for owner in (0..1000).rev() {
            let back = p.release(owner);
            if owner >= 50 {
                assert!(back.is_empty(), "{owner}: {back:?}");
            }
        }
        assert!(p.is_empty() && p.counts.is_empty());
    }
}
