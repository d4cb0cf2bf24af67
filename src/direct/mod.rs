//! Direct access for other processes (DESIGN.md "Direct access"): what a mount server tells a
//! client that reads and writes a file's blocks straight in the image, and the table of map
//! generations it publishes for the client to check its cached maps against.
//!
//! The server answers ioctls on a descriptor of a file of the mount: [`IOC_INFO`] (where the
//! image and the table are), [`IOC_MAP`] (a page of the file's extents with the generation
//! they belong to), [`IOC_WRITING`], [`IOC_KERNEL_MAP`], [`IOC_LEASE`] (appends by lease,
//! whose sizes live in the file's lane until the server folds them) and [`IOC_DIRECT_MAP`]
//! (mappings served from the image). Every change to a file's size or blocks bumps the file's generation in the
//! table *before* it commits, so a client that loads the same generation before and after a copy
//! copied from blocks that were the file's for the whole copy.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::alloc::{Allocator, Run};
use crate::device::{Device, SharedWords};
use crate::error::{Error, Result};
use crate::sync::{lock, Mutex};

mod pins;
use pins::Pins;

/// The table's first word.
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"udaxdmap");
/// The protocol's version, in the table and in the replies.
pub const VERSION: u32 = 2;
/// Words before the first inode's generation: magic, version, server pid, inode count, state,
/// epoch, writer slots.
pub const HEADER_WORDS: usize = 8;
const W_MAGIC: usize = 0;
const W_VERSION: usize = 1;
const W_PID: usize = 2;
const W_INODES: usize = 3;
const W_STATE: usize = 4;
const W_EPOCH: usize = 5;
const W_SLOTS: usize = 6;
/// Writer slots: at most this many client processes write directly at once.
pub const SLOTS: usize = 256;
/// Words per writer slot: the owner's pid, its start time, the epoch its write began in (0:
/// not in a write), and a spare.
const SLOT_WORDS: usize = 4;
/// The top bit of a file's generation word: some process maps the file through the kernel, whose
/// cached pages direct reads would miss and direct writes would leave stale, so clients read and
/// write it through the mount until the last such process lets go ([`crate::Fs::note_kernel_map`]).
pub const KERNEL_MAPPED: u64 = 1 << 63;
/// [`DirectTable::state`] while its server serves.
pub const STATE_LIVE: u64 = 1;
/// [`DirectTable::state`] once its server has stopped: cached maps are worthless.
pub const STATE_CLOSED: u64 = 2;

/// The table of map generations, one word per inode number, and the writer slots of the
/// clients that store into the image (see the module docs and DESIGN.md "Direct access").
#[derive(Debug)]
pub struct DirectTable {
    words: SharedWords,
    inodes: u64,
    /// Made by this process (the server): closed when dropped.
    owner: bool,
}

/// A writer slot this process holds in a table (see [`DirectTable::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

impl DirectTable {
    /// Makes the table at `path` for an image of `inodes` inodes, open to whoever `mode`
    /// lets in (the server gives it the image's own bits); removed when dropped.
    pub fn create(path: &Path, inodes: u64, mode: u32) -> Result<DirectTable> {
        let len = usize::try_from(inodes).ok().and_then(|n| n.checked_add(HEADER_WORDS + 1 + SLOTS * SLOT_WORDS));
        let words = SharedWords::create(path, len.ok_or(Error::InvalidArgument("too many inodes"))?, mode)?;
        words.store(W_VERSION, u64::from(VERSION))?;
        words.store(W_PID, u64::from(std::process::id()))?;
        words.store(W_INODES, inodes)?;
        words.store(W_STATE, STATE_LIVE)?;
        words.store(W_EPOCH, 1)?;
        words.store(W_SLOTS, SLOTS as u64)?;
        words.store(W_MAGIC, TABLE_MAGIC)?;
        Ok(DirectTable { words, inodes, owner: true })
    }

