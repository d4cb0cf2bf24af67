//! The semantic state of a file system — its tree, attributes and contents — and the oracle that
//! decides whether a recovered crash image shows a state the operation in flight allows.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Fs;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// What the oracle compares of one name: everything an operation changes atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Inode number.
    pub ino: u64,
    /// File type and permission bits.
    pub mode: u32,
    /// Owner user ID.
    pub uid: u32,
    /// Owner group ID.
    pub gid: u32,
    /// Hard links.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device number of a device node.
    pub rdev: u64,
    /// A symbolic link's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Extended attributes, values in hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
}

/// Times and contents, which an in-place overwrite changes without a transaction: the guarantees
/// (DESIGN.md) let each byte (and each time) show its value from before or after the operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// atime, mtime, ctime as (seconds, nanoseconds).
    pub times: [(i64, u32); 3],
    /// A regular file's bytes (hex in JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hex")]
    pub data: Vec<u8>,
    /// The bytes from EOF to the end of its page as a mapping of that page shows them: zero
    /// always (only those not zero are kept, hex in JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hex")]
    pub past_eof: Vec<u8>,
}

/// A whole file system, by path ("/" first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    /// Every name's shape, by path.
    pub shape: BTreeMap<String, Shape>,
    /// By inode number (hard links share one).
    pub payload: BTreeMap<u64, Payload>,
}

impl FsState {
    /// Reads the whole tree through `fs`. A tree that loops or cannot be read is an error.
    pub fn capture(fs: &Fs) -> Result<FsState, String> {
        let mut st = FsState::default();
        let mut seen_dirs = BTreeSet::new();
        let mut stack = vec![(1u64, String::from("/"))];
        while let Some((ino, path)) = stack.pop() {
            let a = fs.getattr(ino).map_err(|e| format!("stat {path}: {e}"))?;
            let kind = a.mode & S_IFMT;
            let target = if kind == S_IFLNK {
                let t = fs.readlink(ino).map_err(|e| format!("readlink {path}: {e}"))?;
                Some(String::from_utf8_lossy(&t).into_owned())
            } else {
                None
            };
            let mut xattrs = BTreeMap::new();
            let names = fs.listxattr(ino).map_err(|e| format!("listxattr {path}: {e}"))?;
            for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                let v = fs.getxattr(ino, name).map_err(|e| format!("getxattr {path}: {e}"))?;
                xattrs.insert(String::from_utf8_lossy(name).into_owned(), hex::encode(&v));
            }
            let shape = Shape {
                ino,
                mode: a.mode,
                uid: a.uid,
                gid: a.gid,
                nlink: a.nlink,
                size: a.size,
                rdev: a.rdev,
                target,
                xattrs,
            };
            if let std::collections::btree_map::Entry::Vacant(slot) = st.payload.entry(ino) {
                let mut data = Vec::new();
                if kind == S_IFREG {
                    let len = usize::try_from(a.size).ok().filter(|&n| n <= 64 << 20);
                    let mut buf = vec![0u8; len.ok_or_else(|| format!("{path}: size {} too large", a.size))?];
                    let n = fs.read(ino, &mut buf, 0).map_err(|e| format!("read {path}: {e}"))?;
                    if n != buf.len() {
                        return Err(format!("read {path}: {n} of {} bytes", buf.len()));
                    }
                    data = buf;
                }
                let past_eof =
                    if kind == S_IFREG { past_eof(fs, ino).map_err(|e| format!("{path}: {e}"))? } else { vec![] };
                let t = |t: crate::Timespec| (t.sec, t.nsec);
                slot.insert(Payload { times: [t(a.atime), t(a.mtime), t(a.ctime)], data, past_eof });
            }
            if kind == S_IFDIR {
                if !seen_dirs.insert(ino) {
                    return Err(format!("directory {path} (inode {ino}) is reachable twice"));
                }
                let entries = fs.readdir(ino, 0).map_err(|e| format!("readdir {path}: {e}"))?;
                for e in entries.into_iter().rev() {
                    let name = String::from_utf8_lossy(&e.name);
                    let child = if path == "/" { format!("/{name}") } else { format!("{path}/{name}") };
                    stack.push((e.ino, child));
                }
            }
            st.shape.insert(path, shape);
        }
        Ok(st)
    }
}

/// The bytes of file `ino` from EOF to the end of its page, as a mapping of the page shows them:
/// what mmap leaves there (`Fs::clean_tail`), then the device's bytes in written blocks, zeros
/// elsewhere. Nothing when they are all zero.
fn past_eof(fs: &Fs, ino: u64) -> crate::Result<Vec<u8>> {
    let n = fs.node(ino)?;
    let mut g = crate::sync::wr(&n.inode);
    fs.clean_tail(&mut g)?;
    let mut out = vec![0u8; (g.attr.size.next_multiple_of(crate::PAGE) - g.attr.size) as usize];
    for (at, from, len) in fs.past_eof_runs(&g) {
        fs.device().read(at, &mut out[from as usize..(from + len) as usize])?;
    }
    Ok(if out.iter().all(|&b| b == 0) { Vec::new() } else { out })
}

