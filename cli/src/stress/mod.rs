//! `udax stress`: worker threads race data, space, namespace and mapped operations on one file
//! system; quiesced rounds compare every mapping with its file; the end brings fsck, a leak
//! check and a remount.
//!
//! The run happens in a child process (this binary again, with a hidden flag): a SIGBUS inside
//! EOF, which no check survives, then ends the child and the parent reports it.

mod coherence;
mod state;
mod watchdog;
mod worker;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Args;
use udax::{Device, Fs, MkfsOptions, MmapStats, OpenOptions, HUGE};

use crate::common::{describe, stderr_is_tty, CliResult, Failure, OutResult, Progress};
use crate::size::parse_size;
use state::{
    Check, Count, Finding, Rng, Tally, World, MAX_IO, NS_DIRS, NS_NAMES, NS_SPAN, PRIVATE_FILES, PRIVATE_SPAN, SECRET,
    SHARED_FILES, SHARED_SPAN,
};
use watchdog::Pulse;

const CMD: &str = "stress";
const DEFAULT_SIZE: u64 = 256 << 20;

pub const LONG_ABOUT: &str = "Make a scratch file system (anonymous memory, or --image), fill its free space with\n\
a SECRET byte (0xee) and delete it, then run --threads workers for --seconds over\n\
one mount. They mix, at random: pread/pwrite at any offset and length (a byte to\n\
64 KiB, page-aligned or not), appends, truncates up and down, fallocate in every\n\
mode (allocate, punch hole, zero range), fsync, msync, mmap/munmap, and loads and\n\
stores through shared and private mappings, on a few files all threads share and\n\
on files each thread keeps to itself; plus create, rename, unlink and reopen on a\n\
shared namespace and on the private files. Only the size lock of the tool keeps a\n\
shared file from shrinking under a mapped access; writes, punches and zero ranges\n\
race with mapped loads and stores freely.\n\n\
Checks: no read or load shows a byte no thread stored (the SECRET is a previous\n\
owner's stale data); private files equal their model byte for byte. Every 20 ms\n\
or so (never sooner than the last checks took) all workers stop at a barrier and\n\
each shared mapping must equal read_at, see a write_at, and show its own stores\n\
to read_at, while loads must work up to the page holding EOF and raise SIGBUS\n\
past it (probed without dying). At the end every file is removed, then fsck, a\n\
leak check (free blocks and inodes back to their count after mkfs), a remount\n\
and fsck again. A watchdog ends a run in which nothing gets done for 10 s and\n\
prints what each thread was doing.\n\n\
The seed fixes each thread's sequence of operations, not their interleaving; the\n\
run happens in a child process, so a SIGBUS inside EOF is reported too.";

pub const AFTER_HELP: &str = "Exit status: 0 clean, 1 a check failed (or the run died of a signal), 2 bad usage,\n\
3 the watchdog found no progress (a deadlock).\n\n\
--json prints one object: clean, seed, ops and checks (counts by kind),\n\
failure_count, failures_by_check, failures (the first 20: check, file, offset,\n\
detail), fault_service (the fault counters) and more.\n\n\
Examples:\n  udax stress --threads 4 --seconds 20\n  \
udax stress --threads 8 --seconds 60 --block-size 1024 --seed 42\n  \
udax stress --threads 4 --seconds 5 --json | jq .failures\n  \
udax stress --image /dev/shm/stress.img --size 1G     (kept if the run fails)";

#[derive(Debug, Args)]
pub struct StressArgs {
    /// Worker threads
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// How long the workers run, in seconds
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Block size of the scratch file system: 1024, 2048 or 4096
    #[arg(long, default_value_t = 4096, value_parser = parse_block_size)]
    pub block_size: u32,
    /// Seed of the threads' operations (default: random; the report prints it)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Make the scratch image as this (new) file instead of in anonymous memory; it is removed
    /// afterwards unless the run failed
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// Scratch image size (default 256M, more when many threads need it)
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Print the report as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Milliseconds between quiesced checks (at least as long as the last round of checks took)
    #[arg(long, default_value_t = 20, hide = true)]
    pub check_every_ms: u64,
    /// Seconds without progress before the watchdog ends the run
    #[arg(long, default_value_t = 10, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub watchdog_s: u64,
    /// Run in this process, not in a supervised child (a SIGBUS then ends udax unreported)
    #[arg(long, hide = true)]
    pub in_process: bool,
    /// Keep what each thread is doing in this file (the supervisor reads it after a crash)
    #[arg(long, hide = true, value_name = "PATH")]
    pub record: Option<PathBuf>,
}

