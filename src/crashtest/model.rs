//! An independent model of what each workload [`Step`] does, by POSIX and Linux rules, to
//! cross-check the states the explorer captures: its oracle judges crash images against states
//! read from udax itself, so a step udax gets wrong in the running file system would pass there
//! unseen.
//!
//! Written from the rules, not from udax's code (only the workload's byte pattern is shared):
//! path resolution with symbolic links, each call's errors, rename's modes, link counts,
//! sizes, holes reading zero, fallocate's modes, mapped stores and extended attributes. Not
//! modeled: times, inode numbers, directory sizes (a file system's own), permission checks
//! (the caller's, as the VFS makes them before a file system is asked; the model acts with
//! every privilege), running out of space or inodes, and link-count limits. The one limit it
//! does model is the documented one of udax's attributes: all of a file's fit in one block.

use std::collections::{BTreeMap, BTreeSet};

use super::state::FsState;
use super::workload::{bytes, Step};
use crate::{FallocMode, RenameMode};

use libc::{
    EBUSY, EEXIST, EINVAL, EISDIR, ELOOP, ENODATA, ENOENT, ENOSPC, ENOTDIR, ENOTEMPTY, EOPNOTSUPP, EPERM, ESPIPE,
};

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFIFO: u32 = 0o010000;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
/// Symbolic links one path resolution follows at most (Linux's MAXSYMLINKS).
const MAX_SYMLINKS: u32 = 40;
/// The root directory's index.
const ROOT: usize = 0;

/// One file of the model; `entries` and `parent` are a directory's, `target` a symbolic link's,
/// `data` a regular file's.
#[derive(Debug, Clone, Default)]
struct Inode {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    target: String,
    /// Values in hex, as [`FsState`] keeps them.
    xattrs: BTreeMap<String, String>,
    data: Vec<u8>,
    entries: BTreeMap<String, usize>,
    parent: usize,
}

impl Inode {
    fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// The tree a workload acts on, as POSIX says each step leaves it.
#[derive(Debug, Clone)]
pub struct Model {
    /// Every file ever made, by index; one no name reaches any more is simply left behind.
    inodes: Vec<Inode>,
    /// Owner of what steps create: the process's effective ids, as udax's path calls use them.
    uid: u32,
    gid: u32,
}

impl Model {
    /// The model of a tree captured from a file system (the prepared tree the workload starts from).
    pub fn from_state(st: &FsState) -> Model {
        let who = crate::Creds::current();
        let mut m = Model { inodes: Vec::new(), uid: who.uid, gid: who.gid };
        let mut by_ino: BTreeMap<u64, usize> = BTreeMap::new();
        // Paths in order: "/" first, each directory before what it holds.
        for (path, s) in &st.shape {
            let id = *by_ino.entry(s.ino).or_insert_with(|| {
                m.inodes.push(Inode {
                    mode: s.mode,
                    uid: s.uid,
                    gid: s.gid,
                    rdev: s.rdev,
                    target: s.target.clone().unwrap_or_default(),
                    xattrs: s.xattrs.clone(),
                    data: st.payload.get(&s.ino).map(|p| p.data.clone()).unwrap_or_default(),
                    ..Default::default()
                });
                m.inodes.len() - 1
            });
            if let Some((dir, name)) = path.rsplit_once('/').filter(|_| path != "/") {
                let dir = if dir.is_empty() { "/" } else { dir };
                let parent = by_ino[&st.shape[dir].ino];
                m.inodes[parent].entries.insert(name.to_string(), id);
                m.inodes[id].parent = parent;
            }
        }
        m
    }

