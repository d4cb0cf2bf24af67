//! `udax bench`: each operation timed on the raw mapped memory (the floor), on tmpfs through
//! std::fs, and on udax, in one process and interleaved by round, so that a noisy moment of the
//! machine hits all three alike.
//!
//! A round runs, for each operation in turn, a batch on the floor, one on tmpfs and one on udax
//! (a side without an honest figure is skipped); each call is timed on its own. A batch stops at
//! its time budget (a third of ~0.2 s) or its sample cap. Each batch gives p50, p99 and p99.99;
//! the report shows each figure's median over the rounds. The rounds run pinned to one CPU at
//! real-time priority when the process may ask for it (see [`pin`]). `--threads N` then times
//! appends and creates in N threads on independent files against one thread. Everything lives
//! in a scratch directory in /dev/shm, removed at the end (on error too).

mod image;
mod mapped;
mod pin;
mod report;
mod svg;
mod threads;
mod work;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::common::{stderr_is_tty, CliResult, Failure, Progress};
use report::{Figures, Report};
use work::{Scale, Scratch, Side, Workload};

const CMD: &str = "bench";

pub const LONG_ABOUT: &str = "\
Time udax's common operations beside the same operations on tmpfs (std::fs on a file in
/dev/shm) and beside the floor: the same bytes moved on raw mapped memory with the same
non-temporal stores, cache-line write-backs and fences udax uses (one durable 8-byte commit word
for a metadata operation). Rounds interleave the three, each operation many times per round;
the report gives the medians over rounds of each batch's p50, p99 and p99.99, the ratios
udax/floor and udax/tmpfs, and the target each ratio is held to. Bandwidth operations
(seq-write-1m, seq-read-1m) report GB/s instead of nanoseconds; their ratios are of GB/s.

Run as root, the rounds are pinned to one CPU at SCHED_FIFO priority 50 (the tails are then the
file systems', not the scheduler's); otherwise, or where that is refused, they run unpinned at
normal priority. The header and --json say which. A mount and the first stores, which udax hands
to threads of its own, are timed unpinned.";

pub const AFTER_HELP: &str = "\
Operations (default: all but mount):
  overwrite-4k    durable 4 KiB overwrite (udax write_at; tmpfs pwrite + fdatasync)
  append-4k       the same at end of file
  pread-4k        4 KiB read
  seq-write-1m    1 MiB durable sequential writes (GB/s)
  seq-read-1m     1 MiB sequential reads (GB/s)
  create          by path: open with create, then close
  create-ino      in a directory by inode: Fs::create (tmpfs: mknodat on a directory fd)
  stat            by path
  lookup          in a directory by inode: Fs::lookup (tmpfs: fstatat on a directory fd)
  unlink          by path
  rename          by path, within a directory
  readdir-10k     list a directory of 10,000 entries (floor: their 32-byte records copied)
  mmap-setup-1g   map a written 1 GiB file shared read-write and load one byte per 2 MiB
  first-store-4k  first store into a hole page of a shared mapping (udax: the 4 KiB fault path)
  first-store-2m  the same into a 2 MiB hole, each page stored once; ns per 4 KiB
  mount           Fs::mount of an image of 1,000,000 files (1,000 directories of 1,000), made
                  first, outside the timing; named only (--ops mount)

--threads N adds, for append-4k and create, the aggregate rate of N threads each on a file or
directory of its own against one thread's, for udax and tmpfs: the scaling (run after the
rounds, unpinned). --svg FILE writes a bar chart of each operation's udax/tmpfs and udax/floor
time ratios with the targets marked.

