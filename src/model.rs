//! Switches for the model check (`tests/model_check.rs`), built with the `model` feature only.
//! Each puts back one window that the mapping protocol closes, so that the check can show it
//! finds that window when it is there.

use std::sync::atomic::{AtomicU8, Ordering};

/// A window to put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Plant {
    /// None: the code as built.
    None = 0,
    /// A reset maps fresh memory over the pages and registers it afterwards, instead of moving
    /// a registered placeholder over them in one step.
    TwoStepReset = 1,
    /// A load from a hole in a shared writable mapping installs the zero page and
    /// write-protects it afterwards, instead of installing protected zeros in one step.
    TwoStepZeroPage = 2,
    /// A first store allocates beside a write that is copying without the inode lock.
    StoresIgnoreWrites = 3,
    /// Copies of written pages are installed write-protected in every mapping, including
    /// read-only ones, whose regions are not registered for write protection.
    WriteProtectEveryCopy = 4,
}

static PLANTED: AtomicU8 = AtomicU8::new(Plant::None as u8);

/// Puts `p` back, process-wide (`Plant::None` takes it out again).
pub fn plant(p: Plant) {
    PLANTED.store(p as u8, Ordering::Relaxed);
}

pub(crate) fn planted(p: Plant) -> bool {
    PLANTED.load(Ordering::Relaxed) == p as u8
}
