//! The C entry points of `libudax_preload.so` (DESIGN.md "Direct access"): each wraps libc's
//! function of the same name. A call on a file of a udax mount is served directly when it can
//! be; everything else, and every call made while the library itself is running (its own file
//! opens and reads), goes to libc unchanged. No panic crosses into C: a panic sets EIO and
//! returns -1.

use std::cell::Cell;
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int, c_uint, c_ulong, c_void, iovec, loff_t, mode_t, off64_t, off_t, size_t, ssize_t, FILE};

use crate::{fds, maps, serve};

/// Runs when the library is loaded: a fork holds the descriptor table across it, and the child
/// starts from a table no other thread can be holding and claims writer slots of its own.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

extern "C" fn on_load() {
    extern "C" fn prepare() {
        fds::before_fork();
        maps::before_fork();
    }
    extern "C" fn parent() {
        maps::after_fork();
        fds::after_fork_in_parent();
    }
    extern "C" fn child() {
        udax_direct::forked();
        maps::after_fork();
        fds::after_fork_in_child();
    }
    // SAFETY: registers three handlers. The child's adds to an atomic counter and puts a fresh,
    // empty table in place of the old one without freeing anything of it (glibc's malloc is
    // usable in the child of a fork; nothing else runs there before the handler returns).
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// vfork(2) is served as fork(2), which POSIX allows. A vfork child shares its parent's memory
/// until it execs, and runs no fork handler: its dup2s and closes (Python's subprocess redirects
/// that way) would change the parent's descriptor table, so that the parent's own descriptors
/// were then served from a udax file they do not name. A fork child has a table of its own.
///
/// # Safety
/// libc's contract for fork (which a vfork caller's contract is narrower than).
#[no_mangle]
pub unsafe extern "C" fn vfork() -> libc::pid_t {
    real!(fork() -> libc::pid_t)
}

thread_local! {
    /// Set while this thread runs the library's own code.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// The library's code is running on this thread until it drops.
struct Inside;

impl Inside {
    /// `None` when the library is already running on this thread (its own calls go to libc).
    fn enter() -> Option<Inside> {
        INSIDE.with(|i| (!i.replace(true)).then(|| Inside))
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        INSIDE.with(|i| i.set(false));
    }
}

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns the calling thread's errno, valid for the thread's life.
    unsafe { *libc::__errno_location() = e };
}

/// The address of the next definition of `name` after this library's (libc's), looked up once.
pub(crate) fn next(slot: &AtomicUsize, name: &CStr) -> usize {
    let p = slot.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: dlsym reads the NUL-terminated name; RTLD_NEXT searches the objects after this one.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    slot.store(p, Ordering::Relaxed);
    p
}

/// Calls libc's `name` with the given arguments (ENOSYS and -1 if it has none).
macro_rules! real {
    ($name:ident($($arg:expr => $ty:ty),* $(,)?) -> $ret:ty) => {{
        static SLOT: AtomicUsize = AtomicUsize::new(0);
        let name = concat!(stringify!($name), "\0");
        let p = CStr::from_bytes_with_nul(name.as_bytes()).map_or(0, |n| next(&SLOT, n));
        if p == 0 {
            set_errno(libc::ENOSYS);
            -1 as $ret
        } else {
            // SAFETY: `p` is libc's definition of this very function, whose C signature is the
            // one spelled here.
            let f = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($ty),*) -> $ret>(p) };
            // SAFETY: the arguments are the caller's, passed on unchanged, under the same
            // contract the caller made with libc.
            unsafe { f($($arg),*) }
        }
    }};
}

pub(crate) use real;

/// Runs the library's part of a call that has no errno to report: `None` (the caller then
/// makes the real call) when the library is already running on this thread or panics.
pub(crate) fn inside<R>(f: impl FnOnce() -> Option<R>) -> Option<R> {
    let _inside = Inside::enter()?;
    catch_unwind(AssertUnwindSafe(f)).ok().flatten()
}

/// Runs the library's part of a call: `None` (the caller then makes the real call) when the
/// library is already running on this thread; a panic sets EIO and returns `Some(-1)`.
pub(crate) fn library<R: From<i8>>(f: impl FnOnce() -> Option<R>) -> Option<R> {
    let _inside = Inside::enter()?;
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            set_errno(libc::EIO);
            Some(R::from(-1))
        }
    }
}

