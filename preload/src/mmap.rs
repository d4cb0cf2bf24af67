//! The mapping calls of `libudax_preload.so` (DESIGN.md "Mappings served from the image"). A
//! mapping of a udax file is made from the image itself when [`maps::prepare`] finds that it
//! can be: loads and stores then reach the file's blocks with no request and no fault. Else the
//! kernel maps it through its page cache, which direct calls would bypass, so the file's later
//! calls go through the mount. munmap, mremap, msync and fsync keep the regions' records and
//! make their stores durable.

use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicUsize;

use libc::{c_int, c_void, off64_t, off_t, size_t};

use crate::entry::{inside, library, next, real, set_errno};
use crate::maps::{self, Prepared, PAGE};
use crate::{fds, serve};

/// mmap(2).
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    // SAFETY: the caller's arguments, under mmap(2)'s contract.
    unsafe { map(addr, len, prot, flags, fd, off) }
}

/// mmap64, as [`mmap`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off64_t,
) -> *mut c_void {
    // SAFETY: the caller's arguments, under mmap(2)'s contract.
    unsafe { map(addr, len, prot, flags, fd, off) }
}

/// Maps from the image when it can, else through the kernel.
///
/// # Safety
/// mmap(2)'s contract.
unsafe fn map(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
    if fd >= 0 && flags & libc::MAP_ANONYMOUS == 0 {
        let served = inside(|| {
            let p = maps::prepare(fd, len, prot, flags, off)?;
            // SAFETY: the caller asked for a mapping of `len` bytes at `addr` under these flags
            // (MAP_FIXED: it gives up what is there); `p` came from `prepare` for exactly that.
            Some(unsafe { from_image(p, addr as usize, prot, flags) })
        });
        match served {
            Some(Ok(at)) => return at as *mut c_void,
            Some(Err(Some(e))) => {
                set_errno(e);
                return libc::MAP_FAILED;
            }
            // Mapped nothing: the kernel maps it.
            Some(Err(None)) | None => kernel_maps(fd),
        }
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    let at = unsafe { real_mmap(addr, len, prot, flags, fd, off) };
    if at != libc::MAP_FAILED && flags & libc::MAP_FIXED != 0 {
        forget(at as usize, len);
    }
    at
}

/// Maps `p` from the image: a reservation of the whole range (where the caller asked), each
/// piece mapped over it, and, for a new pin, the guard page that holds its open file. The
/// address, or the errno the reservation failed with (`Some`), or `None` when a later step
/// failed and nothing is left mapped: the kernel maps it then.
///
/// # Safety
/// A mapping of `p.span` bytes at `addr` with `flags` must be the caller's to make, as in an
/// mmap(2) call it made.
unsafe fn from_image(p: Prepared, addr: usize, prot: c_int, flags: c_int) -> Result<usize, Option<c_int>> {
    let failed = |p: &Prepared, e| {
        if p.pin.is_none() {
            maps::drop_user(p.guard);
        }
        Err(e)
    };
    let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE);
    let reserve = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | fixed;
    // SAFETY: the caller's own request, with its address and fixed flags (the caller's contract).
    let base = match unsafe { raw_mmap(addr, p.span, libc::PROT_NONE, reserve, -1, 0) } {
        Ok(b) => b,
        Err(e) => return failed(&p, Some(e)),
    };
    if fixed & libc::MAP_FIXED != 0 {
        forget(base, p.span);
    }
    let kind = flags & (libc::MAP_SHARED | libc::MAP_PRIVATE);
    let piece_flags = kind | libc::MAP_FIXED | libc::MAP_POPULATE | (flags & libc::MAP_NORESERVE);
    let mut made = p.pieces.iter().all(|x| {
        let at = base + (x.file - p.off) as usize;
        // SAFETY: `[at, at + x.len)` lies inside the reservation just made (the pieces lie in
        // `[p.off, p.off + p.span)`, in file order), which nothing else uses.
        unsafe { raw_mmap(at, x.len as usize, prot, piece_flags, p.image.as_raw_fd(), x.dev) }.is_ok()
    });
    let zero_flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | (flags & libc::MAP_NORESERVE);
    made = made
        && p.gaps.iter().all(|&(file, len)| {
            // SAFETY: `[at, at + len)` lies inside the reservation just made (the gaps lie in
            // `[p.off, p.off + p.span)`, between the pieces), which nothing else uses.
            unsafe { raw_mmap(base + (file - p.off) as usize, len as usize, prot, zero_flags, -1, 0) }.is_ok()
        });
    let mut guard = p.guard;
    if let (true, Some(pin)) = (made, &p.pin) {
        // SAFETY: a fresh mapping wherever the kernel puts it (no MAP_FIXED).
        match unsafe { raw_mmap(0, PAGE, libc::PROT_NONE, libc::MAP_PRIVATE, pin.as_raw_fd(), 0) } {
            Ok(g) => guard = g,
            Err(_) => made = false,
        }
    }
    if !made {
        // SAFETY: the reservation is this call's own.
        unsafe { raw_munmap(base, p.span) };
        return failed(&p, None);
    }
    maps::mapped(p, base, guard);
    Ok(base)
}