impl FsState {
    /// The first file byte that holds the poison free space is filled with ([`super::POISON`]):
    /// bytes a new block showed before anything zeroed or wrote them (workload bytes never take
    /// that value).
    /// Or the first byte past EOF in its page that is not zero: a mapping of the page shows it.
    pub fn stale(&self) -> Option<String> {
        self.shape.iter().find_map(|(path, shape)| {
            let p = self.payload.get(&shape.ino)?;
            if let Some(i) = p.data.iter().position(|&b| b == super::POISON) {
                let poison = super::POISON;
                return Some(format!("{path}: byte {i} is {poison:#04x}, the poison of free space: stale bytes show"));
            }
            let i = p.past_eof.iter().position(|&b| b != 0)?;
            let at = shape.size + i as u64;
            Some(format!(
                "{path}: byte {at} is {:#04x}, past EOF ({}) in its page: a mapping shows it",
                p.past_eof[i], shape.size
            ))
        })
    }
}

/// Decides whether `got` is a state the operations in flight may leave, given the states they
/// may pass through (`allowed`: for one operation, the state before it and the state after):
/// the tree and every attribute exactly as in one of them (atomicity); each time from a state
/// whose tree that is (only a pure overwrite updates times outside a transaction); each byte of
/// each file from any of them (overwrites are not atomic, but never show bytes that were not
/// written). Returns the index of the first state whose tree matched.
pub fn judge(allowed: &[&FsState], got: &FsState) -> Result<usize, String> {
    let Some(matched) = allowed.iter().position(|s| s.shape == got.shape) else {
        let against: Vec<String> = allowed
            .iter()
            .enumerate()
            .map(|(i, s)| format!("against state {i}, {}", first_shape_difference(&s.shape, &got.shape)))
            .collect();
        return Err(format!("the tree matches no allowed state: {}", against.join("; ")));
    };
    let same_tree: Vec<&FsState> = allowed.iter().copied().filter(|s| s.shape == got.shape).collect();
    for (ino, p) in &got.payload {
        let path = got.shape.iter().find(|(_, s)| s.ino == *ino).map_or("?", |(p, _)| p.as_str());
        let timed: Vec<&Payload> = same_tree.iter().filter_map(|s| s.payload.get(ino)).collect();
        if timed.is_empty() {
            return Err(format!("{path} (inode {ino}) exists in no allowed state"));
        }
        for (i, name) in ["atime", "mtime", "ctime"].iter().enumerate() {
            if !timed.iter().any(|x| x.times[i] == p.times[i]) {
                return Err(format!(
                    "{path}: {name} {:?} is none of {:?}",
                    p.times[i],
                    timed.iter().map(|x| x.times[i]).collect::<Vec<_>>()
                ));
            }
        }
        // Contents: each byte from any allowed state, whatever the tree matched: a file's bytes
        // below its size may be overwritten in place before the commit that changes its size.
        let sources: Vec<&[u8]> =
            allowed.iter().filter_map(|s| s.payload.get(ino)).map(|x| x.data.as_slice()).collect();
        for (i, &byte) in p.data.iter().enumerate() {
            if !sources.iter().any(|s| s.get(i) == Some(&byte)) {
                let was: Vec<String> =
                    sources.iter().map(|s| s.get(i).map_or("-".into(), |v| format!("{v:#04x}"))).collect();
                return Err(format!("{path}: byte {i} is {byte:#04x}, in no allowed state ({})", was.join(" / ")));
            }
        }
    }
    Ok(matched)
}

fn first_shape_difference(want: &BTreeMap<String, Shape>, got: &BTreeMap<String, Shape>) -> String {
    for (path, w) in want {
        match got.get(path) {
            None => return format!("{path} is missing"),
            Some(g) if g != w => return format!("{path} is {g:?}, not {w:?}"),
            _ => {}
        }
    }
    match got.keys().find(|p| !want.contains_key(*p)) {
        Some(p) => format!("{p} is extra"),
        None => "no difference".into(),
    }
}

/// Bytes as a hex string in JSON (saved states stay readable and compact).
mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn encode(b: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        b.iter().flat_map(|v| [DIGITS[(v >> 4) as usize] as char, DIGITS[(v & 15) as usize] as char]).collect()
    }

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex"));
        }
        text.as_bytes()
            .chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("not a hex digit"))
            })
            .collect()
    }
}
