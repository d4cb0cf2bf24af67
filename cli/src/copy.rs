//! `put` and `get`: recursive copies between the host and the image, like `cp -a`.
//!
//! Contents first, attributes after (directories after their children), so the times that
//! land are the source's. Hard links and extended attributes are kept; runs of zeros are left as
//! holes. An attribute the other side refuses (a `system.` ACL, `trusted.` as a non-root user)
//! is reported and skipped, as `cp -a` does.
//!
//! Depth costs neither stack nor descriptors nor long paths: trees are walked with an explicit
//! stack and one open host directory at a time ([`Cursor`], which climbs back through ".." and
//! checks it came back to the same directory), host files are named relative to it through
//! /proc/self/fd ([`at`]), and the paths messages show are built only when shown ([`Trail`]).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, FileTimes, Metadata};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use udax::mode;
use udax::{Creds, Error, Fs, SetAttr, SetTime, Stat, Timespec};

use crate::common::{stderr_is_tty, with_image, with_image_read_only, CliResult, Failure, OutResult, Progress};
use crate::stdio::is_stdio;
use crate::{json, stdio, GetArgs, PutArgs};

/// Copy unit: one `fs.write` / `fs.read` per MiB.
const CHUNK: usize = 1 << 20;

/// Trees at least this big (bytes or entries) get a progress bar on a terminal.
const PROGRESS_BYTES: u64 = 64 << 20;
const PROGRESS_FILES: u64 = 1000;

fn host_err(cmd: &str, path: &Path, e: &std::io::Error) -> Failure {
    Failure::io(cmd, path, e)
}

/// What a copy moved, for `--json`: files (every non-directory), directories, bytes of file
/// contents.
#[derive(Debug, Default, Clone, Copy)]
struct Copied {
    files: u64,
    directories: u64,
    bytes: u64,
}

impl Copied {
    fn report(&self, image: &Path, source: &Path, destination: &Path) -> serde_json::Value {
        serde_json::json!({
            "image": json::path(image),
            "source": json::path(source),
            "destination": json::path(destination),
            "files": self.files,
            "directories": self.directories,
            "bytes": self.bytes,
        })
    }
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec { sec, nsec: nsec.clamp(0, 999_999_999) as u32 }
}

fn system_time(t: Timespec) -> Option<SystemTime> {
    if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(t.sec as u64, t.nsec))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.sec.unsigned_abs()))?
            .checked_add(Duration::from_nanos(t.nsec.into()))
    }
}

