//! Damaged images: the template the robustness tests damage, the damage they do ([`Mutation`]),
//! and [`exercise`], which drives any image through everything a medium can reach — mount
//! (recovery included), fsck, a walk of the tree, a few changes, unmount, a second mount and
//! fsck. `tests/corrupt.rs` (proptest) and `fuzz/fuzz_targets/image.rs` (libFuzzer) share it.
//!
//! The rule it holds udax to: whatever the bytes, every call returns — an error is fine —
//! without a panic, a hang, an out-of-bounds access or an allocation sized by an unchecked
//! on-media number; and damage that mount tolerates stays tolerable — an image that mounts
//! still mounts after changes, and one that checks clean still checks clean
//! ([`Outcome::violation`]).

mod mutation;

use mutation::{is_zero, PAGE};
pub use mutation::{Mutation, PlantedEntry, RecordBody, Region, Template, Value};

use std::collections::HashSet;

use crate::check::{self, Finding};
use crate::error::{Error, Result};
use crate::fs::{Creds, Fs, RenameMode, SetAttr};
use crate::layout::{mode, ROOT_INO};
use crate::{Device, FallocMode};

/// Most bytes [`exercise`] reads from one file (half from its start, half from its end).
const READ_CAP: u64 = 64 << 10;
/// Most directory entries [`exercise`] visits in one walk.
const WALK_CAP: usize = 4096;

/// What [`exercise`] saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Why the first mount refused the image.
    pub refused: Option<Error>,
    /// fsck's findings after the first mount.
    pub findings: Option<Vec<Finding>>,
    /// After the changes and an unmount: the second mount's error, or its fsck findings.
    pub remount: Option<Result<Vec<Finding>>>,
    /// A read-only open (before the read-write one) changed the image's bytes.
    pub read_only_wrote: bool,
    /// How `Fs::repair` on a fresh copy fell short: it failed, left findings (also after a
    /// remount), or lost a file or directory that was reachable.
    pub repair: Option<String>,
}

impl Outcome {
    /// Damage mount tolerates stays tolerable: an image that mounted must mount again after
    /// changes, and one that checked clean must still check clean. Says how it did not.
    pub fn violation(&self) -> Option<String> {
        if self.read_only_wrote {
            return Some("a read-only open changed the image".into());
        }
        if let Some(r) = &self.repair {
            return Some(r.clone());
        }
        let before = self.findings.as_ref()?;
        match &self.remount {
            Some(Ok(after)) if before.is_empty() && !after.is_empty() => {
                Some(format!("clean image checks dirty after changes: {after:?}"))
            }
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(format!("image that mounted fails to mount after changes: {e} (before: {before:?})")),
            None => Some("mounted image could not be unmounted".into()),
        }
    }
}

/// Mounts a copy of `image` and, if it mounts, checks it, walks it, changes it, unmounts it,
/// mounts it again and checks it again (fsck decodes everything the second mount loaded). Errors are expected; a panic or a hang is a bug.
pub fn exercise(image: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    let dev = match filled(image) {
        Ok(dev) => dev,
        Err(e) => {
            out.refused = Some(e);
            return out;
        }
    };
    // First read-only, through the device's own descriptor: mount (replaying into a private
    // view), check, walk, try every change (each must be EROFS), unmount; nothing may reach
    // the image.
    if let Some(fd) = dev.fd() {
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        if let Ok(fs) = Fs::open_image_read_only(std::path::Path::new(&path)) {
            check::check(&fs, &mut |_, _| {});
            let found = walk(&fs);
            change(&fs, &found);
            let _ = fs.unmount();
            out.read_only_wrote = !same_bytes(&dev, image);
        }
    }
    let fs = match Fs::mount(dev) {
        Ok(fs) => fs,
        Err(e) => {
            out.refused = Some(e);
            return out;
        }
    };
    out.findings = Some(check::check(&fs, &mut |_, _| {}).findings);
    let found = walk(&fs);
    change(&fs, &found);
    out.remount = match fs.unmount() {
        Ok(Some(dev)) => Some(Fs::mount(dev).map(|fs| check::check(&fs, &mut |_, _| {}).findings)),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    };
    out.repair = repair(image).err();
    out
}

