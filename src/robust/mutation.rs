//! The damage `exercise` is run on: the template image and the mutations planted in it.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::fs::{Creds, Fs, MkfsOptions};
use crate::layout::{
    mode, Geometry, RawRecordHeader, INODE_SIZE, JOURNAL_HEADER_OFF, JOURNAL_RING_OFF, RECORD_MAGIC, ROOT_INO,
};
use crate::sync::rd;
use crate::{Device, FallocMode, OpenOptions};

/// Most mutations [`Mutation::decode_list`] makes from one input.
pub(super) const MAX_MUTATIONS: usize = 16;
/// Unit of the sparse image copies.
pub(super) const PAGE: usize = 4096;

/// A part of the template image a mutation aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The whole image.
    Anywhere,
    /// The superblock.
    Superblock,
    /// The journal header and its checkpoint slots.
    JournalHeader,
    /// The journal ring.
    JournalRing,
    /// The whole inode table, free slots included.
    InodeTable,
    /// The slots of the inodes in use.
    UsedInodes,
    /// Directory data blocks.
    DirBlocks,
    /// Overflow extent blocks.
    ExtentBlocks,
    /// Blocks holding symbolic-link targets.
    SymlinkBlocks,
    /// Regular files' data blocks.
    FileData,
    /// Extended-attribute blocks.
    XattrBlocks,
}

impl Region {
    /// Every region, in declaration order (a region's index here is `region as usize`).
    pub const ALL: [Region; 11] = [
        Region::Anywhere,
        Region::Superblock,
        Region::JournalHeader,
        Region::JournalRing,
        Region::InodeTable,
        Region::UsedInodes,
        Region::DirBlocks,
        Region::ExtentBlocks,
        Region::SymlinkBlocks,
        Region::FileData,
        Region::XattrBlocks,
    ];
}

/// A small mkfs'd image with a tree that reaches every on-media structure: nested directories,
/// a directory of several blocks, small files, a fragmented file with overflow extent blocks, a
/// sparse file, preallocated (unwritten) extents, symbolic links, a FIFO, hard links, extended
/// attributes, an orphan (unlinked while open), and journal records the checkpoint has not
/// passed yet.
#[derive(Debug, Clone)]
pub struct Template {
    /// The image's bytes.
    pub image: Vec<u8>,
    /// Its geometry.
    pub geometry: Geometry,
    /// Byte ranges of each [`Region`], indexed like [`Region::ALL`].
    regions: Vec<Vec<Range<u64>>>,
}

