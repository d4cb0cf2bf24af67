//! `udax bench --threads N`: appends and creates in N threads, each on a file or directory of its
//! own, against the same in one thread, on tmpfs and on udax. Independent files share nothing a
//! file system must serialise, so the aggregate rate should grow with the threads: the target is
//! 0.85 × the CPUs the threads can use (1.7× at 2 threads on 2 CPUs).
//!
//! A round times, for each operation, one thread then N threads on tmpfs, then the same on udax,
//! each for the batch time, all threads starting together. A thread's rate is its calls over
//! the time spent in them (the untimed parts: names made, an appended file cut back to empty);
//! the aggregate is the sum of the threads' rates; the report takes medians over rounds. The
//! threads run unpinned at normal priority. Created files are removed after each run.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use udax::{Fs, OpenOptions};

use super::work::{Scratch, Side, Workload};
use super::{Budget, Op, CMD};
use crate::common::{CliResult, Failure, Progress};

/// Runs per operation per round: tmpfs with 1 and N threads, udax with 1 and N.
pub const STEPS: usize = 4;
const BLOCK: usize = 4096;

/// One operation's aggregate rates in calls per second, medians over rounds: with one thread
/// and with `threads`, per side.
#[derive(Debug, Clone)]
pub struct Scaling {
    pub op: Op,
    pub threads: usize,
    pub tmpfs: [f64; 2],
    pub udax: [f64; 2],
}

impl Scaling {
    /// The rate with N threads over the rate with one, per side.
    pub fn ratios(&self) -> (f64, f64) {
        (self.tmpfs[1] / self.tmpfs[0], self.udax[1] / self.udax[0])
    }

    /// The scaling udax aims for: 0.85 per CPU the threads can use.
    pub fn target(&self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        0.85 * self.threads.min(cpus) as f64
    }
}

/// Each thread's file and directory, on both sides.
struct Files {
    udax_append: Vec<udax::File>,
    tmpfs_append: Vec<std::fs::File>,
    udax_dirs: Vec<String>,
    tmpfs_dirs: Vec<PathBuf>,
    append_max: u64,
}

/// The rates of `ops` (append-4k, create) with 1 and `n` threads, medians of `rounds`.
pub fn measure(
    w: &Workload,
    scratch: &Scratch,
    ops: &[Op],
    n: usize,
    rounds: usize,
    budget: &Budget,
    progress: &Progress,
) -> CliResult<Vec<Scaling>> {
    let files = Files::new(w, scratch, n)?;
    // rates[k][side][0: 1 thread, 1: n threads], one per round.
    let mut rates = vec![[[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]]; ops.len()];
    for round in 0..rounds {
        for (k, &op) in ops.iter().enumerate() {
            progress.message(format!("round {}/{rounds}: {} in 1 and {n} threads", round + 1, op.name()));
            for (s, side) in [Side::Tmpfs, Side::Udax].into_iter().enumerate() {
                for (t, threads) in [1, n].into_iter().enumerate() {
                    rates[k][s][t].push(run(w.fs(), &files, op, side, threads, budget)?);
                    progress.inc(1);
                }
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let out = ops.iter().zip(rates).map(|(&op, [[t1, tn], [u1, un]])| Scaling {
        op,
        threads: n,
        tmpfs: [median(t1), median(tn)],
        udax: [median(u1), median(un)],
    });
    Ok(out.collect())
}

impl Files {
    fn new(w: &Workload, scratch: &Scratch, n: usize) -> CliResult<Files> {
        let fs = w.fs();
        let mut f = Files {
            udax_append: Vec::new(),
            tmpfs_append: Vec::new(),
            udax_dirs: Vec::new(),
            tmpfs_dirs: Vec::new(),
            append_max: w.scale().append_max,
        };
        for k in 0..n {
            let name = format!("/t-append{k}");
            f.udax_append.push(fs.open(&name, OpenOptions::create()).map_err(|e| Failure::fs(CMD, &name, &e))?);
            let dir = format!("/t-dir{k}");
            fs.mkdir_path(&dir, 0o755).map_err(|e| Failure::fs(CMD, &dir, &e))?;
            f.udax_dirs.push(dir);
            let p = scratch.dir().join(format!("t-append{k}"));
            f.tmpfs_append.push(std::fs::File::create_new(&p).map_err(|e| Failure::io(CMD, &p, &e))?);
            let p = scratch.dir().join(format!("t-dir{k}"));
            std::fs::create_dir(&p).map_err(|e| Failure::io(CMD, &p, &e))?;
            f.tmpfs_dirs.push(p);
        }
        Ok(f)
    }
}

/// One timed run: `op` on `side`, each thread for `time` and at most `cap` calls.
struct Run<'a> {
    fs: &'a Fs,
    files: &'a Files,
    op: Op,
    side: Side,
    time: Duration,
    cap: u64,
}

/// The aggregate rate of `op` on `side` in `threads` threads, each on its own file.
fn run(fs: &Fs, files: &Files, op: Op, side: Side, threads: usize, budget: &Budget) -> CliResult<f64> {
    let barrier = Barrier::new(threads);
    let cap = (budget.max_calls / threads).max(1) as u64;
    let job = Run { fs, files, op, side, time: budget.time, cap };
    let rates: Vec<CliResult<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let (job, barrier) = (&job, &barrier);
                s.spawn(move || job.thread(k, barrier))
            })
            .collect();
        let joined = handles.into_iter().map(|h| h.join());
        joined.map(|r| r.unwrap_or_else(|_| Err(Failure::plain(CMD, "a benchmark thread panicked")))).collect()
    });
    rates.into_iter().sum()
}

