//! `udax bench`'s results: per-batch percentiles, their medians over rounds, the ratios and the
//! targets of issue 22, the thread scaling, as a table or one JSON object, and the bars the
//! chart draws.

use serde_json::{json, Value};

use super::threads::Scaling;
use super::Op;
use crate::common::{CliResult, OutResult};
use crate::json::Object;

/// One batch's latencies in nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    p50: u64,
    p99: u64,
    p9999: u64,
    calls: u64,
}

impl Figures {
    /// The percentiles of `samples` (sorted here; at least one).
    pub fn of(samples: &mut [u64]) -> Figures {
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i]
        };
        Figures { p50: at(0.5), p99: at(0.99), p9999: at(0.9999), calls: samples.len() as u64 }
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// What the report says beside the figures.
#[derive(Debug, Default)]
pub struct Notes {
    /// A line per operation.
    pub per_op: Vec<(Op, String)>,
    /// Files in the image the mount operation mounted.
    pub mount_files: Option<u64>,
    /// The last timed mount's own account of its steps.
    pub mount_report: Option<udax::MountReport>,
}

/// What a figure is held to: udax's over the floor's or tmpfs's, or udax's own time.
#[derive(Debug, Clone, Copy)]
enum Bound {
    AtMost(f64, Against),
    AtLeast(f64, Against),
    /// At most this many nanoseconds.
    Within(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Against {
    Floor,
    Tmpfs,
}

/// The targets of issue 22's table (and issue 17's for first stores).
fn targets(op: Op) -> &'static [Bound] {
    use Against::{Floor, Tmpfs};
    use Bound::{AtLeast, AtMost, Within};
    match op {
        Op::Overwrite4k => &[AtMost(1.3, Floor)],
        Op::Append4k => &[AtMost(0.4, Tmpfs), AtMost(3.0, Floor)],
        Op::Pread4k => &[AtMost(1.1, Floor)],
        Op::SeqWrite1m | Op::SeqRead1m => &[AtLeast(0.9, Floor)],
        Op::Create | Op::CreateIno | Op::Unlink | Op::Rename => &[AtMost(0.3, Tmpfs)],
        Op::Stat | Op::Lookup => &[AtMost(0.25, Tmpfs)],
        Op::FirstStore4k => &[AtMost(2.0, Tmpfs)],
        Op::FirstStore2m => &[AtMost(0.5, Tmpfs)],
        Op::Mount => &[Within(1e9)],
        Op::Readdir10k | Op::MmapSetup1g => &[],
    }
}

fn target_text(op: Op) -> String {
    let t = targets(op);
    if t.is_empty() {
        return "–".into();
    }
    let one = |b: &Bound| match b {
        Bound::AtMost(k, a) => format!("≤ {k}× {}", against(*a)),
        Bound::AtLeast(k, a) => format!("≥ {k}× {}", against(*a)),
        Bound::Within(ns) => format!("≤ {} s", ns / 1e9),
    };
    t.iter().map(one).collect::<Vec<_>>().join(", ")
}

fn against(a: Against) -> &'static str {
    match a {
        Against::Floor => "floor",
        Against::Tmpfs => "tmpfs",
    }
}

/// One operation's medians over rounds, per side (floor, tmpfs, udax; None where the side has
/// no figure), in the unit shown.
struct Row {
    op: Op,
    sides: [Option<[f64; 3]>; 3],
    /// udax calls timed, over all rounds.
    calls: u64,
}

impl Row {
    fn p50(&self, side: usize) -> Option<f64> {
        self.sides[side].map(|s| s[0])
    }

    /// udax's p50 over the floor's and tmpfs's: of nanoseconds, or of GB/s for bandwidth.
    fn ratios(&self) -> (Option<f64>, Option<f64>) {
        let over = |side| Some(self.p50(2)? / self.p50(side)?);
        (over(0), over(1))
    }

    /// Whether every target holds; None when a figure it needs is missing.
    fn target_met(&self) -> Option<bool> {
        let (vs_floor, vs_tmpfs) = self.ratios();
        let of = |a: Against| match a {
            Against::Floor => vs_floor,
            Against::Tmpfs => vs_tmpfs,
        };
        let mut met = true;
        for b in targets(self.op) {
            met &= match *b {
                Bound::AtMost(k, a) => of(a)? <= k,
                Bound::AtLeast(k, a) => of(a)? >= k,
                Bound::Within(ns) => self.p50(2)? <= ns,
            };
        }
        Some(met)
    }

