//! fsck: every invariant of a udax image, checked from the raw medium.
//!
//! The checker decodes the on-media structures itself (with the same checked decoders mount
//! uses) rather than trusting the mounted `Fs`'s in-memory state, and then also compares the two,
//! so it catches a mount that built a wrong picture as well as a bad image. Invariants:
//!
//! - every inode slot in use decodes (mode, times, extents, overflow chain, attribute block,
//!   directory data); one that does not is reported and left out of the other checks (mount
//!   keeps it out of use the same way), and each run of directory units that holds no entry
//!   that decodes is reported;
//! - every data block is owned at most once, and the free count matches what is owned;
//! - extents are sorted and disjoint, and no written extent lies past the page holding EOF (a
//!   mapped EOF page owns its whole page of blocks) unless the inode holds a lane the next mount
//!   folds (DESIGN.md "Appends by lease"); directories are whole written blocks.
//!   Bytes past EOF may be anything (a mapping may store there): growing the file zeroes them;
//! - link counts: files = entries naming them, directories = 2 + subdirectories, each directory
//!   named exactly once (the root never), with `parent` naming the directory that holds it;
//! - the tree is connected: every inode in use is reachable from the root;
//! - every entry names an inode in use, with the matching type.

use std::collections::VecDeque;

use crate::dir::DT_DIR;
use crate::fs::Fs;
use crate::inode::Inode;
use crate::layout::{mode, off, RawInode, INODE_EXTENTS_OFF, ROOT_INO, SYMLINK_MAX};
use crate::sync::rd;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Short class of problem, e.g. "link count", "block owned twice".
    pub kind: &'static str,
    /// The inode it concerns, if any.
    pub ino: Option<u64>,
    /// Device byte offset it concerns, if any.
    pub at: Option<u64>,
    /// What is wrong, in words.
    pub detail: String,
}

/// What fsck saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Every problem, in the order found; empty for a clean image.
    pub findings: Vec<Finding>,
    /// Inodes in use on the medium.
    pub inodes: u64,
    /// Of those, directories.
    pub directories: u64,
    /// Of those, regular files.
    pub regular_files: u64,
    /// Of those, symbolic links.
    pub symlinks: u64,
    /// Of those, FIFOs, sockets and device nodes.
    pub special_files: u64,
    /// Extents in all extent maps.
    pub extents: u64,
    /// Data blocks some inode owns.
    pub blocks_used: u64,
    /// Data blocks no inode owns.
    pub blocks_free: u64,
}

impl Report {
    /// Whether fsck found no problem.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    fn find(&mut self, kind: &'static str, ino: Option<u64>, at: Option<u64>, detail: impl Into<String>) {
        self.findings.push(Finding { kind, ino, at, detail: detail.into() });
    }
}

/// Checks the image under `fs`; `progress(done, total)` counts inodes.
pub fn check(fs: &Fs, progress: &mut dyn FnMut(u64, u64)) -> Report {
    let geo = *fs.geometry();
    let mut r = Report::default();
    let mut owner = vec![0u64; geo.data_blocks as usize];
    let mut inodes: Vec<Option<Inode>> = Vec::with_capacity(geo.inode_count as usize + 1);
    let damaged: std::collections::HashSet<u64> = fs.damaged_inodes().iter().map(|d| d.0).collect();
    inodes.push(None);

    // Pass 1: decode every slot, claim blocks, check extents against sizes.
    for ino in 1..=geo.inode_count {
        if ino % 4096 == 0 {
            progress(ino, geo.inode_count);
        }
        let inode = check_inode(fs, ino, &mut owner, &mut r);
        if let Some(inode) = &inode {
            compare_with_memory(fs, inode, &mut r);
        }
        inodes.push(inode);
    }
    progress(geo.inode_count, geo.inode_count);

    // Pass 2: directory entries, link counts, parent pointers, connectivity.
    check_names(&inodes, &damaged, &mut r);
    check_reachable(&inodes, &mut r);

    let mounted = fs.inode_numbers().len() as u64;
    if mounted != r.inodes {
        r.find("memory", None, None, format!("{} inodes in use on the medium, {mounted} in the mount", r.inodes));
    }

    // Free space.
    r.blocks_used = owner.iter().filter(|&&o| o != 0).count() as u64;
    r.blocks_free = geo.data_blocks - r.blocks_used;
    // The mount also keeps out of use what damaged inodes may reference (until repair clears
    // them): those blocks are free on the medium, not in the mount.
    let held_unowned: u64 = fs
        .held_blocks()
        .iter()
        .flat_map(|run| run.start..run.start + run.len)
        .filter(|&b| owner[(b - geo.data_start) as usize] == 0)
        .count() as u64;
    let mounted_free = fs.statfs().blocks_free;
    if mounted_free + held_unowned != r.blocks_free {
        r.find(
            "free space",
            None,
            None,
            format!(
                "{} blocks unowned on the medium but the mount counts {mounted_free} free and {held_unowned} held",
                r.blocks_free
            ),
        );
    }
    r
}