impl Template {
    /// Builds the template with `block_size` blocks (1024: a 1 MiB image; else 2 MiB).
    pub fn build(block_size: u32) -> Result<Template> {
        let size = if block_size == 1024 { 1 << 20 } else { 2 << 20 };
        let opts =
            MkfsOptions { block_size, inodes: 64, journal_bytes: 64 << 10, label: "robust".into(), overwrite: false };
        let fs = Fs::mkfs(Device::anonymous(size)?, &opts)?;
        let bs = u64::from(block_size);
        fs.mkdir_all("/a/b/c", 0o755)?;
        for i in 0..8u8 {
            fs.write_file(format!("/a/f{i}"), &vec![b'a' + i; 100 + 700 * usize::from(i)])?;
        }
        fs.symlink_path("f1", "/a/link")?;
        fs.symlink_path("/a/b", "/abs")?;
        fs.symlink_path("x".repeat(1500), "/a/b/long")?;
        fs.mknod(ROOT_INO, b"fifo", mode::S_IFIFO | 0o644, 0, Creds::ROOT)?;
        // A directory of several blocks: one file under many names.
        let big = fs.mkdir_all("/big", 0o755)?;
        let target = fs.create(big, b"target", 0o644, Creds::ROOT)?.ino;
        fs.write(target, b"linked many times", 0)?;
        let names = if bs == 1024 { 90 } else { 150 };
        for i in 0..names {
            fs.link(target, big, format!("name-{i:03}-{}", "n".repeat(i % 40)).as_bytes())?;
        }
        // A fragmented file: one block at every other block, so every block is an extent and
        // the map needs overflow blocks (41 slots each at 1 KiB, 169 at 4 KiB).
        let frag = fs.create(ROOT_INO, b"frag", 0o644, Creds::ROOT)?.ino;
        let pieces = if bs == 1024 { 100 } else { 200 };
        for i in 0..pieces {
            fs.write(frag, &[i as u8 | 1; 300], 2 * i * bs)?;
        }
        let sparse = fs.create(ROOT_INO, b"sparse", 0o644, Creds::ROOT)?.ino;
        fs.truncate(sparse, 1 << 30)?;
        fs.write(sparse, b"middle", 1 << 29)?;
        let pre = fs.create(ROOT_INO, b"prealloc", 0o644, Creds::ROOT)?.ino;
        fs.write(pre, &[7; 5000], 0)?;
        fs.fallocate(pre, 8192, 20_000, FallocMode::Allocate { keep_size: false })?;
        fs.fallocate(pre, 1000, 2000, FallocMode::PunchHole)?;
        let xattrs = [
            ("/a/f2", "user.one", 10),
            ("/a/f2", "user.two", 300),
            ("/a/b", "user.dir", 5),
            ("/fifo", "trusted.t", 40),
        ];
        for (path, name, len) in xattrs {
            fs.setxattr(fs.resolve(path, false)?, name.as_bytes(), &vec![len as u8; len], Default::default())?;
        }

        // Remount, then leave records past the checkpoint and an orphan behind.
        let dev = fs.unmount()?.ok_or(Error::InvalidArgument("template still in use"))?;
        let fs = Fs::mount(dev)?;
        fs.rename_path("/a/f7", "/a/b/moved")?;
        fs.write_file("/a/b/c/late", b"after the remount")?;
        fs.mkdir_path("/a/b/c/d", 0o700)?;
        fs.setxattr(fs.resolve("/a/f3", false)?, b"security.late", b"after the remount", Default::default())?;
        let orphan = fs.open("/orphan", OpenOptions::create())?;
        orphan.write_at(&[9; 3000], 0)?;
        fs.setxattr(orphan.ino(), b"user.orphan", b"freed with it", Default::default())?;
        fs.unlink_path("/orphan")?;

        let geo = *fs.geometry();
        let mut image = vec![0u8; geo.size_bytes as usize];
        fs.device().read(0, &mut image)?;
        let mut regions = vec![Vec::new(); Region::ALL.len()];
        let mut add = |r: Region, range: Range<u64>| regions[r as usize].push(range);
        add(Region::Anywhere, 0..geo.size_bytes);
        add(Region::Superblock, 0..256);
        add(Region::JournalHeader, JOURNAL_HEADER_OFF..JOURNAL_HEADER_OFF + 64);
        add(Region::JournalRing, JOURNAL_RING_OFF..JOURNAL_RING_OFF + geo.journal_len);
        add(Region::InodeTable, geo.inode_off..geo.inode_off + geo.inode_count * INODE_SIZE);
        for ino in fs.inode_numbers() {
            add(Region::UsedInodes, geo.inode_at(ino)..geo.inode_at(ino) + INODE_SIZE);
            let node = fs.node(ino)?;
            let g = rd(&node.inode);
            let kind = match g.attr.mode & mode::S_IFMT {
                mode::S_IFDIR => Region::DirBlocks,
                mode::S_IFLNK => Region::SymlinkBlocks,
                _ => Region::FileData,
            };
            for e in g.ext.iter() {
                add(kind, geo.block_at(e.physical)..geo.block_at(e.physical + e.len));
            }
            for &b in g.ext.overflow_blocks() {
                add(Region::ExtentBlocks, geo.block_at(b)..geo.block_at(b + 1));
            }
            if g.xattr.block != 0 {
                add(Region::XattrBlocks, geo.block_at(g.xattr.block)..geo.block_at(g.xattr.block + 1));
            }
        }
        drop(orphan);
        Ok(Template { image, geometry: geo, regions })
    }

    /// The absolute offset `offset` names inside `region` (taken modulo its length).
    pub fn locate(&self, region: Region, offset: u64) -> Option<u64> {
        let ranges = &self.regions[region as usize];
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if total == 0 {
            return None;
        }
        let mut at = offset % total;
        for r in ranges {
            let len = r.end - r.start;
            if at < len {
                return Some(r.start + at);
            }
            at -= len;
        }
        None
    }

    /// A copy of the image with `mutations` applied in order.
    pub fn damaged(&self, mutations: &[Mutation]) -> Vec<u8> {
        // Zeroed memory costs nothing until touched: copy only the pages that hold something.
        let mut image = vec![0u8; self.image.len()];
        for (to, from) in image.chunks_mut(PAGE).zip(self.image.chunks(PAGE)) {
            if !is_zero(from) {
                to.copy_from_slice(from);
            }
        }
        for m in mutations {
            m.apply(self, &mut image);
        }
        image
    }
}

