//! The locks, condition variables, atomics and threads of the file system and its fault service:
//! std's, or with the `model` feature shuttle's, so that the model check (`tests/model_check.rs`)
//! schedules every lock, wait and spawn of the real code. Process-wide registries that are held
//! only for a map lookup keep std's primitives (nothing can wait while they are held).

#[cfg(not(feature = "model"))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
#[cfg(not(feature = "model"))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
#[cfg(not(feature = "model"))]
pub(crate) use std::thread;

#[cfg(feature = "model")]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
#[cfg(feature = "model")]
pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
#[cfg(feature = "model")]
pub(crate) use shuttle::thread;

/// Takes a lock whatever a panicking holder left behind: every change either commits or is
/// undone (`Fs::undoable`), and a panic during one stops all changes, so the data a lock guards
/// never needs poisoning to be safe to read.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(feature = "crash-test")]
    if crate::turnstile::joined_any() {
        return take_in_turn(|| m.try_lock());
    }
    m.lock().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn rd<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    #[cfg(feature = "crash-test")]
    if crate::turnstile::joined_any() {
        return take_in_turn(|| m.try_read());
    }
    m.read().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn wr<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    #[cfg(feature = "crash-test")]
    if crate::turnstile::joined_any() {
        return take_in_turn(|| m.try_write());
    }
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// A thread of the crash explorer's interleaved run never blocks on a lock: while it is held,
/// the turn goes to another thread (perhaps the holder), and the lock is tried again.
#[cfg(feature = "crash-test")]
fn take_in_turn<G>(mut try_take: impl FnMut() -> Result<G, TryLockError<G>>) -> G {
    loop {
        match try_take() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(TryLockError::WouldBlock) => crate::turnstile::lock_held(),
        }
    }
}