/// A host path's extended attributes (of a symlink itself, not its target); none where the host
/// file system has none.
fn host_xattrs(p: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut list = vec![0u8; 64 << 10];
    let n = match rustix::fs::llistxattr(p, &mut list[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut value = vec![0u8; udax::XATTR_VALUE_MAX];
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        match rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut value[..]) {
            Ok(k) => out.push((name.to_vec(), value[..k].to_vec())),
            // Removed since the listing.
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn attribute_skipped(cmd: &str, dst: &Trail, name: &[u8], why: impl std::fmt::Display) {
    eprintln!("udax {cmd}: {}: attribute {} not copied: {why}", dst.path().display(), String::from_utf8_lossy(name));
}

/// A short path to `name` in the host directory open as `dir`, however deep that directory is:
/// the kernel resolves /proc/self/fd/N to the directory itself ("." names it).
fn at(dir: &OwnedFd, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

/// One open host directory, moved down by name and back up through "..".
struct Cursor {
    dir: OwnedFd,
    /// (st_dev, st_ino) of each directory above, to check the way back.
    above: Vec<(u64, u64)>,
}

fn open_dir(dir: impl std::os::fd::AsFd, name: impl rustix::path::Arg) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

fn id(fd: &OwnedFd) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

impl Cursor {
    fn open(path: &Path) -> std::io::Result<Cursor> {
        Ok(Cursor { dir: open_dir(rustix::fs::CWD, path)?, above: Vec::new() })
    }

    fn down(&mut self, name: &OsStr) -> std::io::Result<()> {
        let child = open_dir(&self.dir, name)?;
        self.above.push(id(&self.dir)?);
        self.dir = child;
        Ok(())
    }

    fn up(&mut self) -> std::io::Result<()> {
        let parent = open_dir(&self.dir, "..")?;
        if Some(id(&parent)?) != self.above.pop() {
            return Err(std::io::Error::other("a directory was moved during the copy"));
        }
        self.dir = parent;
        Ok(())
    }

    /// The names in the current directory, sorted, last first (to pop).
    fn names(&self) -> std::io::Result<Vec<OsString>> {
        let mut v = Vec::new();
        for e in rustix::fs::Dir::read_from(&self.dir)? {
            let name = e?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                v.push(OsString::from(std::ffi::OsStr::from_bytes(&name)));
            }
        }
        v.sort_unstable_by(|a, b| b.cmp(a));
        Ok(v)
    }
}

/// A path for messages: `base`, then `names` (the directories walked into), then `last`.
/// Built only when shown, so walking a deep tree stays linear.
struct Trail<'a> {
    base: &'a Path,
    names: &'a [OsString],
    last: Option<&'a OsStr>,
}

impl Trail<'_> {
    fn of(base: &Path) -> Trail<'_> {
        Trail { base, names: &[], last: None }
    }

    fn path(&self) -> PathBuf {
        let mut p = self.base.to_path_buf();
        p.extend(self.names);
        p.extend(self.last);
        p
    }
}

fn trail_err(cmd: &str, t: &Trail, e: &std::io::Error) -> Failure {
    host_err(cmd, &t.path(), e)
}

fn print_verbose(t: &Trail) -> CliResult {
    let mut o = std::io::stdout().lock();
    o.write_all(t.path().as_os_str().as_bytes()).out()?;
    o.write_all(b"\n").out()
}

// ---- put ----

struct Put<'a> {
    fs: &'a Fs,
    who: Creds,
    progress: Progress,
    /// Host (dev, ino) of a multiply-linked file -> its copy's inode.
    links: HashMap<(u64, u64), u64>,
    copied: Copied,
    verbose: bool,
}

/// Bytes and entries under a host path (for the progress bar).
fn host_totals(p: &Path, m: &Metadata) -> (u64, u64) {
    let mut acc = (if m.is_file() { m.len() } else { 0 }, 1);
    if !m.is_dir() {
        return acc;
    }
    let Ok(mut c) = Cursor::open(p) else { return acc };
    let mut stack = vec![c.names().unwrap_or_default()];
    while let Some(kids) = stack.last_mut() {
        let Some(k) = kids.pop() else {
            stack.pop();
            if !stack.is_empty() && c.up().is_err() {
                break;
            }
            continue;
        };
        let Ok(cm) = std::fs::symlink_metadata(at(&c.dir, &k)) else { continue };
        acc.1 += 1;
        if cm.is_file() {
            acc.0 += cm.len();
        } else if cm.is_dir() && c.down(&k).is_ok() {
            stack.push(c.names().unwrap_or_default());
        }
    }
    acc
}