/// A value planted in an on-media field: small numbers and the boundaries that checks sit on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// A small number.
    Small(u8),
    /// `u64::MAX` (all ones in whatever width is stored).
    AllOnes,
    /// Only the top bit of 64 set.
    HighBit,
    /// The image size in bytes, plus a delta.
    SizeBytes(i16),
    /// The first block past the data area, plus a delta.
    DataEnd(i16),
    /// The first data block, plus a delta.
    DataStart(i16),
    /// The inode count, plus a delta.
    Inodes(i16),
    /// The journal ring length, plus a delta.
    JournalLen(i16),
    /// 2^64 - 64 (k + 1), aligned like every position: overflow bait for positions and counts.
    NearMax(u8),
    /// This exact value.
    Raw(u64),
}

impl Value {
    fn resolve(self, geo: &Geometry) -> u64 {
        let plus = |base: u64, d: i16| base.wrapping_add_signed(i64::from(d));
        match self {
            Value::Small(v) => u64::from(v),
            Value::AllOnes => u64::MAX,
            Value::HighBit => 1 << 63,
            Value::SizeBytes(d) => plus(geo.size_bytes, d),
            Value::DataEnd(d) => plus(geo.data_end(), d),
            Value::DataStart(d) => plus(geo.data_start, d),
            Value::Inodes(d) => plus(geo.inode_count, d),
            Value::JournalLen(d) => plus(geo.journal_len, d),
            Value::NearMax(k) => (u64::MAX - 63).wrapping_sub(64 * u64::from(k)),
            Value::Raw(v) => v,
        }
    }
}

/// One redo entry of a planted journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlantedEntry {
    /// The part of the image the entry writes to.
    pub region: Region,
    /// Byte offset within the region (modulo its length; see [`Template::locate`]).
    pub offset: u64,
    /// `1 << (width % 4)` bytes of `value` (aligned down to that), or `bytes` when set.
    pub width: u8,
    /// What the entry writes.
    pub value: Value,
    /// Bytes written instead of `value`.
    pub bytes: Option<Vec<u8>>,
}

/// What a planted record carries after its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// Well-formed entries (recovery replays them).
    Entries(Vec<PlantedEntry>),
    /// Arbitrary bytes under a valid checksum, with this `entries` count in the header.
    Garbage {
        /// The header's entry count.
        entries: u32,
        /// The record's body.
        bytes: Vec<u8>,
    },
}

/// One piece of damage to an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// XORs `mask` (never 0) into the byte at `offset` in `region`.
    Flip {
        /// The part of the image aimed at.
        region: Region,
        /// Byte offset within the region (modulo its length; see [`Template::locate`]).
        offset: u64,
        /// Bits to flip.
        mask: u8,
    },
    /// Zeroes the block (or, unless `block`, the 64-byte line) holding `offset` in `region`.
    Zero {
        /// The part of the image aimed at.
        region: Region,
        /// Byte offset within the region (modulo its length; see [`Template::locate`]).
        offset: u64,
        /// Zero the whole block, not the line.
        block: bool,
    },
    /// Cuts the image to `len` bytes (modulo its length).
    Truncate {
        /// The new length in bytes, modulo the image's.
        len: u64,
    },
    /// Stores `1 << (width % 4)` little-endian bytes of `value` at `offset` in `region`,
    /// aligned down to that width as every on-media field is.
    Store {
        /// The part of the image aimed at.
        region: Region,
        /// Byte offset within the region (modulo its length; see [`Template::locate`]).
        offset: u64,
        /// Selects the width: `1 << (width % 4)` bytes.
        width: u8,
        /// What is stored.
        value: Value,
    },
    /// Copies `bytes` to `offset` in `region`.
    Splice {
        /// The part of the image aimed at.
        region: Region,
        /// Byte offset within the region (modulo its length; see [`Template::locate`]).
        offset: u64,
        /// The bytes copied in.
        bytes: Vec<u8>,
    },
    /// Writes a journal record with a valid checksum and the right position, so recovery
    /// replays it: at the checkpoint, or after the chain of valid records already there.
    Record {
        /// Place it after the valid records already in the ring, not at the checkpoint.
        after_chain: bool,
        /// What follows its header.
        body: RecordBody,
    },
    /// Recomputes the superblock checksum, so damage to its fields reaches the field checks.
    FixSuperblockCrc,
}

