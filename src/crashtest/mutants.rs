//! The mutation sweep: each planted bug ([`Sabotage::ALL`]) against the sweeps the CI runs, in
//! order, until one reports a violation. A bug no sweep catches is a gap in the explorer.

use serde::Serialize;

use super::{run, Options, Sabotage, Workload};
use crate::Result;

/// The sweeps a planted bug meets, in order: each operation alone; every pair of operations,
/// every other pair starting with the ring nearly full; a long random sequence whose small ring
/// wraps and checkpoints often; pairs of operations run by two threads at once, every other pair
/// starting with the ring nearly full.
pub fn sweeps(block_size: u32) -> Vec<Options> {
    let base = Options {
        block_size,
        per_fence: 12,
        per_recovery_fence: 1,
        first_violation: true,
        journal_bytes: 16 << 10,
        ..Default::default()
    };
    vec![
        Options { workload: Workload::Seq1, ..base.clone() },
        Options { workload: Workload::Seq2, fill_journal: true, ..base.clone() },
        Options { workload: Workload::Random { ops: 300 }, ..base.clone() },
        Options { workload: Workload::Concurrent { schedules: 2 }, fill_journal: true, ..base },
    ]
}

/// How one planted bug fared.
#[derive(Debug, Clone, Serialize)]
pub struct Caught {
    /// The planted bug's name ([`Sabotage`]'s, as `--sabotage` takes it).
    pub sabotage: &'static str,
    /// The sweep that caught it (none: it survived every sweep).
    pub workload: Option<&'static str>,
    /// The operation in flight at the first violation, and its index in its sequence.
    pub op: Option<String>,
    /// Index of that operation in its sequence.
    pub op_index: Option<usize>,
    /// Crash states checked, over every sweep it met, until caught.
    pub states: u64,
    /// Wall-clock time spent on it.
    pub seconds: f64,
    /// Why the first violating image was refused.
    pub reason: Option<String>,
}

/// Runs the sweeps against `sabotage` until one catches it.
pub fn catch(sabotage: Sabotage, block_size: u32) -> Result<Caught> {
    let mut c = Caught {
        sabotage: sabotage.name(),
        workload: None,
        op: None,
        op_index: None,
        states: 0,
        seconds: 0.0,
        reason: None,
    };
    for opts in sweeps(block_size) {
        let r = run(&Options { sabotage, ..opts.clone() }, &mut |_| {})?;
        c.states += r.states;
        c.seconds += r.seconds;
        if let Some(v) = r.violations.first() {
            c.workload = Some(opts.workload.name());
            (c.op, c.op_index, c.reason) = (Some(v.op.clone()), Some(v.op_index), Some(v.reason.clone()));
            break;
        }
    }
    Ok(c)
}