/// `[addr, addr + len)` no longer maps what it did: the records of regions mapped from the
/// image there are updated, and the guard pages of those wholly gone unmapped.
fn forget(addr: usize, len: usize) {
    for guard in inside(|| Some(maps::unmapped(addr, len))).unwrap_or_default() {
        // SAFETY: a guard page is this library's own mapping, which the program never saw.
        unsafe { raw_munmap(guard, PAGE) };
    }
}

/// A file is about to be mapped through the kernel: its later calls go through the mount.
fn kernel_maps(fd: c_int) {
    let _ = library(|| {
        fds::mapped_by_kernel(fd);
        None::<i8>
    });
}

/// libc's mmap (MAP_FAILED and ENOSYS if it has none).
///
/// # Safety
/// mmap(2)'s contract.
unsafe fn real_mmap(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let p = next(&SLOT, c"mmap");
    if p == 0 {
        set_errno(libc::ENOSYS);
        return libc::MAP_FAILED;
    }
    // SAFETY: `p` is libc's mmap, whose C signature this is.
    let f = unsafe {
        std::mem::transmute::<usize, unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void>(
            p,
        )
    };
    // SAFETY: the caller's arguments, under mmap(2)'s contract.
    unsafe { f(addr, len, prot, flags, fd, off) }
}

/// The mmap system call itself (no wrapper of this library's on the way): the address, or the
/// errno.
///
/// # Safety
/// mmap(2)'s contract.
unsafe fn raw_mmap(addr: usize, len: usize, prot: c_int, flags: c_int, fd: c_int, off: u64) -> Result<usize, c_int> {
    // SAFETY: the caller's arguments, under mmap(2)'s contract.
    let r = unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) };
    if r < 0 {
        // SAFETY: errno of the calling thread, just set by the failed call.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(r as usize)
    }
}

/// The munmap system call itself.
///
/// # Safety
/// The range must be the caller's to unmap.
unsafe fn raw_munmap(addr: usize, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { libc::syscall(libc::SYS_munmap, addr, len) };
}

/// munmap(2): also forgets the regions mapped from the image there.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    let rc = real!(munmap(addr => *mut c_void, len => size_t) -> c_int);
    if rc == 0 && maps::any() {
        forget(addr as usize, len);
    }
    rc
}

/// mremap(2). A region mapped from the image may shrink in place; growing or moving one would
/// map image bytes that are not the file's, so it fails with ENOMEM (as when no room is left),
/// and callers map again.
///
/// # Safety
/// libc's contract for this function (`new_addr` is read only with MREMAP_FIXED, when the
/// caller passed it).
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let ours = maps::any() && inside(|| Some(maps::overlaps(old as usize, old_len))).unwrap_or(false);
    if ours && (new_len > old_len || flags & (libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP) != 0) {
        serve::trace(format_args!("mremap({old_len} to {new_len}) of a mapping from the image: ENOMEM"));
        set_errno(libc::ENOMEM);
        return libc::MAP_FAILED;
    }
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let p = next(&SLOT, c"mremap");
    if p == 0 {
        set_errno(libc::ENOSYS);
        return libc::MAP_FAILED;
    }
    type Mremap = unsafe extern "C" fn(*mut c_void, size_t, size_t, c_int, *mut c_void) -> *mut c_void;
    // SAFETY: `p` is libc's mremap, called with the five arguments it reads at most.
    let at = unsafe { std::mem::transmute::<usize, Mremap>(p)(old, old_len, new_len, flags, new_addr) };
    if at != libc::MAP_FAILED {
        if ours && new_len < old_len {
            forget(old as usize + new_len, old_len - new_len);
        } else if flags & libc::MREMAP_FIXED != 0 && maps::any() {
            forget(at as usize, new_len);
        }
    }
    at
}

/// msync(2): stores into a region mapped from the image are written back to the medium first.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn msync(addr: *mut c_void, len: size_t, flags: c_int) -> c_int {
    if maps::any() {
        inside(|| {
            maps::flush(addr as usize, len);
            None::<()>
        });
    }
    real!(msync(addr => *mut c_void, len => size_t, flags => c_int) -> c_int)
}

/// fsync(2): stores into this process's regions of the file mapped from the image are written
/// back to the medium first.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    flush_file(fd);
    real!(fsync(fd => c_int) -> c_int)
}

/// fdatasync(2), as [`fsync`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    flush_file(fd);
    real!(fdatasync(fd => c_int) -> c_int)
}

fn flush_file(fd: c_int) {
    if maps::any() {
        inside(|| {
            maps::flush_file(fd);
            None::<()>
        });
    }
}
