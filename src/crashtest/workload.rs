//! What the crash explorer runs: a small prepared tree and the operations applied to it.
//!
//! Sizes scale with the block size so every operation crosses the same block boundaries at any
//! size. File bytes come from 0x01..=0x7e, so they never look like the poison that fills free
//! space.

use crate::{Creds, FallocMode, Fs, OpenOptions, Prot, RenameMode, SetAttr, SetTime, Share, Timespec};

/// One operation of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Creates an empty regular file (`O_CREAT|O_EXCL`).
    Create(String),
    /// Creates a directory.
    Mkdir(String),
    /// Creates a FIFO.
    Mkfifo(String),
    /// pwrite into an existing file.
    Write {
        /// The file.
        path: String,
        /// File offset in bytes.
        off: u64,
        /// Bytes written.
        len: u64,
        /// Picks the pattern of the bytes.
        seed: u8,
    },
    /// Truncates or extends a file.
    Truncate {
        /// The file.
        path: String,
        /// New size in bytes.
        size: u64,
    },
    /// fallocate(2) on a file.
    Falloc {
        /// The file.
        path: String,
        /// File offset in bytes.
        off: u64,
        /// Length in bytes.
        len: u64,
        /// What to do to the range.
        mode: FallocMode,
    },
    /// rename(2), with its flags.
    Rename {
        /// The name moved.
        from: String,
        /// Where it goes.
        to: String,
        /// Replace, no-replace or exchange.
        mode: RenameMode,
    },
    /// Adds a hard link.
    Link {
        /// The existing name.
        from: String,
        /// The new name.
        to: String,
    },
    /// Removes a name that is not a directory.
    Unlink(String),
    /// Creates a symbolic link.
    Symlink {
        /// Its content.
        target: String,
        /// Its path.
        link: String,
    },
    /// Removes an empty directory.
    Rmdir(String),
    /// Changes permission bits.
    Chmod {
        /// The file (not followed if a symbolic link).
        path: String,
        /// New permission bits.
        mode: u32,
    },
    /// Changes owner and group.
    Chown {
        /// The file (not followed if a symbolic link).
        path: String,
        /// New owner.
        uid: u32,
        /// New group.
        gid: u32,
    },
    /// Sets access and modification times.
    Utimes {
        /// The file (not followed if a symbolic link).
        path: String,
        /// The seconds of both times.
        sec: i64,
    },
    /// Sets extended attribute `name` to `len` pattern bytes.
    SetXattr {
        /// The file (not followed if a symbolic link).
        path: String,
        /// Full attribute name.
        name: String,
        /// Length of the value in bytes.
        len: u64,
        /// Picks the pattern of the value.
        seed: u8,
    },
    /// Removes an extended attribute.
    RemoveXattr {
        /// The file (not followed if a symbolic link).
        path: String,
        /// Full attribute name.
        name: String,
    },
    /// Stores `len` bytes at `off` through a shared mapping of the pages around them, then msync.
    MapStore {
        /// The file.
        path: String,
        /// File offset in bytes, below EOF.
        off: u64,
        /// Bytes stored, none past EOF.
        len: u64,
        /// Picks the pattern of the bytes.
        seed: u8,
    },
    /// Unmount and mount again (recovery runs, the checkpoint moves to the head): what only the
    /// journal held must now be in place. The explorer does it; [`Step::apply`] cannot.
    Remount,
}

/// The bytes a write with `seed` stores at file offset `at`.
fn pattern(seed: u8, at: u64) -> u8 {
    1 + ((at.wrapping_mul(7) + u64::from(seed) * 13) % 0x7e) as u8
}

/// The `len` bytes a write with `seed` stores from file offset `off`.
pub(crate) fn bytes(seed: u8, off: u64, len: u64) -> Vec<u8> {
    (off..off + len).map(|at| pattern(seed, at)).collect()
}