/// Pass 1 for one inode slot: decode it, claim its blocks in `owner`, check its extents
/// against its size, load a directory's index. None for a free or undecodable slot.
fn check_inode(fs: &Fs, ino: u64, owner: &mut [u64], r: &mut Report) -> Option<Inode> {
    let dev = fs.device();
    let geo = *fs.geometry();
    let bs = geo.block_size;
    let at = geo.inode_at(ino);
    let inode = match Inode::load_full(dev, &geo, ino) {
        Ok(Some(i)) => i,
        Ok(None) => return None,
        Err(e) => {
            r.find("damaged inode", Some(ino), Some(at), format!("{e}; the inode cannot be used"));
            return None;
        }
    };
    r.inodes += 1;
    let a = inode.attr;
    match a.mode & mode::S_IFMT {
        mode::S_IFDIR => r.directories += 1,
        mode::S_IFREG => r.regular_files += 1,
        mode::S_IFLNK => r.symlinks += 1,
        _ => r.special_files += 1,
    }
    if a.generation == 0 {
        r.find("inode", Some(ino), Some(at + off!(RawInode, generation)), "generation 0 on an inode in use");
    }
    for run in inode.owned_runs() {
        for b in run.start..run.start + run.len {
            let slot = &mut owner[(b - geo.data_start) as usize];
            if *slot != 0 {
                r.find(
                    "block owned twice",
                    Some(ino),
                    Some(geo.block_at(b)),
                    format!("block {b} also belongs to inode {}", *slot),
                );
            } else {
                *slot = ino;
            }
        }
    }
    r.extents += inode.ext.len() as u64;
    let eof_block = a.size.div_ceil(bs);
    let eof_page_end = a.size.next_multiple_of(crate::PAGE.max(bs)) / bs;
    // A lane not folded yet (the image was not mounted since): its lease's blocks lie past EOF
    // until the next mount folds it.
    for e in inode.ext.iter().filter(|_| inode.lane == 0) {
        if e.state == crate::extent::State::Written && e.end() > eof_page_end {
            r.find(
                "extent past EOF",
                Some(ino),
                Some(at + INODE_EXTENTS_OFF),
                format!(
                    "written blocks {}..{} but size {} ends in the page ending at block {eof_page_end}",
                    e.logical,
                    e.end(),
                    a.size
                ),
            );
        }
    }
    if mode::is_symlink(a.mode) {
        let covered: u64 = inode.ext.iter().map(|e| e.len).sum();
        if a.size == 0 || a.size > SYMLINK_MAX as u64 || covered != eof_block {
            r.find("symlink", Some(ino), Some(at), format!("size {} with {covered} blocks", a.size));
        }
    }
    for (pos, units, what) in inode.dir.iter().flat_map(|d| d.damaged()) {
        r.find(
            "damaged directory entry",
            Some(ino),
            fs.dir_off(&inode, pos).ok(),
            format!("bad {what}: {units} unit(s) at byte {pos} of the directory hold no entry that can be used"),
        );
    }
    Some(inode)
}

