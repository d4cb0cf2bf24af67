//! Mappings of udax files served from the image (DESIGN.md "Mappings served from the image"):
//! which ranges of a mapping request can be, and the regions this process maps that way. Safe
//! code; `mmap.rs` makes the system calls.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use udax_direct::{MapPiece, Mount};

use crate::fds;
use crate::once::Cached;
use crate::serve::trace;

/// The page size mappings are made of.
pub(crate) const PAGE: usize = 4096;

/// What a mapping served from the image needs, found before anything is mapped.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// A new open file of the mapped file, to which the server pinned the mapped blocks: the
    /// caller maps its guard page, which keeps it open as long as this process maps blocks of
    /// the file. `None`: the blocks are pinned to the open file of the guard at `guard`.
    pub pin: Option<OwnedFd>,
    /// The guard of the pin the blocks are pinned to (0 with a new pin).
    pub guard: usize,
    /// The server's name for the pin's open file.
    owner: u64,
    /// The image, open for what the mapping may do.
    pub image: OwnedFd,
    /// The mapping's length, in whole pages.
    pub span: usize,
    /// The file offset of its first byte.
    pub off: u64,
    /// The pieces of the image that map it, in file order: all of it, but for a private
    /// mapping's holes and unwritten blocks.
    pub pieces: Vec<MapPiece>,
    /// Those holes, `(file offset, length)`: mapped as zero pages of the mapping's own.
    pub gaps: Vec<(u64, u64)>,
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
    /// The guard page of its pin.
    guard: usize,
    /// Address, image offset and length of each piece.
    pieces: Vec<(usize, u64, u64)>,
    /// The VMAs its pieces and zero pages take.
    vmas: usize,
    /// Whether stores through it may reach the file.
    stores: bool,
    mount: Arc<Mount>,
    file: ((u32, u32), u64),
}

/// An open file of a mapped file, held by a guard page, to which the server pins the blocks
/// this process maps of the file: one per file (a second only when two threads race to make
/// the first), released once no region of it is left.
#[derive(Debug)]
struct Pin {
    file: ((u32, u32), u64),
    owner: u64,
    guard: usize,
    /// Regions that use it, and mappings being made with it.
    users: usize,
}

#[derive(Debug)]
struct State {
    regions: Vec<Region>,
    pins: Vec<Pin>,
}

static STATE: Mutex<State> = Mutex::new(State { regions: Vec::new(), pins: Vec::new() });
/// Mappings (VMAs) the regions take: one per piece and one per guard.
static VMAS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The state, held by the thread that forks from just before the fork to just after it.
    static FORKING: RefCell<Option<MutexGuard<'static, State>>> = const { RefCell::new(None) };
}

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Before a fork: takes the regions, so that no other thread holds them when the child is made.
pub(crate) fn before_fork() {
    let held = state();
    FORKING.with(|f| *f.borrow_mut() = Some(held));
}

/// After a fork, in the parent and in the child (which has the same mappings): lets them go.
pub(crate) fn after_fork() {
    FORKING.with(|f| drop(f.borrow_mut().take()));
}

/// Whether `UDAX_DIRECT_MMAP=0` asks for every mapping to go through the kernel.
fn enabled() -> bool {
    static ON: Cached = Cached::new();
    ON.flag(|| std::env::var_os("UDAX_DIRECT_MMAP").is_none_or(|v| v != "0"))
}