    /// Maps a table a server made, checking its header: read-only for a client that only
    /// reads, read-write for one that claims a writer slot.
    pub fn open(path: &Path, writable: bool) -> Result<DirectTable> {
        let words = SharedWords::open(path, writable)?;
        let corrupt = |what| Error::Corrupt { what, at: 0 };
        if words.len() <= HEADER_WORDS || words.load(W_MAGIC)? != TABLE_MAGIC {
            return Err(corrupt("direct table magic"));
        }
        if words.load(W_VERSION)? != u64::from(VERSION) {
            return Err(corrupt("direct table version"));
        }
        let inodes = words.load(W_INODES)?;
        let expected = inodes.checked_add((HEADER_WORDS + 1 + SLOTS * SLOT_WORDS) as u64);
        if words.load(W_SLOTS)? != SLOTS as u64 || expected != Some(words.len() as u64) {
            return Err(corrupt("direct table length"));
        }
        Ok(DirectTable { words, inodes, owner: false })
    }

    /// Inode slots the table has room for.
    pub fn inodes(&self) -> u64 {
        self.inodes
    }

    fn slot(&self, ino: u64) -> Result<usize> {
        if ino == 0 || ino > self.inodes {
            return Err(Error::InvalidArgument("inode number outside the direct table"));
        }
        Ok(HEADER_WORDS + ino as usize)
    }

    /// The first word of writer slot `i`.
    fn writer(&self, i: usize) -> usize {
        HEADER_WORDS + 1 + self.inodes as usize + i * SLOT_WORDS
    }

    /// `ino`'s map generation.
    pub fn generation(&self, ino: u64) -> Result<u64> {
        self.words.load(self.slot(ino)?)
    }

    /// Moves `ino`'s map generation on: its cached maps are stale.
    pub fn bump(&self, ino: u64) {
        if let Ok(i) = self.slot(ino) {
            let _ = self.words.fetch_add(i, 1);
        }
    }

    /// Sets (`on`) or clears `ino`'s [`KERNEL_MAPPED`] bit.
    pub fn set_kernel_mapped(&self, ino: u64, on: bool) {
        let Ok(i) = self.slot(ino) else { return };
        loop {
            let Ok(old) = self.words.load(i) else { return };
            let new = if on { old | KERNEL_MAPPED } else { old & !KERNEL_MAPPED };
            if old == new || self.words.compare_exchange(i, old, new).unwrap_or(true) {
                return;
            }
        }
    }

    /// The server's process id.
    pub fn server_pid(&self) -> u64 {
        self.words.load(W_PID).unwrap_or(0)
    }

    /// [`STATE_LIVE`] or [`STATE_CLOSED`].
    pub fn state(&self) -> u64 {
        self.words.load(W_STATE).unwrap_or(STATE_CLOSED)
    }

    /// Marks the table closed (the server stops serving): clients stop using cached maps.
    pub fn close(&self) {
        let _ = self.words.store(W_STATE, STATE_CLOSED);
    }

