//! Adaptive polling of the FUSE device: after a request is served, the thread that receives
//! requests asks for the next one without sleeping for a bounded window, then sleeps again.
//!
//! A request from a program wakes the server thread sleeping in read(2) on /dev/fuse; on a VM
//! that wake-up, across virtual CPUs, costs more than serving a 4 KiB read. fuser 0.18 owns the
//! receive loop and retries a read that fails with EAGAIN at once, so with O_NONBLOCK set on the
//! device's open file its blocking read becomes a busy poll. [`Poller`] sets the flag when a
//! request is served and a governor thread clears it once no request has been served for the
//! window: the poll never outlives the window by more than one governor tick, and an idle mount
//! sleeps in read(2) and uses no CPU.
//!
//! The flag belongs to the open file, so every thread reading that descriptor polls; the mount
//! gives each further request thread a descriptor of its own (`FUSE_DEV_IOC_CLONE`), and only the
//! thread on the first one polls.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::OFlags;

/// Sets and clears O_NONBLOCK on the device's open file as requests come and stop.
#[derive(Debug)]
pub(crate) struct Poller {
    shared: Arc<Shared>,
    governor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    /// A duplicate of the descriptor fuser reads: the same open file, so the same flags.
    dev: OwnedFd,
    window: Duration,
    epoch: Instant,
    /// When the last request was served, in nanoseconds since `epoch`.
    last_ns: AtomicU64,
    /// Whether O_NONBLOCK is set (or about to be).
    polling: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn set_nonblocking(&self, on: bool) {
        let flags = rustix::fs::fcntl_getfl(&self.dev).unwrap_or(OFlags::empty());
        let flags = if on { flags | OFlags::NONBLOCK } else { flags - OFlags::NONBLOCK };
        if let Err(e) = rustix::fs::fcntl_setfl(&self.dev, flags) {
            log::warn!("/dev/fuse: cannot {} O_NONBLOCK: {e}", if on { "set" } else { "clear" });
        }
    }
}

/// Taken when a request is served; its drop, after the reply, starts the poll window.
pub(crate) struct Serving<'a>(Option<&'a Poller>);

impl<'a> Serving<'a> {
    pub(crate) fn new(poller: Option<&'a Poller>) -> Serving<'a> {
        Serving(poller)
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            p.served();
        }
    }
}

impl Poller {
    /// Polls `dev` (a duplicate of the session's descriptor) for `window` after each request.
    pub(crate) fn start(dev: OwnedFd, window: Duration) -> std::io::Result<Poller> {
        let shared = Arc::new(Shared {
            dev,
            window,
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let governor = std::thread::Builder::new().name("fuse-poll".into()).spawn(move || govern(&s))?;
        Ok(Poller { shared, governor: Some(governor) })
    }

    fn served(&self) {
        let s = &self.shared;
        s.last_ns.store(s.now_ns(), Ordering::Relaxed);
        if !s.polling.load(Ordering::Relaxed) && !s.polling.swap(true, Ordering::AcqRel) {
            s.set_nonblocking(true);
            if let Some(g) = &self.governor {
                g.thread().unpark();
            }
        }
    }
}

/// The governor: parked while the device blocks; while it polls, wakes once per window to see
/// whether a request came, and clears O_NONBLOCK when none did.
fn govern(s: &Shared) {
    loop {
        while !s.polling.load(Ordering::Acquire) {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::park();
        }
        loop {
            let idle = Duration::from_nanos(s.now_ns().saturating_sub(s.last_ns.load(Ordering::Relaxed)));
            if idle >= s.window || s.stop.load(Ordering::Acquire) {
                s.set_nonblocking(false);
                s.polling.store(false, Ordering::Release);
                break;
            }
            std::thread::sleep(s.window - idle);
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(g) = self.governor.take() {
            g.thread().unpark();
            let _ = g.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonblocking(fd: &OwnedFd) -> bool {
        rustix::fs::fcntl_getfl(fd).unwrap().contains(OFlags::NONBLOCK)
    }

    /// The flag goes on when a request has been served and off once none has come for the
    /// window, again and again; dropping the poller stops its governor.
    #[test]
    fn polls_after_each_request_then_sleeps() {
        // Any open file carries the flag; a scratch file stands in for /dev/fuse.
        let read = OwnedFd::from(tempfile::tempfile().unwrap());
        let poller = Poller::start(read.try_clone().unwrap(), Duration::from_millis(2)).unwrap();
        for _ in 0..3 {
            assert!(!nonblocking(&read));
            drop(Serving::new(Some(&poller)));
            assert!(nonblocking(&read), "no poll after a request");
            let start = Instant::now();
            while nonblocking(&read) {
                assert!(start.elapsed() < Duration::from_secs(10), "still polling 10 s after the last request");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(poller);
        drop(Serving::new(None));
        assert!(!nonblocking(&read));
    }
}
