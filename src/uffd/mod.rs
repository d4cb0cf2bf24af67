//! userfaultfd, declared by hand: the kernel interface the mmap fault service is built on.
//!
//! A `Uffd` owns one userfaultfd descriptor and the list of address ranges registered through it.
//! Every operation that installs or protects pages first checks that its range lies inside a
//! registered range of this `Uffd`, so the only memory these calls can change is memory the
//! caller handed over at registration (a reservation it owns for the life of the registration).
//! Constants and struct layouts follow `include/uapi/linux/userfaultfd.h`; the machine's headers
//! are older than its kernel, so they are written out here rather than generated.
//!
//! The system calls themselves are in `sys`, one thin function each. With the `model` feature
//! `sim` replaces them: a simulated address space and userfaultfd, so that the model check runs
//! this module and the fault service above it unchanged under a scheduler that explores thread
//! interleavings.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::error::{Error, Result};

mod dirty;
mod region;
#[cfg(feature = "model")]
mod sim;
#[cfg(not(feature = "model"))]
mod sys;
#[cfg(feature = "model")]
use sim as kernel;
#[cfg(not(feature = "model"))]
use sys as kernel;

pub use dirty::{tracker, Dirty, Span};
pub use region::{overlaps_region, Region};

const UFFD_API: u64 = 0xAA;

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioPoison {
    range: UffdioRange,
    mode: u64,
    updated: i64,
}

/// `struct uffd_msg`, 32 bytes, packed in the kernel's header (every field here is naturally
/// aligned, so `repr(C)` gives the same layout).
#[repr(C)]
#[derive(Debug, Default)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    flags: u64,
    address: u64,
    ptid: u32,
    pad: u32,
}
const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

