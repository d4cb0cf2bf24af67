//! Power-cut crash states (`udax::crashtest`): every image a crash could leave at any fence of
//! seq1, seq2, random sequences and two threads' operations at once recovers to a clean fsck and
//! to a state the operations in flight allow, no file ever shows the poison of free space or
//! bytes past EOF in its page, and every operation agrees with the independent model.
//! `tests/mutants.rs` shows the explorer able to fail: every planted bug is caught.
//!
//! By default the sweeps take a sample small enough for a newcomer's `cargo test`; with
//! `UDAX_LONG=1` (as `.ci/run` sets) they run at the full budget and floor.

use udax::crashtest::{self, Options, Report, Sabotage, Workload};

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

/// The full budget (`UDAX_LONG=1`) or the quick one.
fn long() -> bool {
    std::env::var("UDAX_LONG").is_ok_and(|v| v == "1")
}

/// Crash inside the recovery of one crash state in this many (`UDAX_CRASH_RECOVERY_EVERY`, 1:
/// every state). The recovery protocol is the same whatever the state, and at every state
/// its nested images were over four fifths of the long run.
fn recovery_every() -> usize {
    env("UDAX_CRASH_RECOVERY_EVERY", if long() { 4 } else { 1 }) as usize
}

fn explore(workload: Workload, block_size: u32, sabotage: Sabotage) -> Report {
    let (per_fence, per_recovery_fence) = if long() { (96, 3) } else { (12, 1) };
    let opts = Options {
        workload,
        block_size,
        sabotage,
        seed: env("UDAX_CRASH_SEED", 1),
        per_fence: env("UDAX_CRASH_PER_FENCE", per_fence) as usize,
        per_recovery_fence: env("UDAX_CRASH_PER_RECOVERY_FENCE", per_recovery_fence) as usize,
        recovery_every: recovery_every(),
        ..Default::default()
    };
    crashtest::run(&opts, &mut |_| {}).unwrap()
}

fn summary(r: &Report) -> String {
    format!(
        "{} bs {}: {} ops, {} fences, {} states ({} inside recoveries), at most {} images per fence, {} violations in {:.1} s",
        r.workload,
        r.block_size,
        r.ops,
        r.fences,
        r.states,
        r.recovery_states,
        r.max_images_per_fence,
        r.violation_count,
        r.seconds
    )
}

#[test]
fn seq1_and_seq2_recover_to_a_state_before_or_after_each_operation() {
    // Crash images of the workloads themselves, not counting those taken inside recoveries.
    let (mut states, mut nested) = (0, 0);
    for (workload, bs) in
        [(Workload::Seq1, 1024), (Workload::Seq1, 4096), (Workload::Seq2, 1024), (Workload::Seq2, 4096)]
    {
        let r = explore(workload, bs, Sabotage::None);
        println!("{}", summary(&r));
        assert_eq!(r.violation_count, 0, "{}; first: {:?}", summary(&r), r.violations.first());
        states += r.states - r.recovery_states;
        nested += r.recovery_states;
    }
    println!("{states} crash states (and {nested} more inside recoveries), no violation");
    let floor = if long() { 20_000 } else { 4_000 };
    assert!(states >= floor, "only {states} crash states explored");
}

#[test]
fn random_sequences_recover_to_a_state_before_or_after_each_operation() {
    // `UDAX_CRASH_OPS` and `UDAX_CRASH_SEED` lengthen or vary the run (README: long runs).
    for bs in [1024, 4096] {
        let r = explore(Workload::Random { ops: env("UDAX_CRASH_OPS", 40) as usize }, bs, Sabotage::None);
        println!("{}", summary(&r));
        assert_eq!(r.violation_count, 0, "{}; first: {:?}", summary(&r), r.violations.first());
    }
}

#[test]
fn two_threads_at_once_recover_to_a_state_some_order_of_their_operations_allows() {
    // Every pair of the set, on two threads interleaved at fences and held locks; every other
    // pair starts with the ring nearly full, so commits and checkpoints of the two threads meet.
    let (schedules, per_fence) = if long() { (2, 16) } else { (1, 8) };
    for bs in [1024, 4096] {
        let opts = Options {
            workload: Workload::Concurrent { schedules },
            block_size: bs,
            fill_journal: true,
            journal_bytes: 16 << 10,
            seed: env("UDAX_CRASH_SEED", 1),
            per_fence,
            per_recovery_fence: 1,
            recovery_every: recovery_every(),
            ..Default::default()
        };
        let r = crashtest::run(&opts, &mut |_| {}).unwrap();
        println!("{}; {} of {} runs interleaved", summary(&r), r.interleaved, r.ops / 2);
        assert_eq!(r.violation_count, 0, "{}; first: {:?}", summary(&r), r.violations.first());
        // The schedules must really interleave: most runs hand the turn over mid-operation.
        assert!(r.interleaved * 2 > r.ops / 2, "only {} of {} runs interleaved", r.interleaved, r.ops / 2);
    }
}
