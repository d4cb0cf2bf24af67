//! The `Fs` facade: mkfs, mount and every namespace operation, and the locking that orders them.
//!
//! Lock order (DESIGN.md "Locking", kept from the kernel): the rename lock (cross-directory renames only) →
//! a file's data lock (`Node::io`: writes, truncates and fallocate; reads shared) →
//! inode locks (directories before non-directories; among directories an ancestor before its
//! descendant, unrelated ones by ascending number; non-directories by ascending number) → the
//! inode-number table → the allocator → the journal. Only cross-directory renames hold two
//! unrelated directories, and the rename lock makes them one at a time. Each operation builds
//! one transaction, fences the new content it links, commits — durable from here — and only
//! then frees blocks (which become reusable after the next checkpoint, see `alloc`).
//!
//! The facade is split by concern; each part adds methods to [`Fs`]:
//!
//! - `types`: the value types callers see (stat, setattr, mkfs options, mapping protections);
//! - `node`: in-memory inodes and their live mappings, and the fault service's shared state;
//! - `state`: `Fs` itself, the change guard and undo, commits and allocation;
//! - `mount`: mkfs, mount and recovery, unmount; `load`: mount's passes over inodes and
//!   directories; `snapshot`: a consistent copy of the image;
//! - `namespace` and `rename`: names and attributes;
//! - `data`, `space` and `xattr`: read and write, fallocate and seek, extended attributes;
//! - `mmap` and `fault`: DAX mappings and the userfaultfd service behind them;
//! - `direct`: what direct clients of a mount are given, and the blocks kept from them;
//!   `lease`: appends by direct clients under a lease, and their lanes.

mod data;
mod direct;
mod fault;
mod lease;
mod load;
mod mmap;
mod mount;
mod namespace;
mod node;
mod rename;
mod snapshot;
mod space;
mod state;
mod types;
mod xattr;

pub use mmap::Mapping;
pub(crate) use mount::count_entries;
pub(crate) use node::Node;
pub use node::{map_budget, set_map_budget};
pub use space::{ExtentInfo, FallocMode};
pub use state::Fs;
pub use types::{
    Creds, DirEntry, FsInfo, MkfsOptions, MmapStats, MountReport, Prot, RenameMode, SetAttr, SetTime, Share, Stat,
    StatFs, HUGE, LINK_MAX, PAGE,
};
