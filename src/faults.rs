//! Fault injection for the failure-atomicity test (`tests/failure_atomicity.rs`) and planted
//! bugs for the checks that must catch them, built with the `faults` feature only; without it
//! `check` and the plant queries are empty inline functions.
//!
//! Every fallible step an operation takes after it has begun to change memory passes through
//! `check`: taking blocks or an inode number, storing transaction content, committing. A test
//! arms the calling thread to fail (or panic at) its n-th step from then on, runs one
//! operation, and sees whether the step was reached.

use crate::{Error, Result};

/// A fallible step of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Blocks or an inode number from the allocators (fails as ENOSPC).
    Alloc,
    /// Content a transaction stores before its record (fails as a device error).
    Content,
    /// The commit of a transaction (fails as a full journal window).
    Commit,
}

#[cfg(feature = "faults")]
mod armed {
    use std::cell::Cell;

    #[derive(Debug, Clone, Copy)]
    pub(super) struct Arm {
        pub(super) countdown: u64,
        pub(super) panic: bool,
        pub(super) fired: Option<super::Step>,
    }

    thread_local! {
        pub(super) static ARM: Cell<Option<Arm>> = const { Cell::new(None) };
        pub(super) static KEEP_MEMORY: Cell<bool> = const { Cell::new(false) };
        pub(super) static IDLE_REPAIR: Cell<bool> = const { Cell::new(false) };
    }
}

/// Makes the `n`-th fallible step (counting from 0) this thread takes from now fail; with
/// `panic`, panic there instead (as a bug would, holding whatever locks the step holds).
#[cfg(feature = "faults")]
pub fn arm(n: u64, panic: bool) {
    armed::ARM.set(Some(armed::Arm { countdown: n, panic, fired: None }));
}

/// Disarms this thread; returns the step that failed, if one did.
#[cfg(feature = "faults")]
pub fn disarm() -> Option<Step> {
    armed::ARM.take().and_then(|a| a.fired)
}

/// The planted bug the test must catch: a failed operation leaves memory as it was when the
/// step failed (nothing is put back from the medium) on this thread.
#[cfg(feature = "faults")]
pub fn plant_keep_memory(on: bool) {
    armed::KEEP_MEMORY.set(on);
}

#[cfg(feature = "faults")]
pub(crate) fn keeps_memory() -> bool {
    armed::KEEP_MEMORY.get()
}

#[cfg(not(feature = "faults"))]
#[inline(always)]
pub(crate) fn keeps_memory() -> bool {
    false
}

/// The planted bug the corrupt-image harness must catch: `Fs::repair` mends nothing (on this
/// thread).
#[cfg(feature = "faults")]
pub fn plant_idle_repair(on: bool) {
    armed::IDLE_REPAIR.set(on);
}

#[cfg(feature = "faults")]
pub(crate) fn idle_repair() -> bool {
    armed::IDLE_REPAIR.get()
}

#[cfg(not(feature = "faults"))]
#[inline(always)]
pub(crate) fn idle_repair() -> bool {
    false
}

/// Passes one fallible step: an error (or a panic) where the thread is armed for it.
#[cfg(feature = "faults")]
pub(crate) fn check(step: Step) -> Result<()> {
    let Some(mut a) = armed::ARM.get() else { return Ok(()) };
    if a.fired.is_some() {
        return Ok(());
    }
    if a.countdown > 0 {
        a.countdown -= 1;
        armed::ARM.set(Some(a));
        return Ok(());
    }
    a.fired = Some(step);
    armed::ARM.set(Some(a));
    if a.panic {
        panic!("injected panic at {step:?}");
    }
    Err(injected(step))
}

#[cfg(not(feature = "faults"))]
#[inline(always)]
pub(crate) fn check(_: Step) -> Result<()> {
    Ok(())
}

#[cfg_attr(not(feature = "faults"), allow(dead_code))]
fn injected(step: Step) -> Error {
    match step {
        Step::Alloc => Error::NoSpace,
        Step::Content => Error::io("injected device error", std::io::Error::from_raw_os_error(libc::EIO)),
        Step::Commit => Error::InvalidArgument("metadata transaction larger than half the journal"),
    }
}