    fn unit(&self) -> &'static str {
        if self.op.bandwidth_bytes().is_some() {
            "GB/s"
        } else {
            "ns"
        }
    }
}

/// One operation's bars in the chart: udax's time over tmpfs's and over the floor's (the
/// inverse of the GB/s ratio for bandwidth), and the most each may be.
pub struct Bar {
    pub name: String,
    pub ratios: [Option<f64>; 2],
    pub targets: [Option<f64>; 2],
}

pub struct Report {
    rounds: usize,
    rows: Vec<Row>,
    notes: Notes,
    pinned: bool,
    pinning: String,
    scaling: Vec<Scaling>,
}

impl Report {
    /// `figures[k][side]`: operation `k`'s batches on each side, one per round (none for a side
    /// without a figure); `pinning`: whether the rounds ran pinned, and how, in words.
    pub fn new(
        rounds: usize,
        ops: &[Op],
        figures: &[[Vec<Figures>; 3]],
        notes: Notes,
        pinning: (bool, String),
        scaling: Vec<Scaling>,
    ) -> Report {
        let rows = ops.iter().zip(figures).map(|(&op, f)| row(op, f)).collect();
        Report { rounds, rows, notes, pinned: pinning.0, pinning: pinning.1, scaling }
    }

    pub fn json(&self) -> Value {
        let ops: Vec<Value> = self.rows.iter().map(|r| row_json(r, &self.notes)).collect();
        let threads: Vec<Value> = self.scaling.iter().map(scaling_json).collect();
        json!({
            "machine": machine(),
            "pinned": self.pinned,
            "pinning": self.pinning,
            "rounds": self.rounds,
            "ops": ops,
            "threads": threads,
        })
    }

    /// The chart's bars: every operation with a ratio.
    pub fn bars(&self) -> Vec<Bar> {
        let mut out = Vec::new();
        for r in &self.rows {
            let (vs_floor, vs_tmpfs) = r.ratios();
            let bandwidth = r.op.bandwidth_bytes().is_some();
            let time = |x: Option<f64>| x.map(|x| if bandwidth { 1.0 / x } else { x });
            let target = |against: Against| {
                targets(r.op).iter().find_map(|b| match *b {
                    Bound::AtMost(k, a) if a == against => Some(k),
                    Bound::AtLeast(k, a) if a == against => Some(1.0 / k),
                    _ => None,
                })
            };
            if vs_floor.is_none() && vs_tmpfs.is_none() {
                continue;
            }
            out.push(Bar {
                name: r.op.name().into(),
                ratios: [time(vs_tmpfs), time(vs_floor)],
                targets: [target(Against::Tmpfs), target(Against::Floor)],
            });
        }
        out
    }

    pub fn print(&self) -> CliResult {
        use std::io::Write;
        let m = machine();
        let mut out = std::io::stdout().lock();
        let head = format!(
            "udax bench: {} round(s), medians over rounds; {} CPUs, {}, Linux {}; {}",
            self.rounds,
            m["cpus"],
            m["cpu_model"].as_str().unwrap_or("?"),
            m["kernel"].as_str().unwrap_or("?"),
            self.pinning
        );
        writeln!(out, "{head}\n").out()?;
        let h = ["op", "floor", "tmpfs", "udax", "udax/floor", "udax/tmpfs", "target"];
        writeln!(out, "{:<15} {:>10} {:>10} {:>10} {:>10} {:>10}  {}", h[0], h[1], h[2], h[3], h[4], h[5], h[6])
            .out()?;
        for r in &self.rows {
            let (vs_floor, vs_tmpfs) = r.ratios();
            let mark = match r.target_met() {
                _ if targets(r.op).is_empty() => "",
                Some(true) => " (met)",
                Some(false) => " (missed)",
                None => " (no figure)",
            };
            writeln!(
                out,
                "{:<15} {:>10} {:>10} {:>10} {:>10} {:>10}  {}{mark}",
                r.op.name(),
                shown(r, 0, 0),
                shown(r, 1, 0),
                shown(r, 2, 0),
                ratio(vs_floor),
                ratio(vs_tmpfs),
                target_text(r.op)
            )
            .out()?;
        }
        writeln!(out, "\ntails (p99 / p99.99; GB/s at those latencies for bandwidth)").out()?;
        for r in &self.rows {
            let tail = |s| format!("{} / {}", shown(r, s, 1), shown(r, s, 2));
            writeln!(out, "{:<15} floor {:>22}  tmpfs {:>22}  udax {:>22}", r.op.name(), tail(0), tail(1), tail(2))
                .out()?;
        }
        self.print_scaling(&mut out)?;
        self.print_notes(&mut out)
    }