    /// Applies `step` as POSIX would; returns the errno it predicts (Ok(()) for success).
    /// Step::Remount changes nothing.
    pub fn apply(&mut self, step: &Step, block_size: u64) -> Result<(), i32> {
        match step {
            Step::Create(p) => self.make(p, S_IFREG | 0o644, ""),
            Step::Mkdir(p) => self.make(p, S_IFDIR | 0o755, ""),
            Step::Mkfifo(p) => self.make(p, S_IFIFO | 0o644, ""),
            Step::Symlink { target, link } => self.make(link, S_IFLNK | 0o777, target),
            Step::Write { path, off, len, seed } => {
                // pwrite(2) on a FIFO is ESPIPE: a pipe has no offsets.
                let f = self.regular(path, ESPIPE)?;
                store(&mut self.inodes[f].data, *off, &bytes(*seed, *off, *len));
                Ok(())
            }
            Step::Truncate { path, size } => {
                let f = self.regular(path, EINVAL)?;
                self.inodes[f].data.resize(*size as usize, 0);
                Ok(())
            }
            Step::Falloc { path, off, len, mode } => self.fallocate(path, *off, *len, *mode),
            Step::Rename { from, to, mode } => self.rename(from, to, *mode),
            Step::Link { from, to } => {
                // link(2) names what the old path's last component is, a symbolic link included.
                let src = self.resolve(from, false)?;
                let (dir, name) = self.parent(to)?;
                if is_dot(name) || self.inodes[dir].entries.contains_key(name) {
                    return Err(EEXIST);
                }
                if self.inodes[src].kind() == S_IFDIR {
                    return Err(EPERM);
                }
                self.inodes[dir].entries.insert(name.to_string(), src);
                Ok(())
            }
            Step::Unlink(p) => self.remove(p, false),
            Step::Rmdir(p) => self.remove(p, true),
            Step::Chmod { path, mode } => {
                // The step's call does not follow a last symbolic link: the link's own mode
                // changes, as BSD's lchmod(2) does (Linux's chmod(2) follows the link, and its
                // fchmodat(2) with AT_SYMLINK_NOFOLLOW refuses a link with EOPNOTSUPP).
                let f = self.resolve(path, false)?;
                let n = &mut self.inodes[f];
                n.mode = n.kind() | (mode & 0o7777);
                Ok(())
            }
            Step::Chown { path, uid, gid } => {
                let f = self.resolve(path, false)?;
                let n = &mut self.inodes[f];
                (n.uid, n.gid) = (*uid, *gid);
                // chown(2) of a non-directory drops set-user-ID, and set-group-ID when the file
                // is group-executable (without group execute, the bit means mandatory locking).
                if n.kind() != S_IFDIR {
                    let sgid = n.mode & (S_ISGID | 0o010) == S_ISGID | 0o010;
                    n.mode &= !(S_ISUID | if sgid { S_ISGID } else { 0 });
                }
                Ok(())
            }
            Step::Utimes { path, .. } => self.resolve(path, false).map(drop),
            Step::SetXattr { path, name, len, seed } => {
                let f = self.xattr_target(path, name)?;
                let mut all = self.inodes[f].xattrs.clone();
                all.insert(name.clone(), hex(&bytes(*seed, 0, *len)));
                // Everything a file's attributes take fits in one block: a 16-byte header, then
                // per attribute 4 bytes, name and value, padded to 4 (ext4's rule, udax's sizes).
                let need: u64 = 16
                    + all
                        .iter()
                        .map(|(n, v)| (4 + n.len() as u64 + v.len() as u64 / 2).next_multiple_of(4))
                        .sum::<u64>();
                if need > block_size {
                    return Err(ENOSPC);
                }
                self.inodes[f].xattrs = all;
                Ok(())
            }
            Step::RemoveXattr { path, name } => {
                let f = self.xattr_target(path, name)?;
                self.inodes[f].xattrs.remove(name).map(drop).ok_or(ENODATA)
            }
            Step::MapStore { path, off, len, seed } => {
                // A FIFO opens read-write and has size 0: the store is past its end.
                let f = self.open_rw(path)?;
                let n = &mut self.inodes[f];
                let size = if n.kind() == S_IFREG { n.data.len() as u64 } else { 0 };
                if off + len > size {
                    return Err(EINVAL);
                }
                store(&mut n.data, *off, &bytes(*seed, *off, *len));
                Ok(())
            }
            Step::Remount => Ok(()),
        }
    }

    /// Applies `step` (a remount changes nothing) and compares with what the file system
    /// answered (`got`: an errno) and showed after it: the first difference, if any.
    pub fn disagrees(&mut self, step: &Step, block_size: u64, got: Result<(), i32>, after: &FsState) -> Option<String> {
        let want = if *step == Step::Remount { Ok(()) } else { self.apply(step, block_size) };
        let errno = |r: Result<(), i32>| {
            r.map_or_else(|e| std::io::Error::from_raw_os_error(e).to_string(), |()| "success".into())
        };
        if got != want {
            return Some(format!("the file system answered {}, the model {}", errno(got), errno(want)));
        }
        self.check(after).err().map(|e| format!("the file system's state differs from the model's: {e}"))
    }

