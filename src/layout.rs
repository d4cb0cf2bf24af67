//! On-media format v1: plain little-endian structs with fixed sizes, and the geometry that places
//! them. Byte tables and the reasoning behind them: DESIGN.md §Format.
//!
//! ```text
//! 0            4 KiB              8 KiB               inode_off = 8 KiB+J          data_start*B
//! | superblock | journal header   | journal ring (J) | inode table     | pad         | data blocks …
//! ```
//!
//! The pad aligns the data area to 2 MiB on images of 64 MiB and more (4 KiB below), so whole
//! aligned runs can be mapped as one piece.
//!
//! Only the superblock carries a checksum of its own (it never changes after mkfs); every other
//! structure is changed through the journal, whose records are checksummed.

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::{Error, Result};

/// The superblock's first 8 bytes on every udax image.
pub const MAGIC: [u8; 8] = *b"udaxFS\x00\x01";
/// The format version this udax reads and writes.
pub const VERSION: u32 = 1;

// Feature-flag words: a reader refuses an image with an incompat bit it does not know, opens
// read-only one with an unknown ro_compat bit, and ignores unknown compat bits (none is
// defined yet).

/// Inodes may name an extended-attribute block (`RawInode::xattr`). Incompatible: a reader
/// without it would take such an inode for damage.
pub const FEATURE_INCOMPAT_XATTR: u64 = 1;
/// Inodes may hold a lane (`RawInode::lane`): the size a direct client has appended up to,
/// which recovery folds into the size. Incompatible: a reader without it would lose appends
/// that returned.
pub const FEATURE_INCOMPAT_LANES: u64 = 2;
/// Incompatible feature bits this udax knows; an image with any other is refused.
pub const FEATURES_INCOMPAT_KNOWN: u64 = FEATURE_INCOMPAT_XATTR | FEATURE_INCOMPAT_LANES;
/// Read-only-compatible feature bits this udax knows; an image with any other opens read-only.
pub const FEATURES_RO_COMPAT_KNOWN: u64 = 0;

/// Device offset of the superblock.
pub const SUPERBLOCK_OFF: u64 = 0;
/// Device offset of the journal header.
pub const JOURNAL_HEADER_OFF: u64 = 4096;
/// Device offset of the journal ring, which runs to the inode table.
pub const JOURNAL_RING_OFF: u64 = 8192;
/// Bytes per inode slot.
pub const INODE_SIZE: u64 = 256;
/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;
/// Longest name of a directory entry, in bytes.
pub const NAME_MAX: usize = 255;
/// Longest symbolic-link target, in bytes.
pub const SYMLINK_MAX: usize = 4095;
/// The block sizes mkfs accepts, in bytes.
pub const BLOCK_SIZES: [u32; 3] = [1024, 2048, 4096];
/// The data area starts 2 MiB-aligned on images big enough, so 2 MiB mappings are possible.
pub const HUGE: u64 = 2 << 20;

/// Byte offset of `field` within on-media struct `T`, as a device offset delta (for
/// `Corrupt { at }` and entries that rewrite one field).
macro_rules! off {
    ($t:ty, $field:ident) => {
        ::core::mem::offset_of!($t, $field) as u64
    };
}
pub(crate) use off;

/// Superblock, 256 bytes at offset 0. Never rewritten after mkfs.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
pub struct RawSuperblock {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: U32,
    /// Block size in bytes, one of [`BLOCK_SIZES`].
    pub block_size: U32,
    /// Compatible feature bits (none defined).
    pub features_compat: U64,
    /// Incompatible feature bits (`FEATURE_INCOMPAT_*`).
    pub features_incompat: U64,
    /// Read-only-compatible feature bits (none defined).
    pub features_ro_compat: U64,
    /// Image size in bytes (at most the device's).
    pub size_bytes: U64,
    /// Journal ring length in bytes.
    pub journal_len: U64,
    /// Device offset of the inode table.
    pub inode_off: U64,
    /// Inode slots in the table.
    pub inode_count: U64,
    /// First data block (a block number: device offset / block size).
    pub data_start: U64,
    /// Data blocks, running to the end of the image.
    pub data_blocks: U64,
    /// [`ROOT_INO`].
    pub root_ino: U64,
    /// When mkfs ran, seconds since the Unix epoch.
    pub mkfs_time: I64,
    /// Random identity of the image.
    pub uuid: [u8; 16],
    /// Volume label, NUL-padded.
    pub label: [u8; 32],
    /// Zero.
    pub reserved: [u8; 100],
    /// crc32c of bytes 0..252 ([`superblock_crc`]).
    pub crc: U32,
}
const _: () = assert!(core::mem::size_of::<RawSuperblock>() == 256);

