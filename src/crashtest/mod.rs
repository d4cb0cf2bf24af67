//! The crash-state explorer behind `udax crashtest` (DESIGN.md "Guarantees and what proves them").
//!
//! A workload runs on a small prepared image while the device records every cache line stored or
//! written back, with the bytes it held after each store ([`Device::record`]). At each fence the
//! explorer builds the images a power cut could leave: what earlier fences made persistent, plus
//! none, all, or chosen subsets of the lines in flight, lines in an earlier state, and torn lines
//! whose 8-byte words persist independently. Each image is recovered (mount), checked (fsck) and
//! read whole; its tree, attributes and contents must be the state before or after the operation
//! in flight ([`judge`](crate::crashtest::judge)), which includes every operation that had returned. Lines still in
//! flight after an operation returned may be lost only if nothing changes: those images must
//! show the state after it.
//!
//! The space is bounded by sampling (a budget per fence), by grouping adjacent lines that hold
//! the same bytes (a zeroed run is one unit), and by checking each distinct image once — never by
//! trusting the journal, whose ordering is what is under test. Images whose recovery replays
//! records are also crashed inside that recovery.

mod concurrent;
pub mod model;
pub mod mutants;
mod report;
pub mod state;
pub mod workload;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::device::{InFlight, LINE};
use crate::layout::{Geometry, JOURNAL_HEADER_OFF, JOURNAL_RING_OFF};
use crate::{Device, Error, Fs, MkfsOptions, Result};

pub use crate::sabotage::Sabotage;
pub use model::Model;
pub use report::{Progress, Report, Saved, Violation};
pub use state::{judge, FsState};
pub use workload::Step;

/// Free space is filled with this byte before the workload; workloads never write it.
pub const POISON: u8 = 0xEE;
/// Size of the explored images: small, so each crash image mounts in about a millisecond.
pub const IMAGE_BYTES: u64 = 2 << 20;

/// Which operations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Workload {
    /// Each operation of the full set alone, on the prepared tree.
    Seq1,
    /// Every ordered pair from a reduced set, on shared files.
    Seq2,
    /// `ops` random operations from the seed.
    Random {
        /// Operations in the sequence.
        ops: usize,
    },
    /// Pairs of operations run by two threads at once, each pair under `schedules` different
    /// interleavings.
    Concurrent {
        /// Interleavings run per pair.
        schedules: usize,
    },
}

impl Workload {
    /// The workload's name on the command line (`--workload`).
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Seq1 => "seq1",
            Workload::Seq2 => "seq2",
            Workload::Random { .. } => "random",
            Workload::Concurrent { .. } => "concurrent",
        }
    }
}

/// How an exploration runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which operations run.
    pub workload: Workload,
    /// Block size of the explored image, in bytes.
    pub block_size: u32,
    /// Seed of the random workload and of the subsets of in-flight lines chosen.
    pub seed: u64,
    /// Stop after this many crash states (0: no limit).
    pub max_states: u64,
    /// Images built at each fence at most.
    pub per_fence: usize,
    /// Images built at each fence of a recovery that replays records (0: none).
    pub per_recovery_fence: usize,
    /// Crash inside the recovery of one crash state in this many (every state: 1). The
    /// recovery protocol is the same for every state, and its nested images outnumber the
    /// workload's own several times over.
    pub recovery_every: usize,
    /// The bug planted for a mutation test ([`Sabotage::None`] for a real run).
    pub sabotage: Sabotage,
    /// Where images that violate a guarantee are saved, with a JSON file for `--replay`.
    pub save_dir: Option<PathBuf>,
    /// Worker threads checking images (0: one per CPU).
    pub threads: usize,
    /// Stop at the first operation that shows a violation (a mutation test wants one).
    pub first_violation: bool,
    /// Journal ring of the explored image, in bytes: the smaller, the more often it wraps and
    /// checkpoints within a workload.
    pub journal_bytes: u64,
    /// Every other sequence starts with the ring nearly full (of records that change nothing
    /// the sequence looks at), so its first operation checkpoints and wraps; the others start
    /// with an attribute block just written through the journal and freed, its record still in
    /// the ring, so a block reused too early meets a replay.
    pub fill_journal: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workload: Workload::Seq1,
            block_size: 4096,
            seed: 1,
            max_states: 0,
            per_fence: 48,
            per_recovery_fence: 3,
            recovery_every: 1,
            sabotage: Sabotage::None,
            save_dir: None,
            threads: 0,
            first_violation: false,
            journal_bytes: 64 << 10,
            fill_journal: false,
        }
    }
}

