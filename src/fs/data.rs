//! The data path: read, write and truncate, copying straight between the caller and the device.
//!
//! A write sets new mtime/ctime only when the coarse clock has ticked past them (or they were
//! set ahead of it), and logs them in a record, never in place. A write that only overwrites
//! written blocks inside the file with times still current stores the data (non-temporal) and
//! fences once. A write that needs blocks (holes, unwritten
//! extents, growth) fills every new block whole — its data and zeros around it — fences, and
//! only then commits the transaction that links the blocks and sets the size (DESIGN.md "Commit protocol").

use crate::alloc::{Run, RunQueue, Runs};
use crate::error::{Error, Result};
use crate::extent::{Extent, ExtentMap, Extents, Piece, State};
use crate::inode::{Inode, Timespec};
use crate::journal::Tx;
use crate::sabotage::Sabotage;
use crate::sync::{lock, rd, wr};

use super::mmap::overlaps_mapping;
use super::node::{Node, Reach};
use super::state::Fs;
use super::types::{killed_set_id, PAGE};
use crate::MAX_FILE_SIZE;

/// Largest part of one write committed as one transaction (less on a small journal, see
/// `Fs::max_tx_blocks`); longer writes are a series, so a full device cuts them short at a
/// chunk boundary (a short write, as on Linux).
const WRITE_CHUNK: u64 = 8 << 20;

/// Longest overwrite stored under the inode lock (see `Fs::overwrite_locked`).
const LOCKED_OVERWRITE: usize = 64 << 10;

/// Lengths of the holes among `pieces`, in order.
pub(crate) fn hole_lens(pieces: &[Piece]) -> impl Iterator<Item = u64> + '_ {
    pieces.iter().filter_map(|p| if let Piece::Hole { len, .. } = p { Some(*len) } else { None })
}

/// Whether a piece is an unwritten extent (a write converts it).
fn is_unwritten(p: &Piece) -> bool {
    matches!(p, Piece::Mapped(e) if e.state == State::Unwritten)
}

/// Extent slots a write chunk over `pieces` needs: one per extent its new blocks make, two per
/// conversion.
fn chunk_slots(pieces: &[Piece], runs: &[Run]) -> usize {
    let inserts = crate::alloc::carved_extents(runs, hole_lens(pieces));
    ExtentMap::slots_needed(inserts + 2 * pieces.iter().filter(|p| is_unwritten(p)).count())
}

/// The mark a write chunk sets on its inode while it copies without the inode lock (its byte
/// range in `Inode::writing`, and one more open count). Cleared under the inode lock when the
/// copy is done, or on the way out of a panic, so first stores never wait for a write that is
/// gone.
struct WriteMark<'a>(&'a Node);

impl WriteMark<'_> {
    fn clear(self, g: &mut Inode) {
        g.writing = None;
        g.open -= 1;
        std::mem::forget(self);
    }
}

impl Drop for WriteMark<'_> {
    fn drop(&mut self) {
        let mut g = wr(&self.0.inode);
        g.writing = None;
        g.open -= 1;
    }
}

impl Fs {
    /// Reads up to `buf.len()` bytes at `off`; stops at EOF. Holes and unwritten extents read
    /// as zeros.
    pub fn read(&self, ino: u64, buf: &mut [u8], off: u64) -> Result<usize> {
        self.read_node(&*self.settled(ino)?, off, buf)
    }

    pub(crate) fn read_node(&self, n: &Node, off: u64, buf: &mut [u8]) -> Result<usize> {
        if overlaps_mapping(buf.as_ptr() as usize, buf.len()) {
            // Filled outside the lock: storing into the mapping may fault (see `mmap`).
            let mut bounce = vec![0u8; buf.len()];
            let got = self.read_node(n, off, &mut bounce)?;
            buf[..got].copy_from_slice(&bounce[..got]);
            return Ok(got);
        }
        let _io = rd(&n.io);
        let g = rd(&n.inode);
        g.live()?;
        if g.is_dir() {
            return Err(Error::IsDir);
        }
        if !crate::layout::mode::is_reg(g.attr.mode) && !crate::layout::mode::is_symlink(g.attr.mode) {
            return Err(Error::NotSeekable);
        }
        self.read_locked(&g, off, buf)
    }

