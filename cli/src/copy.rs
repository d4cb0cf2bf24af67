//! `put` and `get`: recursive copies between the host and the image, like `cp -a`.
//!
//! Contents first, attributes after (directories after their children), so the times that
//! land are the source's. Hard links and extended attributes are kept; runs of zeros are left as
//! holes. An attribute the other side refuses (a `system.` ACL, `trusted.` as a non-root user)
//! is reported and skipped, as `cp -a` does.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, FileTimes, Metadata};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use udax::layout::mode;
use udax::{Creds, Error, Fs, SetAttr, SetTime, Stat, Timespec};

use crate::common::{
    stderr_is_tty, strerror, with_image, with_image_read_only, CliResult, Failure, OutResult, Progress,
};
use crate::{GetArgs, PutArgs};

/// Copy unit: one `fs.write` / `fs.read` per MiB.
const CHUNK: usize = 1 << 20;

/// Trees at least this big (bytes or entries) get a progress bar on a terminal.
const PROGRESS_BYTES: u64 = 64 << 20;
const PROGRESS_FILES: u64 = 1000;

fn host_err(cmd: &str, path: &Path, e: &std::io::Error) -> Failure {
    let msg = match e.raw_os_error() {
        Some(n) => strerror(n),
        None => e.to_string(),
    };
    Failure::new(cmd, path.display(), msg)
}

/// Reads until `buf` is full or EOF.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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
    let mut value = vec![0u8; udax::xattr::VALUE_MAX];
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

fn attribute_skipped(cmd: &str, dst: &Path, name: &[u8], why: impl std::fmt::Display) {
    eprintln!("udax {cmd}: {}: attribute {} not copied: {why}", dst.display(), String::from_utf8_lossy(name));
}

// ---- put ----

struct Put<'a> {
    fs: &'a Fs,
    who: Creds,
    progress: Progress,
    /// Host (dev, ino) of a multiply-linked file -> its copy's inode.
    links: HashMap<(u64, u64), u64>,
    files: u64,
    verbose: bool,
}

/// Bytes and entries under a host path (for the progress bar).
fn host_totals(p: &Path, m: &Metadata, acc: &mut (u64, u64)) {
    acc.1 += 1;
    if m.is_file() {
        acc.0 += m.len();
    } else if m.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if let Ok(cm) = e.metadata() {
                    host_totals(&e.path(), &cm, acc);
                }
            }
        }
    }
}

pub fn put(a: &PutArgs) -> CliResult {
    const CMD: &str = "put";
    let src = &a.host_path;
    let meta = std::fs::symlink_metadata(src).map_err(|e| host_err(CMD, src, &e))?;
    with_image(CMD, &a.image, |fs| {
        let dst = &a.path;
        let err = |e: Error| Failure::fs(CMD, dst, &e);
        let mut totals = (0, 0);
        let tty = stderr_is_tty();
        if tty {
            host_totals(src, &meta, &mut totals);
        }
        let show = tty && (totals.0 >= PROGRESS_BYTES || totals.1 >= PROGRESS_FILES);
        let mut p = Put {
            fs,
            who: Creds::current(),
            progress: Progress::new(show, totals.0, true, "put"),
            links: HashMap::new(),
            files: 0,
            verbose: a.verbose,
        };
        // An existing directory receives the copy under the source's name ("." merges into it).
        match fs.stat(dst) {
            Ok(st) if mode::is_dir(st.mode) => match src.file_name() {
                Some(base) => p.copy(src, &meta, st.ino, base.as_bytes(), &dst.join(base)),
                None if meta.is_dir() => p.copy_dir_into(src, &meta, st.ino, dst),
                None => Err(Failure::new(CMD, src.display(), "cannot tell the source's name")),
            },
            Ok(_) | Err(Error::NotFound) => {
                let (parent, name) = fs.resolve_parent(dst).map_err(err)?;
                p.copy(src, &meta, parent, name, dst)
            }
            Err(e) => Err(err(e)),
        }?;
        p.progress.done();
        Ok(())
    })
}

