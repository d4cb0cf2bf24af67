//! What the stress threads share: the files (shared by all threads, or one thread's own), the
//! content model of each private file, the operation and check counters, and the findings.
//!
//! Every byte a thread stores is one of `1..=MAX_VALUE`. Free space is filled with [`SECRET`]
//! before the run, so a byte above `MAX_VALUE` that a read or a load shows is either a previous
//! owner's stale data (`SECRET`) or garbage; a zero byte is a hole, a punch or a grow.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use udax::{File, Fs, Mapping, OpenOptions, Prot, Share, PAGE};

/// The byte free space holds before the run; no thread ever stores it.
pub const SECRET: u8 = 0xEE;
/// Stored bytes are `1..=MAX_VALUE`.
pub const MAX_VALUE: u8 = 0x7F;

/// Files every thread works on.
pub const SHARED_FILES: usize = 4;
/// Offsets of operations on shared files stay below this (sizes stay about as small).
pub const SHARED_SPAN: u64 = 3 << 20;
/// Files each thread keeps to itself.
pub const PRIVATE_FILES: usize = 3;
pub const PRIVATE_SPAN: u64 = 512 << 10;
/// Live mappings one file holds at most.
pub const MAPS_PER_FILE: usize = 4;
/// Longest read, write or mapped access.
pub const MAX_IO: u64 = 64 << 10;
/// The shared namespace: these directories, each with names `n0..n{NS_NAMES}`.
pub const NS_DIRS: [&str; 2] = ["/ns/a", "/ns/b"];
pub const NS_NAMES: u64 = 4;
/// Offsets of writes to namespace files stay below this.
pub const NS_SPAN: u64 = 128 << 10;
/// Findings described in the report (all are counted).
const FINDINGS_KEPT: usize = 20;

/// Locks a mutex, going on after a panicking holder (the run reports the panic anyway).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

macro_rules! kinds {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

kinds! {
    /// What a worker does to a file or a name.
    Op {
        Read => "read",
        Write => "write",
        Append => "append",
        TruncateUp => "truncate_up",
        TruncateDown => "truncate_down",
        Allocate => "allocate",
        PunchHole => "punch_hole",
        ZeroRange => "zero_range",
        Fsync => "fsync",
        Msync => "msync",
        MappedLoad => "mapped_load",
        MappedStore => "mapped_store",
        Mmap => "mmap",
        Munmap => "munmap",
        Create => "create",
        Rename => "rename",
        Unlink => "unlink",
        Reopen => "reopen",
    }
}

kinds! {
    /// What a check compares.
    Check {
        /// No read or load shows a byte no thread stored.
        Values => "values",
        /// A private file's size and bytes equal its model.
        Model => "model",
        /// Quiesced: a shared mapping shows what read_at reads.
        MappingMatchesFile => "mapping_vs_file",
        /// Quiesced: bytes written with write_at show in every shared mapping.
        FileToMapping => "file_to_mapping",
        /// Quiesced: bytes stored through a mapping show in read_at and the other mappings.
        MappingToFile => "mapping_to_file",
        /// Quiesced: pages before the one past EOF load, pages from it on raise SIGBUS.
        SigbusAtEof => "sigbus_at_eof",
        /// Before a worker's mapped access: no page inside EOF would raise SIGBUS.
        LoadableInsideEof => "loadable_inside_eof",
        /// An operation failed that should not have.
        OpError => "op_error",
        Fsck => "fsck",
        /// Free blocks and inodes back to their count after mkfs.
        Leak => "leak",
        Remount => "remount",
    }
}

/// One failed check, described for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub file: String,
    pub offset: Option<u64>,
    pub detail: String,
    /// The worker that saw it (none: the checker).
    pub thread: Option<usize>,
    /// Seconds into the run.
    pub at_s: f64,
}

/// Operation and check counts, and the findings.
#[derive(Debug)]
pub struct Tally {
    start: Instant,
    ops: Vec<AtomicU64>,
    checks: Vec<AtomicU64>,
    failed: Vec<AtomicU64>,
    findings: Mutex<Vec<Finding>>,
}

