//! `udax crashtest`: explores the crash states of a workload and replays saved violations.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use udax::crashtest::{self, Options, Report, Sabotage, Workload};

use crate::common::{describe, stderr_is_tty, CliResult, Failure, OutResult, Progress};

const CMD: &str = "crashtest";

pub const LONG_ABOUT: &str = "Run a workload on a small scratch image while recording every cache line the file\n\
system stores, writes back and fences. At each fence, build the images a power cut\n\
could leave (none, all or subsets of the lines in flight, lines in earlier states,\n\
torn 8-byte words), recover each one (mount), fsck it, read it whole, and require\n\
the state before or after the operation in flight, with every operation that\n\
returned before it. Images whose recovery replays records are also crashed inside\n\
that recovery. Violating images can be saved and replayed.\n\n\
Workloads: seq1 (each operation alone: create, mkdir, mknod, writes of every kind,\n\
truncate up and down, every fallocate mode, renames incl. overwrite, exchange and\n\
across directories, link, unlink, symlink, rmdir, chmod, chown, utimes, stores\n\
through a mapping), seq2 (every ordered pair of a reduced set on shared files),\n\
random (--ops operations from --seed), concurrent (pairs of operations run by two\n\
threads at once, interleaved at fences and held locks by --schedules seeded\n\
schedules each; an image may show either operation alone, never undo one that\n\
returned, and the run must end as one order of the two would).";

pub const AFTER_HELP: &str = "Exit status: 0 no violation, 4 violations found, 1 an error.\n\n\
Examples:\n  udax crashtest            seq1, 4 KiB blocks\n  \
udax crashtest --workload seq2 --block-size 1024\n  \
udax crashtest --workload random --seed 7 --ops 500 --max-states 100000\n  \
udax crashtest --workload concurrent --schedules 4 --fill-journal\n  \
udax crashtest --workload seq2 --save /tmp/crash --json\n  \
udax crashtest --replay /tmp/crash/seq2-3-0.img";

#[derive(Debug, Args)]
pub struct CrashtestArgs {
    /// seq1, seq2, random or concurrent
    #[arg(long, default_value = "seq1")]
    pub workload: String,
    /// Block size of the scratch image: 1024, 2048 or 4096
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Seed of the random workload and of the sampling of crash images
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Operations of the random workload
    #[arg(long, default_value_t = 200)]
    pub ops: usize,
    /// Interleavings of each pair of the concurrent workload (who starts, how often turns change)
    #[arg(long, default_value_t = 2)]
    pub schedules: usize,
    /// Stop after this many crash states (0: no limit)
    #[arg(long, default_value_t = 0)]
    pub max_states: u64,
    /// Crash images built at each fence at most (every subset when they fit)
    #[arg(long, default_value_t = 48)]
    pub per_fence: usize,
    /// Crash images built at each fence of a recovery that replays records (0: none)
    #[arg(long, default_value_t = 3)]
    pub per_recovery_fence: usize,
    /// Crash inside the recovery of one crash state in N (1: every state)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub recovery_every: usize,
    /// Worker threads (0: one per CPU)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Save violating images (and their expected states) in this directory
    #[arg(long, value_name = "DIR")]
    pub save: Option<PathBuf>,
    /// Recover a saved image and judge it again against the states saved beside it
    #[arg(long, value_name = "IMAGE")]
    pub replay: Option<PathBuf>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Stop after the first operation that shows a violation
    #[arg(long)]
    pub first_violation: bool,
    /// Journal ring of the explored image (16K at least): a small one wraps and checkpoints
    /// many times within a workload
    #[arg(long, default_value = "64K", value_parser = crate::size::parse_size)]
    pub journal_size: u64,
    /// Start every other sequence with the journal ring nearly full, so its first operations
    /// checkpoint and wrap
    #[arg(long)]
    pub fill_journal: bool,
    /// Testing the tester: run every planted bug against the sweeps CI runs (seq1, seq2 with a
    /// nearly full journal, a long random run on a 16 KiB journal) at --block-size (CI's test
    /// uses 1024) and report which caught it; exit status 4 if one survived
    #[arg(long)]
    pub mutants: bool,
    /// Testing the tester: plant one bug (a dropped fence, a wrong recovery order, a missing
    /// zero, …; an unknown name lists them all); the exploration must then report violations
    #[arg(long, hide = true)]
    pub sabotage: Option<String>,
}

pub fn run(a: &CrashtestArgs) -> CliResult {
    if let Some(img) = &a.replay {
        return replay(a, img);
    }
    if a.mutants {
        return mutants(a);
    }
    let workload = match a.workload.as_str() {
        "seq1" => Workload::Seq1,
        "seq2" => Workload::Seq2,
        "random" => Workload::Random { ops: a.ops },
        "concurrent" => Workload::Concurrent { schedules: a.schedules },
        other => {
            return Err(Failure::plain(CMD, format!("unknown workload {other:?} (seq1, seq2, random or concurrent)")))
        }
    };
    let sabotage = match &a.sabotage {
        None => Sabotage::None,
        Some(name) => Sabotage::ALL.iter().find(|(n, _)| n == name).map(|&(_, s)| s).ok_or_else(|| {
            let names: Vec<&str> = Sabotage::ALL.iter().map(|(n, _)| *n).collect();
            Failure::plain(CMD, format!("unknown sabotage {name:?} (one of {})", names.join(", ")))
        })?,
    };
    if a.per_fence < 2 {
        return Err(Failure::plain(CMD, "--per-fence must be at least 2 (no lines and all lines)"));
    }
    let opts = Options {
        workload,
        block_size: a.block_size,
        seed: a.seed,
        max_states: a.max_states,
        per_fence: a.per_fence,
        per_recovery_fence: a.per_recovery_fence,
        recovery_every: a.recovery_every,
        sabotage,
        save_dir: a.save.clone(),
        threads: a.threads,
        first_violation: a.first_violation,
        journal_bytes: a.journal_size,
        fill_journal: a.fill_journal,
    };
    let bar = Progress::new(stderr_is_tty() && !a.json, 0, false, &format!("{} bs {}", workload.name(), a.block_size));
    let report = crashtest::run(&opts, &mut |p| {
        bar.set(p.ops_done, p.ops_total);
        bar.message(format!("{} states, {} violations", p.states, p.violations));
    })
    .map_err(|e| Failure::plain(CMD, describe(&e)).errno(e.errno()))?;
    bar.done();
    print_report(a, &report)?;
    if report.violation_count > 0 {
        return Err(Failure::status(4));
    }
    Ok(())
}

