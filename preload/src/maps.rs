//! Mappings of udax files served from the image (DESIGN.md "Mappings served from the image"):
//! which ranges of a mapping request can be, and the regions this process maps that way. Safe
//! code; `mmap.rs` makes the system calls.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use udax_direct::{MapPiece, Mount};

use crate::fds;
use crate::serve::trace;

/// The page size mappings are made of.
pub(crate) const PAGE: usize = 4096;

/// What a mapping served from the image needs, found before anything is mapped.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// An open file of the mapped file that lives as long as the mapping (the server pins the
    /// mapped blocks to it): the guard page maps it.
    pub pin: OwnedFd,
    /// The image, open for what the mapping may do.
    pub image: OwnedFd,
    /// The mapping's length, in whole pages.
    pub span: usize,
    /// The file offset of its first byte.
    pub off: u64,
    /// The pieces of the image that map it, in file order, covering all of it.
    pub pieces: Vec<MapPiece>,
    /// Whether stores through it may reach the file (shared, on a read-write descriptor).
    stores: bool,
    mount: Arc<Mount>,
    file: ((u32, u32), u64),
}

/// A region this process maps from the image.
#[derive(Debug)]
struct Region {
    /// The pages still mapped: `(first, end)` address ranges.
    live: Vec<(usize, usize)>,
    /// The guard page holding the pin open file.
    guard: usize,
    /// Address, image offset and length of each piece.
    pieces: Vec<(usize, u64, u64)>,
    /// Whether stores through it may reach the file.
    stores: bool,
    mount: Arc<Mount>,
    file: ((u32, u32), u64),
}

static REGIONS: Mutex<Vec<Region>> = Mutex::new(Vec::new());
/// Mappings (VMAs) the regions take: one per piece and one per guard.
static VMAS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The regions, held by the thread that forks from just before the fork to just after it.
    static FORKING: RefCell<Option<MutexGuard<'static, Vec<Region>>>> = const { RefCell::new(None) };
}

fn regions() -> MutexGuard<'static, Vec<Region>> {
    REGIONS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Before a fork: takes the regions, so that no other thread holds them when the child is made.
pub(crate) fn before_fork() {
    let held = regions();
    FORKING.with(|f| *f.borrow_mut() = Some(held));
}

/// After a fork, in the parent and in the child (which has the same mappings): lets them go.
pub(crate) fn after_fork() {
    FORKING.with(|f| drop(f.borrow_mut().take()));
}

/// Whether `UDAX_DIRECT_MMAP=0` asks for every mapping to go through the kernel.
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("UDAX_DIRECT_MMAP").is_none_or(|v| v != "0"))
}

/// Half of vm.max_map_count: the most VMAs the regions may take, so that the program keeps the
/// rest (past it, mappings go through the kernel).
fn vma_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let max = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse().ok());
        max.unwrap_or(65_530) / 2
    })
}

/// The flags (besides MAP_SHARED or MAP_PRIVATE) a mapping served from the image honours.
const SERVED_FLAGS: libc::c_int =
    libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE | libc::MAP_POPULATE | libc::MAP_NORESERVE | libc::MAP_NONBLOCK;

/// Whether `mmap(…, prot, flags, fd, off)` of `len` bytes can be served from the image, and
/// what it takes: the server has made the range written and pinned it. `None`: the kernel
/// maps it (not a udax file, mapped through the kernel already, past the page holding EOF,
/// flags this library does not serve, the budget spent, refused by the server).
pub(crate) fn prepare(
    fd: libc::c_int,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    off: i64,
) -> Option<Prepared> {
    let kind = flags & (libc::MAP_SHARED | libc::MAP_PRIVATE);
    let off = u64::try_from(off).ok().filter(|o| o % PAGE as u64 == 0)?;
    if !enabled()
        || len == 0
        || flags & !(kind | SERVED_FLAGS) != 0
        || !(kind == libc::MAP_SHARED || kind == libc::MAP_PRIVATE)
    {
        return None;
    }
    let file = fds::direct(fd).filter(|f| f.reads())?;
    let shared_write = kind == libc::MAP_SHARED && file.read_write();
    if kind == libc::MAP_SHARED && prot & libc::PROT_WRITE != 0 && !shared_write {
        return None;
    }
    if VMAS.load(Ordering::Relaxed) >= vma_budget() {
        return None;
    }
    let span = len.checked_next_multiple_of(PAGE)?;
    let end = off.checked_add(span as u64)?;
    // An open file of its own, released when the mapping and the program's descriptor are
    // gone: the server keeps the mapped blocks from reuse until then.
    let pin = std::fs::File::open(format!("/proc/self/fd/{fd}")).ok()?;
    let mut cache = udax_direct::CachedMap::default();
    let found = file.mount.map_pieces(pin.as_fd(), &mut cache, off, end, PAGE as u64);
    let Ok(Some((_, pieces))) = found else {
        trace(format_args!("mmap(fd {fd}, {len} at {off}): through the kernel ({found:?})"));
        return None;
    };
    let image = std::fs::OpenOptions::new().read(true).write(shared_write).open(file.mount.image_path()).ok()?;
    Some(Prepared {
        pin: pin.into(),
        image: image.into(),
        span,
        off,
        pieces,
        stores: shared_write,
        mount: file.mount.clone(),
        file: file.key(),
    })
}