    /// Takes over from a server that left this table behind (it died, or was killed): closes
    /// it, so that its clients stop reading and storing directly, and waits — at most `wait` —
    /// until no write that began under it still runs (writers that died are given up). Busy
    /// when some still do: the new server must not allocate a block they may store to.
    pub fn retire(&self, wait: std::time::Duration) -> Result<()> {
        self.close();
        let ended = self.advance();
        let start = std::time::Instant::now();
        while self.quiet_through() < ended {
            if start.elapsed() >= wait {
                return Err(Error::Busy);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    /// Takes a free writer slot for this process (a slot whose process is gone is free).
    /// `None` when all are taken: the caller writes through the mount.
    pub fn claim(&self) -> Option<Slot> {
        let pid = u64::from(std::process::id());
        let start = start_time(pid)?;
        (0..SLOTS).find_map(|i| {
            let w = self.writer(i);
            let owner = self.words.load(w).ok()?;
            if owner != 0 && self.alive(i) {
                return None;
            }
            self.words.compare_exchange(w, owner, pid).ok()?.then_some(())?;
            self.words.store(w + 1, start).ok()?;
            self.words.store(w + 2, 0).ok()?;
            Some(Slot(i))
        })
    }

    /// Gives a slot back.
    pub fn release(&self, slot: Slot) {
        let w = self.writer(slot.0);
        let _ = self.words.store(w + 2, 0);
        let _ = self.words.store(w, 0);
    }

    /// Marks the slot's process as in a direct write, from the current epoch on. It must then
    /// check the file's generation (the exchange is a full fence: the check cannot be done
    /// before the mark is visible), store, fence, and [`DirectTable::leave`].
    pub fn enter(&self, slot: Slot) {
        let epoch = self.words.load(W_EPOCH).unwrap_or(1).max(1);
        let _ = self.words.swap(self.writer(slot.0) + 2, epoch);
    }

    /// Ends the slot's direct write.
    pub fn leave(&self, slot: Slot) {
        let _ = self.words.store(self.writer(slot.0) + 2, 0);
    }

    /// Starts a new epoch and returns the one that ended: blocks freed now (their files'
    /// generations already moved) may still be written by writes that began in it or earlier.
    pub fn advance(&self) -> u64 {
        self.words.fetch_add(W_EPOCH, 1).unwrap_or(0)
    }

    /// The latest epoch no direct write still runs in: blocks freed when that epoch ended may be
    /// reused. Slots of processes that are gone are given back on the way.
    pub fn quiet_through(&self) -> u64 {
        let mut quiet = u64::MAX;
        for i in 0..SLOTS {
            let w = self.writer(i);
            if self.words.load(w).unwrap_or(0) == 0 {
                continue;
            }
            let active = self.words.load(w + 2).unwrap_or(0);
            if active != 0 {
                if self.alive(i) {
                    quiet = quiet.min(active - 1);
                } else {
                    self.release(Slot(i));
                }
            }
        }
        quiet.min(self.words.load(W_EPOCH).unwrap_or(1))
    }

    /// Whether slot `i`'s owner is still the process that claimed it.
    fn alive(&self, i: usize) -> bool {
        let w = self.writer(i);
        let (pid, start) = (self.words.load(w).unwrap_or(0), self.words.load(w + 1).unwrap_or(0));
        pid != 0 && start_time(pid) == Some(start)
    }
}

/// A process's start time (clock ticks after boot, /proc/PID/stat's 22nd field): with the pid,
/// it names one process even after the pid is reused.
fn start_time(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// How long a change waits for direct writes that may still store into blocks it is about to
/// reuse or zero, before it goes on (a writer stopped mid-store, say by SIGSTOP, is not waited
/// for forever; its store then lands in a block no file owns).
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a file system that publishes maps holds: the table, and the blocks it keeps from reuse
/// while a direct write that began before their file's generation moved may still store there.
#[derive(Debug)]
pub(crate) struct Publication {
    pub(crate) table: DirectTable,
    /// Blocks freed (at a journal position) when an epoch ended, oldest first: reusable once no
    /// direct write of that epoch or an earlier one runs.
    quarantine: Mutex<VecDeque<(u64, u64, Vec<Run>)>>,
    /// Files mapped through the kernel, with how many open files map them.
    pub(crate) kernel_maps: Mutex<HashMap<u64, u64>>,
    /// Leases by inode number (`fs::lease`); changed only under the file's inode lock.
    leases: Mutex<HashMap<u64, Lease>>,
    /// The token of the last lease granted.
    last_token: AtomicU64,
    /// How many leases there are: operations skip the map while there are none.
    leased: AtomicUsize,
    /// Blocks that clients map from the image, and the freed ones they hold ([`pins`]).
    pins: Mutex<Pins>,
}

/// An open file's lease on a file's growth (DESIGN.md "Appends by lease").
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    /// The open file (its handle) that holds it.
    pub(crate) owner: u64,
    /// The file's size when it was granted.
    pub(crate) start: u64,
    /// The client may store below this byte: the blocks up to it are the file's.
    pub(crate) end: u64,
    /// The token its lane words carry.
    pub(crate) token: u64,
}

impl Publication {
    pub(crate) fn new(table: DirectTable) -> Publication {
        Publication {
            table,
            quarantine: Mutex::new(VecDeque::new()),
            kernel_maps: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            last_token: AtomicU64::new(0),
            leased: AtomicUsize::new(0),
            pins: Mutex::new(Pins::default()),
        }
    }

    /// A token for a new lease: 1 to 0x7fff, in turn (a lane word's token bits).
    pub(crate) fn next_token(&self) -> u64 {
        self.last_token.fetch_add(1, Ordering::Relaxed) % 0x7fff + 1
    }

    /// `ino`'s lease, if it has one.
    pub(crate) fn lease(&self, ino: u64) -> Option<Lease> {
        if self.leased.load(Ordering::Acquire) == 0 {
            return None;
        }
        lock(&self.leases).get(&ino).copied()
    }

    /// Records `ino`'s lease (`Some`) or its end.
    pub(crate) fn set_lease(&self, ino: u64, lease: Option<Lease>) {
        let mut leases = lock(&self.leases);
        match lease {
            Some(l) => {
                leases.insert(ino, l);
            }
            None => {
                leases.remove(&ino);
            }
        }
        self.leased.store(leases.len(), Ordering::Release);
    }

    /// Frees `runs`, which the commit at journal position `pos` unlinked from file `ino`, once
    /// no direct write can reach them any more and no client maps them.
    pub(crate) fn quarantine(&self, ino: u64, pos: u64, runs: Vec<Run>, alloc: &Mutex<Allocator>) {
        let runs = {
            let mut pins = lock(&self.pins);
            if pins.is_empty() {
                runs
            } else {
                pins.hold(ino, pos, runs)
            }
        };
        if !runs.is_empty() {
            self.quarantine_runs(pos, runs, alloc);
        }
    }

    fn quarantine_runs(&self, pos: u64, runs: Vec<Run>, alloc: &Mutex<Allocator>) {
        // The commit moved the files' generations; writes that begin from the next epoch on see
        // that and store nothing here.
        let ended = self.table.advance();
        lock(&self.quarantine).push_back((ended, pos, runs));
        self.drain(alloc);
    }

    /// A client maps `runs` of file `ino` from the image: they are pinned to open file `to`
    /// when it already pins blocks of that file, else to open file `asking`, and are not reused
    /// while that open file is, even once the file frees them. Returns the open file.
    pub(crate) fn pin(&self, to: u64, asking: u64, ino: u64, runs: Vec<Run>) -> u64 {
        let mut pins = lock(&self.pins);
        let owner = if to != 0 && pins.pins_of(to) == Some(ino) { to } else { asking };
        pins.pin(owner, ino, runs);
        owner
    }

    /// Open file `owner` is released: the blocks it alone kept from reuse are freed.
    pub(crate) fn unpin(&self, owner: u64, alloc: &Mutex<Allocator>) {
        let back = {
            let mut pins = lock(&self.pins);
            if pins.is_empty() {
                return;
            }
            pins.release(owner)
        };
        for (pos, runs) in back {
            self.quarantine_runs(pos, runs, alloc);
        }
    }

    /// Hands the quarantined runs no direct write can reach any more to the allocator.
    pub(crate) fn drain(&self, alloc: &Mutex<Allocator>) {
        let mut q = lock(&self.quarantine);
        if q.is_empty() {
            return;
        }
        let quiet = self.table.quiet_through();
        while q.front().is_some_and(|&(epoch, _, _)| epoch <= quiet) {
            if let Some((_, pos, runs)) = q.pop_front() {
                lock(alloc).free_after(pos, runs);
            }
        }
    }

    /// Waits (at most [`WRITER_WAIT`]) until no direct write that began before now runs, so
    /// that blocks a commit just unlinked, or bytes it just put past EOF, see no more stores;
    /// then drains the quarantine.
    pub(crate) fn wait_for_writers(&self, alloc: &Mutex<Allocator>) {
        let ended = self.table.advance();
        let start = std::time::Instant::now();
        while self.table.quiet_through() < ended && start.elapsed() < WRITER_WAIT {
            std::thread::yield_now();
        }
        self.drain(alloc);
    }
}

impl Drop for DirectTable {
    fn drop(&mut self) {
        if self.owner {
            self.close();
        }
    }
}

/// An image as a direct client maps it: the bytes of the files the server's maps name. Copies
/// in and out go through the device's routines, which never form a reference to the mapping
/// (other processes store to it at the same time).
#[derive(Debug)]
pub struct Image {
    dev: Device,
}

impl Image {
    /// Maps the image at `path` read-write, without the lock its server holds. The kernel checks
    /// that the caller may open it for writing.
    pub fn attach(path: &Path) -> Result<Image> {
        Ok(Image { dev: Device::attach(path)? })
    }

    /// The image's length in bytes.
    pub fn len(&self) -> u64 {
        self.dev.len()
    }

    /// Whether the image is empty (never, once attached).
    pub fn is_empty(&self) -> bool {
        self.dev.is_empty()
    }

    /// Copies the image's bytes at `off` into `buf`.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.dev.read(off, buf)
    }

    /// Stores `data` at `off` and fences: durable when it returns, as the library's writes.
    pub fn write_durable(&self, off: u64, data: &[u8]) -> Result<()> {
        self.dev.write(off, data)?;
        self.dev.fence();
        Ok(())
    }

    /// Writes back the cache lines of `[off, off+len)`, stored to through a mapping of the
    /// image, and fences: durable when it returns.
    pub fn flush(&self, off: u64, len: u64) -> Result<()> {
        self.dev.flush(off, len)?;
        self.dev.fence();
        Ok(())
    }

    /// Maps the pages of `[off, off+len)` now, so that stores there take no page fault.
    pub fn prefault(&self, off: u64, len: u64) -> Result<()> {
        self.dev.prefault(off, len)
    }

    /// The size the lane word at `off` ([`MapIo::lane`]) says appends reach, if it holds a lane.
    pub fn lane_size(&self, off: u64) -> Result<Option<u64>> {
        Ok(crate::layout::lane_size(self.dev.load_u64(off)?))
    }

    /// The size the lane word at `off` says appends reach, if it is the lane of the lease named
    /// `token` and not frozen.
    pub fn lane_of(&self, off: u64, token: u64) -> Result<Option<u64>> {
        let w = self.dev.load_u64(off)?;
        Ok(crate::layout::lane_size(w).filter(|_| w >> crate::layout::LANE_TOKEN_SHIFT == token))
    }

    /// Raises the lane word at `off` of the lease named `token` so that it says the appends
    /// reach `size` bytes, durable when it returns: false when the lane is no longer that
    /// lease's (ended, or being folded), and the caller's append must go through the mount.
    pub fn raise_lane(&self, off: u64, token: u64, size: u64) -> Result<bool> {
        let mut held = self.dev.load_u64(off)?;
        loop {
            if held >> crate::layout::LANE_TOKEN_SHIFT != token {
                return Ok(false);
            }
            if held & crate::layout::LANE_REACH > size {
                return Ok(true);
            }
            let new = (token << crate::layout::LANE_TOKEN_SHIFT) | (size + 1);
            match self.dev.compare_exchange_u64(off, held, new)? {
                h if h == held => break,
                h => held = h,
            }
        }
        self.dev.fence();
        Ok(true)
    }
}

/// Builds an ioctl request number as Linux's `_IOC` does (x86, arm and riscv layout).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'U' as u32) << 8) | nr
}
const IOC_READ: u32 = 2;
const IOC_READ_WRITE: u32 = 3;

/// Where the image and the table are: `_IOR('U', 0xd0, InfoReply)`.
pub const IOC_INFO: u32 = ioc(IOC_READ, 0xd0, size_of::<InfoReply>());
/// A page of a file's extents: `_IOWR('U', 0xd1, MapIo)`.
pub const IOC_MAP: u32 = ioc(IOC_READ_WRITE, 0xd1, size_of::<MapIo>());
/// "I am writing this file directly" (`_IO('U', 0xd2)`): the server sets its times and drops
/// set-ID bits as a write would ([`crate::Fs::note_direct_write`]). A client asks it before
/// its first direct write in each tick of the coarse clock.
pub const IOC_WRITING: u32 = ioc(0, 0xd2, 0);

/// "I map this file through the kernel" (`_IO('U', 0xd3)`), asked on the descriptor before the
/// mmap: until that open file is released, every client reads and writes the file through the
/// mount ([`KERNEL_MAPPED`], [`crate::Fs::note_kernel_map`]).
pub const IOC_KERNEL_MAP: u32 = ioc(0, 0xd3, 0);

/// "Let me append" (`_IOWR('U', 0xd4, LeaseIo)`): grants the open file a lease on the file's
/// growth, or extends the one it holds, with blocks reserved past EOF up to at least
/// [`LeaseIo::want`] ([`crate::Fs::lease`]; DESIGN.md "Appends by lease").
pub const IOC_LEASE: u32 = ioc(IOC_READ_WRITE, 0xd4, size_of::<LeaseIo>());

/// "I map this range from the image" (`_IOWR('U', 0xd5, DirectMapIo)`): the server makes the
/// range's blocks inside EOF written (holes and unwritten blocks zeroed) and pins them to an
/// open file of the client's that lives as long as its mappings of the file (the one asking, or
/// the one [`DirectMapIo::pin`] names) until it is released ([`crate::Fs::direct_map`]; DESIGN.md "Mappings served from the image").
pub const IOC_DIRECT_MAP: u32 = ioc(IOC_READ_WRITE, 0xd5, size_of::<DirectMapIo>());

/// The request and reply of [`IOC_DIRECT_MAP`]: the client fills `off` and `len`; the server
/// the rest.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct DirectMapIo {
    /// In: the first byte of the range.
    pub off: u64,
    /// In: its length.
    pub len: u64,
    /// [`VERSION`].
    pub version: u32,
    /// In: [`MAP_LEAVE_HOLES`] or zero. Out: as it came in.
    pub flags: u32,
    /// The file's map generation with the range written (unless holes were left) and pinned:
    /// the client maps the blocks of that generation's map.
    pub generation: u64,
    /// The file's size.
    pub size: u64,
    /// In: the open file (as an earlier reply named it) to pin the blocks to, when it still
    /// pins blocks of this file; 0 for the one asking. Out: the open file they are pinned to.
    pub pin: u64,
}
const _: () = assert!(size_of::<DirectMapIo>() == 48);