impl Mutation {
    /// Applies the mutation to `image` (a damaged copy of `t.image`); out-of-range parts are
    /// skipped.
    pub fn apply(&self, t: &Template, image: &mut Vec<u8>) {
        let geo = &t.geometry;
        match self {
            Mutation::Flip { region, offset, mask } => {
                if let Some(b) = t.locate(*region, *offset).and_then(|at| image.get_mut(at as usize)) {
                    *b ^= (*mask).max(1);
                }
            }
            Mutation::Zero { region, offset, block } => {
                if let Some(at) = t.locate(*region, *offset) {
                    let unit = if *block { geo.block_size } else { 64 };
                    let start = at / unit * unit;
                    put(image, start, &vec![0; unit as usize]);
                }
            }
            Mutation::Truncate { len } => {
                let n = len % (image.len() as u64).max(1);
                image.truncate(n as usize);
            }
            Mutation::Store { region, offset, width, value } => {
                if let Some(at) = t.locate(*region, *offset) {
                    let w = width_of(*width);
                    let v = value.resolve(geo).to_le_bytes();
                    put(image, at / w as u64 * w as u64, &v[..w]);
                }
            }
            Mutation::Splice { region, offset, bytes } => {
                if let Some(at) = t.locate(*region, *offset) {
                    put(image, at, bytes);
                }
            }
            Mutation::Record { after_chain, body } => plant_record(t, image, *after_chain, body),
            Mutation::FixSuperblockCrc => {
                if image.len() >= 256 {
                    let crc = crc32c::crc32c(&image[..252]);
                    image[252..256].copy_from_slice(&crc.to_le_bytes());
                }
            }
        }
    }

    /// Decodes a fuzzer's input into at most 16 mutations; every input decodes.
    pub fn decode_list(input: &[u8]) -> Vec<Mutation> {
        let mut r = Reader(input);
        let mut out = Vec::new();
        while !r.0.is_empty() && out.len() < MAX_MUTATIONS {
            out.push(Mutation::decode(&mut r));
        }
        out
    }

    fn decode(r: &mut Reader) -> Mutation {
        match r.u8() % 10 {
            0 | 1 => Mutation::Flip { region: r.region(), offset: r.u32().into(), mask: r.u8() },
            2 => Mutation::Zero { region: r.region(), offset: r.u32().into(), block: r.u8() % 2 == 0 },
            3 => Mutation::Truncate { len: r.u32().into() },
            4 | 5 => Mutation::Store { region: r.region(), offset: r.u32().into(), width: r.u8(), value: r.value() },
            6 => {
                let (region, offset) = (r.region(), r.u32().into());
                let n = usize::from(r.u8() % 64);
                Mutation::Splice { region, offset, bytes: r.bytes(n) }
            }
            7 | 8 => {
                let after_chain = r.u8() % 2 == 1;
                let body = if r.u8() % 3 == 0 {
                    let entries = r.u32();
                    let n = usize::from(r.u16() % 1024);
                    RecordBody::Garbage { entries, bytes: r.bytes(n) }
                } else {
                    let n = 1 + r.u8() % 6;
                    let entries = (0..n)
                        .map(|_| {
                            let (region, offset, width) = (r.region(), r.u32().into(), r.u8());
                            let bytes = (width >= 0xf0).then(|| {
                                let n = usize::from(r.u8());
                                r.bytes(n)
                            });
                            PlantedEntry { region, offset, width, value: r.value(), bytes }
                        })
                        .collect();
                    RecordBody::Entries(entries)
                };
                Mutation::Record { after_chain, body }
            }
            _ => Mutation::FixSuperblockCrc,
        }
    }
}

/// Whether `bytes` (at most a page) are all zero. One memcmp, not a comparison per byte: the
/// fuzzer's instrumentation traces each of those.
pub(super) fn is_zero(bytes: &[u8]) -> bool {
    static ZEROS: [u8; PAGE] = [0; PAGE];
    bytes == &ZEROS[..bytes.len()]
}

pub(super) fn width_of(w: u8) -> usize {
    1 << (w % 4)
}

/// Copies `bytes` into `image` at `at`, clipped to its end.
pub(super) fn put(image: &mut [u8], at: u64, bytes: &[u8]) {
    let Ok(at) = usize::try_from(at) else { return };
    if at >= image.len() {
        return;
    }
    let n = bytes.len().min(image.len() - at);
    image[at..at + n].copy_from_slice(&bytes[..n]);
}

