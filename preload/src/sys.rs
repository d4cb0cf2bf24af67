//! Descriptors as Rust borrows, and their status flags.

use std::os::fd::BorrowedFd;

/// Borrows descriptor `fd` for the interposed call the caller is serving.
pub(crate) fn borrow(fd: libc::c_int) -> Option<BorrowedFd<'static>> {
    // SAFETY: `fd` is not -1 (checked), and every caller serves an interposed call on `fd` made
    // by the program, which keeps `fd` open until that call returns; the borrow is dropped
    // before then.
    (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Writes `line` to standard error in one write(2), as much of it as the call takes.
pub(crate) fn write_stderr(line: &[u8]) {
    // SAFETY: `line` is a live slice of `line.len()` bytes, only read by the call.
    let _ = unsafe { libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len()) };
}

/// The descriptor's status flags (F_GETFL: access mode, O_APPEND, …).
pub(crate) fn status_flags(fd: libc::c_int) -> Option<libc::c_int> {
    // SAFETY: F_GETFL takes no argument and touches no memory of this process.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    (flags >= 0).then_some(flags)
}