--json prints {\"machine\": {\"cpus\", \"cpu_model\", \"kernel\"}, \"pinned\", \"pinning\", \"rounds\",
\"ops\": [{\"name\", \"unit\", \"udax_p50_ns\", \"udax_p99_ns\", \"udax_p9999_ns\", \"tmpfs_p50_ns\",
..., \"floor_p50_ns\", ..., \"vs_tmpfs\", \"vs_floor\", \"target\", \"target_met\", \"udax_calls\"}],
\"threads\": [{\"name\", \"threads\", \"udax_ops_per_s\", \"udax_1_thread_ops_per_s\",
\"udax_scaling\", \"tmpfs_...\", \"target\", \"target_met\"}]}; with unit \"GB/s\" the _ns keys hold
GB/s; a side without a figure (mount's tmpfs and floor) holds null.

Examples:
  udax bench
  udax bench --ops overwrite-4k,append-4k --rounds 9
  udax bench --ops mount
  udax bench --ops append-4k,create --threads 2
  udax bench --svg ratios.svg
  udax bench --quick --json | jq '.ops[] | {name, vs_tmpfs}'";

/// An operation `udax bench` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Op {
    /// 4 KiB durable overwrite of written blocks
    #[value(name = "overwrite-4k")]
    Overwrite4k,
    /// 4 KiB durable write at the end of a file
    #[value(name = "append-4k")]
    Append4k,
    /// 4 KiB read of written blocks
    #[value(name = "pread-4k")]
    Pread4k,
    /// 1 MiB durable sequential writes (GB/s)
    #[value(name = "seq-write-1m")]
    SeqWrite1m,
    /// 1 MiB sequential reads (GB/s)
    #[value(name = "seq-read-1m")]
    SeqRead1m,
    /// Create a file by path and close it
    Create,
    /// Create a file in a directory given by inode
    #[value(name = "create-ino")]
    CreateIno,
    /// Attributes of a file by path
    Stat,
    /// Look a name up in a directory given by inode
    Lookup,
    /// Remove a file by path
    Unlink,
    /// Rename a file within its directory
    Rename,
    /// List a directory of 10,000 entries
    #[value(name = "readdir-10k")]
    Readdir10k,
    /// Map a written 1 GiB file and load one byte per 2 MiB
    #[value(name = "mmap-setup-1g")]
    MmapSetup1g,
    /// First store into a hole page of a shared mapping
    #[value(name = "first-store-4k")]
    FirstStore4k,
    /// First stores into a 2 MiB hole of a shared mapping, per 4 KiB
    #[value(name = "first-store-2m")]
    FirstStore2m,
    /// Mount an image of 1,000,000 files
    Mount,
}

impl Op {
    /// What a plain `udax bench` times: everything but `mount`, whose image takes a while to make.
    pub const DEFAULT: [Op; 15] = [
        Op::Overwrite4k,
        Op::Append4k,
        Op::Pread4k,
        Op::SeqWrite1m,
        Op::SeqRead1m,
        Op::Create,
        Op::CreateIno,
        Op::Stat,
        Op::Lookup,
        Op::Unlink,
        Op::Rename,
        Op::Readdir10k,
        Op::MmapSetup1g,
        Op::FirstStore4k,
        Op::FirstStore2m,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Overwrite4k => "overwrite-4k",
            Op::Append4k => "append-4k",
            Op::Pread4k => "pread-4k",
            Op::SeqWrite1m => "seq-write-1m",
            Op::SeqRead1m => "seq-read-1m",
            Op::Create => "create",
            Op::CreateIno => "create-ino",
            Op::Stat => "stat",
            Op::Lookup => "lookup",
            Op::Unlink => "unlink",
            Op::Rename => "rename",
            Op::Readdir10k => "readdir-10k",
            Op::MmapSetup1g => "mmap-setup-1g",
            Op::FirstStore4k => "first-store-4k",
            Op::FirstStore2m => "first-store-2m",
            Op::Mount => "mount",
        }
    }

    /// Bytes each call moves, for the bandwidth operations.
    pub fn bandwidth_bytes(self) -> Option<u64> {
        matches!(self, Op::SeqWrite1m | Op::SeqRead1m).then_some(1 << 20)
    }

    /// The units one call is reported in: a 2 MiB first store is 512 pages, shown per 4 KiB.
    pub fn per_call(self) -> u64 {
        match self {
            Op::FirstStore2m => 512,
            _ => 1,
        }
    }

    /// Whether its rounds run pinned (see [`pin`]). Not a mount, which may use every CPU, nor a
    /// first store, which udax's fault service serves on threads of its own: with the faulting
    /// thread alone pinned at real-time priority, the figure would be the scheduler's hand-offs
    /// between them (tmpfs's fault runs in the faulting thread and is unaffected).
    pub fn pinned(self) -> bool {
        !matches!(self, Op::Mount | Op::FirstStore4k | Op::FirstStore2m)
    }

    /// Whether `--threads` times it in N threads.
    pub fn threadable(self) -> bool {
        matches!(self, Op::Append4k | Op::Create)
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Print one JSON object (see below)
    #[arg(long)]
    pub json: bool,
    /// Write a bar chart of the ratios and targets to FILE (SVG)
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Operations to time, comma-separated (default: all but mount)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub ops: Vec<Op>,
    /// Also time append-4k and create in N threads, each on its own file, against one thread
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=64))]
    pub threads: Option<u32>,
    /// Rounds (default 5; 1 with --quick)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: Option<u32>,
    /// A tiny run (small images, a few calls per batch): checks that it works, measures nothing
    #[arg(long)]
    pub quick: bool,
}