/// Pass 2: every entry names an inode in use of its type, directories' parents and link
/// counts match the entries naming them.
fn check_names(inodes: &[Option<Inode>], damaged: &std::collections::HashSet<u64>, r: &mut Report) {
    let mut refs = vec![0u64; inodes.len()];
    let mut held_by = vec![0u64; inodes.len()];
    for inode in inodes.iter().flatten() {
        let Some(dir) = &inode.dir else { continue };
        for (name, e) in dir.entries_after(None) {
            let name = String::from_utf8_lossy(name);
            let Some(Some(target)) = inodes.get(e.ino as usize) else {
                let free = if damaged.contains(&e.ino) { "damaged" } else { "free" };
                r.find("dangling entry", Some(inode.ino), None, format!("{name:?} names {free} inode {}", e.ino));
                continue;
            };
            refs[e.ino as usize] += 1;
            if mode::dtype(target.attr.mode) != e.dtype {
                r.find(
                    "entry type",
                    Some(inode.ino),
                    None,
                    format!("{name:?} says type {} for inode {}", e.dtype, e.ino),
                );
            }
            if e.dtype == DT_DIR {
                held_by[e.ino as usize] = inode.ino;
                if target.attr.parent != inode.ino {
                    r.find(
                        "directory parent",
                        Some(e.ino),
                        None,
                        format!("held by {} but its parent says {}", inode.ino, target.attr.parent),
                    );
                }
            }
        }
    }
    for inode in inodes.iter().flatten() {
        let ino = inode.ino;
        let n = refs[ino as usize];
        if inode.is_dir() {
            let want_refs = u64::from(ino != ROOT_INO);
            if n != want_refs {
                r.find("directory links", Some(ino), None, format!("named by {n} entries, expected {want_refs}"));
            }
            if let Some(d) = &inode.dir {
                let want = 2 + d.subdirs();
                if u64::from(inode.attr.nlink) != want {
                    r.find(
                        "link count",
                        Some(ino),
                        None,
                        format!("nlink {} but 2 + {} subdirectories", inode.attr.nlink, d.subdirs()),
                    );
                }
            }
        } else if u64::from(inode.attr.nlink) != n {
            r.find("link count", Some(ino), None, format!("nlink {} but named by {n} entries", inode.attr.nlink));
        }
    }
}

/// Every inode in use is reachable from the root.
fn check_reachable(inodes: &[Option<Inode>], r: &mut Report) {
    let mut seen = vec![false; inodes.len()];
    let mut queue = VecDeque::from([ROOT_INO]);
    match inodes.get(ROOT_INO as usize) {
        Some(Some(root)) if root.is_dir() => seen[ROOT_INO as usize] = true,
        _ => {
            r.find("root", Some(ROOT_INO), None, "the root is not a directory in use");
            queue.clear();
        }
    }
    while let Some(d) = queue.pop_front() {
        let Some(Some(inode)) = inodes.get(d as usize) else { continue };
        let Some(dir) = &inode.dir else { continue };
        for (_, e) in dir.entries_after(None) {
            let i = e.ino as usize;
            if i < seen.len() && !seen[i] && inodes[i].is_some() {
                seen[i] = true;
                if e.dtype == DT_DIR {
                    queue.push_back(e.ino);
                }
            }
        }
    }
    for inode in inodes.iter().flatten() {
        if !seen[inode.ino as usize] {
            r.find("disconnected", Some(inode.ino), None, "not reachable from the root");
        }
    }
}

/// The mount's in-memory picture must agree with the medium.
fn compare_with_memory(fs: &Fs, inode: &Inode, r: &mut Report) {
    let Ok(node) = fs.node(inode.ino) else {
        r.find("memory", Some(inode.ino), None, "in use on the medium but unknown to the mount");
        return;
    };
    let g = rd(&node.inode);
    // A read-only mount folds a lane in memory only.
    let folded = crate::layout::lane_size(inode.lane).map_or(inode.attr.size, |w| w.max(inode.attr.size));
    if g.attr != (crate::inode::Attr { size: folded, ..inode.attr }) {
        r.find("memory", Some(inode.ino), None, format!("medium {:?} vs mount {:?}", inode.attr, g.attr));
    }
    let a: Vec<_> = g.owned_runs().collect();
    let b: Vec<_> = inode.owned_runs().collect();
    if a != b || !g.ext.iter().eq(inode.ext.iter()) {
        r.find("memory", Some(inode.ino), None, format!("blocks differ: medium {b:?}, mount {a:?}"));
    }
    if g.xattr != inode.xattr {
        r.find("memory", Some(inode.ino), None, "extended attributes differ between medium and mount");
    }
}