/// Journal header, 64 bytes at 4 KiB. `checkpoint` is changed by one 8-byte atomic store.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
pub struct RawJournalHeader {
    /// [`JOURNAL_MAGIC`].
    pub magic: U64,
    /// The newest checkpoint position (what images made before the slots read).
    pub checkpoint: U64,
    /// The checkpoint, written to the slots in turn; recovery takes the valid one with the
    /// higher sequence, so a store torn below 8 bytes falls back to the previous checkpoint.
    pub slots: [RawCheckpoint; 2],
    /// Zero.
    pub reserved: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<RawJournalHeader>() == 64);

/// One checkpoint slot of the journal header, 16 bytes.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
pub struct RawCheckpoint {
    /// The checkpoint: log position where recovery starts.
    pub pos: U64,
    /// Counts checkpoints since mkfs (wrapping).
    pub seq: U32,
    /// crc32c of `pos` and `seq`.
    pub crc: U32,
}
const _: () = assert!(core::mem::size_of::<RawCheckpoint>() == 16);

impl RawCheckpoint {
    /// A slot holding checkpoint `pos` with sequence `seq`, its checksum computed.
    pub fn new(pos: u64, seq: u32) -> RawCheckpoint {
        let mut c = RawCheckpoint { pos: pos.into(), seq: seq.into(), crc: 0.into() };
        c.crc = crc32c::crc32c(&c.as_bytes()[..12]).into();
        c
    }

    /// Whether the checksum matches (false for a torn or never-written slot).
    pub fn valid(&self) -> bool {
        crc32c::crc32c(&self.as_bytes()[..12]) == self.crc.get()
    }
}
/// [`RawJournalHeader::magic`].
pub const JOURNAL_MAGIC: u64 = 0x6c6e_726a_7864_7501; // "\x01udxjrnl"

/// Journal record header, 32 bytes; records are 64-byte aligned in the ring.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
pub struct RawRecordHeader {
    /// [`RECORD_MAGIC`].
    pub magic: U32,
    /// crc32c of the whole record with this field zero.
    pub crc: U32,
    /// Log position of this record (monotonic bytes; ring offset = pos % ring length).
    pub pos: U64,
    /// Total record length in bytes, header included, a multiple of 64.
    pub len: U32,
    /// Redo entries that follow the header.
    pub entries: U32,
    /// Zero.
    pub reserved: U64,
}
const _: () = assert!(core::mem::size_of::<RawRecordHeader>() == 32);
/// [`RawRecordHeader::magic`].
pub const RECORD_MAGIC: u32 = 0x5244_5855; // "UXDR"

/// One redo entry of a record: `len` bytes to write at device offset `off`, padded to 8.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
pub struct RawEntryHeader {
    /// Device offset the entry's bytes go to.
    pub off: U64,
    /// Bytes of data that follow the header.
    pub len: U32,
    /// Zero.
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<RawEntryHeader>() == 16);

/// A timestamp: seconds since the epoch and nanoseconds.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
pub struct RawTime {
    /// Seconds since the Unix epoch.
    pub sec: I64,
    /// Nanoseconds, below 1,000,000,000.
    pub nsec: U32,
    /// Zero.
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<RawTime>() == 16);

/// Inline extent slots in an inode.
pub const INLINE_EXTENTS: usize = 5;

