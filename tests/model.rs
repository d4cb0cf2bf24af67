//! Model-based test: random operation sequences run against udax and an in-memory model of
//! POSIX semantics, comparing every result (data, errno) and, at each remount, the whole tree
//! (kinds, contents, sizes, modes, link counts, symlink targets, hard-link identity) with fsck
//! clean. Runs for every block size. Files also carry a per-block state (hole, unwritten,
//! written) so fallocate, punch, zero range and SEEK_DATA/SEEK_HOLE are checked exactly, and the
//! extent listing must agree with it. Files are also loaded from and stored to through shared
//! mappings kept across operations (so truncate, punch and writes meet live mappings), and
//! through short-lived private ones whose stores must never reach the file.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use udax::{Device, Error, FallocMode, Fs, Mapping, MkfsOptions, OpenOptions, Prot, SetAttr, Share, PAGE};

/// Length of the shared mapping kept per file (covers every offset the ops use).
const MAP_LEN: u64 = 2 << 20;

const PATHS: &[&str] = &[
    "/a", "/b", "/c", "/d1", "/d2", "/d1/a", "/d1/b", "/d1/d3", "/d1/d3/a", "/d1/d3/b", "/d2/a", "/d2/d1", "/d2/d1/a",
];

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Write { path: usize, off: u64, len: usize, seed: u8 },
    Read { path: usize, off: u64, len: usize },
    Truncate { path: usize, size: u64 },
    Unlink(usize),
    Rename(usize, usize),
    Mkdir(usize),
    Rmdir(usize),
    Link(usize, usize),
    Symlink(usize, u8),
    Chmod(usize, u32),
    Falloc { path: usize, off: u64, len: u64, keep: bool },
    Punch { path: usize, off: u64, len: u64 },
    Zero { path: usize, off: u64, len: u64, keep: bool },
    Seek { path: usize, off: u64, data: bool },
    MapStore { path: usize, off: u64, len: usize, seed: u8 },
    MapLoad { path: usize, off: u64, len: usize },
    Remap(usize),
    PrivateStore { path: usize, off: u64, len: usize, seed: u8 },
    SetXattr { path: usize, name: usize, len: usize, seed: u8, create: bool, replace: bool },
    GetXattr { path: usize, name: usize },
    RemoveXattr { path: usize, name: usize },
    Remount,
}

/// Attribute names the ops use: a few user ones and one each of the other stored namespaces.
const XNAMES: &[&str] = &["user.a", "user.bb", "user.ccc", "trusted.t", "security.s"];

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..20_000, 2 => 0u64..300_000, 1 => 900_000u64..1_100_000]
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        4 => p.clone().prop_map(Op::Create),
        8 => (p.clone(), offset(), 0usize..20_000, any::<u8>()).prop_map(|(path, off, len, seed)| Op::Write { path, off, len, seed }),
        4 => (p.clone(), offset(), 0usize..30_000).prop_map(|(path, off, len)| Op::Read { path, off, len }),
        3 => (p.clone(), offset()).prop_map(|(path, size)| Op::Truncate { path, size }),
        2 => p.clone().prop_map(Op::Unlink),
        3 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        3 => p.clone().prop_map(Op::Mkdir),
        2 => p.clone().prop_map(Op::Rmdir),
        2 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (p.clone(), any::<u8>()).prop_map(|(a, t)| Op::Symlink(a, t)),
        1 => (p.clone(), 0u32..0o7777).prop_map(|(a, m)| Op::Chmod(a, m)),
        2 => (p.clone(), offset(), 0u64..200_000, any::<bool>()).prop_map(|(path, off, len, keep)| Op::Falloc { path, off, len, keep }),
        2 => (p.clone(), offset(), 0u64..100_000).prop_map(|(path, off, len)| Op::Punch { path, off, len }),
        2 => (p.clone(), offset(), 0u64..100_000, any::<bool>()).prop_map(|(path, off, len, keep)| Op::Zero { path, off, len, keep }),
        2 => (p.clone(), offset(), any::<bool>()).prop_map(|(path, off, data)| Op::Seek { path, off, data }),
        4 => (p.clone(), offset(), 0usize..9000, any::<u8>()).prop_map(|(path, off, len, seed)| Op::MapStore { path, off, len, seed }),
        3 => (p.clone(), offset(), 0usize..12_000).prop_map(|(path, off, len)| Op::MapLoad { path, off, len }),
        1 => p.clone().prop_map(Op::Remap),
        1 => (p.clone(), offset(), 0usize..6000, any::<u8>()).prop_map(|(path, off, len, seed)| Op::PrivateStore { path, off, len, seed }),
        3 => (p.clone(), 0..XNAMES.len(), prop_oneof![3 => 0usize..300, 1 => 0usize..2500], any::<u8>(), any::<bool>(), any::<bool>())
            .prop_map(|(path, name, len, seed, create, replace)| Op::SetXattr { path, name, len, seed, create: create && seed % 4 == 0, replace: replace && seed % 4 == 1 }),
        2 => (p.clone(), 0..XNAMES.len()).prop_map(|(path, name)| Op::GetXattr { path, name }),
        1 => (p.clone(), 0..XNAMES.len()).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        1 => Just(Op::Remount),
    ]
}