    /// Compares a captured state with the model: every path's kind and mode, uid, gid, nlink,
    /// size (but a directory's), rdev, symbolic link target, attributes, a regular file's bytes,
    /// and hard-link identity (two paths share an inode number in `st` iff they are one file in
    /// the model). Not times, nor the inode numbers themselves. Err names the first difference.
    pub fn check(&self, st: &FsState) -> Result<(), String> {
        // Every path of the model, and how many names each file has.
        let (mut paths, mut names) = (BTreeMap::new(), BTreeMap::<usize, usize>::new());
        let mut stack = vec![(String::from("/"), ROOT)];
        while let Some((path, id)) = stack.pop() {
            for (name, &c) in &self.inodes[id].entries {
                stack.push((format!("{}/{name}", path.trim_end_matches('/')), c));
            }
            *names.entry(id).or_default() += 1;
            paths.insert(path, id);
        }
        let mut ino_of: BTreeMap<usize, (u64, &str)> = BTreeMap::new();
        let mut file_of: BTreeMap<u64, (usize, &str)> = BTreeMap::new();
        for path in paths.keys().chain(st.shape.keys()).collect::<BTreeSet<_>>() {
            let (id, got) = match (paths.get(path), st.shape.get(path)) {
                (Some(&id), Some(got)) => (id, got),
                (Some(_), None) => return Err(format!("{path}: missing (the model has it)")),
                _ => return Err(format!("{path}: extra (the model has no such path)")),
            };
            let (ino, first) = *ino_of.entry(id).or_insert((got.ino, path));
            if ino != got.ino {
                return Err(format!("{path}: inode {} is not {first}'s ({ino}), the same file in the model", got.ino));
            }
            let (file, first) = *file_of.entry(got.ino).or_insert((id, path));
            if file != id {
                return Err(format!("{path}: shares inode {} with {first}, another file in the model", got.ino));
            }
            let n = &self.inodes[id];
            let nlink = match n.kind() {
                S_IFDIR => 2 + n.entries.values().filter(|&&c| self.inodes[c].kind() == S_IFDIR).count(),
                _ => names[&id],
            };
            let size = match n.kind() {
                S_IFREG => n.data.len() as u64,
                S_IFLNK => n.target.len() as u64,
                S_IFDIR => got.size,
                _ => 0,
            };
            let target = (n.kind() == S_IFLNK).then_some(&n.target);
            let fields = [
                ("mode", format!("{:o}", n.mode), format!("{:o}", got.mode)),
                ("uid", n.uid.to_string(), got.uid.to_string()),
                ("gid", n.gid.to_string(), got.gid.to_string()),
                ("nlink", nlink.to_string(), got.nlink.to_string()),
                ("size", size.to_string(), got.size.to_string()),
                ("rdev", n.rdev.to_string(), got.rdev.to_string()),
                ("target", format!("{target:?}"), format!("{:?}", got.target.as_ref())),
                ("xattrs", format!("{:?}", n.xattrs), format!("{:?}", got.xattrs)),
            ];
            if let Some((field, model, got)) = fields.into_iter().find(|(_, m, g)| m != g) {
                return Err(format!("{path}: {field}: model {model}, got {got}"));
            }
            let data = st.payload.get(&got.ino).map_or(&[][..], |p| &p.data);
            if let Some(i) = (0..n.data.len().max(data.len())).find(|&i| n.data.get(i) != data.get(i)) {
                let show = |b: Option<&u8>| b.map_or("none".into(), |b| format!("{b:#04x}"));
                return Err(format!("{path}: byte {i}: model {}, got {}", show(n.data.get(i)), show(data.get(i))));
            }
        }
        Ok(())
    }

    /// Resolves `path` (absolute or from the root) as [`Model::walk`] does.
    fn resolve(&self, path: &str, follow: bool) -> Result<usize, i32> {
        let mut budget = MAX_SYMLINKS;
        self.walk(ROOT, path, follow, &mut budget)
    }

    /// Resolves `path` from directory `start`, following symbolic links in every component
    /// and, with `follow`, in the last; relative link targets resolve from the link's directory.
    fn walk(&self, start: usize, path: &str, follow: bool, budget: &mut u32) -> Result<usize, i32> {
        let mut at = if path.starts_with('/') { ROOT } else { start };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let dir = at;
            at = self.lookup(dir, part)?;
            if (i + 1 < parts.len() || follow) && self.inodes[at].kind() == S_IFLNK {
                if *budget == 0 {
                    return Err(ELOOP);
                }
                *budget -= 1;
                at = self.walk(dir, &self.inodes[at].target, true, budget)?;
            }
        }
        if path.ends_with('/') && self.inodes[at].kind() != S_IFDIR {
            return Err(ENOTDIR);
        }
        Ok(at)
    }