pub fn put(a: &PutArgs) -> CliResult {
    const CMD: &str = "put";
    let src = &a.host_path;
    if is_stdio(src) {
        return stdio::put(a);
    }
    let meta = std::fs::symlink_metadata(src).map_err(|e| host_err(CMD, src, &e))?;
    let copied = with_image(CMD, &a.image, |fs| {
        let dst = &a.path;
        let err = |e: Error| Failure::fs(CMD, dst, &e);
        let tty = stderr_is_tty();
        let totals = if tty { host_totals(src, &meta) } else { (0, 0) };
        let show = tty && (totals.0 >= PROGRESS_BYTES || totals.1 >= PROGRESS_FILES);
        let mut p = Put {
            fs,
            who: Creds::current(),
            progress: Progress::new(show, totals.0, true, "put"),
            links: HashMap::new(),
            copied: Copied::default(),
            verbose: a.verbose,
        };
        // An existing directory receives the copy under the source's name ("." merges into it).
        let (parent, name, shown) = match fs.stat(dst) {
            Ok(st) if mode::is_dir(st.mode) => match src.file_name() {
                Some(base) => (st.ino, base.as_bytes().to_vec(), dst.join(base)),
                None if meta.is_dir() => {
                    p.copy_tree(src, &meta, st.ino, dst)?;
                    p.progress.done();
                    return Ok(p.copied);
                }
                None => return Err(Failure::new(CMD, src.display(), "cannot tell the source's name")),
            },
            Ok(_) | Err(Error::NotFound) => {
                let (parent, name) = fs.resolve_parent(dst).map_err(err)?;
                (parent, name.to_vec(), dst.clone())
            }
            Err(e) => return Err(err(e)),
        };
        if let Some(ino) = p.copy(src, &meta, parent, &name, &Trail::of(&shown))? {
            p.copy_tree(src, &meta, ino, &shown)?;
        }
        p.progress.done();
        Ok(p.copied)
    })?;
    if a.json {
        return json::print(copied.report(&a.image, src, &a.path));
    }
    Ok(())
}