    fn print_scaling(&self, out: &mut impl std::io::Write) -> CliResult {
        let Some(n) = self.scaling.first().map(|s| s.threads) else { return Ok(()) };
        writeln!(out, "\nindependent files in {n} threads (calls/s of all threads; scaling: {n} threads over 1)")
            .out()?;
        let (t1, tn, u1, un) =
            ("tmpfs x1".to_string(), format!("tmpfs x{n}"), "udax x1".to_string(), format!("udax x{n}"));
        let h = ["op", &t1, &tn, "scaling", &u1, &un, "scaling", "target"];
        writeln!(
            out,
            "{:<15} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}  {}",
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
        )
        .out()?;
        for s in &self.scaling {
            let (tmpfs, udax) = s.ratios();
            let mark = if udax >= s.target() { "met" } else { "missed" };
            writeln!(
                out,
                "{:<15} {:>10} {:>10} {:>8.2} {:>10} {:>10} {:>8.2}  ≥ {:.2}× 1 thread ({mark})",
                format!("{} x{}", s.op.name(), s.threads),
                rate(s.tmpfs[0]),
                rate(s.tmpfs[1]),
                tmpfs,
                rate(s.udax[0]),
                rate(s.udax[1]),
                udax,
                s.target()
            )
            .out()?;
        }
        Ok(())
    }

    fn print_notes(&self, out: &mut impl std::io::Write) -> CliResult {
        let mut lines: Vec<String> = Vec::new();
        if self.rows.iter().any(|r| r.op == Op::FirstStore2m) {
            lines.push("first-store-2m: each figure is per 4 KiB page (a call stores once into each of 512)".into());
        }
        let unpinned: Vec<&str> = self.rows.iter().filter(|r| !r.op.pinned()).map(|r| r.op.name()).collect();
        if self.pinned && !unpinned.is_empty() {
            lines.push(format!("{}: timed unpinned at normal priority", unpinned.join(", ")));
        }
        if let Some(files) = self.notes.mount_files {
            lines.push(format!("mount: an image of {files} files"));
        }
        if let Some(r) = &self.notes.mount_report {
            lines.push(format!("mount: the last one's steps: {r}"));
        }
        lines.extend(self.notes.per_op.iter().map(|(op, text)| format!("{}: {text}", op.name())));
        if !lines.is_empty() {
            writeln!(out, "\nnotes").out()?;
        }
        for l in lines {
            writeln!(out, "  {l}").out()?;
        }
        Ok(())
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}"))
}

/// Calls per second, shortened.
fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else {
        format!("{:.0}k", v / 1e3)
    }
}

/// Side `side`'s figure `q` (0: p50, 1: p99, 2: p99.99) with its unit.
fn shown(r: &Row, side: usize, q: usize) -> String {
    let Some(v) = r.sides[side].map(|s| s[q]) else { return "–".into() };
    match r.unit() {
        "GB/s" => format!("{v:.2} GB/s"),
        _ if v < 1e5 => format!("{v:.0} ns"),
        _ if v < 1e8 => format!("{:.0} µs", v / 1e3),
        _ => format!("{:.0} ms", v / 1e6),
    }
}

fn row(op: Op, f: &[Vec<Figures>; 3]) -> Row {
    let mut sides = [None; 3];
    for (side, batches) in f.iter().enumerate() {
        if batches.is_empty() {
            continue;
        }
        let qs = [
            median(batches.iter().map(|b| b.p50).collect()),
            median(batches.iter().map(|b| b.p99).collect()),
            median(batches.iter().map(|b| b.p9999).collect()),
        ];
        sides[side] = Some(qs.map(|ns| match op.bandwidth_bytes() {
            Some(bytes) => bytes as f64 / ns as f64,
            None => ns as f64,
        }));
    }
    Row { op, sides, calls: f[2].iter().map(|b| b.calls).sum() }
}