/// Notes a descriptor an open call returned.
fn opened(fd: c_int, flags: c_int) -> c_int {
    if fd >= 0 {
        let _ = library(|| {
            if flags & libc::O_PATH != 0 {
                fds::closed(fd);
            } else {
                fds::classify(fd);
            }
            None::<i8>
        });
    }
    fd
}

/// The caller's buffer as a slice.
///
/// # Safety
/// `buf` is valid for writes of `len` bytes for the duration of the call (read(2)'s contract).
unsafe fn out<'a>(buf: *mut c_void, len: size_t) -> &'a mut [u8] {
    if len == 0 || buf.is_null() {
        return &mut [];
    }
    // SAFETY: the caller's contract, above.
    unsafe { std::slice::from_raw_parts_mut(buf.cast(), len) }
}

/// The caller's iovecs as slices.
///
/// # Safety
/// `iov` points to `n` iovecs, each valid for writes of its length (readv(2)'s contract).
unsafe fn outs<'a>(iov: *const iovec, n: c_int) -> Option<Vec<&'a mut [u8]>> {
    if n < 0 || (n > 0 && iov.is_null()) {
        return None;
    }
    // SAFETY: the caller's contract, above.
    let v = unsafe { std::slice::from_raw_parts(iov, n as usize) };
    // SAFETY: as above, each iovec's buffer.
    Some(v.iter().map(|i| unsafe { out(i.iov_base, i.iov_len) }).collect())
}

/// Serves a read or write at the descriptor's position, moving it on by what was done.
fn at_position(fd: c_int, serve: impl FnOnce(u64) -> Option<usize>) -> Option<ssize_t> {
    fds::lookup(fd)?;
    let here = real!(lseek(fd => c_int, 0 => off_t, libc::SEEK_CUR => c_int) -> off_t);
    let here = u64::try_from(here).ok()?;
    let n = serve(here)?;
    real!(lseek(fd => c_int, (here + n as u64) as off_t => off_t, libc::SEEK_SET => c_int) -> off_t);
    Some(n as ssize_t)
}

macro_rules! open_call {
    ($name:ident($($arg:ident: $ty:ty),*) flags $flags:ident) => {
        /// libc's function of this name; a descriptor of a udax file is noted.
        ///
        /// # Safety
        /// libc's contract for this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
            opened(real!($name($($arg => $ty),*) -> c_int), $flags)
        }
    };
}

open_call!(open(path: *const c_char, flags: c_int, mode: mode_t) flags flags);
open_call!(open64(path: *const c_char, flags: c_int, mode: mode_t) flags flags);
open_call!(openat(dir: c_int, path: *const c_char, flags: c_int, mode: mode_t) flags flags);
open_call!(openat64(dir: c_int, path: *const c_char, flags: c_int, mode: mode_t) flags flags);
open_call!(__open_2(path: *const c_char, flags: c_int) flags flags);
open_call!(__open64_2(path: *const c_char, flags: c_int) flags flags);
open_call!(__openat_2(dir: c_int, path: *const c_char, flags: c_int) flags flags);
open_call!(__openat64_2(dir: c_int, path: *const c_char, flags: c_int) flags flags);

/// creat(2): a new, empty file (every write grows it, which the mount serves); noted.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn creat(path: *const c_char, mode: mode_t) -> c_int {
    opened(real!(creat(path => *const c_char, mode => mode_t) -> c_int), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)
}

/// creat64(2), as [`creat`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn creat64(path: *const c_char, mode: mode_t) -> c_int {
    opened(
        real!(creat64(path => *const c_char, mode => mode_t) -> c_int),
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
    )
}

/// close(2); the descriptor is forgotten (Linux frees it even when close fails).
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let r = real!(close(fd => c_int) -> c_int);
    let _ = library(|| {
        fds::closed(fd);
        None::<i8>
    });
    r
}

/// close_range(2); the closed descriptors are forgotten.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let r = real!(close_range(first => c_uint, last => c_uint, flags => c_int) -> c_int);
    if r == 0 && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        let _ = library(|| {
            fds::closed_range(first, last);
            None::<i8>
        });
    }
    r
}

