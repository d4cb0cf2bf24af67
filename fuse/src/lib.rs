//! `udax mount`: a udax image served to every program through FUSE (the `fuser` crate, pure
//! Rust, no libfuse).
//!
//! Thin by design: each request is translated to one [`udax::Fs`] call and its error to the
//! errno a kernel file system gives. Node ids are the image's inode numbers and generations come
//! from the image, so handles stay valid across remounts. Data goes through the kernel's page
//! cache (write-through: writeback caching stays off, so every `write(2)` that returns is durable
//! in the image); true DAX access is the library's.
#![deny(unsafe_code)]
#![deny(missing_docs)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod attach;
mod direct;
mod poll;
pub mod snapshot;

pub use attach::{detach, FS_TYPE};
pub use direct::retire_previous;

use fuser::{
    AccessFlags, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use udax::{Creds, FallocMode, Fs, RenameMode, SetAttr, SetTime, Stat, Timespec, XattrFlags};

/// How long the kernel may trust attributes and names. Every change goes through this process,
/// and the kernel drops what each of its own requests changes, so a short timeout costs nothing
/// in correctness.
const TTL: Duration = Duration::from_secs(1);

/// Open files keep the kernel's cached pages. Every change to a file's data reaches the server
/// through this kernel, which updates or drops the pages it touches (write-through writes,
/// truncate, punch and zero range, copy_file_range), and no other process can open the image
/// while it is mounted: cached pages are never stale, and a re-read needs no request.
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE;

/// What `-o` asked for.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Mount read-only (`-o ro`): every change fails with EROFS.
    pub read_only: bool,
    /// Let other users in (and have the kernel check permissions with `default_permissions`).
    pub allow_other: bool,
    /// Leave permission checks to the kernel (on by default).
    pub default_permissions: bool,
    /// Honour set-user-ID and set-group-ID bits on exec (`-o suid`; off by default: the image
    /// may come from anyone).
    pub suid: bool,
    /// Let device nodes on the image open their devices (`-o dev`; off by default, as above).
    pub dev: bool,
    /// Worker threads serving requests (0: one per CPU, at most 8).
    pub threads: usize,
    /// How long the thread that receives requests polls for the next one before it sleeps
    /// (`-o poll=MICROSECONDS`; zero: it sleeps at once).
    pub poll: Duration,
    /// Options passed to the kernel as they are (`-o max_read=…`).
    pub other: Vec<String>,
    /// What mount(8) and df show as the source: the image's path ("udax" when not set).
    pub source: Option<String>,
    /// Publish file maps to direct clients (on unless `-o nodirect`; never on a read-only mount).
    pub direct: bool,
    /// Log every request and its answer (`-o debug`).
    pub debug: bool,
    /// Where the server logs (`-o log=FILE`; by default its standard error in the foreground,
    /// syslog in the background).
    pub log: Option<std::path::PathBuf>,
}

impl MountOptions {
    /// Parses a comma-separated `-o` list on top of the defaults (default_permissions on,
    /// nosuid, nodev).
    pub fn parse(list: &[String]) -> Result<MountOptions, String> {
        let mut o = MountOptions { default_permissions: true, direct: true, ..Default::default() };
        for opt in list.iter().flat_map(|l| l.split(',')).filter(|s| !s.is_empty()) {
            match opt {
                "ro" => o.read_only = true,
                "rw" => o.read_only = false,
                "allow_other" => o.allow_other = true,
                "default_permissions" => o.default_permissions = true,
                "no_default_permissions" => o.default_permissions = false,
                "nonempty" => {}
                "suid" => o.suid = true,
                "nosuid" => o.suid = false,
                "dev" => o.dev = true,
                "nodev" => o.dev = false,
                "debug" => o.debug = true,
                "direct" => o.direct = true,
                "nodirect" => o.direct = false,
                s if s.starts_with("log=") && s.len() > "log=".len() => o.log = Some(s["log=".len()..].into()),
                s if s.starts_with("threads=") => {
                    o.threads = s["threads=".len()..].parse().map_err(|_| format!("bad thread count in {s:?}"))?;
                }
                s if s.starts_with("poll=") => {
                    let us = s["poll=".len()..].parse().map_err(|_| format!("bad poll window in {s:?}"))?;
                    o.poll = Duration::from_micros(us);
                }
                s if s.starts_with("max_read=") => o.other.push(s.to_string()),
                s => return Err(format!("unknown mount option {s:?}")),
            }
        }
        Ok(o)
    }

