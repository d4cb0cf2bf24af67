//! The memory device: the one owner of the raw pointer to the mapped image.
//!
//! A `Device` maps a regular file, a /dev/shm file, a device-dax character device or anonymous
//! memory, and hands out bounds-checked loads, stores, flushes and fences. The file system above
//! never touches a pointer: every byte it reads or writes goes through a method here, which is
//! also where the counters that DESIGN.md's flush/fence table is checked against live.
//!
//! Every store method writes back the cache lines it touched (or used non-temporal stores), so a
//! caller's only persistence duty is [`Device::fence`].

mod counters;
mod floor;
mod lock;
mod persist;
#[cfg(feature = "crash-test")]
mod record;
mod shared;

use counters::AtomicCounters;
pub use counters::Counters;
pub use floor::Floor;
#[cfg(feature = "crash-test")]
pub use record::{FenceHook, InFlight};
pub use shared::SharedWords;

pub use persist::{FlushInsn, NtInsn, LINE};

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::error::{Error, Result};

/// Copies at least this long use non-temporal stores (measured on these machines: 4 KiB
/// nt+sfence ≈ 200 ns vs memcpy+clwb ≈ 530 ns); shorter ones use plain stores and clwb.
pub const NT_THRESHOLD: usize = 256;

/// What the device is backed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A regular file (including one on /dev/shm), mapped MAP_SHARED.
    File(PathBuf),
    /// A device-dax character device.
    DevDax(PathBuf),
    /// Anonymous shared memory: tests and the demo's scratch images.
    Anonymous,
    /// Memory from the process's allocator ([`Device::heap`]): nothing else can map it.
    Heap,
}

/// How the device was mapped, for `udax info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// `file`, `devdax`, `anonymous` or `heap` (see [`Backend`]).
    pub backend: String,
    /// The image file or device, for the backends that have one.
    pub path: Option<PathBuf>,
    /// Size of the device in bytes.
    pub len_bytes: u64,
    /// Whether the mapping took `MAP_SYNC` (flushed stores are then power-fail durable).
    pub map_sync: bool,
    /// The cache-line write-back instruction in use ([`FlushInsn::name`]).
    pub flush: &'static str,
    /// The non-temporal copy in use ([`NtInsn::name`]).
    pub nt_copy: &'static str,
}

/// A mapped memory device. See the module docs.
#[derive(Debug)]
pub struct Device {
    base: NonNull<u8>,
    len: usize,
    backend: Backend,
    map_sync: bool,
    flush: FlushInsn,
    /// Holds the exclusive advisory lock for as long as the device lives.
    file: Option<File>,
    /// A file image whose space is taken as it fills (see [`Device::back`]), rather than
    /// reserved whole when it was created.
    sparse: bool,
    /// Opened read-only: the image is mapped privately, so what is stored (a journal replay)
    /// stays in this process's view and never reaches the image.
    read_only: bool,
    counters: AtomicCounters,
    /// Crash-state recording (see [`Device::record`]); off unless a test turns it on.
    #[cfg(feature = "crash-test")]
    recording: record::Recording,
}

// SAFETY: the mapping is process-wide memory that stays valid until `Drop`. Every access to it
// is an asm copy (`persist::shared_copy`, the non-temporal stream loops), an atomic, a cache-line
// write-back or a system call — never a Rust load, store or reference — so stores racing from
// other threads, mappings or processes are no data race in Rust's memory model (the file system
// serialises conflicting writers for the bytes' meaning, not for soundness).
unsafe impl Send for Device {}
// SAFETY: as above; no `&Device` method hands out a reference or a pointer into the mapping.
unsafe impl Sync for Device {}