/// A modelled regular file: its bytes, and each block's state.
#[derive(Debug, Clone, PartialEq, Default)]
struct FileM {
    data: Vec<u8>,
    blocks: Vec<Blk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
enum Blk {
    #[default]
    Hole,
    Unwritten,
    Written,
}

impl FileM {
    fn set(&mut self, from: u64, to: u64, f: impl Fn(Blk) -> Blk) {
        if to > self.blocks.len() as u64 {
            self.blocks.resize(to as usize, Blk::Hole);
        }
        for b in &mut self.blocks[from as usize..to as usize] {
            *b = f(*b);
        }
        while self.blocks.last() == Some(&Blk::Hole) {
            self.blocks.pop();
        }
    }

    fn zero(&mut self, off: u64, end: u64) {
        let e = (end as usize).min(self.data.len());
        if (off as usize) < e {
            self.data[off as usize..e].fill(0);
        }
    }

    fn state(&self, b: u64) -> Blk {
        self.blocks.get(b as usize).copied().unwrap_or(Blk::Hole)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    File(FileM),
    Dir,
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    mode: u32,
    nlink: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// POSIX as udax's path API implements it, over a flat map of absolute paths.
#[derive(Debug, Default)]
struct Model {
    paths: BTreeMap<String, u64>,
    nodes: HashMap<u64, Node>,
    next: u64,
    bs: u64,
}

type R<T> = Result<T, i32>;

fn parent_of(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) => "/",
        Some(i) => &p[..i],
        None => "/",
    }
}

impl Model {
    fn get(&self, p: &str) -> Option<&Node> {
        self.paths.get(p).map(|id| &self.nodes[id])
    }

    /// Resolves the parent directory of `p` (symlinks in this universe dangle: ENOENT).
    fn parent_ok(&self, p: &str) -> R<()> {
        let mut at = String::new();
        let parent = parent_of(p);
        if parent == "/" {
            return Ok(());
        }
        for part in parent[1..].split('/') {
            at.push('/');
            at.push_str(part);
            match self.get(&at).map(|n| &n.kind) {
                None | Some(Kind::Symlink(_)) => return Err(libc::ENOENT),
                Some(Kind::File(_)) => return Err(libc::ENOTDIR),
                Some(Kind::Dir) => {}
            }
        }
        Ok(())
    }

    /// Resolves `p` itself, following a final symlink (which dangles).
    fn lookup(&self, p: &str) -> R<u64> {
        self.parent_ok(p)?;
        match self.paths.get(p) {
            None => Err(libc::ENOENT),
            Some(id) if matches!(self.nodes[id].kind, Kind::Symlink(_)) => Err(libc::ENOENT),
            Some(&id) => Ok(id),
        }
    }

    fn add(&mut self, p: &str, kind: Kind, mut mode: u32) {
        let id = self.next;
        self.next += 1;
        let nlink = if kind == Kind::Dir { 2 } else { 1 };
        // A set-group-ID directory passes the bit on to new directories.
        if kind == Kind::Dir && parent_of(p) != "/" && self.get(parent_of(p)).is_some_and(|n| n.mode & 0o2000 != 0) {
            mode |= 0o2000;
        }
        self.nodes.insert(id, Node { kind, mode, nlink, xattrs: BTreeMap::new() });
        self.paths.insert(p.to_string(), id);
        if self.get(p).is_some_and(|n| n.kind == Kind::Dir) && parent_of(p) != "/" {
            let pid = self.paths[parent_of(p)];
            self.nodes.get_mut(&pid).unwrap().nlink += 1;
        }
    }

