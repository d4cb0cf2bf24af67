//! Inspecting a mounted image: commands that only read (`info`, `ls`, `stat`, `cat`, `get`,
//! `fsck -n`, `extents`, `df`, `du`) ask the mount server for a snapshot and read that.
//!
//! The server listens on an abstract Unix socket named after the image's device and inode
//! numbers. A client proves it may read the image by sending a descriptor of it opened for
//! reading; the server answers with a memfd holding [`udax::Fs::snapshot`] — the image as it
//! stands between two commits — and the mount point, and the client opens that copy read-only.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::fs::OFlags;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use udax::Fs;

use crate::attach::receive;

/// How long a client waits for the copy (one pass over the image).
const WAIT: Duration = Duration::from_secs(600);

/// How long the server waits for a client's request.
const ASK: Duration = Duration::from_secs(5);

/// Snapshots taken at once; a client past it is told to retry. Each holds a copy of the image
/// in memory until its client lets go of it.
const AT_ONCE: usize = 2;

fn address(meta: &std::fs::Metadata) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("udax-image.{:x}.{}", meta.dev(), meta.ino()))
}

/// Serves snapshots of the file system a mount holds, until [`Server::stop`].
#[derive(Debug)]
pub struct Server {
    fs: Arc<Mutex<Option<Fs>>>,
}

impl Server {
    /// Serves snapshots of `fs` (the image at `image`, mounted on `dir`): a thread takes
    /// requests, and each request is answered on a thread of its own.
    pub fn start(fs: Fs, image: &Path, dir: &Path) -> std::io::Result<Server> {
        let meta = std::fs::metadata(image)?;
        let listener = UnixListener::bind_addr(&address(&meta)?)?;
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let fs = Arc::new(Mutex::new(Some(fs)));
        let held = fs.clone();
        let busy = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if busy.fetch_add(1, Ordering::AcqRel) >= AT_ONCE {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    let _ = send(&conn, b"error: the mount is taking other snapshots; try again", None);
                    continue;
                }
                let (held, busy, meta, dir) = (held.clone(), busy.clone(), meta.clone(), dir.clone());
                std::thread::spawn(move || {
                    if let Err(e) = answer(&held, &conn, &meta, &dir) {
                        log::warn!("snapshot for a client: {e}");
                    }
                    busy.fetch_sub(1, Ordering::AcqRel);
                });
            }
        });
        Ok(Server { fs })
    }

    /// Lets go of the file system (a snapshot being taken keeps it until done); later requests
    /// are told the mount is ending.
    pub fn stop(self) {
        self.fs.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// One request: the client's descriptor of the image in, the copy and the mount point out.
fn answer(fs: &Mutex<Option<Fs>>, conn: &UnixStream, image: &std::fs::Metadata, dir: &Path) -> std::io::Result<()> {
    conn.set_read_timeout(Some(ASK))?;
    let (_, proof) = receive(conn, &mut [0u8; 1])?;
    let proof = proof.ok_or_else(|| std::io::Error::other("no descriptor of the image came"))?;
    let flags = rustix::fs::fcntl_getfl(&proof)?;
    let held = std::fs::File::from(proof).metadata()?;
    if !reads(flags) || held.dev() != image.dev() || held.ino() != image.ino() {
        return send(conn, b"error: that is not this image, open for reading", None);
    }
    let Some(fs) = fs.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
        return send(conn, b"error: the mount is ending", None);
    };
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
    rustix::net::sendmsg(conn, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// A snapshot of `image` from the udax mount holding it, with the mount point: `None` when no
/// mount server answers for it (the image is not mounted, or its holder is something else).
///
/// The name the server listens on is anyone's to take, so the client trusts only a server run
/// by root or by the image's owner (who may read and write the image anyway) with its
/// descriptor of the image, and takes back only a regular file.
pub fn request(image: &Path) -> Option<Result<(OwnedFd, PathBuf), String>> {
    let file = std::fs::File::open(image).ok()?;
    let meta = file.metadata().ok()?;
    let conn = UnixStream::connect_addr(&address(&meta).ok()?).ok()?;
    let peer = rustix::net::sockopt::socket_peercred(&conn).ok()?;
    if !(peer.uid.is_root() || peer.uid.as_raw() == meta.uid()) {
        return None;
    }
    let asked = conn.set_read_timeout(Some(WAIT)).and_then(|()| send(&conn, b"?", Some(file.as_fd())));
    if let Err(e) = asked {
        return Some(Err(format!("asking the mount for a snapshot: {e}")));
    }
    let mut buf = vec![0u8; 8192];
    Some(match receive(&conn, &mut buf) {
        Ok((n, Some(fd))) => {
            let mode = rustix::fs::fstat(&fd).map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode));
            match mode {
                Ok(rustix::fs::FileType::RegularFile) => {
                    Ok((fd, PathBuf::from(String::from_utf8_lossy(&buf[..n]).into_owned())))
                }
                _ => Err("the mount sent something that is not a copy of the image".into()),
            }
        }
        Ok((n, None)) => Err(String::from_utf8_lossy(&buf[..n]).trim_start_matches("error: ").to_string()),
        Err(e) => Err(format!("waiting for the mount's snapshot: {e}")),
    })
}

