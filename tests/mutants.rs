//! The mutation test of the crash explorer: every planted bug (`Sabotage::ALL`: commit
//! ordering, content fencing, checksums, recovery order, ring wrap, block reuse, zeroing of new
//! and truncated blocks, in-place metadata, rename atomicity, attribute blocks, directory
//! entries, first stores through a mapping, a checkpoint that passes entries never written
//! back) must be caught by the sweeps the CI runs. One that
//! survives is a gap in the explorer, and fails the test.

use udax::crashtest::{mutants, Sabotage};

#[test]
fn every_planted_bug_is_caught() {
    let mut survivors = Vec::new();
    println!("{:<24} {:<7} {:>4} {:>8} {:>7}  operation", "planted bug", "sweep", "op", "states", "seconds");
    for (name, sabotage) in Sabotage::ALL {
        let c = mutants::catch(sabotage, 1024).unwrap();
        println!(
            "{name:<24} {:<7} {:>4} {:>8} {:>7.1}  {}",
            c.workload.unwrap_or("-"),
            c.op_index.map_or("-".into(), |i| i.to_string()),
            c.states,
            c.seconds,
            c.op.as_deref().unwrap_or("survived every sweep")
        );
        if c.workload.is_none() {
            survivors.push(name);
        }
    }
    assert!(survivors.is_empty(), "planted bugs no sweep caught: {survivors:?}");
}

/// The concurrent sweep on its own catches a checkpoint that moves past entries applied in
/// place and never written back, whichever thread applied them.
#[test]
fn the_concurrent_sweep_catches_a_checkpoint_that_writes_nothing_back() {
    use udax::crashtest::{run, Options, Workload};
    let sweep = mutants::sweeps(1024).into_iter().find(|o| matches!(o.workload, Workload::Concurrent { .. })).unwrap();
    let r = run(&Options { sabotage: Sabotage::CheckpointUnflushed, ..sweep }, &mut |_| {}).unwrap();
    let first = r.violations.first().expect("the planted bug went unseen");
    println!("caught at {} after {} states: {}", first.op, r.states, first.reason);
}
