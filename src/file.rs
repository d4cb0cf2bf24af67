//! Open files and path-based access: `Fs::open` and friends, and `File` with std::io Read,
//! Write and Seek.
//!
//! Paths are absolute within the image ("/a/b"; a missing leading slash means the same).
//! Symbolic links are followed in every component but, where the call says so, the last.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fs::{Creds, DirEntry, Fs, Node, RenameMode, SetAttr, Stat};
use crate::layout::mode;
use crate::sync::rd;

/// How [`Fs::open`] opens a file, like std's `OpenOptions`.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Open for reading (`O_RDONLY` / `O_RDWR`).
    pub read: bool,
    /// Open for writing (`O_WRONLY` / `O_RDWR`).
    pub write: bool,
    /// Every write goes to the end of the file, whatever its offset (`O_APPEND`).
    pub append: bool,
    /// Create the file if it does not exist (`O_CREAT`).
    pub create: bool,
    /// Create the file, failing with [`Error::Exists`] if the name is taken (`O_CREAT|O_EXCL`).
    pub create_new: bool,
    /// Cut the file to zero bytes when opened for writing (`O_TRUNC`).
    pub truncate: bool,
    /// Permission bits for a created file.
    pub mode: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read: true,
            write: false,
            append: false,
            create: false,
            create_new: false,
            truncate: false,
            mode: 0o644,
        }
    }
}

impl OpenOptions {
    /// Read only; the file must exist.
    pub fn read_only() -> Self {
        Self::default()
    }
    /// Read-write, creating the file if missing (like `xfs_io -f`).
    pub fn create() -> Self {
        OpenOptions { write: true, create: true, ..Self::default() }
    }
    /// Read-write; the file must exist.
    pub fn read_write() -> Self {
        OpenOptions { write: true, ..Self::default() }
    }
}

/// An open regular file. Closing (drop) lets an unlinked file's space go.
#[derive(Debug)]
pub struct File {
    fs: Fs,
    /// The inode itself, not its number: the number can be reused once the inode is freed.
    node: Arc<Node>,
    ino: u64,
    pos: u64,
    opts: OpenOptions,
}

/// Most symbolic links followed while resolving one path.
const MAX_SYMLINKS: u32 = 40;

impl Fs {
    /// Resolves `path` to an inode number, following symbolic links (the last one too if
    /// `follow`). The number names the inode only while it lives: prefer the path calls, which
    /// act on the inode the walk found.
    pub fn resolve(&self, path: impl AsRef<Path>, follow: bool) -> Result<u64> {
        self.resolve_node(path.as_ref(), follow).map(|n| n.ino)
    }

    /// The inode `path` names (see [`Fs::lookup_node`] for why a node, not a number).
    fn resolve_node(&self, path: &Path, follow: bool) -> Result<Arc<Node>> {
        let mut budget = MAX_SYMLINKS;
        self.walk(&self.root()?, path.as_os_str().as_bytes(), follow, &mut budget)
    }

    fn root(&self) -> Result<Arc<Node>> {
        Ok(self.inner.root.clone())
    }

    fn walk(&self, start: &Arc<Node>, path: &[u8], follow: bool, budget: &mut u32) -> Result<Arc<Node>> {
        let mut at = if path.first() == Some(&b'/') { self.root()? } else { start.clone() };
        let mut parts = path.split(|&b| b == b'/').filter(|p| !p.is_empty()).peekable();
        while let Some(part) = parts.next() {
            if !at.is_dir {
                return Err(Error::NotDir);
            }
            let dir = at;
            at = self.lookup_node(&dir, part)?;
            let last = parts.peek().is_none();
            if (!last || follow) && at.is_symlink {
                at = self.follow(&dir, &at, budget)?;
            }
        }
        if path.ends_with(b"/") && !at.is_dir {
            return Err(Error::NotDir);
        }
        rd(&at.inode).live()?;
        Ok(at)
    }

    /// The inode symbolic link `link`, found in `dir`, leads to.
    fn follow(&self, dir: &Arc<Node>, link: &Node, budget: &mut u32) -> Result<Arc<Node>> {
        if *budget == 0 {
            return Err(Error::Loop);
        }
        *budget -= 1;
        self.walk(dir, &self.readlink_node(link)?, true, budget)
    }

