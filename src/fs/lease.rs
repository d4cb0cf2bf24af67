//! Appends by lease (DESIGN.md "Appends by lease"): a direct client that grows a file is given
//! blocks past EOF in one request and stores its appends there itself, recording the size they
//! reach in the file's lane (a word of its inode slot); the server folds the lane into the size
//! when the lease ends, and recovery folds it after a crash.

use std::sync::Arc;

use crate::alloc::{carved_extents, RunQueue};
use crate::direct::{Lease, LeaseIo, Publication, KERNEL_MAPPED};
use crate::error::{Error, Result};
use crate::extent::{Extent, ExtentMap, Piece, State};
use crate::inode::Inode;
use crate::journal::Tx;
use crate::layout::{lane_size, mode, INODE_LANE_OFF, LANE_FROZEN, LANE_TOKEN_SHIFT};
use crate::sync::wr;
use crate::MAX_FILE_SIZE;

use super::data::hole_lens;
use super::node::Node;
use super::state::Fs;

/// The first reservation of a lease; each later one is as large as the lease has grown, up to
/// [`MAX_WINDOW`].
const MIN_WINDOW: u64 = 1 << 20;
/// The largest reservation one request makes (beyond what the client asked for).
const MAX_WINDOW: u64 = 64 << 20;

impl Fs {
    /// Grants open file `owner` of regular file `ino` a lease on the file's growth, or extends
    /// the one it holds, so that it may store directly below at least `want` bytes: the blocks
    /// past EOF up to there become the file's (written, past EOF: no reader sees them until the
    /// size reaches them), and the client records each append's end in the lane before the
    /// append returns. A lease another open file holds ends first. Refused with EBUSY while the
    /// file is mapped through the kernel or holds blocks past EOF of its own (preallocated),
    /// with EFBIG for more than one transaction's worth of blocks at once, and with EOPNOTSUPP
    /// on a mount that publishes no maps or an image without lanes.
    pub fn lease(&self, ino: u64, owner: u64, want: u64) -> Result<LeaseIo> {
        let p = self.publication()?;
        if !self.inner.geo.lanes {
            return Err(Error::Unsupported(
                "the image has no lanes (made before them): appends go through the mount".into(),
            ));
        }
        if want > MAX_FILE_SIZE {
            return Err(Error::FileTooBig);
        }
        let n = self.node(ino)?;
        let _change = self.writable()?;
        let _io = wr(&n.io);
        let mut g = wr(&n.inode);
        g.live()?;
        if !mode::is_reg(g.attr.mode) {
            return Err(Error::InvalidArgument("not a regular file"));
        }
        if p.table.generation(ino)? & KERNEL_MAPPED != 0 {
            return Err(Error::Busy);
        }
        let mut lease = match p.lease(ino) {
            Some(l) if l.owner == owner => l,
            held => {
                if held.is_some() {
                    self.end_lease_locked(p, &mut g)?;
                }
                self.open_lane(p, &mut g, owner)?
            }
        };
        if want > lease.end {
            let bs = self.inner.geo.block_size;
            // One transaction's worth of blocks at most: a larger write goes through the mount.
            let cap = lease.end.next_multiple_of(bs) + (self.max_tx_blocks() - 2) * bs;
            if want > cap {
                return Err(Error::FileTooBig);
            }
            let window = (lease.end - lease.start).clamp(MIN_WINDOW, MAX_WINDOW);
            let wide = want.max(lease.end + window).min(cap).min(MAX_FILE_SIZE);
            let size = g.attr.size;
            let end = match self.make_written(&mut g, lease.end, wide, size) {
                Err(Error::NoSpace) if wide > want => self.make_written(&mut g, lease.end, want, size)?,
                r => r?,
            };
            lease.end = end;
            p.set_lease(ino, Some(lease));
        }
        let lane = self.inner.geo.inode_at(ino) + INODE_LANE_OFF;
        let generation = p.table.generation(ino)?;
        Ok(LeaseIo {
            want,
            version: crate::direct::VERSION,
            token: lease.token as u32,
            generation,
            end: lease.end,
            lane,
            size: g.attr.size,
        })
    }

