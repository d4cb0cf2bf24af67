//! Direct clients of a mount (DESIGN.md "Direct access"): publishing map generations, and the
//! file maps handed out.

use crate::direct::{DirectMapIo, DirectTable, MapExtent, MapIo, Publication, KERNEL_MAPPED, MAP_LEAVE_HOLES};
use crate::error::{Error, Result};
use crate::extent::{Piece, State};
use crate::inode::Timespec;
use crate::journal::Tx;
use crate::layout::mode;
use crate::sync::{lock, rd, wr};

use super::state::Fs;
use super::types::killed_set_id;

impl Fs {
    /// Publishes map generations to direct clients in `table` (DESIGN.md "Direct access"):
    /// from now on every commit that changes a file's size, extents or times moves the file's
    /// generation first, and freed blocks wait for direct writes that may still store to them.
    /// Once per mount: a second table is refused (EBUSY).
    pub fn publish_maps(&self, table: DirectTable) -> Result<()> {
        if table.inodes() < self.inner.geo.inode_count {
            return Err(Error::InvalidArgument("the direct table is smaller than the inode table"));
        }
        self.inner.direct.set(Publication::new(table)).map_err(|_| Error::Busy)
    }

    /// The page of `ino`'s extents from file block `from_block` on, with its size and the map
    /// generation they belong to (0 when no table is published), as [`crate::direct::IOC_MAP`]
    /// answers it. A regular file only (EINVAL otherwise).
    pub fn file_map(&self, ino: u64, from_block: u64) -> Result<MapIo> {
        let n = self.node(ino)?;
        let g = rd(&n.inode);
        g.live()?;
        if !mode::is_reg(g.attr.mode) {
            return Err(Error::InvalidArgument("not a regular file"));
        }
        let mut m = MapIo::request(from_block);
        m.version = crate::direct::VERSION;
        // Under the inode lock, which every change to the map holds while it moves the
        // generation: the extents below are the ones this generation names.
        m.generation = self.inner.direct.get().map_or(Ok(0), |p| p.table.generation(ino))?;
        m.size = g.attr.size;
        m.next_block = u64::MAX;
        if self.inner.direct.get().and_then(|p| p.lease(ino)).is_some() {
            m.lane = self.inner.geo.inode_at(ino) + crate::layout::INODE_LANE_OFF;
        }
        let bs = self.inner.geo.block_size;
        for e in g.ext.iter().filter(|e| e.end() > from_block) {
            if m.count as usize == crate::direct::MAP_EXTENTS {
                m.next_block = e.logical;
                break;
            }
            m.extents[m.count as usize] = MapExtent {
                logical: e.logical,
                physical: e.physical * bs,
                blocks: e.len,
                flags: if e.state == State::Written { crate::direct::EXTENT_WRITTEN } else { 0 },
            };
            m.count += 1;
        }
        Ok(m)
    }

