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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::device::Device;
use crate::error::{Error, Result};

#[cfg(feature = "model")]
mod sim;
#[cfg(not(feature = "model"))]
mod sys;
#[cfg(feature = "model")]
use sim as kernel;
#[cfg(not(feature = "model"))]
use sys as kernel;

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

/// Every live [`Region`] of the process, by start address (whatever file system it serves), and
/// their count: [`overlaps_region`] answers whether a buffer lies in one.
static REGIONS: RwLock<BTreeMap<u64, u64>> = RwLock::new(BTreeMap::new());
static LIVE_REGIONS: AtomicUsize = AtomicUsize::new(0);

/// Whether `[addr, addr+len)` touches a live [`Region`] of any file system in this process:
/// touching it may fault to a fault service, so code holding a file-system lock must copy such a
/// buffer first. One atomic load when the process maps nothing.
pub fn overlaps_region(addr: usize, len: usize) -> bool {
    if len == 0 || LIVE_REGIONS.load(Ordering::Acquire) == 0 {
        return false;
    }
    let (a, end) = (addr as u64, (addr as u64).saturating_add(len as u64));
    let regions = REGIONS.read().unwrap_or_else(|e| e.into_inner());
    regions.range(..end).next_back().is_some_and(|(&s, &l)| s + l > a)
}

/// Fresh anonymous memory that [`Region::reset`] registers and then moves over a range of a
/// region; unmapped on drop unless the move took it.
struct Placeholder {
    start: u64,
    len: u64,
}

impl Placeholder {
    fn new(len: u64, prot: i32) -> Result<Placeholder> {
        let start = kernel::map_anon(len, prot).map_err(|e| Error::io("reset mapping", e))?;
        // SAFETY: the mapping made just above, owned by the placeholder.
        unsafe { kernel::no_huge_pages(start, len) };
        Ok(Placeholder { start, len })
    }