/// Inode, 256 bytes. Bytes 0..128 are the attributes (one journal entry when they change); the
/// rest are the inline extent slots. mtime and ctime share the first cache line with size so the
/// overwrite path writes back one line.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
pub struct RawInode {
    /// File type and permission bits (stat's `st_mode`).
    pub mode: U32,
    /// Hard links; 0 marks a free slot.
    pub nlink: U32,
    /// Owner user ID.
    pub uid: U32,
    /// Owner group ID.
    pub gid: U32,
    /// Size in bytes.
    pub size: U64,
    /// Bumped each time the slot is reused, so (ino, generation) names one file forever.
    pub generation: U32,
    /// Zero (no inode flags are defined).
    pub flags: U32,
    /// Last content change.
    pub mtime: RawTime,
    /// Last inode change.
    pub ctime: RawTime,
    /// Last access.
    pub atime: RawTime,
    /// Creation.
    pub crtime: RawTime,
    /// Device number of a device node.
    pub rdev: U64,
    /// Directories: the parent directory's inode number.
    pub parent: U64,
    /// First overflow extent block (block number), 0 when none.
    pub ext_next: U64,
    /// Extended-attribute block (block number), 0 when none. Nonzero only on images with
    /// [`FEATURE_INCOMPAT_XATTR`].
    pub xattr: U64,
    /// The first extents of the map, in file order; empty slots are all zero.
    pub extents: [RawExtent; INLINE_EXTENTS],
    /// The lane of a regular file that a direct client appends to under a lease: 0 when none,
    /// else 1 + the size the client's returned appends reach ([`LANE_REACH`]), the lease's token
    /// and the frozen bit. Changed by atomic operations only, never through the journal
    /// (DESIGN.md "Appends by lease"). Nonzero only on images with [`FEATURE_INCOMPAT_LANES`].
    pub lane: U64,
}
const _: () = assert!(core::mem::size_of::<RawInode>() == INODE_SIZE as usize);
/// The bits of a lane word that hold 1 + the size its appends reach (0: no lane).
pub const LANE_REACH: u64 = (1 << 48) - 1;
/// The bits of a lane word that name its lease (1 to 0x7fff), so that a client of an ended lease
/// never stores into the next one's lane.
pub const LANE_TOKEN_SHIFT: u32 = 48;
/// The lane word's top bit: the server is folding the lane; clients store to it no more.
pub const LANE_FROZEN: u64 = 1 << 63;

/// The size a lane word says its appends reach, if it holds a lane.
pub fn lane_size(word: u64) -> Option<u64> {
    (word & LANE_REACH).checked_sub(1)
}

/// Offset of the lane word within an inode; what the journal writes of an inode ends before it.
pub const INODE_LANE_OFF: u64 = off!(RawInode, lane);
/// Bytes of an inode that hold its attributes (before the extent slots).
pub const INODE_ATTR_LEN: usize = 128;
/// Offset of the inline extent slots within an inode.
pub const INODE_EXTENTS_OFF: u64 = off!(RawInode, extents);

/// Extent record, 24 bytes. All-zero means an empty slot.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawExtent {
    /// First file block.
    pub logical: U64,
    /// First device block.
    pub physical: U64,
    /// Length in blocks.
    pub len: U32,
    /// [`EXTENT_IN_USE`], plus [`EXTENT_UNWRITTEN`] while the blocks read as zeros.
    pub flags: U32,
}
const _: () = assert!(core::mem::size_of::<RawExtent>() == 24);
/// [`RawExtent::flags`] bit: the slot holds an extent.
pub const EXTENT_IN_USE: u32 = 1;
/// [`RawExtent::flags`] bit: the blocks are allocated but read as zeros.
pub const EXTENT_UNWRITTEN: u32 = 2;
/// Bytes per extent record.
pub const EXTENT_SIZE: u64 = 24;

/// Header of an overflow extent block; slots follow at byte 32.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
pub struct RawExtentBlockHeader {
    /// [`EXTENT_BLOCK_MAGIC`].
    pub magic: U32,
    /// Zero.
    pub reserved0: U32,
    /// Inode that owns the block (fsck cross-checks it).
    pub owner: U64,
    /// Next overflow block, 0 at the end of the chain.
    pub next: U64,
    /// Zero.
    pub reserved: U64,
}
const _: () = assert!(core::mem::size_of::<RawExtentBlockHeader>() == 32);
/// [`RawExtentBlockHeader::magic`].
pub const EXTENT_BLOCK_MAGIC: u32 = 0x4b4c_4258; // "XBLK"
/// Bytes of an extent block's header; its slots follow.
pub const EXTENT_BLOCK_HEADER: u64 = 32;
/// Offset of `next` within an extent block.
pub const EXTENT_BLOCK_NEXT_OFF: u64 = 16;

/// Header of an extended-attribute block; entries follow at byte 16, each a
/// [`RawXattrEntry`], its name and its value, padded to 4 bytes. Bytes after the last entry are
/// not read.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
pub struct RawXattrHeader {
    /// [`XATTR_BLOCK_MAGIC`].
    pub magic: U32,
    /// Entries in the block, in ascending name order.
    pub count: U16,
    /// Zero.
    pub reserved: U16,
    /// Inode that owns the block.
    pub owner: U64,
}
const _: () = assert!(core::mem::size_of::<RawXattrHeader>() == 16);
/// [`RawXattrHeader::magic`].
pub const XATTR_BLOCK_MAGIC: u32 = 0x4158_5855; // "UXXA"

