//! `udax bench`'s mapping operations: a mapping of a written file made ready to use, and first
//! stores into holes of a shared mapping through udax's 4 KiB and 2 MiB fault paths.
//!
//! udax maps with `File::mmap`: written runs are mapped from the device at mmap time, and a first
//! store into a hole faults to the userfaultfd service, which allocates, zeroes and commits the
//! page (or 2 MiB at once, for a 2 MiB-aligned hole the mapping covers whole) before mapping it.
//! tmpfs is a file in /dev/shm mapped shared by `udax::Device`, an mmap(2) of the file as a
//! program makes it: the first touch of a hole there is the kernel's shmem fault, which
//! allocates and clears a page. The tmpfs store also writes its cache line back (the device's
//! 8-byte store), which udax's side does not: a few tens of nanoseconds against udax.
//!
//! - mmap-setup-1g: map the written file shared read-write and load one byte per 2 MiB, so the
//!   figure is that of a mapping ready to use (udax maps every written run up front; tmpfs takes
//!   a fault per page touched). tmpfs's side opens the file too (`Device::open`: stat, open,
//!   flock, mmap), a few microseconds. No floor: nothing is moved.
//! - first-store-4k: one store into the next hole page (udax with 2 MiB allocation off).
//! - first-store-2m: one store into each page of the next 2 MiB hole, reported per 4 KiB.
//!
//! The floor of a first store is what it must make durable on a memory device: the new block's
//! zeros (non-temporal stores, a fence) and one commit word. Used-up holes are punched again
//! between calls, untimed.

use std::path::{Path, PathBuf};

use rustix::fs::FallocateFlags;
use udax::{Device, FallocMode, Floor, Fs, Mapping, MmapStats, OpenOptions, Prot, Share, HUGE, PAGE};

use super::work::{Scale, Side};
use super::{Op, CMD};
use crate::common::{CliResult, Failure, Progress};

const MIB: u64 = 1 << 20;

/// The mapping operations' files on both sides, and what the last call left.
pub struct Mapped {
    fs: Fs,
    big: Option<Big>,
    /// first-store-4k's holes, then first-store-2m's.
    holes: [Option<Holes>; 2],
    /// The mappings the last mmap-setup call made, dropped untimed before the next.
    held_udax: Option<Mapping>,
    held_tmpfs: Option<Device>,
    /// Zeros for the floor's first stores, and where the next one goes.
    zeros: Vec<u8>,
    floor_len: u64,
    floor_next: u64,
    /// udax's fault counters when its current batch began, and the faults each first-store
    /// operation took over all its batches.
    stats_at: MmapStats,
    faults: [MmapStats; 2],
}

/// mmap-setup-1g's written file.
struct Big {
    udax: udax::File,
    tmpfs: PathBuf,
    len: u64,
}

/// A first-store operation's sparse file on each side, mapped whole, and the next unused
/// offset per side.
struct Holes {
    udax_file: udax::File,
    udax_map: Mapping,
    tmpfs_file: std::fs::File,
    tmpfs_map: Device,
    len: u64,
    next: [u64; 3],
}

fn fs_err(what: &str) -> impl Fn(udax::Error) -> Failure + '_ {
    move |e| Failure::fs(CMD, what, &e)
}

fn io_err(what: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::io(CMD, what, &e)
}

/// Which of `holes` an operation uses, and the bytes one call stores into.
fn unit(op: Op) -> (usize, u64) {
    match op {
        Op::FirstStore2m => (1, HUGE),
        _ => (0, PAGE),
    }
}

impl Mapped {
    /// The files for the mapping operations in `ops` (None when there is none), each side's
    /// in `dir` or in `fs`. A mapping is made and dropped here, so the fault service runs
    /// before any timed call.
    pub fn new(fs: &Fs, dir: &Path, scale: Scale, ops: &[Op], progress: &Progress) -> CliResult<Option<Mapped>> {
        if !ops.iter().any(|op| matches!(op, Op::MmapSetup1g | Op::FirstStore4k | Op::FirstStore2m)) {
            return Ok(None);
        }
        let big = match ops.contains(&Op::MmapSetup1g) {
            true => Some(Big::new(fs, dir, scale.map_bytes, progress)?),
            false => None,
        };
        let holes = |op: Op, len: u64| match ops.contains(&op) {
            true => Holes::new(fs, dir, op.name(), len).map(Some),
            false => Ok(None),
        };
        let holes = [holes(Op::FirstStore4k, scale.holes_4k)?, holes(Op::FirstStore2m, scale.holes_2m)?];
        if let Some(b) = &big {
            drop(b.udax.mmap(0, b.len, Prot::ReadWrite, Share::Shared).map_err(fs_err("/big"))?);
        }
        Ok(Some(Mapped {
            fs: fs.clone(),
            big,
            holes,
            held_udax: None,
            held_tmpfs: None,
            zeros: vec![0; HUGE as usize],
            floor_len: scale.floor_bytes(),
            floor_next: 0,
            stats_at: MmapStats::default(),
            faults: Default::default(),
        }))
    }