impl Put<'_> {
    /// Extended attributes, owner, mode (unless a symlink's) and times of host `src`.
    fn attrs(&self, src: &Path, ino: u64, m: &Metadata, with_mode: bool, dst: &Path) -> CliResult {
        for (name, value) in host_xattrs(src).map_err(|e| host_err("put", src, &e))? {
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
        };
        self.fs.setattr(ino, &set).map(drop).map_err(|e| Failure::fs("put", dst, &e))
    }

    /// Copies host `src` to `name` in image directory `parent`; `dst` names it in messages.
    fn copy(&mut self, src: &Path, m: &Metadata, parent: u64, name: &[u8], dst: &Path) -> CliResult {
        let fs = self.fs;
        let err = |e: Error| Failure::fs("put", dst, &e);
        let ft = m.file_type();
        // What is there already: a directory receives a directory; a non-directory is replaced
        // by a non-directory.
        match fs.lookup(parent, name) {
            Ok(old) if mode::is_dir(old.mode) => {
                if ft.is_dir() {
                    return self.copy_dir_into(src, m, old.ino, dst);
                }
                return Err(Failure::new("put", dst.display(), "cannot overwrite a directory with a non-directory"));
            }
            Ok(_) if ft.is_dir() => {
                return Err(Failure::new("put", dst.display(), "cannot overwrite a non-directory with a directory"));
            }
            Ok(_) => fs.unlink(parent, name).map_err(err)?,
            Err(Error::NotFound) => {}
            Err(e) => return Err(err(e)),
        }
        if self.verbose {
            let mut o = std::io::stdout().lock();
            o.write_all(dst.as_os_str().as_bytes()).out()?;
            o.write_all(b"\n").out()?;
        }
        let perm = m.mode() & 0o7777;
        if ft.is_dir() {
            let st = fs.mkdir(parent, name, perm, self.who).map_err(err)?;
            return self.copy_dir_into(src, m, st.ino, dst);
        }
        self.files += 1;
        self.progress.message(format!("{} files", self.files));
        if m.nlink() > 1 && !ft.is_symlink() {
            if let Some(&ino) = self.links.get(&(m.dev(), m.ino())) {
                return fs.link(ino, parent, name).map(drop).map_err(err);
            }
        }
        let ino = if ft.is_file() {
            let st = fs.create(parent, name, perm, self.who).map_err(err)?;
            self.copy_data(src, st.ino, dst)?;
            st.ino
        } else if ft.is_symlink() {
            let target = std::fs::read_link(src).map_err(|e| host_err("put", src, &e))?;
            fs.symlink(parent, name, target.as_os_str().as_bytes(), self.who).map_err(err)?.ino
        } else {
            // FIFOs, sockets and device nodes: an inode without data.
            let kind = m.mode() & mode::S_IFMT;
            fs.mknod(parent, name, kind | perm, m.rdev(), self.who).map_err(err)?.ino
        };
        if m.nlink() > 1 && !ft.is_symlink() {
            self.links.insert((m.dev(), m.ino()), ino);
        }
        self.attrs(src, ino, m, !ft.is_symlink(), dst)
    }

    /// Copies the children of host directory `src` into image directory `ino`, then its
    /// attributes.
    fn copy_dir_into(&mut self, src: &Path, m: &Metadata, ino: u64, dst: &Path) -> CliResult {
        let rd = std::fs::read_dir(src).map_err(|e| host_err("put", src, &e))?;
        let mut kids = Vec::new();
        for e in rd {
            let e = e.map_err(|e| host_err("put", src, &e))?;
            kids.push(e.file_name());
        }
        kids.sort();
        for k in kids {
            let child = src.join(&k);
            let cm = std::fs::symlink_metadata(&child).map_err(|e| host_err("put", &child, &e))?;
            self.copy(&child, &cm, ino, k.as_bytes(), &dst.join(&k))?;
        }
        self.attrs(src, ino, m, true, dst)
    }

    /// Writes a host file's bytes into image file `ino` in 1 MiB chunks, skipping all-zero
    /// chunks (they stay holes).
    fn copy_data(&mut self, src: &Path, ino: u64, dst: &Path) -> CliResult {
        let mut f = File::open(src).map_err(|e| host_err("put", src, &e))?;
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        let mut written_to = 0u64;
        loop {
            let n = read_full(&mut f, &mut buf).map_err(|e| host_err("put", src, &e))?;
            if n == 0 {
                break;
            }
            if !is_zero(&buf[..n]) {
                let w = self.fs.write(ino, off, &buf[..n]).map_err(|e| Failure::fs("put", dst, &e))?;
                if w < n {
                    return Err(Failure::fs("put", dst, &Error::NoSpace));
                }
                written_to = off + n as u64;
            }
            off += n as u64;
            self.progress.inc(n as u64);
        }
        if off > written_to {
            let set = SetAttr { size: Some(off), ..SetAttr::default() };
            self.fs.setattr(ino, &set).map_err(|e| Failure::fs("put", dst, &e))?;
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
    /// Image inode of a multiply-linked file -> the host path it was first copied to.
    links: HashMap<u64, PathBuf>,
    files: u64,
    verbose: bool,
}

/// Bytes and entries under an image inode (for the progress bar).
fn image_totals(fs: &Fs, st: &Stat, acc: &mut (u64, u64)) {
    acc.1 += 1;
    if mode::is_reg(st.mode) {
        acc.0 += st.size;
    } else if mode::is_dir(st.mode) {
        for e in fs.readdir(st.ino, 0).unwrap_or_default() {
            if let Ok(c) = fs.getattr(e.ino) {
                image_totals(fs, &c, acc);
            }
        }
    }
}

pub fn get(a: &GetArgs) -> CliResult {
    const CMD: &str = "get";
    with_image_read_only(CMD, &a.image, |fs| {
        let src = &a.path;
        let st = fs.lstat(src).map_err(|e| Failure::fs(CMD, src, &e))?;
        let mut totals = (0, 0);
        let tty = stderr_is_tty();
        if tty {
            image_totals(fs, &st, &mut totals);
        }
        let show = tty && (totals.0 >= PROGRESS_BYTES || totals.1 >= PROGRESS_FILES);
        let mut g = Get {
            fs,
            image: std::fs::metadata(&a.image).ok().map(|m| (m.dev(), m.ino())),
            root: Creds::current().uid == 0,
            progress: Progress::new(show, totals.0, true, "get"),
            links: HashMap::new(),
            files: 0,
            verbose: a.verbose,
        };
        let dst = &a.host_path;
        match std::fs::metadata(dst) {
            Ok(m) if m.is_dir() => match src.file_name() {
                Some(base) => g.copy(&st, src, &dst.join(base)),
                None if mode::is_dir(st.mode) => g.copy_dir_into(&st, src, dst),
                None => Err(Failure::new(CMD, src.display(), "cannot tell the source's name")),
            },
            _ => g.copy(&st, src, dst),
        }?;
        g.progress.done();
        Ok(())
    })
}

impl Get<'_> {
    /// Copies image inode `st` (named `src` in messages) to host path `dst`.
    fn copy(&mut self, st: &Stat, src: &Path, dst: &Path) -> CliResult {
        let herr = |e: std::io::Error| host_err("get", dst, &e);
        let is_dir = mode::is_dir(st.mode);
        match std::fs::symlink_metadata(dst) {
            Ok(old) if old.is_dir() => {
                if is_dir {
                    return self.copy_dir_into(st, src, dst);
                }
                return Err(Failure::new("get", dst.display(), "cannot overwrite a directory with a non-directory"));
            }
            Ok(_) if is_dir => {
                return Err(Failure::new("get", dst.display(), "cannot overwrite a non-directory with a directory"));
            }
            Ok(old) if Some((old.dev(), old.ino())) == self.image => {
                return Err(Failure::new("get", dst.display(), "is the image itself; not overwriting it"));
            }
            Ok(_) => std::fs::remove_file(dst).map_err(herr)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(herr(e)),
        }
        let kind = st.mode & mode::S_IFMT;
        if !(is_dir || kind == mode::S_IFREG || kind == mode::S_IFLNK) {
            let msg = format!("skipping {} (special files are not copied out)", crate::common::type_name(st.mode, 0));
            eprintln!("udax get: {}: {msg}", src.display());
            return Ok(());
        }
        if self.verbose {
            let mut o = std::io::stdout().lock();
            o.write_all(dst.as_os_str().as_bytes()).out()?;
            o.write_all(b"\n").out()?;
        }
        if is_dir {
            std::fs::create_dir(dst).map_err(herr)?;
            return self.copy_dir_into(st, src, dst);
        }
        self.files += 1;
        self.progress.message(format!("{} files", self.files));
        if kind == mode::S_IFLNK {
            let target = self.fs.readlink(st.ino).map_err(|e| Failure::fs("get", src, &e))?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), dst).map_err(herr)?;
            if self.root {
                std::os::unix::fs::lchown(dst, Some(st.uid), Some(st.gid)).map_err(herr)?;
            }
            return self.xattrs(st, src, dst);
        }
        if st.nlink > 1 {
            if let Some(first) = self.links.get(&st.ino) {
                return std::fs::hard_link(first, dst).map_err(herr);
            }
        }
        let f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst).map_err(herr)?;
        self.copy_data(st, src, &f, dst)?;
        self.attrs(st, src, dst, Some(&f))?;
        if st.nlink > 1 {
            self.links.insert(st.ino, dst.to_path_buf());
        }
        Ok(())
    }

    fn copy_dir_into(&mut self, st: &Stat, src: &Path, dst: &Path) -> CliResult {
        let mut kids = self.fs.readdir(st.ino, 0).map_err(|e| Failure::fs("get", src, &e))?;
        kids.sort_by(|a, b| a.name.cmp(&b.name));
        for k in kids {
            let name = OsStr::from_bytes(&k.name);
            let csrc = src.join(name);
            let cst = self.fs.getattr(k.ino).map_err(|e| Failure::fs("get", &csrc, &e))?;
            self.copy(&cst, &csrc, &dst.join(name))?;
        }
        let d = File::open(dst).map_err(|e| host_err("get", dst, &e))?;
        self.attrs(st, src, dst, Some(&d))
    }

    /// Reads image file `st` in 1 MiB chunks into host file `f`, leaving zero chunks as holes.
    fn copy_data(&mut self, st: &Stat, src: &Path, f: &File, dst: &Path) -> CliResult {
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        loop {
            let n = self.fs.read(st.ino, off, &mut buf).map_err(|e| Failure::fs("get", src, &e))?;
            if n == 0 {
                break;
            }
            if !is_zero(&buf[..n]) {
                f.write_all_at(&buf[..n], off).map_err(|e| host_err("get", dst, &e))?;
            }
            off += n as u64;
            self.progress.inc(n as u64);
        }
        f.set_len(off).map_err(|e| host_err("get", dst, &e))
    }

    /// Extended attributes of image inode `st` onto host path `dst` (after any chown, which
    /// would drop a file capability).
    fn xattrs(&self, st: &Stat, src: &Path, dst: &Path) -> CliResult {
        let names = self.fs.listxattr(st.ino).map_err(|e| Failure::fs("get", src, &e))?;
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let value = self.fs.getxattr(st.ino, name).map_err(|e| Failure::fs("get", src, &e))?;
            let flags = rustix::fs::XattrFlags::empty();
            if let Err(e) = rustix::fs::lsetxattr(dst, OsStr::from_bytes(name), &value, flags) {
                attribute_skipped("get", dst, name, std::io::Error::from(e));
            }
        }
        Ok(())
    }

    /// Owner (as root), extended attributes, permission bits, then times.
    fn attrs(&self, st: &Stat, src: &Path, dst: &Path, f: Option<&File>) -> CliResult {
        let herr = |e: std::io::Error| host_err("get", dst, &e);
        if self.root {
            std::os::unix::fs::lchown(dst, Some(st.uid), Some(st.gid)).map_err(herr)?;
        }
        self.xattrs(st, src, dst)?;
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
