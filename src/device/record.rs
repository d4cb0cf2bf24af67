//! The crash-state recorder (test machinery, `crash-test` feature): while on, every store notes
//! the cache lines it touched with their bytes and the thread that stored them, and every fence
//! hands the lines in flight to the crash explorer. A fence orders only its own thread's stores
//! and write-backs (as `sfence` does), so only the lines its thread touched leave the flight.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

use super::persist::LINE;
use super::Device;
use crate::sabotage::Sabotage;

/// Called at every fence while recording, with the cache lines in flight (ascending): stored or
/// written back and not yet made persistent by a fence of a thread that touched them. Until then
/// each of those lines may have reached the medium in any of the states it passed through; the
/// lines marked `fenced` have their last one from this fence on, the others stay in flight.
pub type FenceHook = Box<dyn FnMut(&[InFlight]) + Send>;

/// One cache line in flight between two fences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// Device offset of the line (a multiple of the 64-byte line size).
    pub line: u64,
    /// The line's bytes after each store that touched it, oldest first; the last is what the
    /// fence makes persistent.
    pub versions: Vec<[u8; LINE]>,
    /// Whether this fence makes the line persistent (its thread touched it).
    pub fenced: bool,
}

/// A device's recording state: off (one relaxed load per store and fence) or a recorder.
#[derive(Debug, Default)]
pub(super) struct Recording {
    on: AtomicBool,
    recorder: Mutex<Option<Recorder>>,
    /// The planted bug the file system on this device runs with (`Sabotage as u8`).
    sabotage: AtomicU8,
}

struct Recorder {
    inflight: BTreeMap<u64, Line>,
    on_fence: FenceHook,
}

/// A line in flight: its states, the threads that stored to it or wrote it back, and whether
/// its last store is still only in the cache (no write-back since: no fence persists it).
struct Line {
    versions: Vec<[u8; LINE]>,
    threads: Vec<ThreadId>,
    cached: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("inflight", &self.inflight.len()).finish()
    }
}

impl Recording {
    fn recorder(&self) -> std::sync::MutexGuard<'_, Option<Recorder>> {
        self.recorder.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fence: the lines in flight go to the hook.
    pub(super) fn fenced(&self) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        if let Some(r) = self.recorder().as_mut() {
            let me = std::thread::current().id();
            let lines: Vec<InFlight> = r
                .inflight
                .iter()
                .map(|(&line, l)| InFlight { line, versions: l.versions.clone(), fenced: l.persists_at(me) })
                .collect();
            r.inflight.retain(|_, l| !l.persists_at(me));
            (r.on_fence)(&lines);
        }
    }
}

impl Line {
    /// Whether a fence by thread `me` makes the line persistent: it was written back since its
    /// last store, and `me` stored it or wrote it back.
    fn persists_at(&self, me: ThreadId) -> bool {
        !self.cached && self.threads.contains(&me)
    }
}

impl Device {
    /// Plants bug `which` in every file system mounted on this device (and in recovery), from
    /// now on; `Sabotage::None` takes it out. Never use it on data you keep.
    pub fn sabotage(&self, which: Sabotage) {
        self.recording.sabotage.store(which as u8, Ordering::Relaxed);
    }

    /// Whether bug `which` is planted.
    #[inline]
    pub(crate) fn planted(&self, which: Sabotage) -> bool {
        self.recording.sabotage.load(Ordering::Relaxed) == which as u8
    }

    /// Starts recording for crash-state exploration: `on_fence` runs at every later fence with
    /// the lines stored since the previous one and each state they passed through.
    pub fn record(&self, on_fence: FenceHook) {
        *self.recording.recorder() = Some(Recorder { inflight: BTreeMap::new(), on_fence });
        self.recording.on.store(true, Ordering::Release);
    }

    /// Stops recording and drops the hook.
    pub fn stop_recording(&self) {
        self.recording.on.store(false, Ordering::Release);
        *self.recording.recorder() = None;
    }

    /// Notes the lines `[off, off+len)` touched, with their bytes now, while recording;
    /// `written_back`: stored and written back (or only written back), else stored and left in
    /// the cache.
    pub(super) fn note_store(&self, off: u64, len: u64, written_back: bool) {
        if len == 0 || !self.recording.on.load(Ordering::Relaxed) {
            return;
        }
        if let Some(r) = self.recording.recorder().as_mut() {
            let line = LINE as u64;
            for l in off / line..(off + len).div_ceil(line) {
                // The caller's range was bounds-checked; only a device whose length is not a
                // multiple of a line has a shorter last line.
                let mut bytes = [0u8; LINE];
                let n = (self.len as u64 - l * line).min(line) as usize;
                let _ = self.read(l * line, &mut bytes[..n]);
                let me = std::thread::current().id();
                let entry = r.inflight.entry(l * line).or_insert_with(|| Line {
                    versions: Vec::new(),
                    threads: Vec::new(),
                    cached: false,
                });
                if entry.versions.last() != Some(&bytes) {
                    entry.versions.push(bytes);
                }
                entry.cached = !written_back;
                if !entry.threads.contains(&me) {
                    entry.threads.push(me);
                }
            }
        }
    }
}