impl Put<'_> {
    /// Extended attributes, owner, mode (unless a symlink's) and times of host `src`.
    fn attrs(&self, src: &Path, ino: u64, m: &Metadata, with_mode: bool, dst: &Trail) -> CliResult {
        for (name, value) in host_xattrs(src).map_err(|e| trail_err("put", dst, &e))? {
            if let Err(e) = self.fs.setxattr(ino, &name, &value, Default::default()) {
                attribute_skipped("put", dst, &name, e);
            }
        }
        let set = SetAttr {
            mode: with_mode.then_some(m.mode() & 0o7777),
            uid: Some(m.uid()),
            gid: Some(m.gid()),
            size: None,
            atime: Some(SetTime::At(ts(m.atime(), m.atime_nsec()))),
            mtime: Some(SetTime::At(ts(m.mtime(), m.mtime_nsec()))),
            drop_set_id: None,
        };
        self.fs.setattr(ino, &set).map(drop).map_err(|e| Failure::fs("put", dst.path(), &e))
    }

    /// Copies host `src` (a short path, see [`at`]) to `name` in image directory `parent`.
    /// A directory is only made (or found, to merge into): returns its inode, whose contents
    /// and attributes the caller copies.
    fn copy(
        &mut self,
        src: &Path,
        m: &Metadata,
        parent: u64,
        name: &[u8],
        dst: &Trail,
    ) -> Result<Option<u64>, Failure> {
        let fs = self.fs;
        let err = |e: Error| Failure::fs("put", dst.path(), &e);
        let ft = m.file_type();
        // What is there already: a directory receives a directory; a non-directory is replaced
        // by a non-directory.
        match fs.lookup(parent, name) {
            Ok(old) if mode::is_dir(old.mode) => {
                if ft.is_dir() {
                    return Ok(Some(old.ino));
                }
                let why = "cannot overwrite a directory with a non-directory";
                return Err(Failure::new("put", dst.path().display(), why).errno(libc::EISDIR));
            }
            Ok(_) if ft.is_dir() => {
                let why = "cannot overwrite a non-directory with a directory";
                return Err(Failure::new("put", dst.path().display(), why).errno(libc::ENOTDIR));
            }
            Ok(_) => fs.unlink(parent, name).map_err(err)?,
            Err(Error::NotFound) => {}
            Err(e) => return Err(err(e)),
        }
        if self.verbose {
            print_verbose(dst)?;
        }
        let perm = m.mode() & 0o7777;
        if ft.is_dir() {
            self.copied.directories += 1;
            return Ok(Some(fs.mkdir(parent, name, perm, self.who).map_err(err)?.ino));
        }
        self.copied.files += 1;
        self.progress.message(format!("{} files", self.copied.files));
        if m.nlink() > 1 && !ft.is_symlink() {
            if let Some(&ino) = self.links.get(&(m.dev(), m.ino())) {
                return fs.link(ino, parent, name).map(|_| None).map_err(err);
            }
        }
        let ino = if ft.is_file() {
            let st = fs.create(parent, name, perm, self.who).map_err(err)?;
            self.copy_data(src, st.ino, dst)?;
            st.ino
        } else if ft.is_symlink() {
            let target = std::fs::read_link(src).map_err(|e| trail_err("put", dst, &e))?;
            fs.symlink(parent, name, target.as_os_str().as_bytes(), self.who).map_err(err)?.ino
        } else {
            // FIFOs, sockets and device nodes: an inode without data.
            let kind = m.mode() & mode::S_IFMT;
            fs.mknod(parent, name, kind | perm, m.rdev(), self.who).map_err(err)?.ino
        };
        if m.nlink() > 1 && !ft.is_symlink() {
            self.links.insert((m.dev(), m.ino()), ino);
        }
        self.attrs(src, ino, m, !ft.is_symlink(), dst)?;
        Ok(None)
    }

    /// Copies what host directory `src` holds into image directory `ino`, depth first with an
    /// explicit stack, each directory's attributes after its children.
    fn copy_tree(&mut self, src: &Path, m: &Metadata, ino: u64, dst: &Path) -> CliResult {
        let mut cur = Cursor::open(src).map_err(|e| host_err("put", src, &e))?;
        let herr =
            |names: &[OsString], e: std::io::Error| trail_err("put", &Trail { base: dst, names, last: None }, &e);
        let mut stack = vec![(ino, m.clone(), cur.names().map_err(|e| herr(&[], e))?)];
        let mut names: Vec<OsString> = Vec::new();
        while let Some((dir, dm, kids)) = stack.last_mut() {
            if let Some(k) = kids.pop() {
                let dir = *dir;
                let child = at(&cur.dir, &k);
                let trail = Trail { base: dst, names: &names, last: Some(&k) };
                let cm = std::fs::symlink_metadata(&child).map_err(|e| trail_err("put", &trail, &e))?;
                if let Some(sub) = self.copy(&child, &cm, dir, k.as_bytes(), &trail)? {
                    cur.down(&k).map_err(|e| trail_err("put", &trail, &e))?;
                    names.push(k);
                    let kids = cur.names().map_err(|e| herr(&names, e))?;
                    stack.push((sub, cm, kids));
                }
                continue;
            }
            let (dir, dm) = (*dir, dm.clone());
            self.attrs(
                &at(&cur.dir, OsStr::new(".")),
                dir,
                &dm,
                true,
                &Trail { base: dst, names: &names, last: None },
            )?;
            stack.pop();
            if !stack.is_empty() {
                cur.up().map_err(|e| herr(&names, e))?;
                names.pop();
            }
        }
        Ok(())
    }

    /// Writes a host file's bytes into image file `ino` in 1 MiB chunks, skipping all-zero
    /// chunks (they stay holes).
    fn copy_data(&mut self, src: &Path, ino: u64, dst: &Trail) -> CliResult {
        let open = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(src);
        let mut f = open.map_err(|e| trail_err("put", dst, &e))?;
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        let mut written_to = 0u64;
        loop {
            let n = crate::stdio::read_full(&mut f, &mut buf).map_err(|e| trail_err("put", dst, &e))?;
            if n == 0 {
                break;
            }
            if !is_zero(&buf[..n]) {
                let w = self.fs.write(ino, &buf[..n], off).map_err(|e| Failure::fs("put", dst.path(), &e))?;
                if w < n {
                    return Err(Failure::fs("put", dst.path(), &Error::NoSpace));
                }
                written_to = off + n as u64;
            }
            off += n as u64;
            self.copied.bytes += n as u64;
            self.progress.inc(n as u64);
        }
        if off > written_to {
            let set = SetAttr { size: Some(off), ..SetAttr::default() };
            self.fs.setattr(ino, &set).map_err(|e| Failure::fs("put", dst.path(), &e))?;
        }
        Ok(())
    }
}

