//! Space management on a file: fallocate (allocate, punch hole, zero range), SEEK_DATA /
//! SEEK_HOLE, and the extent listing.
//!
//! Preallocated blocks are unwritten extents: they own their blocks but read as zeros without
//! touching them, so allocation writes no data. A later write fills each block it touches whole
//! (data and zeros, see `io`), which is why an unwritten block's stale device bytes can never
//! show. Each call is one transaction.

use crate::alloc::{RunQueue, Runs};
use crate::error::{Error, Result};
use crate::extent::{Extent, ExtentMap, Piece, State};
use crate::inode::{Inode, Timespec};
use crate::journal::Tx;
use crate::layout::mode;
use crate::sync::{rd, wr};

use super::data::hole_lens;
use super::node::{Node, Reach};
use super::state::Fs;
use crate::MAX_FILE_SIZE;

/// What [`Fs::fallocate`] does, as fallocate(2)'s modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallocMode {
    /// Allocate unwritten blocks over holes; grow the size unless `keep_size`.
    Allocate {
        /// Leave the size alone even when the range ends past EOF (`FALLOC_FL_KEEP_SIZE`).
        keep_size: bool,
    },
    /// Free whole blocks in the range, zero the partial ones; the size is unchanged.
    PunchHole,
    /// Make the range read zero (whole blocks become unwritten); grow the size unless
    /// `keep_size`.
    ZeroRange {
        /// Leave the size alone even when the range ends past EOF (`FALLOC_FL_KEEP_SIZE`).
        keep_size: bool,
    },
}

/// One extent as `udax extents` and `bmap` show it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ExtentInfo {
    /// File offset of the first byte.
    pub logical: u64,
    /// Device offset of the first byte.
    pub physical: u64,
    /// Length in bytes.
    pub length: u64,
    /// "written" or "unwritten".
    pub state: &'static str,
}

impl Fs {
    /// fallocate(2) on `ino` over `[off, off+len)`.
    pub fn fallocate(&self, ino: u64, off: u64, len: u64, how: FallocMode) -> Result<()> {
        self.fallocate_node(&*self.settled(ino)?, off, len, how)
    }

    pub(crate) fn fallocate_node(&self, n: &Node, off: u64, len: u64, how: FallocMode) -> Result<()> {
        let _change = self.writable()?;
        if len == 0 {
            return Err(Error::InvalidArgument("fallocate length must be positive"));
        }
        let end = off.checked_add(len).filter(|&e| e <= MAX_FILE_SIZE).ok_or(Error::FileTooBig)?;
        let _io = wr(&n.io);
        let mut g = wr(&n.inode);
        g.live()?;
        if g.is_dir() {
            return Err(Error::IsDir);
        }
        if !mode::is_reg(g.attr.mode) {
            return Err(Error::NotSeekable);
        }
        let bs = self.inner.geo.block_size;
        // The blocks the mode works on whole, and the bytes it zeroes in partial edge blocks.
        let (first, last, edges) = match how {
            FallocMode::Allocate { .. } => (off / bs, end.div_ceil(bs), false),
            FallocMode::PunchHole | FallocMode::ZeroRange { .. } => (off.div_ceil(bs), end / bs, true),
        };
        // Mappings lose the pages whose blocks go or turn unwritten before anything changes.
        if matches!(how, FallocMode::PunchHole | FallocMode::ZeroRange { .. }) {
            self.unmap_range(n, off, end, Reach::All)?;
        }
        // A failure puts the inode back as the medium holds it (earlier windows committed) and
        // gives back the blocks not linked there.
        self.undoable(&mut g, |g, taken| {
            // All or nothing for space: every block the range needs and every extent slot its
            // extents need are taken before anything changes; the slots' overflow blocks are linked
            // by the first transaction, and the windows below only carve from what is held.
            let mut tx = Tx::new();
            let mut queue = RunQueue::new(&[]);
            if last > first {
                let pieces = g.ext.pieces(first, last - first);
                let (runs, slots) = match how {
                    FallocMode::PunchHole => (Runs::new(), ExtentMap::slots_needed(0)),
                    FallocMode::Allocate { .. } | FallocMode::ZeroRange { .. } => {
                        let need: u64 = hole_lens(&pieces).sum();
                        let runs = if need > 0 { self.alloc_blocks(self.goal(g, first), need)? } else { Runs::new() };
                        let converts = match how {
                            FallocMode::ZeroRange { .. } => pieces
                                .iter()
                                .filter(|p| matches!(p, Piece::Mapped(e) if e.state == State::Written))
                                .count(),
                            _ => 0,
                        };
                        let inserts = crate::alloc::carved_extents(&runs, hole_lens(&pieces));
                        (runs, ExtentMap::slots_needed(inserts + 2 * converts))
                    }
                };
                taken.extend_from_slice(&runs);
                queue = RunQueue::new(&runs);
                self.reserve_slots(g, slots, &mut tx)?;
            }
            if let FallocMode::Allocate { keep_size: false } | FallocMode::ZeroRange { keep_size: false } = how {
                self.grow_over_tail(n, g, end, end, &mut tx)?;
            }
            // One transaction per window of blocks, so each fits in the journal.
            let window = self.max_tx_blocks() - 2;
            let mut at = first;
            loop {
                let stop = last.min(at.saturating_add(window));
                let mut freed = Vec::new();
                if edges && at == first {
                    self.zero_partial_blocks(g, off, end, &mut tx)?;
                }
                if stop > at {
                    match how {
                        FallocMode::Allocate { .. } => self.preallocate(g, at, stop, false, &mut queue, &mut tx)?,
                        FallocMode::ZeroRange { .. } => self.preallocate(g, at, stop, true, &mut queue, &mut tx)?,
                        FallocMode::PunchHole => freed = g.ext.remove_range(at, stop - at, &mut tx)?,
                    }
                }
                let done = stop >= last;
                if done {
                    if let FallocMode::Allocate { keep_size: false } | FallocMode::ZeroRange { keep_size: false } = how
                    {
                        g.attr.size = g.attr.size.max(end);
                    }
                    let now = Timespec::now();
                    g.attr.mtime = now;
                    g.attr.ctime = now;
                }
                g.log_attr(&self.inner.geo, &mut tx);
                let head = self.commit(&tx)?;
                self.free_after(g.ino, head, freed.iter().map(Extent::run).collect());
                if done {
                    debug_assert!(queue.is_empty(), "every allocated block was placed");
                    return Ok(());
                }
                tx = Tx::new();
                at = stop;
            }
        })
    }

