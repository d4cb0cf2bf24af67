//! What an exploration reports: the violations it found, its totals and progress, and the
//! file `udax crashtest --replay` reads next to a saved image.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FsState;

/// One crash image that showed a state the guarantees forbid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Violation {
    /// Index of the sequence in the workload.
    pub sequence: usize,
    /// Index of the operation in the sequence.
    pub op_index: usize,
    /// The operation, as the workload prints it.
    pub op: String,
    /// Fence index inside the operation (the fence after it returned is the last).
    pub fence: usize,
    /// Which in-flight lines the image took.
    pub subset: String,
    /// Why the recovered state is not allowed.
    pub reason: String,
    /// The saved image, when `save_dir` was given.
    pub image: Option<PathBuf>,
}

/// What an exploration found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// [`Workload::name`](super::Workload::name) of the run.
    pub workload: String,
    /// Block size of the explored image, in bytes.
    pub block_size: u32,
    /// The run's seed.
    pub seed: u64,
    /// Operation sequences run, each on a fresh image.
    pub sequences: u64,
    /// Operations run.
    pub ops: u64,
    /// Fences the operations issued; crash images are built at each.
    pub fences: u64,
    /// Distinct crash images recovered and checked (including those inside recoveries).
    pub states: u64,
    /// Of `states`, images crashed inside a recovery.
    pub recovery_states: u64,
    /// Images built twice and checked once.
    pub duplicates: u64,
    /// Most images built at any one fence.
    pub max_images_per_fence: u64,
    /// Concurrent workload: runs whose turn passed between the threads while both operations
    /// were in flight (the others ran one operation after the other).
    pub interleaved: u64,
    /// Images that violated a guarantee.
    pub violation_count: u64,
    /// The first violations (at most 100).
    pub violations: Vec<Violation>,
    /// Wall-clock time of the run.
    pub seconds: f64,
}

/// Progress after each operation.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Operations run so far.
    pub ops_done: u64,
    /// Operations in the whole run.
    pub ops_total: u64,
    /// Crash states checked so far.
    pub states: u64,
    /// Violations found so far.
    pub violations: u64,
}

/// What `--replay` keeps next to a saved image.
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    /// The violation the image shows.
    pub violation: Violation,
    /// The planted bug the run had (`udax crashtest --sabotage` names), recovery keeps it.
    #[serde(default)]
    pub sabotage: String,
    /// The state before the operation.
    pub before: FsState,
    /// The state after it.
    pub after: FsState,
    /// States between the two that operations in flight together may also leave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub between: Vec<FsState>,
}
