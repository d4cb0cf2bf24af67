//! The one error type of udax, and the errno a kernel file system would return for each case.

use std::fmt;

/// Every failure udax reports. Front ends turn it into an errno with [`Error::errno`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path component or inode does not exist (`ENOENT`).
    #[error("no such file or directory")]
    NotFound,
    /// The name is already taken (`EEXIST`).
    #[error("file exists")]
    Exists,
    /// The device has no free blocks left for the operation (`ENOSPC`).
    #[error("no space left on device")]
    NoSpace,
    /// The host file system holding a sparse image could not reserve space for newly allocated
    /// blocks; the string names it and what to do (`ENOSPC`).
    #[error("no space left on the host file system that holds the image: {0}")]
    HostFull(String),
    /// Every inode slot of the image is in use (`ENOSPC`).
    #[error("no free inodes left on device")]
    NoInodes,
    /// A name component is longer than 255 bytes (`ENAMETOOLONG`).
    #[error("file name too long (more than 255 bytes)")]
    NameTooLong,
    /// A name that cannot be a directory entry: empty, `.`, `..`, or containing `/` or NUL
    /// (`EINVAL`).
    #[error("invalid file name {0:?}")]
    BadName(String),
    /// A directory was needed and something else was found (`ENOTDIR`).
    #[error("not a directory")]
    NotDir,
    /// The operation does not apply to a directory (`EISDIR`).
    #[error("is a directory")]
    IsDir,
    /// Positioned I/O on a FIFO, socket or device node (`ESPIPE`).
    #[error("illegal seek: a FIFO, socket or device file has no offset to read or write at")]
    NotSeekable,
    /// The directory to remove or replace still has entries (`ENOTEMPTY`).
    #[error("directory not empty")]
    NotEmpty,
    /// The inode already has [`LINK_MAX`](crate::LINK_MAX) links (`EMLINK`).
    #[error("too many links")]
    TooManyLinks,
    /// Path resolution followed too many symbolic links (`ELOOP`).
    #[error("too many levels of symbolic links")]
    Loop,
    /// The caller lacks the privilege or ownership the operation needs; the string names the
    /// rule (`EPERM`).
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// A permission bit forbids the access; the string names which (`EACCES`).
    #[error("permission denied: {0}")]
    AccessDenied(&'static str),
    /// An argument out of its domain; the string says which (`EINVAL`).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The operation would grow a file past [`MAX_FILE_SIZE`](crate::MAX_FILE_SIZE) (`EFBIG`).
    #[error("file too large")]
    FileTooBig,
    /// `SEEK_DATA` or `SEEK_HOLE` found nothing at or past the offset (`ENXIO`).
    #[error("no data or hole at or past that offset")]
    NoSuchOffset,
    /// The extended attribute does not exist (`ENODATA`).
    #[error("no such attribute")]
    NoAttr,
    /// A result does not fit the caller's buffer or a field's range; the string says which
    /// (`ERANGE`).
    #[error("result out of range: {0}")]
    Range(&'static str),
    /// An argument is too large, such as an attribute list over its limit; the string says
    /// which (`E2BIG`).
    #[error("argument list too long: {0}")]
    TooBig(&'static str),
    /// Mapping another file would exceed udax's share of the process's memory-map areas
    /// (see [`set_map_budget`](crate::set_map_budget)) (`ENOMEM`).
    #[error(
        "out of memory mappings: udax's mappings keep to {budget} of this process's VMAs \
         (half of vm.max_map_count; raise it with `sysctl vm.max_map_count=N`, or set \
         Fs::set_map_budget)"
    )]
    OutOfMappings {
        /// The budget in memory-map areas that was reached.
        budget: u64,
    },
    /// The image is in use by a holder udax cannot name (`EBUSY`).
    #[error("image is in use by another process (it holds the image lock)")]
    Busy,
    /// Another process holds the image lock (`EBUSY`).
    #[error("image is in use by {who} (it holds the image lock){}", mount.as_ref().map(|d| format!(", mounted on {}", d.display())).unwrap_or_default())]
    InUse {
        /// The holder: its pid and command line.
        who: String,
        /// Where the image is mounted, when the holder is a udax mount server.
        mount: Option<std::path::PathBuf>,
    },
    /// The file system was opened read-only (`EROFS`).
    #[error("read-only file system")]
    ReadOnly,
    /// The file system stopped taking changes after a failure that may have left memory differing
    /// from the medium (a panic during a change, a full host); the string says why. Reads still
    /// work (`EROFS`).
    #[error("read-only file system: it takes no more changes since {0}")]
    Stopped(String),
    /// The image does not start with a udax superblock; the string says what was found
    /// (`EINVAL`).
    #[error("not a udax image: {0}")]
    NotUdax(String),
    /// A udax image this version cannot open, or an operation it does not implement; the
    /// string says which (`EOPNOTSUPP`).
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The device has no file descriptor (an anonymous device), so its files cannot be
    /// memory mapped (`ENODEV`).
    #[error("no such device: files on a device with no descriptor (a heap device) cannot be mapped")]
    NotMappable,
    /// A structure on the medium failed its checks (`EUCLEAN`).
    #[error("corrupt image: bad {what} at byte {at:#x}")]
    Corrupt {
        /// Which structure or field was bad.
        what: &'static str,
        /// Device byte offset of the bad structure.
        at: u64,
    },
    /// An access past the end of the device (`EIO`).
    #[error("device access out of bounds: {len} bytes at {off:#x}")]
    OutOfBounds {
        /// Device byte offset of the access.
        off: u64,
        /// Length of the access in bytes.
        len: u64,
    },
    /// An operating-system call failed (its own errno).
    #[error("{context}: {source}")]
    Io {
        /// What udax was doing, such as the path it was opening.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno a kernel file system would give for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NoSpace => libc::ENOSPC,
            Error::HostFull(_) => libc::ENOSPC,
            Error::NoInodes => libc::ENOSPC,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::BadName(_) => libc::EINVAL,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotSeekable => libc::ESPIPE,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::TooManyLinks => libc::EMLINK,
            Error::Loop => libc::ELOOP,
            Error::NotPermitted(_) => libc::EPERM,
            Error::AccessDenied(_) => libc::EACCES,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::FileTooBig => libc::EFBIG,
            Error::NoSuchOffset => libc::ENXIO,
            Error::NoAttr => libc::ENODATA,
            Error::Range(_) => libc::ERANGE,
            Error::TooBig(_) => libc::E2BIG,
            Error::OutOfMappings { .. } => libc::ENOMEM,
            Error::Busy => libc::EBUSY,
            Error::InUse { .. } => libc::EBUSY,
            Error::ReadOnly => libc::EROFS,
            Error::Stopped(_) => libc::EROFS,
            Error::NotUdax(_) => libc::EINVAL,
            Error::Unsupported(_) => libc::EOPNOTSUPP,
            Error::NotMappable => libc::ENODEV,
            Error::Corrupt { .. } => libc::EUCLEAN,
            Error::OutOfBounds { .. } => libc::EIO,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// Wraps an OS error with what was being done.
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io { context: context.to_string(), source }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { source, .. } => source,
            other => std::io::Error::from_raw_os_error(other.errno()),
        }
    }
}
