//! Extended attributes: every name and value of an inode in one block, changed through the journal.
//!
//! The block (header, then entries in ascending name order, DESIGN.md §Extended attributes) is
//! rewritten whole by each change: the record carries the new block contents and the inode's
//! attributes (ctime, and the block number when the first attribute arrives or the last one
//! goes), so a change is atomic and costs one fence. Limits and errors are ext4's: names up to
//! 255 bytes (ERANGE), values up to 64 KiB (E2BIG), and everything an inode holds must fit in one
//! block (ENOSPC). Namespaces: `user.` (regular files and directories only), `trusted.` and
//! `security.`; `system.` (POSIX ACLs) and unknown prefixes are EOPNOTSUPP. Who may touch which
//! namespace (CAP_SYS_ADMIN for `trusted.`, write permission for `user.`) is the caller's check,
//! as the VFS makes it before a file system is asked.

use std::collections::BTreeMap;

use zerocopy::{FromBytes, IntoBytes};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::layout::{off, Geometry, RawXattrEntry, RawXattrHeader, XATTR_BLOCK_MAGIC};

/// Longest attribute name, namespace prefix included.
pub const NAME_MAX: usize = 255;
/// Largest value setxattr(2) accepts.
pub const VALUE_MAX: usize = 65536;

const HEADER: usize = size_of::<RawXattrHeader>();
const ENTRY: usize = size_of::<RawXattrEntry>();

/// Namespaces stored; anything else is refused.
const NAMESPACES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];

/// How [`Fs::setxattr`](crate::Fs::setxattr) treats an existing attribute, as setxattr(2)'s flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XattrFlags {
    /// XATTR_CREATE: fail with EEXIST if the attribute exists.
    pub create: bool,
    /// XATTR_REPLACE: fail with ENODATA if it does not.
    pub replace: bool,
}

/// The attributes of one inode, as loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xattrs {
    /// The block holding them, 0 when there are none.
    pub block: u64,
    pub(crate) map: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Checks a name as setxattr(2) and the namespaces udax stores see it.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(Error::Range("attribute names are 1 to 255 bytes"));
    }
    if name.contains(&0) {
        return Err(Error::InvalidArgument("attribute name holds a NUL"));
    }
    match NAMESPACES.iter().find(|p| name.starts_with(p)) {
        Some(p) if name.len() == p.len() => {
            Err(Error::InvalidArgument("attribute name has no name after its namespace"))
        }
        Some(_) => Ok(()),
        None if name.starts_with(b"system.") => Err(Error::Unsupported("system.* attributes (POSIX ACLs)".into())),
        None => Err(Error::Unsupported(format!(
            "attribute namespace of {:?} (udax stores user.*, trusted.* and security.*)",
            String::from_utf8_lossy(name)
        ))),
    }
}

/// Bytes one attribute takes in the block.
fn entry_len(name: &[u8], value: &[u8]) -> usize {
    (ENTRY + name.len() + value.len()).next_multiple_of(4)
}

impl Xattrs {
    /// Loads and checks the block `block` of inode `ino` (whose `xattr` field is at `field`).
    pub fn load(dev: &Device, geo: &Geometry, block: u64, ino: u64, field: u64) -> Result<Xattrs> {
        if block == 0 {
            return Ok(Xattrs::default());
        }
        if !geo.xattr || !geo.contains(block, 1) {
            return Err(Error::Corrupt { what: "inode xattr block", at: field });
        }
        let at = geo.block_at(block);
        let mut buf = vec![0u8; geo.block_size as usize];
        dev.read(at, &mut buf)?;
        let map = decode(&buf, ino, at)?;
        Ok(Xattrs { block, map })
    }

    /// The value of attribute `name` (full name, namespace prefix included), if set.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.map.get(name).map(Vec::as_slice)
    }

    /// Every name, in order.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.map.keys().map(Vec::as_slice)
    }
}