impl Tally {
    pub fn new(start: Instant) -> Tally {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Tally {
            start,
            ops: zeros(Op::ALL.len()),
            checks: zeros(Check::ALL.len()),
            failed: zeros(Check::ALL.len()),
            findings: Mutex::new(Vec::new()),
        }
    }

    pub fn op(&self, op: Op) {
        self.ops[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn checked(&self, check: Check, n: u64) {
        self.checks[check as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn fail(&self, check: Check, thread: Option<usize>, file: &str, offset: Option<u64>, detail: String) {
        self.failed[check as usize].fetch_add(1, Ordering::Relaxed);
        let mut f = lock(&self.findings);
        if f.len() < FINDINGS_KEPT {
            let at_s = self.start.elapsed().as_secs_f64();
            f.push(Finding { check: check.name(), file: file.to_string(), offset, detail, thread, at_s });
        }
    }

    /// Checks `buf`, read at file offset `off`, for bytes no thread stored.
    pub fn values(&self, thread: Option<usize>, file: &str, off: u64, buf: &[u8], how: &str) -> bool {
        self.checked(Check::Values, 1);
        if !has_foreign(buf) {
            return true;
        }
        let i = buf.iter().position(|&b| b > MAX_VALUE).unwrap_or(0);
        let bad = buf.iter().filter(|&&b| b > MAX_VALUE).count();
        let what =
            if buf[i] == SECRET { "SECRET: a previous owner's stale data" } else { "never stored by any thread" };
        let detail = format!(
            "{how} shows {:#04x} ({what}); {bad} such bytes in {:#x}..{:#x}",
            buf[i],
            off,
            off + buf.len() as u64
        );
        self.fail(Check::Values, thread, file, Some(off + i as u64), detail);
        false
    }

    /// Compares `got` (what `how` showed at file offset `off`) with `want`.
    #[allow(clippy::too_many_arguments)]
    pub fn same(&self, check: Check, thread: Option<usize>, file: &str, off: u64, want: &[u8], got: &[u8], how: &str) {
        self.same_or(check, thread, file, off, want, got, how, String::new);
    }

    /// As [`Tally::same`], with `more` (asked only on a difference) added to the finding.
    #[allow(clippy::too_many_arguments)]
    pub fn same_or(
        &self,
        check: Check,
        thread: Option<usize>,
        file: &str,
        off: u64,
        want: &[u8],
        got: &[u8],
        how: &str,
        more: impl FnOnce() -> String,
    ) {
        self.checked(check, 1);
        if let Some(d) = difference(off, want, got) {
            let more = more();
            let sep = if more.is_empty() { "" } else { "\n      " };
            self.fail(check, thread, file, Some(d.0), format!("{how}: {}{sep}{more}", d.1));
        }
    }

    /// Probes every page of mapping `m` (number `i` of `file`) that the file bytes `range`
    /// touch, all inside EOF of a file of `size` bytes: one that would raise SIGBUS is a finding.
    /// Returns whether every page is loadable.
    pub fn loadable(
        &self,
        thread: Option<usize>,
        file: &str,
        (i, m): (usize, &Mapping),
        range: std::ops::Range<u64>,
        size: u64,
    ) -> udax::Result<bool> {
        for page in range.start / PAGE..range.end.div_ceil(PAGE) {
            self.checked(Check::LoadableInsideEof, 1);
            if !m.loadable(page * PAGE - m.offset())? {
                let detail = format!(
                    "{}: the page at {:#x} would raise SIGBUS inside EOF (size {size:#x})",
                    describe_mapping(i, m),
                    page * PAGE
                );
                self.fail(Check::LoadableInsideEof, thread, file, Some(page * PAGE), detail);
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn counts(&self, of: Count) -> BTreeMap<&'static str, u64> {
        let get = |v: &[AtomicU64], i: usize| v[i].load(Ordering::Relaxed);
        match of {
            Count::Ops => Op::ALL.iter().map(|&o| (o.name(), get(&self.ops, o as usize))).collect(),
            Count::Checks => Check::ALL.iter().map(|&c| (c.name(), get(&self.checks, c as usize))).collect(),
            Count::Failed => {
                Check::ALL.iter().map(|&c| (c.name(), get(&self.failed, c as usize))).filter(|&(_, n)| n > 0).collect()
            }
        }
    }

    pub fn failures(&self) -> u64 {
        self.failed.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn findings(&self) -> Vec<Finding> {
        lock(&self.findings).clone()
    }
}

/// Which counters [`Tally::counts`] lists.
#[derive(Debug, Clone, Copy)]
pub enum Count {
    Ops,
    Checks,
    /// Failures by check (checks that never failed are left out).
    Failed,
}

/// Whether `buf` holds a byte above `MAX_VALUE` (its top bit set), a word at a time.
fn has_foreign(buf: &[u8]) -> bool {
    const _: () = assert!(MAX_VALUE == 0x7F);
    let mut words = buf.chunks_exact(8);
    let top = words.by_ref().fold(0, |acc, w| acc | u64::from_ne_bytes(w.try_into().unwrap_or_default()));
    let rest = words.remainder().iter().fold(0, |acc, &b| acc | b);
    top & 0x8080_8080_8080_8080 != 0 || rest & 0x80 != 0
}

/// Where `got` first differs from `want` (file offset), and words for it.
fn difference(off: u64, want: &[u8], got: &[u8]) -> Option<(u64, String)> {
    if want == got {
        return None;
    }
    if want.len() != got.len() {
        return Some((off, format!("{} bytes, expected {}", got.len(), want.len())));
    }
    let first = want.iter().zip(got).position(|(a, b)| a != b)?;
    let last = want.iter().zip(got).rposition(|(a, b)| a != b).unwrap_or(first);
    let n = want.iter().zip(got).filter(|(a, b)| a != b).count();
    let at = off + first as u64;
    let detail = format!(
        "expected {:#04x}, got {:#04x} at {at:#x}; {n} bytes differ in {at:#x}..{:#x}",
        want[first],
        got[first],
        off + last as u64 + 1
    );
    Some((at, detail))
}

/// A file every thread works on.
#[derive(Debug)]
pub struct SharedFile {
    pub path: String,
    pub file: File,
    /// The same file opened for append.
    pub append: File,
    /// Truncating down takes it exclusively; mapped accesses hold it shared, so the size they
    /// read cannot drop under them (a load past the EOF page would raise SIGBUS). Writes,
    /// punches, zero ranges and fallocate race freely: they never shrink the file.
    size_lock: RwLock<()>,
    pub maps: Mutex<Vec<Arc<Mapping>>>,
}

impl SharedFile {
    pub fn create(fs: &Fs, path: String) -> udax::Result<SharedFile> {
        let file = fs.open(&path, OpenOptions::create())?;
        let append = fs.open(&path, OpenOptions { append: true, ..OpenOptions::read_write() })?;
        Ok(SharedFile { path, file, append, size_lock: RwLock::new(()), maps: Mutex::new(Vec::new()) })
    }

    /// Held while touching mapped pages: the file does not shrink meanwhile.
    pub fn no_shrink(&self) -> RwLockReadGuard<'_, ()> {
        read(&self.size_lock)
    }

    /// Held while shrinking the file: nobody touches its mapped pages meanwhile.
    pub fn may_shrink(&self) -> RwLockWriteGuard<'_, ()> {
        write(&self.size_lock)
    }
}

/// A file one thread keeps to itself, with the model of its content.
#[derive(Debug)]
pub struct PrivateFile {
    /// Its path, or the path it had before it was unlinked.
    pub path: String,
    pub linked: bool,
    pub file: File,
    pub append: File,
    pub model: Model,
    pub maps: Vec<Mapping>,
}

impl PrivateFile {
    pub fn create(fs: &Fs, path: String) -> udax::Result<PrivateFile> {
        let file = fs.open(&path, OpenOptions { create_new: true, ..OpenOptions::create() })?;
        let append = fs.open(&path, OpenOptions { append: true, ..OpenOptions::read_write() })?;
        Ok(PrivateFile { path, linked: true, file, append, model: Model::default(), maps: Vec::new() })
    }

    /// The path for reports.
    pub fn label(&self) -> String {
        if self.linked {
            self.path.clone()
        } else {
            format!("{} (unlinked)", self.path)
        }
    }
}

/// One thread's private files.
#[derive(Debug)]
pub struct Desk {
    pub dir: String,
    pub files: Vec<PrivateFile>,
    next_name: u64,
}

impl Desk {
    pub fn create(fs: &Fs, thread: usize) -> udax::Result<Desk> {
        let dir = format!("/t{thread}");
        fs.mkdir_all(&dir, 0o755)?;
        let mut desk = Desk { dir, files: Vec::new(), next_name: 0 };
        for _ in 0..PRIVATE_FILES {
            let path = desk.new_path();
            desk.files.push(PrivateFile::create(fs, path)?);
        }
        Ok(desk)
    }

    /// A name in the thread's directory that no file of it had.
    pub fn new_path(&mut self) -> String {
        self.next_name += 1;
        format!("{}/x{}", self.dir, self.next_name)
    }
}

/// Changes a model remembers, for a finding's account of how the file got there.
const HISTORY_KEPT: usize = 24;

/// The exact content of a private file: what every operation on it made, byte for byte, and
/// the last operations that changed it (or its mappings), oldest first.
#[derive(Debug, Default, Clone)]
pub struct Model {
    bytes: Vec<u8>,
    history: std::collections::VecDeque<String>,
}

impl Model {
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn bytes(&self, off: u64, len: u64) -> &[u8] {
        let s = off.min(self.size()) as usize;
        let e = off.saturating_add(len).min(self.size()) as usize;
        &self.bytes[s..e]
    }

    /// Remembers an operation on the file (the changes below note themselves).
    pub fn note(&mut self, what: String) {
        if self.history.len() == HISTORY_KEPT {
            self.history.pop_front();
        }
        self.history.push_back(what);
    }

    /// The remembered operations, for a finding.
    pub fn recent(&self) -> String {
        let ops: Vec<&str> = self.history.iter().map(String::as_str).collect();
        format!("its last {} operations, oldest first: {}", ops.len(), ops.join("; "))
    }

    pub fn write(&mut self, off: u64, data: &[u8]) {
        self.note(format!("write {off:#x}+{:#x}", data.len()));
        self.put(off, data);
    }

    fn put(&mut self, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        self.resize(end.max(self.size()));
        self.bytes[off as usize..end as usize].copy_from_slice(data);
    }

    /// Stores through a shared mapping: bytes past EOF are not the file's.
    pub fn store(&mut self, off: u64, data: &[u8]) {
        self.note(format!("store {off:#x}+{:#x} (size {:#x})", data.len(), self.size()));
        let inside = (self.size().saturating_sub(off) as usize).min(data.len());
        if inside > 0 {
            self.put(off, &data[..inside]);
        }
    }

    pub fn set_len(&mut self, size: u64) {
        self.note(format!("set_len {size:#x} (from {:#x})", self.size()));
        self.resize(size);
    }

    pub fn grow(&mut self, size: u64) {
        if size > self.size() {
            self.set_len(size);
        }
    }

    fn resize(&mut self, size: u64) {
        self.bytes.resize(size as usize, 0);
    }

    /// Punch hole, or zero range with the size kept.
    pub fn zero(&mut self, off: u64, len: u64) {
        self.note(format!("zero {off:#x}+{len:#x} (size {:#x})", self.size()));
        let s = off.min(self.size()) as usize;
        let e = (off + len).min(self.size()) as usize;
        self.bytes[s..e].fill(0);
    }

    /// Takes what the file holds as the model's content (after a divergence was reported).
    pub fn reset_to(&mut self, content: &[u8]) {
        self.note(format!("checked, size {:#x}", content.len()));
        self.bytes = content.to_vec();
    }
}

/// The files of a run and the file system they live on.
#[derive(Debug)]
pub struct World {
    pub fs: Fs,
    pub shared: Vec<SharedFile>,
    /// One desk per worker thread; the worker holds its lock for one operation at a time, the
    /// checker while the workers wait at the barrier.
    pub desks: Vec<Mutex<Desk>>,
}

impl World {
    pub fn create(fs: &Fs, threads: usize) -> udax::Result<World> {
        fs.mkdir_all("/shared", 0o755)?;
        for d in NS_DIRS {
            fs.mkdir_all(d, 0o755)?;
        }
        let shared =
            (0..SHARED_FILES).map(|i| SharedFile::create(fs, format!("/shared/f{i}"))).collect::<Result<_, _>>()?;
        let desks = (0..threads).map(|t| Desk::create(fs, t).map(Mutex::new)).collect::<Result<_, _>>()?;
        Ok(World { fs: fs.clone(), shared, desks })
    }

    /// The top-level directories the run made (removed at the end).
    pub fn dirs(threads: usize) -> Vec<String> {
        let mut d: Vec<String> = vec!["/shared".into(), "/ns".into()];
        d.extend((0..threads).map(|t| format!("/t{t}")));
        d
    }
}

/// Words for a mapping in findings: "mapping #2 (shared rw, file bytes 0x0..0x300000)".
pub fn describe_mapping(i: usize, m: &Mapping) -> String {
    let share = if m.share() == Share::Shared { "shared" } else { "private" };
    let prot = if m.prot() == Prot::ReadWrite { "rw" } else { "ro" };
    format!("mapping #{i} ({share} {prot}, file bytes {:#x}..{:#x})", m.offset(), m.offset() + m.len())
}

/// The first page (file page index) a load must raise SIGBUS at for a file of `size` bytes.
pub fn sigbus_page(size: u64) -> u64 {
    size.div_ceil(PAGE)
}

/// A small seeded generator (SplitMix64): each thread draws its operations from its own, so a
/// seed fixes every thread's sequence of operations (not their interleaving).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed ^ stream.wrapping_add(1).wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }

    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// An operation from a weighted mix.
    pub fn pick(&mut self, mix: &[(Op, u64)]) -> Op {
        let mut r = self.below(mix.iter().map(|&(_, w)| w).sum());
        for &(op, w) in mix {
            if r < w {
                return op;
            }
            r -= w;
        }
        mix[0].0
    }

    /// Bytes to store: a run of values in `1..=MAX_VALUE` with a random start and step.
    pub fn pattern(&mut self, len: u64) -> Vec<u8> {
        let (start, step) = (self.next(), self.range(1, u64::from(MAX_VALUE)));
        (0..len).map(|i| 1 + (start.wrapping_add(i * step) % u64::from(MAX_VALUE)) as u8).collect()
    }

    /// A range inside `0..span`: a few bytes, whole aligned pages, up to `MAX_IO` anywhere, or
    /// up to a few pages anywhere.
    pub fn extent(&mut self, span: u64) -> (u64, u64) {
        if span == 0 {
            return (0, 0);
        }
        let (len, aligned) = match self.below(4) {
            0 => (self.range(1, 65), false),
            1 => (PAGE * self.range(1, 5), true),
            2 => (self.range(1, MAX_IO + 1), false),
            _ => (self.range(1, 4 * PAGE), false),
        };
        let len = len.min(span);
        let off = self.below(span - len + 1);
        match aligned {
            true if off / PAGE * PAGE + len <= span => (off / PAGE * PAGE, len),
            _ => (off, len),
        }
    }

    /// A file size at most `max`: zero, inside the first page, whole pages, or anything.
    pub fn size(&mut self, max: u64) -> u64 {
        match self.below(10) {
            0 => 0,
            1 | 2 => self.below(PAGE.min(max + 1)),
            3..=5 => self.below(max / PAGE + 1) * PAGE,
            _ => self.below(max + 1),
        }
    }
}
