//! Small commands people reach for out of habit: touch, chmod, chown, df, du.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use udax::{mode, Creds, Error, Fs, OpenOptions, SetAttr, SetTime};

use crate::common::{each, with_image, with_image_read_only, CliResult, Failure, OutResult};
use crate::json;
use crate::size::human_short;
use crate::{ChmodArgs, ChownArgs, DfArgs, DuArgs, TouchArgs};

pub fn touch(a: &TouchArgs) -> CliResult {
    const CMD: &str = "touch";
    with_image(CMD, &a.image, |fs| {
        each(&a.paths, |p| {
            let now = SetAttr { atime: Some(SetTime::Now), mtime: Some(SetTime::Now), ..Default::default() };
            let r = match fs.setattr_path(p, true, &now) {
                Err(Error::NotFound) if a.no_create => Ok(()),
                Err(Error::NotFound) => fs.open_as(p, OpenOptions::create(), Creds::current()).map(drop),
                r => r.map(drop),
            };
            r.map_err(|e| Failure::fs(CMD, p, &e))
        })
    })
}

pub fn chmod(a: &ChmodArgs) -> CliResult {
    const CMD: &str = "chmod";
    with_image(CMD, &a.image, |fs| {
        each(&a.paths, |p| {
            let set = SetAttr { mode: Some(a.mode), ..Default::default() };
            fs.setattr_path(p, true, &set).map(drop).map_err(|e| Failure::fs(CMD, p, &e))
        })
    })
}

/// A user (`/etc/passwd`) or group (`/etc/group`) by name or number.
fn host_id(file: &str, name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[0] == name).then(|| f[2].parse().ok()).flatten()
    })
}

pub fn chown(a: &ChownArgs) -> CliResult {
    const CMD: &str = "chown";
    let (user, group) = a.owner.split_once(':').unwrap_or((&a.owner, ""));
    let lookup = |file: &str, what: &str, name: &str| -> Result<Option<u32>, Failure> {
        if name.is_empty() {
            return Ok(None);
        }
        host_id(file, name).map(Some).ok_or_else(|| Failure::plain(CMD, format!("invalid {what}: {name:?}")))
    };
    let uid = lookup("/etc/passwd", "user", user)?;
    let gid = lookup("/etc/group", "group", group)?;
    if uid.is_none() && gid.is_none() {
        return Err(Failure::plain(
            CMD,
            format!("nothing to change in {:?}: give OWNER, OWNER:GROUP or :GROUP", a.owner),
        ));
    }
    with_image(CMD, &a.image, |fs| {
        each(&a.paths, |p| {
            // chown(2) of a non-directory drops set-user-ID and set-group-ID, as Linux does.
            let set = SetAttr { uid, gid, drop_set_id: Some(Creds::current()), ..Default::default() };
            fs.setattr_path(p, true, &set).map(drop).map_err(|e| Failure::fs(CMD, p, &e))
        })
    })
}

/// A count of 1024-byte units, or `-h` sizes.
fn units(bytes: u64, human: bool) -> String {
    if human {
        human_short(bytes)
    } else {
        bytes.div_ceil(1024).to_string()
    }
}

pub fn df(a: &DfArgs) -> CliResult {
    const CMD: &str = "df";
    let mut rows = vec![if a.inodes {
        ["Image", "Inodes", "IUsed", "IFree", "IUse%"].map(String::from)
    } else {
        ["Image", if a.human { "Size" } else { "1K-blocks" }, "Used", "Available", "Use%"].map(String::from)
    }];
    let percent =
        |used: u64, total: u64| if total == 0 { "-".to_string() } else { format!("{}%", (used * 100).div_ceil(total)) };
    let mut listed = Vec::new();
    let status = each(&a.images, |img| {
        with_image_read_only(CMD, img, |fs| {
            let s = fs.statfs();
            if a.json {
                let mut o = json::space(&s);
                o.insert("image".into(), json::path(img));
                listed.push(serde_json::Value::from(o));
                return Ok(());
            }
            let name = img.display().to_string();
            rows.push(if a.inodes {
                let used = s.inodes - s.inodes_free;
                [name, s.inodes.to_string(), used.to_string(), s.inodes_free.to_string(), percent(used, s.inodes)]
            } else {
                let (total, free) = (s.blocks * s.block_size, s.blocks_free * s.block_size);
                let used = total - free;
                [name, units(total, a.human), units(used, a.human), units(free, a.human), percent(used, total)]
            });
            Ok(())
        })
    });
    if a.json {
        status?;
        return json::print(serde_json::json!({ "images": listed }));
    }
    let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut o = std::io::stdout().lock();
    for r in &rows {
        // The name to the left, numbers to the right, as df aligns them.
        let mut line = format!("{:<w$}", r[0], w = widths[0]);
        for (cell, w) in r.iter().zip(&widths).skip(1) {
            line.push_str(&format!(" {cell:>w$}"));
        }
        writeln!(o, "{}", line.trim_end()).out()?;
    }
    status
}