/// [`DirectMapIo::flags`]: leave the range's holes and unwritten blocks as they are, for a
/// private mapping, which shows them as zero pages of its own; only the written blocks are
/// pinned. Without it, they are made written (a shared mapping must see later stores there).
pub const MAP_LEAVE_HOLES: u32 = 1;

/// The request and reply of [`IOC_LEASE`]: the client fills `want`; the server the rest.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct LeaseIo {
    /// In: the byte the client wants to store up to (exclusive).
    pub want: u64,
    /// [`VERSION`].
    pub version: u32,
    /// The lease's token, which the client's lane words carry ([`Image::raise_lane`]).
    pub token: u32,
    /// The file's map generation with the lease in place: the lease holds while it does.
    pub generation: u64,
    /// The client may store below this byte (whole blocks past EOF are the file's up to it).
    pub end: u64,
    /// Device offset of the file's lane word (see [`MapIo::lane`]).
    pub lane: u64,
    /// The file's committed size.
    pub size: u64,
}
const _: () = assert!(size_of::<LeaseIo>() == 48);

/// The longest image or table path [`InfoReply`] carries.
pub const PATH_MAX: usize = 1024;

/// The reply to [`IOC_INFO`].
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
#[repr(C)]
pub struct InfoReply {
    /// [`TABLE_MAGIC`].
    pub magic: u64,
    /// [`VERSION`].
    pub version: u32,
    /// The image's block size in bytes.
    pub block_size: u32,
    /// The image's size in bytes.
    pub image_bytes: u64,
    /// Inode slots (the table's length past its header).
    pub inodes: u64,
    /// The image file, NUL-padded.
    pub image: [u8; PATH_MAX],
    /// The table, NUL-padded.
    pub table: [u8; PATH_MAX],
}
const _: () = assert!(size_of::<InfoReply>() == 32 + 2 * PATH_MAX);

