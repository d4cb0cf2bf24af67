//! `udax crashtest`: explores the crash states of a workload and replays saved violations.

use std::io::Write;

use udax::crashtest::{self, Options, Report, Sabotage, Workload};

use crate::common::{describe, stderr_is_tty, CliResult, Failure, OutResult, Progress};
use crate::CrashtestArgs;

const CMD: &str = "crashtest";

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
    .map_err(|e| Failure::plain(CMD, describe(&e)))?;
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
        let c = crashtest::mutants::catch(sabotage, a.block_size).map_err(|e| Failure::plain(CMD, describe(&e)))?;
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
        let v = serde_json::to_string_pretty(&all).map_err(|e| Failure::plain(CMD, e))?;
        writeln!(o, "{v}").out()?;
    }
    if all.iter().any(|c| c.workload.is_none()) {
        return Err(Failure::status(4));
    }
    Ok(())
}

fn print_report(a: &CrashtestArgs, r: &Report) -> CliResult {
    let mut o = std::io::stdout().lock();
    if a.json {
        let v = serde_json::to_string_pretty(r).map_err(|e| Failure::plain(CMD, e))?;
        return writeln!(o, "{v}").out();
    }
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
        writeln!(o, "{j:#}").out()?;
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