    fn children(&self, p: &str) -> Vec<String> {
        let prefix = format!("{p}/");
        self.paths.keys().filter(|k| k.starts_with(&prefix) && !k[prefix.len()..].contains('/')).cloned().collect()
    }

    fn drop_link(&mut self, p: &str) {
        let id = self.paths.remove(p).unwrap();
        let n = self.nodes.get_mut(&id).unwrap();
        if n.kind == Kind::Dir {
            n.nlink = 0;
            if parent_of(p) != "/" {
                let pid = self.paths[parent_of(p)];
                self.nodes.get_mut(&pid).unwrap().nlink -= 1;
            }
        } else {
            n.nlink -= 1;
        }
        if self.nodes[&id].nlink == 0 {
            self.nodes.remove(&id);
        }
    }

    fn create(&mut self, p: &str) -> R<()> {
        self.parent_ok(p)?;
        match self.get(p).map(|n| &n.kind) {
            Some(Kind::Dir) => Err(libc::EISDIR),
            // O_CREAT follows the (dangling) link. Targets here are "target-N/" plus N*3 "seg/":
            // the directory of a longer one never exists; a bare "target-0/" names a file to
            // create with a trailing slash, which is EISDIR.
            Some(Kind::Symlink(t)) if t.as_slice() == b"target-0/" => Err(libc::EISDIR),
            Some(Kind::Symlink(_)) => Err(libc::ENOENT),
            Some(Kind::File(_)) => Ok(()),
            None => {
                self.add(p, Kind::File(FileM::default()), 0o644);
                Ok(())
            }
        }
    }

    fn file_mut(&mut self, p: &str) -> R<&mut FileM> {
        let id = self.lookup(p)?;
        match &mut self.nodes.get_mut(&id).unwrap().kind {
            Kind::File(d) => Ok(d),
            _ => Err(libc::EISDIR),
        }
    }

    fn write(&mut self, p: &str, off: u64, data: &[u8]) -> R<usize> {
        let bs = self.bs;
        let f = self.file_mut(p)?;
        if data.is_empty() {
            return Ok(0);
        }
        let end = off as usize + data.len();
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[off as usize..end].copy_from_slice(data);
        f.set(off / bs, (end as u64).div_ceil(bs), |_| Blk::Written);
        Ok(data.len())
    }

    fn read(&mut self, p: &str, off: u64, len: usize) -> R<Vec<u8>> {
        let d = &self.file_mut(p)?.data;
        let s = (off as usize).min(d.len());
        let e = (off as usize + len).min(d.len());
        Ok(d[s..e].to_vec())
    }

    fn truncate(&mut self, p: &str, size: u64) -> R<()> {
        let bs = self.bs;
        let f = self.file_mut(p)?;
        if size < f.data.len() as u64 {
            let keep = size.div_ceil(bs);
            f.set(keep, keep.max(f.blocks.len() as u64), |_| Blk::Hole);
        }
        f.data.resize(size as usize, 0);
        Ok(())
    }

    fn falloc(&mut self, p: &str, off: u64, len: u64, keep: bool) -> R<()> {
        let bs = self.bs;
        let f = self.file_mut(p)?;
        if len == 0 {
            return Err(libc::EINVAL);
        }
        let end = off + len;
        f.set(off / bs, end.div_ceil(bs), |b| if b == Blk::Hole { Blk::Unwritten } else { b });
        if !keep && f.data.len() < end as usize {
            f.data.resize(end as usize, 0);
        }
        Ok(())
    }

    /// Punch (`to` = hole, never grows) and zero range (`to` = unwritten): the range reads zero,
    /// whole blocks inside it take state `to`, partial ones keep theirs.
    fn clear(&mut self, p: &str, off: u64, len: u64, to: Blk, grow: bool) -> R<()> {
        let bs = self.bs;
        let f = self.file_mut(p)?;
        if len == 0 {
            return Err(libc::EINVAL);
        }
        let end = off + len;
        f.zero(off, end);
        let (ws, we) = (off.div_ceil(bs), end / bs);
        if we > ws {
            f.set(ws, we, |_| to);
        }
        if grow && f.data.len() < end as usize {
            f.data.resize(end as usize, 0);
        }
        Ok(())
    }

