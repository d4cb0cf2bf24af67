//! Values worked out on first use without a lock, so that no thread ever waits for another to
//! finish working one out. A `OnceLock` would: and a child forked while another thread of its
//! parent was inside the initialisation would wait for a thread it does not have, for ever.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A `usize` worked out on first use. Threads that race each work it out; every way of working
/// it out gives the same answer, so which store lands does not matter.
#[derive(Debug)]
pub(crate) struct Cached(AtomicUsize);

impl Cached {
    pub(crate) const fn new() -> Cached {
        Cached(AtomicUsize::new(0))
    }

    /// The value, worked out by `f` the first time (0 stands for "not yet": the value is stored
    /// as one more than itself, and `f`'s must be below `usize::MAX`).
    pub(crate) fn get(&self, f: impl FnOnce() -> usize) -> usize {
        match self.0.load(Ordering::Relaxed) {
            0 => {
                let v = f();
                self.0.store(v + 1, Ordering::Relaxed);
                v
            }
            n => n - 1,
        }
    }

    /// A flag worked out on first use.
    pub(crate) fn flag(&self, f: impl FnOnce() -> bool) -> bool {
        self.get(|| usize::from(f())) != 0
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::Cached;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn works_a_value_out_once_and_keeps_it() {
        let c = Cached::new();
        assert_eq!(c.get(|| 0), 0);
        assert_eq!(c.get(|| unreachable!()), 0);
        let f = Cached::new();
        assert!(f.flag(|| true));
        assert!(f.flag(|| unreachable!()));
    }

    /// A child forked while a thread of its parent works the value out gets it without waiting
    /// (with a `OnceLock` here the child waited for ever, and `udax run`'s fork test hung).
    #[test]
    fn a_child_forked_mid_way_works_the_value_out_itself() {
        static VALUE: Cached = Cached::new();
        let (inside, started) = mpsc::channel();
        let (release, held) = mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            VALUE.get(|| {
                inside.send(()).unwrap();
                // Stays inside until the test is over.
                let _ = held.recv();
                1
            })
        });
        started.recv().unwrap();
        // SAFETY: the child only loads and stores an atomic and calls _exit, all of which are
        // async-signal-safe, so the other threads' state does not matter to it.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let v = VALUE.get(|| 7);
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(if v == 7 { 0 } else { 1 }) };
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        let (done, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let mut status = 0;
            // SAFETY: waits for the child made above, writing its status into a live local.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            let _ = done.send(status);
        });
        let status = exited.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            // SAFETY: the child is ours and has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the child waited for its parent's thread");
        });
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
        drop(release);
        assert_eq!(worker.join().unwrap(), 1);
    }
}