/// Runs an exploration.
pub fn run(opts: &Options, progress: &mut dyn FnMut(&Progress)) -> Result<Report> {
    let started = std::time::Instant::now();
    let bs = u64::from(opts.block_size);
    let sequences: Vec<Vec<Step>> = match opts.workload {
        Workload::Seq1 => workload::seq1(bs).into_iter().map(|s| vec![s]).collect(),
        Workload::Seq2 => workload::seq2(bs),
        Workload::Random { ops } => vec![workload::random(bs, opts.seed, ops)],
        Workload::Concurrent { .. } => workload::concurrent_pairs(bs),
    };
    let schedules = match opts.workload {
        Workload::Concurrent { schedules } => schedules,
        _ => 1,
    };
    let (prepared, geo) = prepare_image(opts.block_size, opts.journal_bytes)?;
    let mut ex = Explorer {
        opts,
        report: Report {
            workload: opts.workload.name().into(),
            block_size: opts.block_size,
            seed: opts.seed,
            ..Default::default()
        },
        rng: Rng(opts.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        ops_total: sequences.iter().map(|s| s.len() as u64).sum::<u64>() * schedules as u64,
        ring: JOURNAL_HEADER_OFF..JOURNAL_RING_OFF + geo.journal_len,
    };
    if let Some(dir) = &opts.save_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    }
    for (i, seq) in sequences.iter().enumerate() {
        if ex.full() {
            break;
        }
        if let Workload::Concurrent { .. } = opts.workload {
            for k in 0..schedules {
                if !ex.full() {
                    ex.concurrent(i, seq, k, &prepared, progress)?;
                }
            }
        } else {
            ex.sequence(i, seq, &prepared, progress)?;
        }
        ex.report.sequences += 1;
    }
    ex.report.seconds = started.elapsed().as_secs_f64();
    Ok(ex.report)
}

/// mkfs, poison the free space, build the prepared tree, unmount: the bytes every sequence
/// starts from, and their geometry.
pub fn prepare_image(block_size: u32, journal_bytes: u64) -> Result<(Vec<u8>, Geometry)> {
    let opts = MkfsOptions { block_size, inodes: 64, journal_bytes, ..Default::default() };
    let fs = Fs::mkfs(Device::anonymous(IMAGE_BYTES)?, &opts)?;
    let geo = *fs.geometry();
    // Only the root directory exists, and it has no block yet: the whole data area is free.
    fs.device().write(geo.block_at(geo.data_start), &vec![POISON; (geo.data_blocks * geo.block_size) as usize])?;
    fs.device().fence();
    workload::prepare(&fs)?;
    let dev = fs.unmount()?.ok_or(Error::Busy)?;
    let mut img = vec![0u8; dev.len() as usize];
    dev.read(0, &mut img)?;
    Ok((img, geo))
}

struct Explorer<'a> {
    opts: &'a Options,
    report: Report,
    rng: Rng,
    ops_total: u64,
    ring: Range<u64>,
}

/// Gives the root an attribute block and takes it away again: the block was written by a
/// record still in the ring, and is free now (reusable once the checkpoint passes that record).
fn free_a_journaled_block(fs: &Fs) -> Result<()> {
    let value = vec![0x11; fs.geometry().block_size as usize / 2];
    fs.setxattr(crate::ROOT_INO, b"user.freed", &value, Default::default())?;
    fs.removexattr(crate::ROOT_INO, b"user.freed")
}

/// Unmounts `fs` and mounts its device again (the device keeps its recorder and sabotage).
fn remount(fs: Fs) -> Result<Fs> {
    Fs::mount(fs.unmount()?.ok_or(Error::Busy)?)
}