    fn seek(&mut self, p: &str, off: u64, data: bool) -> R<u64> {
        let bs = self.bs;
        let f = self.file_mut(p)?;
        let size = f.data.len() as u64;
        if off >= size {
            return Err(libc::ENXIO);
        }
        let hit = (off / bs..size.div_ceil(bs)).find(|&b| (f.state(b) == Blk::Written) == data);
        match (hit.map(|b| (b * bs).max(off)), data) {
            (Some(at), true) if at < size => Ok(at),
            (_, true) => Err(libc::ENXIO),
            (at, false) => Ok(at.unwrap_or(size).min(size)),
        }
    }

    /// The part of `[off, off+len)` a mapping may touch without SIGBUS: pages before the one
    /// past EOF, inside the mapping. `None` when `p` is not a file or nothing remains.
    fn mappable(&mut self, p: &str, off: u64, len: usize) -> Option<(u64, u64)> {
        let f = self.file_mut(p).ok()?;
        let end = (off + len as u64).min((f.data.len() as u64).next_multiple_of(PAGE)).min(MAP_LEN);
        (off < end).then_some((off, end))
    }

    /// A load through a shared mapping changes no block: loads never allocate or convert (a
    /// partly written page is served as a copy).
    fn map_load(&mut self, p: &str, off: u64, end: u64) -> Vec<u8> {
        let f = self.file_mut(p).unwrap();
        let e = (end as usize).min(f.data.len());
        f.data[(off as usize).min(e)..e].to_vec()
    }

    /// A store through a shared mapping: every page it touches becomes written blocks; bytes
    /// past EOF (in the EOF page) are not file data.
    fn map_store(&mut self, p: &str, off: u64, data: &[u8]) {
        let bs = self.bs;
        let f = self.file_mut(p).unwrap();
        let per = PAGE / bs;
        let end = off + data.len() as u64;
        f.set(off / PAGE * per, end.div_ceil(PAGE) * per, |_| Blk::Written);
        let e = (end as usize).min(f.data.len());
        if (off as usize) < e {
            f.data[off as usize..e].copy_from_slice(&data[..e - off as usize]);
        }
    }

    fn unlink(&mut self, p: &str) -> R<()> {
        self.parent_ok(p)?;
        match self.get(p).map(|n| &n.kind) {
            None => Err(libc::ENOENT),
            Some(Kind::Dir) => Err(libc::EISDIR),
            Some(_) => {
                self.drop_link(p);
                Ok(())
            }
        }
    }

    fn mkdir(&mut self, p: &str) -> R<()> {
        self.parent_ok(p)?;
        if self.paths.contains_key(p) {
            return Err(libc::EEXIST);
        }
        self.add(p, Kind::Dir, 0o755);
        Ok(())
    }

    fn rmdir(&mut self, p: &str) -> R<()> {
        self.parent_ok(p)?;
        match self.get(p).map(|n| &n.kind) {
            None => Err(libc::ENOENT),
            Some(Kind::Dir) if !self.children(p).is_empty() => Err(libc::ENOTEMPTY),
            Some(Kind::Dir) => {
                self.drop_link(p);
                Ok(())
            }
            Some(_) => Err(libc::ENOTDIR),
        }
    }

    fn symlink(&mut self, p: &str, target: &[u8]) -> R<()> {
        self.parent_ok(p)?;
        if self.paths.contains_key(p) {
            return Err(libc::EEXIST);
        }
        self.add(p, Kind::Symlink(target.to_vec()), 0o777);
        Ok(())
    }

    fn link(&mut self, a: &str, b: &str) -> R<()> {
        self.parent_ok(a)?;
        let id = *self.paths.get(a).ok_or(libc::ENOENT)?;
        self.parent_ok(b)?;
        if self.paths.contains_key(b) {
            return Err(libc::EEXIST);
        }
        if self.nodes[&id].kind == Kind::Dir {
            return Err(libc::EPERM);
        }
        self.nodes.get_mut(&id).unwrap().nlink += 1;
        self.paths.insert(b.to_string(), id);
        Ok(())
    }

    /// Resolves `p` without following a final symlink (lsetxattr and friends).
    fn lookup_nofollow(&self, p: &str) -> R<u64> {
        self.parent_ok(p)?;
        self.paths.get(p).copied().ok_or(libc::ENOENT)
    }

    /// The node at `p` for an attribute op on `name`: `user.` ones only on files and directories.
    fn xattr_node(&mut self, p: &str, name: &str, denied: i32) -> R<&mut Node> {
        let id = self.lookup_nofollow(p)?;
        let n = self.nodes.get_mut(&id).unwrap();
        if name.starts_with("user.") && matches!(n.kind, Kind::Symlink(_)) {
            return Err(denied);
        }
        Ok(n)
    }

