//! A direct client of one udax mount: the image mapped, the table of map generations mapped
//! read-only, and per file a cached map that each copy checks against the table (DESIGN.md
//! "Direct access").

use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use udax::direct::{self, DirectTable, Image, MapExtent, Slot, EXTENT_WRITTEN, KERNEL_MAPPED, STATE_LIVE};
use udax::Timespec;

/// Copies that meet a moving generation this many times in a row give up and let the caller
/// go through the mount.
const RETRIES: usize = 8;

/// What a direct call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Served directly: this many bytes.
    Bytes(usize),
    /// Not served: the caller makes the real call on the mount (which is always correct).
    PassThrough,
}

/// A piece of a mapping served from the image: file bytes `[file, file + len)` are the image's
/// bytes from `dev` on (all three page-aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapPiece {
    /// File offset.
    pub file: u64,
    /// Image offset.
    pub dev: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One udax mount as a client sees it.
#[derive(Debug)]
pub struct Mount {
    image: Image,
    image_path: std::path::PathBuf,
    table: DirectTable,
    block_size: u64,
    /// The writer slot, claimed at the first direct write (`None`: the table is read-only to
    /// this process, or every slot is taken; writes then go through the mount), with the
    /// [`forked`] count it was claimed at: a child process claims a slot of its own.
    slot: Mutex<Option<(u64, Option<Slot>)>>,
    /// Whether the table could be opened for writing.
    writable: bool,
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Only a slot this process claimed (not its parent's, before a fork).
        let held = *self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, Some(slot))) = held.filter(|&(f, _)| f == FORKS.load(Ordering::Relaxed)) {
            self.table.release(slot);
        }
    }
}

/// Forks of this process so far, as [`forked`] counts them.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// Tells the client that this process is a new child of a fork: the writer slots its parent
/// holds are not its own (a slot names one process, and the server gives up a slot whose process
/// is gone). The preload library calls it from a `pthread_atfork` child handler; a Rust program
/// that forks and writes directly in the child calls it there. Async-signal-safe.
pub fn forked() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// A file's extents as the mount last gave them, with the generation they belong to.
#[derive(Debug, Default, Clone)]
pub struct CachedMap {
    generation: Option<u64>,
    size: u64,
    extents: Vec<MapExtent>,
    /// The device offset of the file's lane while a client appends under a lease (0: none).
    lane: u64,
    /// The lease this open file holds on the file's growth: the generation it holds in, the
    /// byte it reaches and its token (DESIGN.md "Appends by lease").
    lease: Option<(u64, u64, u64)>,
    /// The tick in which the mount last refused this open file a lease.
    refused_in: Option<Timespec>,
    /// How far the blocks of this open file's leases have been mapped ahead of its appends.
    prefaulted: u64,
    /// The coarse-clock tick of this process's last direct write to the file.
    written_in: Option<Timespec>,
    /// The tick in which a write last found the map (fresh) unfit for a direct store: until the
    /// next tick, writes the cached map finds unfit go to the mount without asking again.
    checked_in: Option<Timespec>,
}

impl Mount {
    /// Attaches to the mount that `fd` (a descriptor of one of its files) belongs to: `None`
    /// when it is not a udax mount that publishes maps, or when this process may not open the
    /// image read-write (then it uses the mount like any program).
    pub fn attach(fd: BorrowedFd<'_>) -> std::io::Result<Option<Mount>> {
        let info = match crate::sys::info(fd) {
            Ok(i) => i,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL | libc::ENOSYS)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if info.magic != direct::TABLE_MAGIC || info.version != direct::VERSION || info.block_size == 0 {
            return Ok(None);
        }
        let image_path = Path::new(std::ffi::OsStr::from_bytes(direct::get_path(&info.image)));
        let table_path = Path::new(std::ffi::OsStr::from_bytes(direct::get_path(&info.table)));
        let Ok(image) = Image::attach(image_path) else { return Ok(None) };
        let (table, writable) = match DirectTable::open(table_path, true) {
            Ok(t) => (t, true),
            Err(_) => match DirectTable::open(table_path, false) {
                Ok(t) => (t, false),
                Err(_) => return Ok(None),
            },
        };
        if image.len() != info.image_bytes || table.inodes() != info.inodes {
            return Ok(None);
        }
        let block_size = u64::from(info.block_size);
        let image_path = image_path.to_path_buf();
        Ok(Some(Mount { image, image_path, table, block_size, slot: Mutex::new(None), writable }))
    }