    /// The directory that holds `path`'s last component, and that component.
    pub fn resolve_parent<'p>(&self, path: &'p Path) -> Result<(u64, &'p [u8])> {
        self.parent_node(path).map(|(n, name)| (n.ino, name))
    }

    fn parent_node<'p>(&self, path: &'p Path) -> Result<(Arc<Node>, &'p [u8])> {
        let mut budget = MAX_SYMLINKS;
        self.parent_at(&self.root()?, path.as_os_str().as_bytes(), &mut budget)
    }

    /// As [`Fs::resolve_parent`], for a path relative to directory `start`.
    fn parent_at<'p>(&self, start: &Arc<Node>, bytes: &'p [u8], budget: &mut u32) -> Result<(Arc<Node>, &'p [u8])> {
        let trimmed = match bytes.iter().rposition(|&b| b != b'/') {
            Some(i) => &bytes[..=i],
            None => return Err(Error::InvalidArgument("the root has no parent")),
        };
        let (dir, name) = match trimmed.iter().rposition(|&b| b == b'/') {
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => (&b""[..], trimmed),
        };
        let from = if bytes.first() == Some(&b'/') { self.root()? } else { start.clone() };
        let parent = if dir.is_empty() { from } else { self.walk(&from, dir, true, budget)? };
        if !parent.is_dir {
            return Err(Error::NotDir);
        }
        Ok((parent, name))
    }

    /// Creates the file `path` names for an O_CREAT open that found nothing; like Linux, a
    /// dangling symbolic link in the last component is followed and its target created.
    fn create_for_open(&self, path: &Path, opts: &OpenOptions, who: Creds) -> Result<Arc<Node>> {
        let mut budget = MAX_SYMLINKS;
        let (mut parent, name) = self.parent_at(&self.root()?, path.as_os_str().as_bytes(), &mut budget)?;
        let mut name = name.to_vec();
        let bits = mode::S_IFREG | (opts.mode & 0o7777);
        loop {
            match self.make_node(&parent, &name, bits, 0, who, None) {
                Err(Error::Exists) if !opts.create_new => {
                    let link = self.lookup_node(&parent, &name)?;
                    if !mode::is_symlink(self.getattr_node(&link)?.mode) {
                        return Ok(link);
                    }
                    if budget == 0 {
                        return Err(Error::Loop);
                    }
                    budget -= 1;
                    let target = self.readlink_node(&link)?;
                    let (p, n) = self.parent_at(&parent, &target, &mut budget)?;
                    if target.ends_with(b"/") {
                        // A regular file cannot be created under a name that ends in a slash.
                        return Err(Error::IsDir);
                    }
                    (parent, name) = (p, n.to_vec());
                }
                r => return r.map(|(_, node)| node),
            }
        }
    }

    /// Opens (and maybe creates) the file at `path`. A file it creates is owned by the
    /// effective user and group the process had when it mounted the file system (as for every
    /// path call that creates); [`Fs::open_as`] names another owner.
    pub fn open(&self, path: impl AsRef<Path>, opts: OpenOptions) -> Result<File> {
        self.open_as(path, opts, self.inner.owner)
    }

    /// As [`Fs::open`], creating files owned by `who`.
    pub fn open_as(&self, path: impl AsRef<Path>, opts: OpenOptions, who: Creds) -> Result<File> {
        let path = path.as_ref();
        // O_EXCL never follows a symbolic link in the last place: the link itself is a name that exists.
        let node = match self.resolve_node(path, !opts.create_new) {
            Ok(_) if opts.create_new => return Err(Error::Exists),
            Ok(node) => node,
            Err(Error::NotFound) if opts.create || opts.create_new => self.create_for_open(path, &opts, who)?,
            Err(e) => return Err(e),
        };
        if opts.write || opts.append {
            self.writable().map(drop)?;
        }
        // Fails with ENOENT if the inode was freed since the walk found it.
        let st = self.open_node(&node)?;
        let file = File { fs: self.clone(), ino: node.ino, node, pos: 0, opts };
        if mode::is_dir(st.mode) && (opts.write || opts.append) {
            return Err(Error::IsDir);
        }
        if opts.truncate && (opts.write || opts.append) && st.size > 0 {
            file.set_len(0)?;
        }
        Ok(file)
    }

    /// stat(2) of `path`.
    pub fn stat(&self, path: impl AsRef<Path>) -> Result<Stat> {
        self.getattr_node(&*self.resolve_node(path.as_ref(), true)?)
    }

    /// lstat(2) of `path`.
    pub fn lstat(&self, path: impl AsRef<Path>) -> Result<Stat> {
        self.getattr_node(&*self.resolve_node(path.as_ref(), false)?)
    }

    /// mkdir(2) of `path` with permission bits `perm`; returns the new directory's attributes.
    pub fn mkdir_path(&self, path: impl AsRef<Path>, perm: u32) -> Result<Stat> {
        let (parent, name) = self.parent_node(path.as_ref())?;
        self.mkdir_in(&parent, name, perm, self.inner.owner).map(|n| n.0)
    }

    /// mkdir -p: creates missing directories along `path`.
    pub fn mkdir_all(&self, path: impl AsRef<Path>, perm: u32) -> Result<u64> {
        let mut at = self.root()?;
        for part in path.as_ref().as_os_str().as_bytes().split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            at = match self.lookup_node(&at, part) {
                Ok(n) => {
                    let n = if mode::is_symlink(self.getattr_node(&n)?.mode) {
                        let mut budget = MAX_SYMLINKS;
                        self.follow(&at, &n, &mut budget)?
                    } else {
                        n
                    };
                    if !n.is_dir {
                        return Err(Error::NotDir);
                    }
                    n
                }
                Err(Error::NotFound) => match self.mkdir_in(&at, part, perm, self.inner.owner) {
                    Ok((_, n)) => n,
                    Err(Error::Exists) => self.lookup_node(&at, part)?,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            };
        }
        Ok(at.ino)
    }

    /// unlink(2) of `path`: removes a name that is not a directory.
    pub fn unlink_path(&self, path: impl AsRef<Path>) -> Result<()> {
        let (parent, name) = self.parent_node(path.as_ref())?;
        self.remove_entry(&parent, name, false)
    }

    /// rmdir(2) of `path`: removes an empty directory.
    pub fn rmdir_path(&self, path: impl AsRef<Path>) -> Result<()> {
        let (parent, name) = self.parent_node(path.as_ref())?;
        self.rmdir_in(&parent, name)
    }

    /// rm -r: removes `path` and everything under it.
    pub fn remove_all(&self, path: impl AsRef<Path>) -> Result<()> {
        let (parent, name) = self.parent_node(path.as_ref())?;
        self.remove_tree(parent, name)
    }

    /// Removes `name` in `parent` and everything under it, depth first with a stack of its own
    /// (a chain of any depth, no recursion): a directory is entered, emptied of files, and
    /// removed once its subdirectories are.
    fn remove_tree(&self, parent: Arc<Node>, name: &[u8]) -> Result<()> {
        let node = self.lookup_node(&parent, name)?;
        if !node.is_dir {
            return self.remove_entry(&parent, name, false);
        }
        // (parent, name, directory) of directories entered and not yet removed.
        let mut stack = vec![(parent, name.to_vec(), node)];
        while let Some((p, n, dir)) = stack.last().cloned() {
            let mut subdirs = false;
            for e in self.readdir_node(&dir, 0)? {
                if e.dtype == crate::dir::DT_DIR {
                    let sub = self.lookup_node(&dir, &e.name)?;
                    stack.push((dir.clone(), e.name, sub));
                    subdirs = true;
                } else {
                    self.remove_entry(&dir, &e.name, false)?;
                }
            }
            if !subdirs {
                self.rmdir_in(&p, &n)?;
                stack.pop();
            }
        }
        Ok(())
    }

    /// rename(2): moves `from` to `to`, atomically replacing whatever `to` names.
    pub fn rename_path(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
        let (sp, sn) = self.parent_node(from.as_ref())?;
        let (dp, dn) = self.parent_node(to.as_ref())?;
        self.rename_nodes(&sp, sn, &dp, dn, RenameMode::Replace)
    }

    /// link(2): makes `new` another name for the inode `existing` names (not followed if a
    /// symbolic link); returns its attributes.
    pub fn link_path(&self, existing: impl AsRef<Path>, new: impl AsRef<Path>) -> Result<Stat> {
        let node = self.resolve_node(existing.as_ref(), false)?;
        let (dp, dn) = self.parent_node(new.as_ref())?;
        self.link_nodes(&node, &dp, dn)
    }

    /// symlink(2): creates `link`, a symbolic link whose content is `target`.
    pub fn symlink_path(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<Stat> {
        let (dp, dn) = self.parent_node(link.as_ref())?;
        self.symlink_in(&dp, dn, target.as_ref().as_os_str().as_bytes(), self.inner.owner)
    }

    /// readlink(2): the content of the symbolic link `path`.
    pub fn readlink_path(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        self.readlink_node(&*self.resolve_node(path.as_ref(), false)?)
    }

    /// The entries of directory `path`, without `.` and `..`.
    pub fn read_dir_path(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>> {
        self.readdir_node(&*self.resolve_node(path.as_ref(), true)?, 0)
    }

    /// Changes the attributes `set` names on `path` (the last symbolic link followed if
    /// `follow`); returns the attributes after.
    pub fn setattr_path(&self, path: impl AsRef<Path>, follow: bool, set: &SetAttr) -> Result<Stat> {
        self.setattr_node(&*self.resolve_node(path.as_ref(), follow)?, set)
    }

    /// Reads a whole file.
    pub fn read_file(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        let node = self.resolve_node(path.as_ref(), true)?;
        let size = usize::try_from(self.getattr_node(&node)?.size).map_err(|_| Error::FileTooBig)?;
        // A sparse file can be far larger than memory: fail, do not abort.
        let mut buf = Vec::new();
        buf.try_reserve_exact(size)
            .map_err(|_| Error::io("read_file", std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
        buf.resize(size, 0);
        let n = self.read_node(&node, 0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Creates or replaces the contents of a file.
    pub fn write_file(&self, path: impl AsRef<Path>, data: &[u8]) -> Result<()> {
        let f = self.open(path, OpenOptions { truncate: true, ..OpenOptions::create() })?;
        let n = f.write_at(data, 0)?;
        if n < data.len() {
            return Err(Error::NoSpace);
        }
        Ok(())
    }
}

impl File {
    /// The file's inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The file system the file is on.
    pub fn fs(&self) -> &Fs {
        &self.fs
    }

    /// Reads into `buf` from byte `off`; returns the bytes read, short only at end of file
    /// (0 at or past it). Holes and unwritten extents read as zeros.
    ///
    /// # Errors
    ///
    /// `EBADF` (as [`Error::Io`]) if the file was not opened for reading.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<usize> {
        if !self.opts.read {
            return Err(Error::Io { context: "read".into(), source: io::Error::from_raw_os_error(libc::EBADF) });
        }
        self.fs.read_node(&self.node, off, buf)
    }

    /// Writes at `off` (at EOF when opened for append). Durable on return.
    pub fn write_at(&self, buf: &[u8], off: u64) -> Result<usize> {
        if !(self.opts.write || self.opts.append) {
            return Err(Error::Io { context: "write".into(), source: io::Error::from_raw_os_error(libc::EBADF) });
        }
        self.fs.write_node(&self.node, (!self.opts.append).then_some(off), buf, false)
    }

    /// fallocate(2): preallocate, punch a hole or zero a range.
    pub fn fallocate(&self, off: u64, len: u64, how: crate::FallocMode) -> Result<()> {
        if !(self.opts.write || self.opts.append) {
            return Err(Error::Io { context: "fallocate".into(), source: io::Error::from_raw_os_error(libc::EBADF) });
        }
        self.fs.fallocate_node(&self.node, off, len, how)
    }

    /// lseek(SEEK_DATA) from `off` (ENXIO at or past EOF).
    pub fn seek_data(&self, off: u64) -> Result<u64> {
        self.fs.seek_data_node(&self.node, off)
    }

    /// lseek(SEEK_HOLE) from `off` (EOF counts as a hole; ENXIO at or past EOF).
    pub fn seek_hole(&self, off: u64) -> Result<u64> {
        self.fs.seek_hole_node(&self.node, off)
    }

    /// The file's extents, in bytes.
    pub fn extents(&self) -> Result<Vec<crate::ExtentInfo>> {
        self.fs.extents_node(&self.node)
    }

    /// truncate(2): sets the size to `size` bytes, freeing blocks past it or extending with a
    /// hole.
    pub fn set_len(&self, size: u64) -> Result<()> {
        self.fs.truncate_node(&self.node, size)
    }

    /// fstat(2).
    pub fn metadata(&self) -> Result<Stat> {
        self.fs.getattr_node(&self.node)
    }

    /// fsync(2): durable across power loss too, stores through the file's mappings included.
    pub fn sync_all(&self) -> Result<()> {
        self.fs.fsync(self.ino)
    }

    /// mmap(2) of `[off, off+len)` (`off` page-aligned; `len` rounded up to pages). Pages are
    /// the device's own: loads and stores reach the medium with no copy (see [`crate::Mapping`]).
    /// A shared writable mapping needs the file open for writing (EACCES otherwise).
    pub fn mmap(&self, off: u64, len: u64, prot: crate::Prot, share: crate::Share) -> Result<crate::Mapping> {
        if !self.opts.read {
            return Err(Error::AccessDenied("mmap needs the file open for reading"));
        }
        if prot == crate::Prot::ReadWrite && share == crate::Share::Shared && !self.opts.write {
            return Err(Error::AccessDenied("a shared writable mapping needs the file open for writing"));
        }
        self.fs.mmap_node(&self.node, off, len, prot, share)
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // A failure here (the device went away) cannot be reported; the orphan is freed at the
        // next mount instead.
        let _ = self.fs.release_node(&self.node);
    }
}

impl io::Read for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Write for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.write_at(buf, self.pos)?;
        self.pos = if self.opts.append { self.metadata()?.size } else { self.pos + n as u64 };
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for File {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let base = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            io::SeekFrom::End(d) => self.metadata()?.size.checked_add_signed(d),
        };
        self.pos = base.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(self.pos)
    }
}
