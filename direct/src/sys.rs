//! The client's system calls that take raw pointers: the direct-access ioctls. All of the
//! crate's unsafe code for talking to the kernel is here.

use std::os::fd::{AsRawFd, BorrowedFd};

use udax::direct::{
    self as direct, DirectMapIo, InfoReply, LeaseIo, MapIo, IOC_DIRECT_MAP, IOC_INFO, IOC_KERNEL_MAP, IOC_LEASE,
    IOC_MAP, IOC_WRITING,
};
use zerocopy::FromZeros;

/// Asks the mount for where its image and table are (ENOTTY: not a udax mount, or one that
/// publishes no maps).
pub(crate) fn info(fd: BorrowedFd<'_>) -> std::io::Result<InfoReply> {
    let mut reply = InfoReply::new_zeroed();
    // SAFETY: IOC_INFO is an _IOR of `size_of::<InfoReply>()` bytes: the kernel writes at most
    // that many bytes into `reply`, a live, exclusively borrowed value of exactly that size.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_INFO as libc::c_ulong, &raw mut reply) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(reply)
}

/// Asks the mount for the page of the file's extents from `from_block` on.
pub(crate) fn map(fd: BorrowedFd<'_>, from_block: u64) -> std::io::Result<MapIo> {
    let mut io = MapIo::request(from_block);
    // SAFETY: IOC_MAP is an _IOWR of `size_of::<MapIo>()` bytes: the kernel reads and writes at
    // most that many bytes of `io`, a live, exclusively borrowed value of exactly that size.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_MAP as libc::c_ulong, &raw mut io) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(io)
}

/// Asks the mount for a lease on the file's growth up to `want` bytes.
pub(crate) fn lease(fd: BorrowedFd<'_>, want: u64) -> std::io::Result<LeaseIo> {
    let mut io = LeaseIo { want, ..LeaseIo::default() };
    // SAFETY: IOC_LEASE is an _IOWR of `size_of::<LeaseIo>()` bytes: the kernel reads and writes
    // at most that many bytes of `io`, a live, exclusively borrowed value of exactly that size.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_LEASE as libc::c_ulong, &raw mut io) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(io)
}

/// Asks the mount to make `[off, off+len)` of the file written (unless `private`: a private
/// mapping leaves holes) and pin its blocks to open file `pin` or `fd`'s (a mapping served
/// from the image).
pub(crate) fn direct_map(
    fd: BorrowedFd<'_>,
    off: u64,
    len: u64,
    pin: u64,
    private: bool,
) -> std::io::Result<DirectMapIo> {
    let flags = if private { direct::MAP_LEAVE_HOLES } else { 0 };
    let mut io = DirectMapIo { off, len, pin, flags, ..DirectMapIo::default() };
    // SAFETY: IOC_DIRECT_MAP is an _IOWR of `size_of::<DirectMapIo>()` bytes: the kernel reads
    // and writes at most that many bytes of `io`, a live, exclusively borrowed value of exactly
    // that size.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_DIRECT_MAP as libc::c_ulong, &raw mut io) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(io)
}

/// Tells the mount that this process writes the file directly (times, set-ID bits).
pub(crate) fn writing(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: IOC_WRITING is an _IO: the kernel passes no memory in or out.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_WRITING as libc::c_ulong) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Tells the mount that this process is about to map the file through the kernel.
pub(crate) fn kernel_map(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: IOC_KERNEL_MAP is an _IO: the kernel passes no memory in or out.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_KERNEL_MAP as libc::c_ulong) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What `statx` says of a descriptor without asking a FUSE server (`AT_STATX_DONT_SYNC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The file system's device, as `major:minor`.
    pub dev: (u32, u32),
    /// The inode number (a udax mount's node id).
    pub ino: u64,
    /// A regular file.
    pub regular: bool,
}

/// The identity of the file `fd` names.
pub fn identity(fd: libc::c_int) -> Option<Identity> {
    // SAFETY: an all-zero statx is a valid value of the plain C struct.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC;
    // SAFETY: the path is a NUL-terminated empty string (AT_EMPTY_PATH: `fd` itself); the
    // kernel writes at most one `statx` into `st`, a live, exclusively borrowed value.
    let rc = unsafe { libc::statx(fd, c"".as_ptr(), flags, libc::STATX_TYPE | libc::STATX_INO, &raw mut st) };
    (rc == 0).then(|| Identity {
        dev: (st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        regular: u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFREG,
    })
}