    /// Tells the server that this process is about to map file `fd` through the kernel: until
    /// that open file is released, every client reads and writes the file through the mount.
    pub fn kernel_map(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        crate::sys::kernel_map(fd)
    }

    /// The image file: a mapping served from the image maps it.
    pub fn image_path(&self) -> &Path {
        &self.image_path
    }

    /// File `ino`'s map generation now (`None`: mapped through the kernel, or no such file).
    pub fn generation(&self, ino: u64) -> Option<u64> {
        self.table.generation(ino).ok().filter(|g| g & KERNEL_MAPPED == 0)
    }

    /// Writes back the image's cache lines of `[dev, dev + len)` (stores through a mapping
    /// served from the image) and fences: durable when it returns.
    pub fn flush(&self, dev: u64, len: u64) -> std::io::Result<()> {
        self.image.flush(dev, len).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    /// The image ranges (`[start, end)`) of file `ino`'s written blocks now, refreshing `cache`
    /// from the mount when the file's generation has moved.
    pub fn written_runs(
        &self,
        fd: BorrowedFd<'_>,
        ino: u64,
        cache: &mut CachedMap,
    ) -> std::io::Result<Vec<(u64, u64)>> {
        if cache.generation.is_none() || cache.generation != self.generation(ino) {
            self.refresh(fd, cache)?;
        }
        let bs = self.block_size;
        let written = cache.extents.iter().filter(|e| e.flags & EXTENT_WRITTEN != 0);
        Ok(written.map(|e| (e.physical, e.physical + e.blocks * bs)).collect())
    }

    /// The pieces of the image that map bytes `[off, end)` of the file open as `fd` (`end` a
    /// multiple of `page`), after the server made the range written and pinned its blocks to
    /// open file `pin` (as an earlier call returned it) if that one pins blocks of this file
    /// already, else to `fd`'s; returns that open file too. For a `private` mapping the server
    /// leaves holes and unwritten blocks as they are, and the pieces cover only the written
    /// blocks: the caller maps zero pages of its own between them. The caller keeps the open
    /// file open as long as it maps the pieces (DESIGN.md "Mappings served from the image").
    /// `None` when the range cannot be served from the image: past the page holding EOF,
    /// blocks not page-aligned, refused by the server (the file mapped through the kernel, too
    /// much to fill, no space), or the server gone. The caller maps through the kernel then.
    pub fn map_pieces(
        &self,
        fd: BorrowedFd<'_>,
        cache: &mut CachedMap,
        (off, end, page): (u64, u64, u64),
        pin: u64,
        private: bool,
    ) -> std::io::Result<Option<(u64, Vec<MapPiece>)>> {
        for _ in 0..RETRIES {
            if !self.live() {
                return Ok(None);
            }
            let Ok(reply) = crate::sys::direct_map(fd, off, end - off, pin, private) else { return Ok(None) };
            if reply.version != direct::VERSION || end > reply.size.next_multiple_of(page) {
                return Ok(None);
            }
            if cache.generation != Some(reply.generation) {
                self.refresh(fd, cache)?;
                if cache.generation != Some(reply.generation) {
                    // Changed since the pin: the blocks of the newer map may not be pinned yet.
                    continue;
                }
            }
            if !private && !self.all_written(cache, off, end) {
                return Ok(None);
            }
            let mut pieces: Vec<MapPiece> = Vec::new();
            let aligned = self.each_piece(cache, off, end, |dev, s, t| {
                if dev % page != 0 || s % page != 0 || t % page != 0 {
                    return Err(udax::Error::InvalidArgument("blocks not page-aligned"));
                }
                match pieces.last_mut() {
                    Some(p) if p.file + p.len == s && p.dev + p.len == dev => p.len += t - s,
                    _ => pieces.push(MapPiece { file: s, dev, len: t - s }),
                }
                Ok(())
            });
            return Ok(aligned.is_ok().then_some((reply.pin, pieces)));
        }
        Ok(None)
    }

    /// Whether the server still serves (a closed table means every cached map is worthless).
    pub fn live(&self) -> bool {
        self.table.state() == STATE_LIVE
    }

    /// Reads file `ino` (open as `fd`) at `off` into `buf` straight from the image, refreshing
    /// `cache` from the mount when the file's generation has moved. Stops at end of file.
    pub fn read_at(
        &self,
        fd: BorrowedFd<'_>,
        ino: u64,
        cache: &mut CachedMap,
        buf: &mut [u8],
        off: u64,
    ) -> std::io::Result<Served> {
        for _ in 0..RETRIES {
            if !self.live() {
                return Ok(Served::PassThrough);
            }
            let Some(before) = self.table.generation(ino).ok().filter(|g| g & KERNEL_MAPPED == 0) else {
                // Mapped through the kernel somewhere: its cached pages are the mount's to keep.
                return Ok(Served::PassThrough);
            };
            if cache.generation != Some(before) {
                self.refresh(fd, cache)?;
                continue;
            }
            let end = off.saturating_add(buf.len() as u64).min(self.size(cache));
            let n = end.saturating_sub(off) as usize;
            if self.copy_out(cache, &mut buf[..n], off).is_err() {
                return Ok(Served::PassThrough);
            }
            // The blocks were the file's for the whole copy only if no change moved the
            // generation meanwhile (every change moves it before it commits), and no new server
            // took the image over (it closes this table before it allocates anything).
            if self.table.generation(ino).ok() == Some(before) && self.live() {
                return Ok(Served::Bytes(n));
            }
        }
        Ok(Served::PassThrough)
    }

    /// Writes `data` into file `ino` (open for writing as `fd`) at `off` straight into the
    /// image, durable when it returns, when the whole range lies in written blocks inside the
    /// file, or grows the file under a lease of this open file's (DESIGN.md "Appends by
    /// lease"); anything else (holes, unwritten blocks, writes far past EOF) is the mount's.
    pub fn write_at(
        &self,
        fd: BorrowedFd<'_>,
        ino: u64,
        cache: &mut CachedMap,
        data: &[u8],
        off: u64,
    ) -> std::io::Result<Served> {
        let Some(slot) = self.writer_slot() else {
            return Ok(Served::PassThrough);
        };
        let end = off.checked_add(data.len() as u64).ok_or(std::io::Error::from_raw_os_error(libc::EFBIG))?;
        let tick = Timespec::coarse_now();
        for _ in 0..RETRIES {
            if !self.live() {
                return Ok(Served::PassThrough);
            }
            let unfit = if end > self.size(cache) {
                !self.leased(cache, off, end, tick)
            } else {
                !self.all_written(cache, off, end)
            };
            // A lease newer than the map: the map is refreshed below.
            let newer = cache.lease.is_some_and(|(g, _, _)| Some(g) != cache.generation);
            if cache.generation.is_some() && unfit && !newer && cache.checked_in == Some(tick) {
                // Growth, or blocks not written, as the map says (it may be old, but passing
                // on is always right): the mount's, without a round trip to refresh the map
                // more than once a tick.
                return Ok(Served::PassThrough);
            }
            // In a write from here on: blocks freed from now wait for it, and so does a new
            // server taking the image over (DESIGN.md).
            self.table.enter(slot);
            let generation = self.table.generation(ino).ok().filter(|g| g & KERNEL_MAPPED == 0 && self.live());
            let Some(generation) = generation else {
                self.table.leave(slot);
                return Ok(Served::PassThrough);
            };
            if cache.generation != Some(generation) {
                self.table.leave(slot);
                self.refresh(fd, cache)?;
                cache.checked_in = Some(tick);
                continue;
            }
            let size = self.size(cache);
            let growth = end > size;
            if growth && cache.lease.is_none_or(|(g, reach, _)| g != generation || end > reach) {
                // Growth: under a lease of this open file's, or through the mount.
                self.table.leave(slot);
                if !self.leased(cache, off, end, tick) {
                    return Ok(Served::PassThrough);
                }
                match crate::sys::lease(fd, end) {
                    Ok(l) if l.version == direct::VERSION => {
                        cache.lease = Some((l.generation, l.end, u64::from(l.token)))
                    }
                    // Refused (mapped through the kernel, preallocated past EOF, an image
                    // without lanes), or a server gone: the mount's, and it says which.
                    _ => {
                        cache.refused_in = Some(tick);
                        return Ok(Served::PassThrough);
                    }
                }
                continue;
            }
            if !self.all_written(cache, off, end) {
                self.table.leave(slot);
                cache.checked_in = Some(tick);
                return Ok(Served::PassThrough);
            }
            if cache.written_in != Some(tick) {
                // Times and set-ID bits, as a write changes them, before the store: once a tick.
                // It is also how a writer learns that a killed server is gone (its table stays
                // live): the request fails, and so, through the mount, does the write.
                self.table.leave(slot);
                crate::sys::writing(fd)?;
                cache.written_in = Some(tick);
                continue;
            }
            let stored =
                if growth { self.append(cache, data, off) } else { self.copy_in(cache, data, off).map(|()| true) };
            self.table.leave(slot);
            // An append whose lease ended under it (its lane frozen) is made again through the
            // mount: the bytes are the same, and the mount's size then covers them.
            return Ok(if stored.is_ok_and(|s| s) { Served::Bytes(data.len()) } else { Served::PassThrough });
        }
        Ok(Served::PassThrough)
    }

    /// The file's size as `cache` and the file's lane give it: the lane holds the size a
    /// lease holder's returned appends reach, stored after their bytes.
    fn size(&self, cache: &CachedMap) -> u64 {
        let lane = if cache.lane == 0 { None } else { self.image.lane_size(cache.lane).ok().flatten() };
        cache.size.max(lane.unwrap_or(0))
    }

    /// Whether a write of `[off, end)` growing the file may be served under a lease: it starts
    /// inside the file (a write past EOF leaves a gap to zero, the mount's: see `append`), and
    /// a lease held reaches `end` or one is worth asking for (not refused in this tick).
    fn leased(&self, cache: &CachedMap, off: u64, end: u64, tick: Timespec) -> bool {
        if off > self.size(cache) {
            return false;
        }
        let held = cache.lease.filter(|&(g, _, _)| Some(g) == cache.generation);
        held.is_some_and(|(_, reach, _)| end <= reach) || cache.refused_in != Some(tick)
    }

    /// Stores `data` at `off`, at or before the end of the file, into blocks this open file's
    /// lease reserved, durable, then raises the lane to its end. False, with nothing stored,
    /// when the lane is no longer this lease's (the lease ended: frozen, cleared or another's)
    /// or the write would leave a gap past EOF; false after the store when the lease ended
    /// during it. Then the caller writes through the mount. No gap is zeroed here: by the time
    /// a client that stopped mid-append zeroed it, the gap could hold what a write through the
    /// mount put there after the lease ended, and the client's own bytes it rewrites anyway.
    fn append(&self, cache: &mut CachedMap, data: &[u8], off: u64) -> udax::Result<bool> {
        let Some((_, reach, token)) = cache.lease.filter(|_| cache.lane != 0) else { return Ok(false) };
        match self.image.lane_of(cache.lane, token)? {
            Some(lane) if off <= cache.size.max(lane) => {}
            _ => return Ok(false),
        }
        if cache.prefaulted < reach {
            // Once per lease window: its blocks mapped in one call rather than a fault per page.
            let from = cache.prefaulted.max(off);
            let _ = self.each_piece(cache, from, reach, |at, s, t| self.image.prefault(at, t - s));
            cache.prefaulted = reach;
        }
        self.copy_in(cache, data, off)?;
        self.image.raise_lane(cache.lane, token, off + data.len() as u64)
    }

    /// This process's writer slot, claimed on first use (and again in a child of a fork).
    fn writer_slot(&self) -> Option<Slot> {
        let forks = FORKS.load(Ordering::Relaxed);
        let mut held = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match *held {
            Some((f, slot)) if f == forks => slot,
            _ => {
                let slot = self.writable.then(|| self.table.claim()).flatten();
                *held = Some((forks, slot));
                slot
            }
        }
    }

    /// Whether `[off, end)` lies wholly in written extents of `cache`.
    fn all_written(&self, cache: &CachedMap, off: u64, end: u64) -> bool {
        let bs = self.block_size;
        let mut at = off;
        let first = cache.extents.partition_point(|e| (e.logical + e.blocks) * bs <= off);
        for e in &cache.extents[first..] {
            if at >= end {
                break;
            }
            if e.logical * bs > at || e.flags & EXTENT_WRITTEN == 0 {
                return false;
            }
            at = (e.logical + e.blocks) * bs;
        }
        at >= end
    }

    /// Stores `data` at file offset `off` through `cache`'s extents (all written), durable.
    fn copy_in(&self, cache: &CachedMap, data: &[u8], off: u64) -> udax::Result<()> {
        let end = off + data.len() as u64;
        self.each_piece(cache, off, end, |at, s, t| {
            self.image.write_durable(at, &data[(s - off) as usize..(t - off) as usize])
        })
    }

    /// Calls `f(device offset, file start, file end)` for each piece of file bytes `[off, end)`
    /// that one written extent of `cache` holds.
    fn each_piece(
        &self,
        cache: &CachedMap,
        off: u64,
        end: u64,
        mut f: impl FnMut(u64, u64, u64) -> udax::Result<()>,
    ) -> udax::Result<()> {
        let bs = self.block_size;
        let first = cache.extents.partition_point(|e| (e.logical + e.blocks) * bs <= off);
        for e in cache.extents[first..].iter().take_while(|e| e.logical * bs < end) {
            if e.flags & EXTENT_WRITTEN == 0 {
                continue;
            }
            let (s, t) = ((e.logical * bs).max(off), ((e.logical + e.blocks) * bs).min(end));
            f(e.physical + (s - e.logical * bs), s, t)?;
        }
        Ok(())
    }

    /// Fetches the file's whole map, page by page (again from the start when it changes
    /// between pages; the caller checks the generation anyway).
    fn refresh(&self, fd: BorrowedFd<'_>, cache: &mut CachedMap) -> std::io::Result<()> {
        let first = crate::sys::map(fd, 0)?;
        let (generation, size, lane) = (first.generation, first.size, first.lane);
        let mut extents = first.extents().to_vec();
        let mut next = first.next_block;
        while next != u64::MAX {
            let page = crate::sys::map(fd, next)?;
            if page.generation != generation || page.count == 0 {
                // Moved on: what is cached now is stale and the next check refreshes it again.
                break;
            }
            extents.extend_from_slice(page.extents());
            next = page.next_block;
        }
        *cache = CachedMap { generation: Some(generation), size, extents, lane, ..*cache };
        Ok(())
    }

    /// Copies `[off, off + buf.len())` of the file as `cache` maps it: written extents from the
    /// image, everything else zeros (only those bytes are zeroed: a 4 KiB read spent a twentieth
    /// of its time clearing the buffer it then copied over).
    fn copy_out(&self, cache: &CachedMap, buf: &mut [u8], off: u64) -> udax::Result<()> {
        let bs = self.block_size;
        let end = off + buf.len() as u64;
        let mut at = off;
        let first = cache.extents.partition_point(|e| (e.logical + e.blocks) * bs <= off);
        for e in cache.extents[first..].iter().take_while(|e| e.logical * bs < end) {
            if e.flags & EXTENT_WRITTEN == 0 {
                continue;
            }
            let (s, t) = ((e.logical * bs).max(off), ((e.logical + e.blocks) * bs).min(end));
            buf[(at - off) as usize..(s - off) as usize].fill(0);
            self.image.read(e.physical + (s - e.logical * bs), &mut buf[(s - off) as usize..(t - off) as usize])?;
            at = t;
        }
        buf[(at - off) as usize..].fill(0);
        Ok(())
    }
}
