//! Namespace commands: ls, cat, stat, mkdir, rm, mv, ln.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use udax::mode;
use udax::{Creds, Error, Fs, Stat};

use crate::common::{
    describe, each, mode_string, type_name, with_image, with_image_read_only, CliResult, Failure, OutResult,
};
use crate::json;
use crate::time::{fmt_full, fmt_minutes};
use crate::{CatArgs, LnArgs, LsArgs, MkdirArgs, MvArgs, RmArgs, StatArgs};

/// Read size for streaming file contents.
const CHUNK: usize = 1 << 20;

/// One line of a listing.
struct Row {
    name: Vec<u8>,
    st: Stat,
    target: Option<Vec<u8>>,
}

pub fn ls(a: &LsArgs) -> CliResult {
    const CMD: &str = "ls";
    with_image_read_only(CMD, &a.image, |fs| {
        let mut out = Listing { o: std::io::BufWriter::new(std::io::stdout().lock()), a, ids: Default::default() };
        // As ls: the operands that are not directories (all of them, with -d) first, together;
        // then each directory's contents, titled when there is more than one thing to show.
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        let mut status = each(&a.paths, |p| {
            let lst = fs.lstat(p).map_err(|e| Failure::fs(CMD, p, &e))?;
            // A symbolic link to a directory is listed as the directory unless -l or -d.
            let is_dir = mode::is_dir(lst.mode)
                || (mode::is_symlink(lst.mode) && !a.long && fs.stat(p).is_ok_and(|s| mode::is_dir(s.mode)));
            if is_dir && !a.directory {
                dirs.push(p.clone());
            } else {
                files.push(Row { name: p.as_os_str().as_bytes().to_vec(), st: lst, target: None });
            }
            Ok(())
        });
        files.sort_by(|x, y| x.name.cmp(&y.name));
        dirs.sort();
        // With --json: the operands that are not listed as directories, then each directory.
        let mut doc = a.json.then(|| (entries_json(fs, &files), Vec::new()));
        if doc.is_none() {
            out.rows(fs, &mut files)?;
        }
        let titled = a.paths.len() > 1 || a.recursive;
        let mut first = files.is_empty();
        // Depth first without recursion: trees may be deeper than the stack.
        let mut todo: Vec<PathBuf> = dirs.into_iter().rev().collect();
        while let Some(dir) = todo.pop() {
            if !first && doc.is_none() {
                out.o.write_all(b"\n").out()?;
            }
            first = false;
            if titled && doc.is_none() {
                out.o.write_all(dir.as_os_str().as_bytes()).out()?;
                out.o.write_all(b":\n").out()?;
            }
            let mut rows = match dir_rows(fs, &dir, a.all) {
                Ok((rows, unreadable)) => {
                    // As ls: an entry whose inode cannot be read (a damaged one) is said on
                    // stderr and left out; the others are listed, and the status says it.
                    out.o.flush().out()?;
                    for e in unreadable {
                        status = status.and(Err(e.said()));
                    }
                    rows
                }
                Err(e) => {
                    // Said now, between the listings, and the exit status says it too.
                    out.o.flush().out()?;
                    status = status.and(Err(e.said()));
                    continue;
                }
            };
            match &mut doc {
                Some((_, listed)) => {
                    listed.push(serde_json::json!({ "path": json::path(&dir), "entries": entries_json(fs, &rows) }))
                }
                None => out.rows(fs, &mut rows)?,
            }
            if a.recursive {
                let subdirs = rows.iter().filter(|r| mode::is_dir(r.st.mode) && r.name != b"." && r.name != b"..");
                let subdirs: Vec<PathBuf> = subdirs.map(|r| dir.join(OsStr::from_bytes(&r.name))).collect();
                todo.extend(subdirs.into_iter().rev());
            }
        }
        out.o.flush().out()?;
        status?;
        match doc {
            Some((files, directories)) => {
                json::print(serde_json::json!({ "files": files, "directories": directories }))
            }
            None => Ok(()),
        }
    })
}

/// `ls --json` entries: each name with its attributes (as `stat --json`) and a symbolic link's
/// target.
fn entries_json(fs: &Fs, rows: &[Row]) -> Vec<serde_json::Value> {
    let entry = |r: &Row| {
        let mut o = json::stat(&r.st);
        o.insert("name".into(), json::text(&r.name));
        if mode::is_symlink(r.st.mode) {
            o.insert("target".into(), fs.readlink(r.st.ino).map_or(serde_json::Value::Null, |t| json::text(&t)));
        }
        serde_json::Value::from(o)
    };
    rows.iter().map(entry).collect()
}

