//! The concurrent workload: two operations run by two threads at once on one mount, their
//! turns changing at fences (by a seeded schedule) and whenever one finds a lock held
//! ([`crate::turnstile`]). A fence orders only its own thread's lines (the recorder keeps each
//! thread's apart), so one thread's commit can persist while the other's stores stay in flight.
//!
//! Each order of the two operations is also run alone, with the same clocks (and checked
//! against the model, [`super::model`]), to give the states an interleaving may pass through: before, either operation alone, and what the run
//! ended with — which must be one of the two orders' results. A crash image must recover to
//! one of those states that includes every operation that had returned.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::{live_tree, Explorer, Op, Progress, Task};
use crate::device::InFlight;
use crate::turnstile::Turnstile;
use crate::{Fs, Result, Timespec};

use super::model::Model;
use super::state::FsState;
use super::workload::Step;

/// The clock of the set-up, and of each thread: the same in every run of a pair, and later
/// than any time the prepared tree holds (so every operation stamps its times).
fn clock(who: usize) -> Timespec {
    Timespec { sec: 4_000_000_000, nsec: who as u32 }
}

/// The lines in flight at one fence, and which threads' operations had returned (bit t: thread t).
type Fence = (Vec<InFlight>, u8);

/// The set-up's thread number for [`clock`].
const SETUP: usize = 2;

/// Runs `f` with the calling thread's clock stopped at `clock(who)`.
fn at_clock<T>(who: usize, f: impl FnOnce() -> T) -> T {
    Timespec::freeze_clock(Some(clock(who)));
    let out = f();
    Timespec::freeze_clock(None);
    out
}

impl Explorer<'_> {
    /// Runs `pair` as two threads interleaved by schedule number `schedule` and checks the crash
    /// images of every fence either thread issued.
    pub(super) fn concurrent(
        &mut self,
        index: usize,
        pair: &[Step],
        schedule: usize,
        prepared: &[u8],
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<()> {
        let (alone, findings) = self.each_order_alone(index, pair, prepared)?;
        let fs = Arc::new(at_clock(SETUP, || self.start(index, prepared))?);
        let before = FsState::capture(&fs).map_err(live_tree)?;
        let mut base = vec![0u8; prepared.len()];
        fs.device().read(0, &mut base)?;
        let mut base = Arc::new(base);

        let done = Arc::new(AtomicU8::new(0));
        let fences: Arc<Mutex<Vec<Fence>>> = Arc::default();
        let (hook, seen) = (fences.clone(), done.clone());
        fs.device().record(Box::new(move |lines| {
            hook.lock().unwrap_or_else(|e| e.into_inner()).push((lines.to_vec(), seen.load(Ordering::SeqCst)))
        }));
        let seed = self.opts.seed ^ ((index * 64 + schedule) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let turn = Turnstile::new(2, schedule % 2, seed, 1 + (schedule / 2 % 3) as u64);
        let returned = run_pair(&fs, pair, &turn, &done);
        let mut trace = turn.trace();
        trace.truncate(24);
        let mut op = Op {
            ring: self.ring.clone(),
            sequence: index,
            index: schedule,
            what: format!("{} | {} (schedule {schedule}: turns {trace:?})", pair[0].describe(), pair[1].describe()),
            allowed: Vec::new(),
            sabotage: self.opts.sabotage,
        };
        let label = || "the running file system".to_string();
        if !returned {
            let task = Task { fence: 0, base, patches: Vec::new(), label: label() };
            let why = "the two operations did not return within a minute: deadlock";
            return self.violation(&op, &task, why.into(), &[]);
        }
        // What the threads left in flight after they returned: a fence of this thread, which
        // touched none of it, makes none of it persistent.
        fs.device().fence();
        fs.device().stop_recording();
        let fences = std::mem::take(&mut *fences.lock().unwrap_or_else(|e| e.into_inner()));
        let after = FsState::capture(&fs).map_err(live_tree)?;

        // The first hand-over before a thread finished shows the two in flight together.
        if turn.trace().len() > 2 {
            self.report.interleaved += 1;
        }
        op.allowed = vec![&before, &after];
        let whole = |reason: String| {
            (Task { fence: fences.len(), base: base.clone(), patches: Vec::new(), label: label() }, reason)
        };
        let mut findings: Vec<_> = findings.into_iter().map(whole).collect();
        if turn.stalled() {
            findings.push(whole("a thread waited 10 s for its turn: the two operations deadlocked".into()));
        }
        if after != alone[0][1] && after != alone[1][1] {
            findings.push(whole("the run ended in a state neither order of the two operations leaves".into()));
        }
        if let Some(stale) = after.stale() {
            findings.push(whole(stale));
        }
        for (task, reason) in findings {
            self.violation(&op, &task, reason, &[])?;
        }
        for (f, (lines, finished)) in fences.into_iter().enumerate() {
            // The states that include every operation that had returned by this fence.
            op.allowed = match finished {
                0 => vec![&before, &alone[0][0], &alone[1][0], &after],
                1 => vec![&alone[0][0], &after],
                2 => vec![&alone[1][0], &after],
                _ => vec![&after],
            };
            base = self.check_fences(&op, base, vec![lines], f)?;
        }
        self.report.ops += 2;
        progress(&Progress {
            ops_done: self.report.ops,
            ops_total: self.ops_total,
            states: self.report.states,
            violations: self.report.violation_count,
        });
        Ok(())
    }

    /// Each order of `pair` alone, checked against the model as it runs: `[t]` holds the state
    /// after thread t's operation ran first, then after both; and what the model found.
    fn each_order_alone(
        &self,
        index: usize,
        pair: &[Step],
        prepared: &[u8],
    ) -> Result<(Vec<Vec<FsState>>, Vec<String>)> {
        let bs = u64::from(self.opts.block_size);
        let (mut alone, mut findings) = (Vec::new(), Vec::new());
        for order in [[0, 1], [1, 0]] {
            let fs = at_clock(SETUP, || self.start(index, prepared))?;
            let mut model = Model::from_state(&FsState::capture(&fs).map_err(live_tree)?);
            let mut states = Vec::new();
            for t in order {
                let got = at_clock(t, || pair[t].apply(&fs)).map_err(|e| e.errno());
                let st = FsState::capture(&fs).map_err(live_tree)?;
                if let Some(wrong) = model.disagrees(&pair[t], bs, got, &st) {
                    findings.push(format!("{} run alone: {wrong}", pair[t].describe()));
                }
                states.push(st);
            }
            alone.push(states);
        }
        Ok((alone, findings))
    }
}

/// Runs the two steps on two threads that take turns at `turn`; `done` gets bit t when thread
/// t's operation returned (before its turn passes on, so every later fence sees it). False when
/// they have not both returned within a minute: then they are left behind, stuck.
fn run_pair(fs: &Arc<Fs>, pair: &[Step], turn: &Arc<Turnstile>, done: &Arc<AtomicU8>) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    for (t, step) in pair.iter().enumerate() {
        let (fs, step, turn, done, tx) = (fs.clone(), step.clone(), turn.clone(), done.clone(), tx.clone());
        std::thread::spawn(move || {
            at_clock(t, || {
                turn.join(t);
                let _ = step.apply(&fs);
                done.fetch_or(1 << t, Ordering::SeqCst);
                turn.leave();
            });
            let _ = tx.send(());
        });
    }
    (0..pair.len()).all(|_| rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok())
}