    /// `ino`'s node, with any lease on it ended first: every operation on a file but the ones
    /// that serve direct clients (its map, its times, leases) sees the size its returned
    /// appends reach, and changes nothing a lease holder stores past.
    pub(crate) fn settled(&self, ino: u64) -> Result<Arc<Node>> {
        let n = self.node(ino)?;
        self.settle(&n)?;
        Ok(n)
    }

    /// Ends the lease on `n`'s file, if it has one.
    pub(crate) fn settle(&self, n: &Node) -> Result<()> {
        let Some(p) = self.inner.direct.get() else { return Ok(()) };
        if p.lease(n.ino).is_none() {
            return Ok(());
        }
        let _change = self.writable()?;
        let _io = wr(&n.io);
        let mut g = wr(&n.inode);
        if g.freed || p.lease(n.ino).is_none() {
            return Ok(());
        }
        self.end_lease_locked(p, &mut g)
    }

    /// Ends the lease on locked file `g` and folds its lane. A client still in an append
    /// under it (stopped, say) fails to raise the frozen lane, and makes its append again
    /// through the mount.
    fn end_lease_locked(&self, p: &Publication, g: &mut Inode) -> Result<()> {
        p.set_lease(g.ino, None);
        self.fold_lane(g)
    }

    /// Folds locked file `g`'s lane into its size, if it holds one: the lane is frozen (one
    /// atomic operation, after which no client raises it), the size becomes the larger of the
    /// two, the blocks past the new EOF block go, and then the lane is cleared (a crash in
    /// between folds it again, to the same result). The bytes past EOF in its page are left to
    /// the next mapping to zero (`clean_tail`): a client in an append may store there still.
    /// At mount, and when a lease ends. A read-only file system takes the size in memory only.
    pub(crate) fn fold_lane(&self, g: &mut Inode) -> Result<()> {
        let (dev, geo) = (&self.inner.dev, self.inner.geo);
        let lane = geo.inode_at(g.ino) + INODE_LANE_OFF;
        let mut w = dev.load_u64(lane)?;
        g.lane = 0;
        let Some(reach) = lane_size(w) else { return Ok(()) };
        if self.is_read_only() {
            g.attr.size = g.attr.size.max(reach.min(MAX_FILE_SIZE));
            return Ok(());
        }
        while w & LANE_FROZEN == 0 {
            match dev.compare_exchange_u64(lane, w, w | LANE_FROZEN)? {
                held if held == w => break,
                held => w = held,
            }
        }
        // Raises only grow the lane, so what froze reaches at least `reach`.
        let size = g.attr.size.max(lane_size(w).unwrap_or(reach).min(MAX_FILE_SIZE));
        let keep = size.div_ceil(geo.block_size);
        self.undoable(g, |g, _| {
            let mut tx = Tx::new();
            let freed = match g.ext.last().map(Extent::end) {
                // Cutting extents only shortens or removes them: no new slot is needed.
                Some(last) if last > keep => g.ext.remove_range(keep, last - keep, &mut tx)?,
                _ => Vec::new(),
            };
            g.attr.size = size;
            g.log_attr(&geo, &mut tx);
            let head = self.commit(&tx)?;
            self.free_after(g.ino, head, freed.iter().map(Extent::run).collect());
            Ok(())
        })?;
        dev.store_u64(lane, 0)?;
        dev.fence();
        g.tail_clean = false;
        Ok(())
    }

    /// Opens a lane on locked file `g` for `owner`: the file may hold nothing past its EOF
    /// block, nor an unwritten EOF block (the lease makes every block past EOF written); the
    /// lane gets `1 + size` before any block past EOF is reserved, so recovery trims them.
    fn open_lane(&self, p: &Publication, g: &mut Inode, owner: u64) -> Result<Lease> {
        let geo = self.inner.geo;
        let bs = geo.block_size;
        let size = g.attr.size;
        if g.ext.last().is_some_and(|e| e.end() > size.div_ceil(bs)) {
            return Err(Error::Busy);
        }
        // Appends start at or before EOF and leave no gap; what lies past EOF in its page stays
        // zero, as everywhere while the file system runs.
        self.clean_tail(g)?;
        let dev = &self.inner.dev;
        let token = p.next_token();
        dev.store_u64(geo.inode_at(g.ino) + INODE_LANE_OFF, (token << LANE_TOKEN_SHIFT) | (size + 1))?;
        dev.fence();
        // Maps fetched before name no lane.
        p.table.bump(g.ino);
        let lease = Lease { owner, start: size, end: size, token };
        p.set_lease(g.ino, Some(lease));
        Ok(lease)
    }

