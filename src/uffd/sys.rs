//! The kernel behind [`super::Uffd`] and [`super::Region`]: the userfaultfd calls and the memory
//! mapping calls, one thin function each. Built with the `model` feature, `sim` stands in with
//! the same functions.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::dirty::{PageRegion, PmScanArg, PAGE_IS_WRITTEN};
use super::{Ioctl, UffdMsg, UffdioApi, UffdioCopy, UffdioPoison, UffdioRange, UffdioRegister};
use super::{UffdioWriteprotect, UffdioZeropage};

/// A userfaultfd.
pub(super) type Fd = OwnedFd;

const UFFDIO: u64 = 0xAA;

const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}

const UFFDIO_API: u64 = iowr(0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u64 = ior(0x01, std::mem::size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ior(0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = iowr(0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = iowr(0x04, std::mem::size_of::<UffdioZeropage>());
const UFFDIO_WRITEPROTECT: u64 = iowr(0x06, std::mem::size_of::<UffdioWriteprotect>());
const UFFDIO_POISON: u64 = iowr(0x08, std::mem::size_of::<UffdioPoison>());

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// userfaultfd(2) flag: deliver only faults raised in user mode. An unprivileged process may
/// ask for no more while vm.unprivileged_userfaultfd is 0 (the default).
const UFFD_USER_MODE_ONLY: libc::c_int = 1;

/// Opens a userfaultfd: close-on-exec, non-blocking reads. Where the process may not handle
/// faults raised in the kernel (EPERM: no CAP_SYS_PTRACE, vm.unprivileged_userfaultfd 0), one
/// for user-mode faults only; the flag says which it got.
pub(super) fn open() -> io::Result<(OwnedFd, bool)> {
    let open = |flags: libc::c_int| {
        // SAFETY: userfaultfd(2) takes only flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    };
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    match open(flags) {
        Ok(fd) => Ok((fd, false)),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok((open(flags | UFFD_USER_MODE_ONLY)?, true)),
        Err(e) => Err(e),
    }
}

/// One userfaultfd ioctl.
///
/// # Safety
/// Every range the request names must be memory the caller owns: registered with `fd` (or, for
/// `Register`, a reservation of the caller's that it keeps mapped while registered).
pub(super) unsafe fn ioctl(fd: &OwnedFd, op: Ioctl<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: each request reads and writes exactly the one struct of its kind passed with it;
    // the memory it changes is the caller's (this function's contract). A copy's source is the
    // live slice the request carries, which the kernel only reads.
    let rc = unsafe {
        match op {
            Ioctl::Api(a) => libc::ioctl(fd, UFFDIO_API as _, a),
            Ioctl::Register(r) => libc::ioctl(fd, UFFDIO_REGISTER as _, r),
            Ioctl::Unregister(r) => libc::ioctl(fd, UFFDIO_UNREGISTER as _, r),
            Ioctl::Wake(r) => libc::ioctl(fd, UFFDIO_WAKE as _, r),
            Ioctl::Copy(c, _src) => libc::ioctl(fd, UFFDIO_COPY as _, c),
            Ioctl::Zeropage(z) => libc::ioctl(fd, UFFDIO_ZEROPAGE as _, z),
            Ioctl::Writeprotect(w) => libc::ioctl(fd, UFFDIO_WRITEPROTECT as _, w),
            Ioctl::Poison(p) => libc::ioctl(fd, UFFDIO_POISON as _, p),
        }
    };
    check(rc)
}

/// Waits up to `timeout_ms` (-1: forever) for the next message; `None` on timeout.
pub(super) fn next_msg(fd: &OwnedFd, timeout_ms: i32) -> io::Result<Option<UffdMsg>> {
    loop {
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll(2) reads and writes exactly the one `pollfd` passed.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(None);
        }
        let mut msg = UffdMsg::default();
        let len = std::mem::size_of::<UffdMsg>();
        // SAFETY: `msg` is a live, writable buffer of `len` bytes.
        let got = unsafe { libc::read(fd.as_raw_fd(), (&mut msg as *mut UffdMsg).cast(), len) };
        if got < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        if got as usize != len {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        return Ok(Some(msg));
    }
}

/// /proc/self/pagemap, for PAGEMAP_SCAN.
pub(super) type Pagemap = OwnedFd;

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

/// Opens /proc/self/pagemap (close-on-exec).
pub(super) fn open_pagemap() -> io::Result<Pagemap> {
    Ok(std::fs::File::open("/proc/self/pagemap")?.into())
}

/// One PAGEMAP_SCAN call over `[start, end)` for the pages stored to since they were last
/// write-protected (`PAGE_IS_WRITTEN`), with `flags` (`PM_SCAN_*`): fills `out` from the front;
/// returns how many runs it filled and where the walk stopped (`end` unless `out` filled up).
///
/// # Safety
/// `[start, end)` must be memory the caller owns: with `PM_SCAN_WP_MATCHING` the pages reported
/// there are write-protected again (only where a write-protect-async userfaultfd tracks them).
pub(super) unsafe fn pagemap_scan(
    pagemap: &Pagemap,
    start: u64,
    end: u64,
    out: &mut [PageRegion],
    flags: u64,
) -> io::Result<(usize, u64)> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags,
        start,
        end,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..Default::default()
    };
    // SAFETY: the kernel reads and writes `arg` and writes at most `vec_len` runs into `out`,
    // which `vec` points at and which lives for the call; the pages whose protection changes
    // are the caller's (this function's contract).
    let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(((n as usize).min(out.len()), arg.walk_end))
}

/// Nothing to do: readers wait with a timeout and look at their stop flag then.
pub(super) fn interrupt(_fd: &OwnedFd) {}

const ANON: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Maps `len` bytes of fresh anonymous memory wherever the kernel likes.
pub(super) fn map_anon(len: u64, prot: i32) -> io::Result<u64> {
    // SAFETY: a fresh anonymous mapping with no address hint; the result is checked below.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len as usize, prot, ANON, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as u64)
}

/// Replaces `[addr, addr+len)` with fresh anonymous memory (unregistered).
///
/// # Safety
/// The range must be memory the caller owns; whatever was mapped there is gone.
pub(super) unsafe fn map_anon_at(addr: u64, len: u64, prot: i32) -> io::Result<()> {
    // SAFETY: the caller owns the range (this function's contract); MAP_FIXED replaces it.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len as usize, prot, ANON | libc::MAP_FIXED, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Maps `[off, off+len)` of the file `fd` over `[addr, addr+len)`, shared or private, with the
/// page tables filled at once when `populate`.
///
/// # Safety
/// As [`map_anon_at`].
pub(super) unsafe fn map_file_at(
    addr: u64,
    len: u64,
    prot: i32,
    shared: bool,
    populate: bool,
    fd: BorrowedFd<'_>,
    off: u64,
) -> io::Result<()> {
    let share = if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
    let flags = libc::MAP_FIXED | share | if populate { libc::MAP_POPULATE } else { 0 };
    // SAFETY: the caller owns the range (this function's contract); MAP_FIXED replaces it.
    let p =
        unsafe { libc::mmap(addr as *mut libc::c_void, len as usize, prot, flags, fd.as_raw_fd(), off as libc::off_t) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmaps `[addr, addr+len)`.
///
/// # Safety
/// As [`map_anon_at`]; nothing may touch the range afterwards.
pub(super) unsafe fn unmap(addr: u64, len: u64) {
    // SAFETY: the caller owns the range and gives it up (this function's contract).
    unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
}

/// Asks for small pages only in `[addr, addr+len)`: a huge anonymous page would make a fault
/// cover more than the page it resolves.
///
/// # Safety
/// As [`map_anon_at`].
pub(super) unsafe fn no_huge_pages(addr: u64, len: u64) {
    // SAFETY: advice on the caller's own range (this function's contract).
    unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_NOHUGEPAGE) };
}

/// Moves the mapping `[from, from+len)` over `[to, to+len)` in one step (mremap with
/// MREMAP_FIXED): whatever was mapped at `to` is gone.
///
/// # Safety
/// Both ranges must be memory the caller owns; the source is one whole mapping.
pub(super) unsafe fn move_to(from: u64, len: u64, to: u64) -> io::Result<()> {
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    // SAFETY: both ranges are the caller's (this function's contract); the move is atomic.
    let q =
        unsafe { libc::mremap(from as *mut libc::c_void, len as usize, len as usize, flags, to as *mut libc::c_void) };
    if q == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies `buf.len()` mapped bytes at `addr` into `buf` (may fault; SIGBUS on a poisoned page).
///
/// # Safety
/// `[addr, addr+buf.len())` must stay mapped for the call.
pub(super) unsafe fn load(addr: u64, buf: &mut [u8]) -> io::Result<()> {
    // SAFETY: the range stays mapped (this function's contract); a byte copy forms no reference
    // to memory that other mappings may change.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
    Ok(())
}

/// Stores `data` at `addr` (see [`load`]).
///
/// # Safety
/// As [`load`], and the range must be writable.
pub(super) unsafe fn store(addr: u64, data: &[u8]) -> io::Result<()> {
    // SAFETY: as in `load`; writable (this function's contract).
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) };
    Ok(())
}

/// Stores `len` copies of `byte` at `addr`.
///
/// # Safety
/// As [`store`].
pub(super) unsafe fn fill(addr: u64, len: u64, byte: u8) -> io::Result<()> {
    // SAFETY: as in `store`.
    unsafe { std::ptr::write_bytes(addr as *mut u8, byte, len as usize) };
    Ok(())
}

/// Whether a load of the byte at `addr` succeeds, found without raising a signal: the kernel
/// copies the byte into a pipe, and a poisoned page fails that copy with EFAULT where a load
/// would raise SIGBUS. A fault the copy takes is served like any other.
///
/// # Safety
/// As [`load`].
pub(super) unsafe fn probe(addr: u64) -> io::Result<bool> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two new descriptors into `fds` (two ints) or fails.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just returned by pipe2 and are owned by nothing else.
    let (_r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the byte stays mapped (this function's contract); write(2) only reads it and
    // reports an unreadable page as EFAULT.
    let n = unsafe { libc::write(w.as_raw_fd(), addr as *const libc::c_void, 1) };
    match n {
        1 => Ok(true),
        _ if io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT) => Ok(false),
        _ => Err(io::Error::last_os_error()),
    }
}
