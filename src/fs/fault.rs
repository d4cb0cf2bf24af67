//! The fault service: reader and worker threads, and how a fault is served (the kernel's
//! `fault` and `page_mkwrite`; see the module docs of `fs::mmap`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::extent::{Extent, ExtentMap, Piece, State};
use crate::inode::{Inode, Timespec};
use crate::journal::Tx;
use crate::sabotage::Sabotage;
use crate::sync::{
    lock, rd, thread, wr, AtomicBool, AtomicUsize, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard,
    TryLockError,
};
use crate::uffd::{Uffd, FEATURE_EVENT_REMAP, FEATURE_POISON, FEATURE_THREAD_ID};

use super::node::{bump, map_budget, Counters, Job, MapState, Queue, Reach, Service, VMAS_USED};
use super::state::{Fs, Inner};
use super::types::{Share, HUGE, PAGE};

/// First stores into holes allocate clusters of pages once this share (in 1/8ths) of the mapping
/// budget is in use, and larger ones past [`PRESSURE_HIGH`].
pub(super) const PRESSURE_LOW: u64 = 4;

pub(super) const PRESSURE_HIGH: u64 = 6;

/// Cluster sizes, in pages (64 KiB and 2 MiB).
pub(super) const CLUSTER_LOW: u64 = 16;

pub(super) const CLUSTER_HIGH: u64 = 512;

/// A page of zeros: the content of a hole page that a shared writable mapping loads.
pub(super) static ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];

/// Most worker threads one file system's fault service runs at once.
pub(super) const MAX_WORKERS: usize = 64;

/// How long an idle worker waits for a fault before it retires (the last one stays).
pub(super) const WORKER_IDLE: Duration = Duration::from_secs(2);

/// Which service thread serves a fault. Readers take the messages off the userfaultfd; they must
/// never wait for an inode lock (an operation may hold it for a long copy) nor reset a mapping
/// (the reset's mremap waits until a reader has read its REMAP event), so a fault that needs
/// either goes to a worker, which may wait for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Server {
    Reader,
    Worker,
}

/// Whether a fault was served, or handed on to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Served {
    Done,
    Deferred,
}

/// How a page of a shared mapping can be served.
pub(super) enum PageState {
    /// No written block: zeros on loads.
    Empty,
    /// Every block written, one page-aligned device run starting here.
    Mappable(u64),
    /// Anything else: needs blocks allocated, converted or moved first.
    Mixed,
}

