//! Helpers the integration tests share.

use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on its own thread; when it has not returned within `secs` seconds, ends the test
/// process with status 70 (unwinding could wait for the very locks that are stuck).
pub fn watchdog<T: Send + 'static>(what: &str, secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            eprintln!("{what}: no progress in {secs} s (deadlock)");
            std::process::exit(70)
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the worker panicked"),
    }
}

/// A small xorshift generator: each thread its own, seeded. (Not every test binary that
/// includes this module draws numbers.)
#[allow(dead_code)]
pub struct Rng(pub u64);

#[allow(dead_code)]
impl Rng {
    /// The next number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