fn row_json(r: &Row, notes: &Notes) -> Value {
    let mut o = Object::new();
    o.insert("name".into(), r.op.name().into());
    o.insert("unit".into(), r.unit().into());
    for (s, side) in ["floor", "tmpfs", "udax"].iter().enumerate() {
        for (q, key) in ["p50", "p99", "p9999"].iter().enumerate() {
            let v: Value = match r.sides[s].map(|v| v[q]) {
                None => Value::Null,
                Some(v) if r.unit() == "ns" => (v as u64).into(),
                Some(v) => v.into(),
            };
            o.insert(format!("{side}_{key}_ns"), v);
        }
    }
    let (vs_floor, vs_tmpfs) = r.ratios();
    o.insert("vs_tmpfs".into(), vs_tmpfs.into());
    o.insert("vs_floor".into(), vs_floor.into());
    o.insert("target".into(), target_text(r.op).into());
    o.insert("target_met".into(), r.target_met().into());
    o.insert("udax_calls".into(), r.calls.into());
    if r.op == Op::Mount {
        o.insert("files".into(), notes.mount_files.into());
        // The last mount's steps (`*_ns`), as `udax info --json` shows them.
        o.insert("steps".into(), notes.mount_report.and_then(|m| serde_json::to_value(m).ok()).unwrap_or(Value::Null));
    }
    if r.op == Op::FirstStore2m {
        o.insert("per".into(), "4 KiB".into());
    }
    let text: Vec<&str> = notes.per_op.iter().filter(|(op, _)| *op == r.op).map(|(_, t)| t.as_str()).collect();
    if !text.is_empty() {
        o.insert("note".into(), text.join("; ").into());
    }
    Value::Object(o)
}

fn scaling_json(s: &Scaling) -> Value {
    let (tmpfs, udax) = s.ratios();
    json!({
        "name": format!("{} x{}", s.op.name(), s.threads),
        "op": s.op.name(),
        "threads": s.threads,
        "tmpfs_1_thread_ops_per_s": s.tmpfs[0],
        "tmpfs_ops_per_s": s.tmpfs[1],
        "tmpfs_scaling": tmpfs,
        "udax_1_thread_ops_per_s": s.udax[0],
        "udax_ops_per_s": s.udax[1],
        "udax_scaling": udax,
        "target": format!("≥ {:.2}× 1 thread", s.target()),
        "target_met": udax >= s.target(),
    })
}

/// `{"cpus", "cpu_model", "kernel"}` of this machine.
fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |k| k.trim().to_string());
    json!({ "cpus": cpus, "cpu_model": model, "kernel": kernel })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_batch() {
        let mut v: Vec<u64> = (1..=10_000).rev().collect();
        let f = Figures::of(&mut v);
        assert_eq!((f.p50, f.p99, f.p9999), (5000, 9900, 9999));
        let f = Figures::of(&mut [7]);
        assert_eq!((f.p50, f.p99, f.p9999), (7, 7, 7));
    }

    #[test]
    fn targets_read_as_in_the_issue() {
        assert_eq!(target_text(Op::Append4k), "≤ 0.4× tmpfs, ≤ 3× floor");
        assert_eq!(target_text(Op::SeqRead1m), "≥ 0.9× floor");
        assert_eq!(target_text(Op::FirstStore2m), "≤ 0.5× tmpfs");
        assert_eq!(target_text(Op::Mount), "≤ 1 s");
        assert_eq!(target_text(Op::Readdir10k), "–");
    }

    #[test]
    fn a_missing_side_has_no_ratio_and_no_verdict() {
        let f = |ns| vec![Figures { p50: ns, p99: ns, p9999: ns, calls: 1 }];
        let r = row(Op::FirstStore4k, &[f(100), vec![], f(300)]);
        assert_eq!(r.ratios(), (Some(3.0), None));
        assert_eq!(r.target_met(), None);
        let r = row(Op::Mount, &[vec![], vec![], f(900_000_000)]);
        assert_eq!((r.target_met(), shown(&r, 2, 0).as_str()), (Some(true), "900 ms"));
    }
}