/// Whether `flags` (of a descriptor) allow reading its file: an O_PATH descriptor, which needs
/// no permission to the file, does not.
fn reads(flags: OFlags) -> bool {
    !flags.contains(OFlags::PATH) && (flags & OFlags::RWMODE) != OFlags::WRONLY
}

#[cfg(test)]
mod tests {
    use super::*;
    use udax::{Device, MkfsOptions};

    /// Asks the server at `image`'s name with `proof`; the answer's text and whether a copy came.
    fn ask(image: &Path, proof: impl AsFd) -> (String, bool) {
        let meta = std::fs::metadata(image).unwrap();
        let conn = UnixStream::connect_addr(&address(&meta).unwrap()).unwrap();
        send(&conn, b"?", Some(proof.as_fd())).unwrap();
        let mut buf = [0u8; 512];
        let (n, fd) = receive(&conn, &mut buf).unwrap();
        (String::from_utf8_lossy(&buf[..n]).into_owned(), fd.is_some())
    }

    #[test]
    fn only_a_readable_descriptor_of_the_image_gets_a_copy() {
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let (img, other) = (dir.path().join("img"), dir.path().join("other"));
        let fs = Fs::mkfs(Device::create(&img, 8 << 20).unwrap(), &MkfsOptions::default()).unwrap();
        fs.mkdir_all("/seen", 0o755).unwrap();
        std::fs::write(&other, b"not the image").unwrap();
        let server = Server::start(fs.clone(), &img, dir.path()).unwrap();
        // Another file, an O_PATH descriptor (no permission needed) and a write-only one: refused.
        let (said, copy) = ask(&img, std::fs::File::open(&other).unwrap());
        assert!(!copy && said.contains("not this image"), "{said}");
        let path_only = rustix::fs::open(&img, OFlags::PATH | OFlags::CLOEXEC, rustix::fs::Mode::empty()).unwrap();
        let (said, copy) = ask(&img, path_only);
        assert!(!copy && said.contains("not this image"), "{said}");
        let write_only = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        assert!(!ask(&img, write_only).1);
        // The image open for reading: a copy that mounts and shows the tree; the mount point.
        let (copy, at) = request(&img).unwrap().unwrap();
        assert_eq!(at, std::fs::canonicalize(dir.path()).unwrap());
        let snap =
            Fs::open_image_read_only(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&copy))).unwrap();
        assert!(snap.stat("/seen").is_ok());
        // After stop, the mount is ending.
        server.stop();
        let (said, copy) = ask(&img, std::fs::File::open(&img).unwrap());
        assert!(!copy && said.contains("ending"), "{said}");
    }
}