impl Step {
    /// A short description for reports, e.g. `write /a 4096+100`.
    pub fn describe(&self) -> String {
        match self {
            Step::Create(p) => format!("create {p}"),
            Step::Mkdir(p) => format!("mkdir {p}"),
            Step::Mkfifo(p) => format!("mkfifo {p}"),
            Step::Write { path, off, len, .. } => format!("write {path} {off}+{len}"),
            Step::Truncate { path, size } => format!("truncate {path} {size}"),
            Step::Falloc { path, off, len, mode } => format!("fallocate {mode:?} {path} {off}+{len}"),
            Step::Rename { from, to, mode } => format!("rename {mode:?} {from} {to}"),
            Step::Link { from, to } => format!("link {from} {to}"),
            Step::Unlink(p) => format!("unlink {p}"),
            Step::Symlink { target, link } => format!("symlink {target} {link}"),
            Step::Rmdir(p) => format!("rmdir {p}"),
            Step::Chmod { path, mode } => format!("chmod {mode:o} {path}"),
            Step::Chown { path, uid, gid } => format!("chown {uid}:{gid} {path}"),
            Step::Utimes { path, sec } => format!("utimes {path} {sec}"),
            Step::MapStore { path, off, len, .. } => format!("mmap store {path} {off}+{len}"),
            Step::SetXattr { path, name, len, .. } => format!("setxattr {path} {name} {len} bytes"),
            Step::RemoveXattr { path, name } => format!("removexattr {path} {name}"),
            Step::Remount => "remount".into(),
        }
    }

    /// Runs the step. Errors (a name that is gone, ENOSPC) are part of a workload, so the result
    /// is only reported.
    pub fn apply(&self, fs: &Fs) -> crate::Result<()> {
        let rw = |p: &str| fs.open(p, OpenOptions::read_write());
        match self {
            Step::Create(p) => fs.open(p, OpenOptions { create_new: true, ..OpenOptions::create() }).map(drop),
            Step::Mkdir(p) => fs.mkdir_path(p, 0o755).map(drop),
            Step::Mkfifo(p) => {
                let (parent, name) = fs.resolve_parent(p.as_ref())?;
                fs.mknod(parent, name, 0o010644, 0, Creds::current()).map(drop)
            }
            Step::Write { path, off, len, seed } => rw(path)?.write_at(&bytes(*seed, *off, *len), *off).map(drop),
            Step::Truncate { path, size } => rw(path)?.set_len(*size),
            Step::Falloc { path, off, len, mode } => rw(path)?.fallocate(*off, *len, *mode),
            Step::Rename { from, to, mode } => {
                let (p1, n1) = fs.resolve_parent(from.as_ref())?;
                let (p2, n2) = fs.resolve_parent(to.as_ref())?;
                fs.rename(p1, n1, p2, n2, *mode)
            }
            Step::Link { from, to } => fs.link_path(from, to).map(drop),
            Step::Unlink(p) => fs.unlink_path(p),
            Step::Symlink { target, link } => fs.symlink_path(target, link).map(drop),
            Step::Rmdir(p) => fs.rmdir_path(p),
            Step::Chmod { path, mode } => {
                fs.setattr_path(path, false, &SetAttr { mode: Some(*mode), ..Default::default() }).map(drop)
            }
            Step::Chown { path, uid, gid } => fs
                .setattr_path(path, false, &SetAttr { uid: Some(*uid), gid: Some(*gid), ..Default::default() })
                .map(drop),
            Step::Utimes { path, sec } => {
                let t = SetTime::At(Timespec { sec: *sec, nsec: 500 });
                fs.setattr_path(path, false, &SetAttr { atime: Some(t), mtime: Some(t), ..Default::default() })
                    .map(drop)
            }
            Step::MapStore { path, off, len, seed } => {
                let f = rw(path)?;
                // A store past EOF would raise SIGBUS, as it does in the kernel.
                if off + len > f.metadata()?.size {
                    return Err(crate::Error::InvalidArgument("mapped store past end of file"));
                }
                let start = off / crate::PAGE * crate::PAGE;
                let end = (off + len).div_ceil(crate::PAGE) * crate::PAGE;
                let map = f.mmap(start, end - start, Prot::ReadWrite, Share::Shared)?;
                map.write_at(&bytes(*seed, *off, *len), off - start)?;
                map.flush()
            }
            Step::SetXattr { path, name, len, seed } => {
                let ino = fs.resolve(path, false)?;
                fs.setxattr(ino, name.as_bytes(), &bytes(*seed, 0, *len), Default::default())
            }
            Step::RemoveXattr { path, name } => fs.removexattr(fs.resolve(path, false)?, name.as_bytes()),
            Step::Remount => Err(crate::Error::InvalidArgument("a remount needs the file system itself")),
        }
    }
}

