//! Inspecting a mounted image: commands that only read (`info`, `ls`, `stat`, `cat`, `get`,
//! `fsck -n`, `extents`, `df`, `du`) ask the mount server for a snapshot and read that.
//!
//! The server listens on an abstract Unix socket named after the image's device and inode
//! numbers. A client proves it may read the image by sending a descriptor of it opened for
//! reading; the server answers with a memfd holding [`udax::Fs::snapshot`] — the image as it
//! stands between two commits — and the mount point, and the client opens that copy read-only.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::fs::OFlags;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use udax::Fs;

/// How long a client waits for the copy.
const WAIT: Duration = Duration::from_secs(120);

fn address(meta: &std::fs::Metadata) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("udax-image.{:x}.{}", meta.dev(), meta.ino()))
}

/// Serves snapshots of the file system a mount holds, until [`Server::stop`].
#[derive(Debug)]
pub struct Server {
    fs: Arc<Mutex<Option<Fs>>>,
}

impl Server {
    /// Serves snapshots of `fs` (the image at `image`, mounted on `dir`) from a thread.
    pub fn start(fs: Fs, image: &Path, dir: &Path) -> std::io::Result<Server> {
        let meta = std::fs::metadata(image)?;
        let listener = UnixListener::bind_addr(&address(&meta)?)?;
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let fs = Arc::new(Mutex::new(Some(fs)));
        let held = fs.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let fs = held.lock().unwrap_or_else(|p| p.into_inner());
                let answered = match &*fs {
                    Some(fs) => answer(fs, &conn, &meta, &dir),
                    None => send(&conn, b"error: the mount is ending", None),
                };
                if let Err(e) = answered {
                    log::warn!("snapshot for a client: {e}");
                }
            }
        });
        Ok(Server { fs })
    }

    /// Lets go of the file system (after a snapshot being taken), so that unmounting it hands
    /// the image back at once; later requests are told the mount is ending.
    pub fn stop(self) {
        self.fs.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// One request: the client's descriptor of the image in, the copy and the mount point out.
fn answer(fs: &Fs, conn: &UnixStream, image: &std::fs::Metadata, dir: &Path) -> std::io::Result<()> {
    conn.set_read_timeout(Some(WAIT))?;
    let (_, proof) = receive(conn, &mut [0u8; 1])?;
    let proof = proof.ok_or_else(|| std::io::Error::other("no descriptor of the image came"))?;
    let flags = rustix::fs::fcntl_getfl(&proof)?;
    let held = std::fs::File::from(proof).metadata()?;
    if !reads(flags) || held.dev() != image.dev() || held.ino() != image.ino() {
        send(conn, b"error: that is not this image", None)?;
        return Ok(());
    }
    let copy = rustix::fs::memfd_create("udax-snapshot", rustix::fs::MemfdFlags::CLOEXEC)?;
    let file = std::fs::File::from(copy);
    match fs.snapshot(&file) {
        Ok(()) => send(conn, dir.to_string_lossy().as_bytes(), Some(file.as_fd())),
        Err(e) => send(conn, format!("error: {e}").as_bytes(), None),
    }
}

fn send(conn: &UnixStream, bytes: &[u8], fd: Option<std::os::fd::BorrowedFd>) -> std::io::Result<()> {
    let fds;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(conn, &[IoSlice::new(bytes)], &mut control, SendFlags::empty())?;
    Ok(())
}

/// Reads one message into `buf`: its length and the descriptor it carried, if any.
fn receive(conn: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(conn, &mut [IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC) {
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

/// A snapshot of `image` from the udax mount holding it, with the mount point: `None` when no
/// mount server answers for it (the image is not mounted, or its holder is something else).
pub fn request(image: &Path) -> Option<Result<(OwnedFd, PathBuf), String>> {
    let file = std::fs::File::open(image).ok()?;
    let conn = UnixStream::connect_addr(&address(&file.metadata().ok()?).ok()?).ok()?;
    let asked = conn.set_read_timeout(Some(WAIT)).and_then(|()| send(&conn, b"?", Some(file.as_fd())));
    if let Err(e) = asked {
        return Some(Err(format!("asking the mount for a snapshot: {e}")));
    }
    let mut buf = vec![0u8; 8192];
    Some(match receive(&conn, &mut buf) {
        Ok((n, Some(fd))) => Ok((fd, PathBuf::from(String::from_utf8_lossy(&buf[..n]).into_owned()))),
        Ok((n, None)) => Err(String::from_utf8_lossy(&buf[..n]).trim_start_matches("error: ").to_string()),
        Err(e) => Err(format!("waiting for the mount's snapshot: {e}")),
    })
}

/// Whether `flags` (of a descriptor) allow reading its file: an O_PATH descriptor, which needs
/// no permission to the file, does not.
fn reads(flags: OFlags) -> bool {
    !flags.contains(OFlags::PATH) && (flags & OFlags::RWMODE) != OFlags::WRONLY
}