    /// Moves the placeholder over `[to, to+len)` in one step: whatever was mapped there is gone
    /// and the placeholder, with its registration, takes its place.
    ///
    /// # Safety
    /// `[to, to+len)` must be memory the caller owns (a range of its region).
    unsafe fn move_to(self, to: u64) -> Result<()> {
        // SAFETY: the source is this placeholder, one mapping of `len` bytes; the target is the
        // caller's own range (this function's contract), which the move replaces atomically.
        unsafe { kernel::move_to(self.start, self.len, to) }.map_err(|e| Error::io("reset mapping", e))?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Placeholder {
    fn drop(&mut self) {
        // SAFETY: the placeholder's own mapping, not moved (a move forgets `self`).
        unsafe { kernel::unmap(self.start, self.len) };
    }
}

/// The address range of one file mapping: anonymous memory this process reserved and registered
/// with a [`Uffd`]. Pages of the device are mapped into it, or zero and copied pages installed,
/// as faults arrive; [`Region::reset`] turns any part back into registered, empty reservation.
/// Dropping it unmaps the whole range.
#[derive(Debug)]
pub struct Region {
    uffd: Arc<Uffd>,
    start: u64,
    len: u64,
    prot: i32,
    mode: u64,
}

/// A load or store through a mapping that the (simulated) kernel refused: SIGBUS in a real run.
fn access_err(e: std::io::Error) -> Error {
    Error::io("access through the mapping", e)
}

impl Region {
    /// Reserves `len` bytes (whole pages) at an address congruent to `phase` modulo `align` (a
    /// power of two, at least a page), registered with `mode`; `writable` sets PROT_WRITE.
    pub fn new(uffd: Arc<Uffd>, len: u64, align: u64, phase: u64, writable: bool, mode: u64) -> Result<Region> {
        if len == 0 || len % PAGE != 0 || !align.is_power_of_two() || align < PAGE {
            return Err(Error::InvalidArgument("mapping length must be whole pages"));
        }
        let total = len.checked_add(align).ok_or(Error::InvalidArgument("mapping too large"))?;
        usize::try_from(total).map_err(|_| Error::InvalidArgument("mapping too large"))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let base = kernel::map_anon(total, prot).map_err(|e| Error::io("reserve mapping", e))?;
        let start = base + (phase.wrapping_sub(base) & (align - 1));
        let (head, tail) = (start - base, base + total - (start + len));
        // SAFETY: both pieces lie inside the mapping made just above, outside `[start, start+len)`;
        // the advice is on the rest of it.
        unsafe {
            if head > 0 {
                kernel::unmap(base, head);
            }
            if tail > 0 {
                kernel::unmap(start + len, tail);
            }
            kernel::no_huge_pages(start, len);
        }
        // SAFETY: `[start, start+len)` is the reservation made above, owned by the region built
        // below, which unmaps it only on drop (after which no call of the `Uffd` can name it:
        // `forget`).
        if let Err(e) = unsafe { uffd.register(start, len, mode) } {
            // SAFETY: the reservation made above, not registered.
            unsafe { kernel::unmap(start, len) };
            return Err(e);
        }
        REGIONS.write().unwrap_or_else(|e| e.into_inner()).insert(start, len);
        LIVE_REGIONS.fetch_add(1, Ordering::Release);
        Ok(Region { uffd, start, len, prot, mode })
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    #[allow(dead_code)] // beside `len`, as clippy asks
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the region was registered for write-protect faults (shared writable mappings).
    pub fn write_protects(&self) -> bool {
        self.mode & MODE_WP != 0
    }

    /// Whether `addr` lies in the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr - self.start < self.len
    }

    fn check(&self, off: u64, len: u64) -> Result<u64> {
        if off % PAGE != 0 || len % PAGE != 0 || len == 0 || off.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(Error::InvalidArgument("range outside the mapping"));
        }
        Ok(self.start + off)
    }

    /// Checks a byte range for a load or store; returns its address.
    fn bytes(&self, off: u64, len: u64, store: bool) -> Result<u64> {
        let end = off.checked_add(len).filter(|&e| e <= self.len);
        end.ok_or(Error::InvalidArgument("range outside the mapping"))?;
        if store && self.prot & libc::PROT_WRITE == 0 {
            return Err(Error::AccessDenied("the mapping is read-only"));
        }
        Ok(self.start + off)
    }

    /// Maps device bytes `[dev_off, dev_off+len)` over `[off, off+len)` of the region: shared
    /// (stores reach the device) or private (stores copy on write); `populate` fills the page
    /// tables at once.
    pub fn map_device(
        &self,
        off: u64,
        len: u64,
        dev: &Device,
        dev_off: u64,
        shared: bool,
        populate: bool,
    ) -> Result<()> {
        let addr = self.check(off, len)?;
        if dev_off % PAGE != 0 || dev_off.checked_add(len).is_none_or(|e| e > dev.len()) {
            return Err(Error::InvalidArgument("device range outside the device"));
        }
        let fd = dev.fd().ok_or(Error::NotMappable)?;
        // SAFETY: `check` proved `[addr, addr+len)` lies inside this region, whose memory the
        // region owns (no Rust reference into it is kept by udax); the device range was checked
        // against the device's length just above.
        unsafe { kernel::map_file_at(addr, len, self.prot, shared, populate, fd, dev_off) }
            .map_err(|e| Error::io("map device pages", e))
    }

    /// Turns `[off, off+len)` back into empty, registered reservation in one step that no other
    /// thread can see halfway: a placeholder, registered first, is moved over the range with one
    /// mremap(2), so a touch at any moment finds either the old page or a page that faults to
    /// the service. The move waits until a fault-service thread has read the REMAP event it
    /// raises: never call it from the thread that reads the events.
    pub fn reset(&self, off: u64, len: u64) -> Result<()> {
        let addr = self.check(off, len)?;
        #[cfg(feature = "model")]
        if crate::model::planted(crate::model::Plant::TwoStepReset) {
            // The window this protocol closes: fresh memory first, registered afterwards.
            // SAFETY: `check` proved the range lies inside this region, which owns it.
            unsafe { kernel::map_anon_at(addr, len, self.prot) }.map_err(|e| Error::io("reset mapping", e))?;
            // SAFETY: as above.
            return unsafe { self.uffd.register_unrecorded(addr, len, self.mode) };
        }
        if self.uffd.features & FEATURE_EVENT_REMAP == 0 {
            return Err(Error::Unsupported("resetting a mapping needs UFFD_FEATURE_EVENT_REMAP".into()));
        }
        let p = Placeholder::new(len, self.prot)?;
        // SAFETY: the placeholder's fresh mapping, which nothing else knows of.
        unsafe { self.uffd.register_unrecorded(p.start, p.len, self.mode) }?;
        // SAFETY: `check` proved the target lies inside this region, which owns it.
        unsafe { p.move_to(addr) }
    }

    /// Takes every page out of the region for good (the mapping is going away): inaccessible
    /// memory replaces it, so no device page stays mapped once the blocks behind it may be freed.
    pub fn detach(&self) -> Result<()> {
        // SAFETY: the region's own range, which it owns until drop.
        unsafe { kernel::map_anon_at(self.start, self.len, libc::PROT_NONE) }
            .map_err(|e| Error::io("detach mapping", e))
    }

    /// Installs the shared zero page over `[off, off+len)`.
    pub fn zeropage(&self, off: u64, len: u64, wake: bool) -> Result<()> {
        self.uffd.zeropage(self.check(off, len)?, len, wake)
    }

    /// Installs a copy of `src` at `off`.
    pub fn copy(&self, off: u64, src: &[u8], wake: bool, write_protect: bool) -> Result<()> {
        self.uffd.copy(self.check(off, src.len() as u64)?, src, wake, write_protect)
    }

    #[cfg_attr(not(feature = "model"), allow(dead_code))]
    pub fn writeprotect(&self, off: u64, len: u64, protect: bool, wake: bool) -> Result<()> {
        self.uffd.writeprotect(self.check(off, len)?, len, protect, wake)
    }

    pub fn wake(&self, off: u64, len: u64) -> Result<()> {
        self.uffd.wake(self.check(off, len)?, len)
    }

    pub fn poison(&self, off: u64, len: u64, wake: bool) -> Result<()> {
        self.uffd.poison(self.check(off, len)?, len, wake)
    }

    /// Copies mapped bytes at `off` into `buf`. Touching pages may fault (the fault service
    /// resolves them); a page past EOF raises SIGBUS, as a load would.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let addr = self.bytes(off, buf.len() as u64, false)?;
        // SAFETY: the range lies inside the region (checked above), which stays mapped while
        // `self` lives.
        unsafe { kernel::load(addr, buf) }.map_err(access_err)
    }