/// One extended attribute: lengths, then `name_len` bytes of full name (namespace prefix
/// included) and `value_len` bytes of value.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
pub struct RawXattrEntry {
    /// Length of the full name in bytes.
    pub name_len: u8,
    /// Zero.
    pub reserved: u8,
    /// Length of the value in bytes.
    pub value_len: U16,
}
const _: () = assert!(core::mem::size_of::<RawXattrEntry>() == 4);

/// Directory entry header, 16 bytes, followed by the name; an entry fills `units` 32-byte units
/// and never crosses a block boundary. `ino == 0` is a free unit.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
pub struct RawDirent {
    /// The inode the entry names; 0 for free units.
    pub ino: U64,
    /// Length of the name in bytes.
    pub name_len: U16,
    /// DT_* type of the inode, as readdir reports it.
    pub file_type: u8,
    /// 32-byte units the entry fills, header and name included.
    pub units: u8,
    /// Zero.
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<RawDirent>() == 16);
/// Bytes per directory-entry unit.
pub const DIRENT_UNIT: u64 = 32;
/// Bytes of a directory entry's header; the name follows.
pub const DIRENT_HEADER: usize = 16;

/// Units an entry with a name of `name_len` bytes fills.
pub fn dirent_units(name_len: usize) -> u64 {
    (DIRENT_HEADER + name_len).div_ceil(DIRENT_UNIT as usize) as u64
}

/// File type bits of `mode`, as in stat(2).
pub mod mode {
    /// Mask of the file-type bits.
    pub const S_IFMT: u32 = 0o170000;
    /// Regular file.
    pub const S_IFREG: u32 = 0o100000;
    /// Directory.
    pub const S_IFDIR: u32 = 0o040000;
    /// Symbolic link.
    pub const S_IFLNK: u32 = 0o120000;
    /// FIFO (named pipe).
    pub const S_IFIFO: u32 = 0o010000;
    /// Character device.
    pub const S_IFCHR: u32 = 0o020000;
    /// Block device.
    pub const S_IFBLK: u32 = 0o060000;
    /// Unix-domain socket.
    pub const S_IFSOCK: u32 = 0o140000;
    /// Set-user-ID bit.
    pub const S_ISUID: u32 = 0o4000;
    /// Set-group-ID bit.
    pub const S_ISGID: u32 = 0o2000;

    /// Whether the type bits of `m` name one of the seven file types.
    pub fn is_valid_type(m: u32) -> bool {
        matches!(m & S_IFMT, S_IFREG | S_IFDIR | S_IFLNK | S_IFIFO | S_IFCHR | S_IFBLK | S_IFSOCK)
    }
    /// Whether `m` is a directory's mode.
    pub fn is_dir(m: u32) -> bool {
        m & S_IFMT == S_IFDIR
    }
    /// Whether `m` is a regular file's mode.
    pub fn is_reg(m: u32) -> bool {
        m & S_IFMT == S_IFREG
    }
    /// Whether `m` is a symbolic link's mode.
    pub fn is_symlink(m: u32) -> bool {
        m & S_IFMT == S_IFLNK
    }
    /// Types that own data blocks.
    pub fn has_data(m: u32) -> bool {
        matches!(m & S_IFMT, S_IFREG | S_IFDIR | S_IFLNK)
    }
    /// The directory-entry type byte (DT_* of readdir).
    pub fn dtype(m: u32) -> u8 {
        ((m & S_IFMT) >> 12) as u8
    }
}

/// Where everything is, derived from a checked superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Geometry {
    /// Image size in bytes.
    pub size_bytes: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Journal ring length in bytes.
    pub journal_len: u64,
    /// Device offset of the inode table.
    pub inode_off: u64,
    /// Inode slots in the table.
    pub inode_count: u64,
    /// First data block (a block number: device offset / block size).
    pub data_start: u64,
    /// Data blocks, running to the end of the image.
    pub data_blocks: u64,
    /// The image carries the extended-attribute feature flag (every image mkfs makes now does).
    pub xattr: bool,
    /// The image carries the lanes feature flag (every image mkfs makes now does).
    pub lanes: bool,
}

impl Geometry {
        /// The smallest journal ring: its largest record (half of it) holds any transaction the
    /// file system makes, a full attribute block with its inode among them.
    pub const MIN_JOURNAL: u64 = 16 << 10;

