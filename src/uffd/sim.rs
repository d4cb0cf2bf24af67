//! A simulated address space and userfaultfd for the model check (`model` feature): the
//! functions of `sys`, over page tables kept in memory and guarded by the model checker's locks,
//! so that every fault, wake, registration and mapping change is a step whose order the checker
//! chooses. It follows the kernel where udax depends on it:
//!
//! - a load or store of a missing page in a range registered for missing faults queues a fault
//!   message and blocks the thread until a wake covers the page, then retries the access; in an
//!   unregistered range it gets a fresh page (the zero page for a load, private zeros for a
//!   store);
//! - a store to a write-protected page of a range registered for WP faults queues a WP fault; a
//!   store to the zero page, or to a private file page, copies it to private memory;
//! - resolving calls refuse a page that is present (EEXIST) or not registered with the caller
//!   (ENOENT), a write-protected copy where the range is not registered for WP (EINVAL), and
//!   everything while a REMAP event waits to be read (EAGAIN);
//! - moving a mapping (mremap) is one step; a registered range moved raises a REMAP event and the
//!   mover waits until a reader has taken it; readers take fault messages before events;
//! - a poisoned page raises SIGBUS (here: EFAULT from the access), and a page with no mapping or
//!   no permission SIGSEGV (here: a panic, which fails the check).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use shuttle::lazy_static::Lazy;
use shuttle::sync::{Condvar, Mutex, MutexGuard};

use super::UFFD_PAGEFAULT_FLAG_WRITE;
use super::{Ioctl, UffdMsg, UffdioRange, FEATURE_EVENT_REMAP, MODE_COPY_WP, MODE_DONTWAKE, MODE_MISSING, MODE_WP};
use super::{MODE_WP_DONTWAKE, MODE_WP_SET, PAGE, UFFD_EVENT_PAGEFAULT, UFFD_PAGEFAULT_FLAG_WP};

const UFFD_EVENT_REMAP: u8 = 0x14;
/// Where simulated mappings start (far from anything the process really maps).
const FIRST_ADDR: u64 = 0x6000_0000_0000;
const HUGE: u64 = 2 << 20;

/// A simulated userfaultfd: its number in the world.
#[derive(Debug)]
pub(super) struct Fd(usize);

#[derive(Debug, Clone)]
enum Content {
    Missing,
    Zero,
    Anon(Box<[u8]>),
    File { file: Arc<File>, off: u64, shared: bool },
    Poison,
}

#[derive(Debug)]
struct Page {
    prot: i32,
    /// The userfaultfd and mode it is registered with.
    reg: Option<(usize, u64)>,
    content: Content,
    /// Write-protected by its userfaultfd.
    wp: bool,
}

impl Page {
    fn fresh(prot: i32) -> Page {
        Page { prot, reg: None, content: Content::Missing, wp: false }
    }
}

#[derive(Debug, Default)]
struct Queue {
    features: u64,
    faults: VecDeque<(u64, u64)>,
    /// REMAP events not yet read, by ticket; while any wait, resolving calls get EAGAIN.
    events: VecDeque<u64>,
    /// Interrupted: a reader with nothing to read returns (the simulation has no timeouts).
    interrupted: bool,
}

#[derive(Debug)]
struct World {
    next_addr: u64,
    pages: BTreeMap<u64, Page>,
    uffds: Vec<Queue>,
    /// Threads blocked on a fault: ticket → (userfaultfd, page).
    waiting: BTreeMap<u64, (usize, u64)>,
    /// Events raised and not yet read, by ticket.
    unread: BTreeSet<u64>,
    next_ticket: u64,
}

#[derive(Debug)]
struct Sim {
    world: Mutex<World>,
    cv: Condvar,
}

/// One world per execution of the model check.
static SIM: Lazy<Sim> = Lazy::new(|| Sim {
    world: Mutex::new(World {
        next_addr: FIRST_ADDR,
        pages: BTreeMap::new(),
        uffds: Vec::new(),
        waiting: BTreeMap::new(),
        unread: BTreeSet::new(),
        next_ticket: 0,
    }),
    cv: Condvar::new(),
});