/// `--seconds`: a positive number of seconds.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("invalid duration {s:?}: expected a positive number of seconds")),
    }
}

/// `--block-size`: 1024, 2048 or 4096.
pub fn parse_block_size(s: &str) -> Result<u32, String> {
    match s.parse() {
        Ok(b @ (1024 | 2048 | 4096)) => Ok(b),
        _ => Err(format!("invalid block size {s:?}: expected 1024, 2048 or 4096")),
    }
}

pub fn run(a: &StressArgs) -> CliResult {
    let size = image_size(a)?;
    if let Some(p) = &a.image {
        if p.exists() {
            return Err(Failure::new(CMD, p.display(), "exists; --image makes a new scratch image there"));
        }
    }
    if a.in_process {
        stress(a, size)
    } else {
        supervise(a, size)
    }
}

/// The image size: `--size`, or the default grown to what the threads need.
fn image_size(a: &StressArgs) -> CliResult<u64> {
    let threads = u64::from(a.threads);
    let shared = SHARED_FILES as u64 * (SHARED_SPAN + HUGE + MAX_IO);
    let private = threads * PRIVATE_FILES as u64 * (PRIVATE_SPAN + MAX_IO);
    let names = (NS_DIRS.len() as u64 * NS_NAMES + threads) * (NS_SPAN + MAX_IO);
    let least = (2 * (shared + private + names) + (32 << 20)).next_multiple_of(1 << 20);
    match a.size {
        None => Ok(least.max(DEFAULT_SIZE)),
        Some(s) if s >= least => Ok(s),
        Some(s) => {
            let why = format!("--size {s} is too small for {threads} threads: at least {}M", least >> 20);
            Err(Failure::plain(CMD, why).code(2))
        }
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish() >> 1
}

/// Runs the stress in a child process and reports a child that a signal ended.
fn supervise(a: &StressArgs, size: u64) -> CliResult {
    let seed = a.seed.unwrap_or_else(random_seed);
    let exe = std::env::current_exe().map_err(|e| Failure::plain(CMD, format!("cannot find udax itself: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.args([CMD, "--in-process"]);
    cmd.args(["--threads", &a.threads.to_string(), "--seconds", &a.seconds.to_string()]);
    cmd.args(["--block-size", &a.block_size.to_string(), "--seed", &seed.to_string()]);
    cmd.args(["--size", &size.to_string(), "--check-every-ms", &a.check_every_ms.to_string()]);
    cmd.args(["--watchdog-s", &a.watchdog_s.to_string()]);
    if let Some(p) = &a.image {
        cmd.arg("--image").arg(p);
    }
    if a.json {
        cmd.arg("--json");
    }
    let record = std::env::temp_dir().join(format!("udax-stress-{}.record", std::process::id()));
    cmd.arg("--record").arg(&record);
    let status = cmd.status();
    let last = watchdog::read_record(&record, usize::from(a.threads));
    let _ = std::fs::remove_file(&record);
    let status = status.map_err(|e| Failure::plain(CMD, format!("cannot start the stress process: {e}")))?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(Failure::status(u8::try_from(code).unwrap_or(1))),
        (None, signal) => died(a, seed, signal.unwrap_or(0), &last),
    }
}

/// Reports a stress process that `signal` ended, with what each thread was doing last.
fn died(a: &StressArgs, seed: u64, signal: i32, last: &[(String, String)]) -> CliResult {
    let why = if signal == libc::SIGBUS {
        "SIGBUS: a mapped load or store inside EOF faulted (workers probe most pages first, but a \
         page can be lost between the probe and the access; the checker does not probe)"
    } else {
        "a signal"
    };
    if a.json {
        let threads: Vec<_> =
            last.iter().map(|(who, what)| serde_json::json!({ "thread": who, "doing": what })).collect();
        let j = serde_json::json!({
            "clean": false, "seed": seed, "killed_by_signal": signal, "why": why, "image": a.image,
            "last_doing": threads,
        });
        crate::json::print(j)?;
    }
    let mut msg = format!("the stress process died of signal {signal}, {why}; replay with --seed {seed}");
    if let Some(p) = &a.image {
        msg += &format!("; the image is kept at {}", p.display());
    }
    msg += ". Each thread was last in:";
    for (who, what) in last {
        msg += &format!("\n  {who:<10} {what}");
    }
    // With --json the report above says it; stderr still does.
    let f = Failure::plain(CMD, msg);
    Err(if a.json { Failure { error: None, ..f } } else { f })
}

/// Stops the workers for the checker: a flag they test between operations, and a barrier of
/// the workers and the checker, passed twice a round (everyone stopped; checks done).
#[derive(Debug)]
pub struct Gate {
    pause: AtomicBool,
    stop: AtomicBool,
    barrier: Barrier,
}

impl Gate {
    fn new(workers: usize) -> Gate {
        Gate { pause: AtomicBool::new(false), stop: AtomicBool::new(false), barrier: Barrier::new(workers + 1) }
    }

    /// Whether the checker wants the workers to stop.
    pub fn paused(&self) -> bool {
        self.pause.load(Ordering::Acquire)
    }

    /// A worker waits out the checks; returns whether the run is over.
    pub fn park(&self) -> bool {
        self.barrier.wait();
        self.barrier.wait();
        self.stop.load(Ordering::Acquire)
    }

    /// The checker: returns once every worker waits.
    fn hold(&self) {
        self.pause.store(true, Ordering::Release);
        self.barrier.wait();
        self.pause.store(false, Ordering::Release);
    }

    /// The checker lets the workers go on, or end.
    fn release(&self, last: bool) {
        self.stop.store(last, Ordering::Release);
        self.barrier.wait();
    }
}

/// Everything the threads of a run share.
#[derive(Debug)]
pub struct Run {
    pub world: World,
    pub tally: Tally,
    pub pulse: Arc<Pulse>,
    pub gate: Gate,
}

/// What the report says (also its JSON form).
#[derive(Debug, serde::Serialize)]
struct Report {
    clean: bool,
    seed: u64,
    threads: u16,
    seconds: f64,
    block_size: u32,
    image_bytes: u64,
    image: Option<String>,
    ops_total: u64,
    ops: BTreeMap<&'static str, u64>,
    checks_total: u64,
    checks: BTreeMap<&'static str, u64>,
    quiesced_rounds: u64,
    fault_service: MmapStats,
    failure_count: u64,
    failures_by_check: BTreeMap<&'static str, u64>,
    failures: Vec<Finding>,
}

fn stress(a: &StressArgs, size: u64) -> CliResult {
    let seed = a.seed.unwrap_or_else(random_seed);
    let threads = usize::from(a.threads);
    let start = Instant::now();
    let tally = Tally::new(start);
    let fs = make_fs(a, size)?;
    let after_mkfs = Space::of(&fs);
    plant_secret(&fs).map_err(|e| Failure::plain(CMD, format!("filling free space: {}", describe(&e))))?;
    leaks(&fs, after_mkfs, &tally, "after planting the secret bytes");
    let world = World::create(&fs, threads).map_err(|e| Failure::plain(CMD, describe(&e)))?;
    let record = match &a.record {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| Failure::new(CMD, p.display(), e))?),
        None => None,
    };
    let pulse = Arc::new(Pulse::new(start, threads, record));
    watchdog::watch(pulse.clone(), Duration::from_secs(a.watchdog_s), seed, a.json);
    let run = Run { world, tally, pulse, gate: Gate::new(threads) };
    let bar = Progress::new(stderr_is_tty() && !a.json, 0, false, &format!("stress, {threads} threads, seconds"));
    let began = Instant::now();
    let rounds = std::thread::scope(|s| {
        for t in 0..threads {
            let run = &run;
            s.spawn(move || worker::work(run, t, seed));
        }
        coordinate(&run, a, seed, &bar)
    });
    bar.done();
    let seconds = began.elapsed().as_secs_f64();
    let fault_service = fs.mmap_stats();
    let Run { world, tally, pulse, .. } = run;
    drop(world);
    wind_down(fs, after_mkfs, &tally, &pulse, threads);
    pulse.finish();
    let report = Report {
        clean: tally.failures() == 0,
        seed,
        threads: a.threads,
        seconds,
        block_size: a.block_size,
        image_bytes: size,
        image: a.image.as_ref().map(|p| p.display().to_string()),
        ops_total: tally.counts(Count::Ops).values().sum(),
        ops: tally.counts(Count::Ops),
        checks_total: tally.counts(Count::Checks).values().sum(),
        checks: tally.counts(Count::Checks),
        quiesced_rounds: rounds,
        fault_service,
        failure_count: tally.failures(),
        failures_by_check: tally.counts(Count::Failed),
        failures: tally.findings(),
    };
    if report.clean {
        if let Some(p) = &a.image {
            std::fs::remove_file(p).map_err(|e| Failure::new(CMD, p.display(), e))?;
        }
    }
    print_report(a, &report)?;
    if !report.clean {
        return Err(Failure::status(1));
    }
    Ok(())
}

fn make_fs(a: &StressArgs, size: u64) -> CliResult<Fs> {
    let dev = match &a.image {
        Some(p) => Device::create(p, size).map_err(|e| Failure::fs(CMD, p, &e))?,
        None => Device::anonymous(size).map_err(|e| Failure::plain(CMD, describe(&e)))?,
    };
    // A scratch image: --image names where, and what was there goes.
    let opts = MkfsOptions { block_size: a.block_size, overwrite: true, ..MkfsOptions::default() };
    Fs::mkfs(dev, &opts).map_err(|e| Failure::plain(CMD, format!("mkfs: {}", describe(&e))))
}

/// Fills the free space with [`SECRET`] (one file, then unlinked): a block handed out later
/// without being zeroed shows it.
fn plant_secret(fs: &Fs) -> udax::Result<()> {
    /// Blocks left free for the extent map of the file itself.
    const SPARE_BLOCKS: u64 = 64;
    let f = fs.open("/secret", OpenOptions::create())?;
    let chunk = vec![SECRET; 1 << 20];
    let mut off = 0;
    loop {
        let st = fs.statfs();
        let room = st.blocks_free.saturating_sub(SPARE_BLOCKS) * st.block_size;
        if room == 0 {
            break;
        }
        match f.write_at(&chunk[..room.min(chunk.len() as u64) as usize], off) {
            Ok(0) | Err(udax::Error::NoSpace) => break,
            Ok(n) => off += n as u64,
            Err(e) => return Err(e),
        }
    }
    drop(f);
    fs.unlink_path("/secret")
}

/// The checker's loop: sleeps, stops the workers, checks, lets them go; returns the rounds.
fn coordinate(run: &Run, a: &StressArgs, seed: u64, bar: &Progress) -> u64 {
    let me = run.pulse.checker();
    let mut rng = Rng::new(seed, u64::MAX);
    let every = Duration::from_millis(a.check_every_ms);
    let start = Instant::now();
    let total = a.seconds.ceil() as u64;
    let (mut rounds, mut checking) = (0, Duration::ZERO);
    loop {
        run.pulse.doing(me, "sleeping between checks".into());
        // The workers run at least as long as the last round of checks took.
        std::thread::sleep(every.max(checking));
        let last = start.elapsed().as_secs_f64() >= a.seconds;
        run.pulse.doing(me, "waiting for the workers at the barrier".into());
        run.gate.hold();
        let began = Instant::now();
        coherence::check_all(run, &mut rng);
        checking = began.elapsed();
        rounds += 1;
        let ops: u64 = run.tally.counts(Count::Ops).values().sum();
        bar.set(start.elapsed().as_secs().min(total), total);
        bar.message(format!("{ops} ops, {rounds} checks, {} failures", run.tally.failures()));
        run.gate.release(last);
        if last {
            return rounds;
        }
    }
}

/// After the workers: removes everything, fscks, checks for leaks, remounts, fscks again.
fn wind_down(fs: Fs, after_mkfs: Space, tally: &Tally, pulse: &Pulse, threads: usize) {
    let me = pulse.checker();
    pulse.doing(me, "removing the run's files".into());
    for dir in World::dirs(threads) {
        if let Err(e) = fs.remove_all(&dir) {
            tally.fail(Check::OpError, None, &dir, None, format!("rm -r failed: {}", describe(&e)));
        }
    }
    fsck(&fs, tally, pulse, "");
    leaks(&fs, after_mkfs, tally, "after removing every file");
    pulse.doing(me, "remounting".into());
    let remounted = match fs.unmount() {
        Ok(Some(dev)) => Fs::mount(dev).map_err(|e| describe(&e)),
        Ok(None) => Err("a handle to the file system outlived the run".into()),
        Err(e) => Err(describe(&e)),
    };
    tally.checked(Check::Remount, 1);
    match remounted {
        Ok(fs) => {
            fsck(&fs, tally, pulse, " after the remount");
            leaks(&fs, after_mkfs, tally, "after the remount");
            if let Err(e) = fs.unmount() {
                tally.fail(Check::Remount, None, "/", None, format!("unmount: {}", describe(&e)));
            }
        }
        Err(e) => tally.fail(Check::Remount, None, "/", None, e),
    }
}

fn fsck(fs: &Fs, tally: &Tally, pulse: &Pulse, when: &str) {
    pulse.doing(pulse.checker(), format!("fsck{when}"));
    let report = udax::check::check(fs, &mut |_, _| pulse.beat());
    tally.checked(Check::Fsck, 1);
    for f in &report.findings {
        let file = f.ino.map_or_else(|| "-".to_string(), |i| format!("inode {i}"));
        tally.fail(Check::Fsck, None, &file, f.at, format!("{}{when}: {}", f.kind, f.detail));
    }
    pulse.beat();
}

/// Free blocks and inodes, the root directory's blocks counted as free: the root keeps the
/// blocks its entries took when they are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Space {
    blocks: u64,
    inodes: u64,
}