    /// The smallest image [`Geometry::plan`] lays out with these choices (a multiple of 4 KiB),
    /// for an error that can say how much is needed.
    pub fn min_size(block_size: u32, inode_count: u64, journal_len: u64) -> Option<u64> {
        let fits = |size: u64| Geometry::plan(size, block_size, inode_count, journal_len).is_ok();
        let (mut lo, mut hi) = (0u64, 1u64 << 20);
        while !fits(hi * 4096) {
            hi = hi.checked_mul(2).filter(|&h| h <= 1 << 40)?;
        }
        // The smallest fitting multiple of 4 KiB lies in (lo, hi].
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid * 4096) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi * 4096)
    }

    /// Lays out an image of `size_bytes` with `block_size` and `inode_count` inodes (0 picks one
    /// inode per 16 KiB), and a journal of `journal_len` bytes (0 picks by size).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a block size not in [`BLOCK_SIZES`], a journal size not a
    /// multiple of 4 KiB or under [`Geometry::MIN_JOURNAL`], or an image too small for them.
    pub fn plan(size_bytes: u64, block_size: u32, inode_count: u64, journal_len: u64) -> Result<Geometry> {
        if !BLOCK_SIZES.contains(&block_size) {
            return Err(Error::InvalidArgument("block size must be 1024, 2048 or 4096"));
        }
        let bs = u64::from(block_size);
        let journal_len = if journal_len == 0 {
            (size_bytes / 64).clamp(256 << 10, 16 << 20).next_power_of_two().min(16 << 20)
        } else {
            journal_len
        };
        if journal_len % 4096 != 0 || journal_len < Self::MIN_JOURNAL {
            return Err(Error::InvalidArgument("journal size must be a multiple of 4 KiB, at least 16 KiB"));
        }
        let inode_count = if inode_count == 0 { (size_bytes / 16384).max(64) } else { inode_count };
        let too_small = Error::InvalidArgument("image too small for its journal and inode table");
        let inode_off = JOURNAL_RING_OFF.checked_add(journal_len).ok_or(too_small)?;
        let itab_end = inode_count
            .checked_mul(INODE_SIZE)
            .and_then(|t| inode_off.checked_add(t))
            .filter(|&e| e < size_bytes)
            .ok_or(Error::InvalidArgument("image too small for its journal and inode table"))?;
        let align = if size_bytes >= 64 << 20 { HUGE } else { 4096 };
        let data_off = itab_end.div_ceil(align) * align;
        let data_blocks = size_bytes.saturating_sub(data_off) / bs;
        if data_blocks < 16 {
            return Err(Error::InvalidArgument("image too small: the metadata leaves fewer than 16 data blocks"));
        }
        Ok(Geometry {
            size_bytes,
            block_size: bs,
            journal_len,
            inode_off,
            inode_count,
            data_start: data_off / bs,
            data_blocks,
            xattr: true,
            lanes: true,
        })
    }

    /// Checks a superblock and derives the geometry; every field is checked.
    pub fn from_superblock(sb: &RawSuperblock, device_len: u64) -> Result<Geometry> {
        if sb.magic != MAGIC {
            return Err(Error::NotUdax("no udax magic at byte 0".into()));
        }
        let at = SUPERBLOCK_OFF;
        let crc = superblock_crc(sb);
        if crc != sb.crc.get() {
            return Err(Error::Corrupt { what: "superblock checksum", at: at + off!(RawSuperblock, crc) });
        }
        if sb.version.get() != VERSION {
            return Err(Error::Unsupported(format!("format version {} (this udax reads {VERSION})", sb.version)));
        }
        let unknown = sb.features_incompat.get() & !FEATURES_INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!("incompatible feature flags {unknown:#x}")));
        }
        let bs = sb.block_size.get();
        if !BLOCK_SIZES.contains(&bs) {
            return Err(Error::Corrupt { what: "superblock block size", at: at + off!(RawSuperblock, block_size) });
        }
        let size = sb.size_bytes.get();
        if size > device_len {
            return Err(Error::Corrupt {
                what: "superblock size (image is truncated)",
                at: at + off!(RawSuperblock, size_bytes),
            });
        }
        let g = Geometry::plan(size, bs, sb.inode_count.get(), sb.journal_len.get())
            .map_err(|_| Error::Corrupt { what: "superblock geometry", at: at + off!(RawSuperblock, journal_len) })?;
        if g.inode_off != sb.inode_off.get() {
            return Err(Error::Corrupt {
                what: "superblock inode table offset",
                at: at + off!(RawSuperblock, inode_off),
            });
        }
        if g.data_start != sb.data_start.get() || g.data_blocks != sb.data_blocks.get() {
            return Err(Error::Corrupt { what: "superblock data area", at: at + off!(RawSuperblock, data_start) });
        }
        if sb.root_ino.get() != ROOT_INO {
            return Err(Error::Corrupt { what: "superblock root inode", at: at + off!(RawSuperblock, root_ino) });
        }
        let f = sb.features_incompat.get();
        Ok(Geometry { xattr: f & FEATURE_INCOMPAT_XATTR != 0, lanes: f & FEATURE_INCOMPAT_LANES != 0, ..g })
    }

    /// The superblock that describes this geometry, with its checksum.
    pub fn superblock(&self, mkfs_time: i64, uuid: [u8; 16], label: &str) -> RawSuperblock {
        let mut l = [0u8; 32];
        let n = label.len().min(31);
        l[..n].copy_from_slice(&label.as_bytes()[..n]);
        let mut sb = RawSuperblock {
            magic: MAGIC,
            version: VERSION.into(),
            block_size: (self.block_size as u32).into(),
            features_compat: 0.into(),
            features_incompat: (if self.xattr { FEATURE_INCOMPAT_XATTR } else { 0 }
                | if self.lanes { FEATURE_INCOMPAT_LANES } else { 0 })
            .into(),
            features_ro_compat: 0.into(),
            size_bytes: self.size_bytes.into(),
            journal_len: self.journal_len.into(),
            inode_off: self.inode_off.into(),
            inode_count: self.inode_count.into(),
            data_start: self.data_start.into(),
            data_blocks: self.data_blocks.into(),
            root_ino: ROOT_INO.into(),
            mkfs_time: mkfs_time.into(),
            uuid,
            label: l,
            reserved: [0; 100],
            crc: 0.into(),
        };
        sb.crc = superblock_crc(&sb).into();
        sb
    }

    /// Device offset of inode `ino` (1-based).
    pub fn inode_at(&self, ino: u64) -> u64 {
        debug_assert!(ino >= 1 && ino <= self.inode_count);
        self.inode_off + (ino - 1) * INODE_SIZE
    }

    /// Device offset of block `blk`.
    pub fn block_at(&self, blk: u64) -> u64 {
        blk * self.block_size
    }

    /// First block past the data area.
    pub fn data_end(&self) -> u64 {
        self.data_start + self.data_blocks
    }

    /// Whether `[blk, blk+len)` lies inside the data area.
    pub fn contains(&self, blk: u64, len: u64) -> bool {
        len > 0 && blk >= self.data_start && blk.checked_add(len).is_some_and(|e| e <= self.data_end())
    }

    /// Extent slots in one overflow block.
    pub fn extents_per_block(&self) -> u64 {
        (self.block_size - EXTENT_BLOCK_HEADER) / EXTENT_SIZE
    }
}