pub fn du(a: &DuArgs) -> CliResult {
    const CMD: &str = "du";
    with_image_read_only(CMD, &a.image, |fs| {
        let mut o = Rows {
            text: (!a.json).then(|| std::io::BufWriter::new(std::io::stdout().lock())),
            json: Vec::new(),
            human: a.human,
        };
        let mut seen = HashSet::new();
        let status = each(&a.paths, |p| {
            let total = usage(fs, p, a, &mut seen, &mut o)?;
            if a.summarize {
                o.print(total, p)?;
            }
            Ok(())
        });
        if let Some(t) = &mut o.text {
            t.flush().out()?;
        }
        status?;
        if a.json {
            return json::print(serde_json::json!({ "image": json::path(&a.image), "entries": o.json }));
        }
        Ok(())
    })
}

/// Where du's rows go: lines on stdout, or the entries of its JSON object.
struct Rows<W: Write> {
    text: Option<W>,
    json: Vec<serde_json::Value>,
    human: bool,
}

impl<W: Write> Rows<W> {
    fn print(&mut self, bytes: u64, p: &Path) -> CliResult {
        let Some(o) = &mut self.text else {
            self.json.push(serde_json::json!({ "path": json::path(p), "allocated_bytes": bytes }));
            return Ok(());
        };
        write!(o, "{}\t", units(bytes, self.human)).out()?;
        o.write_all(p.as_os_str().as_bytes()).out()?;
        o.write_all(b"\n").out()
    }
}

/// A directory being counted: its path, its bytes so far, the entries still to visit.
type Frame = (PathBuf, u64, Vec<(PathBuf, udax::Stat)>);

/// Bytes allocated under `p` (hard links counted once), printing directories (and with -a
/// files) as du does, after their contents. Walks with its own stack: trees may be deeper
/// than the thread's.
fn usage<W: Write>(fs: &Fs, p: &Path, a: &DuArgs, seen: &mut HashSet<u64>, o: &mut Rows<W>) -> Result<u64, Failure> {
    const CMD: &str = "du";
    let err = |p: &Path, e: Error| Failure::fs(CMD, p, &e);
    let top = fs.lstat(p).map_err(|e| err(p, e))?;
    let mut stack: Vec<Frame> = Vec::new();
    let mut total_top = 0;
    let mut visit = |path: PathBuf, st: udax::Stat, stack: &mut Vec<_>| -> Result<Option<u64>, Failure> {
        let own = if seen.insert(st.ino) { st.blocks * 512 } else { 0 };
        if !mode::is_dir(st.mode) {
            return Ok(Some(own));
        }
        let mut entries = Vec::new();
        for e in fs.readdir(st.ino, 0).map_err(|e| err(&path, e))? {
            let child = path.join(OsStr::from_bytes(&e.name));
            let cst = fs.getattr(e.ino).map_err(|x| err(&child, x))?;
            entries.push((child, cst));
        }
        entries.reverse();
        stack.push((path, own, entries));
        Ok(None)
    };
    if let Some(bytes) = visit(p.to_path_buf(), top, &mut stack)? {
        if a.all && !a.summarize {
            o.print(bytes, p)?;
        }
        return Ok(bytes);
    }
    while let Some((path, sum, mut rest)) = stack.pop() {
        match rest.pop() {
            Some((child, st)) => {
                stack.push((path, sum, rest));
                if let Some(bytes) = visit(child.clone(), st, &mut stack)? {
                    if a.all && !a.summarize {
                        o.print(bytes, &child)?;
                    }
                    stack.last_mut().expect("the parent").1 += bytes;
                }
            }
            None => {
                if !a.summarize {
                    o.print(sum, &path)?;
                }
                match stack.last_mut() {
                    Some(parent) => parent.1 += sum,
                    None => total_top = sum,
                }
            }
        }
    }
    Ok(total_top)
}
