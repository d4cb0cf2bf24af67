//! The image lock: `flock` on the image for as long as a `Device` lives, and naming the
//! process that holds it (pid, command line, mount point) when a second opener is refused.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Takes the image's lock, exclusive (read-write opens) or shared (read-only ones). When another
/// process holds it in a way that excludes this one, the error names that
/// process; a udax mount server whose mount is already gone is finishing (checkpoint, sync) and
/// lets go when it exits, so its exit is waited for (at most [`LOCK_WAIT`]): `umount` followed at
/// once by another command on the image works.
pub(super) fn lock(file: &File, exclusive: bool) -> Result<()> {
    let how = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    let start = std::time::Instant::now();
    let mut unknown = 0;
    loop {
        // SAFETY: flock on a descriptor this function borrows; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io("lock image", err));
        }
        match lock_holder(file) {
            Some(h) if !h.finishing_mount() => return Err(h.in_use()),
            Some(h) => {
                // The server lets go when it exits: wait for exactly that, then look again.
                let left = LOCK_WAIT.saturating_sub(start.elapsed());
                if left.is_zero() || !wait_for_exit(h.pid, left)? {
                    return Err(h.in_use());
                }
            }
            // Gone between the two looks (it just let go): look again, a few times; or /proc
            // does not say.
            None if unknown < 3 => unknown += 1,
            None => return Err(Error::Busy),
        }
    }
}

/// Waits up to `timeout` for process `pid` to exit (a pidfd that polls readable); false when it
/// is still running.
pub(super) fn wait_for_exit(pid: u32, timeout: std::time::Duration) -> Result<bool> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        // ESRCH: it exited already.
        return match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => Ok(true),
            _ => Err(Error::io("wait for the image's holder", std::io::Error::last_os_error())),
        };
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: poll(2) reads and writes exactly the one `pollfd` passed.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        match n {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            _ => return Err(Error::io("wait for the image's holder", std::io::Error::last_os_error())),
        }
    }
}

/// Longest wait for a mount server that is finishing to let go of the image.
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The process holding an image's lock, as /proc tells it.
pub(super) struct Holder {
    pid: u32,
    cmdline: Vec<String>,
    cwd: Option<PathBuf>,
}

impl Holder {
    /// The error for a refused opener: who holds the image, and where it is mounted if the
    /// holder is a udax mount server.
    fn in_use(&self) -> Error {
        let who = match self.cmdline.is_empty() {
            true => format!("process {}", self.pid),
            false => format!("process {} ({})", self.pid, self.cmdline.join(" ")),
        };
        let mount = self.mount_point().filter(|dir| is_mount_point(dir));
        Error::InUse { who, mount }
    }

    /// DIR, for a udax mount server (`udax mount [-f] [-o OPTS] IMAGE DIR`), made absolute.
    fn mount_point(&self) -> Option<PathBuf> {
        let c = &self.cmdline;
        let is_server = c.len() >= 2 && Path::new(&c[0]).file_name().is_some_and(|n| n == "udax") && c[1] == "mount";
        if !is_server {
            return None;
        }
        // The second operand, skipping flags and the values of -o.
        let mut operands = Vec::new();
        let mut args = c[2..].iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "-o" => drop(args.next()),
                "--" => operands.extend(args.by_ref()),
                s if s.starts_with('-') => {}
                _ => operands.push(a),
            }
        }
        let dir = operands.get(1)?;
        let dir = match &self.cwd {
            Some(cwd) => cwd.join(dir),
            None => PathBuf::from(dir),
        };
        Some(std::fs::canonicalize(&dir).unwrap_or(dir))
    }

    /// A udax mount server whose DIR is no longer mounted, or a process already exiting (its
    /// command line is gone before its descriptors, and with them the lock, are closed).
    fn finishing_mount(&self) -> bool {
        self.cmdline.is_empty() || self.mount_point().is_some_and(|dir| !is_mount_point(&dir))
    }
}

/// Whether a mount sits on `dir` (an absolute, canonical path).
fn is_mount_point(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().any(|l| l.split(' ').nth(1).map(unescape_mount_field).as_deref() == dir.to_str())
}

/// A field of /proc/self/mounts as a path: the kernel writes space, tab, newline and backslash
/// as octal escapes (`\040`).
pub(super) fn unescape_mount_field(f: &str) -> String {
    let b = f.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who holds the flock on `file` (from /proc/locks), if /proc says.
pub(super) fn lock_holder(file: &File) -> Option<Holder> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let want = format!("{:02x}:{:02x}:{}", libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid: u32 = locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str())).then(|| f[4].parse().ok()).flatten()
    })?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned());
    Some(Holder { pid, cmdline: cmdline.collect(), cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(unescape_mount_field("/mnt/a\\040b\\011c\\134d"), "/mnt/a b\tc\\d");
        assert_eq!(unescape_mount_field("/plain\\0x"), "/plain\\0x");
    }
}