/// fclose(3): stdio closes its descriptor inside libc, where `close` is not seen.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn fclose(stream: *mut FILE) -> c_int {
    let fd = if stream.is_null() { -1 } else { real!(fileno(stream => *mut FILE) -> c_int) };
    let r = real!(fclose(stream => *mut FILE) -> c_int);
    if fd >= 0 {
        let _ = library(|| {
            fds::closed(fd);
            None::<i8>
        });
    }
    r
}

/// freopen(3) and freopen64: stdio opens the new file and moves it onto the stream's old
/// descriptor inside libc, where neither call is seen, so the number is forgotten and classified
/// again on its next call.
macro_rules! freopen_call {
    ($name:ident) => {
        /// libc's function of this name; the stream's descriptor is classified again.
        ///
        /// # Safety
        /// libc's contract for this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char, stream: *mut FILE) -> *mut FILE {
            static SLOT: AtomicUsize = AtomicUsize::new(0);
            let p = next(&SLOT, CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()).unwrap_or(c""));
            if p == 0 {
                set_errno(libc::ENOSYS);
                return std::ptr::null_mut();
            }
            type Freopen = unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE;
            let fd = if stream.is_null() { -1 } else { real!(fileno(stream => *mut FILE) -> c_int) };
            // SAFETY: `p` is libc's function of this name, with this C signature; the caller's
            // arguments, passed on unchanged.
            let r = unsafe { std::mem::transmute::<usize, Freopen>(p)(path, mode, stream) };
            if fd >= 0 {
                let _ = library(|| {
                    fds::closed(fd);
                    None::<i8>
                });
            }
            r
        }
    };
}

freopen_call!(freopen);
freopen_call!(freopen64);

fn duplicated(from: c_int, to: c_int) -> c_int {
    if to >= 0 {
        let _ = library(|| {
            fds::duplicated(from, to);
            None::<i8>
        });
    }
    to
}

/// dup(2); the copy names the same file.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    duplicated(fd, real!(dup(fd => c_int) -> c_int))
}

/// dup2(2), as [`dup`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn dup2(fd: c_int, to: c_int) -> c_int {
    duplicated(fd, real!(dup2(fd => c_int, to => c_int) -> c_int))
}

/// dup3(2), as [`dup`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn dup3(fd: c_int, to: c_int, flags: c_int) -> c_int {
    duplicated(fd, real!(dup3(fd => c_int, to => c_int, flags => c_int) -> c_int))
}

/// fcntl(2): F_DUPFD and F_DUPFD_CLOEXEC are dups; every command's argument is passed on as
/// the machine word it was passed in.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = real!(fcntl(fd => c_int, cmd => c_int, arg => c_ulong) -> c_int);
    fcntl_done(fd, cmd, r)
}

/// fcntl64, as [`fcntl`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = real!(fcntl64(fd => c_int, cmd => c_int, arg => c_ulong) -> c_int);
    fcntl_done(fd, cmd, r)
}

/// Notes what a successful fcntl changed: a new descriptor (F_DUPFD*), new status flags
/// (F_SETFL: O_APPEND on or off).
fn fcntl_done(fd: c_int, cmd: c_int, r: c_int) -> c_int {
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        return duplicated(fd, r);
    }
    if cmd == libc::F_SETFL && r == 0 {
        let _ = library(|| {
            fds::flags_changed(fd);
            None::<i8>
        });
    }
    r
}

/// read(2): served directly at the descriptor's position when it can be.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    // SAFETY: read(2)'s contract on `buf`.
    let served = library(|| at_position(fd, |at| serve::read_at("read", fd, unsafe { out(buf, count) }, at)));
    served.unwrap_or_else(|| real!(read(fd => c_int, buf => *mut c_void, count => size_t) -> ssize_t))
}

/// __read_chk, the fortified read: as [`read`] when the buffer is large enough.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, count: size_t, buflen: size_t) -> ssize_t {
    if count > buflen {
        return real!(__read_chk(fd => c_int, buf => *mut c_void, count => size_t, buflen => size_t) -> ssize_t);
    }
    // SAFETY: the caller's contract, checked against the buffer's length as libc checks it.
    unsafe { read(fd, buf, count) }
}

fn pread_direct(call: &str, fd: c_int, buf: *mut c_void, count: size_t, off: i64) -> Option<ssize_t> {
    let off = u64::try_from(off).ok()?;
    library(|| {
        // SAFETY: pread(2)'s contract on `buf`.
        serve::read_at(call, fd, unsafe { out(buf, count) }, off).map(|n| n as ssize_t)
    })
}