/// Every planted bug against the CI's sweeps: which sweep caught it, where, after how many
/// states. Exit status 4 when one survived.
fn mutants(a: &CrashtestArgs) -> CliResult {
    let mut o = std::io::stdout().lock();
    let mut all = Vec::new();
    if !a.json {
        let head =
            format!("{:<24} {:<7} {:>4} {:>8} {:>7}  operation", "planted bug", "sweep", "op", "states", "seconds");
        writeln!(o, "{head}").out()?;
    }
    for (_, sabotage) in Sabotage::ALL {
        let c = crashtest::mutants::catch(sabotage, a.block_size)
            .map_err(|e| Failure::plain(CMD, describe(&e)).errno(e.errno()))?;
        if !a.json {
            let op = c.op_index.map_or("-".into(), |i| i.to_string());
            let what = c.op.as_deref().unwrap_or("SURVIVED every sweep");
            let line = format!(
                "{:<24} {:<7} {op:>4} {:>8} {:>7.1}  {what}",
                c.sabotage,
                c.workload.unwrap_or("-"),
                c.states,
                c.seconds
            );
            writeln!(o, "{line}").out()?;
        }
        all.push(c);
    }
    if a.json {
        crate::json::print(serde_json::json!({ "block_size": a.block_size, "mutants": all }))?;
    }
    if all.iter().any(|c| c.workload.is_none()) {
        return Err(Failure::status(4));
    }
    Ok(())
}

fn print_report(a: &CrashtestArgs, r: &Report) -> CliResult {
    if a.json {
        return crate::json::print(serde_json::to_value(r).map_err(|e| Failure::plain(CMD, e))?);
    }
    let mut o = std::io::stdout().lock();
    writeln!(o, "workload        {} (block size {}, seed {})", r.workload, r.block_size, r.seed).out()?;
    writeln!(o, "operations      {} in {} sequences", r.ops, r.sequences).out()?;
    if r.workload == "concurrent" {
        writeln!(
            o,
            "interleaved     {} runs of {} (turns passed with both operations in flight)",
            r.interleaved,
            r.ops / 2
        )
        .out()?;
    }
    writeln!(o, "fences          {}", r.fences).out()?;
    writeln!(
        o,
        "crash states    {} ({} inside recoveries; {} duplicate images skipped)",
        r.states, r.recovery_states, r.duplicates
    )
    .out()?;
    let mean = if r.fences > 0 { (r.states - r.recovery_states) as f64 / r.fences as f64 } else { 0.0 };
    writeln!(o, "images / fence  {mean:.1} on average, at most {}", r.max_images_per_fence).out()?;
    writeln!(o, "time            {:.1} s ({:.0} states/s)", r.seconds, r.states as f64 / r.seconds.max(1e-9)).out()?;
    writeln!(o, "violations      {}", r.violation_count).out()?;
    for v in &r.violations {
        writeln!(o, "\n  op {} of sequence {}: {}", v.op_index, v.sequence, v.op).out()?;
        writeln!(o, "    fence {}, image: {}", v.fence, v.subset).out()?;
        writeln!(o, "    {}", v.reason).out()?;
        if let Some(img) = &v.image {
            writeln!(o, "    saved: {} (udax crashtest --replay {})", img.display(), img.display()).out()?;
        }
    }
    Ok(())
}

fn replay(a: &CrashtestArgs, img: &std::path::Path) -> CliResult {
    let (saved, verdict) = crashtest::replay(img).map_err(|e| Failure::fs(CMD, img, &e))?;
    let mut o = std::io::stdout().lock();
    let v = &saved.violation;
    if a.json {
        let j = serde_json::json!({
            "violation": v,
            "verdict": match &verdict { Ok(m) => format!("matches the state {m}"), Err(e) => e.clone() },
            "ok": verdict.is_ok(),
        });
        crate::json::print(j)?;
    } else {
        writeln!(o, "image           {}", img.display()).out()?;
        writeln!(o, "operation       {} (op {} of sequence {}), fence {}", v.op, v.op_index, v.sequence, v.fence)
            .out()?;
        writeln!(o, "crash image     {}", v.subset).out()?;
        writeln!(o, "found           {}", v.reason).out()?;
        match &verdict {
            Ok(m) => writeln!(o, "now             recovers to the state {m} the operation; no violation").out()?,
            Err(e) => writeln!(o, "now             {e}").out()?,
        }
    }
    if verdict.is_err() {
        return Err(Failure::status(4));
    }
    Ok(())
}