impl Run<'_> {
    /// Thread `k`'s part: its calls, started and ended with the other threads; its rate.
    fn thread(&self, k: usize, barrier: &Barrier) -> CliResult<f64> {
        let prepared = self.truncate(k);
        barrier.wait();
        let mut timed = (0u64, Duration::ZERO);
        let outcome = prepared.and_then(|()| {
            let deadline = Instant::now() + self.time;
            let buf = vec![0x5au8; BLOCK];
            let mut off = 0u64;
            while timed.0 < self.cap && Instant::now() < deadline {
                if off + BLOCK as u64 > self.files.append_max {
                    self.truncate(k)?;
                    off = 0;
                }
                let name = self.name(k, timed.0);
                let t = Instant::now();
                self.call(k, &buf, off, &name)?;
                timed = (timed.0 + 1, timed.1 + t.elapsed());
                off += BLOCK as u64;
            }
            Ok(())
        });
        // Every thread's timed part is over before any clean-up begins.
        barrier.wait();
        let cleaned = self.clean(k, timed.0);
        outcome.and(cleaned)?;
        Ok(timed.0 as f64 / timed.1.as_secs_f64().max(1e-9))
    }

    /// The path create call `i` of thread `k` makes (empty for appends).
    fn name(&self, k: usize, i: u64) -> PathBuf {
        match (self.op, self.side) {
            (Op::Create, Side::Udax) => PathBuf::from(format!("{}/f{i}", self.files.udax_dirs[k])),
            (Op::Create, _) => self.files.tmpfs_dirs[k].join(format!("f{i}")),
            _ => PathBuf::new(),
        }
    }

    /// Cuts thread `k`'s appended file back to empty (for appends only).
    fn truncate(&self, k: usize) -> CliResult {
        match (self.op, self.side) {
            (Op::Append4k, Side::Udax) => {
                self.files.udax_append[k].set_len(0).map_err(|e| Failure::fs(CMD, "append", &e))
            }
            (Op::Append4k, _) => self.files.tmpfs_append[k].set_len(0).map_err(|e| Failure::io(CMD, "append", &e)),
            _ => Ok(()),
        }
    }

    /// One timed call.
    fn call(&self, k: usize, buf: &[u8], off: u64, name: &Path) -> CliResult {
        match (self.op, self.side) {
            (Op::Append4k, Side::Udax) => {
                self.files.udax_append[k].write_at(buf, off).map(drop).map_err(|e| Failure::fs(CMD, "append", &e))
            }
            (Op::Append4k, _) => {
                let f = &self.files.tmpfs_append[k];
                f.write_all_at(buf, off).and_then(|()| f.sync_data()).map_err(|e| Failure::io(CMD, "append", &e))
            }
            (_, Side::Udax) => {
                self.fs.open(name, OpenOptions::create()).map(drop).map_err(|e| Failure::fs(CMD, name, &e))
            }
            _ => std::fs::File::create(name).map(drop).map_err(|e| Failure::io(CMD, name, &e)),
        }
    }

    /// Removes the `calls` files thread `k` created.
    fn clean(&self, k: usize, calls: u64) -> CliResult {
        if self.op != Op::Create {
            return Ok(());
        }
        for i in 0..calls {
            let p = self.name(k, i);
            match self.side {
                Side::Udax => self.fs.unlink_path(&p).map_err(|e| Failure::fs(CMD, &p, &e))?,
                _ => std::fs::remove_file(&p).map_err(|e| Failure::io(CMD, &p, &e))?,
            }
        }
        Ok(())
    }
}