/// pread(2): served directly when it can be.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, count: size_t, off: off_t) -> ssize_t {
    pread_direct("pread", fd, buf, count, off)
        .unwrap_or_else(|| real!(pread(fd => c_int, buf => *mut c_void, count => size_t, off => off_t) -> ssize_t))
}

/// pread64, as [`pread`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, count: size_t, off: off64_t) -> ssize_t {
    pread_direct("pread64", fd, buf, count, off)
        .unwrap_or_else(|| real!(pread64(fd => c_int, buf => *mut c_void, count => size_t, off => off64_t) -> ssize_t))
}

/// __pread_chk, the fortified pread: as [`pread`] when the buffer is large enough.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn __pread_chk(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    if count > buflen {
        return real!(__pread_chk(fd => c_int, buf => *mut c_void, count => size_t, off => off_t, buflen => size_t) -> ssize_t);
    }
    // SAFETY: the caller's contract, checked as libc checks it.
    unsafe { pread(fd, buf, count, off) }
}

/// __pread64_chk, as [`__pread_chk`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    off: off64_t,
    buflen: size_t,
) -> ssize_t {
    if count > buflen {
        return real!(__pread64_chk(fd => c_int, buf => *mut c_void, count => size_t, off => off64_t, buflen => size_t) -> ssize_t);
    }
    // SAFETY: the caller's contract, checked as libc checks it.
    unsafe { pread64(fd, buf, count, off) }
}

/// readv(2): served directly at the descriptor's position when it can be.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    let served = library(|| {
        // SAFETY: readv(2)'s contract on `iov`.
        let mut bufs = unsafe { outs(iov, n) }?;
        at_position(fd, |at| serve::read_vectored_at("readv", fd, &mut bufs, at))
    });
    served.unwrap_or_else(|| real!(readv(fd => c_int, iov => *const iovec, n => c_int) -> ssize_t))
}

fn preadv_direct(call: &str, fd: c_int, iov: *const iovec, n: c_int, off: i64) -> Option<ssize_t> {
    let off = u64::try_from(off).ok()?;
    library(|| {
        // SAFETY: preadv(2)'s contract on `iov`.
        let mut bufs = unsafe { outs(iov, n) }?;
        serve::read_vectored_at(call, fd, &mut bufs, off).map(|n| n as ssize_t)
    })
}

/// preadv(2): served directly when it can be.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn preadv(fd: c_int, iov: *const iovec, n: c_int, off: off_t) -> ssize_t {
    preadv_direct("preadv", fd, iov, n, off)
        .unwrap_or_else(|| real!(preadv(fd => c_int, iov => *const iovec, n => c_int, off => off_t) -> ssize_t))
}

/// preadv64, as [`preadv`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn preadv64(fd: c_int, iov: *const iovec, n: c_int, off: off64_t) -> ssize_t {
    preadv_direct("preadv64", fd, iov, n, off)
        .unwrap_or_else(|| real!(preadv64(fd => c_int, iov => *const iovec, n => c_int, off => off64_t) -> ssize_t))
}

/// preadv2(2): without flags as [`preadv`] (an offset of -1 reads at the position); with
/// flags, the real call.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn preadv2(fd: c_int, iov: *const iovec, n: c_int, off: off_t, flags: c_int) -> ssize_t {
    if flags == 0 {
        if off == -1 {
            // SAFETY: the caller's contract, passed on.
            return unsafe { readv(fd, iov, n) };
        }
        if let Some(r) = preadv_direct("preadv2", fd, iov, n, off) {
            return r;
        }
    }
    real!(preadv2(fd => c_int, iov => *const iovec, n => c_int, off => off_t, flags => c_int) -> ssize_t)
}

/// preadv64v2, as [`preadv2`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn preadv64v2(fd: c_int, iov: *const iovec, n: c_int, off: off64_t, flags: c_int) -> ssize_t {
    if flags == 0 {
        if off == -1 {
            // SAFETY: the caller's contract, passed on.
            return unsafe { readv(fd, iov, n) };
        }
        if let Some(r) = preadv_direct("preadv64v2", fd, iov, n, off) {
            return r;
        }
    }
    real!(preadv64v2(fd => c_int, iov => *const iovec, n => c_int, off => off64_t, flags => c_int) -> ssize_t)
}