impl Fs {
    pub(super) fn service(&self) -> Result<Arc<Service>> {
        let slot = &self.inner.mmap;
        if let Some(s) = slot.svc.get() {
            return Ok(s.clone());
        }
        let _g = lock(&slot.init);
        if let Some(s) = slot.svc.get() {
            return Ok(s.clone());
        }
        let readers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        let features = FEATURE_THREAD_ID | FEATURE_POISON | FEATURE_EVENT_REMAP;
        let uffds = (0..readers).map(|_| Uffd::new(features).map(Arc::new)).collect::<Result<Vec<_>>>()?;
        let svc = Arc::new(Service {
            uffds,
            next_uffd: AtomicUsize::new(0),
            regions: RwLock::new(BTreeMap::new()),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        for i in 0..readers {
            let (s2, weak) = (svc.clone(), Arc::downgrade(&self.inner));
            let started = thread::Builder::new().name(format!("udax-faults-{i}")).spawn(move || read(s2, i, weak));
            if let Err(e) = started {
                // Readers already started stop with the service.
                svc.stop.store(true, Ordering::Release);
                return Err(Error::io("start the fault service", e));
            }
        }
        let _ = slot.svc.set(svc.clone());
        Ok(svc)
    }

    /// Serves one fault at byte `off` of mapping `m`, or hands it on when `by` is a reader and
    /// serving it means waiting (see [`Server`]). Loads take the inode lock shared; a store that
    /// must allocate or convert takes it exclusively and starts over, since the page may have
    /// changed in between. Every message is served from the state found under the lock, so a
    /// second or late message for a page is harmless: it installs what is already there.
    pub(super) fn serve_fault(&self, m: &MapState, off: u64, store: bool, by: Server) -> Result<Served> {
        let fpage = (m.file_off + off) / PAGE;
        {
            let Some(g) = read_lock(&m.node.inode, by) else { return Ok(Served::Deferred) };
            if self.serve_in_place(&g, m, off, fpage, store)? {
                m.region.wake(off, PAGE)?;
                return Ok(Served::Done);
            }
        }
        let Some(mut g) = write_lock(&m.node.inode, by) else { return Ok(Served::Deferred) };
        if self.serve_in_place(&g, m, off, fpage, store)? {
            m.region.wake(off, PAGE)?;
            return Ok(Served::Done);
        }
        // A first store. A write copying around the page (without the inode lock) may be
        // filling the holes this store would allocate, or the blocks it would move: wait for
        // that write (a worker; a reader hands the fault on), then start over.
        let window = fpage * PAGE / HUGE * HUGE;
        let marked = g.writing.is_some_and(|(s, e)| s < window + HUGE && e > window);
        #[cfg(feature = "model")]
        let marked = marked && !crate::model::planted(crate::model::Plant::StoresIgnoreWrites);
        if marked {
            drop(g);
            if by == Server::Reader {
                return Ok(Served::Deferred);
            }
            drop(rd(&m.node.io));
            return self.serve_fault(m, off, store, by);
        }
        // Other shared mappings lose their zero page for this one (a reset).
        if by == Server::Reader && self.other_mapping(m, |o| o.share == Share::Shared) {
            return Ok(Served::Deferred);
        }
        let _change = self.writable()?;
        let c = &m.svc.counters;
        let huge = !self.inner.mmap.no_huge.load(Ordering::Relaxed);
        let empty = matches!(self.page_state(&g, fpage), PageState::Empty);
        if empty && huge && self.huge_store(&mut g, m, fpage)? {
            bump(&c.huge, 1);
        } else if empty && cluster_pages() > 1 && self.cluster_store(&mut g, m, fpage)? {
            bump(&c.clustered, 1);
        } else {
            let at = self.make_mappable(&mut g, fpage)?;
            // Other mappings drop their zero page or copy for the data (this one maps over its own).
            self.unmap_others(&m.node, fpage * PAGE, (fpage + 1) * PAGE, Reach::Shared, Some(m))?;
            m.map_piece(&self.inner.dev, off, PAGE, at, false, false)?;
            bump(&c.first_store, 1);
        }
        m.region.wake(off, PAGE)?;
        Ok(Served::Done)
    }

    /// Serves what needs no change to the file (the caller wakes the thread): a page past EOF
    /// is poisoned, a private mapping gets a copy, a written page is mapped (or copied past the
    /// map budget), a load from a page with no written block gets the zero page and a load from
    /// a partly written page a copy. Returns false for a store that must allocate or convert.
    pub(super) fn serve_in_place(&self, g: &Inode, m: &MapState, off: u64, fpage: u64, store: bool) -> Result<bool> {
        let c = &m.svc.counters;
        if g.freed || fpage >= g.attr.size.div_ceil(PAGE) {
            bump(&c.sigbus, 1);
            m.region.poison(off, PAGE, false)?;
            return Ok(true);
        }
        if m.share == Share::Private {
            let mut buf = vec![0u8; PAGE as usize];
            self.read_locked(g, fpage * PAGE, &mut buf)?;
            bump(&c.copied, 1);
            m.region.copy(off, &buf, false, false)?;
            return Ok(true);
        }
        let wp = m.region.write_protects();
        #[cfg(feature = "model")]
        let wp = wp || crate::model::planted(crate::model::Plant::WriteProtectEveryCopy);
        match self.page_state(g, fpage) {
            // A copy of a written page would miss stores through another shared writable
            // mapping (they do not fault): mapped then, whatever the budget.
            PageState::Mappable(at)
                if m.map_piece(
                    &self.inner.dev,
                    off,
                    PAGE,
                    at,
                    !store && !self.other_mapping(m, |o| o.region.write_protects()),
                    false,
                )? =>
            {
                bump(&c.mapped, 1);
            }
            PageState::Mappable(_) | PageState::Mixed if !store => {
                // A copy, write-protected where stores can come: a store faults and maps the
                // device page; a write() over the page, and a store into a partly written page
                // through any mapping (which faults), reset copies.
                let mut buf = vec![0u8; PAGE as usize];
                self.read_locked(g, fpage * PAGE, &mut buf)?;
                m.copies.store(true, Ordering::Relaxed);
                bump(&c.copied, 1);
                m.region.copy(off, &buf, false, wp)?;
            }
            PageState::Empty if !store => {
                #[cfg(feature = "model")]
                if wp && crate::model::planted(crate::model::Plant::TwoStepZeroPage) {
                    // The window this step closes: zero page first, protected afterwards.
                    m.region.zeropage(off, PAGE, false)?;
                    m.region.writeprotect(off, PAGE, true, false)?;
                    bump(&c.zero_page, 1);
                    return Ok(true);
                }
                if wp {
                    // Zeros, write-protected in the same step, so a store faults to allocate.
                    // The shared zero page cannot be installed that way (UFFDIO_ZEROPAGE has no
                    // WP mode and refuses a page that carries a WP marker), and a store landing
                    // between installing and protecting it would go to a private copy.
                    m.region.copy(off, &ZEROS, false, true)?;
                } else {
                    m.region.zeropage(off, PAGE, false)?;
                }
                bump(&c.zero_page, 1);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether the file of `m` has a live mapping besides `m` that `what` holds for.
    pub(super) fn other_mapping(&self, m: &MapState, what: impl Fn(&MapState) -> bool) -> bool {
        lock(&m.node.maps).iter().filter_map(Weak::upgrade).any(|o| !std::ptr::eq(&*o, m) && what(&o))
    }

    pub(super) fn page_state(&self, g: &Inode, fpage: u64) -> PageState {
        let geo = &self.inner.geo;
        let per = PAGE / geo.block_size;
        let pieces = g.ext.pieces(fpage * per, per);
        let written = |p: &Piece| matches!(p, Piece::Mapped(e) if e.state == State::Written);
        if !pieces.iter().any(written) {
            return PageState::Empty;
        }
        match pieces[0] {
            Piece::Mapped(e)
                if one_run(&pieces) && pieces.iter().all(written) && geo.block_at(e.physical) % PAGE == 0 =>
            {
                PageState::Mappable(geo.block_at(e.physical))
            }
            _ => PageState::Mixed,
        }
    }

    /// Gives file page `fpage` one page-aligned run of written blocks (the page_mkwrite role):
    /// holes and unwritten blocks are zeroed, written blocks kept (moved to a fresh aligned run
    /// when they are not one already), all in one transaction. Returns the run's device offset.
    pub(super) fn make_mappable(&self, g: &mut Inode, fpage: u64) -> Result<u64> {
        self.undoable(g, |g, taken| {
            let geo = self.inner.geo;
            let dev = &self.inner.dev;
            let bs = geo.block_size;
            let per = PAGE / bs;
            let first = fpage * per;
            let pieces = g.ext.pieces(first, per);
            let mut tx = Tx::new();
            let in_place = match pieces[0] {
                Piece::Mapped(e) => geo.block_at(e.physical) % PAGE == 0 && one_run(&pieces),
                Piece::Hole { .. } => false,
            };
            let (target, freed) = if in_place {
                let Piece::Mapped(e) = pieces[0] else { unreachable!("checked above") };
                let converts =
                    pieces.iter().filter(|p| matches!(p, Piece::Mapped(x) if x.state != State::Written)).count();
                self.reserve_slots(g, ExtentMap::slots_needed(2 * converts), &mut tx)?;
                for p in &pieces {
                    if let Piece::Mapped(x) = p {
                        if x.state != State::Written {
                            tx.content_zero(dev, geo.block_at(x.physical), x.len * bs)?;
                            g.ext.remove_range(x.logical, x.len, &mut tx)?;
                            g.ext.insert(Extent { state: State::Written, ..*x }, &mut tx)?;
                        }
                    }
                }
                (e.physical, Vec::new())
            } else {
                let run = if per == 1 {
                    self.alloc_blocks(self.goal(g, first), 1)?[0]
                } else {
                    self.alloc_aligned_blocks(per, per)?
                };
                taken.push(run);
                self.reserve_slots(g, ExtentMap::slots_needed(1), &mut tx)?;
                let base = geo.block_at(run.start);
                let mut buf = vec![0u8; bs as usize];
                for p in &pieces {
                    match p {
                        Piece::Mapped(x) if x.state == State::Written => {
                            for i in 0..x.len {
                                dev.read(geo.block_at(x.physical + i), &mut buf)?;
                                tx.content_write(dev, base + (x.logical + i - first) * bs, &buf)?;
                            }
                        }
                        Piece::Mapped(x) => tx.content_zero(dev, base + (x.logical - first) * bs, x.len * bs)?,
                        Piece::Hole { .. } if self.planted(Sabotage::FirstStoreZeros) => {}
                        Piece::Hole { logical, len } => {
                            tx.content_zero(dev, base + (logical - first) * bs, len * bs)?
                        }
                    }
                }
                let freed = g.ext.remove_range(first, per, &mut tx)?;
                g.ext
                    .insert(Extent { logical: first, physical: run.start, len: per, state: State::Written }, &mut tx)?;
                (run.start, freed)
            };
            let now = Timespec::now();
            g.attr.mtime = now;
            g.attr.ctime = now;
            g.log_attr(&geo, &mut tx);
            let head = self.commit(&tx)?;
            self.free_after(g.ino, head, freed.iter().map(Extent::run).collect());
            Ok(geo.block_at(target))
        })
    }

    /// A first store into a hole: when the 2 MiB around `fpage` is a hole wholly inside the
    /// file and the mapping, and an aligned 2 MiB device run is free, allocates, zeroes,
    /// commits and maps all of it. Returns whether it did.
    pub(super) fn huge_store(&self, g: &mut Inode, m: &MapState, fpage: u64) -> Result<bool> {
        let start = fpage * PAGE / HUGE * HUGE;
        let covered = start >= m.file_off && start + HUGE <= m.file_off + m.region.len();
        let aligned = (m.region.start() + start - m.file_off) % HUGE == 0;
        if !covered || !aligned || start + HUGE > g.attr.size {
            return Ok(false);
        }
        self.store_run(g, m, start / PAGE, HUGE / PAGE, HUGE)
    }

    /// A first store into a hole while the mapping budget is under pressure: the run of hole
    /// pages around `fpage`, within its aligned cluster, the file's EOF page and the mapping, is
    /// allocated as one device run and mapped with one call. Returns whether it did (a run of
    /// one page gains nothing).
    pub(super) fn cluster_store(&self, g: &mut Inode, m: &MapState, fpage: u64) -> Result<bool> {
        let per = PAGE / self.inner.geo.block_size;
        let window = cluster_pages();
        let hole = |p: u64| matches!(g.ext.pieces(p * per, per)[..], [Piece::Hole { .. }]);
        let low = (fpage / window * window).max(m.file_off / PAGE);
        let high = (fpage / window * window + window)
            .min((m.file_off + m.region.len()) / PAGE)
            .min(g.attr.size.div_ceil(PAGE));
        let (mut lo, mut hi) = (fpage, fpage + 1);
        while lo > low && hole(lo - 1) {
            lo -= 1;
        }
        while hi < high && hole(hi) {
            hi += 1;
        }
        if hi - lo < 2 || !hole(fpage) {
            return Ok(false);
        }
        self.store_run(g, m, lo, hi - lo, PAGE)
    }

    /// Allocates file pages `[first, first+pages)`, all a hole, as one device run aligned to
    /// `align` bytes: zeroed, committed as one written extent, then mapped into `m` with one
    /// call (other shared mappings drop what they showed there). False when no such run is free.
    pub(super) fn store_run(&self, g: &mut Inode, m: &MapState, first: u64, pages: u64, align: u64) -> Result<bool> {
        let geo = self.inner.geo;
        let bs = geo.block_size;
        let blocks = pages * PAGE / bs;
        if !matches!(g.ext.pieces(first * PAGE / bs, blocks)[..], [Piece::Hole { .. }]) {
            return Ok(false);
        }
        let Ok(run) = self.alloc_aligned_blocks(blocks, align / bs) else { return Ok(false) };
        let at = geo.block_at(run.start);
        self.undoable(g, |g, taken| {
            taken.push(run);
            let mut tx = Tx::new();
            self.reserve_slots(g, ExtentMap::slots_needed(1), &mut tx)?;
            if !self.planted(Sabotage::FirstStoreZeros) {
                tx.content_zero(&self.inner.dev, at, pages * PAGE)?;
            }
            let logical = first * PAGE / bs;
            g.ext.insert(Extent { logical, physical: run.start, len: blocks, state: State::Written }, &mut tx)?;
            let now = Timespec::now();
            g.attr.mtime = now;
            g.attr.ctime = now;
            g.log_attr(&geo, &mut tx);
            self.commit(&tx)
        })?;
        let (from, to) = (first * PAGE, (first + pages) * PAGE);
        self.unmap_others(&m.node, from, to, Reach::Shared, Some(m))?;
        m.map_piece(&self.inner.dev, from - m.file_off, to - from, at, false, false)?;
        Ok(true)
    }
}

/// Pages a first store into a hole allocates at once, by how much of the budget is in use.
pub(super) fn cluster_pages() -> u64 {
    let (used, budget) = (VMAS_USED.load(Ordering::Relaxed), map_budget());
    if used * 8 >= budget * PRESSURE_HIGH {
        CLUSTER_HIGH
    } else if used * 8 >= budget * PRESSURE_LOW {
        CLUSTER_LOW
    } else {
        1
    }
}

/// Whether `pieces` are all mapped and physically contiguous (one device run).
pub(super) fn one_run(pieces: &[Piece]) -> bool {
    matches!(pieces.first(), Some(Piece::Mapped(_)))
        && pieces.windows(2).all(|w| match (w[0], w[1]) {
            (Piece::Mapped(a), Piece::Mapped(b)) => a.physical + a.len == b.physical,
            _ => false,
        })
}

/// Takes `l` shared; a reader only when it is free now.
pub(super) fn read_lock<T>(l: &RwLock<T>, by: Server) -> Option<RwLockReadGuard<'_, T>> {
    match by {
        Server::Worker => Some(rd(l)),
        Server::Reader => match l.try_read() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        },
    }
}

/// Takes `l` exclusively; a reader only when it is free now.
pub(super) fn write_lock<T>(l: &RwLock<T>, by: Server) -> Option<RwLockWriteGuard<'_, T>> {
    match by {
        Server::Worker => Some(wr(l)),
        Server::Reader => match l.try_write() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        },
    }
}

/// Reader `i`: takes messages off its userfaultfd (reading a REMAP event is all a reset waits
/// for) and serves each fault it can without waiting; the rest go to the workers.
pub(super) fn read(svc: Arc<Service>, i: usize, fs: Weak<Inner>) {
    let uffd = svc.uffds[i].clone();
    while !svc.stop.load(Ordering::Acquire) {
        let f = match uffd.next_fault(100) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(_) => break,
        };
        let found = rd(&svc.regions).range(..=f.addr).next_back().map(|(_, m)| m.clone());
        let Some(m) = found.filter(|m| m.region.contains(f.addr)) else { continue };
        let off = (f.addr - m.region.start()) / PAGE * PAGE;
        if !serve_one(&svc, &fs, Job { m, off, store: f.write }, Server::Reader) {
            break;
        }
    }
}