    fn setxattr(&mut self, p: &str, name: &str, value: &[u8], create: bool, replace: bool) -> R<()> {
        let bs = self.bs as usize;
        let n = self.xattr_node(p, name, libc::EPERM)?;
        let exists = n.xattrs.contains_key(name);
        if create && exists {
            return Err(libc::EEXIST);
        }
        if replace && !exists {
            return Err(libc::ENODATA);
        }
        let mut after = n.xattrs.clone();
        after.insert(name.to_string(), value.to_vec());
        // Everything must fit in one block: a 16-byte header, then per attribute 4 bytes of
        // lengths, the name and the value, padded to 4.
        let used: usize = 16 + after.iter().map(|(k, v)| (4 + k.len() + v.len()).next_multiple_of(4)).sum::<usize>();
        if used > bs {
            return Err(libc::ENOSPC);
        }
        n.xattrs = after;
        Ok(())
    }

    fn getxattr(&mut self, p: &str, name: &str) -> R<Vec<u8>> {
        let n = self.xattr_node(p, name, libc::ENODATA)?;
        n.xattrs.get(name).cloned().ok_or(libc::ENODATA)
    }

    fn removexattr(&mut self, p: &str, name: &str) -> R<()> {
        let n = self.xattr_node(p, name, libc::EPERM)?;
        n.xattrs.remove(name).map(drop).ok_or(libc::ENODATA)
    }

    fn chmod(&mut self, p: &str, mode: u32) -> R<()> {
        let id = self.lookup(p)?;
        self.nodes.get_mut(&id).unwrap().mode = mode;
        Ok(())
    }

    fn rename(&mut self, a: &str, b: &str) -> R<()> {
        self.parent_ok(a)?;
        self.parent_ok(b)?;
        let src = *self.paths.get(a).ok_or(libc::ENOENT)?;
        if a == b {
            return Ok(());
        }
        let src_dir = self.nodes[&src].kind == Kind::Dir;
        let cross = parent_of(a) != parent_of(b);
        if cross && src_dir && b.starts_with(&format!("{a}/")) {
            return Err(libc::EINVAL);
        }
        if let Some(&dst) = self.paths.get(b) {
            if dst == src {
                return Ok(());
            }
            let dst_dir = self.nodes[&dst].kind == Kind::Dir;
            if cross && dst_dir && a.starts_with(&format!("{b}/")) {
                return Err(libc::ENOTEMPTY);
            }
            match (src_dir, dst_dir) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !self.children(b).is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            self.drop_link(b);
        }
        // Move `a` and everything under it.
        let prefix = format!("{a}/");
        let moved: Vec<(String, u64)> = self
            .paths
            .iter()
            .filter(|(k, _)| *k == a || k.starts_with(&prefix))
            .map(|(k, &v)| (k.clone(), v))
            .collect();
        for (k, _) in &moved {
            self.paths.remove(k);
        }
        for (k, v) in moved {
            self.paths.insert(format!("{b}{}", &k[a.len()..]), v);
        }
        if src_dir && cross {
            if parent_of(a) != "/" {
                let pid = self.paths[parent_of(a)];
                self.nodes.get_mut(&pid).unwrap().nlink -= 1;
            }
            if parent_of(b) != "/" {
                let pid = self.paths[parent_of(b)];
                self.nodes.get_mut(&pid).unwrap().nlink += 1;
            }
        }
        Ok(())
    }
}

fn errno<T>(r: udax::Result<T>) -> R<T> {
    r.map_err(|e: Error| e.errno())
}

fn fill(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i / 7) as u8) | 1).collect()
}

struct Sut {
    fs: Option<Fs>,
    /// A shared read-write mapping of `[0, MAP_LEN)` per modelled file (by model id).
    maps: HashMap<u64, Mapping>,
}

impl Sut {
    fn fs(&self) -> &Fs {
        self.fs.as_ref().unwrap()
    }

