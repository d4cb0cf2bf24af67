//! The crash-state recorder (test machinery, `crash-test` feature): while on, every store notes
//! the cache lines it touched with their bytes, and every fence hands the lines in flight to the
//! crash explorer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

use super::persist::LINE;
use super::Device;
use crate::sabotage::Sabotage;

/// Called at every fence while recording, with the cache lines stored or written back since the
/// previous fence (ascending). Between two fences each of those lines may have reached the medium
/// in any of the states it passed through; at the fence every line has its last one.
pub type FenceHook = Box<dyn FnMut(&[InFlight]) + Send>;

/// One cache line in flight between two fences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// Device offset of the line (a multiple of [`LINE`]).
    pub line: u64,
    /// The line's bytes after each store that touched it, oldest first; the last is what the
    /// fence makes persistent.
    pub versions: Vec<[u8; LINE]>,
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
    inflight: BTreeMap<u64, Vec<[u8; LINE]>>,
    on_fence: FenceHook,
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
            let lines: Vec<InFlight> = std::mem::take(&mut r.inflight)
                .into_iter()
                .map(|(line, versions)| InFlight { line, versions })
                .collect();
            (r.on_fence)(&lines);
        }
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

    /// Notes the lines `[off, off+len)` touched, with their bytes now, while recording.
    pub(super) fn note_store(&self, off: u64, len: u64) {
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
                let versions = r.inflight.entry(l * line).or_default();
                if versions.last() != Some(&bytes) {
                    versions.push(bytes);
                }
            }
        }
    }
}