/// Commits changes that leave the tree as it was (the root's mode, changed and changed back)
/// until the ring has less room than a small record takes.
fn fill_journal(fs: &Fs) -> Result<()> {
    let mode = fs.stat("/")?.mode & 0o7777;
    let set = |m: u32| fs.setattr_path("/", false, &crate::SetAttr { mode: Some(m), ..Default::default() });
    let mut flipped = false;
    // Two laps of the ring at most: the room left after a lap differs from the one before.
    for _ in 0..2 * fs.journal_room() / 64 {
        if fs.journal_room() <= 256 && !flipped {
            return Ok(());
        }
        flipped = !flipped;
        set(if flipped { mode ^ 0o020 } else { mode })?;
    }
    Err(Error::InvalidArgument("the journal ring could not be filled"))
}

/// Cache lines to lay over a persisted base: `(device offset, bytes)`.
type Patches = Vec<(u64, [u8; LINE])>;

/// One crash image to check: a persisted base plus lines.
struct Task {
    fence: usize,
    base: Arc<Vec<u8>>,
    patches: Patches,
    label: String,
}

impl Explorer<'_> {
    fn full(&self) -> bool {
        (self.opts.max_states > 0 && self.report.states >= self.opts.max_states)
            || (self.opts.first_violation && self.report.violation_count > 0)
    }

    /// Mounts a copy of the prepared image for sequence `index`, with the planted bug and the
    /// journal as the options want it.
    fn start(&self, index: usize, prepared: &[u8]) -> Result<Fs> {
        let dev = Device::anonymous(prepared.len() as u64)?;
        dev.write(0, prepared)?;
        dev.fence();
        let fs = Fs::mount(dev)?;
        fs.sabotage(self.opts.sabotage);
        if self.opts.fill_journal {
            if index % 2 == 0 {
                fill_journal(&fs)?;
            } else {
                free_a_journaled_block(&fs)?;
            }
        }
        Ok(fs)
    }

    fn sequence(
        &mut self,
        index: usize,
        steps: &[Step],
        prepared: &[u8],
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<()> {
        let bs = u64::from(self.opts.block_size);
        let fs = self.start(index, prepared)?;
        let mut base = vec![0u8; prepared.len()];
        fs.device().read(0, &mut base)?;
        let mut base = Arc::new(base);
        let fences = record_fences(fs.device());
        let take = || std::mem::take(&mut *fences.lock().unwrap_or_else(|e| e.into_inner()));
        let mut model = Model::from_state(&FsState::capture(&fs).map_err(live_tree)?);
        // The mounted file system: a remount takes it out and puts the new mount back.
        let mut held = Some(fs);
        let result = (|| {
            for (k, step) in steps.iter().enumerate() {
                let before = FsState::capture(held.as_ref().expect("mounted")).map_err(live_tree)?;
                let got = if *step == Step::Remount {
                    held = Some(remount(held.take().expect("mounted"))?);
                    Ok(())
                } else {
                    step.apply(held.as_ref().expect("mounted")).map_err(|e| e.errno())
                };
                let fs = held.as_ref().expect("mounted");
                let in_op = take();
                let after = FsState::capture(fs).map_err(live_tree)?;
                let op = Op {
                    ring: self.ring.clone(),
                    sequence: index,
                    index: k,
                    what: step.describe(),
                    allowed: vec![&before, &after],
                    sabotage: self.opts.sabotage,
                };
                let fences = in_op.len();
                // The running file system itself shows stale bytes, or a result or state the
                // model of the operation does not: no crash needed.
                let wrong = after.stale().or_else(|| model.disagrees(step, bs, got, &after));
                if let Some(reason) = wrong {
                    let task = Task {
                        fence: fences,
                        base: base.clone(),
                        patches: Default::default(),
                        label: "the running file system".into(),
                    };
                    self.violation(&op, &task, reason, &[])?;
                }
                base = self.check_fences(&op, base.clone(), in_op, 0)?;
                if k + 1 == steps.len() {
                    // What the last operation left in flight after it returned: it may persist
                    // or not, but the operation must not be undone.
                    fs.device().fence();
                    let tail = take();
                    let done = Op { allowed: vec![&after], ..op };
                    base = self.check_fences(&done, base.clone(), tail, fences)?;
                }
                self.report.ops += 1;
                progress(&Progress {
                    ops_done: self.report.ops,
                    ops_total: self.ops_total,
                    states: self.report.states,
                    violations: self.report.violation_count,
                });
                if self.full() {
                    break;
                }
            }
            Ok(())
        })();
        if let Some(fs) = &held {
            fs.device().stop_recording();
        }
        result
    }

    /// Builds the images of each fence in `fences` (in order, from `base`; the first is the
    /// operation's fence number `first`) and checks them. Returns the persisted state after the
    /// last fence.
    fn check_fences(
        &mut self,
        op: &Op<'_>,
        mut base: Arc<Vec<u8>>,
        fences: Vec<Vec<InFlight>>,
        first: usize,
    ) -> Result<Arc<Vec<u8>>> {
        let mut tasks = Vec::new();
        let mut seen = HashSet::new();
        for (f, lines) in fences.iter().enumerate() {
            let fence = first + f;
            self.report.fences += 1;
            let mut built = 0;
            let images = crash_images(&base, lines, &op.ring, &mut self.rng, self.opts.per_fence, false);
            for (label, patches) in images {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (f, &patches).hash(&mut h);
                if !seen.insert(h.finish()) {
                    self.report.duplicates += 1;
                    continue;
                }
                built += 1;
                tasks.push(Task { fence, base: base.clone(), patches, label });
            }
            self.report.max_images_per_fence = self.report.max_images_per_fence.max(built);
            let mut next = (*base).clone();
            persist(&mut next, lines);
            base = Arc::new(next);
        }
        if self.opts.max_states > 0 {
            let room = self.opts.max_states.saturating_sub(self.report.states);
            tasks.truncate(room as usize);
        }
        let outcomes = self.check_tasks(op, &tasks);
        for (task, outcome) in tasks.iter().zip(outcomes) {
            self.report.states += 1 + outcome.recovery_states;
            self.report.recovery_states += outcome.recovery_states;
            if let Some((reason, image)) = outcome.violation {
                self.violation(op, task, reason, &image)?;
            }
        }
        Ok(base)
    }

    fn check_tasks(&self, op: &Op<'_>, tasks: &[Task]) -> Vec<Outcome> {
        let threads = match self.opts.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(tasks.len().max(1));
        let next = AtomicUsize::new(0);
        let out: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::with_capacity(tasks.len()));
        std::thread::scope(|s| {
            for t in 0..threads {
                let (next, out) = (&next, &out);
                s.spawn(move || {
                    let mut rng = Rng((t as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ self.rng.0);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(task) = tasks.get(i) else { break };
                        let nested =
                            if i % self.opts.recovery_every.max(1) == 0 { self.opts.per_recovery_fence } else { 0 };
                        let outcome = check_task(task, op, nested, &mut rng);
                        out.lock().unwrap_or_else(|e| e.into_inner()).push((i, outcome));
                    }
                });
            }
        });
        let mut out = out.into_inner().unwrap_or_else(|e| e.into_inner());
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, o)| o).collect()
    }

    fn violation(&mut self, op: &Op<'_>, task: &Task, reason: String, image: &[u8]) -> Result<()> {
        self.report.violation_count += 1;
        if self.report.violations.len() >= 100 {
            return Ok(());
        }
        let mut v = Violation {
            sequence: op.sequence,
            op_index: op.index,
            op: op.what.clone(),
            fence: task.fence,
            subset: task.label.clone(),
            reason,
            image: None,
        };
        // An empty image: the violation is the running file system's, with no image to save.
        if let (Some(dir), true, false) = (&self.opts.save_dir, self.report.violations.len() < 20, image.is_empty()) {
            let name = format!("{}-{}-{}", self.report.workload, op.sequence, self.report.violations.len());
            let img = dir.join(format!("{name}.img"));
            std::fs::write(&img, image).map_err(|e| Error::io(img.display(), e))?;
            v.image = Some(img.clone());
            let saved = Saved {
                violation: v.clone(),
                sabotage: op.sabotage.name().into(),
                before: op.allowed.first().map(|&s| s.clone()).unwrap_or_default(),
                after: op.allowed.last().map(|&s| s.clone()).unwrap_or_default(),
                between: op
                    .allowed
                    .iter()
                    .skip(1)
                    .take(op.allowed.len().saturating_sub(2))
                    .map(|&s| s.clone())
                    .collect(),
            };
            let json = serde_json::to_vec_pretty(&saved).map_err(|e| Error::io("encode", std::io::Error::other(e)))?;
            let side = img.with_extension("json");
            std::fs::write(&side, json).map_err(|e| Error::io(side.display(), e))?;
        }
        self.report.violations.push(v);
        Ok(())
    }
}