    fn apply(&mut self, op: &Op, m: &mut Model) -> Result<(), TestCaseError> {
        let fs = self.fs().clone();
        let p = |i: usize| PATHS[i];
        match op {
            Op::Create(i) => {
                let got = errno(fs.open(p(*i), OpenOptions::create()).map(drop));
                prop_assert_eq!(got, m.create(p(*i)), "create {}", p(*i));
            }
            Op::Write { path, off, len, seed } => {
                let data = fill(*len, *seed);
                let got = errno(fs.open(p(*path), OpenOptions::read_write()).and_then(|f| f.write_at(&data, *off)));
                prop_assert_eq!(got, m.write(p(*path), *off, &data), "write {} at {}", p(*path), off);
            }
            Op::Read { path, off, len } => {
                let got = errno(fs.open(p(*path), OpenOptions::read_only()).and_then(|f| {
                    let mut b = vec![0xee; *len];
                    let n = f.read_at(&mut b, *off)?;
                    b.truncate(n);
                    Ok(b)
                }));
                let want = m.read(p(*path), *off, *len);
                prop_assert!(
                    got == want,
                    "read {} at {} len {}: {:?} vs {:?}",
                    p(*path),
                    off,
                    len,
                    got.as_ref().map(|v| v.len()),
                    want.as_ref().map(|v| v.len())
                );
            }
            Op::Truncate { path, size } => {
                let got = errno(fs.open(p(*path), OpenOptions::read_write()).and_then(|f| f.set_len(*size)));
                prop_assert_eq!(got, m.truncate(p(*path), *size), "truncate {}", p(*path));
            }
            Op::Unlink(i) => prop_assert_eq!(errno(fs.unlink_path(p(*i))), m.unlink(p(*i)), "unlink {}", p(*i)),
            Op::Rename(a, b) => {
                prop_assert_eq!(
                    errno(fs.rename_path(p(*a), p(*b))),
                    m.rename(p(*a), p(*b)),
                    "rename {} {}",
                    p(*a),
                    p(*b)
                )
            }
            Op::Mkdir(i) => {
                prop_assert_eq!(errno(fs.mkdir_path(p(*i), 0o755).map(drop)), m.mkdir(p(*i)), "mkdir {}", p(*i))
            }
            Op::Rmdir(i) => prop_assert_eq!(errno(fs.rmdir_path(p(*i))), m.rmdir(p(*i)), "rmdir {}", p(*i)),
            Op::Link(a, b) => {
                prop_assert_eq!(
                    errno(fs.link_path(p(*a), p(*b)).map(drop)),
                    m.link(p(*a), p(*b)),
                    "link {} {}",
                    p(*a),
                    p(*b)
                )
            }
            Op::Symlink(i, t) => {
                let target = format!("target-{t}/{}", "seg/".repeat(*t as usize * 3));
                prop_assert_eq!(
                    errno(fs.symlink_path(&target, p(*i)).map(drop)),
                    m.symlink(p(*i), target.as_bytes()),
                    "symlink {}",
                    p(*i)
                );
            }
            Op::Chmod(i, mode) => {
                let set = SetAttr { mode: Some(*mode), ..Default::default() };
                prop_assert_eq!(
                    errno(fs.setattr_path(p(*i), true, &set).map(drop)),
                    m.chmod(p(*i), *mode),
                    "chmod {}",
                    p(*i)
                );
            }
            Op::Falloc { path, off, len, keep } => {
                let how = FallocMode::Allocate { keep_size: *keep };
                let got =
                    errno(fs.open(p(*path), OpenOptions::read_write()).and_then(|f| f.fallocate(*off, *len, how)));
                prop_assert_eq!(got, m.falloc(p(*path), *off, *len, *keep), "falloc {} {} {}", p(*path), off, len);
            }
            Op::Punch { path, off, len } => {
                let how = FallocMode::PunchHole;
                let got =
                    errno(fs.open(p(*path), OpenOptions::read_write()).and_then(|f| f.fallocate(*off, *len, how)));
                prop_assert_eq!(
                    got,
                    m.clear(p(*path), *off, *len, Blk::Hole, false),
                    "punch {} {} {}",
                    p(*path),
                    off,
                    len
                );
            }
            Op::Zero { path, off, len, keep } => {
                let how = FallocMode::ZeroRange { keep_size: *keep };
                let got =
                    errno(fs.open(p(*path), OpenOptions::read_write()).and_then(|f| f.fallocate(*off, *len, how)));
                prop_assert_eq!(
                    got,
                    m.clear(p(*path), *off, *len, Blk::Unwritten, !*keep),
                    "fzero {} {} {}",
                    p(*path),
                    off,
                    len
                );
            }
            Op::Seek { path, off, data } => {
                let got = errno(fs.open(p(*path), OpenOptions::read_only()).and_then(|f| {
                    if fs.getattr(f.ino())?.mode & 0o170000 == 0o040000 {
                        return Err(Error::IsDir);
                    }
                    if *data {
                        fs.seek_data(f.ino(), *off)
                    } else {
                        fs.seek_hole(f.ino(), *off)
                    }
                }));
                prop_assert_eq!(got, m.seek(p(*path), *off, *data), "seek {} {} data={}", p(*path), off, data);
            }
            Op::MapStore { path, off, len, seed } => {
                let Some((off, end)) = m.mappable(p(*path), *off, *len) else { return Ok(()) };
                let data = fill((end - off) as usize, *seed);
                self.mapping(p(*path), m).write_at(&data, off).unwrap();
                m.map_store(p(*path), off, &data);
            }
            Op::MapLoad { path, off, len } => {
                let Some((off, end)) = m.mappable(p(*path), *off, *len) else { return Ok(()) };
                let mut got = vec![0xee; (end - off) as usize];
                self.mapping(p(*path), m).read_at(&mut got, off).unwrap();
                let want = m.map_load(p(*path), off, end);
                got.truncate(want.len());
                prop_assert!(got == want, "load through the mapping of {} at {} len {}", p(*path), off, end - off);
            }
            Op::Remap(path) => {
                if let Ok(id) = m.lookup(p(*path)) {
                    self.maps.remove(&id);
                }
            }
            Op::PrivateStore { path, off, len, seed } => {
                let Some((off, end)) = m.mappable(p(*path), *off, *len) else { return Ok(()) };
                let f = fs.open(p(*path), OpenOptions::read_only()).unwrap();
                let base = off / PAGE * PAGE;
                let map = f.mmap(base, end - base, Prot::ReadWrite, Share::Private).unwrap();
                let data = fill((end - off) as usize, *seed);
                map.write_at(&data, off - base).unwrap();
                let mut back = vec![0; data.len()];
                map.read_at(&mut back, off - base).unwrap();
                prop_assert!(back == data, "a private mapping reads back its own stores");
                // The file is untouched: read(2) still gives the model's bytes.
                let want = m.read(p(*path), off, data.len()).unwrap();
                let mut got = vec![0; want.len()];
                f.read_at(&mut got, off).unwrap();
                prop_assert!(got == want, "a private store reached {}", p(*path));
            }
            Op::SetXattr { path, name, len, seed, create, replace } => {
                let value = fill(*len, *seed);
                let flags = udax::XattrFlags { create: *create, replace: *replace };
                let got = errno(
                    fs.resolve(p(*path), false)
                        .and_then(|ino| fs.setxattr(ino, XNAMES[*name].as_bytes(), &value, flags)),
                );
                let want = m.setxattr(p(*path), XNAMES[*name], &value, *create, *replace);
                prop_assert_eq!(got, want, "setxattr {} {} len {}", p(*path), XNAMES[*name], len);
            }
            Op::GetXattr { path, name } => {
                let got = errno(fs.resolve(p(*path), false).and_then(|ino| fs.getxattr(ino, XNAMES[*name].as_bytes())));
                prop_assert_eq!(got, m.getxattr(p(*path), XNAMES[*name]), "getxattr {} {}", p(*path), XNAMES[*name]);
            }
            Op::RemoveXattr { path, name } => {
                let got =
                    errno(fs.resolve(p(*path), false).and_then(|ino| fs.removexattr(ino, XNAMES[*name].as_bytes())));
                prop_assert_eq!(
                    got,
                    m.removexattr(p(*path), XNAMES[*name]),
                    "removexattr {} {}",
                    p(*path),
                    XNAMES[*name]
                );
            }
            Op::Remount => {
                self.maps.clear();
                drop(fs);
                let dev = self.fs.take().unwrap().unmount().unwrap().expect("last handle");
                let fs = Fs::mount(dev).map_err(|e| TestCaseError::fail(format!("remount: {e}")))?;
                fs.set_mmap_huge(false);
                let report = udax::check::check(&fs, &mut |_, _| {});
                prop_assert!(report.is_clean(), "fsck after remount: {:?}", report.findings);
                self.fs = Some(fs);
                self.compare(m)?;
            }
        }
        Ok(())
    }