/// Builds the tree every sequence starts from, with block size `bs`:
///
/// | name | what |
/// |---|---|
/// | `/a` | 2.5 blocks of data, attribute `user.p` (40 bytes) |
/// | `/b` | 4 blocks: written, hole, unwritten (preallocated), written |
/// | `/d/c` | 100 bytes, also linked as `/h` |
/// | `/d/e` | an empty directory |
/// | `/s` | a symbolic link to `a` |
/// | `/q` | a FIFO |
pub fn prepare(fs: &Fs) -> crate::Result<()> {
    let bs = fs.geometry().block_size;
    let write = |p: &str, off: u64, len: u64, seed: u8| -> crate::Result<()> {
        fs.open(p, OpenOptions::create())?.write_at(&bytes(seed, off, len), off).map(drop)
    };
    write("/a", 0, bs * 5 / 2, 1)?;
    write("/b", 0, bs, 2)?;
    write("/b", 3 * bs, bs, 2)?;
    fs.open("/b", OpenOptions::read_write())?.fallocate(2 * bs, bs, FallocMode::Allocate { keep_size: true })?;
    fs.mkdir_all("/d/e", 0o755)?;
    write("/d/c", 0, 100, 3)?;
    fs.link_path("/d/c", "/h")?;
    fs.symlink_path("a", "/s")?;
    Step::SetXattr { path: s("/a"), name: s("user.p"), len: 40, seed: 4 }.apply(fs)?;
    Step::Mkfifo("/q".into()).apply(fs)
}

fn s(p: &str) -> String {
    p.to_string()
}

