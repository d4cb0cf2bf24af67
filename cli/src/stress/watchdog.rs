//! The watchdog and the flight record: every thread of a stress run says what it is doing and
//! beats when it gets something done. When nothing gets done for the time limit, a monitor
//! thread prints what each thread was doing and ends the process with status 3, so a deadlock
//! never hangs CI. The doings also go to a flight record file, one fixed-size line per thread,
//! so the supervising process can tell where a run that died of a signal was.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::state::lock;

/// Exit status of a run the watchdog ended.
pub const STALLED: i32 = 3;
/// Bytes of one thread's line in the flight record.
const RECORD_LINE: usize = 240;

#[derive(Debug)]
struct Doing {
    what: String,
    since: Instant,
}

/// What each thread (the workers, then the checker) is doing, and when anything last got done.
#[derive(Debug)]
pub struct Pulse {
    start: Instant,
    /// Milliseconds after `start` of the last completed operation or check step.
    beat_ms: AtomicU64,
    actors: Vec<Mutex<Doing>>,
    over: AtomicBool,
    record: Option<File>,
}

impl Pulse {
    /// A pulse for `workers` workers and one checker (actor number `workers`), keeping a
    /// flight record in `record` if given.
    pub fn new(start: Instant, workers: usize, record: Option<File>) -> Pulse {
        let idle = || Mutex::new(Doing { what: "starting".into(), since: Instant::now() });
        Pulse {
            start,
            beat_ms: AtomicU64::new(0),
            actors: (0..=workers).map(|_| idle()).collect(),
            over: AtomicBool::new(false),
            record,
        }
    }

    /// The checker's actor number.
    pub fn checker(&self) -> usize {
        self.actors.len() - 1
    }

    pub fn doing(&self, who: usize, what: String) {
        if let Some(f) = &self.record {
            let mut line = [b' '; RECORD_LINE];
            let n = what.len().min(RECORD_LINE - 1);
            line[..n].copy_from_slice(&what.as_bytes()[..n]);
            line[RECORD_LINE - 1] = b'\n';
            // The record only helps explain a death; a failed write loses nothing else.
            let _ = f.write_at(&line, (who * RECORD_LINE) as u64);
        }
        *lock(&self.actors[who]) = Doing { what, since: Instant::now() };
    }

    /// Something got done.
    pub fn beat(&self) {
        self.beat_ms.fetch_max(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The run is over; the watchdog stops watching.
    pub fn finish(&self) {
        self.over.store(true, Ordering::Release);
    }

    fn stalled_for(&self) -> Duration {
        let beat = Duration::from_millis(self.beat_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(beat)
    }

    fn report(&self) -> Vec<(String, String, f64)> {
        let workers = self.checker();
        self.actors
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = lock(d);
                (actor(i, workers), d.what.clone(), d.since.elapsed().as_secs_f64())
            })
            .collect()
    }
}

fn actor(i: usize, workers: usize) -> String {
    if i == workers {
        "checker".into()
    } else {
        format!("thread {i}")
    }
}

/// What a flight record says each thread of a run with `workers` workers was doing last.
pub fn read_record(path: &Path, workers: usize) -> Vec<(String, String)> {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .chunks(RECORD_LINE)
        .take(workers + 1)
        .enumerate()
        .map(|(i, line)| (actor(i, workers), String::from_utf8_lossy(line).trim().to_string()))
        .collect()
}

/// Starts the monitor thread: after `limit` without a beat it prints every thread's current
/// operation (on stderr, and as one JSON object on stdout with `json`) and exits with
/// [`STALLED`].
pub fn watch(pulse: Arc<Pulse>, limit: Duration, seed: u64, json: bool) {
    let spawned = std::thread::Builder::new().name("udax-stress-watchdog".into()).spawn(move || {
        while !pulse.over.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(100));
            if pulse.stalled_for() >= limit && !pulse.over.load(Ordering::Acquire) {
                stalled(&pulse, limit, seed, json);
            }
        }
    });
    if let Err(e) = spawned {
        let _ = writeln!(std::io::stderr(), "udax stress: cannot start the watchdog: {e}");
        std::process::exit(1);
    }
}

fn stalled(pulse: &Pulse, limit: Duration, seed: u64, json: bool) -> ! {
    let report = pulse.report();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\nudax stress: nothing got done for {:.0} s (a deadlock?); seed {seed}. Each thread was in:",
        limit.as_secs_f64()
    );
    for (who, what, secs) in &report {
        let _ = writeln!(err, "  {who:<10} {what} (for {secs:.1} s)");
    }
    if json {
        let threads: Vec<_> = report
            .iter()
            .map(|(who, what, secs)| serde_json::json!({ "thread": who, "doing": what, "for_s": secs }))
            .collect();
        let j =
            serde_json::json!({ "clean": false, "seed": seed, "stalled_s": limit.as_secs_f64(), "watchdog": threads });
        let _ = writeln!(std::io::stdout(), "{j:#}");
    }
    std::process::exit(STALLED)
}