    /// The shared mapping of the file at `p` (a regular file in the model), made on first use.
    fn mapping(&mut self, p: &str, m: &Model) -> &Mapping {
        let id = m.lookup(p).unwrap();
        let fs = self.fs.as_ref().unwrap();
        self.maps.entry(id).or_insert_with(|| {
            let f = fs.open(p, OpenOptions::read_write()).unwrap();
            f.mmap(0, MAP_LEN, Prot::ReadWrite, Share::Shared).unwrap()
        })
    }

    /// The whole tree against the model.
    fn compare(&self, m: &Model) -> Result<(), TestCaseError> {
        let fs = self.fs();
        let mut found = BTreeMap::new();
        let mut stack = vec![("".to_string(), 1u64)];
        while let Some((path, ino)) = stack.pop() {
            for e in fs.readdir(ino, 0).unwrap() {
                let child = format!("{path}/{}", String::from_utf8(e.name).unwrap());
                if e.dtype == 4 {
                    stack.push((child.clone(), e.ino));
                }
                found.insert(child, e.ino);
            }
        }
        let want: Vec<&String> = m.paths.keys().collect();
        let got: Vec<&String> = found.keys().collect();
        prop_assert_eq!(got, want, "tree differs");
        let mut ino_of: HashMap<u64, u64> = HashMap::new();
        for (path, id) in &m.paths {
            let ino = found[path];
            prop_assert_eq!(*ino_of.entry(*id).or_insert(ino), ino, "hard links of {} split", path);
            let st = fs.getattr(ino).unwrap();
            let n = &m.nodes[id];
            prop_assert_eq!(st.nlink, n.nlink, "nlink of {}", path);
            let mut names = Vec::new();
            for (k, v) in &n.xattrs {
                prop_assert_eq!(&fs.getxattr(ino, k.as_bytes()).unwrap(), v, "xattr {} of {}", k, path);
                names.extend_from_slice(k.as_bytes());
                names.push(0);
            }
            prop_assert_eq!(fs.listxattr(ino).unwrap(), names, "xattr names of {}", path);
            match &n.kind {
                Kind::File(FileM { data: d, blocks }) => {
                    let bs = m.bs;
                    let mut got = Vec::new();
                    for e in fs.extents(ino).unwrap() {
                        got.resize((e.logical / bs) as usize, Blk::Hole);
                        let s = if e.state == "written" { Blk::Written } else { Blk::Unwritten };
                        got.resize(((e.logical + e.length) / bs) as usize, s);
                    }
                    prop_assert_eq!(&got, blocks, "block states of {}", path);
                    prop_assert_eq!(st.mode, 0o100000 | n.mode, "mode of {}", path);
                    prop_assert_eq!(st.size, d.len() as u64, "size of {}", path);
                    let mut b = vec![0; d.len()];
                    fs.read(ino, &mut b, 0).unwrap();
                    prop_assert!(&b == d, "contents of {}", path);
                }
                Kind::Dir => prop_assert_eq!(st.mode, 0o040000 | n.mode, "mode of {}", path),
                Kind::Symlink(t) => prop_assert_eq!(&fs.readlink(ino).unwrap(), t, "target of {}", path),
            }
        }
        Ok(())
    }
}