/// A directory's entries, sorted by name; with `all`, `.` and `..` first and dot names too.
/// Entries whose attributes cannot be read come back apart, as failures to report.
fn dir_rows(fs: &Fs, p: &Path, all: bool) -> Result<(Vec<Row>, Vec<Failure>), Failure> {
    const CMD: &str = "ls";
    let err = |e: Error| Failure::fs(CMD, p, &e);
    let dir = fs.resolve(p, true).map_err(err)?;
    let mut rows = Vec::new();
    if all {
        rows.push(Row { name: b".".to_vec(), st: fs.getattr(dir).map_err(err)?, target: None });
        rows.push(Row { name: b"..".to_vec(), st: fs.lookup(dir, b"..").map_err(err)?, target: None });
    }
    let mut unreadable = Vec::new();
    for e in fs.readdir(dir, 0).map_err(err)? {
        if !all && e.name.starts_with(b".") {
            continue;
        }
        match fs.getattr(e.ino) {
            Ok(st) => rows.push(Row { name: e.name, st, target: None }),
            Err(x) => unreadable.push(Failure::fs(CMD, p.join(OsStr::from_bytes(&e.name)), &x)),
        }
    }
    rows.sort_by(|x, y| x.name.cmp(&y.name));
    Ok((rows, unreadable))
}

/// Where `ls` prints, with its options and the owner and group names looked up so far.
struct Listing<'a, W: Write> {
    o: W,
    a: &'a LsArgs,
    ids: std::collections::HashMap<(bool, u32), String>,
}

impl<W: Write> Listing<'_, W> {
    /// A user (`group` false) or group name, or the number when the host has no name for it.
    fn id(&mut self, group: bool, id: u32) -> String {
        let file = if group { "/etc/group" } else { "/etc/passwd" };
        self.ids.entry((group, id)).or_insert_with(|| id_name(file, id).unwrap_or_else(|| id.to_string())).clone()
    }

    fn size(&self, st: &Stat) -> String {
        match st.mode & mode::S_IFMT {
            mode::S_IFCHR | mode::S_IFBLK => {
                format!("{}, {}", libc::major(st.rdev as libc::dev_t), libc::minor(st.rdev as libc::dev_t))
            }
            _ if self.a.human => crate::size::human_short(st.size),
            _ => st.size.to_string(),
        }
    }

    fn rows(&mut self, fs: &Fs, rows: &mut [Row]) -> CliResult {
        if !self.a.long {
            for r in rows.iter() {
                self.o.write_all(&r.name).out()?;
                self.o.write_all(b"\n").out()?;
            }
            return Ok(());
        }
        for r in rows.iter_mut().filter(|r| mode::is_symlink(r.st.mode)) {
            r.target = fs.readlink(r.st.ino).ok();
        }
        let cols: Vec<[String; 4]> = rows
            .iter()
            .map(|r| [r.st.nlink.to_string(), self.id(false, r.st.uid), self.id(true, r.st.gid), self.size(&r.st)])
            .collect();
        let w = |i: usize| cols.iter().map(|c| c[i].len()).max().unwrap_or(0);
        let (wl, wu, wg, ws) = (w(0), w(1), w(2), w(3));
        for (r, [links, user, group, size]) in rows.iter().zip(&cols) {
            let (mode, time) = (mode_string(r.st.mode), fmt_minutes(r.st.mtime));
            write!(self.o, "{mode} {links:>wl$} {user:<wu$} {group:<wg$} {size:>ws$} {time} ").out()?;
            self.o.write_all(&r.name).out()?;
            if let Some(t) = &r.target {
                self.o.write_all(b" -> ").out()?;
                self.o.write_all(t).out()?;
            }
            self.o.write_all(b"\n").out()?;
        }
        Ok(())
    }
}

pub fn cat(a: &CatArgs) -> CliResult {
    const CMD: &str = "cat";
    with_image_read_only(CMD, &a.image, |fs| {
        let mut o = std::io::stdout().lock();
        let mut buf = vec![0u8; CHUNK];
        each(&a.paths, |p| {
            let err = |e: Error| Failure::fs(CMD, p, &e);
            let ino = fs.resolve(p, true).map_err(err)?;
            let mut off = 0u64;
            loop {
                let n = fs.read(ino, &mut buf, off).map_err(err)?;
                if n == 0 {
                    break;
                }
                o.write_all(&buf[..n]).out()?;
                off += n as u64;
            }
            o.flush().out()
        })
    })
}

/// A name for a uid or gid from /etc/passwd or /etc/group, if there is one.
fn id_name(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == id).then(|| name.to_string())
    })
}

