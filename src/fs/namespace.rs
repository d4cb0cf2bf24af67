//! Names and attributes: lookup, create, link, unlink, readdir, setattr, open and release.

use std::sync::Arc;

use crate::alloc::Run;
use crate::error::{Error, Result};
use crate::extent::{ExtentMap, State};
use crate::inode::{Attr, Inode, Timespec};
use crate::journal::Tx;
use crate::layout::{self, check_name, mode};
use crate::sync::{lock, rd, wr};

use super::mmap::unmapped;
use super::node::Node;
use super::state::Fs;
use super::types::{killed_set_id, Creds, DirEntry, SetAttr, SetTime, Stat, LINK_MAX};

impl Fs {
    // ---- namespace ----

    /// Attributes of inode `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Stat> {
        self.getattr_node(&*self.settled(ino)?)
    }

    pub(crate) fn getattr_node(&self, n: &Node) -> Result<Stat> {
        let g = rd(&n.inode);
        g.live()?;
        Ok(self.stat_of(&g))
    }

    /// Looks `name` up in directory `parent` ("." and ".." included).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Stat> {
        let n = self.lookup_node(&self.node(parent)?, name)?;
        // The attributes go to the kernel's cache: with the size a lease's appends reach.
        self.settle(&n)?;
        self.getattr_node(&n)
    }

    /// The inode `name` names in directory `parent`, taken while the directory is locked: an
    /// unlink can free the number right after, and a new file reuse it, but this node stays the
    /// inode that had the name (operations on it fail with ENOENT once it is freed).
    pub(crate) fn lookup_node(&self, parent: &Arc<Node>, name: &[u8]) -> Result<Arc<Node>> {
        let name = &*unmapped(name);
        let g = rd(&parent.inode);
        let dir = g.dir()?;
        let ino = match name {
            b"." => return Ok(parent.clone()),
            b".." => g.attr.parent,
            _ => {
                if name.len() > layout::NAME_MAX {
                    return Err(Error::NameTooLong);
                }
                dir.get(name).map(|e| e.ino).ok_or(Error::NotFound)?
            }
        };
        self.node(ino)
    }

    /// Creates a regular file.
    pub fn create(&self, parent: u64, name: &[u8], perm: u32, who: Creds) -> Result<Stat> {
        self.make_node(&*self.node(parent)?, name, mode::S_IFREG | (perm & 0o7777), 0, who, None).map(|n| n.0)
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: u64, name: &[u8], perm: u32, who: Creds) -> Result<Stat> {
        self.mkdir_in(&*self.node(parent)?, name, perm, who).map(|n| n.0)
    }

    pub(crate) fn mkdir_in(&self, parent: &Node, name: &[u8], perm: u32, who: Creds) -> Result<(Stat, Arc<Node>)> {
        self.make_node(parent, name, mode::S_IFDIR | (perm & 0o7777), 0, who, None)
    }

    /// Creates a special file (FIFO, socket, device) or a regular file: an inode without data.
    pub fn mknod(&self, parent: u64, name: &[u8], mode_bits: u32, rdev: u64, who: Creds) -> Result<Stat> {
        if mode::is_dir(mode_bits) || mode::is_symlink(mode_bits) || !mode::is_valid_type(mode_bits) {
            return Err(Error::InvalidArgument("mknod makes files, FIFOs, sockets and devices"));
        }
        self.make_node(&*self.node(parent)?, name, mode_bits & (mode::S_IFMT | 0o7777), rdev, who, None).map(|n| n.0)
    }

    /// Creates a symbolic link to `target`.
    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], who: Creds) -> Result<Stat> {
        self.symlink_in(&*self.node(parent)?, name, target, who)
    }

    pub(crate) fn symlink_in(&self, parent: &Node, name: &[u8], target: &[u8], who: Creds) -> Result<Stat> {
        if target.is_empty() || target.contains(&0) {
            return Err(Error::InvalidArgument("symlink target is empty or holds a NUL"));
        }
        if target.len() > layout::SYMLINK_MAX {
            return Err(Error::NameTooLong);
        }
        self.make_node(parent, name, mode::S_IFLNK | 0o777, 0, who, Some(target)).map(|n| n.0)
    }

    /// Makes `name` in directory `p`: a new inode of `mode_bits`, and its node.
    pub(crate) fn make_node(
        &self,
        p: &Node,
        name: &[u8],
        mode_bits: u32,
        rdev: u64,
        who: Creds,
        target: Option<&[u8]>,
    ) -> Result<(Stat, Arc<Node>)> {
        let _change = self.writable()?;
        let (name, target) = (&*unmapped(name), target.map(unmapped));
        let target = target.as_deref();
        check_name(name)?;
        let geo = self.inner.geo;
        let mut pg = wr(&p.inode);
        let dir = pg.dir()?;
        if pg.attr.nlink == 0 {
            return Err(Error::NotFound);
        }
        if dir.get(name).is_some() {
            return Err(Error::Exists);
        }
        let is_dir = mode::is_dir(mode_bits);
        if is_dir && pg.attr.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        crate::faults::check(crate::faults::Step::Alloc)?;
        let (ino, generation) = lock(&self.inner.itable).alloc()?;
        let mut inode = Inode::new(ino, Attr::new(mode_bits, who.uid, who.gid, generation), &geo);
        inode.attr.rdev = rdev;
        // As Linux does: a set-group-ID directory gives what is made in it its group, and new
        // directories the bit; a new executable file keeps the bit only for a member (root
        // counts) of that group.
        if pg.attr.mode & mode::S_ISGID != 0 {
            inode.attr.gid = pg.attr.gid;
            if is_dir {
                inode.attr.mode |= mode::S_ISGID;
            } else if inode.attr.mode & (mode::S_ISGID | 0o010) == mode::S_ISGID | 0o010
                && who.uid != 0
                && who.gid != pg.attr.gid
            {
                inode.attr.mode &= !mode::S_ISGID;
            }
        }
        if is_dir {
            inode.attr.parent = p.ino;
        }
        // Memory changes with the transaction; a failure puts the parent back from the medium
        // and gives back the inode number and every block taken.
        let mut tx = Tx::new();
        let mut taken = Vec::new();
        let made = (|| {
            let mut runs = crate::alloc::Runs::new();
            if let Some(t) = target {
                runs = self.alloc_blocks(self.goal(&inode, 0), (t.len() as u64).div_ceil(geo.block_size))?;
                taken.extend_from_slice(&runs);
            }
            self.add_entry(&mut pg, name, ino, mode::dtype(mode_bits), &mut tx, &mut taken)?;
            inode.attr.size = target.map_or(0, |t| t.len() as u64);
            // A free slot's lane is 0 unless damage set it; the journal never writes it.
            self.clear_lane(ino)?;
            inode.log_new(&geo, &mut tx);
            if let Some(t) = target {
                let mut at = 0usize;
                for run in &runs {
                    let bytes = (run.len * geo.block_size) as usize;
                    let off = geo.block_at(run.start);
                    let n = bytes.min(t.len() - at);
                    tx.content_write(&self.inner.dev, off, &t[at..at + n])?;
                    tx.content_zero(&self.inner.dev, off + n as u64, (bytes - n) as u64)?;
                    at += n;
                }
                for e in ExtentMap::extents_for(0, &runs, State::Written) {
                    inode.ext.insert(e, &mut tx)?;
                }
            }
            let now = Timespec::now();
            pg.attr.mtime = now;
            pg.attr.ctime = now;
            if is_dir {
                pg.attr.nlink += 1;
            }
            pg.log_attr(&geo, &mut tx);
            self.commit(&tx)
        })();
        if let Err(e) = made {
            self.restore(&mut pg, taken);
            lock(&self.inner.itable).release(ino, generation.wrapping_sub(1));
            return Err(e);
        }
        let st = self.stat_of(&inode);
        let node = Node::new(inode);
        self.inner.nodes.insert(node.clone());
        Ok((st, node))
    }

    /// Reads a symbolic link's target.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        self.readlink_node(&*self.node(ino)?)
    }

    pub(crate) fn readlink_node(&self, n: &Node) -> Result<Vec<u8>> {
        let g = rd(&n.inode);
        g.live()?;
        if !mode::is_symlink(g.attr.mode) {
            return Err(Error::InvalidArgument("not a symbolic link"));
        }
        let mut buf = vec![0; g.attr.size as usize];
        self.read_locked(&g, 0, &mut buf)?;
        Ok(buf)
    }

    /// Adds a hard link `newparent/newname` to `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<Stat> {
        self.link_nodes(&*self.settled(ino)?, &*self.node(newparent)?, newname)
    }

    /// Adds a hard link `p/newname` to the inode of `c`.
    pub(crate) fn link_nodes(&self, c: &Node, p: &Node, newname: &[u8]) -> Result<Stat> {
        let _change = self.writable()?;
        let newname = &*unmapped(newname);
        check_name(newname)?;
        let mut pg = wr(&p.inode);
        let dir = pg.dir()?;
        if pg.attr.nlink == 0 {
            return Err(Error::NotFound);
        }
        if dir.get(newname).is_some() {
            return Err(Error::Exists);
        }
        // Checked before locking the child: a directory could be an ancestor of `newparent`,
        // and locking it after its descendant would invert the lock order.
        if c.is_dir {
            return Err(Error::NotPermitted("hard links to directories are not allowed"));
        }
        let mut cg = wr(&c.inode);
        if cg.attr.nlink == 0 {
            return Err(Error::NotFound);
        }
        if cg.attr.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        let nlink = cg.attr.nlink + 1;
        self.link_locked(&mut pg, newname, &mut cg, nlink)?;
        Ok(self.stat_of(&cg))
    }

    /// Names the locked inode `cg` as `name` in the locked directory `dg`, giving it `nlink`
    /// links, in one transaction; a failure puts both back. `cg` is a non-directory, except
    /// when repair links a directory that no entry names.
    pub(crate) fn link_locked(&self, dg: &mut Inode, name: &[u8], cg: &mut Inode, nlink: u32) -> Result<()> {
        let geo = self.inner.geo;
        let mut tx = Tx::new();
        let mut taken = Vec::new();
        let linked = (|| {
            self.add_entry(dg, name, cg.ino, mode::dtype(cg.attr.mode), &mut tx, &mut taken)?;
            let now = Timespec::now();
            dg.attr.mtime = now;
            dg.attr.ctime = now;
            if cg.is_dir() {
                // Only repair links a directory (one no entry names): `dg` becomes its parent.
                dg.attr.nlink += 1;
                cg.attr.parent = dg.ino;
            }
            dg.log_attr(&geo, &mut tx);
            cg.attr.nlink = nlink;
            cg.attr.ctime = now;
            cg.log_attr(&geo, &mut tx);
            self.commit(&tx)
        })();
        if let Err(e) = linked {
            self.restore(dg, taken);
            self.restore(cg, Vec::new());
            return Err(e);
        }
        Ok(())
    }

    /// Removes a non-directory entry.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.remove_entry(&*self.node(parent)?, name, false)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.rmdir_in(&*self.node(parent)?, name)
    }

    pub(crate) fn rmdir_in(&self, parent: &Node, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(Error::InvalidArgument("cannot remove '.'"));
        }
        if name == b".." {
            return Err(Error::NotEmpty);
        }
        self.remove_entry(parent, name, true)
    }

    /// Removes `name` from directory `p` (unlink, or rmdir when `want_dir`).
    pub(crate) fn remove_entry(&self, p: &Node, name: &[u8], want_dir: bool) -> Result<()> {
        let _change = self.writable()?;
        let name = &*unmapped(name);
        if name.len() > layout::NAME_MAX {
            return Err(Error::NameTooLong);
        }
        let geo = self.inner.geo;
        let mut pg = wr(&p.inode);
        let e = *pg.dir()?.get(name).ok_or(Error::NotFound)?;
        if e.ino == p.ino {
            return Err(Error::Corrupt { what: "directory entry names its own directory", at: geo.inode_at(p.ino) });
        }
        // A name of a free inode can go; one of a damaged inode stays for repair (Corrupt).
        let c = match self.node(e.ino) {
            Err(Error::NotFound) => return self.remove_dangling(&mut pg, name, want_dir),
            found => found?,
        };
        let mut cg = wr(&c.inode);
        match (want_dir, cg.is_dir()) {
            (true, false) => return Err(Error::NotDir),
            (false, true) => return Err(Error::IsDir),
            (true, true) if !cg.dir()?.is_empty() => return Err(Error::NotEmpty),
            _ => {}
        }
        let mut tx = Tx::new();
        let free_now = (want_dir || cg.attr.nlink <= 1) && cg.open == 0;
        let removed = (|| {
            let (_, zeros) = pg.dir_mut()?.remove(name).expect("entry looked up under the same lock");
            tx.put(self.dir_off(&pg, e.pos)?, &zeros);
            if self.planted(crate::sabotage::Sabotage::EntryInPlace) {
                self.inner.dev.write(self.dir_off(&pg, e.pos)?, &zeros)?;
            }
            let now = Timespec::now();
            pg.attr.mtime = now;
            pg.attr.ctime = now;
            if want_dir {
                pg.attr.nlink = pg.attr.nlink.saturating_sub(1);
            }
            pg.log_attr(&geo, &mut tx);
            cg.attr.nlink = if want_dir { 0 } else { cg.attr.nlink.saturating_sub(1) };
            cg.attr.ctime = now;
            if free_now {
                cg.log_free(&geo, &mut tx);
            } else {
                cg.log_attr(&geo, &mut tx);
            }
            self.commit(&tx)
        })();
        let head = match removed {
            Ok(head) => head,
            Err(e) => {
                self.restore(&mut pg, Vec::new());
                self.restore(&mut cg, Vec::new());
                return Err(e);
            }
        };
        if free_now {
            self.forget_freed(&mut cg, head);
        }
        Ok(())
    }

    /// Removes an entry that names a free inode (damage mount keeps and fsck reports): removing
    /// the name is the repair. Its type says whether it is unlink's or rmdir's to remove.
    pub(crate) fn remove_dangling(&self, pg: &mut Inode, name: &[u8], want_dir: bool) -> Result<()> {
        let is_dir = pg.dir()?.get(name).ok_or(Error::NotFound)?.dtype == crate::dir::DT_DIR;
        match (want_dir, is_dir) {
            (true, false) => return Err(Error::NotDir),
            (false, true) => return Err(Error::IsDir),
            _ => {}
        }
        self.undoable(pg, |pg, _| {
            let mut tx = Tx::new();
            let (e, zeros) = pg.dir_mut()?.remove(name).expect("entry looked up under the same lock");
            tx.put(self.dir_off(pg, e.pos)?, &zeros);
            let now = Timespec::now();
            pg.attr.mtime = now;
            pg.attr.ctime = now;
            if is_dir {
                pg.attr.nlink = pg.attr.nlink.saturating_sub(1);
            }
            pg.log_attr(&self.inner.geo, &mut tx);
            self.commit(&tx)?;
            Ok(())
        })
    }

    /// Drops a freed inode from memory after the transaction that cleared its slot (at `head`).
    pub(super) fn forget_freed(&self, inode: &mut Inode, head: u64) {
        let runs: Vec<Run> = inode.owned_runs().collect();
        self.free_after(inode.ino, head, runs);
        inode.freed = true;
        inode.ext = ExtentMap::empty(self.inner.geo.inode_at(inode.ino));
        inode.xattr = Default::default();
        self.inner.nodes.remove(inode.ino);
        lock(&self.inner.itable).release(inode.ino, inode.attr.generation);
    }

    /// Entries of directory `ino` after `cookie` (0 from the start), without "." and "..".
    pub fn readdir(&self, ino: u64, cookie: u64) -> Result<Vec<DirEntry>> {
        self.readdir_node(&*self.node(ino)?, cookie)
    }

    pub(crate) fn readdir_node(&self, n: &Node, cookie: u64) -> Result<Vec<DirEntry>> {
        let g = rd(&n.inode);
        let dir = g.dir()?;
        let after = cookie.checked_sub(1);
        Ok(dir
            .entries_after(after)
            .map(|(name, e)| DirEntry { name: name.to_vec(), ino: e.ino, dtype: e.dtype, cookie: e.pos + 1 })
            .collect())
    }

    /// Changes attributes; `size` truncates or extends (DESIGN.md "Space"). Returns the new attributes.
    pub fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Stat> {
        self.setattr_node(&*self.settled(ino)?, set)
    }

    pub(crate) fn setattr_node(&self, n: &Node, set: &SetAttr) -> Result<Stat> {
        let _change = self.writable()?;
        let geo = self.inner.geo;
        let _io = set.size.map(|_| wr(&n.io));
        let mut g = wr(&n.inode);
        g.live()?;
        if let Some(size) = set.size {
            // The size and every other change commit together.
            self.undoable(&mut g, |g, _| self.truncate_locked(n, g, size, &|g| apply_attrs(g, set)))?;
            return Ok(self.stat_of(&g));
        }
        let drops = set.drop_set_id.is_some() && killed_set_id(g.attr.mode, true) != 0;
        if set.mode.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.atime.is_none()
            && set.mtime.is_none()
            && !drops
        {
            return Ok(self.stat_of(&g));
        }
        self.undoable(&mut g, |g, _| {
            apply_attrs(g, set);
            let mut tx = Tx::new();
            g.log_attr(&geo, &mut tx);
            self.commit(&tx)
        })?;
        Ok(self.stat_of(&g))
    }

    /// Marks `ino` open (an unlinked inode lives until its last close).
    pub fn open_ino(&self, ino: u64) -> Result<Stat> {
        self.open_node(&*self.settled(ino)?)
    }

    pub(crate) fn open_node(&self, n: &Node) -> Result<Stat> {
        let mut g = wr(&n.inode);
        g.live()?;
        g.open += 1;
        Ok(self.stat_of(&g))
    }

    /// Closes one open of `ino`, freeing it if it was the last and the inode has no links.
    pub fn release(&self, ino: u64) -> Result<()> {
        self.release_node(&*self.settled(ino)?)
    }

    pub(crate) fn release_node(&self, n: &Node) -> Result<()> {
        let mut g = wr(&n.inode);
        if g.freed {
            return Ok(());
        }
        g.open = g.open.saturating_sub(1);
        if g.open == 0 && g.attr.nlink == 0 {
            // A file system that stopped taking changes leaves it to the next mount (an orphan).
            if let Ok(_change) = self.writable() {
                self.free_inode(&mut g)?;
            }
        }
        Ok(())
    }
}

/// Applies the changes of `set` other than the size to `g`, and sets ctime.
pub(super) fn apply_attrs(g: &mut Inode, set: &SetAttr) {
    let now = Timespec::now();
    if let Some(m) = set.mode {
        g.attr.mode = (g.attr.mode & mode::S_IFMT) | (m & 0o7777);
    } else if let Some(by) = set.drop_set_id {
        let chown = set.uid.is_some() || set.gid.is_some();
        let outsider = chown && by.uid != 0 && by.gid != g.attr.gid;
        g.attr.mode &= !killed_set_id(g.attr.mode, outsider);
    }
    if let Some(u) = set.uid {
        g.attr.uid = u;
    }
    if let Some(gid) = set.gid {
        g.attr.gid = gid;
    }
    let pick = |t: SetTime| match t {
        SetTime::Now => now,
        SetTime::At(t) => t,
    };
    if let Some(t) = set.atime {
        g.attr.atime = pick(t);
    }
    if let Some(t) = set.mtime {
        g.attr.mtime = pick(t);
    }
    g.attr.ctime = now;
}