fn run(block_size: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let dev = Device::anonymous(64 << 20).unwrap();
    let fs = Fs::mkfs(dev, &MkfsOptions { block_size, ..Default::default() }).unwrap();
    // 2 MiB first stores depend on where free aligned runs happen to be; S3 covers them.
    fs.set_mmap_huge(false);
    let mut sut = Sut { fs: Some(fs), maps: HashMap::new() };
    let mut model = Model { bs: u64::from(block_size), ..Model::default() };
    for op in ops {
        sut.apply(op, &mut model)?;
    }
    sut.apply(&Op::Remount, &mut model)
}

fn config() -> ProptestConfig {
    let cases = std::env::var("UDAX_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    ProptestConfig { cases, max_shrink_iters: 2000, ..ProptestConfig::default() }
}

// 40 cases × ~300 ops × 3 block sizes ≈ 36,000 operations per run (UDAX_MODEL_CASES scales it).
proptest! {
    #![proptest_config(config())]

    #[test]
    fn model_4096(ops in proptest::collection::vec(op(), 200..400)) {
        run(4096, &ops)?;
    }

    #[test]
    fn model_2048(ops in proptest::collection::vec(op(), 200..400)) {
        run(2048, &ops)?;
    }

    #[test]
    fn model_1024(ops in proptest::collection::vec(op(), 200..400)) {
        run(1024, &ops)?;
    }
}
