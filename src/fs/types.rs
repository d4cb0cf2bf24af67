//! The facade's value types: who acts, what stat and statfs report, what setattr and rename
//! take, mkfs options, and the mapping protections.

use std::time::Duration;

use crate::inode::Timespec;
use crate::journal::RecoveryReport;
use crate::layout::{mode, Geometry};

/// Most hard links one inode may have.
pub const LINK_MAX: u32 = 65000;

/// Who is acting: owner of what gets created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creds {
    /// Effective user ID.
    pub uid: u32,
    /// Effective group ID.
    pub gid: u32,
}

impl Creds {
    /// The superuser (uid and gid 0), whom no permission check stops.
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
    /// Block size in bytes: 1024, 2048 or 4096 (the default).
    pub block_size: u32,
    /// Number of inodes; 0: one per 16 KiB of image.
    pub inodes: u64,
    /// Journal ring size in bytes, a multiple of 4 KiB and at least 16 KiB; 0: 1/64 of the
    /// image, between 256 KiB and 16 MiB.
    pub journal_bytes: u64,
    /// Volume label, at most 31 bytes kept.
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
    /// Inode number.
    pub ino: u64,
    /// Generation of the inode slot: with `ino`, names this inode and no later one that reuses
    /// the number (NFS-style file handles).
    pub generation: u32,
    /// File type and permission bits ([`mode`](crate::mode)).
    pub mode: u32,
    /// Number of hard links (a directory: 2 plus one per subdirectory).
    pub nlink: u32,
    /// Owner user ID.
    pub uid: u32,
    /// Owner group ID.
    pub gid: u32,
    /// Size in bytes (a symbolic link: the length of its target).
    pub size: u64,
    /// 512-byte units allocated.
    pub blocks: u64,
    /// Preferred I/O size in bytes: the block size, at least 4096.
    pub blksize: u32,
    /// Device number of a character or block device node; 0 otherwise.
    pub rdev: u64,
    /// Last access.
    pub atime: Timespec,
    /// Last change of the content.
    pub mtime: Timespec,
    /// Last change of the inode (content or attributes).
    pub ctime: Timespec,
    /// Creation time.
    pub crtime: Timespec,
}

/// One directory entry as readdir reports it. `cookie` resumes after this entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name, bytes without `/` or NUL.
    pub name: Vec<u8>,
    /// The inode it names.
    pub ino: u64,
    /// DT_* type.
    pub dtype: u8,
    /// Pass to [`Fs::readdir`](crate::Fs::readdir) to continue after this entry.
    pub cookie: u64,
}

/// A time to set: a given one, or now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// The current time (`UTIME_NOW`).
    Now,
    /// This time.
    At(Timespec),
}

/// Attribute changes for [`Fs::setattr`](crate::Fs::setattr); `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New permission bits (chmod); the file type bits are ignored.
    pub mode: Option<u32>,
    /// New owner (chown).
    pub uid: Option<u32>,
    /// New group (chown).
    pub gid: Option<u32>,
    /// New size in bytes (truncate): frees blocks past it, or extends with a hole.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
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
    /// Block size in bytes.
    pub block_size: u64,
    /// Data blocks on the image (metadata areas excluded).
    pub blocks: u64,
    /// Data blocks free to allocate.
    pub blocks_free: u64,
    /// Inode slots on the image.
    pub inodes: u64,
    /// Inode slots free.
    pub inodes_free: u64,
    /// Longest name in bytes (255).
    pub name_max: u32,
}

/// rename(2) flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenameMode {
    /// Replace the destination if it exists (plain rename(2)).
    #[default]
    Replace,
    /// Fail with [`Error::Exists`](crate::Error::Exists) if the destination exists
    /// (`RENAME_NOREPLACE`).
    NoReplace,
    /// Swap the two names atomically; both must exist (`RENAME_EXCHANGE`).
    Exchange,
}