/// Extents one [`IOC_MAP`] reply carries at most.
pub const MAP_EXTENTS: usize = 240;

/// One extent of a [`MapIo`] reply.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MapExtent {
    /// First file block.
    pub logical: u64,
    /// Device offset of its first byte.
    pub physical: u64,
    /// Length in blocks.
    pub blocks: u64,
    /// [`EXTENT_WRITTEN`] when its blocks hold file data (else they read as zeros).
    pub flags: u64,
}
const _: () = assert!(size_of::<MapExtent>() == 32);

/// [`MapExtent::flags`]: written.
pub const EXTENT_WRITTEN: u64 = 1;

/// The request and reply of [`IOC_MAP`]: the client fills `from_block`; the server the rest.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
#[repr(C)]
pub struct MapIo {
    /// In: the first file block of interest. Out: unchanged.
    pub from_block: u64,
    /// [`VERSION`].
    pub version: u32,
    /// Extents filled in `extents`.
    pub count: u32,
    /// The file's map generation these extents belong to.
    pub generation: u64,
    /// The file's size in bytes.
    pub size: u64,
    /// The file block after the last one this reply covers: extents starting there or later
    /// are in the next page (`u64::MAX` when this page reaches the end of the map).
    pub next_block: u64,
    /// While a client appends to the file under a lease: the device offset of its lane word
    /// (0 or 1 + the size its returned appends reach), which readers load after the generation
    /// and take the size from when it is larger. 0 when there is no lease.
    pub lane: u64,
    /// The file's extents from the one holding `from_block` on, sorted.
    pub extents: [MapExtent; MAP_EXTENTS],
}
const _: () = assert!(size_of::<MapIo>() == 48 + 32 * MAP_EXTENTS && size_of::<MapIo>() < 1 << 14);