    /// `name` in directory `dir` ("." and ".." included).
    fn lookup(&self, dir: usize, name: &str) -> Result<usize, i32> {
        let d = &self.inodes[dir];
        if d.kind() != S_IFDIR {
            return Err(ENOTDIR);
        }
        match name {
            "." => Ok(dir),
            ".." => Ok(d.parent),
            _ => d.entries.get(name).copied().ok_or(ENOENT),
        }
    }

    /// The directory holding `path`'s last component, and that component ("/" for the root).
    fn parent<'p>(&self, path: &'p str) -> Result<(usize, &'p str), i32> {
        let trimmed = path.trim_end_matches('/');
        let (dir, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
        let dir = self.resolve(dir, true)?;
        if self.inodes[dir].kind() != S_IFDIR {
            return Err(ENOTDIR);
        }
        Ok((dir, if name.is_empty() { "/" } else { name }))
    }

    /// open(2) read-write, following a last symbolic link: a directory is EISDIR.
    fn open_rw(&self, path: &str) -> Result<usize, i32> {
        let f = self.resolve(path, true)?;
        if self.inodes[f].kind() == S_IFDIR {
            return Err(EISDIR);
        }
        Ok(f)
    }

    /// [`Model::open_rw`], then `other` for anything but a regular file.
    fn regular(&self, path: &str, other: i32) -> Result<usize, i32> {
        let f = self.open_rw(path)?;
        if self.inodes[f].kind() != S_IFREG {
            return Err(other);
        }
        Ok(f)
    }

    /// Creates `path` (not following a last symbolic link: any name there, "." and ".."
    /// included, is EEXIST, for mkdir, mknod, symlink and an O_CREAT|O_EXCL open alike), owned
    /// by the process; a set-group-ID directory gives its group, and a new directory its bit.
    fn make(&mut self, path: &str, mode: u32, target: &str) -> Result<(), i32> {
        let (dir, name) = self.parent(path)?;
        let d = &self.inodes[dir];
        if is_dot(name) || d.entries.contains_key(name) {
            return Err(EEXIST);
        }
        let (mut mode, mut gid) = (mode, self.gid);
        if d.mode & S_ISGID != 0 {
            gid = d.gid;
            if mode & S_IFMT == S_IFDIR {
                mode |= S_ISGID;
            }
        }
        let n = Inode { mode, uid: self.uid, gid, target: target.to_string(), parent: dir, ..Default::default() };
        self.inodes.push(n);
        let id = self.inodes.len() - 1;
        self.inodes[dir].entries.insert(name.to_string(), id);
        Ok(())
    }

    /// unlink(2) (EISDIR for a directory, as Linux answers), or rmdir(2) with `dir`.
    fn remove(&mut self, path: &str, dir: bool) -> Result<(), i32> {
        let (p, name) = self.parent(path)?;
        match (dir, name) {
            (false, _) if is_dot(name) => return Err(EISDIR),
            (true, "/") => return Err(EBUSY),
            (true, ".") => return Err(EINVAL),
            (true, "..") => return Err(ENOTEMPTY),
            _ => {}
        }
        let c = &self.inodes[self.lookup(p, name)?];
        match (dir, c.kind() == S_IFDIR) {
            (false, true) => return Err(EISDIR),
            (true, false) => return Err(ENOTDIR),
            (true, true) if !c.entries.is_empty() => return Err(ENOTEMPTY),
            _ => {}
        }
        self.inodes[p].entries.remove(name);
        Ok(())
    }

    /// fallocate(2) on a file opened read-write.
    fn fallocate(&mut self, path: &str, off: u64, len: u64, mode: FallocMode) -> Result<(), i32> {
        let f = self.open_rw(path)?;
        if len == 0 {
            return Err(EINVAL);
        }
        if self.inodes[f].kind() == S_IFIFO {
            return Err(ESPIPE);
        }
        if self.inodes[f].kind() != S_IFREG {
            return Err(libc::ENODEV);
        }
        let data = &mut self.inodes[f].data;
        let end = (off + len) as usize;
        let (grow, zero) = match mode {
            FallocMode::Allocate { keep_size } => (!keep_size, false),
            FallocMode::PunchHole => (false, true),
            FallocMode::ZeroRange { keep_size } => (!keep_size, true),
        };
        if grow && end > data.len() {
            data.resize(end, 0);
        }
        if zero {
            let to = end.min(data.len());
            data[(off as usize).min(to)..to].fill(0);
        }
        Ok(())
    }

    /// renameat2(2) with the flags `how` stands for, checked in Linux's order.
    fn rename(&mut self, from: &str, to: &str, how: RenameMode) -> Result<(), i32> {
        let (sp, sn) = self.parent(from)?;
        let (dp, dn) = self.parent(to)?;
        // The root is busy; "." or ".." as either last component is EINVAL, as POSIX says
        // (Linux says EBUSY, or EEXIST for a NOREPLACE target).
        if is_dot(sn) || is_dot(dn) {
            return Err(if sn == "/" || dn == "/" { EBUSY } else { EINVAL });
        }
        let src = self.lookup(sp, sn)?;
        let dst = self.inodes[dp].entries.get(dn).copied();
        match (how, dst) {
            (RenameMode::NoReplace, Some(_)) => return Err(EEXIST),
            (RenameMode::Exchange, None) => return Err(ENOENT),
            _ => {}
        }
        let is_dir = |id: usize| self.inodes[id].kind() == S_IFDIR;
        // A directory cannot move under itself, and a target that holds the source is not empty.
        if is_dir(src) && self.within(dp, src) {
            return Err(EINVAL);
        }
        if dst.is_some_and(|d| is_dir(d) && self.within(sp, d)) {
            return Err(if how == RenameMode::Exchange { EINVAL } else { ENOTEMPTY });
        }
        // Two names of one file: nothing to do.
        if dst == Some(src) {
            return Ok(());
        }
        if let (Some(d), false) = (dst, how == RenameMode::Exchange) {
            match (is_dir(src), is_dir(d)) {
                (true, false) => return Err(ENOTDIR),
                (false, true) => return Err(EISDIR),
                (true, true) if !self.inodes[d].entries.is_empty() => return Err(ENOTEMPTY),
                _ => {}
            }
        }
        match dst.filter(|_| how == RenameMode::Exchange) {
            Some(d) => {
                self.inodes[sp].entries.insert(sn.to_string(), d);
                self.inodes[d].parent = sp;
            }
            None => {
                self.inodes[sp].entries.remove(sn);
            }
        }
        self.inodes[dp].entries.insert(dn.to_string(), src);
        self.inodes[src].parent = dp;
        Ok(())
    }

    /// Whether directory `a` is `b` or lies under it.
    fn within(&self, mut a: usize, b: usize) -> bool {
        loop {
            if a == b {
                return true;
            }
            if a == ROOT {
                return false;
            }
            a = self.inodes[a].parent;
        }
    }

    /// The file `path` names without following a last symbolic link, if attribute `name` may
    /// be there: `user.` attributes belong to regular files and directories only (EPERM), and
    /// namespaces other than `user.`, `trusted.` and `security.` are not supported.
    fn xattr_target(&self, path: &str, name: &str) -> Result<usize, i32> {
        let f = self.resolve(path, false)?;
        if name.starts_with("user.") && ![S_IFREG, S_IFDIR].contains(&self.inodes[f].kind()) {
            return Err(EPERM);
        }
        if !["user.", "trusted.", "security."].iter().any(|p| name.starts_with(p)) {
            return Err(EOPNOTSUPP);
        }
        Ok(f)
    }
}