    /// Makes blocks `[first, end)` unwritten where they are holes (taking blocks from `queue`,
    /// allocated and slot-reserved by the caller) and, with `convert`, where they are written.
    fn preallocate(
        &self,
        g: &mut Inode,
        first: u64,
        end: u64,
        convert: bool,
        queue: &mut RunQueue,
        tx: &mut Tx,
    ) -> Result<()> {
        let pieces = g.ext.pieces(first, end - first);
        let written: Vec<Extent> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Mapped(e) if convert && e.state == State::Written => Some(*e),
                _ => None,
            })
            .collect();
        for p in &pieces {
            if let Piece::Hole { logical, len } = *p {
                let runs = queue.take(len);
                for e in ExtentMap::extents_for(logical, &runs, State::Unwritten) {
                    g.ext.insert(e, tx)?;
                }
            }
        }
        for e in written {
            g.ext.remove_range(e.logical, e.len, tx)?;
            g.ext.insert(Extent { state: State::Unwritten, ..e }, tx)?;
        }
        Ok(())
    }

    /// Zeroes, in place, the bytes of `[off, end)` that lie in written blocks only partly
    /// covered by the range (whole blocks are the caller's).
    fn zero_partial_blocks(&self, g: &Inode, off: u64, end: u64, tx: &mut Tx) -> Result<()> {
        let geo = &self.inner.geo;
        let bs = geo.block_size;
        let mut edges = vec![];
        if off % bs != 0 {
            edges.push((off, end.min((off / bs + 1) * bs)));
        }
        if end % bs != 0 && (end / bs > off / bs || off % bs == 0) {
            edges.push(((end / bs * bs).max(off), end));
        }
        for (s, t) in edges {
            if let Some(Piece::Mapped(e)) = g.ext.pieces(s / bs, 1).first() {
                if e.state == State::Written {
                    tx.content_zero(&self.inner.dev, geo.block_at(e.physical) + s % bs, t - s)?;
                }
            }
        }
        Ok(())
    }

    /// lseek(SEEK_DATA): the first offset at or after `off` holding written data. Unwritten
    /// extents count as holes, as on ext4 and XFS. ENXIO at or past EOF.
    pub fn seek_data(&self, ino: u64, off: u64) -> Result<u64> {
        self.seek_data_node(&*self.settled(ino)?, off)
    }

    pub(crate) fn seek_data_node(&self, n: &Node, off: u64) -> Result<u64> {
        let (at, size) = self.seek_first(n, off, |e| e.is_some_and(|e| e.state == State::Written))?;
        at.filter(|&a| a < size).ok_or(Error::NoSuchOffset)
    }

    /// lseek(SEEK_HOLE): the first offset at or after `off` in a hole or unwritten extent, or EOF
    /// (every file ends in a hole). ENXIO at or past EOF.
    pub fn seek_hole(&self, ino: u64, off: u64) -> Result<u64> {
        self.seek_hole_node(&*self.settled(ino)?, off)
    }

    pub(crate) fn seek_hole_node(&self, n: &Node, off: u64) -> Result<u64> {
        let (at, size) = self.seek_first(n, off, |e| e.is_none_or(|e| e.state == State::Unwritten))?;
        Ok(at.unwrap_or(size).min(size))
    }

    /// The first offset at or after `off`, before EOF, in a piece `wanted` accepts (`None` for a
    /// hole); also the size. ENXIO at or past EOF.
    fn seek_first(&self, n: &Node, off: u64, wanted: impl Fn(Option<&Extent>) -> bool) -> Result<(Option<u64>, u64)> {
        let g = rd(&n.inode);
        g.live()?;
        let size = g.attr.size;
        if off >= size {
            return Err(Error::NoSuchOffset);
        }
        let bs = self.inner.geo.block_size;
        let first = off / bs;
        let at = g.ext.pieces(first, size.div_ceil(bs) - first).into_iter().find_map(|p| {
            let (logical, ext) = match &p {
                Piece::Hole { logical, .. } => (*logical, None),
                Piece::Mapped(e) => (e.logical, Some(e)),
            };
            wanted(ext).then_some((logical * bs).max(off))
        });
        Ok((at, size))
    }

    /// The file's extents in logical order, in bytes.
    pub fn extents(&self, ino: u64) -> Result<Vec<ExtentInfo>> {
        self.extents_node(&*self.settled(ino)?)
    }

    pub(crate) fn extents_node(&self, n: &Node) -> Result<Vec<ExtentInfo>> {
        let g = rd(&n.inode);
        g.live()?;
        let bs = self.inner.geo.block_size;
        Ok(g.ext
            .iter()
            .map(|e| ExtentInfo {
                logical: e.logical * bs,
                physical: e.physical * bs,
                length: e.len * bs,
                state: match e.state {
                    State::Written => "written",
                    State::Unwritten => "unwritten",
                },
            })
            .collect())
    }
}