/// crc32c of the superblock's first 252 bytes, all but `crc`.
pub fn superblock_crc(sb: &RawSuperblock) -> u32 {
    crc32c::crc32c(&sb.as_bytes()[..252])
}

/// Checks a name for a directory entry.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::BadName(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_places_regions_in_order() {
        let g = Geometry::plan(256 << 20, 4096, 0, 0).unwrap();
        assert!(g.inode_off >= JOURNAL_RING_OFF + g.journal_len);
        assert_eq!(g.data_start * 4096 % HUGE, 0);
        assert!(g.data_end() * 4096 <= 256 << 20);
        let sb = g.superblock(0, [1; 16], "t");
        assert_eq!(Geometry::from_superblock(&sb, 256 << 20).unwrap(), g);
        assert!(Geometry::plan(1 << 16, 4096, 0, 0).is_err());
        assert!(Geometry::plan(64 << 20, 512, 0, 0).is_err());
    }

    #[test]
    fn every_superblock_bit_is_covered() {
        let g = Geometry::plan(16 << 20, 1024, 0, 0).unwrap();
        let sb = g.superblock(5, [2; 16], "x");
        // Under miri, which interprets every step, every seventh bit.
        for bit in (0..256 * 8).step_by(if cfg!(miri) { 7 } else { 1 }) {
            let mut bytes = sb.as_bytes().to_vec();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let bad = RawSuperblock::read_from_bytes(&bytes).unwrap();
            assert!(Geometry::from_superblock(&bad, 16 << 20).is_err(), "bit {bit} went unnoticed");
        }
    }
}