// ---- get ----

struct Get<'a> {
    fs: &'a Fs,
    /// (dev, ino) of the image file, which a copy must never replace.
    image: Option<(u64, u64)>,
    root: bool,
    progress: Progress,
    /// Image inode of a multiply-linked file -> where it was first copied: the directories
    /// below the top of the copy ([`Get::top`]) and the name.
    links: HashMap<u64, Vec<OsString>>,
    /// The host directory a tree copy goes into (hard links are made relative to it).
    top: PathBuf,
    copied: Copied,
    verbose: bool,
}

/// Bytes and entries under an image inode (for the progress bar).
fn image_totals(fs: &Fs, st: &Stat) -> (u64, u64) {
    let mut acc = (0, 0);
    let mut stack = vec![*st];
    while let Some(st) = stack.pop() {
        acc.1 += 1;
        if mode::is_reg(st.mode) {
            acc.0 += st.size;
        } else if mode::is_dir(st.mode) {
            stack.extend(fs.readdir(st.ino, 0).unwrap_or_default().iter().filter_map(|e| fs.getattr(e.ino).ok()));
        }
    }
    acc
}

pub fn get(a: &GetArgs) -> CliResult {
    const CMD: &str = "get";
    if is_stdio(&a.host_path) {
        return stdio::get(a);
    }
    let copied = with_image_read_only(CMD, &a.image, |fs| {
        let src = &a.path;
        let st = fs.lstat(src).map_err(|e| Failure::fs(CMD, src, &e))?;
        let tty = stderr_is_tty();
        let totals = if tty { image_totals(fs, &st) } else { (0, 0) };
        let show = tty && (totals.0 >= PROGRESS_BYTES || totals.1 >= PROGRESS_FILES);
        let mut g = Get {
            fs,
            image: std::fs::metadata(&a.image).ok().map(|m| (m.dev(), m.ino())),
            root: Creds::current().uid == 0,
            progress: Progress::new(show, totals.0, true, "get"),
            links: HashMap::new(),
            top: PathBuf::new(),
            copied: Copied::default(),
            verbose: a.verbose,
        };
        let dst = &a.host_path;
        let target = match std::fs::metadata(dst) {
            Ok(m) if m.is_dir() => match src.file_name() {
                Some(base) => dst.join(base),
                None if mode::is_dir(st.mode) => {
                    g.copy_tree(&st, src, dst)?;
                    g.progress.done();
                    return Ok(g.copied);
                }
                None => return Err(Failure::new(CMD, src.display(), "cannot tell the source's name")),
            },
            _ => dst.clone(),
        };
        let shown = Trail::of(&target);
        if g.copy(&st, &Trail::of(src), &target, &shown, &[])? {
            g.copy_tree(&st, src, &target)?;
        }
        g.progress.done();
        Ok(g.copied)
    })?;
    if a.json {
        return json::print(copied.report(&a.image, &a.path, &a.host_path));
    }
    Ok(())
}