/// The operation whose images are being checked and the states it may leave.
#[derive(Clone)]
struct Op<'a> {
    /// The journal's device range: its header (the checkpoint) and the ring.
    ring: Range<u64>,
    sequence: usize,
    index: usize,
    /// What is in flight, for reports.
    what: String,
    /// The states a crash image may show, the one before first.
    allowed: Vec<&'a FsState>,
    /// The bug planted in the run, kept in every image's recovery.
    sabotage: Sabotage,
}

struct Outcome {
    recovery_states: u64,
    /// The reason, and the image that showed it.
    violation: Option<(String, Vec<u8>)>,
}

fn check_task(task: &Task, op: &Op<'_>, per_recovery_fence: usize, rng: &mut Rng) -> Outcome {
    let mut img = (*task.base).clone();
    overlay(&mut img, &task.patches);
    let mut recovery_fences = Vec::new();
    let verdict = recover_and_judge(op.sabotage, &img, &op.allowed, per_recovery_fence > 0, &mut recovery_fences);
    if let Err(reason) = verdict {
        return Outcome { recovery_states: 0, violation: Some((reason, img)) };
    }
    // A crash inside that recovery: the image itself is the persisted base of its first fence.
    let mut states = 0;
    let mut base = img;
    for (f, lines) in recovery_fences.iter().enumerate() {
        let images = crash_images(&base, lines, &op.ring, rng, per_recovery_fence + 1, true);
        // The first image takes no line: the state already checked.
        for (label, patches) in images.into_iter().skip(1) {
            let mut nested = base.clone();
            overlay(&mut nested, &patches);
            states += 1;
            if let Err(reason) = recover_and_judge(op.sabotage, &nested, &op.allowed, false, &mut Vec::new()) {
                let reason = format!("crash at fence {f} of the recovery ({label}): {reason}");
                return Outcome { recovery_states: states, violation: Some((reason, nested)) };
            }
        }
        persist(&mut base, lines);
    }
    Outcome { recovery_states: states, violation: None }
}