/// The caller's buffer as a slice.
///
/// # Safety
/// `buf` is valid for reads of `len` bytes for the duration of the call (write(2)'s contract).
unsafe fn input<'a>(buf: *const c_void, len: size_t) -> &'a [u8] {
    if len == 0 || buf.is_null() {
        return &[];
    }
    // SAFETY: the caller's contract, above.
    unsafe { std::slice::from_raw_parts(buf.cast(), len) }
}

/// The caller's iovecs gathered into one buffer (a direct write is one store and one fence).
///
/// # Safety
/// `iov` points to `n` iovecs, each valid for reads of its length (writev(2)'s contract).
unsafe fn gathered(iov: *const iovec, n: c_int) -> Option<Vec<u8>> {
    if n < 0 || (n > 0 && iov.is_null()) {
        return None;
    }
    // SAFETY: the caller's contract, above.
    let v = unsafe { std::slice::from_raw_parts(iov, n as usize) };
    let mut all = Vec::with_capacity(v.iter().map(|i| i.iov_len).sum());
    for i in v {
        // SAFETY: as above, each iovec's buffer.
        all.extend_from_slice(unsafe { input(i.iov_base, i.iov_len) });
    }
    Some(all)
}

/// write(2): an overwrite inside the file is stored directly at the descriptor's position.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    // SAFETY: write(2)'s contract on `buf`.
    let served = library(|| at_position(fd, |at| serve::write_at("write", fd, unsafe { input(buf, count) }, at)));
    served.unwrap_or_else(|| real!(write(fd => c_int, buf => *const c_void, count => size_t) -> ssize_t))
}

fn pwrite_direct(call: &str, fd: c_int, buf: *const c_void, count: size_t, off: i64) -> Option<ssize_t> {
    let off = u64::try_from(off).ok()?;
    library(|| {
        // SAFETY: pwrite(2)'s contract on `buf`.
        serve::write_at(call, fd, unsafe { input(buf, count) }, off).map(|n| n as ssize_t)
    })
}

/// pwrite(2): an overwrite inside the file is stored directly.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, count: size_t, off: off_t) -> ssize_t {
    pwrite_direct("pwrite", fd, buf, count, off)
        .unwrap_or_else(|| real!(pwrite(fd => c_int, buf => *const c_void, count => size_t, off => off_t) -> ssize_t))
}

/// pwrite64, as [`pwrite`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, count: size_t, off: off64_t) -> ssize_t {
    pwrite_direct("pwrite64", fd, buf, count, off).unwrap_or_else(
        || real!(pwrite64(fd => c_int, buf => *const c_void, count => size_t, off => off64_t) -> ssize_t),
    )
}

/// writev(2): as [`write`], the pieces gathered.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    let served = library(|| {
        // SAFETY: writev(2)'s contract on `iov`.
        let all = unsafe { gathered(iov, n) }?;
        at_position(fd, |at| serve::write_at("writev", fd, &all, at))
    });
    served.unwrap_or_else(|| real!(writev(fd => c_int, iov => *const iovec, n => c_int) -> ssize_t))
}

fn pwritev_direct(call: &str, fd: c_int, iov: *const iovec, n: c_int, off: i64) -> Option<ssize_t> {
    let off = u64::try_from(off).ok()?;
    library(|| {
        // SAFETY: pwritev(2)'s contract on `iov`.
        let all = unsafe { gathered(iov, n) }?;
        serve::write_at(call, fd, &all, off).map(|n| n as ssize_t)
    })
}

/// pwritev(2): as [`pwrite`], the pieces gathered.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn pwritev(fd: c_int, iov: *const iovec, n: c_int, off: off_t) -> ssize_t {
    pwritev_direct("pwritev", fd, iov, n, off)
        .unwrap_or_else(|| real!(pwritev(fd => c_int, iov => *const iovec, n => c_int, off => off_t) -> ssize_t))
}

/// pwritev64, as [`pwritev`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn pwritev64(fd: c_int, iov: *const iovec, n: c_int, off: off64_t) -> ssize_t {
    pwritev_direct("pwritev64", fd, iov, n, off)
        .unwrap_or_else(|| real!(pwritev64(fd => c_int, iov => *const iovec, n => c_int, off => off64_t) -> ssize_t))
}

