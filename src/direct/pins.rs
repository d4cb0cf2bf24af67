//! Blocks that direct clients map into their address space (DESIGN.md "Mappings served from the
//! image"). A client maps a file's written blocks straight from the image, and no request
//! reaches the server when it unmaps them, so each such mapping holds an open file of its own
//! (the kernel releases it once the mapping and the process's descriptor are gone). The blocks
//! it maps are *pinned* to that open file: when the file frees one, the block waits here until
//! no open file pins it any more, so a mapping never shows or stores into another file's data.

use std::collections::HashMap;

use crate::alloc::{merged, subtract, Run};

/// The pins of one mount: the blocks each open file pinned, and the freed blocks they hold.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    /// Open file (handle) → the file it pinned blocks of, and the blocks.
    by_owner: HashMap<u64, (u64, Vec<Run>)>,
    /// Blocks freed while pinned: the file they were freed from, the journal position of the
    /// commit that freed them, and the runs.
    held: Vec<(u64, u64, Vec<Run>)>,
}

impl Pins {
    /// Whether no open file pins anything (the common case: frees skip the rest).
    pub(crate) fn is_empty(&self) -> bool {
        self.by_owner.is_empty() && self.held.is_empty()
    }

    /// Open file `owner` of file `ino` pins `runs` (added to what it pinned before).
    pub(crate) fn pin(&mut self, owner: u64, ino: u64, runs: Vec<Run>) {
        let entry = self.by_owner.entry(owner).or_insert_with(|| (ino, Vec::new()));
        let mut all = std::mem::take(&mut entry.1);
        all.extend(runs);
        entry.1 = merged(all);
    }

    /// The blocks of file `ino` that open files pin.
    fn pinned(&self, ino: u64) -> Vec<Run> {
        self.by_owner.values().filter(|(i, _)| *i == ino).flat_map(|(_, r)| r.iter().copied()).collect()
    }

    /// `runs`, freed from file `ino` by the commit at `pos`: keeps the pinned part, returns the
    /// rest.
    pub(crate) fn hold(&mut self, ino: u64, pos: u64, runs: Vec<Run>) -> Vec<Run> {
        let pinned = self.pinned(ino);
        if pinned.is_empty() {
            return runs;
        }
        let free = subtract(runs.clone(), pinned);
        let kept = subtract(runs, free.clone());
        if !kept.is_empty() {
            self.held.push((ino, pos, kept));
        }
        free
    }

    /// Open file `owner` is released: its pins go, and the held blocks no other open file pins
    /// are returned with the journal positions that freed them.
    pub(crate) fn release(&mut self, owner: u64) -> Vec<(u64, Vec<Run>)> {
        let Some((ino, _)) = self.by_owner.remove(&owner) else { return Vec::new() };
        let pinned = self.pinned(ino);
        let mut out = Vec::new();
        for (i, pos, runs) in &mut self.held {
            if *i != ino {
                continue;
            }
            let still = subtract(runs.clone(), subtract(runs.clone(), pinned.clone()));
            let gone = subtract(std::mem::take(runs), still.clone());
            if !gone.is_empty() {
                out.push((*pos, gone));
            }
            *runs = still;
        }
        self.held.retain(|(_, _, r)| !r.is_empty());
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
        // Another file's blocks, and the unpinned part, are free at once.
        assert_eq!(p.hold(8, 1, vec![run(100, 4)]), vec![run(100, 4)]);
        assert_eq!(p.hold(7, 2, vec![run(90, 30)]), vec![run(90, 10), run(115, 5)]);
        // Owner 1 goes: the blocks only it pinned come back.
        assert_eq!(p.release(1), vec![(2, vec![run(100, 5)])]);
        assert!(!p.is_empty());
        assert_eq!(p.release(3), vec![]);
        assert_eq!(p.release(2), vec![(2, vec![run(105, 10)])]);
        assert!(p.is_empty());
    }
}