    /// Untimed, before each call: the last setup's mappings dropped; for a first store, the
    /// fault path chosen, and the holes punched again once used up.
    pub fn before(&mut self, op: Op, side: Side, i: u64) -> CliResult {
        self.held_udax = None;
        self.held_tmpfs = None;
        if op == Op::MmapSetup1g {
            return Ok(());
        }
        self.fs.set_mmap_huge(op == Op::FirstStore2m);
        if side == Side::Udax && i == 0 {
            self.stats_at = self.fs.mmap_stats();
        }
        let (k, unit) = unit(op);
        let h = self.holes[k].as_mut().ok_or_else(|| Failure::plain(CMD, "no holes to store into"))?;
        if h.next[side as usize] + unit > h.len {
            h.punch(side)?;
        }
        Ok(())
    }

    /// One timed call.
    pub fn step(&mut self, op: Op, side: Side, floor: &Floor) -> CliResult {
        if op == Op::MmapSetup1g {
            return self.setup(side);
        }
        let (k, unit) = unit(op);
        if side == Side::Floor {
            let off = Some(self.floor_next.next_multiple_of(unit)).filter(|o| o + unit <= self.floor_len).unwrap_or(0);
            self.floor_next = off + unit;
            floor.store_durable(off, &self.zeros[..unit as usize]).map_err(fs_err("floor"))?;
            return floor.commit_word((off / unit % 1024) * 64, off).map_err(fs_err("floor"));
        }
        let h = self.holes[k].as_mut().ok_or_else(|| Failure::plain(CMD, "no holes to store into"))?;
        let off = h.next[side as usize];
        h.next[side as usize] += unit;
        for page in (off..off + unit).step_by(PAGE as usize) {
            match side {
                Side::Udax => h.udax_map.write_at(&[1], page).map_err(fs_err(op.name()))?,
                _ => tmpfs_store(&h.tmpfs_map, page).map_err(fs_err(op.name()))?,
            }
        }
        Ok(())
    }

    /// mmap-setup-1g's call: map, then load one byte per 2 MiB.
    fn setup(&mut self, side: Side) -> CliResult {
        let big = self.big.as_ref().ok_or_else(|| Failure::plain(CMD, "no file to map"))?;
        let mut byte = [0u8; 1];
        match side {
            Side::Udax => {
                let m = big.udax.mmap(0, big.len, Prot::ReadWrite, Share::Shared).map_err(fs_err("/big"))?;
                for off in (0..big.len).step_by(HUGE as usize) {
                    m.read_at(&mut byte, off).map_err(fs_err("/big"))?;
                }
                self.held_udax = Some(m);
            }
            _ => {
                let d = Device::open(&big.tmpfs).map_err(|e| Failure::fs(CMD, &big.tmpfs, &e))?;
                for off in (0..big.len).step_by(HUGE as usize) {
                    tmpfs_load(&d, off).map_err(|e| Failure::fs(CMD, &big.tmpfs, &e))?;
                }
                self.held_tmpfs = Some(d);
            }
        }
        Ok(())
    }

    /// Untimed, after a batch: the last setup's mappings dropped, udax's faults counted.
    pub fn after(&mut self, op: Op, side: Side) {
        self.held_udax = None;
        self.held_tmpfs = None;
        if side == Side::Udax && op != Op::MmapSetup1g {
            let (now, at) = (self.fs.mmap_stats(), self.stats_at);
            let f = &mut self.faults[unit(op).0];
            f.faults_first_store += now.faults_first_store - at.faults_first_store;
            f.faults_huge += now.faults_huge - at.faults_huge;
            f.faults_clustered += now.faults_clustered - at.faults_clustered;
        }
    }