/// pwritev2(2): without flags as [`pwritev`] (an offset of -1 writes at the position); with
/// flags (RWF_APPEND, RWF_DSYNC, …), the real call.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn pwritev2(fd: c_int, iov: *const iovec, n: c_int, off: off_t, flags: c_int) -> ssize_t {
    if flags == 0 {
        if off == -1 {
            // SAFETY: the caller's contract, passed on.
            return unsafe { writev(fd, iov, n) };
        }
        if let Some(r) = pwritev_direct("pwritev2", fd, iov, n, off) {
            return r;
        }
    }
    real!(pwritev2(fd => c_int, iov => *const iovec, n => c_int, off => off_t, flags => c_int) -> ssize_t)
}

/// pwritev64v2, as [`pwritev2`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn pwritev64v2(fd: c_int, iov: *const iovec, n: c_int, off: off64_t, flags: c_int) -> ssize_t {
    if flags == 0 {
        if off == -1 {
            // SAFETY: the caller's contract, passed on.
            return unsafe { writev(fd, iov, n) };
        }
        if let Some(r) = pwritev_direct("pwritev64v2", fd, iov, n, off) {
            return r;
        }
    }
    real!(pwritev64v2(fd => c_int, iov => *const iovec, n => c_int, off => off64_t, flags => c_int) -> ssize_t)
}

/// The most one emulated sendfile moves.
const SENDFILE_CHUNK: usize = 1 << 20;

/// sendfile(2) from a udax file: the kernel would read the file through its page cache, which
/// direct writes bypass, so the bytes are read directly and written to `out` here.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn sendfile(out: c_int, input: c_int, offset: *mut off_t, count: size_t) -> ssize_t {
    let served = library(|| {
        fds::direct(input).filter(|f| f.reads())?;
        let at = if offset.is_null() {
            real!(lseek(input => c_int, 0 => off_t, libc::SEEK_CUR => c_int) -> off_t)
        } else {
            // SAFETY: sendfile(2)'s contract: a non-null offset points to an off_t.
            unsafe { *offset }
        };
        let at = u64::try_from(at).ok()?;
        let mut buf = vec![0u8; count.min(SENDFILE_CHUNK)];
        let n = serve::read_at("sendfile", input, &mut buf, at)?;
        let w = real!(write(out => c_int, buf.as_ptr().cast::<c_void>() => *const c_void, n => size_t) -> ssize_t);
        if w > 0 {
            let to = (at + w as u64) as off_t;
            if offset.is_null() {
                real!(lseek(input => c_int, to => off_t, libc::SEEK_SET => c_int) -> off_t);
            } else {
                // SAFETY: as above.
                unsafe { *offset = to };
            }
        }
        Some(w)
    });
    served.unwrap_or_else(
        || real!(sendfile(out => c_int, input => c_int, offset => *mut off_t, count => size_t) -> ssize_t),
    )
}

/// sendfile64, as [`sendfile`].
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn sendfile64(out: c_int, input: c_int, offset: *mut off64_t, count: size_t) -> ssize_t {
    // SAFETY: off64_t is off_t on 64-bit Linux; the caller's contract, passed on.
    unsafe { sendfile(out, input, offset, count) }
}

/// copy_file_range(2): between a udax file and a file elsewhere, EXDEV, so that the caller
/// falls back to reads and writes (which are served directly); within one mount, the server
/// copies.
///
/// # Safety
/// libc's contract for this function.
#[no_mangle]
pub unsafe extern "C" fn copy_file_range(
    input: c_int,
    off_in: *mut loff_t,
    out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    let refused = library(|| {
        let (a, b) = (fds::lookup(input), fds::lookup(out));
        let across = match (&a, &b) {
            (Some(a), Some(b)) => !std::sync::Arc::ptr_eq(&a.mount, &b.mount),
            (Some(_), None) | (None, Some(_)) => true,
            (None, None) => false,
        };
        across.then(|| {
            set_errno(libc::EXDEV);
            -1
        })
    });
    refused.unwrap_or_else(|| {
        real!(copy_file_range(input => c_int, off_in => *mut loff_t, out => c_int, off_out => *mut loff_t, len => size_t, flags => c_uint) -> ssize_t)
    })
}