/// Each single operation of the full set, each to run on a fresh copy of the prepared tree.
pub fn seq1(bs: u64) -> Vec<Step> {
    use FallocMode::*;
    let falloc = |path: &str, off, len, mode| Step::Falloc { path: s(path), off, len, mode };
    let write = |path: &str, off, len| Step::Write { path: s(path), off, len, seed: 9 };
    let rename = |from: &str, to: &str, mode| Step::Rename { from: s(from), to: s(to), mode };
    let setx = |path: &str, name: &str, len| Step::SetXattr { path: s(path), name: s(name), len, seed: 9 };
    vec![
        Step::Create(s("/n")),
        Step::Create(s("/d/n")),
        Step::Mkdir(s("/m")),
        Step::Mkfifo(s("/d/f")),
        write("/b", bs + 10, 100),      // into a hole inside EOF
        write("/a", bs * 5 / 2, 300),   // append
        write("/a", 10, 2 * bs),        // overwrite in place, across blocks
        write("/a", 2 * bs + 100, bs),  // partly overwrite, partly extend
        write("/a", 6 * bs + 5, 50),    // past EOF, leaving a hole
        write("/b", 2 * bs + 100, 200), // into an unwritten extent (splits it)
        write("/b", 0, 4 * bs),         // over every kind of range
        Step::Truncate { path: s("/a"), size: 5 * bs + 7 },
        Step::Truncate { path: s("/a"), size: bs + 33 },
        Step::Truncate { path: s("/b"), size: 0 },
        falloc("/b", 3 * bs, 3 * bs, Allocate { keep_size: false }),
        falloc("/b", 4 * bs, 2 * bs, Allocate { keep_size: true }),
        falloc("/a", 100, bs + 200, PunchHole),
        falloc("/a", 50, bs, ZeroRange { keep_size: false }),
        falloc("/b", 3 * bs + 100, 2 * bs, ZeroRange { keep_size: false }),
        falloc("/b", 3 * bs + 100, 2 * bs, ZeroRange { keep_size: true }),
        rename("/a", "/z", RenameMode::Replace),
        rename("/a", "/d/c", RenameMode::Replace), // overwrite across directories (c has a link)
        rename("/d/c", "/a", RenameMode::Replace), // overwrite, freeing a's blocks
        rename("/d", "/m2", RenameMode::Replace),
        rename("/d/e", "/e2", RenameMode::Replace), // a directory across directories
        rename("/a", "/d", RenameMode::Exchange),
        rename("/a", "/y", RenameMode::NoReplace),
        Step::Link { from: s("/a"), to: s("/d/l") },
        Step::Unlink(s("/a")),
        Step::Unlink(s("/h")),
        Step::Unlink(s("/s")),
        Step::Symlink { target: s("d/c"), link: s("/t") },
        Step::Rmdir(s("/d/e")),
        Step::Chmod { path: s("/a"), mode: 0o600 },
        Step::Chown { path: s("/d"), uid: 1000, gid: 1000 },
        Step::Utimes { path: s("/a"), sec: 1_000_000_000 },
        Step::MapStore { path: s("/b"), off: bs + 10, len: 100, seed: 9 }, // first store into a hole
        Step::MapStore { path: s("/a"), off: 20, len: 64, seed: 9 },       // a written page
        setx("/b", "user.n", 100),                                         // the first: a new block
        setx("/a", "user.n", 30),                                          // a second, same block
        setx("/a", "user.p", bs / 2),                                      // a larger value
        setx("/q", "trusted.t", 8),                                        // on a FIFO
        setx("/d", "user.n", 8),                                           // on a directory
        Step::RemoveXattr { path: s("/a"), name: s("user.p") },            // the last: frees the block
    ]
}

/// The reduced set whose ordered pairs `seq2` runs, all on `/a` and the names around it.
pub fn pair_set(bs: u64) -> Vec<Step> {
    vec![
        Step::Write { path: s("/a"), off: bs * 5 / 2, len: bs, seed: 9 },
        Step::Write { path: s("/a"), off: 100, len: bs, seed: 10 },
        Step::Truncate { path: s("/a"), size: bs / 2 },
        Step::Falloc { path: s("/a"), off: 10, len: bs + 10, mode: FallocMode::PunchHole },
        Step::Falloc { path: s("/a"), off: 2 * bs, len: 2 * bs, mode: FallocMode::Allocate { keep_size: false } },
        Step::Rename { from: s("/a"), to: s("/d/c"), mode: RenameMode::Replace },
        Step::Link { from: s("/a"), to: s("/d/l") },
        Step::Unlink(s("/a")),
        Step::Create(s("/a")),
        Step::MapStore { path: s("/a"), off: 2 * bs + 5, len: 2 * bs, seed: 11 },
        Step::SetXattr { path: s("/a"), name: s("user.p"), len: bs / 2, seed: 12 },
    ]
}

/// Every ordered pair from [`pair_set`].
pub fn seq2(bs: u64) -> Vec<Vec<Step>> {
    let set = pair_set(bs);
    let mut out = Vec::new();
    for a in &set {
        for b in &set {
            out.push(vec![a.clone(), b.clone()]);
        }
    }
    out
}