impl Get<'_> {
    /// Copies image inode `st` (named `src` in messages) to host path `dst` (a short path, see
    /// [`at`]; `shown` in messages; `names` are the directories below [`Get::top`] it is in).
    /// A directory is only made (or found, to merge into): returns true, and the caller copies
    /// its contents and attributes.
    fn copy(&mut self, st: &Stat, src: &Trail, dst: &Path, shown: &Trail, names: &[OsString]) -> Result<bool, Failure> {
        let herr = |e: std::io::Error| trail_err("get", shown, &e);
        let is_dir = mode::is_dir(st.mode);
        match std::fs::symlink_metadata(dst) {
            Ok(old) if old.is_dir() => {
                if is_dir {
                    return Ok(true);
                }
                let why = "cannot overwrite a directory with a non-directory";
                return Err(Failure::new("get", shown.path().display(), why).errno(libc::EISDIR));
            }
            Ok(_) if is_dir => {
                let why = "cannot overwrite a non-directory with a directory";
                return Err(Failure::new("get", shown.path().display(), why).errno(libc::ENOTDIR));
            }
            Ok(old) if Some((old.dev(), old.ino())) == self.image => {
                return Err(Failure::new("get", shown.path().display(), "is the image itself; not overwriting it"));
            }
            Ok(_) => std::fs::remove_file(dst).map_err(herr)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(herr(e)),
        }
        let kind = st.mode & mode::S_IFMT;
        if !(is_dir || kind == mode::S_IFREG || kind == mode::S_IFLNK) {
            let msg = format!("skipping {} (special files are not copied out)", crate::common::type_name(st.mode, 0));
            eprintln!("udax get: {}: {msg}", src.path().display());
            return Ok(false);
        }
        if self.verbose {
            print_verbose(shown)?;
        }
        if is_dir {
            std::fs::create_dir(dst).map_err(herr)?;
            self.copied.directories += 1;
            return Ok(true);
        }
        self.copied.files += 1;
        self.progress.message(format!("{} files", self.copied.files));
        if kind == mode::S_IFLNK {
            let target = self.fs.readlink(st.ino).map_err(|e| Failure::fs("get", src.path(), &e))?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), dst).map_err(herr)?;
            if self.root {
                std::os::unix::fs::lchown(dst, Some(st.uid), Some(st.gid)).map_err(herr)?;
            }
            self.xattrs(st, src, dst, shown)?;
            // The link's own times, as cp -a keeps them.
            let t = |t: Timespec| rustix::fs::Timespec { tv_sec: t.sec, tv_nsec: t.nsec.into() };
            let times = rustix::fs::Timestamps { last_access: t(st.atime), last_modification: t(st.mtime) };
            let nofollow = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
            rustix::fs::utimensat(rustix::fs::CWD, dst, &times, nofollow).map_err(|e| herr(e.into()))?;
            return Ok(false);
        }
        if st.nlink > 1 {
            if let Some(first) = self.links.get(&st.ino) {
                let (name, dirs) = first.split_last().expect("a name");
                let mut c = Cursor::open(&self.top).map_err(herr)?;
                for d in dirs {
                    c.down(d).map_err(herr)?;
                }
                return std::fs::hard_link(at(&c.dir, name), dst).map(|()| false).map_err(herr);
            }
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dst)
            .map_err(herr)?;
        self.copy_data(st, src, &f, shown)?;
        self.attrs(st, src, dst, shown, Some(&f))?;
        if st.nlink > 1 {
            let mut first = names.to_vec();
            first.push(shown.last.map_or_else(|| dst.as_os_str().to_os_string(), OsStr::to_os_string));
            self.links.insert(st.ino, first);
        }
        Ok(false)
    }

    /// Copies what image directory `st` holds into host directory `dst`, depth first with an
    /// explicit stack, each directory's attributes after its children.
    fn copy_tree(&mut self, st: &Stat, src: &Path, dst: &Path) -> CliResult {
        self.top = dst.to_path_buf();
        let mut cur = Cursor::open(dst).map_err(|e| host_err("get", dst, &e))?;
        let kids = |fs: &Fs, st: &Stat, names: &[OsString]| {
            let mut kids = fs.readdir(st.ino, 0).map_err(|e| Failure::fs("get", trail_of(src, names, None), &e))?;
            kids.sort_by(|a, b| b.name.cmp(&a.name));
            Ok::<_, Failure>(kids)
        };
        let mut stack = vec![(*st, kids(self.fs, st, &[])?)];
        let mut names: Vec<OsString> = Vec::new();
        while let Some((dir, entries)) = stack.last_mut() {
            if let Some(k) = entries.pop() {
                let name = OsString::from(OsStr::from_bytes(&k.name));
                let shown = Trail { base: dst, names: &names, last: Some(&name) };
                let cst =
                    self.fs.getattr(k.ino).map_err(|e| Failure::fs("get", trail_of(src, &names, Some(&name)), &e))?;
                let csrc = Trail { base: src, names: &names, last: Some(&name) };
                if self.copy(&cst, &csrc, &at(&cur.dir, &name), &shown, &names)? {
                    cur.down(&name).map_err(|e| trail_err("get", &shown, &e))?;
                    names.push(name);
                    let kids = kids(self.fs, &cst, &names)?;
                    stack.push((cst, kids));
                }
                continue;
            }
            let dir = *dir;
            let here = at(&cur.dir, OsStr::new("."));
            let d =
                File::open(&here).map_err(|e| trail_err("get", &Trail { base: dst, names: &names, last: None }, &e))?;
            let shown = Trail { base: dst, names: &names, last: None };
            self.attrs(&dir, &Trail { base: src, names: &names, last: None }, &here, &shown, Some(&d))?;
            stack.pop();
            if !stack.is_empty() {
                cur.up().map_err(|e| trail_err("get", &shown, &e))?;
                names.pop();
            }
        }
        Ok(())
    }

    /// Reads image file `st` in 1 MiB chunks into host file `f`, leaving zero chunks as holes.
    fn copy_data(&mut self, st: &Stat, src: &Trail, f: &File, dst: &Trail) -> CliResult {
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        loop {
            let n = self.fs.read(st.ino, &mut buf, off).map_err(|e| Failure::fs("get", src.path(), &e))?;
            if n == 0 {
                break;
            }
            if !is_zero(&buf[..n]) {
                f.write_all_at(&buf[..n], off).map_err(|e| trail_err("get", dst, &e))?;
            }
            off += n as u64;
            self.copied.bytes += n as u64;
            self.progress.inc(n as u64);
        }
        f.set_len(off).map_err(|e| trail_err("get", dst, &e))
    }

    /// Extended attributes of image inode `st` onto host path `dst` (after any chown, which
    /// would drop a file capability).
    fn xattrs(&self, st: &Stat, src: &Trail, dst: &Path, shown: &Trail) -> CliResult {
        let names = self.fs.listxattr(st.ino).map_err(|e| Failure::fs("get", src.path(), &e))?;
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let value = self.fs.getxattr(st.ino, name).map_err(|e| Failure::fs("get", src.path(), &e))?;
            let flags = rustix::fs::XattrFlags::empty();
            if let Err(e) = rustix::fs::lsetxattr(dst, OsStr::from_bytes(name), &value, flags) {
                attribute_skipped("get", shown, name, std::io::Error::from(e));
            }
        }
        Ok(())
    }

    /// Owner (as root), extended attributes, permission bits, then times.
    fn attrs(&self, st: &Stat, src: &Trail, dst: &Path, shown: &Trail, f: Option<&File>) -> CliResult {
        let herr = |e: std::io::Error| trail_err("get", shown, &e);
        if self.root {
            std::os::unix::fs::lchown(dst, Some(st.uid), Some(st.gid)).map_err(herr)?;
        }
        self.xattrs(st, src, dst, shown)?;
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(st.mode & 0o7777)).map_err(herr)?;
        if let Some(f) = f {
            let mut t = FileTimes::new();
            if let Some(a) = system_time(st.atime) {
                t = t.set_accessed(a);
            }
            if let Some(m) = system_time(st.mtime) {
                t = t.set_modified(m);
            }
            f.set_times(t).map_err(herr)?;
        }
        Ok(())
    }
}

/// The image path `src`/`names`/`last`, for messages.
fn trail_of(src: &Path, names: &[OsString], last: Option<&OsString>) -> PathBuf {
    Trail { base: src, names, last: last.map(OsString::as_os_str) }.path()
}
