//! Attaching a FUSE connection to a directory and detaching it again.
//!
//! Where this process may (root, or CAP_SYS_ADMIN), the mount is made directly: /dev/fuse opened,
//! then mount(2) of type `fuse.udax` with the image as its source. Where it may not (/dev/fuse
//! not openable, or mount(2) refused), fusermount3 — the setuid helper of the fuse3 package —
//! makes the mount for it and hands back the connection over a socket, which is how ordinary
//! users mount; it also unmounts for them.

use std::io::{IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};
use rustix::net::{AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketFlags, SocketType};

use crate::MountOptions;

/// The file system type mount(8) and /proc/mounts show.
pub const FS_TYPE: &str = "fuse.udax";

/// The setuid helpers that mount and unmount for ordinary users, newest first.
const HELPERS: [&str; 2] = ["fusermount3", "fusermount"];

/// Mounts a new FUSE connection on `dir` with the options in `o`; the descriptor returned
/// serves it.
pub(crate) fn attach(dir: &Path, o: &MountOptions) -> std::io::Result<OwnedFd> {
    let root_mode = std::fs::metadata(dir)?.mode() & libc::S_IFMT;
    match attach_directly(dir, root_mode, o) {
        Ok(fd) => Ok(fd),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => attach_by_helper(dir, o, &e),
        Err(e) => Err(e),
    }
}

/// The options both ways of mounting pass to the kernel (fusermount3 passes them on).
fn kernel_options(o: &MountOptions) -> Vec<String> {
    let mut v = Vec::new();
    if o.default_permissions {
        v.push("default_permissions".to_string());
    }
    if o.allow_other {
        v.push("allow_other".to_string());
    }
    v.extend(o.other.iter().cloned());
    v
}

fn attach_directly(dir: &Path, root_mode: u32, o: &MountOptions) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={}",
        fd.as_raw_fd(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    for opt in kernel_options(o) {
        data.push(',');
        data.push_str(&opt);
    }
    let mut flags = MountFlags::empty();
    flags.set(MountFlags::RDONLY, o.read_only);
    flags.set(MountFlags::NOSUID, !o.suid);
    flags.set(MountFlags::NODEV, !o.dev);
    let data = std::ffi::CString::new(data).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    rustix::mount::mount(source(o), dir, FS_TYPE, flags, data.as_c_str())?;
    Ok(fd)
}

fn source(o: &MountOptions) -> &str {
    o.source.as_deref().unwrap_or("udax")
}

/// Has fusermount3 (or fusermount) mount `dir` and receives the connection's descriptor from it.
/// `direct` is why the direct way failed, reported when no helper is installed.
fn attach_by_helper(dir: &Path, o: &MountOptions, direct: &std::io::Error) -> std::io::Result<OwnedFd> {
    // The helper's end must survive exec: the pair is made inheritable and this end is closed
    // as soon as the helper has started.
    let (ours, theirs) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::empty(), None)?;
    rustix::io::fcntl_setfd(&ours, rustix::io::FdFlags::CLOEXEC)?;
    let mut opts = vec![if o.read_only { "ro" } else { "rw" }.to_string()];
    opts.push(if o.suid { "suid" } else { "nosuid" }.into());
    opts.push(if o.dev { "dev" } else { "nodev" }.into());
    opts.extend(kernel_options(o));
    // fusermount3 splits its options at commas; a backslash escapes one.
    opts.push(format!("fsname={}", source(o).replace('\\', "\\\\").replace(',', "\\,")));
    opts.push(format!("subtype={}", &FS_TYPE["fuse.".len()..]));
    let mut child = None;
    for helper in HELPERS {
        let spawned = Command::new(helper)
            .arg("-o")
            .arg(opts.join(","))
            .arg("--")
            .arg(dir)
            .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(c) => {
                child = Some((helper, c));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{helper}: {e}"))),
        }
    }
    drop(theirs);
    let Some((helper, mut child)) = child else {
        return Err(std::io::Error::new(
            direct.kind(),
            format!("{direct} (/dev/fuse or mount(2)), and fusermount3 is not installed (the fuse3 package)"),
        ));
    };
    let fd = receive(&ours, &mut [0u8; 1]).map(|(_, fd)| fd);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait()?;
    match fd {
        Ok(Some(fd)) if status.success() => Ok(fd),
        Ok(_) => {
            let err = err.trim().strip_prefix(&format!("{helper}: ")).unwrap_or(err.trim()).to_string();
            let mut why =
                if err.is_empty() { format!("{helper} failed ({status})") } else { format!("{helper}: {err}") };
            if err.contains("/dev/fuse") {
                why.push_str(" (ordinary users mount only where /dev/fuse has mode 0666, as the fuse3 package's udev rule sets it)");
            }
            Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, why))
        }
        Err(e) => Err(e),
    }
}

/// Reads one message into `buf` (its length) with the one descriptor it carried (SCM_RIGHTS),
/// if any: fusermount3's answer, and the snapshot protocol's.
pub(crate) fn receive(sock: impl AsFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(&sock, &mut [IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let fd = control.drain().find_map(|m| match m {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    Ok((got.bytes, fd))
}

/// Unmounts the FUSE mount on `dir` (lazily: detached now, gone when its last user leaves):
/// directly where this process may, else through fusermount3 -u. The error of a busy mount is
/// EBUSY.
pub fn detach(dir: &Path, lazy: bool) -> std::io::Result<()> {
    let flags = if lazy { UnmountFlags::DETACH } else { UnmountFlags::empty() };
    match rustix::mount::unmount(dir, flags) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    for helper in HELPERS {
        let mut c = Command::new(helper);
        // Its messages in English, to tell a busy mount (it exits 1 for every failure).
        c.arg("-u").env("LC_ALL", "C");
        if lazy {
            c.arg("-z");
        }
        let out = match c.arg("--").arg(dir).stdin(Stdio::null()).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{helper}: {e}"))),
        };
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Device or resource busy") {
            return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
        }
        return Err(std::io::Error::other(format!("{helper}: {}", err.trim())));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "only root can unmount without fusermount3 (install the fuse3 package)",
    ))
}
