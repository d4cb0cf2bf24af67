//! Which descriptors of this process are files of a udax mount that publishes maps, and the
//! per-file state a direct call needs. Descriptors are classified when opened or, for ones this
//! library did not see open (inherited across exec, passed over a socket, made by a call it
//! does not wrap), on their first data call.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockWriteGuard};

use udax_direct::{identity, CachedMap, Identity, Mount};

/// A file of a udax mount, open in this process.
#[derive(Debug)]
pub(crate) struct OpenFile {
    pub mount: Arc<Mount>,
    pub ino: u64,
    dev: (u32, u32),
    pub cache: Mutex<CachedMap>,
    /// The open file description's status flags (shared by its duplicates, as in the kernel).
    flags: AtomicI32,
}

impl OpenFile {
    /// Whether direct writes may serve this descriptor: open for writing, and not appending
    /// (O_APPEND writes go to the end, which the mount decides).
    pub(crate) fn overwrites(&self) -> bool {
        let flags = self.flags.load(Ordering::Relaxed);
        flags & libc::O_ACCMODE != libc::O_RDONLY && flags & libc::O_APPEND == 0
    }

    /// Whether the descriptor was opened for reading and writing (as a shared writable
    /// mapping needs).
    pub(crate) fn read_write(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & libc::O_ACCMODE == libc::O_RDWR
    }

    /// The file's device and inode numbers.
    pub(crate) fn key(&self) -> ((u32, u32), u64) {
        (self.dev, self.ino)
    }

    /// Whether the descriptor was opened for reading.
    pub(crate) fn reads(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & libc::O_ACCMODE != libc::O_WRONLY
    }
}

#[derive(Debug, Default)]
struct Table {
    /// Descriptor → its file, or `None` once found not to be one.
    fds: HashMap<libc::c_int, Option<Arc<OpenFile>>>,
    /// Device → its mount, or `None` for any other file system.
    mounts: HashMap<(u32, u32), Option<Arc<Mount>>>,
    /// Files (device, inode) this process has mapped through the kernel: their pages may sit
    /// in the kernel's cache, which direct reads would not see and direct writes would leave
    /// stale, so every later call on them goes through the mount.
    kernel_mapped: HashSet<((u32, u32), u64)>,
}

static TABLE: RwLock<Option<Table>> = RwLock::new(None);

thread_local! {
    /// The table, held by the thread that forks from just before the fork to just after it.
    static FORKING: RefCell<Option<RwLockWriteGuard<'static, Option<Table>>>> = const { RefCell::new(None) };
}

/// Before a fork: takes the table, so that no other thread holds it when the child is made.
pub(crate) fn before_fork() {
    let held = TABLE.write().unwrap_or_else(PoisonError::into_inner);
    FORKING.with(|f| *f.borrow_mut() = Some(held));
}

/// In the parent, after a fork: lets the table go.
pub(crate) fn after_fork_in_parent() {
    FORKING.with(|f| drop(f.borrow_mut().take()));
}

/// In the child, after a fork: the files and mounts that the parent's other threads may have
/// been using (a file's cached map, a mount's writer slot: locks held by threads the child does
/// not have) are left behind, never touched or freed, and each descriptor is classified again on
/// its next call. Which files were mapped through the kernel stays: the child has those maps.
pub(crate) fn after_fork_in_child() {
    FORKING.with(|f| {
        let Some(mut table) = f.borrow_mut().take() else { return };
        if let Some(Table { fds, mounts, kernel_mapped }) = table.take() {
            std::mem::forget((fds, mounts));
            *table = Some(Table { kernel_mapped, ..Table::default() });
        }
    });
}

fn udax_devices() -> Vec<(u32, u32)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split(' ').next()? == "fuse.udax").then_some(())?;
            let (major, minor) = left.split(' ').nth(2)?.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .collect()
}