    /// Stores `data` at `off` through the mapping (see [`Region::read`] for faults).
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        let addr = self.bytes(off, data.len() as u64, true)?;
        // SAFETY: as in `read`; the range is writable memory of this region (PROT_WRITE checked).
        unsafe { kernel::store(addr, data) }.map_err(access_err)
    }

    /// Fills `[off, off+len)` with `byte` through the mapping.
    pub fn fill(&self, off: u64, len: u64, byte: u8) -> Result<()> {
        let addr = self.bytes(off, len, true)?;
        // SAFETY: as in `write`.
        unsafe { kernel::fill(addr, len, byte) }.map_err(access_err)
    }

    /// Whether a load of the byte at `off` succeeds, found without raising a signal (a poisoned
    /// page, at or past EOF, would raise SIGBUS). A fault the probe takes is served like any
    /// other.
    pub fn loadable(&self, off: u64) -> Result<bool> {
        let addr = self.bytes(off, 1, false)?;
        // SAFETY: the byte lies inside the region (checked above), which stays mapped while
        // `self` lives.
        unsafe { kernel::probe(addr) }.map_err(|e| Error::io("probe mapping", e))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        REGIONS.write().unwrap_or_else(|e| e.into_inner()).remove(&self.start);
        LIVE_REGIONS.fetch_sub(1, Ordering::Release);
        self.uffd.forget(self.start, self.len);
        // SAFETY: the region's own range, reserved in `new`; nothing refers to it any more.
        unsafe { kernel::unmap(self.start, self.len) };
    }
}

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