    fn config(&self) -> Config {
        let mut c = Config::default();
        if self.allow_other {
            c.acl = SessionACL::All;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        c.n_threads = Some(if self.threads == 0 { cpus.min(8) } else { self.threads });
        // Polling is a flag of the open file: the other threads get descriptors of their own.
        c.clone_fd = !self.poll.is_zero();
        c
    }
}

/// Mounts `fs` on `dir`: directly, or through fusermount3 where this process may not. The returned session serves requests when
/// run, until the mount goes ([`detach`], or an unmount from outside).
///
/// `on_host_full` runs once when the host file system holding a sparse image fills up: the image
/// takes no more changes from then on (every change is EROFS), and the caller should end the
/// session (`udax mount` unmounts, as on SIGTERM).
pub fn session(
    fs: Fs,
    dir: &Path,
    opts: &MountOptions,
    on_host_full: Box<dyn Fn() + Send + Sync>,
) -> std::io::Result<fuser::Session<UdaxFuse>> {
    let _ = ON_HOST_FULL.set(on_host_full);
    let fd = attach::attach(dir, opts)?;
    let c = opts.config();
    let poller = if opts.poll.is_zero() { None } else { Some(poll::Poller::start(fd.try_clone()?, opts.poll)?) };
    let direct = match &opts.source {
        Some(image) if opts.direct && !opts.read_only => match direct::publish(&fs, Path::new(image)) {
            Ok(p) => Some(p),
            // Serving now could reuse a block a previous server's client is storing to.
            Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                let _ = detach(dir, true);
                return Err(e);
            }
            Err(e) => {
                log::warn!("no direct access for this mount: {e}");
                None
            }
        },
        _ => None,
    };
    let session = fuser::Session::from_fd(UdaxFuse { fs, poller, direct }, fd, c.acl, c).inspect_err(|_| {
        let _ = detach(dir, true);
    })?;
    let _ = direct::NOTIFIER.set(session.notifier());
    Ok(session)
}

/// What to do when the host fills up (see [`session`]): one mount per process.
static ON_HOST_FULL: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>> = std::sync::OnceLock::new();

/// The file system as FUSE sees it.
#[derive(Debug)]
pub struct UdaxFuse {
    fs: Fs,
    poller: Option<poll::Poller>,
    /// What direct clients are told (`-o nodirect`, or a read-only mount: none).
    direct: Option<direct::Published>,
}

impl UdaxFuse {
    /// The image, for unmounting when the session ends.
    pub fn into_fs(self) -> Fs {
        self.fs
    }
}

fn errno(e: &udax::Error) -> Errno {
    static HOST_FULL_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if matches!(e, udax::Error::HostFull(_)) && !HOST_FULL_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        log::error!("{e}; the image takes no more changes: unmounting");
        if let Some(stop) = ON_HOST_FULL.get() {
            stop();
        }
    }
    Errno::from_i32(e.errno())
}

/// Answers a request that returns nothing but success or an errno.
fn done(r: udax::Result<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers getxattr/listxattr: the size alone when asked with size 0, ERANGE when the caller's
/// buffer is too small.
fn xattr_reply(bytes: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(bytes.len() as u32)
    } else if bytes.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(bytes)
    }
}

fn time(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(u64::from(t.nsec))
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dtype_kind(dtype: u8) -> FileType {
    match dtype {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn attr(st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.ino),
        size: st.size,
        blocks: st.blocks,
        atime: time(st.atime),
        mtime: time(st.mtime),
        ctime: time(st.ctime),
        crtime: time(st.crtime),
        kind: kind(st.mode),
        perm: (st.mode & 0o7777) as u16,
        nlink: st.nlink,
        uid: st.uid,
        gid: st.gid,
        rdev: st.rdev as u32,
        blksize: st.blksize,
        flags: 0,
    }
}

fn who(req: &Request) -> Creds {
    Creds { uid: req.uid(), gid: req.gid() }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(Timespec::from_system(t)),
    }
}

impl UdaxFuse {
    /// How files are opened: through the page cache, or, when direct clients may store into the
    /// image behind the kernel's back, with no cache at all (each read asks the server, which
    /// reads the image), so no reader through the mount sees data older than a direct write.
    fn open_flags(&self) -> FopenFlags {
        if self.direct.is_some() {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            OPEN_FLAGS
        }
    }

    /// Marks a request being served; with `-o poll` the poll window starts when the guard drops,
    /// after the reply.
    /// The handle of a new open file: its own on a publishing mount (its release matters to
    /// direct clients), else 0.
    fn file_handle(&self) -> FileHandle {
        FileHandle(self.direct.as_ref().map_or(0, direct::Published::new_handle))
    }