/// A worker: serves the faults readers hand on, waiting for locks as operations do.
pub(super) fn work(svc: Arc<Service>, fs: Weak<Inner>) {
    let mut q = lock(&svc.queue);
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            if !serve_one(&svc, &fs, job, Server::Worker) {
                q = lock(&svc.queue);
                break;
            }
            q = lock(&svc.queue);
            continue;
        }
        if svc.stop.load(Ordering::Acquire) {
            break;
        }
        q.idle += 1;
        let (back, waited) = svc.ready.wait_timeout(q, WORKER_IDLE).unwrap_or_else(|e| e.into_inner());
        q = back;
        q.idle -= 1;
        if waited.timed_out() && q.jobs.is_empty() && q.workers > 1 {
            break;
        }
    }
    q.workers -= 1;
}

impl Service {
    /// Queues `job` for a worker, starting one when every worker is busy.
    pub(super) fn defer(self: &Arc<Self>, job: Job, fs: &Weak<Inner>) {
        let mut q = lock(&self.queue);
        q.jobs.push_back(job);
        if q.jobs.len() > q.idle && q.workers < MAX_WORKERS {
            let (svc, fs) = (self.clone(), fs.clone());
            let started = thread::Builder::new().name("udax-fault-worker".into()).spawn(move || work(svc, fs));
            match started {
                Ok(_) => q.workers += 1,
                Err(_) if q.workers == 0 => {
                    // Nobody can serve it: the access fails with SIGBUS rather than hang.
                    let job = q.jobs.pop_back().expect("pushed above");
                    drop(q);
                    fail(self, &job);
                    return;
                }
                Err(_) => {}
            }
        }
        drop(q);
        self.ready.notify_one();
    }
}