/// Half of vm.max_map_count: the most VMAs the regions may take, so that the program keeps the
/// rest (past it, mappings go through the kernel).
fn vma_budget() -> usize {
    static BUDGET: Cached = Cached::new();
    BUDGET.get(|| {
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
    // A private mapping need not see later stores to the file (POSIX leaves it unspecified):
    // its holes stay holes, mapped as zero pages of its own, so a sparse file is not filled.
    let private = kind == libc::MAP_PRIVATE;
    if kind == libc::MAP_SHARED && prot & libc::PROT_WRITE != 0 && !shared_write {
        return None;
    }
    if VMAS.load(Ordering::Relaxed) >= vma_budget() {
        return None;
    }
    let span = len.checked_next_multiple_of(PAGE)?;
    let end = off.checked_add(span as u64)?;
    let key = file.key();
    // This process's pin of the file, taken for this mapping so that no munmap releases it
    // meanwhile.
    let held = {
        let mut st = state();
        st.pins.iter_mut().find(|p| p.file == key).map(|p| {
            p.users += 1;
            (p.owner, p.guard)
        })
    };
    let mut cache = file.cache.lock().unwrap_or_else(PoisonError::into_inner);
    let range = (off, end, PAGE as u64);
    let (pin, owner, guard, pieces) = match held {
        Some((owner, guard)) => {
            let found = file.mount.map_pieces(crate::sys::borrow(fd)?, &mut cache, range, owner, private);
            match found {
                Ok(Some((o, pieces))) if o == owner => (None, owner, guard, pieces),
                other => {
                    // Not pinned to the pin this process holds: give it back and say so.
                    drop_user(guard);
                    trace(format_args!("mmap(fd {fd}, {len} at {off}): through the kernel ({other:?})"));
                    return None;
                }
            }
        }
        None => {
            // An open file of its own, released when every mapping of the file in this process
            // (and in children that inherit them) is gone: the server keeps the mapped blocks
            // from reuse until then.
            let pin = std::fs::File::open(format!("/proc/self/fd/{fd}")).ok()?;
            let found = file.mount.map_pieces(pin.as_fd(), &mut cache, range, 0, private);
            let Ok(Some((owner, pieces))) = found else {
                trace(format_args!("mmap(fd {fd}, {len} at {off}): through the kernel ({found:?})"));
                return None;
            };
            (Some(OwnedFd::from(pin)), owner, 0, pieces)
        }
    };
    let image = std::fs::OpenOptions::new().read(true).write(shared_write).open(file.mount.image_path());
    let Ok(image) = image else {
        if guard != 0 {
            drop_user(guard);
        }
        return None;
    };
    Some(Prepared {
        pin,
        guard,
        owner,
        image: image.into(),
        span,
        off,
        gaps: gaps(&pieces, off, end),
        pieces,
        stores: shared_write,
        mount: file.mount.clone(),
        file: key,
    })
}

/// A mapping made with the pin whose guard is at `guard` failed: it no longer uses the pin
/// (which the next munmap lets go if nothing else does).
pub(crate) fn drop_user(guard: usize) {
    let mut st = state();
    if let Some(p) = st.pins.iter_mut().find(|p| p.guard == guard) {
        p.users -= 1;
    }
}

/// A region `[start, start + p.span)` is now mapped from the image as `p` said; `guard` is the
/// guard page of `p`'s new pin, or of the one it used.
pub(crate) fn mapped(p: Prepared, start: usize, guard: usize) {
    let pieces: Vec<_> = p.pieces.iter().map(|x| (start + (x.file - p.off) as usize, x.dev, x.len)).collect();
    let new_pin = p.pin.is_some();
    let vmas = pieces.len() + p.gaps.len();
    VMAS.fetch_add(vmas + usize::from(new_pin), Ordering::Relaxed);
    trace(format_args!(
        "mmap({} at {}): from the image, {} pieces, {} zero",
        p.span,
        p.off,
        pieces.len(),
        p.gaps.len()
    ));
    let live = vec![(start, start + p.span)];
    let mut st = state();
    if new_pin {
        st.pins.push(Pin { file: p.file, owner: p.owner, guard, users: 1 });
    }
    st.regions.push(Region { live, guard, pieces, vmas, stores: p.stores, mount: p.mount, file: p.file });
}

/// `[addr, addr + len)` is no longer mapped as it was (munmap, or a mapping made over it):
/// returns the guard pages of the regions that are now wholly gone, for the caller to unmap.
pub(crate) fn unmapped(addr: usize, len: usize) -> Vec<usize> {
    let end = addr.saturating_add(len.next_multiple_of(PAGE));
    let mut st = state();
    let mut gone = Vec::new();
    st.regions.retain_mut(|r| {
        if !r.live.iter().any(|&(s, t)| s < end && addr < t) {
            return true;
        }
        r.live =
            r.live.iter().flat_map(|&(s, t)| [(s, t.min(addr)), (s.max(end), t)]).filter(|&(s, t)| s < t).collect();
        if r.live.is_empty() {
            gone.push(r.guard);
            VMAS.fetch_sub(r.vmas, Ordering::Relaxed);
        }
        !r.live.is_empty()
    });
    for g in gone {
        if let Some(p) = st.pins.iter_mut().find(|p| p.guard == g) {
            p.users -= 1;
        }
    }
    // Pins no region uses any more (a failed mapping may have left one too) go.
    let mut guards = Vec::new();
    st.pins.retain(|p| {
        if p.users == 0 {
            guards.push(p.guard);
            VMAS.fetch_sub(1, Ordering::Relaxed);
        }
        p.users != 0
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
    state().regions.iter().any(|r| r.live.iter().any(|&(s, t)| s < end && addr < t))
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
    let mapped: Vec<(u64, u64)> = state()
        .regions
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

/// The parts of `[off, end)` that `pieces` (in file order) leave uncovered: `(start, length)`.
fn gaps(pieces: &[MapPiece], off: u64, end: u64) -> Vec<(u64, u64)> {
    let mut at = off;
    let mut out = Vec::new();
    for p in pieces.iter().chain([&MapPiece { file: end, dev: 0, len: 0 }]) {
        if p.file > at {
            out.push((at, p.file - at));
        }
        at = at.max(p.file + p.len);
    }
    out
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
    let st = state();
    for r in st.regions.iter().filter(|r| r.stores) {
        for &(at, dev, n) in &r.pieces {
            if let Some((s, t)) = pick(at, n as usize) {
                let _ = r.mount.flush(dev + (s - at) as u64, (t - s) as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{gaps, MapPiece};

    #[test]
    fn gaps_are_what_the_pieces_leave_of_the_range() {
        let piece = |file, len| MapPiece { file, dev: 0, len };
        assert_eq!(gaps(&[], 4096, 16384), [(4096, 12288)], "a range with no written block");
        assert_eq!(gaps(&[piece(0, 8192)], 0, 8192), [], "all written");
        assert_eq!(
            gaps(&[piece(4096, 4096), piece(12288, 4096)], 0, 20480),
            [(0, 4096), (8192, 4096), (16384, 4096)],
            "before, between and after"
        );
    }
}