/// Declares one of the device's raw access methods (loads, stores, flushes, fences, the
/// descriptor): the file system's own, public only with the `crash-test` feature for the tests
/// and harnesses that read and damage images byte by byte. A program using udax goes through
/// `Fs`, which keeps the image consistent.
macro_rules! raw {
    ($(#[$m:meta])* fn $($rest:tt)*) => {
        $(#[$m])*
        #[cfg(feature = "crash-test")]
        pub fn $($rest)*
        $(#[$m])*
        #[cfg(not(feature = "crash-test"))]
        pub(crate) fn $($rest)*
    };
}

mod word;

const MAP_SHARED_VALIDATE: libc::c_int = 0x03;
const MAP_SYNC: libc::c_int = 0x80000;

impl Device {
    /// Opens an existing image (regular file, /dev/shm file or device-dax) and locks it.
    pub fn open(path: impl AsRef<Path>) -> Result<Device> {
        Self::open_as(path.as_ref(), false)
    }

    /// Opens an existing image without write access (an O_RDONLY descriptor, a shared lock, so
    /// other readers may open it too but no writer): a 0444 file or one on a read-only mount
    /// works. The image is mapped privately: stores (a journal replay at mount) change only this
    /// process's view, never the image.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Device> {
        Self::open_as(path.as_ref(), true)
    }

    /// Maps an image that its mount server holds locked, read-write and without taking the
    /// lock: for a direct client ([`crate::direct::Image`]), which stores only into blocks the
    /// server's maps give a file it has open.
    pub(crate) fn attach(path: &Path) -> Result<Device> {
        Self::open_with(path, false, false)
    }

    fn open_as(path: &Path, read_only: bool) -> Result<Device> {
        Self::open_with(path, read_only, true)
    }

    fn open_with(path: &Path, read_only: bool, locked: bool) -> Result<Device> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path.display(), e))?;
        let is_dax = meta.file_type().is_char_device();
        let what = if meta.is_dir() {
            Some("a directory")
        } else if !meta.is_file() && !is_dax {
            Some("neither a regular file nor a device-dax device")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(Error::NotUdax(format!("{} is {what}", path.display())));
        }
        // A character device must be device-dax (before it is opened: /dev/null is one too).
        let dax_len = if is_dax { Some(devdax_size(path, &meta)?) } else { None };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        if locked {
            lock::lock(&file, !read_only)?;
        }
        let len = dax_len.unwrap_or(meta.len());
        let backend = if is_dax { Backend::DevDax(path.into()) } else { Backend::File(path.into()) };
        // Fewer blocks than bytes: made with --sparse (or by an older udax), so allocations
        // reserve their space as they go.
        let sparse = !read_only && !is_dax && std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < len;
        if read_only {
            return Self::map_private(file, len, backend);
        }
        Self::map(file, len, backend, sparse)
    }

    /// Creates (or resizes) a regular file of `len_bytes`, reserves its space on the host file
    /// system (fallocate) and opens it. An existing file's contents are kept; mkfs overwrites
    /// what it needs. When the host has no room the file is removed (or given back its old
    /// size) and the error says so: a store into the image can never meet a missing page.
    pub fn create(path: impl AsRef<Path>, len_bytes: u64) -> Result<Device> {
        Self::create_as(path.as_ref(), len_bytes, false)
    }

    /// As [`Device::create`], without reserving: the image takes host space as blocks are
    /// allocated (each allocation reserves its blocks first), so a full
    /// host makes operations fail with ENOSPC, never a store fault.
    pub fn create_sparse(path: impl AsRef<Path>, len_bytes: u64) -> Result<Device> {
        Self::create_as(path.as_ref(), len_bytes, true)
    }

    fn create_as(path: &Path, len_bytes: u64, sparse: bool) -> Result<Device> {
        let existed = std::fs::metadata(path).ok();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        lock::lock(&file, true)?;
        let meta = file.metadata().map_err(|e| Error::io(path.display(), e))?;
        if meta.file_type().is_char_device() {
            let len = devdax_size(path, &meta)?;
            return Self::map(file, len, Backend::DevDax(path.into()), false);
        }
        // Whatever fails from here, the file goes back to what it was: removed if this made it,
        // its old size otherwise (an image being reformatted keeps its bytes until mkfs writes).
        let restore = file.try_clone().map_err(|e| Error::io(path.display(), e))?;
        let made = (|| {
            file.set_len(len_bytes).map_err(|e| Error::io(format!("resize {}", path.display()), e))?;
            let mut sparse = sparse;
            if !sparse {
                match reserve(&file, 0, len_bytes) {
                    Ok(()) => {}
                    // The host cannot reserve (no fallocate): space is taken as the image fills.
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => sparse = true,
                    Err(e) => return Err(host_error(path, len_bytes, e)),
                }
            }
            Self::map(file, len_bytes, Backend::File(path.into()), sparse)
        })();
        if made.is_err() {
            match &existed {
                None => drop(std::fs::remove_file(path)),
                Some(m) => drop(restore.set_len(m.len())),
            }
        }
        made
    }

    /// Anonymous shared memory of `len_bytes`, zero-filled (a memfd, so mappings of files can
    /// map its pages too).
    pub fn anonymous(len_bytes: u64) -> Result<Device> {
        if len_bytes == 0 {
            return Err(Error::InvalidArgument("device size is zero"));
        }
        // SAFETY: memfd_create(2) reads the NUL-terminated name and returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"udax-anonymous".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io("memfd_create", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(len_bytes).map_err(|e| Error::io("size anonymous device", e))?;
        Self::map(file, len_bytes, Backend::Anonymous, false)
    }

    /// A device in the process's own heap, zeroed: no descriptor, so files on it cannot be
    /// mapped, and nothing but this process's calls can store to it. For tests, among them the
    /// subset that runs under miri (which cannot model shared mappings).
    pub fn heap(len_bytes: u64) -> Result<Device> {
        let layout = heap_layout(len_bytes)?;
        // SAFETY: `heap_layout` refused a zero size, so the layout is non-zero; the result is
        // checked for null before use.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(p)
            .ok_or_else(|| Error::io("allocate heap device", std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
        Ok(Self::with(base, layout.size(), Backend::Heap, false, None, false))
    }

    /// Maps an image opened read-only: private, so stores stay in this process.
    fn map_private(file: File, len_bytes: u64, backend: Backend) -> Result<Device> {
        let len = usize::try_from(len_bytes).map_err(|_| Error::InvalidArgument("device too large"))?;
        if len == 0 {
            return Err(Error::NotUdax("the file is empty".into()));
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: `fd` is an open descriptor of at least `len` bytes (its size was just read); a
        // private mapping needs no write access to it; no address hint; checked before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(Error::io("mmap image read-only", std::io::Error::last_os_error()));
        }
        let base = NonNull::new(p.cast()).ok_or(Error::InvalidArgument("mmap returned null"))?;
        let mut dev = Self::with(base, len, backend, false, Some(file), false);
        dev.read_only = true;
        Ok(dev)
    }

    fn map(file: File, len_bytes: u64, backend: Backend, sparse: bool) -> Result<Device> {
        let len = usize::try_from(len_bytes).map_err(|_| Error::InvalidArgument("device too large"))?;
        if len == 0 {
            return Err(Error::NotUdax("the file is empty".into()));
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is an open read-write descriptor of at least `len` bytes (its size was
        // just read or set); no address hint; the result is checked before use.
        let mut p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0) };
        let map_sync = p != libc::MAP_FAILED;
        if !map_sync {
            // SAFETY: as above, without MAP_SYNC (EOPNOTSUPP off real pmem).
            p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        }
        if p == libc::MAP_FAILED {
            return Err(Error::io("mmap image", std::io::Error::last_os_error()));
        }
        let base = NonNull::new(p.cast()).ok_or(Error::InvalidArgument("mmap returned null"))?;
        Ok(Self::with(base, len, backend, map_sync, Some(file), sparse))
    }

    fn with(
        base: NonNull<u8>,
        len: usize,
        backend: Backend,
        map_sync: bool,
        file: Option<File>,
        sparse: bool,
    ) -> Device {
        Device {
            base,
            len,
            backend,
            map_sync,
            flush: persist::flush_insn(),
            file,
            sparse,
            read_only: false,
            counters: AtomicCounters::default(),
            #[cfg(feature = "crash-test")]
            recording: record::Recording::default(),
        }
    }

    /// Whether bug `which` is planted: never, without the `crash-test` feature.
    #[cfg(not(feature = "crash-test"))]
    #[inline(always)]
    pub(crate) fn planted(&self, _which: crate::sabotage::Sabotage) -> bool {
        false
    }

    /// Whether the image was opened read-only ([`Device::open_read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    raw! {
        /// The descriptor the device is mapped from, for mapping its pages elsewhere (file mmap).
        fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            self.file.as_ref().map(std::os::fd::AsFd::as_fd)
        }
    }

    /// Size of the device in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the device has no bytes (never true for an opened device).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What the device's memory is.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether the image takes host space as it fills (see [`Device::create_sparse`]).
    pub fn is_sparse(&self) -> bool {
        self.sparse
    }

    raw! {
        /// Reserves host space for `[off, off+len)` of a sparse image before anything is stored
        /// there (a no-op on any other device): ENOSPC from the host becomes an error of the
        /// operation instead of SIGBUS at the store.
        fn back(&self, off: u64, len: u64) -> Result<()> {
            self.check(off, usize::try_from(len).map_err(|_| Error::OutOfBounds { off, len })?)?;
            match self.file.as_ref().filter(|_| self.sparse) {
                None => Ok(()),
                Some(file) => match reserve(file, off, len) {
                    // A host without fallocate: nothing can be reserved ahead (as before udax
                    // reserved anything).
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
                    Err(e) => Err(match &self.backend {
                        Backend::File(p) => host_error(p, len, e),
                        _ => Error::io("reserve image space", e),
                    }),
                    Ok(()) => Ok(()),
                },
            }
        }
    }

    /// Allocates and maps every page of the image now (MADV_POPULATE_WRITE), for images held
    /// in memory (a tmpfs file, an anonymous device): their host pages are otherwise allocated
    /// and cleared at first touch, a cost that the memory of a pmem or CXL device, present all
    /// along, does not have. Benchmarks use it to measure udax rather than that emulation; on an
    /// image on disk it would read and dirty the whole file.
    pub fn populate(&self) -> Result<()> {
        // SAFETY: advice over exactly the device's own mapping, which lives until drop;
        // populating writes no byte (pages read as they were).
        let rc = unsafe { libc::madvise(self.base.as_ptr().cast(), self.len, libc::MADV_POPULATE_WRITE) };
        if rc != 0 {
            return Err(Error::io("populate the image", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Maps the pages of `[off, off+len)` now (MADV_POPULATE_WRITE, rounded out to pages), so
    /// that stores there take no page fault: what a direct client does with the blocks a lease
    /// gives it, once, rather than one fault per page in its appends.
    pub(crate) fn prefault(&self, off: u64, len: u64) -> Result<()> {
        let page = 4096; // the base page size (the device maps page-aligned)
        let (start, end) = (off / page * page, off.saturating_add(len).next_multiple_of(page).min(self.len as u64));
        let at = self.check(start, (end.saturating_sub(start)) as usize)?;
        // SAFETY: `check` proved `[at, at + end - start)` lies inside the device's own mapping,
        // which lives until drop, and `at` is page-aligned (the base is); populating writes no
        // byte (pages read as they were).
        let rc = unsafe {
            libc::madvise(self.base.as_ptr().add(at).cast(), (end - start) as usize, libc::MADV_POPULATE_WRITE)
        };
        if rc != 0 {
            return Err(Error::io("populate the image", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Whether MAP_SYNC held when the image was mapped (only on real DAX media).
    pub fn map_sync(&self) -> bool {
        self.map_sync
    }

    /// How the device is mapped and which persistence instructions it uses, for `udax info`.
    pub fn info(&self) -> DeviceInfo {
        let (backend, path) = match &self.backend {
            Backend::File(p) => ("file", Some(p.clone())),
            Backend::DevDax(p) => ("devdax", Some(p.clone())),
            Backend::Anonymous => ("anonymous", None),
            Backend::Heap => ("heap", None),
        };
        DeviceInfo {
            backend: backend.into(),
            path,
            len_bytes: self.len(),
            map_sync: self.map_sync,
            flush: self.flush.name(),
            nt_copy: persist::nt_insn().name(),
        }
    }

    /// Checks that `[off, off+len)` lies inside the device and returns it as a `usize` offset.
    fn check(&self, off: u64, len: usize) -> Result<usize> {
        let end = off.checked_add(len as u64).ok_or(Error::OutOfBounds { off, len: len as u64 })?;
        if end > self.len as u64 {
            return Err(Error::OutOfBounds { off, len: len as u64 });
        }
        Ok(off as usize)
    }

    raw! {
        /// Copies device bytes at `off` into `buf`.
        fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
            let at = self.check(off, buf.len())?;
            // SAFETY: `check` proved `[at, at+len)` lies inside the mapping, alive until drop; `buf`
            // is a distinct Rust buffer, so the ranges cannot overlap.
            unsafe { persist::shared_copy(buf.as_mut_ptr(), self.base.as_ptr().add(at), buf.len()) };
            Ok(())
        }
    }

    raw! {
        /// Reads a plain on-media struct at `off`.
        fn read_obj<T: FromBytes + IntoBytes>(&self, off: u64) -> Result<T> {
            let mut v = T::new_zeroed();
            self.read(off, v.as_mut_bytes())?;
            Ok(v)
        }
    }

    raw! {
        /// Stores `src` at `off` and writes back the touched lines (non-temporal when long). The
        /// caller fences.
        fn write(&self, off: u64, src: &[u8]) -> Result<()> {
            let at = self.check(off, src.len())?;
            // SAFETY: `check` proved the destination lies inside the mapping; `src` is a Rust slice
            // outside the mapping's ownership, so the ranges do not overlap.
            let lines = unsafe {
                let dst = self.base.as_ptr().add(at);
                if src.len() >= NT_THRESHOLD {
                    self.count_nt(src.len());
                    persist::nt_copy(dst, src.as_ptr(), src.len(), self.flush)
                } else {
                    persist::shared_copy(dst, src.as_ptr(), src.len());
                    persist::flush_range(dst, src.len(), self.flush)
                }
            };
            self.counters.mine().flush_lines.fetch_add(lines, Ordering::Relaxed);
            self.note(off, src.len() as u64);
            Ok(())
        }
    }

    raw! {
        /// Stores `src` at `off` with plain stores and writes nothing back: the lines stay in
        /// the cache until the caller writes them back ([`Device::flush`]) and fences. The
        /// journal applies its entries this way and writes them back at the checkpoint.
        fn write_cached(&self, off: u64, src: &[u8]) -> Result<()> {
            let at = self.check(off, src.len())?;
            // SAFETY: `check` proved the destination lies inside the mapping; `src` is a Rust slice
            // outside the mapping's ownership, so the ranges do not overlap.
            unsafe { persist::shared_copy(self.base.as_ptr().add(at), src.as_ptr(), src.len()) };
            self.counters.mine().cached_lines.fetch_add(persist::lines(off, src.len() as u64), Ordering::Relaxed);
            self.note_cached(off, src.len() as u64);
            Ok(())
        }
    }

    raw! {
        /// Stores a plain on-media struct at `off` and writes back its lines.
        fn write_obj<T: IntoBytes + Immutable>(&self, off: u64, v: &T) -> Result<()> {
            self.write(off, v.as_bytes())
        }
    }

    raw! {
        /// Zero-fills `[off, off+len)` and writes it back. The caller fences.
        fn zero(&self, off: u64, len: u64) -> Result<()> {
            let n = usize::try_from(len).map_err(|_| Error::OutOfBounds { off, len })?;
            let at = self.check(off, n)?;
            self.count_nt(n);
            // SAFETY: `check` proved `[at, at+n)` lies inside the mapping.
            let lines = unsafe { persist::nt_zero(self.base.as_ptr().add(at), n, self.flush) };
            self.counters.mine().flush_lines.fetch_add(lines, Ordering::Relaxed);
            self.note(off, len);
            Ok(())
        }
    }

    raw! {
        /// Writes back the cache lines of `[off, off+len)` (for stores made through a mapping).
        fn flush(&self, off: u64, len: u64) -> Result<()> {
            let n = usize::try_from(len).map_err(|_| Error::OutOfBounds { off, len })?;
            let at = self.check(off, n)?;
            // SAFETY: `check` proved the range lies inside the mapping.
            let lines = unsafe { persist::flush_range(self.base.as_ptr().add(at), n, self.flush) };
            self.counters.mine().flush_lines.fetch_add(lines, Ordering::Relaxed);
            self.note(off, len);
            Ok(())
        }
    }

    raw! {
        /// Orders all earlier write-backs and non-temporal stores before later stores: after it,
        /// everything stored through this device so far is persistent.
        fn fence(&self) {
            persist::sfence();
            self.counters.mine().fences.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "crash-test")]
            self.ordered();
        }
    }

    /// For the crash-state recorder: the calling thread just ran an instruction that orders its
    /// earlier write-backs and non-temporal stores as a fence does (a fence, or a lock's release,
    /// which on x86 is a locked `xchg`). Those lines persist from here on.
    #[cfg(feature = "crash-test")]
    pub(crate) fn ordered(&self) {
        self.recording.fenced();
        // Outside the recorder's lock: the explorer's interleaved threads change turns here.
        crate::turnstile::at_fence();
    }

    /// Tells the crash-state recorder, when there is one, that `[off, off+len)` was stored to
    /// and written back.
    #[inline(always)]
    fn note(&self, off: u64, len: u64) {
        #[cfg(feature = "crash-test")]
        self.note_store(off, len, true);
        #[cfg(not(feature = "crash-test"))]
        let _ = (off, len);
    }

    /// Tells the crash-state recorder that `[off, off+len)` was stored to and stays in the cache.
    #[inline(always)]
    fn note_cached(&self, off: u64, len: u64) {
        #[cfg(feature = "crash-test")]
        self.note_store(off, len, false);
        #[cfg(not(feature = "crash-test"))]
        let _ = (off, len);
    }

    /// Makes everything durable across power loss when the medium is a page-cache file:
    /// msync of the whole mapping. A no-op for anonymous memory.
    pub fn sync(&self) -> Result<()> {
        if self.file.is_none() || self.read_only {
            return Ok(());
        }
        // SAFETY: `base` and `len` describe exactly the mapping made in `map`.
        let rc = unsafe { libc::msync(self.base.as_ptr().cast(), self.len, libc::MS_SYNC) };
        if rc != 0 {
            return Err(Error::io("msync image", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Persistence work issued so far.
    pub fn counters(&self) -> Counters {
        Counters {
            flush_lines: self.counters.sum(|s| &s.flush_lines),
            fences: self.counters.sum(|s| &s.fences),
            nt_bytes: self.counters.sum(|s| &s.nt_bytes),
            cached_lines: self.counters.sum(|s| &s.cached_lines),
        }
    }

    fn count_nt(&self, n: usize) {
        self.counters.mine().nt_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.backend == Backend::Heap {
            if let Ok(layout) = heap_layout(self.len as u64) {
                // SAFETY: `base` came from `alloc_zeroed` with this very layout (same length, in
                // `Device::heap`); nothing borrows into it.
                unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
            }
            return;
        }
        // SAFETY: `base`/`len` are exactly the mapping made at construction; nothing borrows
        // into it (only raw pointers were handed out, documented as valid while `self` lives).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The allocation of a heap device of `len_bytes`: page-aligned, as a mapping would be.
fn heap_layout(len_bytes: u64) -> Result<std::alloc::Layout> {
    let len = usize::try_from(len_bytes).map_err(|_| Error::InvalidArgument("device too large"))?;
    if len == 0 {
        return Err(Error::InvalidArgument("device size is zero"));
    }
    std::alloc::Layout::from_size_align(len, 4096).map_err(|_| Error::InvalidArgument("device too large"))
}

/// fallocate(2) of `[off, off+len)` of `file`: the host's space for it, taken now.
fn reserve(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    loop {
        // SAFETY: fallocate(2) on an open descriptor with mode 0 (allocate, keep the contents);
        // it touches no memory of this process.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, off as libc::off_t, len as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The error for a reservation the host refused, naming the file system that holds the image.
fn host_error(path: &Path, len: u64, e: std::io::Error) -> Error {
    if e.raw_os_error() != Some(libc::ENOSPC) {
        return Error::io(format!("reserve space for {}", path.display()), e);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Error::HostFull(format!(
        "{} has no room for {len} more bytes for {}; free space there, or make a sparse image \
         (`udax mkfs --sparse`), which takes space as it fills",
        dir.display(),
        path.display()
    ))
}

/// The size of the device-dax device `dev` (from sysfs); any other character device (one
/// with no dax size there, such as /dev/null) is not an image.
fn devdax_size(dev: &Path, meta: &std::fs::Metadata) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let base = format!("/sys/dev/char/{major}:{minor}");
    let is_dax =
        std::fs::read_link(format!("{base}/subsystem")).is_ok_and(|s| s.file_name().is_some_and(|n| n == "dax"));
    if !is_dax {
        return Err(Error::NotUdax(format!("{} is a character device that is not device-dax", dev.display())));
    }
    let path = format!("{base}/size");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    text.trim().parse().map_err(|_| Error::NotUdax(format!("{path} does not hold a size")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The devices a test runs on: a heap one and a mapped one (under miri, which models no
    /// shared mapping, the heap one only).
    fn devices(len: u64) -> Vec<Device> {
        let mut v = vec![Device::heap(len).unwrap()];
        if !cfg!(miri) {
            v.push(Device::anonymous(len).unwrap());
        }
        v
    }

    #[test]
    fn bounds_are_checked() {
        for d in devices(8192) {
            let mut b = [0u8; 16];
            assert!(d.read(8190, &mut b).is_err());
            assert!(d.write(u64::MAX - 3, &b).is_err());
            assert!(d.store_u64(4, 1).is_err());
            d.write(100, &[7; 300]).unwrap();
            d.read(100, &mut b).unwrap();
            assert_eq!(b, [7; 16]);
        }
    }

    #[test]
    fn nt_copy_handles_every_alignment() {
        for d in devices(1 << 16) {
            nt_copy_at_every_alignment(&d);
        }
    }

    fn nt_copy_at_every_alignment(d: &Device) {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        for off in [0u64, 1, 15, 17, 33, 63, 4095] {
            for len in [0usize, 1, 63, 64, 65, 256, 257, 300, 4096, 4999] {
                d.zero(0, 1 << 16).unwrap();
                d.write(off, &src[..len]).unwrap();
                let mut back = vec![0u8; len + 2];
                d.read(off.saturating_sub(1), &mut back[..len + 1]).unwrap();
                let start = usize::from(off > 0);
                assert_eq!(&back[start..start + len], &src[..len], "off {off} len {len}");
                let mut after = [1u8; 1];
                d.read(off + len as u64, &mut after).unwrap();
                assert_eq!(after, [0], "wrote past the end at off {off} len {len}");
            }
        }
        assert!(d.counters().nt_bytes > 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "opens and locks files")]
    fn second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let _a = Device::create(&p, 1 << 20).unwrap();
        assert!(matches!(Device::open(&p), Err(Error::InUse { .. })));
    }
}