/// The file `fd` names, if it is a regular file of a udax mount this process may reach
/// directly; remembers the answer for the descriptor.
pub(crate) fn classify(fd: libc::c_int) -> Option<Arc<OpenFile>> {
    if fd < 0 {
        return None;
    }
    let id = identity(fd);
    let file = id.and_then(|id| file_for(fd, id));
    let mut t = TABLE.write().unwrap_or_else(PoisonError::into_inner);
    t.get_or_insert_with(Table::default).fds.insert(fd, file.clone());
    file
}

fn file_for(fd: libc::c_int, id: Identity) -> Option<Arc<OpenFile>> {
    if !id.regular {
        return None;
    }
    let known =
        TABLE.read().unwrap_or_else(PoisonError::into_inner).as_ref().and_then(|t| t.mounts.get(&id.dev).cloned());
    let mount = match known {
        Some(m) => m?,
        None => {
            let m = if udax_devices().contains(&id.dev) {
                Mount::attach(crate::sys::borrow(fd)?).ok().flatten().map(Arc::new)
            } else {
                None
            };
            let mut t = TABLE.write().unwrap_or_else(PoisonError::into_inner);
            t.get_or_insert_with(Table::default).mounts.insert(id.dev, m.clone());
            m?
        }
    };
    let flags = AtomicI32::new(crate::sys::status_flags(fd)?);
    Some(Arc::new(OpenFile { mount, ino: id.ino, dev: id.dev, cache: Mutex::new(CachedMap::default()), flags }))
}

/// The file behind `fd`, classifying it on first sight.
pub(crate) fn lookup(fd: libc::c_int) -> Option<Arc<OpenFile>> {
    let seen = TABLE.read().unwrap_or_else(PoisonError::into_inner).as_ref().and_then(|t| t.fds.get(&fd).cloned());
    match seen {
        Some(f) => f,
        None => classify(fd),
    }
}

/// The file behind `fd`, if direct calls may serve it (not mapped through the kernel).
pub(crate) fn direct(fd: libc::c_int) -> Option<Arc<OpenFile>> {
    let file = lookup(fd)?;
    let t = TABLE.read().unwrap_or_else(PoisonError::into_inner);
    let mapped = t.as_ref().is_some_and(|t| t.kernel_mapped.contains(&(file.dev, file.ino)));
    (!mapped).then_some(file)
}

/// `fd`'s file is being mapped through the kernel: no direct calls on it from now on, here, and
/// the server is told, so that no other process's either while the mapping lasts.
pub(crate) fn mapped_by_kernel(fd: libc::c_int) {
    if let Some(file) = lookup(fd) {
        if let Some(fd) = crate::sys::borrow(fd) {
            // A server that does not know the request leaves only this process's calls to the
            // mount, as before.
            let _ = file.mount.kernel_map(fd);
        }
        let mut t = TABLE.write().unwrap_or_else(PoisonError::into_inner);
        t.get_or_insert_with(Table::default).kernel_mapped.insert((file.dev, file.ino));
    }
}

/// `fd`'s status flags may have changed (F_SETFL).
pub(crate) fn flags_changed(fd: libc::c_int) {
    if let (Some(file), Some(flags)) = (lookup(fd), crate::sys::status_flags(fd)) {
        file.flags.store(flags, Ordering::Relaxed);
    }
}

/// `to` now names what `from` names (dup, dup2, dup3, F_DUPFD).
pub(crate) fn duplicated(from: libc::c_int, to: libc::c_int) {
    let file = lookup(from);
    let mut t = TABLE.write().unwrap_or_else(PoisonError::into_inner);
    t.get_or_insert_with(Table::default).fds.insert(to, file);
}

/// `fd` is closed: forget it (its number will name something else).
pub(crate) fn closed(fd: libc::c_int) {
    if let Some(t) = TABLE.write().unwrap_or_else(PoisonError::into_inner).as_mut() {
        t.fds.remove(&fd);
    }
}

/// Descriptors `[first, last]` are closed.
pub(crate) fn closed_range(first: libc::c_uint, last: libc::c_uint) {
    if let Some(t) = TABLE.write().unwrap_or_else(PoisonError::into_inner).as_mut() {
        t.fds.retain(|&fd, _| !(first..=last).contains(&(fd as libc::c_uint)));
    }
}
