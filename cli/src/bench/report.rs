//! `udax bench`'s results: per-batch percentiles, their medians over rounds, the ratios and the
//! targets of issue 22, as a table or one JSON object.

use serde_json::{json, Value};

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

/// What a ratio is held to: udax's figure over the floor's or tmpfs's.
#[derive(Debug, Clone, Copy)]
enum Bound {
    AtMost(f64, Against),
    AtLeast(f64, Against),
}

#[derive(Debug, Clone, Copy)]
enum Against {
    Floor,
    Tmpfs,
}

/// The targets of issue 22's table.
fn targets(op: Op) -> &'static [Bound] {
    use Against::{Floor, Tmpfs};
    use Bound::{AtLeast, AtMost};
    match op {
        Op::Overwrite4k => &[AtMost(1.3, Floor)],
        Op::Append4k => &[AtMost(0.4, Tmpfs), AtMost(3.0, Floor)],
        Op::Pread4k => &[AtMost(1.1, Floor)],
        Op::SeqWrite1m | Op::SeqRead1m => &[AtLeast(0.9, Floor)],
        Op::Create | Op::Unlink | Op::Rename => &[AtMost(0.3, Tmpfs)],
        Op::Stat => &[AtMost(0.25, Tmpfs)],
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
    };
    t.iter().map(one).collect::<Vec<_>>().join(", ")
}

fn against(a: Against) -> &'static str {
    match a {
        Against::Floor => "floor",
        Against::Tmpfs => "tmpfs",
    }
}

/// One operation's medians over rounds, per side (floor, tmpfs, udax), in the unit shown.
struct Row {
    op: Op,
    sides: [[f64; 3]; 3],
    /// udax calls timed, over all rounds.
    calls: u64,
}

impl Row {
    fn p50(&self, side: usize) -> f64 {
        self.sides[side][0]
    }

    /// udax's p50 over the floor's and tmpfs's: of nanoseconds, or of GB/s for bandwidth.
    fn ratios(&self) -> (f64, f64) {
        (self.p50(2) / self.p50(0), self.p50(2) / self.p50(1))
    }

    fn target_met(&self) -> bool {
        let (vs_floor, vs_tmpfs) = self.ratios();
        let of = |a: Against| match a {
            Against::Floor => vs_floor,
            Against::Tmpfs => vs_tmpfs,
        };
        targets(self.op).iter().all(|b| match *b {
            Bound::AtMost(k, a) => of(a) <= k,
            Bound::AtLeast(k, a) => of(a) >= k,
        })
    }

    fn unit(&self) -> &'static str {
        if self.op.bandwidth_bytes().is_some() {
            "GB/s"
        } else {
            "ns"
        }
    }
}

pub struct Report {
    rounds: usize,
    rows: Vec<Row>,
}

impl Report {
    /// `figures[k][side]`: operation `k`'s batches on each side, one per round.
    pub fn new(rounds: usize, ops: &[Op], figures: &[[Vec<Figures>; 3]]) -> Report {
        let rows = ops.iter().zip(figures).map(|(&op, f)| row(op, f)).collect();
        Report { rounds, rows }
    }

    pub fn json(&self) -> Value {
        let ops: Vec<Value> = self.rows.iter().map(row_json).collect();
        json!({ "machine": machine(), "rounds": self.rounds, "ops": ops })
    }

    pub fn print(&self) -> CliResult {
        use std::io::Write;
        let m = machine();
        let mut out = std::io::stdout().lock();
        let head = format!(
            "udax bench: {} round(s), medians over rounds; {} CPUs, {}, Linux {}; not pinned, normal priority",
            self.rounds,
            m["cpus"],
            m["cpu_model"].as_str().unwrap_or("?"),
            m["kernel"].as_str().unwrap_or("?")
        );
        writeln!(out, "{head}\n").out()?;
        let header = ["op", "floor", "tmpfs", "udax", "udax/floor", "udax/tmpfs", "target"];
        writeln!(
            out,
            "{:<13} {:>10} {:>10} {:>10} {:>10} {:>10}  {}",
            header[0], header[1], header[2], header[3], header[4], header[5], header[6]
        )
        .out()?;
        for r in &self.rows {
            let (vs_floor, vs_tmpfs) = r.ratios();
            let mark = if r.target_met() { "met" } else { "missed" };
            writeln!(
                out,
                "{:<13} {:>10} {:>10} {:>10} {:>10.2} {:>10.2}  {} ({mark})",
                r.op.name(),
                shown(r, 0, 0),
                shown(r, 1, 0),
                shown(r, 2, 0),
                vs_floor,
                vs_tmpfs,
                target_text(r.op)
            )
            .out()?;
        }
        writeln!(out, "\ntails (p99 / p99.99; GB/s at those latencies for bandwidth)").out()?;
        for r in &self.rows {
            let tail = |s| format!("{} / {}", shown(r, s, 1), shown(r, s, 2));
            writeln!(out, "{:<13} floor {:>22}  tmpfs {:>22}  udax {:>22}", r.op.name(), tail(0), tail(1), tail(2))
                .out()?;
        }
        Ok(())
    }
}

/// Side `side`'s figure `q` (0: p50, 1: p99, 2: p99.99) with its unit.
fn shown(r: &Row, side: usize, q: usize) -> String {
    let v = r.sides[side][q];
    match r.unit() {
        "GB/s" => format!("{v:.2} GB/s"),
        _ => format!("{v:.0} ns"),
    }
}

fn row(op: Op, f: &[Vec<Figures>; 3]) -> Row {
    let mut sides = [[0.0; 3]; 3];
    for (side, batches) in f.iter().enumerate() {
        let qs = [
            median(batches.iter().map(|b| b.p50).collect()),
            median(batches.iter().map(|b| b.p99).collect()),
            median(batches.iter().map(|b| b.p9999).collect()),
        ];
        for (q, ns) in qs.into_iter().enumerate() {
            sides[side][q] = match op.bandwidth_bytes() {
                Some(bytes) => bytes as f64 / ns as f64,
                None => ns as f64,
            };
        }
    }
    Row { op, sides, calls: f[2].iter().map(|b| b.calls).sum() }
}

fn row_json(r: &Row) -> Value {
    let mut o = Object::new();
    o.insert("name".into(), r.op.name().into());
    o.insert("unit".into(), r.unit().into());
    for (s, side) in ["floor", "tmpfs", "udax"].iter().enumerate() {
        for (q, key) in ["p50", "p99", "p9999"].iter().enumerate() {
            let v = r.sides[s][q];
            let v: Value = if r.unit() == "ns" { (v as u64).into() } else { v.into() };
            o.insert(format!("{side}_{key}_ns"), v);
        }
    }
    let (vs_floor, vs_tmpfs) = r.ratios();
    o.insert("vs_tmpfs".into(), vs_tmpfs.into());
    o.insert("vs_floor".into(), vs_floor.into());
    o.insert("target".into(), target_text(r.op).into());
    o.insert("target_met".into(), r.target_met().into());
    o.insert("udax_calls".into(), r.calls.into());
    Value::Object(o)
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
    }
}