/// How long a batch (one operation on one side in one round) runs, and its most calls.
pub struct Budget {
    pub time: Duration,
    pub max_calls: usize,
}

pub fn run(a: &BenchArgs) -> CliResult {
    let ops: Vec<Op> = if a.ops.is_empty() { Op::DEFAULT.to_vec() } else { dedup(&a.ops) };
    let threaded: Vec<Op> = ops.iter().copied().filter(|o| o.threadable()).collect();
    if a.threads.is_some() && threaded.is_empty() {
        let msg = "--threads times append-4k and create in threads: name one of them in --ops";
        return Err(Failure::plain(CMD, msg).code(2));
    }
    let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 5 }) as usize;
    let (scale, budget) = if a.quick {
        (Scale::QUICK, Budget { time: Duration::from_millis(2), max_calls: 64 })
    } else {
        (Scale::FULL, Budget { time: Duration::from_millis(67), max_calls: 100_000 })
    };
    let scratch = Scratch::new()?;
    let progress = Progress::new(stderr_is_tty(), 1, false, "bench");
    let mut w = Workload::new(&scratch, scale, &ops, &progress)?;
    let batches = ops.iter().map(|&op| Side::ALL.iter().filter(|&&s| Workload::has(op, s)).count()).sum::<usize>();
    let thread_steps = threaded.len() * threads::STEPS * a.threads.map_or(0, |_| rounds);
    progress.set(0, (rounds * batches + thread_steps) as u64);
    let mut figures: Vec<[Vec<Figures>; 3]> = ops.iter().map(|_| Default::default()).collect();
    let mut samples = Vec::with_capacity(budget.max_calls);
    let mut pin = pin::Pin::new();
    for round in 0..rounds {
        for (k, &op) in ops.iter().enumerate() {
            progress.message(format!("round {}/{rounds}: {}", round + 1, op.name()));
            pin.hold(op.pinned());
            for side in Side::ALL.into_iter().filter(|&s| Workload::has(op, s)) {
                batch(&mut w, op, side, &budget, &mut samples)?;
                figures[k][side as usize].push(Figures::of(&mut samples));
                progress.inc(1);
            }
        }
    }
    pin.hold(false);
    let scaling = match a.threads {
        Some(n) => threads::measure(&w, &scratch, &threaded, n as usize, rounds, &budget, &progress)?,
        None => Vec::new(),
    };
    progress.done();
    let notes = w.notes();
    drop(w);
    drop(scratch);
    let report = Report::new(rounds, &ops, &figures, notes, (pin.pinned(), pin.describe()), scaling);
    if let Some(path) = &a.svg {
        std::fs::write(path, svg::chart(&report.bars())).map_err(|e| Failure::io(CMD, path, &e))?;
    }
    if a.json {
        crate::json::print(report.json())
    } else {
        report.print()
    }
}

/// The operations in the order given, each once.
fn dedup(ops: &[Op]) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::new();
    for &op in ops {
        if !out.contains(&op) {
            out.push(op);
        }
    }
    out
}

/// Times calls of `op` on `side` until the budget is spent (at least one); their latencies in
/// nanoseconds (per 4 KiB for a 2 MiB first store) go to `samples`.
fn batch(w: &mut Workload, op: Op, side: Side, budget: &Budget, samples: &mut Vec<u64>) -> CliResult {
    samples.clear();
    let start = Instant::now();
    let mut i = 0u64;
    loop {
        w.before(op, side, i)?;
        let t = Instant::now();
        w.step(op, side, i)?;
        let ns = t.elapsed().as_nanos() / u128::from(op.per_call());
        samples.push(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
        i += 1;
        if samples.len() >= budget.max_calls || start.elapsed() >= budget.time {
            break;
        }
    }
    w.after(op, side, i)
}
