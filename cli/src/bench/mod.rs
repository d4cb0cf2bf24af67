//! `udax bench`: each operation timed on the raw mapped memory (the floor), on tmpfs through
//! std::fs, and on udax, in one process and interleaved by round, so that a noisy moment of the
//! machine hits all three alike.
//!
//! A round runs, for each operation in turn, a batch on the floor, one on tmpfs and one on udax;
//! each call is timed on its own. A batch stops at its time budget (a third of ~0.2 s) or its
//! sample cap. Each batch gives p50, p99 and p99.99; the report shows each figure's median over
//! the rounds. Everything lives in a scratch directory in /dev/shm, removed at the end (on error
//! too).

mod report;
mod work;

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::common::{stderr_is_tty, CliResult, Progress};
use report::{Figures, Report};
use work::{Scale, Scratch, Side, Workload};

pub const LONG_ABOUT: &str = "\
Time udax's common operations beside the same operations on tmpfs (std::fs on a file in
/dev/shm) and beside the floor: the same bytes moved on raw mapped memory with the same
non-temporal stores, cache-line write-backs and fences udax uses (one durable 8-byte commit word
for a metadata operation). Rounds interleave the three, each operation many times per round;
the report gives the medians over rounds of each batch's p50, p99 and p99.99, the ratios
udax/floor and udax/tmpfs, and the target each ratio is held to. Bandwidth operations
(seq-write-1m, seq-read-1m) report GB/s instead of nanoseconds; their ratios are of GB/s.";

pub const AFTER_HELP: &str = "\
Operations: overwrite-4k (durable: udax write_at; tmpfs pwrite + fdatasync), append-4k,
pread-4k, seq-write-1m, seq-read-1m, create (open with create, then close), stat (by path),
unlink, rename.

--json prints {\"machine\": {\"cpus\", \"cpu_model\", \"kernel\"}, \"rounds\", \"ops\": [{\"name\",
\"unit\", \"udax_p50_ns\", \"udax_p99_ns\", \"udax_p9999_ns\", \"tmpfs_p50_ns\", ..., \"floor_p50_ns\",
..., \"vs_tmpfs\", \"vs_floor\", \"target\", \"target_met\", \"udax_calls\"}]}; with unit \"GB/s\" the _ns
keys hold GB/s.

Examples:
  udax bench
  udax bench --ops overwrite-4k,append-4k --rounds 9
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
    /// Attributes of a file by path
    Stat,
    /// Remove a file by path
    Unlink,
    /// Rename a file within its directory
    Rename,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::Overwrite4k,
        Op::Append4k,
        Op::Pread4k,
        Op::SeqWrite1m,
        Op::SeqRead1m,
        Op::Create,
        Op::Stat,
        Op::Unlink,
        Op::Rename,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Overwrite4k => "overwrite-4k",
            Op::Append4k => "append-4k",
            Op::Pread4k => "pread-4k",
            Op::SeqWrite1m => "seq-write-1m",
            Op::SeqRead1m => "seq-read-1m",
            Op::Create => "create",
            Op::Stat => "stat",
            Op::Unlink => "unlink",
            Op::Rename => "rename",
        }
    }

    /// Bytes each call moves, for the bandwidth operations.
    pub fn bandwidth_bytes(self) -> Option<u64> {
        matches!(self, Op::SeqWrite1m | Op::SeqRead1m).then_some(1 << 20)
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Print one JSON object (see below)
    #[arg(long)]
    pub json: bool,
    /// Operations to time, comma-separated (default: all)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub ops: Vec<Op>,
    /// Rounds (default 5; 1 with --quick)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: Option<u32>,
    /// A tiny run (small images, a few calls per batch): checks that it works, measures nothing
    #[arg(long)]
    pub quick: bool,
}

/// How long a batch (one operation on one side in one round) runs, and its most calls.
struct Budget {
    time: Duration,
    max_calls: usize,
}

pub fn run(a: &BenchArgs) -> CliResult {
    let ops: Vec<Op> = if a.ops.is_empty() { Op::ALL.to_vec() } else { dedup(&a.ops) };
    let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 5 }) as usize;
    let (scale, budget) = if a.quick {
        (Scale::QUICK, Budget { time: Duration::from_millis(2), max_calls: 64 })
    } else {
        (Scale::FULL, Budget { time: Duration::from_millis(67), max_calls: 100_000 })
    };
    let scratch = Scratch::new()?;
    let mut w = Workload::new(&scratch, scale)?;
    let progress = Progress::new(stderr_is_tty(), (rounds * ops.len() * Side::ALL.len()) as u64, false, "bench");
    let mut figures: Vec<[Vec<Figures>; 3]> = ops.iter().map(|_| Default::default()).collect();
    let mut samples = Vec::with_capacity(budget.max_calls);
    for round in 0..rounds {
        for (k, &op) in ops.iter().enumerate() {
            progress.message(format!("round {}/{rounds}: {}", round + 1, op.name()));
            for side in Side::ALL {
                batch(&mut w, op, side, &budget, &mut samples)?;
                figures[k][side as usize].push(Figures::of(&mut samples));
                progress.inc(1);
            }
        }
    }
    progress.done();
    drop(w);
    drop(scratch);
    let report = Report::new(rounds, &ops, &figures);
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
/// nanoseconds go to `samples`.
fn batch(w: &mut Workload, op: Op, side: Side, budget: &Budget, samples: &mut Vec<u64>) -> CliResult {
    samples.clear();
    let start = Instant::now();
    let mut i = 0u64;
    loop {
        w.before(op, side, i)?;
        let t = Instant::now();
        w.step(op, side, i)?;
        let ns = t.elapsed().as_nanos();
        samples.push(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
        i += 1;
        if samples.len() >= budget.max_calls || start.elapsed() >= budget.time {
            break;
        }
    }
    w.after(op, side, i)
}
