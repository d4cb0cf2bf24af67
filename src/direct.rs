//! Direct access for other processes (DESIGN.md "Direct access"): what a mount server tells a
//! client that reads and writes a file's blocks straight in the image, and the table of map
//! generations it publishes for the client to check its cached maps against.
//!
//! The server answers two ioctls on a descriptor of a file of the mount: [`IOC_INFO`] (where the
//! image and the table are) and [`IOC_MAP`] (a page of the file's extents with the generation
//! they belong to). Every change to a file's size or blocks bumps the file's generation in the
//! table *before* it commits, so a client that loads the same generation before and after a copy
//! copied from blocks that were the file's for the whole copy.

use std::path::Path;

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::device::{Device, SharedWords};
use crate::error::{Error, Result};

/// The table's first word.
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"udaxdmap");
/// The protocol's version, in the table and in both replies.
pub const VERSION: u32 = 1;
/// Words before the first inode's generation: magic, version, server pid, inode count, state.
pub const HEADER_WORDS: usize = 8;
const W_MAGIC: usize = 0;
const W_VERSION: usize = 1;
const W_PID: usize = 2;
const W_INODES: usize = 3;
const W_STATE: usize = 4;
/// [`DirectTable::state`] while its server serves.
pub const STATE_LIVE: u64 = 1;
/// [`DirectTable::state`] once its server has stopped: cached maps are worthless.
pub const STATE_CLOSED: u64 = 2;

/// The table of map generations, one word per inode number (see the module docs).
#[derive(Debug)]
pub struct DirectTable {
    words: SharedWords,
    inodes: u64,
    /// Made by this process (the server): closed when dropped.
    owner: bool,
}

impl DirectTable {
    /// Makes the table at `path` for an image of `inodes` inodes, open to whoever `mode`
    /// lets in (the server gives it the image's own bits); removed when dropped.
    pub fn create(path: &Path, inodes: u64, mode: u32) -> Result<DirectTable> {
        let len = usize::try_from(inodes).ok().and_then(|n| n.checked_add(HEADER_WORDS + 1));
        let words = SharedWords::create(path, len.ok_or(Error::InvalidArgument("too many inodes"))?, mode)?;
        words.store(W_VERSION, u64::from(VERSION))?;
        words.store(W_PID, u64::from(std::process::id()))?;
        words.store(W_INODES, inodes)?;
        words.store(W_STATE, STATE_LIVE)?;
        words.store(W_MAGIC, TABLE_MAGIC)?;
        Ok(DirectTable { words, inodes, owner: true })
    }

    /// Maps a table a server made, read-only, checking its header.
    pub fn open(path: &Path) -> Result<DirectTable> {
        let words = SharedWords::open(path, false)?;
        let corrupt = |what| Error::Corrupt { what, at: 0 };
        if words.len() <= HEADER_WORDS || words.load(W_MAGIC)? != TABLE_MAGIC {
            return Err(corrupt("direct table magic"));
        }
        if words.load(W_VERSION)? != u64::from(VERSION) {
            return Err(corrupt("direct table version"));
        }
        let inodes = words.load(W_INODES)?;
        if inodes.checked_add(HEADER_WORDS as u64 + 1) != Some(words.len() as u64) {
            return Err(corrupt("direct table inode count"));
        }
        Ok(DirectTable { words, inodes, owner: false })
    }

    fn slot(&self, ino: u64) -> Result<usize> {
        if ino == 0 || ino > self.inodes {
            return Err(Error::InvalidArgument("inode number outside the direct table"));
        }
        Ok(HEADER_WORDS + ino as usize)
    }

    /// Inode slots the table has room for.
    pub fn inodes(&self) -> u64 {
        self.inodes
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
    /// The file's extents from the one holding `from_block` on, sorted.
    pub extents: [MapExtent; MAP_EXTENTS],
}
const _: () = assert!(size_of::<MapIo>() == 40 + 32 * MAP_EXTENTS && size_of::<MapIo>() < 1 << 14);

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