    fn serving(&self) -> poll::Serving<'_> {
        poll::Serving::new(self.poller.as_ref())
    }

    fn entry(&self, r: udax::Result<Stat>, reply: ReplyEntry) {
        match r {
            Ok(st) => reply.entry(&TTL, &attr(&st), Generation(u64::from(st.generation))),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl Filesystem for UdaxFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Each on its own: add_capabilities refuses the whole set if one is missing.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // File handles (name_to_handle_at, an NFS server) carry node id and generation and
            // stay valid across remounts; a freed or reused inode gives ESTALE.
            InitFlags::FUSE_EXPORT_SUPPORT,
            // The server drops set-user-ID and set-group-ID on write, truncate and chown (see
            // `killed_privs`); in return the kernel stops asking for security.capability before
            // every write, which otherwise costs 4 KiB random writes 40% of their throughput.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // Shared mappings of files opened with FOPEN_DIRECT_IO (a mount publishing maps).
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        let _ = self.fs.sync();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _serving = self.serving();
        // With export support the kernel looks "." up in any inode, a file too, to turn a file
        // handle (node id and generation) back into an inode it no longer caches.
        if name.as_bytes() == b"." {
            return self.entry(self.fs.getattr(parent.0), reply);
        }
        self.entry(self.fs.lookup(parent.0, name.as_bytes()), reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _serving = self.serving();
        match self.fs.getattr(ino.0) {
            Ok(st) => reply.attr(&TTL, &attr(&st)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _serving = self.serving();
        // What the kernel leaves to a server that handles privileges: a chown of a
        // non-directory, and a truncate by a caller without CAP_FSETID (taken to be non-root),
        // drop the set-ID bits as on a kernel file system (udax does it in the same transaction).
        let chown = uid.is_some() || gid.is_some();
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            drop_set_id: (chown || (size.is_some() && req.uid() != 0)).then(|| who(req)),
        };
        match self.fs.setattr(ino.0, &set) {
            Ok(st) => reply.attr(&TTL, &attr(&st)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _serving = self.serving();
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let _serving = self.serving();
        let mode = mode & !(umask & 0o777);
        let r = if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
            self.fs.create(parent.0, name.as_bytes(), mode & 0o7777, who(req))
        } else {
            self.fs.mknod(parent.0, name.as_bytes(), mode, u64::from(rdev), who(req))
        };
        self.entry(r, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _serving = self.serving();
        self.entry(self.fs.mkdir(parent.0, name.as_bytes(), mode & !umask & 0o7777, who(req)), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _serving = self.serving();
        done(self.fs.unlink(parent.0, name.as_bytes()), reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _serving = self.serving();
        done(self.fs.rmdir(parent.0, name.as_bytes()), reply)
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _serving = self.serving();
        self.entry(self.fs.symlink(parent.0, link_name.as_bytes(), target.as_os_str().as_bytes(), who(req)), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _serving = self.serving();
        let how = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(Errno::EINVAL);
        };
        done(self.fs.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), how), reply)
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _serving = self.serving();
        self.entry(self.fs.link(ino.0, newparent.0, newname.as_bytes()), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _serving = self.serving();
        // Changes check for themselves; an open for writing is refused up front, as the kernel's.
        if self.fs.is_read_only() && flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.fs.open_ino(ino.0) {
            Ok(_) => reply.opened(self.file_handle(), self.open_flags()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _serving = self.serving();
        let made = self.fs.create(parent.0, name.as_bytes(), mode & !umask & 0o7777, who(req));
        match made.and_then(|st| self.fs.open_ino(st.ino)) {
            Ok(st) => {
                let fh = self.file_handle();
                reply.created(&TTL, &attr(&st), Generation(u64::from(st.generation)), fh, self.open_flags())
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _serving = self.serving();
        let mut buf = vec![0u8; size as usize];
        match self.fs.read(ino.0, &mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _serving = self.serving();
        // Sent with every write by a caller without CAP_FSETID.
        let written = if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            self.fs.write_dropping_set_id(ino.0, data, offset)
        } else {
            self.fs.write(ino.0, data, offset)
        };
        match written {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _serving = self.serving();
        // Every write is durable when it returns; nothing waits for close.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _serving = self.serving();
        direct::released(&self.fs, self.direct.as_ref(), ino.0, fh.0);
        done(self.fs.release(ino.0), reply)
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _serving = self.serving();
        done(self.fs.fsync(ino.0), reply)
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _serving = self.serving();
        done(self.fs.sync(), reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _serving = self.serving();
        match self.fs.getattr(ino.0) {
            Ok(st) if kind(st.mode) == FileType::Directory => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _serving = self.serving();
        // Offsets: 1 is ".", 2 is "..", and an entry's udax cookie c is c + 2.
        if offset < 1 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset < 2 {
            let parent = self.fs.lookup(ino.0, b"..").map_or(ino.0, |st| st.ino);
            if reply.add(INodeNo(parent), 2, FileType::Directory, "..") {
                return reply.ok();
            }
        }
        match self.fs.readdir(ino.0, offset.saturating_sub(2)) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(INodeNo(e.ino), e.cookie + 2, dtype_kind(e.dtype), OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _serving = self.serving();
        let dot = |i: u64| self.fs.getattr(i).map(|st| (attr(&st), Generation(u64::from(st.generation))));
        if offset < 1 {
            match dot(ino.0) {
                Ok((a, g)) if reply.add(ino, 1, ".", &TTL, &a, g) => return reply.ok(),
                Ok(_) => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        if offset < 2 {
            let parent = self.fs.lookup(ino.0, b"..").map_or(ino.0, |st| st.ino);
            match dot(parent) {
                Ok((a, g)) if reply.add(INodeNo(parent), 2, "..", &TTL, &a, g) => return reply.ok(),
                Ok(_) => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        match self.fs.readdir(ino.0, offset.saturating_sub(2)) {
            Ok(entries) => {
                for e in entries {
                    // An entry removed since the listing is skipped.
                    let Ok(st) = self.fs.getattr(e.ino) else { continue };
                    let g = Generation(u64::from(st.generation));
                    if reply.add(INodeNo(e.ino), e.cookie + 2, OsStr::from_bytes(&e.name), &TTL, &attr(&st), g) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _serving = self.serving();
        let s = self.fs.statfs();
        let bs = s.block_size as u32;
        reply.statfs(s.blocks, s.blocks_free, s.blocks_free, s.inodes, s.inodes_free, bs, s.name_max, bs);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let _serving = self.serving();
        if position != 0 || flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return reply.error(Errno::EINVAL);
        }
        let how = XattrFlags { create: flags & libc::XATTR_CREATE != 0, replace: flags & libc::XATTR_REPLACE != 0 };
        done(self.fs.setxattr(ino.0, name.as_bytes(), value, how), reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _serving = self.serving();
        match self.fs.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _serving = self.serving();
        match self.fs.listxattr(ino.0) {
            // The kernel passes the list on as it is; ext4 leaves trusted.* out for callers
            // without CAP_SYS_ADMIN, which over FUSE is as close as root.
            Ok(list) if req.uid() != 0 => {
                let shown: Vec<u8> = list
                    .split_inclusive(|&b| b == 0)
                    .filter(|n| !n.starts_with(b"trusted."))
                    .flatten()
                    .copied()
                    .collect();
                xattr_reply(&shown, size, reply)
            }
            Ok(list) => xattr_reply(&list, size, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _serving = self.serving();
        done(self.fs.removexattr(ino.0, name.as_bytes()), reply)
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _serving = self.serving();
        // With default_permissions the kernel has checked; this only says the inode exists.
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _serving = self.serving();
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let how = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => FallocMode::Allocate { keep_size: keep },
            libc::FALLOC_FL_PUNCH_HOLE if keep => FallocMode::PunchHole,
            libc::FALLOC_FL_ZERO_RANGE => FallocMode::ZeroRange { keep_size: keep },
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        done(self.fs.fallocate(ino.0, offset, length, how), reply)
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let _serving = self.serving();
        let Ok(off) = u64::try_from(offset) else { return reply.error(Errno::ENXIO) };
        let r = match whence {
            libc::SEEK_DATA => self.fs.seek_data(ino.0, off),
            libc::SEEK_HOLE => self.fs.seek_hole(ino.0, off),
            _ => return reply.error(Errno::EINVAL),
        };
        match r {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _serving = self.serving();
        match direct::ioctl(&self.fs, self.direct.as_ref(), req.uid(), (ino.0, fh.0), cmd, in_data) {
            Ok(bytes) if bytes.len() <= out_size as usize => reply.ioctl(0, &bytes),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _serving = self.serving();
        // One chunk per request, at most 1 MiB: the caller loops, as with a short write.
        let mut buf = vec![0u8; len.min(1 << 20) as usize];
        let r =
            self.fs.read(ino_in.0, &mut buf, offset_in).and_then(|n| self.fs.write(ino_out.0, &buf[..n], offset_out));
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