/// On a fresh copy that mounts: `Fs::repair`, after which fsck must find nothing (also after a
/// remount) and every regular file and directory the walk reached must still be there, at the
/// same path with the same bytes.
fn repair(image: &[u8]) -> std::result::Result<(), String> {
    let Ok(fs) = filled(image).and_then(Fs::mount) else { return Ok(()) };
    let before = reachable(&fs);
    let done = fs.repair().map_err(|e| format!("repair failed: {e}"))?;
    let clean = |fs: &Fs, when: &str| {
        let left = check::check(fs, &mut |_, _| {}).findings;
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("{when}: findings after repair {done:?}: {left:?}")),
        }
    };
    clean(&fs, "repaired")?;
    let after = reachable(&fs);
    if let Some((path, _)) = before.iter().find(|(p, sum)| after.get(*p) != Some(sum)) {
        return Err(format!("repair lost or changed {path} ({done:?})"));
    }
    match fs.unmount() {
        Ok(Some(dev)) => {
            let fs = Fs::mount(dev).map_err(|e| format!("repaired image fails to mount: {e}"))?;
            clean(&fs, "remounted")
        }
        Ok(None) => Ok(()),
        Err(e) => Err(format!("repaired image could not be unmounted: {e}")),
    }
}

/// Every directory and regular file reachable from the root (up to [`WALK_CAP`] entries), by
/// path: a directory as its entry count, a file as a checksum of its first [`READ_CAP`] bytes.
fn reachable(fs: &Fs) -> std::collections::BTreeMap<String, (u32, u64, u32)> {
    let mut out = std::collections::BTreeMap::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, path)) = stack.pop() {
        if !seen.insert(dir) || out.len() >= WALK_CAP {
            continue;
        }
        let Ok(entries) = fs.readdir(dir, 0) else { continue };
        for e in entries {
            let child = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            let Ok(st) = fs.getattr(e.ino) else { continue };
            match st.mode & mode::S_IFMT {
                mode::S_IFDIR => {
                    out.insert(child.clone(), (mode::S_IFDIR, 0, 0));
                    stack.push((e.ino, child));
                }
                mode::S_IFREG => {
                    let mut buf = vec![0u8; st.size.min(READ_CAP) as usize];
                    let sum = match fs.read(e.ino, &mut buf, 0) {
                        Ok(n) => crc32c::crc32c(&buf[..n]),
                        Err(_) => 0,
                    };
                    out.insert(child, (mode::S_IFREG, st.size, sum));
                }
                _ => {}
            }
        }
    }
    out
}

/// An anonymous device holding `image`.
fn filled(image: &[u8]) -> Result<Device> {
    let dev = Device::anonymous(image.len() as u64)?;
    // The device starts zeroed: pages of zeros need no copy (or page fault).
    for (i, page) in image.chunks(PAGE).enumerate() {
        if !is_zero(page) {
            dev.write((i * PAGE) as u64, page)?;
        }
    }
    Ok(dev)
}

/// Whether `dev` still holds exactly `image`.
fn same_bytes(dev: &Device, image: &[u8]) -> bool {
    let mut buf = vec![0u8; PAGE];
    image.chunks(PAGE).enumerate().all(|(i, page)| {
        let b = &mut buf[..page.len()];
        dev.read((i * PAGE) as u64, b).is_ok() && b == page
    })
}

/// What the walk found to change: one of each kind, with the directory holding it.
#[derive(Debug, Default)]
struct Found {
    file: Option<(u64, u64, Vec<u8>)>,
    dir: Option<(u64, u64, Vec<u8>)>,
    other: Option<(u64, u64, Vec<u8>)>,
}

/// Reads everything reachable: every directory, every entry's attributes, every file (up to
/// [`READ_CAP`] bytes), every link, and paths through links.
fn walk(fs: &Fs) -> Found {
    let mut found = Found::default();
    let mut seen = HashSet::new();
    let mut stack = vec![(ROOT_INO, String::from("/"))];
    let mut budget = WALK_CAP;
    while let Some((dir, path)) = stack.pop() {
        if !seen.insert(dir) || budget == 0 {
            continue;
        }
        let _ = fs.lookup(dir, b"..");
        let Ok(entries) = fs.readdir(dir, 0) else { continue };
        if let Some(mid) = entries.get(entries.len() / 2) {
            let _ = fs.readdir(dir, mid.cookie);
        }
        for e in entries.into_iter().take(budget) {
            budget -= 1;
            let _ = fs.lookup(dir, &e.name);
            let Ok(st) = fs.getattr(e.ino) else { continue };
            if let Ok(names) = fs.listxattr(e.ino) {
                for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                    let _ = fs.getxattr(e.ino, name);
                }
            }
            let child = format!("{path}{}", String::from_utf8_lossy(&e.name));
            let here = Some((dir, e.ino, e.name.clone()));
            match st.mode & mode::S_IFMT {
                mode::S_IFDIR => {
                    found.dir = found.dir.or(here);
                    stack.push((e.ino, format!("{child}/")));
                }
                mode::S_IFREG => {
                    read_capped(fs, e.ino, st.size);
                    let _ = fs.extents(e.ino);
                    let _ = fs.seek_data(e.ino, 0);
                    let _ = fs.seek_hole(e.ino, st.size / 2);
                    found.file = found.file.or(here);
                }
                mode::S_IFLNK => {
                    let _ = fs.readlink(e.ino);
                    let _ = fs.stat(&child);
                    let _ = fs.read_dir_path(&child);
                    found.other = found.other.or(here);
                }
                _ => found.other = found.other.or(here),
            }
        }
    }
    found
}