    pub(crate) fn read_locked(&self, g: &Inode, off: u64, buf: &mut [u8]) -> Result<usize> {
        let size = g.attr.size;
        if off >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - off);
        let end = off + len;
        let geo = &self.inner.geo;
        let bs = geo.block_size;
        let first = off / bs;
        let last = (end - 1) / bs;
        for p in g.ext.pieces(first, last - first + 1) {
            let (logical, plen) = match p {
                Piece::Hole { logical, len } => (logical, len),
                Piece::Mapped(e) => (e.logical, e.len),
            };
            let s = (logical * bs).max(off);
            let e = ((logical + plen) * bs).min(end);
            let dst = &mut buf[(s - off) as usize..(e - off) as usize];
            match p {
                Piece::Mapped(x) if x.state == State::Written => {
                    self.inner.dev.read(geo.block_at(x.physical) + (s - logical * bs), dst)?;
                }
                _ => dst.fill(0),
            }
        }
        Ok(len as usize)
    }

    /// Writes `data` at `off` (growing the file past EOF); durable on return. Returns the
    /// bytes written, short only when the device filled after some of them.
    pub fn write(&self, ino: u64, data: &[u8], off: u64) -> Result<usize> {
        self.write_node(&*self.settled(ino)?, Some(off), data, false)
    }

    /// As [`Fs::write`], for a caller without CAP_FSETID (a front end serving other processes):
    /// the file's set-user-ID bit, and its set-group-ID bit when group-executable, go in the
    /// transaction of the write's first chunk, as Linux drops them.
    pub fn write_dropping_set_id(&self, ino: u64, data: &[u8], off: u64) -> Result<usize> {
        self.write_node(&*self.settled(ino)?, Some(off), data, true)
    }

    /// Appends `data` at EOF atomically with respect to other writers (O_APPEND).
    pub fn append(&self, ino: u64, data: &[u8]) -> Result<usize> {
        self.write_node(&*self.settled(ino)?, None, data, false)
    }

    /// Writes at `off`, or at EOF when `off` is `None`; `drop_set_id` as in
    /// [`Fs::write_dropping_set_id`].
    pub(crate) fn write_node(&self, n: &Node, off: Option<u64>, data: &[u8], drop_set_id: bool) -> Result<usize> {
        let _change = self.writable()?;
        if overlaps_mapping(data.as_ptr() as usize, data.len()) {
            // Copied before the lock: loading from the mapping may fault (see `mmap`).
            let bounce: Vec<u8> = data.to_vec();
            return self.write_node(n, off, bounce.as_slice(), drop_set_id);
        }
        let _io = wr(&n.io);
        let off = {
            let g = rd(&n.inode);
            g.live()?;
            if g.is_dir() {
                return Err(Error::IsDir);
            }
            if !crate::layout::mode::is_reg(g.attr.mode) {
                return Err(Error::NotSeekable);
            }
            off.unwrap_or(g.attr.size)
        };
        if off.checked_add(data.len() as u64).is_none_or(|e| e > MAX_FILE_SIZE) {
            return Err(Error::FileTooBig);
        }
        let bs = self.inner.geo.block_size;
        let chunk = WRITE_CHUNK.min((self.max_tx_blocks() - 1) * bs) as usize;
        let mut done = 0;
        while done < data.len() {
            let len = (data.len() - done).min(chunk);
            match self.write_chunk(n, off + done as u64, &data[done..done + len], drop_set_id && done == 0) {
                Ok(()) => done += len,
                // Out of space after some chunks, or the file freed meanwhile (unlinked while
                // written by inode number, with no handle open): what went in is the result.
                Err(Error::NoSpace | Error::HostFull(_) | Error::NotFound) if done > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// One chunk of a write, in three steps, so that faults on the file do not wait for the
    /// copy. Under the inode lock: the chunk's pieces, its new blocks taken from the allocator,
    /// its byte range marked as being written. With no inode lock (the data lock, held by the
    /// caller, keeps other writes, truncates and fallocate out; the mark keeps first stores
    /// from allocating around it; an open count keeps the inode): the data is stored. Under
    /// the inode lock again: mappings that may show stale bytes are reset, the extents and size
    /// change, and the transaction commits.
    fn write_chunk(&self, n: &Node, off: u64, data: &[u8], drop_set_id: bool) -> Result<()> {
        let bs = self.inner.geo.block_size;
        let end = off + data.len() as u64;
        let first = off / bs;
        let last = (end - 1) / bs;
        let (pieces, runs, old_size) = {
            let mut g = wr(&n.inode);
            g.live()?;
            let pieces = g.ext.pieces(first, last - first + 1);
            let need: u64 = hole_lens(&pieces).sum();
            let runs = if need > 0 { self.alloc_blocks(self.goal(&g, first), need)? } else { Runs::new() };
            // Extent slots before any byte is stored, so running out of them fails the write
            // whole (link_chunk tops them up in case faults took some meanwhile). New overflow
            // blocks are linked at once: memory must match the medium while the lock is down.
            let metadata = need > 0 || pieces.iter().any(is_unwritten) || end > g.attr.size;
            if !metadata && self.overwrite_locked(n, &g, &pieces, off, data, drop_set_id)? {
                return Ok(());
            }
            if metadata {
                let slots = chunk_slots(&pieces, &runs);
                let reserved = self.undoable(&mut g, |g, _| {
                    let mut tx = Tx::new();
                    if self.reserve_slots(g, slots, &mut tx)? {
                        g.log_attr(&self.inner.geo, &mut tx);
                        self.commit(&tx)?;
                    }
                    Ok(())
                });
                if let Err(e) = reserved {
                    self.unreserve(runs);
                    return Err(e);
                }
            }
            g.open += 1;
            g.writing = Some((off, end));
            (pieces, runs, g.attr.size)
        };
        let mark = WriteMark(n);
        let mut tx = Tx::new();
        let stored = self.store_chunk(&pieces, &runs, off, data, old_size, &mut tx);
        let mut g = wr(&n.inode);
        mark.clear(&mut g);
        let linked = match stored {
            Ok(placed) => self.undoable(&mut g, |g, taken| {
                taken.extend_from_slice(&runs);
                self.link_chunk(n, g, (off, end), placed, tx, drop_set_id)
            }),
            Err(e) => {
                // Nothing links them.
                self.unreserve(runs);
                Err(e)
            }
        };
        if g.open == 0 && g.attr.nlink == 0 && !g.freed {
            // Unlinked and closed while the data went in.
            self.free_inode(&mut g)?;
        }
        linked
    }

    /// A short overwrite of written blocks inside EOF, done whole under the inode lock when
    /// nothing else is needed: the times need no update in this tick of the coarse clock, no
    /// set-ID bit drops, and the file has no mapping (whose copies a write resets). Stores the
    /// data, fences, and returns true; false leaves everything to the three steps. Faults on the
    /// file wait for at most `LOCKED_OVERWRITE` bytes of copy.
    fn overwrite_locked(
        &self,
        n: &Node,
        g: &Inode,
        pieces: &[Piece],
        off: u64,
        data: &[u8],
        drop_set_id: bool,
    ) -> Result<bool> {
        let tick = Timespec::coarse_now();
        if data.len() > LOCKED_OVERWRITE
            || !g.attr.mtime.in_tick(tick)
            || !g.attr.ctime.in_tick(tick)
            || (drop_set_id && killed_set_id(g.attr.mode, false) != 0)
            || !lock(&n.maps).is_empty()
        {
            return Ok(false);
        }
        let geo = &self.inner.geo;
        let bs = geo.block_size;
        let end = off + data.len() as u64;
        for p in pieces {
            let Piece::Mapped(e) = p else { unreachable!("an overwrite has no holes") };
            let s = (e.logical * bs).max(off);
            let t = (e.end() * bs).min(end);
            let at = geo.block_at(e.physical) + (s - e.logical * bs);
            self.inner.dev.write(at, &data[(s - off) as usize..(t - off) as usize])?;
        }
        self.inner.dev.fence();
        Ok(true)
    }

    /// Stores a chunk: new blocks (`runs`, for the holes among `pieces`) whole, data and zeros;
    /// unwritten blocks whole; written blocks in place. Returns the extents the new and the
    /// converted blocks make.
    fn store_chunk(
        &self,
        pieces: &[Piece],
        runs: &[Run],
        off: u64,
        data: &[u8],
        old_size: u64,
        tx: &mut Tx,
    ) -> Result<(Extents, Extents)> {
        let geo = self.inner.geo;
        let dev = &self.inner.dev;
        let bs = geo.block_size;
        let end = off + data.len() as u64;
        let mut new_exts = Extents::new();
        let mut converted = Extents::new();
        let mut queue = RunQueue::new(runs);
        for p in pieces {
            match *p {
                Piece::Mapped(e) if e.state == State::Written => {
                    // In place. The part past the old EOF (only the EOF block has one) is
                    // content of the transaction: durable before the record that makes it file
                    // data, so a crash shows the write whole or not at all there.
                    let s = (e.logical * bs).max(off);
                    let t = (e.end() * bs).min(end);
                    let cut = t.min(old_size).max(s);
                    let at = |pos: u64| geo.block_at(e.physical) + (pos - e.logical * bs);
                    dev.write(at(s), &data[(s - off) as usize..(cut - off) as usize])?;
                    if cut < t {
                        tx.content_write(dev, at(cut), &data[(cut - off) as usize..(t - off) as usize])?;
                    }
                }
                Piece::Mapped(e) => {
                    self.fill_new(tx, e.logical, e.physical, e.len, off, data)?;
                    converted.push(e);
                }
                Piece::Hole { logical, len } => {
                    let runs = queue.take(len);
                    for e in ExtentMap::extents_for(logical, &runs, State::Written) {
                        self.fill_new(tx, e.logical, e.physical, e.len, off, data)?;
                        new_exts.push(e);
                    }
                }
            }
        }
        Ok((new_exts, converted))
    }

    /// Makes a stored chunk file data: resets what mappings may show stale (zeros over holes
    /// and copies, poisoned pages past the old EOF), links the new and converted extents, sets
    /// the size and times, and commits (or only fences, for an overwrite within the clock tick).
    /// The caller puts `g` back and frees the chunk's blocks when it fails.
    fn link_chunk(
        &self,
        n: &Node,
        g: &mut Inode,
        (off, end): (u64, u64),
        (new_exts, converted): (Extents, Extents),
        mut tx: Tx,
        drop_set_id: bool,
    ) -> Result<()> {
        let geo = self.inner.geo;
        let changes_blocks = !new_exts.is_empty() || !converted.is_empty();
        let metadata = changes_blocks || end > g.attr.size;
        let kill = if drop_set_id { killed_set_id(g.attr.mode, false) } else { 0 };
        if metadata {
            self.reserve_slots(g, ExtentMap::slots_needed(new_exts.len() + 2 * converted.len()), &mut tx)?;
        }
        // Bytes mappings stored past the old EOF are zeroed before the size covers them.
        if end > g.attr.size {
            self.grow_over_tail(n, g, end, off, &mut tx)?;
        }
        if changes_blocks {
            self.unmap_range(n, off, end, Reach::Shared)?;
        } else {
            self.unmap_copies(n, off, end)?;
        }
        // The times change only once the coarse clock has ticked past them, as Linux stamps
        // writes with its coarse clock; a pure overwrite within the tick is then the data in
        // place and one fence. A changed time goes through a transaction: a time stored in
        // place could persist half old, half new (8-byte failure atomicity).
        let tick = Timespec::coarse_now();
        let stale = !g.attr.mtime.in_tick(tick) || !g.attr.ctime.in_tick(tick);
        if !metadata && !stale && kill == 0 {
            self.inner.dev.fence();
            return Ok(());
        }
        if stale {
            let now = Timespec::now();
            g.attr.mtime = now;
            g.attr.ctime = now;
        }
        g.attr.mode &= !kill;
        if !metadata {
            g.log_attr(&geo, &mut tx);
            self.commit(&tx)?;
            return Ok(());
        }
        for e in new_exts {
            g.ext.insert(e, &mut tx)?;
        }
        for e in converted {
            g.ext.remove_range(e.logical, e.len, &mut tx)?;
            g.ext.insert(Extent { state: State::Written, ..e }, &mut tx)?;
        }
        g.attr.size = g.attr.size.max(end);
        g.log_attr(&geo, &mut tx);
        if self.planted(Sabotage::SizeInPlace) {
            let at = geo.inode_at(g.ino) + std::mem::offset_of!(crate::layout::RawInode, size) as u64;
            self.inner.dev.write(at, &g.attr.size.to_le_bytes())?;
        }
        self.commit(&tx)?;
        Ok(())
    }

    /// Fills new blocks `[logical, logical+len)` at device block `physical`: the part of the
    /// write `(off, data)` that falls in them, zeros around it.
    fn fill_new(&self, tx: &mut Tx, logical: u64, physical: u64, len: u64, off: u64, data: &[u8]) -> Result<()> {
        let geo = &self.inner.geo;
        let bs = geo.block_size;
        let dev = &self.inner.dev;
        let start = logical * bs;
        let stop = (logical + len) * bs;
        let end = off + data.len() as u64;
        let s = start.max(off);
        let t = stop.min(end);
        let base = geo.block_at(physical);
        let zeros = !self.planted(Sabotage::EdgeZeros);
        if s > start && zeros {
            tx.content_zero(dev, base, s - start)?;
        }
        tx.content_write(dev, base + (s - start), &data[(s - off) as usize..(t - off) as usize])?;
        if t < stop && zeros {
            tx.content_zero(dev, base + (t - start), stop - t)?;
        }
        Ok(())
    }

    /// Sets the size of a regular file (DESIGN.md "Space"): down frees whole blocks past the new last block
    /// and then zeroes its tail; up leaves `[old EOF, new EOF)` reading zero.
    pub fn truncate(&self, ino: u64, size: u64) -> Result<()> {
        self.truncate_node(&*self.settled(ino)?, size)
    }

    pub(crate) fn truncate_node(&self, n: &Node, size: u64) -> Result<()> {
        let _change = self.writable()?;
        let _io = wr(&n.io);
        let mut g = wr(&n.inode);
        g.live()?;
        self.undoable(&mut g, |g, _| self.truncate_locked(n, g, size, &|_| {}))
    }

    /// Truncates the locked inode `g`; `finish` makes further attribute changes that commit in
    /// the same (last) transaction as the new size (setattr). Extents past the new end are cut
    /// from the tail, at most a journal's worth per transaction; the size changes in the last
    /// one, so a crash in between leaves the old size with a tail that reads zero.
    pub(crate) fn truncate_locked(
        &self,
        n: &Node,
        g: &mut Inode,
        size: u64,
        finish: &dyn Fn(&mut Inode),
    ) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(Error::FileTooBig);
        }
        if g.is_dir() {
            return Err(Error::IsDir);
        }
        if !crate::layout::mode::is_reg(g.attr.mode) {
            return Err(Error::InvalidArgument("only regular files can be truncated"));
        }
        let geo = self.inner.geo;
        let bs = geo.block_size;
        let keep = size.div_ceil(bs);
        let shrinking = size < g.attr.size;
        if shrinking {
            // Out of every mapping before any block goes: the page holding the new EOF too (its
            // blocks past EOF are freed when blocks are smaller than a page).
            self.unmap_range(n, size / PAGE * PAGE, u64::MAX, Reach::All)?;
            let limit = self.max_tx_blocks() as usize;
            loop {
                let tail: Vec<&Extent> = g.ext.iter().filter(|e| e.end() > keep).collect();
                if tail.len() <= limit {
                    break;
                }
                // Whole extents only (each one slot entry), never the one straddling `keep`.
                let (from, to) = (tail[tail.len() - limit].logical, tail[tail.len() - 1].end());
                let mut tx = Tx::new();
                let freed = g.ext.remove_range(from, to - from, &mut tx)?;
                g.log_attr(&geo, &mut tx);
                let head = self.commit(&tx)?;
                self.free_after(g.ino, head, freed.iter().map(Extent::run).collect());
            }
        }
        let mut tx = Tx::new();
        let mut freed = Vec::new();
        self.grow_over_tail(n, g, size, size, &mut tx)?;
        if shrinking {
            if let Some(last) = g.ext.last().map(|e| e.end()) {
                if last > keep {
                    // Cutting extents only shortens or removes them: no new slot is needed.
                    freed = g.ext.remove_range(keep, last - keep, &mut tx)?;
                }
            }
        }
        let now = Timespec::now();
        g.attr.size = size;
        g.attr.mtime = now;
        g.attr.ctime = now;
        finish(g);
        g.log_attr(&geo, &mut tx);
        let head = self.commit(&tx)?;
        self.free_after(g.ino, head, freed.iter().map(Extent::run).collect());
        if shrinking && size % bs != 0 && !self.planted(Sabotage::TruncateTail) {
            // A direct write that began before the generation moved may still be storing there.
            self.wait_for_direct_writers();
            // The tail of the new last block is past EOF now, where a mapping of the page must
            // see zeros; it holds the old data, zeroed after the commit (zeroing it before would
            // change bytes the old size still shows). A crash in between leaves them there,
            // which is why the first mapping after a mount zeroes the tail (`Fs::clean_tail`).
            if let Some(Piece::Mapped(e)) = g.ext.pieces(size / bs, 1).first() {
                if e.state == State::Written {
                    self.inner.dev.zero(geo.block_at(e.physical) + size % bs, bs - size % bs)?;
                }
            }
        }
        Ok(())
    }

    /// Makes a file's data and metadata durable across power loss (every return is already
    /// durable against a process crash).
    pub fn fsync(&self, ino: u64) -> Result<()> {
        self.flush_mapped(&*self.settled(ino)?)?;
        self.sync()
    }
}