pub fn stat(a: &StatArgs) -> CliResult {
    const CMD: &str = "stat";
    with_image_read_only(CMD, &a.image, |fs| {
        let p = &a.path;
        let err = |e: Error| Failure::fs(CMD, p, &e);
        let st = if a.dereference { fs.stat(p) } else { fs.lstat(p) }.map_err(err)?;
        let target = if mode::is_symlink(st.mode) { Some(fs.readlink(st.ino).map_err(err)?) } else { None };
        if a.json {
            let mut o = json::stat(&st);
            o.insert("path".into(), json::path(p));
            if let Some(t) = &target {
                o.insert("target".into(), json::text(t));
            }
            return json::print(o);
        }
        let mut o = std::io::stdout().lock();
        let mut name = p.as_os_str().as_bytes().to_vec();
        if let Some(t) = &target {
            name.extend_from_slice(b" -> ");
            name.extend_from_slice(t);
        }
        o.write_all(b"  File: ").out()?;
        o.write_all(&name).out()?;
        writeln!(o).out()?;
        writeln!(
            o,
            "  Size: {:<10}\tBlocks: {:<10} IO Block: {:<6} {}",
            st.size,
            st.blocks,
            st.blksize,
            type_name(st.mode, st.size)
        )
        .out()?;
        let dev = match st.mode & mode::S_IFMT {
            mode::S_IFCHR | mode::S_IFBLK => {
                format!(" Device type: {},{}", libc::major(st.rdev as libc::dev_t), libc::minor(st.rdev as libc::dev_t))
            }
            _ => String::new(),
        };
        writeln!(o, "Device: {}\tInode: {:<11} Links: {:<5}{dev}", a.image.display(), st.ino, st.nlink).out()?;
        let uname = id_name("/etc/passwd", st.uid).unwrap_or_else(|| "UNKNOWN".into());
        let gname = id_name("/etc/group", st.gid).unwrap_or_else(|| "UNKNOWN".into());
        writeln!(
            o,
            "Access: ({:04o}/{})  Uid: ({:>5}/{:>8})   Gid: ({:>5}/{:>8})",
            st.mode & 0o7777,
            mode_string(st.mode),
            st.uid,
            uname,
            st.gid,
            gname
        )
        .out()?;
        writeln!(o, "Access: {}", fmt_full(st.atime)).out()?;
        writeln!(o, "Modify: {}", fmt_full(st.mtime)).out()?;
        writeln!(o, "Change: {}", fmt_full(st.ctime)).out()?;
        writeln!(o, " Birth: {}", fmt_full(st.crtime)).out()
    })
}

pub fn mkdir(a: &MkdirArgs) -> CliResult {
    const CMD: &str = "mkdir";
    with_image(CMD, &a.image, |fs| {
        each(&a.paths, |p| {
            let r = if a.parents {
                fs.mkdir_all(p, a.mode).map(drop)
            } else {
                fs.resolve_parent(p)
                    .and_then(|(parent, name)| fs.mkdir(parent, name, a.mode, Creds::current()))
                    .map(drop)
            };
            r.map_err(|e| Failure::fs(CMD, p, &e))
        })
    })
}

pub fn rm(a: &RmArgs) -> CliResult {
    const CMD: &str = "rm";
    with_image(CMD, &a.image, |fs| {
        each(&a.paths, |p| {
            let err = |e: Error| Failure::fs(CMD, p, &e);
            let st = match fs.lstat(p) {
                Err(Error::NotFound) if a.force => return Ok(()),
                r => r.map_err(err)?,
            };
            if mode::is_dir(st.mode) {
                if !a.recursive {
                    return Err(Failure::fs(CMD, p, &Error::IsDir));
                }
                if st.ino == udax::ROOT_INO {
                    let why = "refusing to remove the root directory (name what it holds)";
                    return Err(Failure::new(CMD, p.display(), why).errno(libc::EBUSY));
                }
                fs.remove_all(p).map_err(err)
            } else {
                fs.unlink_path(p).map_err(err)
            }
        })
    })
}

/// Where `src` lands when the destination is `dst`: inside it when it is an existing directory
/// (following symlinks, as mv and ln do), else `dst` itself.
fn into_dir(fs: &Fs, src: &Path, dst: &Path) -> PathBuf {
    match (fs.stat(dst), src.file_name()) {
        (Ok(st), Some(base)) if mode::is_dir(st.mode) => dst.join(base),
        _ => dst.to_path_buf(),
    }
}

pub fn mv(a: &MvArgs) -> CliResult {
    const CMD: &str = "mv";
    with_image(CMD, &a.image, |fs| {
        let dst = into_dir(fs, &a.src, &a.dst);
        fs.rename_path(&a.src, &dst).map_err(|e| {
            Failure::new(CMD, format!("{} -> {}", a.src.display(), dst.display()), describe(&e)).errno(e.errno())
        })
    })
}

pub fn ln(a: &LnArgs) -> CliResult {
    const CMD: &str = "ln";
    with_image(CMD, &a.image, |fs| {
        let link = into_dir(fs, &a.target, &a.link);
        let r = if a.symbolic { fs.symlink_path(&a.target, &link) } else { fs.link_path(&a.target, &link) };
        r.map(drop).map_err(|e| {
            Failure::new(CMD, format!("{} -> {}", link.display(), a.target.display()), describe(&e)).errno(e.errno())
        })
    })
}