impl MapIo {
    /// A request for the extents from `from_block` on.
    pub fn request(from_block: u64) -> MapIo {
        let mut m = MapIo::new_zeroed();
        m.from_block = from_block;
        m
    }

    /// The filled extents.
    pub fn extents(&self) -> &[MapExtent] {
        &self.extents[..(self.count as usize).min(MAP_EXTENTS)]
    }
}

/// Writes `s` NUL-padded into `out`; false when it does not fit (with its NUL).
pub fn put_path(out: &mut [u8; PATH_MAX], s: &[u8]) -> bool {
    if s.len() >= PATH_MAX || s.contains(&0) {
        return false;
    }
    out.fill(0);
    out[..s.len()].copy_from_slice(s);
    true
}

/// The path in a NUL-padded field.
pub fn get_path(field: &[u8; PATH_MAX]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(PATH_MAX);
    &field[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(what: &str) -> (DirectTable, DirectTable) {
        let path = std::env::temp_dir().join(format!("udax-direct-unit-{what}-{}", std::process::id()));
        let server = DirectTable::create(&path, 100, 0o600).unwrap();
        let client = DirectTable::open(&path, true).unwrap();
        (server, client)
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps shared memory")]
    fn epochs_end_only_when_the_writes_that_began_in_them_do() {
        let (server, client) = table("epochs");
        assert_eq!(server.quiet_through(), 1, "no writer: everything up to the current epoch is quiet");
        let a = client.claim().unwrap();
        let b = client.claim().unwrap();
        assert_ne!(a, b);
        client.enter(a); // in epoch 1
        let ended = server.advance();
        assert_eq!(ended, 1);
        assert_eq!(server.quiet_through(), 0, "a write of epoch 1 still runs");
        client.enter(b); // in epoch 2: it sees what ended epoch 1
        assert_eq!(server.quiet_through(), 0);
        client.leave(a);
        assert_eq!(server.quiet_through(), 1, "epoch 1's blocks are free; epoch 2's writer remains");
        client.leave(b);
        assert_eq!(server.quiet_through(), 2);
        client.release(a);
        client.release(b);
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps shared memory and spawns a process")]
    fn a_writer_that_died_in_a_write_is_given_up() {
        let (server, client) = table("dead");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = u64::from(child.id());
        child.wait().unwrap();
        // The slot as the child would have left it: claimed, in a write of epoch 1.
        let w = client.writer(0);
        client.words.store(w, pid).unwrap();
        client.words.store(w + 1, 12345).unwrap();
        client.words.store(w + 2, 1).unwrap();
        server.advance();
        assert_eq!(server.quiet_through(), 2, "a gone process holds nothing back");
        assert_eq!(client.words.load(w).unwrap(), 0, "and its slot is free again");
        assert_eq!(client.claim(), Some(Slot(0)));
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps shared memory")]
    fn a_new_server_waits_for_the_writes_of_the_old_ones_clients() {
        let (left_behind, client) = table("retire");
        let slot = client.claim().unwrap();
        client.enter(slot);
        let wait = std::time::Duration::from_millis(20);
        assert!(matches!(left_behind.retire(wait), Err(Error::Busy)), "a write still runs");
        assert_eq!(client.state(), STATE_CLOSED, "the clients were told at once");
        client.leave(slot);
        left_behind.retire(wait).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps shared memory")]
    fn the_kernel_mapped_bit_rides_on_the_generation_and_leaves_it_counting() {
        let (server, client) = table("mapped");
        server.bump(7);
        server.set_kernel_mapped(7, true);
        server.set_kernel_mapped(7, true);
        assert_eq!(client.generation(7).unwrap(), KERNEL_MAPPED | 1);
        server.bump(7);
        assert_eq!(client.generation(7).unwrap(), KERNEL_MAPPED | 2, "changes still move the generation");
        assert_eq!(client.generation(8).unwrap(), 0, "other files keep theirs");
        server.set_kernel_mapped(7, false);
        assert_eq!(client.generation(7).unwrap(), 2);
    }
}
