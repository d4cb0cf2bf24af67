//! `syscall(2)`: programs and runtimes that make the calls this library wraps through libc's
//! generic `syscall()` (by number) reach the same wrappers; every other number goes to libc.
//! Calls made with the `syscall` instruction itself are never seen (README, "what does not
//! work").

use std::sync::atomic::AtomicUsize;

use libc::{c_char, c_int, c_long, c_uint, c_void, iovec, loff_t, off_t, size_t};

use crate::entry::{self, next, set_errno};
use crate::mmap;

/// syscall(2). Declared with the six argument registers a system call takes at most: on x86-64
/// a variadic call passes its integer arguments in exactly these registers, and the ones a
/// number does not take are never read as meaningful.
///
/// # Safety
/// libc's contract for this function: the arguments are the system call's.
#[no_mangle]
pub unsafe extern "C" fn syscall(
    n: c_long,
    a: c_long,
    b: c_long,
    c: c_long,
    d: c_long,
    e: c_long,
    f: c_long,
) -> c_long {
    // SAFETY: each arm passes the caller's arguments, as the system call numbered `n` takes
    // them, to the wrapper of the libc function that makes that call (same contract).
    unsafe {
        match n {
            libc::SYS_read => entry::read(a as c_int, b as *mut c_void, c as size_t) as c_long,
            libc::SYS_write => entry::write(a as c_int, b as *const c_void, c as size_t) as c_long,
            libc::SYS_pread64 => entry::pread(a as c_int, b as *mut c_void, c as size_t, d as off_t) as c_long,
            libc::SYS_pwrite64 => entry::pwrite(a as c_int, b as *const c_void, c as size_t, d as off_t) as c_long,
            libc::SYS_readv => entry::readv(a as c_int, b as *const iovec, c as c_int) as c_long,
            libc::SYS_writev => entry::writev(a as c_int, b as *const iovec, c as c_int) as c_long,
            // The offset's low word is the whole of it on a 64-bit kernel.
            libc::SYS_preadv => entry::preadv(a as c_int, b as *const iovec, c as c_int, d as off_t) as c_long,
            libc::SYS_pwritev => entry::pwritev(a as c_int, b as *const iovec, c as c_int, d as off_t) as c_long,
            libc::SYS_preadv2 => {
                entry::preadv2(a as c_int, b as *const iovec, c as c_int, d as off_t, f as c_int) as c_long
            }
            libc::SYS_pwritev2 => {
                entry::pwritev2(a as c_int, b as *const iovec, c as c_int, d as off_t, f as c_int) as c_long
            }
            libc::SYS_open => entry::open(a as *const c_char, b as c_int, c as libc::mode_t) as c_long,
            libc::SYS_openat => entry::openat(a as c_int, b as *const c_char, c as c_int, d as libc::mode_t) as c_long,
            libc::SYS_close => entry::close(a as c_int) as c_long,
            libc::SYS_close_range => entry::close_range(a as c_uint, b as c_uint, c as c_int) as c_long,
            libc::SYS_dup => entry::dup(a as c_int) as c_long,
            libc::SYS_dup2 => entry::dup2(a as c_int, b as c_int) as c_long,
            libc::SYS_dup3 => entry::dup3(a as c_int, b as c_int, c as c_int) as c_long,
            libc::SYS_fcntl => entry::fcntl(a as c_int, b as c_int, c as libc::c_ulong) as c_long,
            libc::SYS_sendfile => entry::sendfile(a as c_int, b as c_int, c as *mut off_t, d as size_t) as c_long,
            libc::SYS_copy_file_range => entry::copy_file_range(
                a as c_int,
                b as *mut loff_t,
                c as c_int,
                d as *mut loff_t,
                e as size_t,
                f as libc::c_uint,
            ) as c_long,
            libc::SYS_mmap => {
                mmap::mmap(a as *mut c_void, b as size_t, c as c_int, d as c_int, e as c_int, f as off_t) as c_long
            }
            libc::SYS_munmap => mmap::munmap(a as *mut c_void, b as size_t) as c_long,
            libc::SYS_mremap => {
                mmap::mremap(a as *mut c_void, b as size_t, c as size_t, d as c_int, e as *mut c_void) as c_long
            }
            libc::SYS_msync => mmap::msync(a as *mut c_void, b as size_t, c as c_int) as c_long,
            libc::SYS_fsync => mmap::fsync(a as c_int) as c_long,
            libc::SYS_fdatasync => mmap::fdatasync(a as c_int) as c_long,
            libc::SYS_vfork => entry::vfork() as c_long,
            _ => real_syscall(n, a, b, c, d, e, f),
        }
    }
}

/// libc's syscall (ENOSYS and -1 if it has none).
///
/// # Safety
/// syscall(2)'s contract.
unsafe fn real_syscall(n: c_long, a: c_long, b: c_long, c: c_long, d: c_long, e: c_long, f: c_long) -> c_long {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let p = next(&SLOT, c"syscall");
    if p == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    type Syscall = unsafe extern "C" fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long;
    // SAFETY: `p` is libc's syscall, which reads the number and at most six arguments; the
    // caller's arguments, passed on unchanged.
    unsafe { std::mem::transmute::<usize, Syscall>(p)(n, a, b, c, d, e, f) }
}