/// Facts about a mounted image, for `udax info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsInfo {
    /// Where the image's structures lie.
    pub geometry: Geometry,
    /// How the device is mapped.
    pub device: crate::device::DeviceInfo,
    /// The image's UUID, 32 hex digits.
    pub uuid: String,
    /// The volume label (empty when none).
    pub label: String,
    /// When mkfs made the image, in seconds since the Unix epoch.
    pub mkfs_time: i64,
    /// Block and inode counts.
    pub statfs: StatFs,
    /// What recovery replayed at mount.
    pub recovery: RecoveryReport,
    /// How long the mount took, step by step.
    pub mount: MountReport,
    /// What a returned operation survives on this device, in words.
    pub durability: &'static str,
}

/// The page size mappings work in.
pub const PAGE: u64 = 4096;

/// Size in bytes of a large first-store allocation: a first store into a hole of a mapping
/// may allocate and map this much, aligned, at once.
pub const HUGE: u64 = 2 << 20;

/// What a mapping's pages allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    /// Loads only (`PROT_READ`); a store raises SIGSEGV.
    Read,
    /// Loads and stores (`PROT_READ|PROT_WRITE`).
    ReadWrite,
}

/// Whether stores reach the file (`Shared`) or copy on write (`Private`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// `MAP_SHARED`: stores reach the file (and other mappings of it).
    Shared,
    /// `MAP_PRIVATE`: the first store to a page copies it; the file never sees the stores.
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

/// How long each step of a mount took, and how much it went through ([`crate::Fs::mount_report`]).
/// `Display` writes it on one line; serialized, the durations are `*_ns` nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MountReport {
    /// Checking the superblock and replaying the journal.
    #[serde(rename = "replay_ns", serialize_with = "nanos")]
    pub replay: Duration,
    /// The pass over the inode table: every slot decoded, every directory's data read.
    #[serde(rename = "inodes_ns", serialize_with = "nanos")]
    pub inodes: Duration,
    /// Decoding every directory's entries and checking each against the inode it names (the
    /// indexes themselves are built on first use).
    #[serde(rename = "directories_ns", serialize_with = "nanos")]
    pub directories: Duration,
    /// The walk up directories' parent fields that rules out cycles.
    #[serde(rename = "tree_ns", serialize_with = "nanos")]
    pub tree: Duration,
    /// Rebuilding the table of free inode numbers, and the directories' nodes.
    #[serde(rename = "numbers_ns", serialize_with = "nanos")]
    pub numbers: Duration,
    /// Rebuilding the free-space map from every inode's blocks.
    #[serde(rename = "free_space_ns", serialize_with = "nanos")]
    pub free_space: Duration,
    /// Freeing orphans (inodes unlinked while open when the last mount ended).
    #[serde(rename = "orphans_ns", serialize_with = "nanos")]
    pub orphans: Duration,
    /// The whole mount.
    #[serde(rename = "total_ns", serialize_with = "nanos")]
    pub total: Duration,
    /// Inodes in use.
    pub inodes_used: u64,
    /// Directories among them.
    pub directories_used: u64,
    /// Directory entries decoded.
    pub entries: u64,
    /// Orphans freed.
    pub orphans_freed: u64,
    /// Threads the inode and directory passes were split among.
    pub threads: usize,
}

impl std::fmt::Display for MountReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "{:.1} ms: replay {:.1}, inodes {:.1} ({} in use), directories {:.1} ({} with {} entries), tree {:.1}, \
             numbers {:.1}, free space {:.1}, orphans {:.1} ({} freed); {} thread(s)",
            ms(self.total),
            ms(self.replay),
            ms(self.inodes),
            self.inodes_used,
            ms(self.directories),
            self.directories_used,
            self.entries,
            ms(self.tree),
            ms(self.numbers),
            ms(self.free_space),
            ms(self.orphans),
            self.orphans_freed,
            self.threads
        )
    }
}

fn nanos<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