/// A region `[start, start + p.span)` is now mapped from the image as `p` said, with the guard
/// page at `guard`.
pub(crate) fn mapped(p: Prepared, start: usize, guard: usize) {
    let pieces: Vec<_> = p.pieces.iter().map(|x| (start + (x.file - p.off) as usize, x.dev, x.len)).collect();
    VMAS.fetch_add(pieces.len() + 1, Ordering::Relaxed);
    trace(format_args!("mmap({} at {}): from the image, {} pieces", p.span, p.off, pieces.len()));
    let live = vec![(start, start + p.span)];
    regions().push(Region { live, guard, pieces, stores: p.stores, mount: p.mount, file: p.file });
}

/// `[addr, addr + len)` is no longer mapped as it was (munmap, or a mapping made over it):
/// returns the guard pages of the regions that are now wholly gone, for the caller to unmap.
pub(crate) fn unmapped(addr: usize, len: usize) -> Vec<usize> {
    let end = addr.saturating_add(len.next_multiple_of(PAGE));
    let mut all = regions();
    let mut guards = Vec::new();
    all.retain_mut(|r| {
        if !r.live.iter().any(|&(s, t)| s < end && addr < t) {
            return true;
        }
        r.live =
            r.live.iter().flat_map(|&(s, t)| [(s, t.min(addr)), (s.max(end), t)]).filter(|&(s, t)| s < t).collect();
        if r.live.is_empty() {
            guards.push(r.guard);
            VMAS.fetch_sub(r.pieces.len() + 1, Ordering::Relaxed);
        }
        !r.live.is_empty()
    });
    guards
}

/// Whether this process maps anything from the image (one load: calls skip the rest when not).
pub(crate) fn any() -> bool {
    VMAS.load(Ordering::Relaxed) != 0
}

/// Whether any of `[addr, addr + len)` is mapped from the image.
pub(crate) fn overlaps(addr: usize, len: usize) -> bool {
    let end = addr.saturating_add(len);
    regions().iter().any(|r| r.live.iter().any(|&(s, t)| s < end && addr < t))
}

/// Makes the stores into `[addr, addr + len)` of regions mapped from the image durable (msync).
pub(crate) fn flush(addr: usize, len: usize) {
    let end = addr.saturating_add(len);
    flush_where(|at, n| (at < end && addr < at + n).then(|| (addr.max(at), end.min(at + n))));
}

/// Makes the stores into every region of `fd`'s file durable (fsync): the blocks that the
/// file holds now and that a region may store to, each written back once (a program may keep
/// thousands of mappings of one file, many of blocks the file has freed since).
pub(crate) fn flush_file(fd: libc::c_int) {
    let Some(file) = fds::lookup(fd) else { return };
    let key = file.key();
    let mapped: Vec<(u64, u64)> = regions()
        .iter()
        .filter(|r| r.stores && r.file == key)
        .flat_map(|r| r.pieces.iter().map(|&(_, dev, n)| (dev, dev + n)))
        .collect();
    if mapped.is_empty() {
        return;
    }
    let Some(fd) = crate::sys::borrow(fd) else { return };
    let held = {
        let mut cache = file.cache.lock().unwrap_or_else(PoisonError::into_inner);
        file.mount.written_runs(fd, file.ino, &mut cache)
    };
    let Ok(held) = held else { return };
    for (s, t) in intersect(union(mapped), union(held)) {
        let _ = file.mount.flush(s, t - s);
    }
}

/// `runs` (`[start, end)` pairs) sorted, overlapping ones joined.
fn union(mut runs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    runs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (s, t) in runs {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(t),
            _ => out.push((s, t)),
        }
    }
    out
}

/// The ranges both sorted, disjoint lists cover.
fn intersect(a: Vec<(u64, u64)>, b: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (s, t) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < t {
            out.push((s, t));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Flushes, of each piece `(address, length)`, the part `pick` names.
fn flush_where(pick: impl Fn(usize, usize) -> Option<(usize, usize)>) {
    let all = regions();
    for r in all.iter().filter(|r| r.stores) {
        for &(at, dev, n) in &r.pieces {
            if let Some((s, t)) = pick(at, n as usize) {
                let _ = r.mount.flush(dev + (s - at) as u64, (t - s) as u64);
            }
        }
    }
}
