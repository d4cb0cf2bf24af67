//! Descriptors as Rust borrows.

use std::os::fd::BorrowedFd;

/// Borrows descriptor `fd` for the interposed call the caller is serving.
pub(crate) fn borrow(fd: libc::c_int) -> Option<BorrowedFd<'static>> {
    // SAFETY: `fd` is not -1 (checked), and every caller serves an interposed call on `fd` made
    // by the program, which keeps `fd` open until that call returns; the borrow is dropped
    // before then.
    (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) })
}