fn read_capped(fs: &Fs, ino: u64, size: u64) {
    let half = READ_CAP / 2;
    let mut buf = vec![0u8; size.min(READ_CAP) as usize];
    if size <= READ_CAP {
        let _ = fs.read(ino, &mut buf, 0);
    } else {
        let (a, b) = buf.split_at_mut(half as usize);
        let _ = fs.read(ino, a, 0);
        let _ = fs.read(ino, b, size - half);
    }
}

/// A few changes of every kind, on new names and on what the walk found; errors are ignored.
fn change(fs: &Fs, found: &Found) {
    let who = Creds::ROOT;
    let r = ROOT_INO;
    if let Ok(st) = fs.create(r, b"robust-new", 0o644, who) {
        let f = st.ino;
        let _ = fs.write(f, &[0x5a; 5000], 3000);
        let _ = fs.truncate(f, 1000);
        let _ = fs.fallocate(f, 0, 20_000, FallocMode::Allocate { keep_size: false });
        let _ = fs.fallocate(f, 2000, 4000, FallocMode::PunchHole);
        let _ = fs.fallocate(f, 9000, 3000, FallocMode::ZeroRange { keep_size: true });
        let _ = fs.write(f, b"far", 100_000);
        let _ = fs.link(f, r, b"robust-link");
        let _ = fs.rename(r, b"robust-new", r, b"robust-renamed", RenameMode::Replace);
        let _ = fs.unlink(r, b"robust-link");
    }
    if let Ok(d) = fs.mkdir(r, b"robust-dir", 0o755, who) {
        let _ = fs.create(d.ino, b"inner", 0o600, who);
        let _ = fs.symlink(d.ino, b"sym", b"../robust-renamed", who);
        let _ = fs.rmdir(r, b"robust-dir");
        if let Some((_, into, _)) = &found.dir {
            let _ = fs.rename(r, b"robust-dir", *into, b"robust-moved", RenameMode::NoReplace);
        }
    }
    if let Some((parent, ino, name)) = &found.file {
        let _ = fs.write(*ino, b"overwrite in place", 0);
        let _ = fs.append(*ino, &[1; 5000]);
        if let Ok(st) = fs.getattr(*ino) {
            let _ = fs.truncate(*ino, st.size / 2);
            let _ = fs.fallocate(*ino, st.size / 4, 4096, FallocMode::PunchHole);
        }
        let _ = fs.setattr(*ino, &SetAttr { mode: Some(0o600), ..Default::default() });
        let _ = fs.setxattr(*ino, b"user.robust", &[3; 200], Default::default());
        let _ = fs.setxattr(*ino, b"user.robust", &[4; 20], Default::default());
        let _ = fs.removexattr(*ino, b"user.two");
        let _ = fs.rename(*parent, name, r, b"robust-file", RenameMode::Replace);
        let _ = fs.link(*ino, r, b"robust-file-link");
        let _ = fs.unlink(r, b"robust-file");
    }
    if let Some((parent, ino, name)) = &found.dir {
        let _ = fs.create(*ino, b"robust-child", 0o644, who);
        let _ = fs.rename(*parent, name, r, b"robust-up", RenameMode::Replace);
        let _ = fs.rename(r, b"robust-up", r, b"robust-renamed", RenameMode::Exchange);
        let _ = fs.unlink(*ino, b"robust-child");
        let _ = fs.rmdir(r, b"robust-up");
    }
    if let Some((parent, _, name)) = &found.other {
        let _ = fs.unlink(*parent, name);
    }
    let _ = fs.unlink(r, b"robust-renamed");
}