    /// Makes file blocks `[from, to)` (bytes, rounded out to blocks) of locked file `g` written
    /// blocks, in one transaction: holes get fresh blocks and unwritten blocks are converted.
    /// Their bytes below `zero_below` are zeroed (the rest keep their old bytes: past EOF only a
    /// lease holder stores, from EOF on, with no gap). Returns the byte they reach.
    pub(super) fn make_written(&self, g: &mut Inode, from: u64, to: u64, zero_below: u64) -> Result<u64> {
        let bs = self.inner.geo.block_size;
        let (first, last) = (from / bs, to.div_ceil(bs));
        if last <= first {
            return Ok(from);
        }
        let pieces = g.ext.pieces(first, last - first);
        let unwritten = |p: &&Piece| matches!(p, Piece::Mapped(e) if e.state != State::Written);
        if pieces.iter().all(|p| matches!(p, Piece::Mapped(e) if e.state == State::Written)) {
            return Ok(last * bs);
        }
        self.undoable(g, |g, taken| {
            let need: u64 = hole_lens(&pieces).sum();
            let runs = if need > 0 { self.alloc_blocks(self.goal(g, first), need)? } else { Default::default() };
            taken.extend_from_slice(&runs);
            let mut tx = Tx::new();
            let converts = pieces.iter().filter(unwritten).count();
            let inserts = carved_extents(&runs, hole_lens(&pieces)) + 2 * converts;
            self.reserve_slots(g, ExtentMap::slots_needed(inserts), &mut tx)?;
            let mut queue = RunQueue::new(&runs);
            let (geo, dev) = (self.inner.geo, &self.inner.dev);
            // The bytes of new written extent `e` below `zero_below`.
            let zero = |e: &Extent, tx: &mut Tx| {
                let inside = zero_below.min(e.end() * bs).saturating_sub(e.logical * bs);
                if inside > 0 {
                    tx.content_zero(dev, geo.block_at(e.physical), inside)?;
                }
                Ok::<(), Error>(())
            };
            for p in &pieces {
                match *p {
                    Piece::Hole { logical, len } => {
                        for e in ExtentMap::extents_for(logical, &queue.take(len), State::Written) {
                            zero(&e, &mut tx)?;
                            g.ext.insert(e, &mut tx)?;
                        }
                    }
                    Piece::Mapped(e) if e.state != State::Written => {
                        let e = Extent { state: State::Written, ..e };
                        zero(&e, &mut tx)?;
                        g.ext.remove_range(e.logical, e.len, &mut tx)?;
                        g.ext.insert(e, &mut tx)?;
                    }
                    Piece::Mapped(_) => {}
                }
            }
            g.log_attr(&geo, &mut tx);
            self.commit(&tx)?;
            Ok(())
        })?;
        Ok(last * bs)
    }

    /// Clears slot `ino`'s lane, if it holds one, with a store of its own: the journal never
    /// writes a lane (a replayed record would overwrite a client's later store).
    pub(crate) fn clear_lane(&self, ino: u64) -> Result<()> {
        let (dev, lane) = (&self.inner.dev, self.inner.geo.inode_at(ino) + INODE_LANE_OFF);
        if dev.load_u64(lane)? != 0 {
            dev.store_u64(lane, 0)?;
            dev.fence();
        }
        Ok(())
    }

    /// The publication, or EOPNOTSUPP on a file system that publishes no maps.
    pub(super) fn publication(&self) -> Result<&Publication> {
        self.inner.direct.get().ok_or_else(|| Error::Unsupported("this mount publishes no file maps".into()))
    }
}