/// One userfaultfd ioctl and its argument (a copy also carries the source bytes its `src`
/// field points at).
// Unregistering and UFFDIO_WRITEPROTECT complete the binding; the unit tests and the model
// check's planted windows use them, the file system does not.
#[allow(dead_code)]
#[derive(Debug)]
enum Ioctl<'a> {
    Api(&'a mut UffdioApi),
    Register(&'a mut UffdioRegister),
    Unregister(&'a mut UffdioRange),
    Wake(&'a mut UffdioRange),
    Copy(&'a mut UffdioCopy, &'a [u8]),
    Zeropage(&'a mut UffdioZeropage),
    Writeprotect(&'a mut UffdioWriteprotect),
    Poison(&'a mut UffdioPoison),
}

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

/// Registration modes.
pub const MODE_MISSING: u64 = 1 << 0;
pub const MODE_WP: u64 = 1 << 1;
/// Flag for the resolving calls: do not wake the faulting thread yet.
const MODE_DONTWAKE: u64 = 1 << 0;
/// UFFDIO_WRITEPROTECT: set (rather than clear) protection.
#[cfg_attr(not(any(test, feature = "model")), allow(dead_code))]
const MODE_WP_SET: u64 = 1 << 0;
#[cfg_attr(not(any(test, feature = "model")), allow(dead_code))]
const MODE_WP_DONTWAKE: u64 = 1 << 1;
/// UFFDIO_COPY: map the copied page write-protected.
const MODE_COPY_WP: u64 = 1 << 1;

/// Feature bits asked for at the API handshake.
/// A registered range moved by mremap(2) stays registered (and the mover waits until a reader
/// has taken the REMAP event that reports it).
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const FEATURE_THREAD_ID: u64 = 1 << 8;
pub const FEATURE_POISON: u64 = 1 << 14;

/// A page fault the kernel handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Faulting address (page-aligned by the kernel unless exact addresses were asked for).
    pub addr: u64,
    /// A store (including one that hit a write-protected page).
    pub write: bool,
    /// A store into a page this `Uffd` write-protected.
    pub wp: bool,
    /// The faulting thread.
    pub tid: u32,
}

/// One userfaultfd and the ranges registered through it.
#[derive(Debug)]
pub struct Uffd {
    fd: kernel::Fd,
    features: u64,
    /// Only faults raised in user mode reach this userfaultfd (see [`Uffd::user_mode_only`]).
    user_mode_only: bool,
    /// Registered ranges: start → length (registrations never overlap).
    registered: RwLock<BTreeMap<u64, u64>>,
}

fn os_err(what: &str, e: std::io::Error) -> Error {
    Error::io(format!("userfaultfd {what}"), e)
}

/// The outcome of a failed resolving call. EEXIST: a page is already installed there — a second
/// message for a fault that an earlier one resolved. EAGAIN: the mappings are changing (a REMAP
/// event is waiting to be read) and the kernel refuses until it is. Both count as done: the
/// caller still wakes the thread, which touches the page again and, if nothing was installed,
/// faults anew behind the event. Anything else is an error.
fn resolved_already(what: &str, e: std::io::Error) -> Result<()> {
    if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::EAGAIN)) {
        return Ok(());
    }
    Err(os_err(what, e))
}

impl Uffd {
    /// Opens a userfaultfd (close-on-exec, non-blocking reads) and negotiates `features`; every
    /// asked-for feature must be granted.
    pub fn new(features: u64) -> Result<Uffd> {
        let (fd, user_mode_only) = kernel::open().map_err(|e| os_err("open", e))?;
        let mut api = UffdioApi { api: UFFD_API, features, ioctls: 0 };
        // SAFETY: the handshake names no memory.
        unsafe { kernel::ioctl(&fd, Ioctl::Api(&mut api)) }.map_err(|e| os_err("API handshake", e))?;
        if api.features & features != features {
            return Err(Error::Unsupported(format!(
                "userfaultfd features {:#x} not granted",
                features & !api.features
            )));
        }
        Ok(Uffd { fd, features: api.features, user_mode_only, registered: RwLock::new(BTreeMap::new()) })
    }

    /// Whether only user-mode faults reach this userfaultfd: the process lacks the privilege
    /// for kernel-mode ones (CAP_SYS_PTRACE, or vm.unprivileged_userfaultfd = 1). A system call
    /// that touches a page not yet mapped (read(2) into a mapping) then fails with EFAULT
    /// instead of faulting it in.
    pub fn user_mode_only(&self) -> bool {
        self.user_mode_only
    }

    /// Registers `[start, start+len)` with `mode` (MODE_MISSING and/or MODE_WP).
    ///
    /// # Safety
    /// The range must be a mapping the caller owns (a reservation) and keeps mapped until it
    /// unregisters it: the resolving calls of this `Uffd` install and protect pages in it.
    pub unsafe fn register(&self, start: u64, len: u64, mode: u64) -> Result<()> {
        // SAFETY: the caller vouches for the range (this function's contract).
        unsafe { self.register_unrecorded(start, len, mode) }?;
        self.registered.write().unwrap_or_else(|e| e.into_inner()).insert(start, len);
        Ok(())
    }

    /// Unregisters a range registered before (the whole of it).
    #[allow(dead_code)]
    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        let mut regs = self.registered.write().unwrap_or_else(|e| e.into_inner());
        if regs.get(&start) != Some(&len) {
            return Err(Error::InvalidArgument("unregistering a range that was not registered"));
        }
        let mut range = UffdioRange { start, len };
        // SAFETY: the range was registered through this `Uffd` (found just above).
        unsafe { kernel::ioctl(&self.fd, Ioctl::Unregister(&mut range)) }.map_err(|e| os_err("unregister", e))?;
        regs.remove(&start);
        Ok(())
    }

    /// Registers a range without recording it: a placeholder that [`Region::reset`] has just
    /// mapped and is about to move into a registered range (after the move it lies inside that
    /// range).
    ///
    /// # Safety
    /// As [`Uffd::register`].
    unsafe fn register_unrecorded(&self, start: u64, len: u64, mode: u64) -> Result<()> {
        let mut reg = UffdioRegister { range: UffdioRange { start, len }, mode, ioctls: 0 };
        // SAFETY: the caller owns the range (this function's contract).
        unsafe { kernel::ioctl(&self.fd, Ioctl::Register(&mut reg)) }.map_err(|e| os_err("register", e))
    }

    /// Drops a registered range from the list without the ioctl (its memory is being unmapped,
    /// which ends the registration).
    fn forget(&self, start: u64, len: u64) {
        let mut regs = self.registered.write().unwrap_or_else(|e| e.into_inner());
        if regs.get(&start) == Some(&len) {
            regs.remove(&start);
        }
    }

    /// Checks that `[start, start+len)` lies inside one registered range.
    fn check(&self, start: u64, len: u64) -> Result<()> {
        let end = start.checked_add(len).ok_or(Error::InvalidArgument("range overflows"))?;
        let regs = self.registered.read().unwrap_or_else(|e| e.into_inner());
        if regs.range(..=start).next_back().is_some_and(|(&s, &l)| end <= s + l) {
            Ok(())
        } else {
            Err(Error::InvalidArgument("range is not registered with this userfaultfd"))
        }
    }

    /// A resolving call on a range `check` proved registered: EEXIST or EAGAIN count as done
    /// (see [`resolved_already`]), and then the thread is woken here unless `wake` is false.
    fn resolve(&self, what: &str, op: Ioctl<'_>, start: u64, len: u64, wake: bool) -> Result<()> {
        // SAFETY: every caller passed the range through `check`, so only pages of a reservation
        // registered here change.
        if let Err(e) = unsafe { kernel::ioctl(&self.fd, op) } {
            resolved_already(what, e)?;
            if wake {
                self.wake(start, len)?;
            }
        }
        Ok(())
    }

    /// Maps the shared zero page over `[start, start+len)` (read faults on holes).
    pub fn zeropage(&self, start: u64, len: u64, wake: bool) -> Result<()> {
        self.check(start, len)?;
        let mode = if wake { 0 } else { MODE_DONTWAKE };
        let mut z = UffdioZeropage { range: UffdioRange { start, len }, mode, zeropage: 0 };
        self.resolve("zeropage", Ioctl::Zeropage(&mut z), start, len, wake)
    }

    /// Copies `src` (whole pages) into `[dst, dst+len)`, optionally write-protected.
    pub fn copy(&self, dst: u64, src: &[u8], wake: bool, write_protect: bool) -> Result<()> {
        let len = src.len() as u64;
        self.check(dst, len)?;
        let mode = if wake { 0 } else { MODE_DONTWAKE } | if write_protect { MODE_COPY_WP } else { 0 };
        let mut c = UffdioCopy { dst, src: src.as_ptr() as u64, len, mode, copy: 0 };
        self.resolve("copy", Ioctl::Copy(&mut c, src), dst, len, wake)
    }

    /// Sets or clears write protection on `[start, start+len)`. Clearing wakes the faulting
    /// thread unless `wake` is false; setting never wakes (the kernel refuses DONTWAKE with it).
    #[cfg_attr(not(any(test, feature = "model")), allow(dead_code))]
    pub fn writeprotect(&self, start: u64, len: u64, protect: bool, wake: bool) -> Result<()> {
        self.check(start, len)?;
        let mode = if protect {
            MODE_WP_SET
        } else if wake {
            0
        } else {
            MODE_WP_DONTWAKE
        };
        let mut w = UffdioWriteprotect { range: UffdioRange { start, len }, mode };
        // SAFETY: `check` proved the range is registered here; only protection of those pages
        // changes.
        unsafe { kernel::ioctl(&self.fd, Ioctl::Writeprotect(&mut w)) }.map_err(|e| os_err("writeprotect", e))
    }

    /// Wakes threads waiting on faults in `[start, start+len)`.
    pub fn wake(&self, start: u64, len: u64) -> Result<()> {
        self.check(start, len)?;
        let mut r = UffdioRange { start, len };
        // SAFETY: `check` proved the range is registered here; waking touches no memory.
        unsafe { kernel::ioctl(&self.fd, Ioctl::Wake(&mut r)) }.map_err(|e| os_err("wake", e))
    }

    /// Marks `[start, start+len)` poisoned: any access raises SIGBUS in the accessing thread, and
    /// a system call touching it fails with EFAULT (pages at or past EOF).
    pub fn poison(&self, start: u64, len: u64, wake: bool) -> Result<()> {
        self.check(start, len)?;
        let mode = if wake { 0 } else { MODE_DONTWAKE };
        let mut p = UffdioPoison { range: UffdioRange { start, len }, mode, updated: 0 };
        self.resolve("poison", Ioctl::Poison(&mut p), start, len, wake)
    }

    /// Makes a thread waiting in [`Uffd::next_fault`] return soon (the service is stopping).
    pub fn interrupt(&self) {
        kernel::interrupt(&self.fd);
    }

    /// Waits up to `timeout_ms` (-1: forever) for the next page fault; `None` on timeout.
    /// Events other than page faults are skipped.
    pub fn next_fault(&self, timeout_ms: i32) -> Result<Option<Fault>> {
        loop {
            let Some(msg) = kernel::next_msg(&self.fd, timeout_ms).map_err(|e| os_err("read", e))? else {
                return Ok(None);
            };
            if msg.event == UFFD_EVENT_PAGEFAULT {
                return Ok(Some(Fault {
                    addr: msg.address,
                    write: msg.flags & UFFD_PAGEFAULT_FLAG_WRITE != 0,
                    wp: msg.flags & UFFD_PAGEFAULT_FLAG_WP != 0,
                    tid: msg.ptid,
                }));
            }
        }
    }
}

const PAGE: u64 = 4096;

#[cfg(all(test, not(feature = "model")))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// An anonymous reservation the test owns.
    struct Reservation {
        base: u64,
        len: u64,
    }

    impl Reservation {
        fn new(pages: u64) -> Reservation {
            let len = pages * PAGE;
            // SAFETY: a fresh private anonymous mapping with no address hint, checked below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Reservation { base: p as u64, len }
        }

        fn page(&self, i: u64) -> *mut u8 {
            (self.base + i * PAGE) as *mut u8
        }
    }

    impl Drop for Reservation {
        fn drop(&mut self) {
            // SAFETY: exactly the mapping made in `new`.
            unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
        }
    }

    /// Resolves faults the way the fault service will: zero page for reads, a filled page for
    /// stores into missing pages, un-protect for stores into protected pages.
    fn serve(uffd: Arc<Uffd>, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<Fault>>>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let fill = vec![0xabu8; PAGE as usize];
            while !stop.load(Ordering::Acquire) {
                let Some(f) = uffd.next_fault(50).unwrap() else { continue };
                seen.lock().unwrap().push(f);
                let page = f.addr & !(PAGE - 1);
                if f.wp {
                    uffd.writeprotect(page, PAGE, false, true).unwrap();
                } else if f.write {
                    uffd.copy(page, &fill, true, false).unwrap();
                } else {
                    uffd.zeropage(page, PAGE, false).unwrap();
                    uffd.writeprotect(page, PAGE, true, false).unwrap();
                    uffd.wake(page, PAGE).unwrap();
                }
            }
        })
    }

    #[test]
    #[cfg_attr(miri, ignore = "userfaultfd")]
    fn faults_are_delivered_and_resolved() {
        let r = Reservation::new(8);
        let uffd = Arc::new(Uffd::new(FEATURE_THREAD_ID).unwrap());
        // SAFETY: `r` is this test's own reservation and outlives the registration.
        unsafe { uffd.register(r.base, r.len, MODE_MISSING | MODE_WP).unwrap() };
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = serve(uffd.clone(), stop.clone(), seen.clone());

        // SAFETY: the pages lie inside `r`; every access below is resolved by the server.
        let (read0, read1_after) = unsafe {
            let read0 = std::ptr::read_volatile(r.page(0));
            std::ptr::write_volatile(r.page(0).add(10), 7); // store into the zero page: WP fault
            std::ptr::write_volatile(r.page(1), 1); // store into a missing page: filled page
            (read0, std::ptr::read_volatile(r.page(1).add(1)))
        };
        assert_eq!(read0, 0);
        assert_eq!(read1_after, 0xab);
        // A fault raised inside the kernel (read(2) into an unpopulated page) reaches us too,
        // unless the process may only handle user-mode faults: then the copy fails.
        let mut pipe = [0; 2];
        // SAFETY: pipe(2) writes two descriptors into `pipe`.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: plain write/read on the pipe; the read buffer is page 3 of `r`.
        let n = unsafe {
            libc::write(pipe[1], b"hello".as_ptr().cast(), 5);
            libc::read(pipe[0], r.page(3).cast(), 5)
        };
        if uffd.user_mode_only() {
            assert_eq!((n, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EFAULT)));
        } else {
            assert_eq!(n, 5);
            // SAFETY: page 3 is now populated by the kernel's copy.
            assert_eq!(unsafe { std::slice::from_raw_parts(r.page(3), 5) }, b"hello");
        }
        // SAFETY: closing the pipe's own descriptors.
        unsafe {
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        stop.store(true, Ordering::Release);
        server.join().unwrap();
        let seen = seen.lock().unwrap();
        let kinds: Vec<(bool, bool)> = seen.iter().map(|f| (f.write, f.wp)).collect();
        assert_eq!(&kinds[..3], &[(false, false), (true, true), (true, false)], "{seen:?}");
        assert!(seen.iter().all(|f| f.tid != 0), "thread ids were asked for");
        uffd.unregister(r.base, r.len).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "userfaultfd")]
    fn ranges_outside_the_registration_are_refused() {
        let r = Reservation::new(2);
        let uffd = Uffd::new(0).unwrap();
        // SAFETY: the test's own reservation.
        unsafe { uffd.register(r.base, PAGE, MODE_MISSING).unwrap() };
        assert!(uffd.zeropage(r.base + PAGE, PAGE, true).is_err());
        assert!(uffd.copy(r.base, &[0; 8192], true, false).is_err());
        assert!(uffd.unregister(r.base, 2 * PAGE).is_err());
        uffd.unregister(r.base, PAGE).unwrap();
    }

    /// Run as a child process by `poisoned_pages_raise_sigbus`.
    #[test]
    #[ignore = "child process of poisoned_pages_raise_sigbus"]
    fn poison_child() {
        if std::env::var_os("UDAX_UFFD_POISON_CHILD").is_none() {
            return;
        }
        let r = Reservation::new(1);
        let uffd = Uffd::new(FEATURE_POISON).unwrap();
        // SAFETY: the test's own reservation.
        unsafe { uffd.register(r.base, r.len, MODE_MISSING).unwrap() };
        uffd.poison(r.base, PAGE, true).unwrap();
        // SAFETY: the page is inside `r`; the access is meant to raise SIGBUS.
        unsafe { std::ptr::read_volatile(r.page(0)) };
        std::process::exit(0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "userfaultfd")]
    fn poisoned_pages_raise_sigbus() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "uffd::tests::poison_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env("UDAX_UFFD_POISON_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
    }
}