/// "." and "..", and "/" that [`Model::parent`] gives for the root: names that cannot be made
/// or removed.
fn is_dot(name: &str) -> bool {
    matches!(name, "." | ".." | "/")
}

/// Stores `b` at `off` in `data`, growing it (a gap reads zero).
fn store(data: &mut Vec<u8>, off: u64, b: &[u8]) {
    if b.is_empty() {
        return;
    }
    let end = off as usize + b.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[off as usize..end].copy_from_slice(b);
}

/// Bytes in lowercase hex, as [`FsState`] keeps attribute values.
fn hex(b: &[u8]) -> String {
    b.iter().map(|v| format!("{v:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crashtest::{prepare_image, workload};
    use crate::{Device, Fs};

    /// A fresh copy of a prepared image, mounted, as the explorer starts each sequence.
    fn mount(img: &[u8]) -> Fs {
        let dev = Device::anonymous(img.len() as u64).unwrap();
        dev.write(0, img).unwrap();
        dev.fence();
        Fs::mount(dev).unwrap()
    }

    fn show(r: Result<(), i32>) -> String {
        r.map_or_else(|e| std::io::Error::from_raw_os_error(e).to_string(), |()| "success".into())
    }

    /// Runs `steps` on udax, from a fresh copy of `img`, and on the model: the same result and
    /// the same tree after each.
    fn cross_check(img: &[u8], bs: u64, steps: &[Step]) -> Result<(), String> {
        let mut fs = mount(img);
        let mut model = Model::from_state(&FsState::capture(&fs)?);
        for (k, step) in steps.iter().enumerate() {
            let got = if *step == Step::Remount {
                fs = Fs::mount(fs.unmount().unwrap().unwrap()).unwrap();
                Ok(())
            } else {
                step.apply(&fs).map_err(|e| e.errno())
            };
            let want = model.apply(step, bs);
            let what = format!("step {k} ({}) at block size {bs}", step.describe());
            if got != want {
                return Err(format!("{what}: udax says {}, the model {}", show(got), show(want)));
            }
            model.check(&FsState::capture(&fs)?).map_err(|e| format!("after {what}: {e}"))?;
        }
        Ok(())
    }

    fn each_block_size(f: impl Fn(&[u8], u64)) {
        for bs in [1024u32, 4096] {
            let (img, _) = prepare_image(bs, 64 << 10).unwrap();
            f(&img, u64::from(bs));
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "whole workloads on a mapped device: too slow, and miri maps no files")]
    fn model_agrees_with_udax_on_every_seq1_step() {
        each_block_size(|img, bs| {
            for step in workload::seq1(bs) {
                cross_check(img, bs, &[step]).unwrap();
            }
        });
    }

    #[test]
    #[cfg_attr(miri, ignore = "whole workloads on a mapped device: too slow, and miri maps no files")]
    fn model_agrees_with_udax_on_every_seq2_pair() {
        each_block_size(|img, bs| {
            for pair in workload::seq2(bs) {
                cross_check(img, bs, &pair).unwrap();
            }
        });
    }

    #[test]
    #[cfg_attr(miri, ignore = "whole workloads on a mapped device: too slow, and miri maps no files")]
    fn model_agrees_with_udax_on_random_workloads() {
        each_block_size(|img, bs| {
            for seed in 1..=4 {
                cross_check(img, bs, &workload::random(bs, seed, 300)).unwrap();
            }
        });
    }

    fn s(p: &str) -> String {
        p.to_string()
    }

    fn ren(from: &str, to: &str, mode: RenameMode) -> Step {
        Step::Rename { from: s(from), to: s(to), mode }
    }

    fn sym(target: &str, link: &str) -> Step {
        Step::Symlink { target: s(target), link: s(link) }
    }

    fn setx(path: &str, name: &str, len: u64) -> Step {
        Step::SetXattr { path: s(path), name: s(name), len, seed: 6 }
    }

    /// Sequences for the errors and corners the workloads rarely or never reach, on the
    /// prepared tree (`/a`, `/b`, `/d/c` linked as `/h`, `/d/e`, `/s` -> `a`, FIFO `/q`).
    fn corners() -> Vec<Vec<Step>> {
        use FallocMode::*;
        use RenameMode::*;
        let link = |a: &str, b: &str| Step::Link { from: s(a), to: s(b) };
        let write = |p: &str| Step::Write { path: s(p), off: 10, len: 20, seed: 5 };
        let falloc = |p: &str, len, mode| Step::Falloc { path: s(p), off: 0, len, mode };
        let chmod = |p: &str, mode| Step::Chmod { path: s(p), mode };
        let chown = |p: &str, uid, gid| Step::Chown { path: s(p), uid, gid };
        let store = |p: &str| Step::MapStore { path: s(p), off: 0, len: 1, seed: 1 };
        vec![
            vec![ren("/d", "/d/e/x", Replace), ren("/d", "/d/x", NoReplace), ren("/d/e", "/d", Replace)],
            vec![ren("/d/e", "/d", Exchange), ren("/a", "/d", Replace), ren("/d/e", "/a", Replace)],
            vec![Step::Mkdir(s("/m")), ren("/m", "/d", Replace), ren("/m", "/d/e", Replace), ren("/d", "/m", Replace)],
            vec![ren("/d/c", "/h", Replace), ren("/d/c", "/h", NoReplace), ren("/h", "/d/c", Exchange)],
            vec![ren("/a", "/a", Replace), ren("/a", "/a", Exchange), ren("/d/.", "/x", Replace)],
            vec![ren("/a", "/d/..", Replace), ren("/a", "/.", NoReplace), ren("/d/e", "/a", Exchange)],
            vec![ren("/a", "/d/e", Exchange), ren("/s", "/d/s2", Replace), ren("/q", "/d/e", Replace)],
            vec![
                ren("/x", "/y", Replace),
                ren("/a", "/x/y", Replace),
                ren("/a", "/b/y", Replace),
                ren("/a", "/x", Exchange),
            ],
            vec![ren("/d/e", "/q", Exchange), ren("/s", "/a", Replace), ren("/d", "/b", Exchange)],
            vec![link("/d", "/x"), link("/d", "/a"), link("/s", "/t"), link("/x", "/y"), link("/a", "/x/y")],
            vec![link("/q", "/d/q2"), link("/d/c", "/d/e/c"), link("/s/", "/t")],
            vec![Step::Unlink(s("/d")), Step::Unlink(s("/x")), Step::Unlink(s("/a/x")), Step::Unlink(s("/s"))],
            vec![Step::Rmdir(s("/a")), Step::Rmdir(s("/d")), Step::Rmdir(s("/d/e/.")), Step::Rmdir(s("/d/.."))],
            vec![Step::Rmdir(s("/s")), Step::Rmdir(s("/q")), Step::Rmdir(s("/x")), Step::Rmdir(s("/d/e"))],
            vec![write("/d"), Step::Truncate { path: s("/q"), size: 5 }, Step::Truncate { path: s("/d"), size: 5 }],
            vec![falloc("/d", 10, PunchHole), falloc("/a", 0, Allocate { keep_size: false }), store("/q"), store("/d")],
            vec![
                falloc("/s", 10 << 10, Allocate { keep_size: false }),
                falloc("/b", 1 << 10, ZeroRange { keep_size: true }),
            ],
            vec![write("/s"), write("/d/c/x"), write("/x"), write("/s/"), write("/d/e/")],
            vec![sym("/d/c", "/t"), write("/t"), sym("e/../c", "/d/u"), write("/d/u"), sym("../a", "/d/e/v")],
            vec![
                sym("../../a", "/d/e/v"),
                write("/d/e/v"),
                sym("/d/e/v", "/w"),
                falloc("/w", 100, ZeroRange { keep_size: false }),
            ],
            vec![sym("/l2", "/l1"), sym("/l1", "/l2"), write("/l1"), Step::Mkdir(s("/l1")), Step::Unlink(s("/l1"))],
            vec![sym("/l", "/l"), Step::Create(s("/l/x")), sym("/nowhere", "/g"), write("/g"), Step::Create(s("/g"))],
            vec![sym("/a/x", "/g"), Step::Truncate { path: s("/g"), size: 3 }, sym("d", "/k"), Step::Create(s("/k/n"))],
            vec![chmod("/s", 0o600), chmod("/x", 0o600), chown("/s", 7, 8), chown("/a", 1000, 1000)],
            vec![Step::Utimes { path: s("/x"), sec: 5 }, Step::Utimes { path: s("/d/c/x"), sec: 5 }],
            vec![chmod("/d", 0o2755), chown("/d", 0, 1000), Step::Mkdir(s("/d/m")), Step::Create(s("/d/n"))],
            vec![Step::Mkfifo(s("/d/f")), sym("x", "/d/y"), Step::Chmod { path: s("/d/e"), mode: 0o700 }],
            vec![
                setx("/q", "user.x", 3),
                setx("/s", "user.x", 3),
                setx("/s", "trusted.x", 3),
                setx("/a", "other.x", 3),
            ],
            vec![setx("/a", "system.posix_acl_access", 3), setx("/a", "user.z", 0), setx("/a", "user.big", 4096)],
            vec![setx("/b", "user.n", 1000), setx("/b", "user.m", 0), setx("/b", "user.n", 1002)],
            vec![Step::RemoveXattr { path: s("/a"), name: s("user.zz") }, setx("/d/e", "security.k", 9)],
            vec![
                Step::RemoveXattr { path: s("/q"), name: s("user.p") },
                Step::RemoveXattr { path: s("/x"), name: s("user.p") },
            ],
            vec![Step::Mkdir(s("/a")), Step::Mkdir(s("/s")), Step::Mkfifo(s("/d/e/f")), Step::Create(s("/d/c/x"))],
            vec![Step::Create(s("/x/y")), Step::Create(s("/d/.")), Step::Mkdir(s("/m/")), Step::Create(s("/s"))],
            vec![Step::Mkdir(s("/d/e/m")), ren("/d/e", "/d/e/m/x", Replace), ren("/d", "/d/e/m", Exchange)],
            vec![Step::Remount, Step::Unlink(s("/d/c")), Step::Remount, Step::Unlink(s("/h"))],
        ]
    }

    #[test]
    #[cfg_attr(miri, ignore = "whole workloads on a mapped device: too slow, and miri maps no files")]
    fn model_agrees_with_udax_on_corner_cases() {
        each_block_size(|img, bs| {
            for steps in corners() {
                cross_check(img, bs, &steps).unwrap();
            }
        });
    }

    /// Corners where udax once answered otherwise than Linux (each answer checked on Linux 6.18,
    /// ext4): the model found them.
    #[test]
    #[cfg_attr(miri, ignore = "whole workloads on a mapped device: too slow, and miri maps no files")]
    fn udax_answers_as_linux_does() {
        let cases = [
            // pwrite(2) on a FIFO is ESPIPE; udax stored the bytes in the FIFO, which grew.
            vec![Step::Write { path: s("/q"), off: 10, len: 20, seed: 5 }],
            // fallocate(2) on a FIFO is ESPIPE; udax said EINVAL.
            vec![Step::Falloc { path: s("/q"), off: 0, len: 10, mode: FallocMode::PunchHole }],
            // O_CREAT|O_EXCL on a symbolic link is EEXIST, wherever it leads; udax followed it.
            vec![sym("/l", "/l"), Step::Create(s("/l"))],
            vec![sym("/a/x", "/g"), Step::Create(s("/g"))],
            // RENAME_NOREPLACE onto the source's own name is EEXIST; udax did nothing.
            vec![ren("/a", "/a", RenameMode::NoReplace)],
        ];
        let (img, _) = prepare_image(4096, 64 << 10).unwrap();
        let failed: Vec<String> = cases.iter().filter_map(|c| cross_check(&img, 4096, c).err()).collect();
        assert!(failed.is_empty(), "{} differences:\n{}", failed.len(), failed.join("\n"));
    }

    /// The checker is no rubber stamp: a model that ran another step, and captured states with
    /// one thing changed, are each reported, at the right path and field.
    #[test]
    #[cfg_attr(miri, ignore = "whole workloads on a mapped device: too slow, and miri maps no files")]
    fn check_reports_planted_differences() {
        let (img, _) = prepare_image(4096, 64 << 10).unwrap();
        let fs = mount(&img);
        let base = FsState::capture(&fs).unwrap();
        let model = Model::from_state(&base);
        model.check(&base).unwrap();
        // udax and the model run different steps.
        let write = |seed| Step::Write { path: s("/a"), off: 10, len: 5, seed };
        let mut other = model.clone();
        write(9).apply(&fs).unwrap();
        other.apply(&write(8), 4096).unwrap();
        let err = other.check(&FsState::capture(&fs).unwrap()).unwrap_err();
        assert!(err.starts_with("/a: byte 10: model"), "{err}");
        let mut other = model.clone();
        other.apply(&Step::Unlink(s("/h")), 4096).unwrap();
        assert_eq!(other.check(&base).unwrap_err(), "/d/c: nlink: model 1, got 2");
        // One thing changed in a captured state.
        let planted = |what: &str, change: &dyn Fn(&mut FsState)| {
            let mut st = base.clone();
            change(&mut st);
            let err = model.check(&st).unwrap_err();
            assert!(err.starts_with(what), "{what}: {err}");
        };
        let ino = |st: &FsState, p: &str| st.shape[p].ino;
        planted("/d/c: byte 7: model", &|st| st.payload.get_mut(&ino(st, "/d/c")).unwrap().data[7] ^= 1);
        planted("/d/e: nlink: model 2, got 3", &|st| st.shape.get_mut("/d/e").unwrap().nlink += 1);
        planted("/s: mode: model 120777, got 120755", &|st| st.shape.get_mut("/s").unwrap().mode = 0o120755);
        planted("/s: target: model Some(\"a\"), got Some(\"b\")", &|st| {
            st.shape.get_mut("/s").unwrap().target = Some(s("b"));
        });
        planted("/a: xattrs", &|st| {
            st.shape.get_mut("/a").unwrap().xattrs.insert(s("user.p"), s("00")).map(drop).unwrap()
        });
        planted("/b: size: model", &|st| st.shape.get_mut("/b").unwrap().size += 1);
        planted("/q: missing", &|st| st.shape.remove("/q").map(drop).unwrap());
        planted("/zz: extra", &|st| {
            let b = st.shape["/b"].clone();
            st.shape.insert(s("/zz"), b);
        });
        planted("/h: inode", &|st| st.shape.get_mut("/h").unwrap().ino = 999);
        planted("/b: shares inode", &|st| {
            let a = ino(st, "/a");
            st.shape.get_mut("/b").unwrap().ino = a;
        });
    }
}