impl Space {
    fn of(fs: &Fs) -> Space {
        let st = fs.statfs();
        let root = fs.stat("/").map_or(0, |r| r.blocks * 512 / st.block_size);
        Space { blocks: st.blocks_free + root, inodes: st.inodes_free }
    }
}

/// Free blocks and inodes are back to their count after mkfs.
fn leaks(fs: &Fs, after_mkfs: Space, tally: &Tally, when: &str) {
    let now = Space::of(fs);
    tally.checked(Check::Leak, 1);
    if now != after_mkfs {
        let detail = format!(
            "{when}: {} free blocks and {} free inodes, {} and {} after mkfs",
            now.blocks, now.inodes, after_mkfs.blocks, after_mkfs.inodes
        );
        tally.fail(Check::Leak, None, "/", None, detail);
    }
}

fn print_report(a: &StressArgs, r: &Report) -> CliResult {
    if a.json {
        return crate::json::print(serde_json::to_value(r).map_err(|e| Failure::plain(CMD, e))?);
    }
    let mut o = std::io::stdout().lock();
    let image = r.image.as_deref().unwrap_or("anonymous memory");
    writeln!(
        o,
        "stress          {} threads for {:.1} s; block size {}, {} MiB image ({image}); seed {}",
        r.threads,
        r.seconds,
        r.block_size,
        r.image_bytes >> 20,
        r.seed
    )
    .out()?;
    writeln!(o, "operations      {}", r.ops_total).out()?;
    table(&mut o, &r.ops)?;
    writeln!(o, "checks          {} ({} quiesced rounds)", r.checks_total, r.quiesced_rounds).out()?;
    table(&mut o, &r.checks)?;
    let s = &r.fault_service;
    writeln!(
        o,
        "fault service   zero page {}, first store {}, huge {}, mapped {}, copied {}, sigbus {}, invalidated {}",
        s.faults_zero_page,
        s.faults_first_store,
        s.faults_huge,
        s.faults_mapped,
        s.faults_copied,
        s.faults_sigbus,
        s.pages_invalidated
    )
    .out()?;
    if r.clean {
        return writeln!(o, "failures        none: clean").out();
    }
    let by: Vec<String> = r.failures_by_check.iter().map(|(k, n)| format!("{k} {n}")).collect();
    writeln!(o, "failures        {} ({}); the first {}:", r.failure_count, by.join(", "), r.failures.len()).out()?;
    for f in &r.failures {
        let at = f.offset.map(|o| format!(" @ {o:#x}")).unwrap_or_default();
        let who = f.thread.map_or_else(|| "checker".to_string(), |t| format!("thread {t}"));
        writeln!(o, "  [{}] {}{at}: {}\n      ({who}, {:.2} s in)", f.check, f.file, f.detail, f.at_s).out()?;
    }
    writeln!(
        o,
        "replay          udax stress --seed {} --threads {} --block-size {} (the interleaving will differ)",
        r.seed, r.threads, r.block_size
    )
    .out()?;
    if let Some(p) = &r.image {
        writeln!(o, "image           kept at {p}").out()?;
    }
    Ok(())
}

/// Counts four to a line.
fn table(o: &mut impl Write, counts: &BTreeMap<&'static str, u64>) -> CliResult {
    let cells: Vec<String> = counts.iter().map(|(k, n)| format!("{k:<20}{n:>9}")).collect();
    for row in cells.chunks(4) {
        writeln!(o, "  {}", row.join("   ")).out()?;
    }
    Ok(())
}
