//! The mount's side of direct access (DESIGN.md "Direct access"): the table of map generations
//! it publishes beside the image, and the ioctls a client asks on a file of the mount.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use fuser::Errno;
use udax::direct::{self, DirectMapIo, DirectTable, InfoReply, LeaseIo, MapIo};
use udax::Fs;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// Where a mount's direct clients find the image and the table, and which open files map their
/// file through the kernel.
#[derive(Debug)]
pub(crate) struct Published {
    info: InfoReply,
    /// The next file handle: each open file gets its own, so that its release is known.
    next_handle: AtomicU64,
    /// Handles of the open files a client said it maps through the kernel.
    kernel_mapped: Mutex<HashSet<u64>>,
}

impl Published {
    /// A handle for a new open file.
    pub(crate) fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }
}

/// The session's notifier, for dropping the kernel's cached attributes of a file whose size a
/// lease lets a client change (one mount per process).
pub(crate) static NOTIFIER: std::sync::OnceLock<fuser::Notifier> = std::sync::OnceLock::new();

/// How long a new server waits for the direct writes a previous server's clients still run.
const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The table's path, in /dev/shm, named after the image (its device and inode numbers): a
/// server finds the table a previous server of the same image left behind.
fn table_path(image: &std::fs::Metadata) -> PathBuf {
    PathBuf::from(format!("/dev/shm/udax-direct.{:x}.{:x}", image.dev(), image.ino()))
}

/// Retires the table a previous server of `image` left (killed, or died): its clients stop,
/// and writes they still run end (ErrorKind::ResourceBusy when they do not). `udax mount` calls
/// it before it opens the image, so that the mount's recovery folds lanes no client stores to
/// any more; [`session`](crate::session) calls it again (a no-op then).
pub fn retire_previous(image: &Path) -> std::io::Result<()> {
    let path = table_path(&std::fs::metadata(image)?);
    if path.exists() {
        if let Ok(old) = DirectTable::open(&path, true) {
            if old.retire(RETIRE_WAIT).is_err() {
                let msg = format!(
                    "direct writers of the server before this one (pid {}) still run after {} s; \
                     stop them, or remove {} once they are gone",
                    old.server_pid(),
                    RETIRE_WAIT.as_secs(),
                    path.display()
                );
                return Err(std::io::Error::new(std::io::ErrorKind::ResourceBusy, msg));
            }
        }
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

/// Makes the table (with the image's owner and permission bits, so that whoever may open the
/// image read-write may open it) and has `fs` publish its map generations there. A table a
/// previous server left is retired first ([`retire_previous`]).
pub(crate) fn publish(fs: &Fs, image: &Path) -> std::io::Result<Published> {
    retire_previous(image)?;
    let meta = std::fs::metadata(image)?;
    let geo = fs.geometry();
    let path = table_path(&meta);
    let table = DirectTable::create(&path, geo.inode_count, meta.mode() & 0o666).map_err(io_error)?;
    // A root server serving someone else's image hands the table to the image's owner.
    if rustix::process::geteuid().is_root() {
        let _ = std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()));
    }
    let mut info = InfoReply::new_zeroed();
    info.magic = direct::TABLE_MAGIC;
    info.version = direct::VERSION;
    info.block_size = geo.block_size as u32;
    info.image_bytes = geo.size_bytes;
    info.inodes = geo.inode_count;
    if !direct::put_path(&mut info.image, image.as_os_str().as_bytes())
        || !direct::put_path(&mut info.table, path.as_os_str().as_bytes())
    {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    fs.publish_maps(table).map_err(io_error)?;
    Ok(Published { info, next_handle: AtomicU64::new(1), kernel_mapped: Mutex::new(HashSet::new()) })
}

fn io_error(e: udax::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Answers a direct-access ioctl from user `caller` on open file `fh` of `ino`: the reply's
/// bytes, or the errno.
pub(crate) fn ioctl(
    fs: &Fs,
    published: Option<&Published>,
    caller: u32,
    (ino, fh): (u64, u64),
    cmd: u32,
    input: &[u8],
) -> Result<Vec<u8>, Errno> {
    let Some(p) = published else { return Err(Errno::ENOTTY) };
    match cmd {
        direct::IOC_INFO => Ok(p.info.as_bytes().to_vec()),
        direct::IOC_MAP => {
            let req = MapIo::read_from_prefix(input).map_err(|_| Errno::EINVAL)?.0;
            let map = fs.file_map(ino, req.from_block).map_err(|e| Errno::from_i32(e.errno()))?;
            Ok(map.as_bytes().to_vec())
        }
        direct::IOC_WRITING => {
            // As the kernel asks for a write by a caller without CAP_FSETID (taken to be
            // anyone but root; FUSE does not send capabilities).
            fs.note_direct_write(ino, caller != 0).map_err(|e| Errno::from_i32(e.errno()))?;
            Ok(Vec::new())
        }
        direct::IOC_LEASE => {
            let req = LeaseIo::read_from_prefix(input).map_err(|_| Errno::EINVAL)?.0;
            let lease = fs.lease(ino, fh, req.want).map_err(|e| Errno::from_i32(e.errno()))?;
            // The size the kernel may have cached stops being the file's once the holder
            // appends. Every request that returns a size ends the lease first, so a size
            // cached after this is right until the next lease (a reply racing with this is
            // not cached: the kernel counts attribute versions).
            if let Some(n) = NOTIFIER.get() {
                let _ = n.inval_inode(fuser::INodeNo(ino), -1, 0);
            }
            Ok(lease.as_bytes().to_vec())
        }
        direct::IOC_DIRECT_MAP => {
            let req = DirectMapIo::read_from_prefix(input).map_err(|_| Errno::EINVAL)?.0;
            let holes = req.flags & direct::MAP_LEAVE_HOLES != 0;
            let reply =
                fs.direct_map(ino, fh, req.pin, (req.off, req.len), holes).map_err(|e| Errno::from_i32(e.errno()))?;
            Ok(reply.as_bytes().to_vec())
        }
        direct::IOC_KERNEL_MAP => {
            if p.kernel_mapped.lock().unwrap_or_else(PoisonError::into_inner).insert(fh) {
                fs.note_kernel_map(ino, true);
            }
            Ok(Vec::new())
        }
        _ => Err(Errno::ENOTTY),
    }
}

/// Open file `fh` of `ino` is released: if it mapped the file through the kernel, it no longer
/// does (the kernel releases a file only once its mappings are gone too), and the blocks a
/// mapping served from the image pinned to it may be reused.
pub(crate) fn released(fs: &Fs, published: Option<&Published>, ino: u64, fh: u64) {
    if published.is_some() {
        fs.direct_unmap(fh);
    }
    if published.is_some_and(|p| p.kernel_mapped.lock().unwrap_or_else(PoisonError::into_inner).remove(&fh)) {
        fs.note_kernel_map(ino, false);
    }
}