    /// An open file of `ino` is about to be mapped through the kernel (`mapped`), or one that was
    /// has been released. While any is, the file's generation word carries
    /// [`crate::direct::KERNEL_MAPPED`] and clients read and write it through the mount, whose
    /// requests keep the kernel's cached pages coherent; a mapping waits (at most a second) for
    /// direct writes that may have checked the word before it changed. No-op without a table.
    pub fn note_kernel_map(&self, ino: u64, mapped: bool) {
        let Some(p) = self.inner.direct.get() else { return };

        let mut maps = lock(&p.kernel_maps);
        if mapped {
            *maps.entry(ino).or_insert(0) += 1;
            p.table.set_kernel_mapped(ino, true);
            drop(maps);
            p.wait_for_writers(&self.inner.alloc);
            // No lease is granted from here on; one granted before ends, so that the pages the
            // kernel fills through the mount hold its appends.
            if let Ok(n) = self.node(ino) {
                let _ = self.settle(&n);
            }
        } else if let Some(n) = maps.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                maps.remove(&ino);
                p.table.set_kernel_mapped(ino, false);
            }
        }
    }

    /// A client is about to map `[off, off+len)` of regular file `ino` straight from the image
    /// (DESIGN.md "Mappings served from the image"), asking on open file `asking`: the range's
    /// blocks inside EOF become written (holes and unwritten blocks zeroed, in one
    /// transaction; not with `leave_holes`, for a private mapping, which shows them as zero
    /// pages of its own), the bytes past EOF in its page read zero, and the blocks are pinned to
    /// open file `pin` if it pins blocks of this file already, else to `asking`, until
    /// [`Fs::direct_unmap`] of that open file: freed from the file meanwhile, they are not
    /// reused. The reply names the open file. Refused with
    /// EBUSY while the file is mapped through the kernel, with EFBIG for more than one
    /// transaction's worth of blocks to fill, and with EOPNOTSUPP on a mount that publishes no
    /// maps.
    pub fn direct_map(
        &self,
        ino: u64,
        asking: u64,
        pin: u64,
        (off, len): (u64, u64),
        leave_holes: bool,
    ) -> Result<DirectMapIo> {
        let p = self.publication()?;
        let n = self.settled(ino)?;
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
        let bs = self.inner.geo.block_size;
        let end = off.saturating_add(len).min(g.attr.size.next_multiple_of(bs));
        let (first, last) = (off / bs, end.div_ceil(bs));
        let mut owner = asking;
        if last > first {
            if !leave_holes {
                let fill: u64 = g
                    .ext
                    .pieces(first, last - first)
                    .iter()
                    .map(|p| match p {
                        Piece::Hole { len, .. } => *len,
                        Piece::Mapped(e) if e.state != State::Written => e.len,
                        Piece::Mapped(_) => 0,
                    })
                    .sum();
                if fill > self.max_tx_blocks() - 2 {
                    return Err(Error::FileTooBig);
                }
                self.make_written(&mut g, first * bs, last * bs, u64::MAX)?;
            }
            self.clean_tail(&mut g)?;
            let runs = g.ext.pieces(first, last - first).into_iter().filter_map(|p| match p {
                Piece::Mapped(e) => Some(e.run()),
                Piece::Hole { .. } => None,
            });
            owner = p.pin(pin, asking, ino, runs.collect());
        }
        Ok(DirectMapIo {
            off,
            len,
            version: crate::direct::VERSION,
            flags: if leave_holes { MAP_LEAVE_HOLES } else { 0 },
            generation: p.table.generation(ino)?,
            size: g.attr.size,
            pin: owner,
        })
    }

    /// Open file `owner` is released: the blocks it pinned ([`Fs::direct_map`]) that its file
    /// freed meanwhile are freed now, unless another open file pins them too.
    pub fn direct_unmap(&self, owner: u64) {
        if let Some(p) = self.inner.direct.get() {
            p.unpin(owner, &self.inner.alloc);
        }
    }

    /// What a write a direct client stored into `ino` changes besides its bytes, as the write
    /// through [`Fs::write`] would: mtime and ctime, when they are not inside the current tick
    /// of the coarse clock, and the set-ID bits a write drops (`drop_set_id`: the writer lacks
    /// CAP_FSETID). One transaction, and nothing at all within a tick.
    pub fn note_direct_write(&self, ino: u64, drop_set_id: bool) -> Result<()> {
        let n = self.node(ino)?;
        let _change = self.writable()?;
        let mut g = wr(&n.inode);
        g.live()?;
        if !mode::is_reg(g.attr.mode) {
            return Err(Error::InvalidArgument("not a regular file"));
        }
        let kill = if drop_set_id { killed_set_id(g.attr.mode, false) } else { 0 };
        let tick = Timespec::coarse_now();
        if g.attr.mtime.in_tick(tick) && g.attr.ctime.in_tick(tick) && kill == 0 {
            return Ok(());
        }
        let old = g.attr;
        let now = Timespec::now();
        g.attr.mtime = now;
        g.attr.ctime = now;
        g.attr.mode &= !kill;
        let mut tx = Tx::new();
        g.log_attr(&self.inner.geo, &mut tx);
        // Times and mode only: clients' cached maps stay good (the writer's own included).
        tx.keeps_maps();
        if let Err(e) = self.commit(&tx) {
            g.attr = old;
            return Err(e);
        }
        Ok(())
    }
}