/// Pairs for the concurrent workload: every two operations of a set spread over the tree (the
/// same file, files beside each other, a directory and its entries), except two that both take
/// a new inode: which number each gets depends on the order they ask, not on the order they
/// commit, so the states of one of them alone are not known.
pub fn concurrent_pairs(bs: u64) -> Vec<Vec<Step>> {
    let set = vec![
        Step::Write { path: s("/a"), off: bs * 5 / 2, len: bs, seed: 9 },
        Step::Write { path: s("/b"), off: bs - 50, len: 200, seed: 10 },
        Step::Truncate { path: s("/a"), size: bs / 2 },
        Step::Falloc { path: s("/b"), off: 3 * bs, len: bs, mode: FallocMode::PunchHole },
        Step::Falloc { path: s("/d/c"), off: 0, len: 2 * bs, mode: FallocMode::Allocate { keep_size: false } },
        Step::Rename { from: s("/a"), to: s("/d/c"), mode: RenameMode::Replace },
        Step::Link { from: s("/b"), to: s("/d/l") },
        Step::Unlink(s("/h")),
        Step::Create(s("/n")),
        Step::Mkdir(s("/d/m")),
        Step::SetXattr { path: s("/b"), name: s("user.n"), len: bs / 2, seed: 12 },
        Step::Chmod { path: s("/a"), mode: 0o600 },
    ];
    let new_inode = |st: &Step| matches!(st, Step::Create(_) | Step::Mkdir(_));
    let mut out = Vec::new();
    for (i, a) in set.iter().enumerate() {
        for b in &set[i + 1..] {
            if !(new_inode(a) && new_inode(b)) {
                out.push(vec![a.clone(), b.clone()]);
            }
        }
    }
    out
}

/// `ops` random operations over a few names in `/` and `/d`, from `seed`.
pub fn random(bs: u64, seed: u64, ops: usize) -> Vec<Step> {
    let mut x = seed | 1;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut out = Vec::with_capacity(ops);
    for i in 0..ops {
        let mut name =
            || format!("/{}{}", if next(3) == 0 { "d/" } else { "" }, ["a", "b", "g", "k"][next(4) as usize]);
        let (p, q) = (name(), name());
        let seed = (i % 200) as u8;
        let (off, len) = (next(6 * bs), 1 + next(2 * bs));
        out.push(match next(20) {
            0..=2 => Step::Write { path: p, off, len, seed },
            16 => Step::Create(p),
            3 => Step::Truncate { path: p, size: next(6 * bs) },
            4 => Step::Falloc { path: p, off, len, mode: FallocMode::Allocate { keep_size: next(2) == 0 } },
            5 => Step::Falloc { path: p, off, len, mode: FallocMode::PunchHole },
            6 => Step::Falloc { path: p, off, len, mode: FallocMode::ZeroRange { keep_size: next(2) == 0 } },
            7 => Step::Rename { from: p, to: q, mode: RenameMode::Replace },
            8 => Step::Link { from: p, to: q },
            9 => Step::Unlink(p),
            10 => Step::Create(p),
            // Within one page: each page's first store is an operation of its own.
            11 => Step::MapStore { path: p, off, len: len.min(crate::PAGE - off % crate::PAGE), seed },
            12 => Step::Chmod { path: p, mode: 0o600 + next(0o100) as u32 },
            13 => Step::Mkdir(p),
            14 => Step::Rmdir(p),
            17 => Step::SetXattr { path: p, name: format!("user.{}", next(3)), len: next(bs / 2), seed },
            18 => Step::RemoveXattr { path: p, name: format!("user.{}", next(3)) },
            19 => Step::Remount,
            _ => Step::Symlink { target: q, link: p },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    /// A step that fails changes nothing and leaves its crash states trivially allowed, so every
    /// step of `seq1` must really run.
    #[test]
    #[cfg_attr(miri, ignore = "a whole workload on a mapped device: too slow, and miri maps no files")]
    fn every_seq1_step_succeeds_on_the_prepared_tree() {
        for bs in [1024u32, 4096] {
            for step in seq1(u64::from(bs)) {
                let opts =
                    crate::MkfsOptions { block_size: bs, inodes: 64, journal_bytes: 64 << 10, ..Default::default() };
                let fs = Fs::mkfs(Device::anonymous(2 << 20).unwrap(), &opts).unwrap();
                prepare(&fs).unwrap();
                if let Err(e) = step.apply(&fs) {
                    panic!("{} at block size {bs}: {e}", step.describe());
                }
            }
        }
    }
}
