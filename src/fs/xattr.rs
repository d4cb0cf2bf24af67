//! Extended-attribute operations (getxattr, listxattr, setxattr, removexattr) on the codec in
//! `crate::xattr`: each change rewrites the inode's attribute block through one transaction.

use crate::error::{Error, Result};
use crate::inode::Timespec;
use crate::journal::Tx;
use crate::layout::mode;
use crate::sync::{rd, wr};
use std::collections::BTreeMap;

use crate::xattr::{check_name, encode, XattrFlags, VALUE_MAX};

use super::mmap::unmapped;
use super::state::Fs;

/// The namespace rule the VFS applies before asking a file system: `user.` attributes belong to
/// regular files and directories only (EPERM to set one elsewhere, ENODATA to read one).
fn user_allowed(name: &[u8], file_mode: u32) -> bool {
    !name.starts_with(b"user.") || mode::is_reg(file_mode) || mode::is_dir(file_mode)
}

impl Fs {
    /// The value of attribute `name` of `ino` (getxattr(2)).
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let name = &*unmapped(name);
        check_name(name)?;
        let n = self.node(ino)?;
        let g = rd(&n.inode);
        g.live()?;
        if !user_allowed(name, g.attr.mode) {
            return Err(Error::NoAttr);
        }
        g.xattr.get(name).map(<[u8]>::to_vec).ok_or(Error::NoAttr)
    }

    /// The names of `ino`'s attributes, each followed by a NUL (listxattr(2)).
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let n = self.node(ino)?;
        let g = rd(&n.inode);
        g.live()?;
        let mut out = Vec::new();
        for name in g.xattr.names() {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    /// Sets attribute `name` of `ino` to `value` (setxattr(2)); ctime moves.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: XattrFlags) -> Result<()> {
        let _change = self.writable()?;
        // Copied before the inode lock: either may lie in a mapping of this very file.
        let (name, value) = (&*unmapped(name), &*unmapped(value));
        check_name(name)?;
        if value.len() > VALUE_MAX {
            return Err(Error::TooBig("attribute values are at most 64 KiB"));
        }
        self.change_xattr(ino, name, |map| {
            let exists = map.contains_key(name);
            if flags.create && exists {
                return Err(Error::Exists);
            }
            if flags.replace && !exists {
                return Err(Error::NoAttr);
            }
            map.insert(name.to_vec(), value.to_vec());
            Ok(())
        })
    }

    /// Removes attribute `name` of `ino` (removexattr(2)); ctime moves.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        let _change = self.writable()?;
        let name = &*unmapped(name);
        check_name(name)?;
        self.change_xattr(ino, name, |map| map.remove(name).map(drop).ok_or(Error::NoAttr))
    }

    /// One attribute change as one transaction: the new block contents and the inode's
    /// attributes commit together; a block no longer needed is freed after the commit.
    fn change_xattr(
        &self,
        ino: u64,
        name: &[u8],
        change: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>) -> Result<()>,
    ) -> Result<()> {
        let geo = *self.geometry();
        let n = self.node(ino)?;
        let mut g = wr(&n.inode);
        g.live()?;
        if !user_allowed(name, g.attr.mode) {
            return Err(Error::NotPermitted("user.* attributes belong to regular files and directories"));
        }
        if !geo.xattr {
            return Err(Error::Unsupported(
                "extended attributes on an image made before they existed (copy it to a new image)".into(),
            ));
        }
        let mut map = g.xattr.map.clone();
        change(&mut map)?;
        let bytes = encode(&map, ino, geo.block_size)?;
        let old = g.xattr.block;
        let (block, taken) = match (map.is_empty(), old) {
            (true, _) => (0, None),
            (false, 0) => {
                let goal = self.goal(&g, 0);
                let run = self.alloc_blocks(goal, 1)?[0];
                (run.start, Some(run))
            }
            (false, b) => (b, None),
        };
        let mut tx = Tx::new();
        if block != 0 {
            tx.put(geo.block_at(block), &bytes);
            if old != 0 && self.planted(crate::sabotage::Sabotage::XattrInPlace) {
                self.device().write(geo.block_at(block), &bytes)?;
            }
        }
        let before = (g.xattr.block, g.attr.ctime);
        g.xattr.block = block;
        g.attr.ctime = Timespec::now();
        g.log_attr(&geo, &mut tx);
        match self.commit(&tx) {
            Ok(head) => {
                if block == 0 && old != 0 {
                    self.free_after(g.ino, head, vec![crate::alloc::Run { start: old, len: 1 }]);
                }
                g.xattr.map = map;
                Ok(())
            }
            Err(e) => {
                (g.xattr.block, g.attr.ctime) = before;
                self.unreserve(taken);
                Err(e)
            }
        }
    }
}