/// Decodes a block read from `at`; every field is checked.
fn decode(buf: &[u8], ino: u64, at: u64) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let (hdr, _) = RawXattrHeader::read_from_prefix(buf).map_err(|_| Error::Corrupt { what: "xattr block", at })?;
    if hdr.magic.get() != XATTR_BLOCK_MAGIC {
        return Err(Error::Corrupt { what: "xattr block magic", at });
    }
    if hdr.owner.get() != ino {
        return Err(Error::Corrupt { what: "xattr block owner", at: at + off!(RawXattrHeader, owner) });
    }
    if hdr.reserved.get() != 0 {
        return Err(Error::Corrupt { what: "xattr block header", at: at + off!(RawXattrHeader, reserved) });
    }
    let count = usize::from(hdr.count.get());
    if count == 0 {
        return Err(Error::Corrupt { what: "xattr block count", at: at + off!(RawXattrHeader, count) });
    }
    let mut map = BTreeMap::new();
    let mut pos = HEADER;
    let mut last: Option<&[u8]> = None;
    for _ in 0..count {
        let e_at = at + pos as u64;
        let bad = || Error::Corrupt { what: "xattr entry", at: e_at };
        let (e, rest) = RawXattrEntry::read_from_prefix(&buf[pos..]).map_err(|_| bad())?;
        let (nlen, vlen) = (usize::from(e.name_len), usize::from(e.value_len.get()));
        if e.reserved != 0 || nlen + vlen > rest.len() {
            return Err(bad());
        }
        let name = &rest[..nlen];
        let value = &rest[nlen..nlen + vlen];
        if check_name(name).is_err() {
            return Err(Error::Corrupt { what: "xattr name", at: e_at + ENTRY as u64 });
        }
        if last.is_some_and(|l| l >= name) {
            return Err(Error::Corrupt { what: "xattr name order", at: e_at + ENTRY as u64 });
        }
        last = Some(name);
        map.insert(name.to_vec(), value.to_vec());
        pos = (pos + entry_len(name, value)).min(buf.len());
    }
    Ok(map)
}

/// Encodes `map` as the block of inode `ino`: the bytes up to the end of the last entry (the rest
/// of the block is never read). ENOSPC when it does not fit in a block.
pub(crate) fn encode(map: &BTreeMap<Vec<u8>, Vec<u8>>, ino: u64, block_size: u64) -> Result<Vec<u8>> {
    let len = HEADER + map.iter().map(|(n, v)| entry_len(n, v)).sum::<usize>();
    if len as u64 > block_size {
        return Err(Error::NoSpace);
    }
    let mut out = Vec::with_capacity(len);
    let hdr = RawXattrHeader {
        magic: XATTR_BLOCK_MAGIC.into(),
        count: (map.len() as u16).into(),
        reserved: 0.into(),
        owner: ino.into(),
    };
    out.extend_from_slice(hdr.as_bytes());
    for (n, v) in map {
        let e = RawXattrEntry { name_len: n.len() as u8, reserved: 0, value_len: (v.len() as u16).into() };
        let start = out.len();
        out.extend_from_slice(e.as_bytes());
        out.extend_from_slice(n);
        out.extend_from_slice(v);
        out.resize(start + entry_len(n, v), 0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(&str, &[u8])]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        items.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn blocks_round_trip_and_every_header_field_is_checked() {
        let m = map(&[("user.a", b""), ("user.b", b"xyz"), ("trusted.t", &[7; 300])]);
        let mut block = encode(&m, 9, 1024).unwrap();
        block.resize(1024, 0xEE);
        assert_eq!(decode(&block, 9, 0).unwrap(), m);
        assert!(matches!(decode(&block, 8, 0), Err(Error::Corrupt { what: "xattr block owner", .. })));
        for (byte, what) in [(0, "xattr block magic"), (4, "xattr block count"), (6, "xattr block header")] {
            let mut bad = block.clone();
            bad[byte] ^= 0x40;
            assert!(decode(&bad, 9, 0).is_err(), "{what}");
        }
        // A value running past the block.
        let mut bad = block.clone();
        bad[HEADER + 2..HEADER + 4].copy_from_slice(&2000u16.to_le_bytes());
        assert!(decode(&bad, 9, 0).is_err());
    }

    #[test]
    fn names_follow_the_namespace_rules() {
        assert!(check_name(b"user.x").is_ok());
        assert_eq!(check_name(b"user.").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(check_name(b"system.posix_acl_access").unwrap_err().errno(), libc::EOPNOTSUPP);
        assert_eq!(check_name(b"other.x").unwrap_err().errno(), libc::EOPNOTSUPP);
        assert_eq!(check_name(&[b'u'; 256]).unwrap_err().errno(), libc::ERANGE);
        assert_eq!(check_name(b"").unwrap_err().errno(), libc::ERANGE);
    }

    #[test]
    fn a_block_holds_what_fits_and_no_more() {
        let name = b"user.v".to_vec();
        let room = 1024 - HEADER - ENTRY - name.len();
        let mut m = BTreeMap::new();
        m.insert(name.clone(), vec![1; room]);
        assert_eq!(encode(&m, 1, 1024).unwrap().len(), 1024);
        m.insert(name, vec![1; room + 1]);
        assert!(matches!(encode(&m, 1, 1024), Err(Error::NoSpace)));
    }
}