    /// What the report says beside the figures: the file mapped, the faults udax took.
    pub fn notes(&self) -> Vec<(Op, String)> {
        let mut out = Vec::new();
        if let Some(b) = &self.big {
            let n = b.udax.extents().map_or(0, |e| e.len());
            let extents = if n == 1 { "1 extent".to_string() } else { format!("{n} extents") };
            out.push((Op::MmapSetup1g, format!("{} MiB file in {extents}, one load per 2 MiB", b.len / MIB)));
        }
        for (k, op) in [Op::FirstStore4k, Op::FirstStore2m].into_iter().enumerate() {
            if self.holes[k].is_some() {
                let f = &self.faults[k];
                let text = format!(
                    "udax faults: {} first-store, {} of 2 MiB, {} clustered",
                    f.faults_first_store, f.faults_huge, f.faults_clustered
                );
                out.push((op, text));
            }
        }
        out
    }
}

impl Big {
    /// `len` bytes written to udax's `/big` and tmpfs's `big`.
    fn new(fs: &Fs, dir: &Path, len: u64, progress: &Progress) -> CliResult<Big> {
        use std::os::unix::fs::FileExt;
        progress.message(format!("writing a {} MiB file to map", len / MIB));
        let udax = fs.open("/big", OpenOptions::create()).map_err(fs_err("/big"))?;
        let tmpfs = dir.join("big");
        let t = std::fs::File::create_new(&tmpfs).map_err(io_err(&tmpfs))?;
        let chunk: Vec<u8> = (0..MIB).map(|i| (i * 13 + 1) as u8).collect();
        for off in (0..len).step_by(MIB as usize) {
            udax.write_at(&chunk, off).map_err(fs_err("/big"))?;
            t.write_all_at(&chunk, off).map_err(io_err(&tmpfs))?;
        }
        Ok(Big { udax, tmpfs, len })
    }
}

impl Holes {
    /// A sparse file of `len` bytes named `name` on each side, mapped shared read-write.
    fn new(fs: &Fs, dir: &Path, name: &str, len: u64) -> CliResult<Holes> {
        let upath = format!("/{name}");
        let udax_file = fs.open(&upath, OpenOptions::create()).map_err(fs_err(&upath))?;
        udax_file.set_len(len).map_err(fs_err(&upath))?;
        let udax_map = udax_file.mmap(0, len, Prot::ReadWrite, Share::Shared).map_err(fs_err(&upath))?;
        let tpath = dir.join(name);
        let tmpfs_map = Device::create_sparse(&tpath, len).map_err(|e| Failure::fs(CMD, &tpath, &e))?;
        let tmpfs_file = std::fs::OpenOptions::new().write(true).open(&tpath).map_err(io_err(&tpath))?;
        Ok(Holes { udax_file, udax_map, tmpfs_file, tmpfs_map, len, next: [0; 3] })
    }

    /// Makes `side`'s file a hole again (its mapping faults anew) and starts over.
    fn punch(&mut self, side: Side) -> CliResult {
        match side {
            Side::Udax => self.udax_file.fallocate(0, self.len, FallocMode::PunchHole).map_err(fs_err("holes"))?,
            Side::Tmpfs => {
                let how = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
                rustix::fs::fallocate(&self.tmpfs_file, how, 0, self.len)
                    .map_err(|e| Failure::io(CMD, "tmpfs holes", &e.into()))?;
            }
            Side::Floor => {}
        }
        self.next[side as usize] = 0;
        Ok(())
    }
}

/// One 8-byte store (its line written back) into tmpfs's mapping at `off`.
#[cfg(feature = "crash-test")]
fn tmpfs_store(d: &Device, off: u64) -> udax::Result<()> {
    d.store_u64(off, 1)
}

/// One byte loaded from tmpfs's mapping at `off`.
#[cfg(feature = "crash-test")]
fn tmpfs_load(d: &Device, off: u64) -> udax::Result<()> {
    let mut byte = [0u8; 1];
    d.read(off, &mut byte)
}

// Without `crash-test` the device offers no raw access, and `Workload::has` skips these sides.
#[cfg(not(feature = "crash-test"))]
fn tmpfs_store(_: &Device, _: u64) -> udax::Result<()> {
    Err(udax::Error::Unsupported("raw device stores need the crash-test feature".into()))
}

#[cfg(not(feature = "crash-test"))]
fn tmpfs_load(_: &Device, _: u64) -> udax::Result<()> {
    Err(udax::Error::Unsupported("raw device loads need the crash-test feature".into()))
}
