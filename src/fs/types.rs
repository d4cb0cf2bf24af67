//! The facade's value types: who acts, what stat and statfs report, what setattr and rename
//! take, mkfs options, and the mapping protections.

use crate::inode::Timespec;
use crate::journal::RecoveryReport;
use crate::layout::{mode, Geometry};

/// Most hard links one inode may have.
pub const LINK_MAX: u32 = 65000;

/// Who is acting: owner of what gets created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
}

impl Creds {
    pub const ROOT: Creds = Creds { uid: 0, gid: 0 };

    /// The effective ids of this process.
    pub fn current() -> Creds {
        #[cfg(miri)]
        return Creds::ROOT; // miri answers no id query; its subset acts as root
        #[cfg(not(miri))]
        Creds { uid: rustix::process::geteuid().as_raw(), gid: rustix::process::getegid().as_raw() }
    }
}

/// mkfs parameters.
#[derive(Debug, Clone)]
pub struct MkfsOptions {
    pub block_size: u32,
    /// 0: one inode per 16 KiB.
    pub inodes: u64,
    /// 0: chosen by size.
    pub journal_bytes: u64,
    pub label: String,
    /// Format a device that already holds a udax file system (mkfs refuses it otherwise).
    pub overwrite: bool,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions { block_size: 4096, inodes: 0, journal_bytes: 0, label: String::new(), overwrite: false }
    }
}

/// What stat(2) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stat {
    pub ino: u64,
    pub generation: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte units allocated.
    pub blocks: u64,
    pub blksize: u32,
    pub rdev: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
}

/// One directory entry as readdir reports it. `cookie` resumes after this entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    /// DT_* type.
    pub dtype: u8,
    pub cookie: u64,
}

/// A time to set: a given one, or now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(Timespec),
}

/// Attribute changes for [`Fs::setattr`](crate::Fs::setattr); `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// The caller, when the change drops set-ID bits as Linux drops them (a front end serving
    /// other processes): a chown of a non-directory always, a size change when the caller
    /// lacks CAP_FSETID (the front end decides; udax takes it as asked). In the same
    /// transaction as the change, and not with an explicit `mode`.
    pub drop_set_id: Option<Creds>,
}

/// The set-ID bits a write, truncate or chown of a non-directory drops, as Linux decides it:
/// set-user-ID always; set-group-ID when the file is group-executable, and for a chown by
/// someone neither root nor in the file's group (`outsider`) even when it is not.
pub(crate) fn killed_set_id(mode: u32, outsider: bool) -> u32 {
    if mode::is_dir(mode) {
        return 0;
    }
    let sgid = mode & mode::S_ISGID != 0 && (mode & 0o010 != 0 || outsider);
    (mode & mode::S_ISUID) | if sgid { mode::S_ISGID } else { 0 }
}

/// Space and inode counts, as statfs(2) reports them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StatFs {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub inodes: u64,
    pub inodes_free: u64,
    pub name_max: u32,
}

/// rename(2) flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenameMode {
    #[default]
    Replace,
    NoReplace,
    Exchange,
}

/// Facts about a mounted image, for `udax info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsInfo {
    pub geometry: Geometry,
    pub device: crate::device::DeviceInfo,
    pub uuid: String,
    pub label: String,
    pub mkfs_time: i64,
    pub statfs: StatFs,
    pub recovery: RecoveryReport,
    pub durability: &'static str,
}

/// The page size mappings work in.
pub const PAGE: u64 = 4096;

/// Size of a large first-store allocation.
pub const HUGE: u64 = 2 << 20;

/// What a mapping's pages allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    Read,
    ReadWrite,
}

/// Whether stores reach the file (`Shared`) or copy on write (`Private`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    Shared,
    Private,
}

/// Fault-service counters since mount (`udax io stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MmapStats {
    /// Loads from pages with no data, served with zeros.
    pub faults_zero_page: u64,
    /// First stores (and loads of partly written pages) that allocated or converted a page.
    pub faults_first_store: u64,
    /// First stores that allocated and mapped 2 MiB at once.
    pub faults_huge: u64,
    /// First stores that allocated a cluster of hole pages at once (mapping budget pressure).
    pub faults_clustered: u64,
    /// Faults at or past the page holding EOF, and faults that could not be served: SIGBUS.
    pub faults_sigbus: u64,
    /// Faults on written pages mapped from the device at fault time.
    pub faults_mapped: u64,
    /// Faults served with a copy (private mappings, or written pages past the map budget).
    pub faults_copied: u64,
    /// Pages mapped from the device at mmap time.
    pub pages_mapped_eagerly: u64,
    /// Pages reset in live mappings by truncate, punch, zero range and writes into holes.
    pub pages_invalidated: u64,
    /// Only faults raised in user mode are served: the process may not handle those a system
    /// call raises (it lacks CAP_SYS_PTRACE and vm.unprivileged_userfaultfd is 0), so a system
    /// call touching a mapped page not yet faulted in (read(2) into a mapping) fails with
    /// EFAULT. Loads and stores by the program itself are served either way.
    pub user_mode_only: bool,
}