/// Reads `buf.len()` ring bytes at log position `pos` of the template's ring (wrapping).
pub(super) fn ring_get(geo: &Geometry, image: &[u8], pos: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let at = JOURNAL_RING_OFF + pos.wrapping_add(i as u64) % geo.journal_len;
        *b = image.get(at as usize).copied().unwrap_or(0);
    }
}

pub(super) fn ring_put(geo: &Geometry, image: &mut [u8], pos: u64, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        let at = JOURNAL_RING_OFF + pos.wrapping_add(i as u64) % geo.journal_len;
        if let Some(slot) = image.get_mut(at as usize) {
            *slot = b;
        }
    }
}

/// Writes a record that passes recovery's checks (magic, position, length, checksum) at the
/// checkpoint, or after the valid records that follow it.
pub(super) fn plant_record(t: &Template, image: &mut [u8], after_chain: bool, body: &RecordBody) {
    let geo = &t.geometry;
    let hdr_len = std::mem::size_of::<RawRecordHeader>();
    let mut cp = [0u8; 8];
    put(&mut cp, 0, image.get(JOURNAL_HEADER_OFF as usize + 8..JOURNAL_HEADER_OFF as usize + 16).unwrap_or(&[]));
    let mut pos = u64::from_le_bytes(cp);
    if after_chain {
        for _ in 0..geo.journal_len / 64 {
            let mut h = [0u8; 32];
            ring_get(geo, image, pos, &mut h);
            let len = u64::from(u32::from_le_bytes([h[16], h[17], h[18], h[19]]));
            let ok = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) == RECORD_MAGIC
                && u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")) == pos
                && len >= 64
                && len % 64 == 0
                && len <= geo.journal_len / 2;
            if !ok {
                break;
            }
            let mut rec = vec![0u8; len as usize];
            ring_get(geo, image, pos, &mut rec);
            let stored = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
            rec[4..8].fill(0);
            if crc32c::crc32c(&rec) != stored {
                break;
            }
            pos = pos.wrapping_add(len);
        }
    }
    let (entries, mut payload) = match body {
        RecordBody::Garbage { entries, bytes } => (*entries, bytes.clone()),
        RecordBody::Entries(list) => {
            let mut buf = Vec::new();
            let mut n = 0u32;
            for e in list {
                let Some(at) = t.locate(e.region, e.offset) else { continue };
                let data = match &e.bytes {
                    Some(b) => b.clone(),
                    None => {
                        let w = width_of(e.width);
                        e.value.resolve(geo).to_le_bytes()[..w].to_vec()
                    }
                };
                let at = if e.bytes.is_some() { at } else { at / data.len() as u64 * data.len() as u64 };
                buf.extend_from_slice(&at.to_le_bytes());
                buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
                buf.extend_from_slice(&[0; 4]);
                buf.extend_from_slice(&data);
                buf.resize(buf.len().next_multiple_of(8), 0);
                n += 1;
            }
            (n, buf)
        }
    };
    payload.truncate((geo.journal_len / 2) as usize - hdr_len);
    let len = (hdr_len + payload.len()).next_multiple_of(64);
    let mut rec = Vec::with_capacity(len);
    rec.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    rec.extend_from_slice(&[0; 4]);
    rec.extend_from_slice(&pos.to_le_bytes());
    rec.extend_from_slice(&(len as u32).to_le_bytes());
    rec.extend_from_slice(&entries.to_le_bytes());
    rec.extend_from_slice(&[0; 8]);
    rec.extend_from_slice(&payload);
    rec.resize(len, 0);
    let crc = crc32c::crc32c(&rec);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
    ring_put(geo, image, pos, &rec);
}

/// Reads fields from a fuzzer's input; past its end every field reads zero.
pub(super) struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let got = self.bytes(N);
        b[..got.len()].copy_from_slice(&got);
        b
    }
    fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fixed())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }
    fn region(&mut self) -> Region {
        Region::ALL[usize::from(self.u8()) % Region::ALL.len()]
    }
    fn value(&mut self) -> Value {
        let tag = self.u8();
        let d = self.u16() as i16 % 64;
        match tag % 11 {
            0 => Value::Small(self.u8() % 16),
            1 => Value::AllOnes,
            2 => Value::HighBit,
            3 => Value::SizeBytes(d),
            4 => Value::DataEnd(d),
            5 => Value::DataStart(d),
            6 => Value::Inodes(d),
            7 => Value::JournalLen(d),
            8 => Value::Small(self.u8()),
            9 => Value::NearMax(self.u8() % 4),
            _ => Value::Raw(self.u64()),
        }
    }
}