fn world() -> (&'static Sim, MutexGuard<'static, World>) {
    let sim = SIM.get();
    (sim, sim.world.lock().unwrap_or_else(|e| e.into_inner()))
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn pages(start: u64, len: u64) -> impl Iterator<Item = u64> {
    (start..start + len).step_by(PAGE as usize)
}

/// What an access to a page needs first.
enum Step {
    Ready,
    Fault(usize, u64),
    Sigbus,
}

impl World {
    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Wakes the threads blocked on faults of `uffd` in `[start, start+len)`.
    fn wake(&mut self, sim: &Sim, uffd: usize, start: u64, len: u64) {
        self.waiting.retain(|_, &mut (u, p)| u != uffd || p < start || p >= start + len);
        sim.cv.notify_all();
    }

    /// Readies `page` for a load or store, as the MMU and the fault handler would.
    fn step(&mut self, page: u64, store: bool) -> Step {
        let Some(p) = self.pages.get_mut(&page) else { panic!("SIGSEGV: nothing mapped at {page:#x}") };
        let allowed = if store { libc::PROT_WRITE } else { libc::PROT_READ };
        assert!(p.prot & allowed != 0, "SIGSEGV: {page:#x} does not allow the access");
        let reg = |mode: u64| p.reg.filter(|&(_, m)| m & mode != 0).map(|(u, _)| u);
        let write = if store { UFFD_PAGEFAULT_FLAG_WRITE } else { 0 };
        match &p.content {
            Content::Poison => Step::Sigbus,
            Content::Missing => match reg(MODE_MISSING) {
                Some(u) => Step::Fault(u, write),
                None => {
                    p.content = if store { Content::Anon(vec![0; PAGE as usize].into()) } else { Content::Zero };
                    Step::Ready
                }
            },
            _ if store && p.wp && reg(MODE_WP).is_some() => {
                Step::Fault(reg(MODE_WP).expect("just checked"), write | UFFD_PAGEFAULT_FLAG_WP)
            }
            Content::Zero if store => {
                p.content = Content::Anon(vec![0; PAGE as usize].into());
                Step::Ready
            }
            Content::File { file, off, shared: false } if store => {
                let mut copy = vec![0; PAGE as usize];
                file.read_exact_at(&mut copy, *off).expect("device file readable");
                p.content = Content::Anon(copy.into());
                Step::Ready
            }
            _ => Step::Ready,
        }
    }
}

/// Runs `each` on every page of `[addr, addr+len)` once the page is ready for the access,
/// blocking on faults as a thread would.
fn access(addr: u64, len: u64, store: bool, mut each: impl FnMut(&mut Page, u64, usize, usize)) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let a = addr + done;
        let page = a / PAGE * PAGE;
        let n = (PAGE - (a - page)).min(len - done);
        let (sim, mut w) = world();
        loop {
            match w.step(page, store) {
                Step::Ready => break,
                Step::Sigbus => return Err(err(libc::EFAULT)),
                Step::Fault(u, flags) => {
                    let t = w.ticket();
                    w.waiting.insert(t, (u, page));
                    w.uffds[u].faults.push_back((page, flags));
                    sim.cv.notify_all();
                    while w.waiting.contains_key(&t) {
                        w = sim.cv.wait(w).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        }
        let p = w.pages.get_mut(&page).expect("ready pages exist");
        each(p, a - page, done as usize, n as usize);
        drop(w);
        done += n;
    }
    Ok(())
}

/// The simulation has no pagemap: mappings write back everything they map (the tracked path
/// runs on the real kernel only).
#[derive(Debug)]
pub(super) enum Pagemap {}

pub(super) fn open_pagemap() -> io::Result<Pagemap> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// # Safety
/// None needed (no pagemap can be opened here); unsafe to match `sys`.
pub(super) unsafe fn pagemap_scan(
    pagemap: &Pagemap,
    _start: u64,
    _end: u64,
    _out: &mut [super::dirty::PageRegion],
    _flags: u64,
) -> io::Result<(usize, u64)> {
    match *pagemap {}
}

pub(super) fn open() -> io::Result<(Fd, bool)> {
    let (_, mut w) = world();
    w.uffds.push(Queue::default());
    Ok((Fd(w.uffds.len() - 1), false))
}

/// # Safety
/// None needed (the simulation touches no real memory); unsafe to match `sys`.
pub(super) unsafe fn ioctl(fd: &Fd, op: Ioctl<'_>) -> io::Result<()> {
    let (sim, mut w) = world();
    let u = fd.0;
    let changing = !w.uffds[u].events.is_empty();
    // Checks a resolving call's range: no event pending, every page registered here and missing.
    let resolvable = |w: &World, r: &UffdioRange| -> io::Result<()> {
        if changing {
            return Err(err(libc::EAGAIN));
        }
        for a in pages(r.start, r.len) {
            match w.pages.get(&a) {
                Some(p) if p.reg.map(|(x, _)| x) == Some(u) => {
                    if !matches!(p.content, Content::Missing) {
                        return Err(err(libc::EEXIST));
                    }
                }
                _ => return Err(err(libc::ENOENT)),
            }
        }
        Ok(())
    };
    match op {
        Ioctl::Api(a) => w.uffds[u].features = a.features,
        Ioctl::Register(r) => {
            if pages(r.range.start, r.range.len).any(|a| !w.pages.contains_key(&a)) {
                return Err(err(libc::EINVAL));
            }
            for a in pages(r.range.start, r.range.len) {
                w.pages.get_mut(&a).expect("checked above").reg = Some((u, r.mode));
            }
        }
        Ioctl::Unregister(r) => {
            for a in pages(r.start, r.len) {
                if let Some(p) = w.pages.get_mut(&a) {
                    p.reg = None;
                }
            }
            w.wake(sim, u, r.start, r.len);
        }
        Ioctl::Wake(r) => w.wake(sim, u, r.start, r.len),
        Ioctl::Copy(c, src) => {
            let r = UffdioRange { start: c.dst, len: c.len };
            resolvable(&w, &r)?;
            // A write-protected copy needs a range registered for WP faults (EINVAL otherwise).
            let wp_mode = |a: u64| w.pages.get(&a).and_then(|p| p.reg).is_some_and(|(_, m)| m & MODE_WP != 0);
            if c.mode & MODE_COPY_WP != 0 && !pages(r.start, r.len).all(wp_mode) {
                return Err(err(libc::EINVAL));
            }
            for (i, a) in pages(r.start, r.len).enumerate() {
                let p = w.pages.get_mut(&a).expect("checked above");
                p.content = Content::Anon(src[i * PAGE as usize..(i + 1) * PAGE as usize].into());
                p.wp = c.mode & MODE_COPY_WP != 0;
            }
            if c.mode & MODE_DONTWAKE == 0 {
                w.wake(sim, u, r.start, r.len);
            }
        }
        Ioctl::Zeropage(z) => {
            resolvable(&w, &z.range)?;
            for a in pages(z.range.start, z.range.len) {
                let p = w.pages.get_mut(&a).expect("checked above");
                p.content = Content::Zero;
                p.wp = false;
            }
            if z.mode & MODE_DONTWAKE == 0 {
                w.wake(sim, u, z.range.start, z.range.len);
            }
        }
        Ioctl::Poison(p) => {
            resolvable(&w, &p.range)?;
            for a in pages(p.range.start, p.range.len) {
                w.pages.get_mut(&a).expect("checked above").content = Content::Poison;
            }
            if p.mode & MODE_DONTWAKE == 0 {
                w.wake(sim, u, p.range.start, p.range.len);
            }
        }
        Ioctl::Writeprotect(x) => {
            if changing {
                return Err(err(libc::EAGAIN));
            }
            let protect = x.mode & MODE_WP_SET != 0;
            for a in pages(x.range.start, x.range.len) {
                match w.pages.get_mut(&a) {
                    // Without WP_UNPOPULATED only present pages carry protection.
                    Some(p) if p.reg.is_some_and(|(x, m)| x == u && m & MODE_WP != 0) => {
                        p.wp = protect && !matches!(p.content, Content::Missing);
                    }
                    _ => return Err(err(libc::ENOENT)),
                }
            }
            if !protect && x.mode & MODE_WP_DONTWAKE == 0 {
                w.wake(sim, u, x.range.start, x.range.len);
            }
        }
    }
    Ok(())
}

/// Wakes the readers of `fd` for good: with nothing to read they return `None`.
pub(super) fn interrupt(fd: &Fd) {
    let (sim, mut w) = world();
    w.uffds[fd.0].interrupted = true;
    sim.cv.notify_all();
}

/// Blocks until a message is there, faults before events; `None` once interrupted.
pub(super) fn next_msg(fd: &Fd, _timeout_ms: i32) -> io::Result<Option<UffdMsg>> {
    let (sim, mut w) = world();
    loop {
        let q = &mut w.uffds[fd.0];
        if let Some((address, flags)) = q.faults.pop_front() {
            return Ok(Some(UffdMsg { event: UFFD_EVENT_PAGEFAULT, flags, address, ptid: 1, ..Default::default() }));
        }
        if let Some(t) = q.events.pop_front() {
            w.unread.remove(&t);
            sim.cv.notify_all();
            return Ok(Some(UffdMsg { event: UFFD_EVENT_REMAP, ..Default::default() }));
        }
        if q.interrupted {
            return Ok(None);
        }
        w = sim.cv.wait(w).unwrap_or_else(|e| e.into_inner());
    }
}

pub(super) fn map_anon(len: u64, prot: i32) -> io::Result<u64> {
    let (_, mut w) = world();
    let start = w.next_addr;
    w.next_addr += len.next_multiple_of(HUGE) + HUGE;
    for a in pages(start, len) {
        w.pages.insert(a, Page::fresh(prot));
    }
    Ok(start)
}

/// # Safety
/// As `sys::map_anon_at` (nothing real is touched).
pub(super) unsafe fn map_anon_at(addr: u64, len: u64, prot: i32) -> io::Result<()> {
    let (_, mut w) = world();
    for a in pages(addr, len) {
        w.pages.insert(a, Page::fresh(prot));
    }
    Ok(())
}

/// # Safety
/// As `sys::map_file_at` (nothing real is touched).
pub(super) unsafe fn map_file_at(
    addr: u64,
    len: u64,
    prot: i32,
    shared: bool,
    _populate: bool,
    fd: BorrowedFd<'_>,
    off: u64,
) -> io::Result<()> {
    let file = Arc::new(File::from(fd.try_clone_to_owned()?));
    let (_, mut w) = world();
    for (i, a) in pages(addr, len).enumerate() {
        let content = Content::File { file: file.clone(), off: off + i as u64 * PAGE, shared };
        w.pages.insert(a, Page { prot, reg: None, content, wp: false });
    }
    Ok(())
}

/// # Safety
/// As `sys::unmap` (nothing real is touched).
pub(super) unsafe fn unmap(addr: u64, len: u64) {
    let (_, mut w) = world();
    for a in pages(addr, len) {
        w.pages.remove(&a);
    }
}

/// # Safety
/// None needed.
pub(super) unsafe fn no_huge_pages(_addr: u64, _len: u64) {}

/// # Safety
/// As `sys::move_to` (nothing real is touched).
pub(super) unsafe fn move_to(from: u64, len: u64, to: u64) -> io::Result<()> {
    let (sim, mut w) = world();
    let moved: Vec<Page> = pages(from, len).map(|a| w.pages.remove(&a).expect("the source is mapped")).collect();
    let event = moved[0].reg.map(|(u, _)| u).filter(|&u| w.uffds[u].features & FEATURE_EVENT_REMAP != 0);
    for (a, p) in pages(to, len).zip(moved) {
        w.pages.insert(a, p);
    }
    if let Some(u) = event {
        let t = w.ticket();
        w.uffds[u].events.push_back(t);
        w.unread.insert(t);
        sim.cv.notify_all();
        while w.unread.contains(&t) {
            w = sim.cv.wait(w).unwrap_or_else(|e| e.into_inner());
        }
    }
    Ok(())
}

fn read_page(p: &Page, at: u64, out: &mut [u8]) {
    match &p.content {
        Content::Zero => out.fill(0),
        Content::Anon(b) => out.copy_from_slice(&b[at as usize..at as usize + out.len()]),
        Content::File { file, off, .. } => file.read_exact_at(out, off + at).expect("device file readable"),
        Content::Missing | Content::Poison => unreachable!("readied for the access"),
    }
}

fn write_page(p: &mut Page, at: u64, data: &[u8]) {
    match &mut p.content {
        Content::Anon(b) => b[at as usize..at as usize + data.len()].copy_from_slice(data),
        Content::File { file, off, shared: true } => file.write_all_at(data, *off + at).expect("device file writable"),
        _ => unreachable!("readied for the store"),
    }
}

/// # Safety
/// None needed (nothing real is touched).
pub(super) unsafe fn load(addr: u64, buf: &mut [u8]) -> io::Result<()> {
    access(addr, buf.len() as u64, false, |p, at, from, n| read_page(p, at, &mut buf[from..from + n]))
}

/// # Safety
/// None needed (nothing real is touched).
pub(super) unsafe fn store(addr: u64, data: &[u8]) -> io::Result<()> {
    access(addr, data.len() as u64, true, |p, at, from, n| write_page(p, at, &data[from..from + n]))
}

/// # Safety
/// None needed (nothing real is touched).
pub(super) unsafe fn fill(addr: u64, len: u64, byte: u8) -> io::Result<()> {
    access(addr, len, true, |p, at, _, n| write_page(p, at, &vec![byte; n]))
}

/// # Safety
/// None needed (nothing real is touched).
pub(super) unsafe fn probe(addr: u64) -> io::Result<bool> {
    match access(addr, 1, false, |_, _, _, _| {}) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => Ok(false),
        Err(e) => Err(e),
    }
}
