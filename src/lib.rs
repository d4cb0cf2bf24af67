//! udax: a crash-consistent direct-access (DAX) file system for persistent and CXL memory, in
//! user space.
//!
//! The device is memory: reads and writes copy straight between the caller's buffer and the
//! mapped medium, and every metadata change is atomic and durable when the call returns
//! (a checksummed redo journal, one fence per commit). [`Fs`] is the whole API; the CLI and
//! other front ends only translate.
//!
//! ```
//! use udax::{Device, Fs, MkfsOptions, OpenOptions};
//! use std::io::{Read, Write};
//!
//! let fs = Fs::mkfs(Device::anonymous(64 << 20)?, &MkfsOptions::default())?;
//! fs.mkdir_all("/docs", 0o755)?;
//! let mut f = fs.open("/docs/hello.txt", OpenOptions::create())?;
//! f.write_all(b"hello, persistent memory")?;   // durable when it returns
//! let mut back = String::new();
//! fs.open("/docs/hello.txt", OpenOptions::read_only())?.read_to_string(&mut back)?;
//! assert_eq!(back, "hello, persistent memory");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Cargo features, all test machinery and off by default: `crash-test` (the crash explorer, the
//! corrupt-image harness, the crash-state recorder and sabotage switches, and the format modules
//! they build images with), `faults` (fault injection for the failure-atomicity test) and
//! `model` (shuttle's threads and a simulated userfaultfd for the model check).
#![deny(unsafe_code)]
#![deny(missing_docs)]

/// Declares modules that are internals: private to the crate, and public only with the
/// `crash-test` feature, for the crash explorer, the corrupt-image harness and the tests that
/// build images byte by byte.
macro_rules! internal {
    ($($(#[$attr:meta])* mod $name:ident;)*) => {$(
        $(#[$attr])*
        #[cfg(feature = "crash-test")]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "crash-test"))]
        mod $name;
    )*};
}

internal! {
    mod alloc;
    mod sabotage;
    mod dir;
    mod extent;
    mod inode;
    mod journal;
    mod layout;
    mod xattr;
}

pub mod check;
#[allow(unsafe_code)]
mod device;
pub mod direct;
mod error;
#[cfg(feature = "faults")]
pub mod faults;
#[cfg(not(feature = "faults"))]
mod faults;
mod file;
mod fs;
#[cfg(feature = "model")]
pub mod model;
mod repair;
mod sync;
#[cfg(feature = "crash-test")]
mod turnstile;
#[allow(unsafe_code)]
mod uffd;

/// The crash explorer (`udax crashtest`) and the corrupt-image harness: test machinery, built
/// only with the `crash-test` feature.
#[cfg(feature = "crash-test")]
pub mod crashtest;
#[cfg(feature = "crash-test")]
pub mod robust;

pub use device::{Backend, Counters, Device, DeviceInfo, Floor, FlushInsn, NtInsn, SharedWords};
#[cfg(feature = "crash-test")]
pub use device::{FenceHook, InFlight};
pub use error::{Error, Result};
pub use file::{File, OpenOptions};
pub use fs::{
    map_budget, set_map_budget, Creds, DirEntry, ExtentInfo, FallocMode, Fs, FsInfo, Mapping, MkfsOptions, MmapStats,
    MountReport, Prot, RenameMode, SetAttr, SetTime, Share, Stat, StatFs, HUGE, LINK_MAX, PAGE,
};
pub use inode::Timespec;
pub use journal::RecoveryReport;
pub use layout::{mode, Geometry, BLOCK_SIZES, INODE_SIZE, JOURNAL_RING_OFF, MAGIC, ROOT_INO};
pub use repair::Repair;
pub use xattr::{XattrFlags, VALUE_MAX as XATTR_VALUE_MAX};

/// Largest file size udax accepts (16 TiB).
pub const MAX_FILE_SIZE: u64 = 1 << 44;
