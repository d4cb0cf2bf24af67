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
#![deny(unsafe_code)]

pub mod alloc;
pub mod check;
pub mod crashtest;
#[allow(unsafe_code)]
pub mod device;
pub mod dir;
pub mod error;
pub mod extent;
pub mod faults;
mod file;
pub mod fs;
pub mod inode;
mod io;
pub mod journal;
pub mod layout;
mod mmap;
#[cfg(feature = "model")]
pub mod model;
pub mod repair;
pub mod robust;
mod space;
mod sync;
#[allow(unsafe_code)]
pub mod uffd;
pub mod xattr;

pub use device::{Backend, Counters, Device, InFlight};
pub use error::{Error, Result};
pub use file::{File, OpenOptions};
pub use fs::{Creds, DirEntry, Fs, MkfsOptions, RenameMode, SetAttr, SetTime, Stat, StatFs};
pub use inode::Timespec;
pub use mmap::{map_budget, set_map_budget, Mapping, MmapStats, Prot, Share, HUGE, PAGE};
pub use space::{ExtentInfo, FallocMode};
pub use xattr::XattrFlags;

/// Largest file size udax accepts (16 TiB).
pub const MAX_FILE_SIZE: u64 = 1 << 44;