/// Serves (or hands on) one fault; false once the file system is gone.
pub(super) fn serve_one(svc: &Arc<Service>, fs: &Weak<Inner>, job: Job, by: Server) -> bool {
    svc.busy.fetch_add(1, Ordering::AcqRel);
    let Some(inner) = fs.upgrade() else {
        svc.busy.fetch_sub(1, Ordering::AcqRel);
        return false;
    };
    let fs = Fs { inner };
    match fs.serve_fault(&job.m, job.off, job.store, by) {
        Ok(Served::Done) => {}
        Ok(Served::Deferred) => svc.defer(job, &Arc::downgrade(&fs.inner)),
        Err(_) => fail(svc, &job),
    }
    drop(fs);
    svc.busy.fetch_sub(1, Ordering::AcqRel);
    true
}

/// A fault that cannot be served (no space for a first store, a device error, no mapping left
/// for the page) gets SIGBUS, as a kernel file system's failed page_mkwrite does: the page is
/// poisoned until the next reset of it (a write, truncate, punch or zero range over it). When a
/// page is there already the message was a late one, and the wake is all it needs.
pub(super) fn fail(svc: &Service, job: &Job) {
    bump(&svc.counters.sigbus, 1);
    let _ = job.m.region.poison(job.off, PAGE, false);
    let _ = job.m.region.wake(job.off, PAGE);
}