/// Starts recording on `dev`; each fence appends the lines it made persistent.
fn record_fences(dev: &Device) -> Arc<Mutex<Vec<Vec<InFlight>>>> {
    let fences: Arc<Mutex<Vec<Vec<InFlight>>>> = Arc::default();
    let hook = fences.clone();
    dev.record(Box::new(move |lines| hook.lock().unwrap_or_else(|e| e.into_inner()).push(lines.to_vec())));
    fences
}

/// Lays cache lines over an image.
fn overlay(img: &mut [u8], patches: &Patches) {
    for (l, bytes) in patches {
        img[*l as usize..*l as usize + LINE].copy_from_slice(bytes);
    }
}

/// What a fence leaves on the medium: each line it fenced in its last state.
fn persist(img: &mut [u8], lines: &[InFlight]) {
    for l in lines.iter().filter(|l| l.fenced) {
        let at = l.line as usize;
        img[at..at + LINE].copy_from_slice(l.versions.last().expect("a line has a version"));
    }
}

/// Mounts a copy of `img`, fscks it and judges its state. With `record`, the fences of a
/// recovery that replayed records are returned in `fences`.
fn recover_and_judge(
    sabotage: Sabotage,
    img: &[u8],
    allowed: &[&FsState],
    record: bool,
    fences: &mut Vec<Vec<InFlight>>,
) -> std::result::Result<usize, String> {
    let dev = device_with(img).map_err(|e| format!("device: {e}"))?;
    dev.sabotage(sabotage);
    let seen = if record { record_fences(&dev) } else { Arc::default() };
    let fs = Fs::mount(dev).map_err(|e| format!("mount: {e}"))?;
    fs.device().stop_recording();
    if fs.recovery().replayed_records > 0 {
        *fences = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let verdict = (|| {
        let report = crate::check::check(&fs, &mut |_, _| {});
        if !report.is_clean() {
            return Err(format!("fsck: {:?}", report.findings));
        }
        let got = FsState::capture(&fs)?;
        if let Some(stale) = got.stale() {
            return Err(stale);
        }
        judge(allowed, &got)
    })();
    if let Some(dev) = fs.into_device() {
        SPARE.with(|s| *s.borrow_mut() = Some(dev));
    }
    verdict
}

thread_local! {
    /// The device of the last crash state this thread checked, for the next: a fresh one would
    /// cost a page fault for every page of every image, most of a state's time.
    static SPARE: std::cell::RefCell<Option<Device>> = const { std::cell::RefCell::new(None) };
}

/// A device holding `img`: this thread's spare one when it has the size, else a new one.
fn device_with(img: &[u8]) -> Result<Device> {
    let spare = SPARE.with(|s| s.borrow_mut().take()).filter(|d| d.len() == img.len() as u64);
    let dev = match spare {
        Some(dev) => dev,
        None => Device::heap(img.len() as u64)?,
    };
    dev.write(0, img)?;
    Ok(dev)
}

/// The crash images of one fence: `(label, lines to take)`, at most about `budget` of them; with
/// `halves`, also each run of lines stored together cut in two, either half alone (a wipe of the
/// ring that persisted over one record and not another).
fn crash_images(
    base: &[u8],
    lines: &[InFlight],
    ring: &Range<u64>,
    rng: &mut Rng,
    budget: usize,
    halves: bool,
) -> Vec<(String, Patches)> {
    let at = |l: u64| &base[l as usize..l as usize + LINE];
    // Lines that change nothing are not in flight.
    let live: Vec<&InFlight> = lines.iter().filter(|l| l.versions.iter().any(|v| v[..] != *at(l.line))).collect();
    // Units: adjacent lines stored once with the same bytes (a zeroed or filled run) go together.
    let mut units: Vec<Vec<&InFlight>> = Vec::new();
    for l in &live {
        let joins = units.last().and_then(|u| u.last()).is_some_and(|p| {
            p.line + LINE as u64 == l.line && p.versions.len() == 1 && l.versions.len() == 1 && p.versions == l.versions
        });
        match units.last_mut() {
            Some(u) if joins => u.push(l),
            _ => units.push(vec![l]),
        }
    }
    let finals = |pick: &[bool]| -> Patches {
        units
            .iter()
            .zip(pick)
            .filter(|(_, &p)| p)
            .flat_map(|(u, _)| u.iter().map(|l| (l.line, *l.versions.last().expect("a version"))))
            .collect()
    };
    let n = units.len();
    let describe = |pick: &[bool]| -> String {
        let taken: Vec<String> =
            units.iter().zip(pick).filter(|(_, &p)| p).map(|(u, _)| format!("{:#x}+{}", u[0].line, u.len())).collect();
        if taken.len() <= 12 {
            format!("{} of {n} units: [{}]", taken.len(), taken.join(" "))
        } else {
            format!("{} of {n} units", taken.len())
        }
    };
    let mut out = vec![("none".to_string(), Vec::new())];
    if n == 0 {
        return out;
    }
    out.push(("all".into(), finals(&vec![true; n])));
    let journal = |u: &Vec<&InFlight>| ring.contains(&u[0].line);
    let in_journal: Vec<bool> = units.iter().map(journal).collect();
    if in_journal.iter().any(|&j| j) && in_journal.iter().any(|&j| !j) {
        out.push(("journal lines only".into(), finals(&in_journal)));
        let rest: Vec<bool> = in_journal.iter().map(|j| !j).collect();
        out.push(("all but the journal lines".into(), finals(&rest)));
    }
    if halves {
        out.extend(units.iter().filter(|u| u.len() > 1).flat_map(|u| cut_in_two(u)));
    }
    let budget = budget.max(out.len());
    if n < 16 && (1usize << n) + out.len() <= budget {
        // Few enough units: every subset.
        for mask in 1..(1u64 << n) - 1 {
            let pick: Vec<bool> = (0..n).map(|i| mask >> i & 1 == 1).collect();
            out.push((describe(&pick), finals(&pick)));
        }
    } else {
        // Each unit alone and each one missing, then random subsets, up to half the budget.
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        for &i in &order {
            if out.len() >= budget / 2 {
                break;
            }
            let mut pick = vec![false; n];
            pick[i] = true;
            out.push((describe(&pick), finals(&pick)));
            pick.iter_mut().for_each(|p| *p = !*p);
            out.push((describe(&pick), finals(&pick)));
        }
        while out.len() < budget * 3 / 4 {
            let pick: Vec<bool> = (0..n).map(|_| rng.next() & 1 == 1).collect();
            out.push((format!("random: {}", describe(&pick)), finals(&pick)));
        }
    }
    // Lines in an earlier state, and torn lines: every 8-byte word of a line persists on its own,
    // from any state the line passed through.
    let multi = live.iter().any(|l| l.versions.len() > 1);
    let extra = (if multi { 4 } else { 0 } + 4).min(budget.saturating_sub(out.len()));
    for k in 0..extra {
        let torn = !multi || k % 2 == 1;
        let mut patches = Vec::new();
        for l in &live {
            if rng.next() & 1 == 0 {
                continue;
            }
            let mut bytes = [0u8; LINE];
            bytes.copy_from_slice(at(l.line));
            let states = l.versions.len() as u64 + 1; // 0 is the persisted line
            if torn {
                for w in 0..LINE / 8 {
                    let s = (rng.next() % states) as usize;
                    if s > 0 {
                        bytes[w * 8..w * 8 + 8].copy_from_slice(&l.versions[s - 1][w * 8..w * 8 + 8]);
                    }
                }
            } else {
                let s = (rng.next() % states) as usize;
                if s > 0 {
                    bytes = l.versions[s - 1];
                }
            }
            patches.push((l.line, bytes));
        }
        let what = if torn { "torn lines" } else { "lines in earlier states" };
        out.push((format!("{what}: {} of {} lines", patches.len(), live.len()), patches));
    }
    out
}

/// The images of a run of lines stored together with only its first half, or only its second.
fn cut_in_two(run: &[&InFlight]) -> [(String, Patches); 2] {
    let (first, second) = run.split_at(run.len() / 2);
    let label = |which: &str| format!("the {which} half of {:#x}+{} only", run[0].line, run.len());
    let finals = |part: &[&InFlight]| part.iter().map(|l| (l.line, *l.versions.last().expect("a version"))).collect();
    [(label("first"), finals(first)), (label("second"), finals(second))]
}

/// Replays a saved violation: recovers the image, fscks it and judges it against the states
/// saved beside it. Returns the judgement: `Ok` with the state it matched ("before", "after",
/// or one between) when the image is now accepted.
pub fn replay(image: &Path) -> Result<(Saved, std::result::Result<String, String>)> {
    let img = std::fs::read(image).map_err(|e| Error::io(image.display(), e))?;
    let side = image.with_extension("json");
    let text = std::fs::read(&side).map_err(|e| Error::io(side.display(), e))?;
    let saved: Saved = serde_json::from_slice(&text)
        .map_err(|e| Error::io(side.display(), std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let sabotage = Sabotage::ALL.iter().find(|(n, _)| *n == saved.sabotage).map_or(Sabotage::None, |&(_, s)| s);
    let allowed: Vec<&FsState> =
        std::iter::once(&saved.before).chain(&saved.between).chain(std::iter::once(&saved.after)).collect();
    let verdict = recover_and_judge(sabotage, &img, &allowed, false, &mut Vec::new()).map(|i| match i {
        0 => "before".to_string(),
        i if i + 1 == allowed.len() => "after".to_string(),
        i => format!("between, number {i}"),
    });
    Ok((saved, verdict))
}

/// The running file system's own tree could not be read: not a crash state, a plain failure.
fn live_tree(e: String) -> Error {
    Error::io("read the tree of the running workload", std::io::Error::other(e))
}

/// xorshift64: reproducible sampling from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}
