//! The one error type of udax, and the errno a kernel file system would return for each case.

use std::fmt;

/// Every failure udax reports. Front ends turn it into an errno with [`Error::errno`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("no space left on device")]
    NoSpace,
    #[error("no space left on the host file system that holds the image: {0}")]
    HostFull(String),
    #[error("no free inodes left on device")]
    NoInodes,
    #[error("file name too long (more than 255 bytes)")]
    NameTooLong,
    #[error("invalid file name {0:?}")]
    BadName(String),
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("illegal seek: a FIFO, socket or device file has no offset to read or write at")]
    NotSeekable,
    #[error("directory not empty")]
    NotEmpty,
    #[error("too many links")]
    TooManyLinks,
    #[error("too many levels of symbolic links")]
    Loop,
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("permission denied: {0}")]
    AccessDenied(&'static str),
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    #[error("file too large")]
    FileTooBig,
    #[error("no data or hole at or past that offset")]
    NoSuchOffset,
    #[error("no such attribute")]
    NoAttr,
    #[error("result out of range: {0}")]
    Range(&'static str),
    #[error("argument list too long: {0}")]
    TooBig(&'static str),
    #[error(
        "out of memory mappings: udax's mappings keep to {budget} of this process's VMAs \
         (half of vm.max_map_count; raise it with `sysctl vm.max_map_count=N`, or set \
         Fs::set_map_budget)"
    )]
    OutOfMappings { budget: u64 },
    #[error("image is in use by another process (it holds the image lock)")]
    Busy,
    #[error("image is in use by {who} (it holds the image lock){}", mount.as_ref().map(|d| format!(", mounted on {}", d.display())).unwrap_or_default())]
    InUse {
        /// The holder: its pid and command line.
        who: String,
        /// Where the image is mounted, when the holder is a udax mount server.
        mount: Option<std::path::PathBuf>,
    },
    #[error("read-only file system")]
    ReadOnly,
    #[error("read-only file system: it takes no more changes since {0}")]
    Stopped(String),
    #[error("not a udax image: {0}")]
    NotUdax(String),
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("no such device: files on a device with no descriptor (a heap device) cannot be mapped")]
    NotMappable,
    #[error("corrupt image: bad {what} at byte {at:#x}")]
    Corrupt { what: &'static str, at: u64 },
    #[error("device access out of bounds: {len} bytes at {off:#x}")]
    OutOfBounds { off: u64, len: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
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
