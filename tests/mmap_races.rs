//! Mappings under real concurrency: the cases an outside review found broken (issue "race-free
//! DAX mappings"), each as a regression test. Threads share one `Fs`; every test has a watchdog,
//! so a deadlock fails it instead of hanging.
//!
//! - Invalidation used to map fresh anonymous memory over a page and register it afterwards; a
//!   touch in between got an ordinary private page that stayed detached from the file, so
//!   stores were lost and the mapping disagreed with `read_at` (cases 1 and 2).
//! - A second fault message for a page that an earlier one had resolved made the service fail
//!   with EEXIST and poison a page inside EOF: SIGBUS with the size unchanged (case 3). A
//!   SIGBUS kills this test binary, which fails the run.
//! - Arguments copied under an inode lock from a mapping could fault to a service that needed
//!   that lock (`setxattr` with a mapped value, case 4), or a lock of another file system
//!   (writes between two images from each other's mappings, case 5).
//! - One handler thread served every fault, taking inode locks: faults on an idle file waited
//!   behind a long write to another (case 6).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, RwLock};
use std::time::{Duration, Instant};

use common::{watchdog, Rng};
use udax::{Device, FallocMode, File, Fs, MkfsOptions, OpenOptions, Prot, Share, XattrFlags, PAGE};

fn fs_with(bs: u32, bytes: u64) -> Fs {
    Fs::mkfs(Device::anonymous(bytes).unwrap(), &MkfsOptions { block_size: bs, ..Default::default() }).unwrap()
}

fn rw(fs: &Fs, path: &str) -> File {
    fs.open(path, OpenOptions::create()).unwrap()
}

fn fsck_clean(fs: &Fs) {
    let r = udax::check::check(fs, &mut |_, _| {});
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

/// How the invalidating thread of [`mapping_stays_coherent`] changes the file.
#[derive(Debug, Clone, Copy)]
enum Churn {
    Punch,
    ZeroRange,
    PunchThenWrite,
    /// write / truncate to 0, 100 or 8192 (stores keep to pages inside EOF, see below).
    WriteTruncate,
}

/// Cases 1 and 3: one thread churns an 8 KiB file, one stores through a shared mapping, one
/// loads through it; every few milliseconds all stop and the mapping must equal `read_at`, and
/// a store through the mapping must show in `read_at` (the mapping is still the file's).
fn mapping_stays_coherent(bs: u32, churn: Churn, rounds: u32) -> u32 {
    const LEN: u64 = 2 * PAGE;
    let fs = fs_with(bs, 32 << 20);
    let f = rw(&fs, "/f");
    f.write_at(&[7; LEN as usize], 0).unwrap();
    let m = f.mmap(0, LEN, Prot::ReadWrite, Share::Shared).unwrap();
    // Truncation below a page the store thread uses waits until no store is in flight there.
    let size_lock = RwLock::new(());
    let gate = Barrier::new(4);
    let stop = AtomicBool::new(false);
    let mut mismatches = 0;
    std::thread::scope(|s| {
        let (f, m, gate, stop, size_lock) = (&f, &m, &gate, &stop, &size_lock);
        s.spawn(move || {
            let mut r = Rng(0x1234_5678);
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    let off = r.below(LEN / 512) * 512;
                    let v = [1 + r.below(200) as u8; 512];
                    match churn {
                        Churn::Punch => f.fallocate(0, LEN, FallocMode::PunchHole).unwrap(),
                        Churn::ZeroRange => f.fallocate(0, LEN, FallocMode::ZeroRange { keep_size: true }).unwrap(),
                        Churn::PunchThenWrite => {
                            f.fallocate(0, LEN, FallocMode::PunchHole).unwrap();
                            f.write_at(&v, off).unwrap();
                        }
                        Churn::WriteTruncate => match r.below(4) {
                            0 => drop(f.write_at(&v, off).unwrap()),
                            1 => {
                                let _g = size_lock.write().unwrap();
                                f.set_len([0, 100][r.below(2) as usize]).unwrap();
                            }
                            _ => f.set_len(LEN).unwrap(),
                        },
                    }
                }
                gate.wait();
                gate.wait();
            }
        });
        // One thread stores through the mapping, one loads; both keep to pages inside EOF.
        for (seed, store) in [(0x9abc_def1, true), (0x2468_ace0, false)] {
            s.spawn(move || {
                let mut r = Rng(seed);
                let mut b = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..200 {
                        let _g = size_lock.read().unwrap();
                        let size = f.metadata().unwrap().size;
                        let off = r.below(LEN - 64);
                        if off + 64 > size.next_multiple_of(PAGE) {
                            continue;
                        }
                        if store {
                            m.write_at(&[1 + r.below(200) as u8; 64], off).unwrap();
                        } else {
                            m.read_at(&mut b, off).unwrap();
                        }
                    }
                    gate.wait();
                    gate.wait();
                }
            });
        }
        for round in 0..rounds {
            std::thread::sleep(Duration::from_millis(2));
            gate.wait();
            // Quiet: compare what the mapping shows with the file, inside EOF.
            let size = f.metadata().unwrap().size;
            let mut via_map = vec![0u8; size as usize];
            let mut via_read = vec![0u8; size as usize];
            m.read_at(&mut via_map, 0).unwrap();
            f.read_at(&mut via_read, 0).unwrap();
            let mut ok = via_map == via_read;
            if size > 0 {
                let mark = [(round % 250 + 1) as u8; 8];
                m.write_at(&mark, size - 8).unwrap();
                let mut back = [0u8; 8];
                f.read_at(&mut back, size - 8).unwrap();
                ok &= back == mark;
            }
            mismatches += u32::from(!ok);
            if round + 1 == rounds {
                stop.store(true, Ordering::Relaxed);
            }
            gate.wait();
        }
    });
    drop(m);
    fsck_clean(&fs);
    mismatches
}

#[test]
fn punch_and_zero_range_never_detach_a_mapping() {
    for churn in [Churn::Punch, Churn::ZeroRange, Churn::PunchThenWrite] {
        for bs in [1024, 4096] {
            let bad = watchdog("punch vs mapping", 120, move || mapping_stays_coherent(bs, churn, 150));
            assert_eq!(bad, 0, "{churn:?}, bs {bs}: {bad} of 150 quiet checks found the mapping unlike the file");
        }
    }
}

#[test]
fn write_truncate_and_mapped_stores_on_one_page_stay_coherent() {
    for bs in [1024, 4096] {
        let bad = watchdog("truncate vs mapping", 120, move || mapping_stays_coherent(bs, Churn::WriteTruncate, 300));
        assert_eq!(bad, 0, "bs {bs}: {bad} of 300 quiet checks found the mapping unlike the file");
    }
}

/// Case 3: many threads fault the same pages at once, again and again (every reset makes them
/// fault anew): the second and later messages for a page find it resolved and must only wake.
#[test]
fn simultaneous_faults_on_one_page_never_raise_sigbus() {
    let fs = fs_with(4096, 32 << 20);
    let f = rw(&fs, "/same");
    f.set_len(4 * PAGE).unwrap();
    let m = f.mmap(0, 4 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    let gate = Barrier::new(5);
    watchdog("simultaneous faults", 120, move || {
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (m, gate) = (&m, &gate);
                s.spawn(move || {
                    let mut b = [0u8; 1];
                    for i in 0..300u64 {
                        gate.wait();
                        m.read_at(&mut b, (i + t) % 4 * PAGE).unwrap();
                        if i % 3 == 0 {
                            m.write_at(&[1], i % 4 * PAGE + t).unwrap();
                        }
                        gate.wait();
                    }
                });
            }
            for _ in 0..300 {
                gate.wait();
                gate.wait();
                f.fallocate(0, 4 * PAGE, FallocMode::PunchHole).unwrap();
            }
        });
        drop(m);
        fsck_clean(&fs);
    });
}

/// Case 2: after `set_len` shrinks a mapped file, no page past the new EOF page is loadable,
/// however a racing load got there; pages inside stay loadable.
#[test]
fn a_shrink_takes_every_page_past_eof_out_at_once() {
    const PAGES: u64 = 8;
    let fs = fs_with(4096, 32 << 20);
    watchdog("shrink vs loads", 120, move || {
        for trial in 0..1000 {
            let f = rw(&fs, "/shrink");
            f.set_len(0).unwrap();
            f.write_at(&[3; (PAGES * PAGE) as usize], 0).unwrap();
            let m = f.mmap(0, PAGES * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
            let mut b = [0u8; 1];
            for p in 0..PAGES {
                m.read_at(&mut b, p * PAGE).unwrap();
            }
            let done = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        let _ = m.loadable((PAGES - 1) * PAGE).unwrap();
                    }
                });
                std::thread::sleep(Duration::from_micros(50 + trial % 20 * 10));
                f.set_len(PAGE).unwrap();
                let loadable: Vec<u64> = (1..PAGES).filter(|&p| m.loadable(p * PAGE).unwrap()).collect();
                done.store(true, Ordering::Relaxed);
                assert!(loadable.is_empty(), "trial {trial}: pages {loadable:?} loadable right after the shrink");
            });
            assert!(m.loadable(0).unwrap());
            std::thread::sleep(Duration::from_millis(2));
            for p in 1..PAGES {
                assert!(!m.loadable(p * PAGE).unwrap(), "trial {trial}: page {p} loadable after the shrink");
            }
        }
        fsck_clean(&fs);
    });
}

/// Case 4: `setxattr` whose value lies in an untouched page of a mapping of the same file.
#[test]
fn setxattr_with_a_value_in_a_mapping_of_the_same_file() {
    let fs = fs_with(4096, 32 << 20);
    let f = rw(&fs, "/x");
    f.set_len(4 * PAGE).unwrap();
    f.write_at(&[b'v'; 100], PAGE).unwrap();
    let ino = f.ino();
    let m = f.mmap(0, 4 * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    let got = watchdog("setxattr from a mapping", 20, move || {
        // Page 2 is a hole never touched: copying the value faults.
        fs.setxattr(ino, b"user.hole", mapped(&m, 2 * PAGE, 64), XattrFlags::default()).unwrap();
        fs.setxattr(ino, b"user.data", mapped(&m, PAGE, 100), XattrFlags::default()).unwrap();
        (fs.getxattr(ino, b"user.hole").unwrap(), fs.getxattr(ino, b"user.data").unwrap())
    });
    assert_eq!(got, (vec![0; 64], vec![b'v'; 100]));
}

/// Case 5: two file systems, each thread writing to one from a buffer mapped from the other.
#[test]
fn writes_between_two_images_from_each_others_mappings() {
    let (a, b) = (fs_with(4096, 64 << 20), fs_with(4096, 64 << 20));
    let (fa, fb) = (rw(&a, "/a"), rw(&b, "/b"));
    const LEN: u64 = 64 * PAGE;
    for f in [&fa, &fb] {
        f.set_len(LEN).unwrap();
    }
    let (ma, mb) = (
        fa.mmap(0, LEN, Prot::ReadWrite, Share::Shared).unwrap(),
        fb.mmap(0, LEN, Prot::ReadWrite, Share::Shared).unwrap(),
    );
    watchdog("writes across images", 60, move || {
        std::thread::scope(|s| {
            // Each thread writes to `dst` from a mapping of `src_file` (another image).
            for (dst, src_file, src) in [(&fa, &fb, &mb), (&fb, &fa, &ma)] {
                s.spawn(move || {
                    for i in 0..200u64 {
                        // Punching the source's file makes its pages fault again.
                        if i % 10 == 0 {
                            src_file.fallocate(0, LEN, FallocMode::PunchHole).unwrap();
                        }
                        let off = i % 60 * PAGE;
                        dst.write_at(mapped(src, off, 4 * PAGE), off).unwrap();
                        dst.read_at(mapped(src, off, 4 * PAGE), off).unwrap();
                    }
                });
            }
        });
        drop((ma, mb));
        fsck_clean(&a);
        fsck_clean(&b);
    });
}

/// Case 6: faults on file Y are served while a long write to file X holds X's lock.
#[test]
fn faults_on_one_file_do_not_wait_for_a_long_write_to_another() {
    let fs = fs_with(4096, 400 << 20);
    let x = rw(&fs, "/x");
    let y = rw(&fs, "/y");
    const YPAGES: u64 = 16;
    y.set_len(YPAGES * PAGE).unwrap();
    let my = y.mmap(0, YPAGES * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    // A load fault on a page of X past the written range, in flight during the write too.
    x.set_len(2 << 30).unwrap();
    let mx = x.mmap(3 << 29, PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    let big = vec![5u8; 256 << 20];
    let started = AtomicBool::new(false);
    let y_done = AtomicU64::new(0);
    let x_took = watchdog("faults beside a long write", 120, move || {
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                started.store(true, Ordering::Release);
                let t = Instant::now();
                x.write_at(&big, 0).unwrap();
                (t.elapsed(), y_done.load(Ordering::Acquire))
            });
            while !started.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            std::thread::sleep(Duration::from_millis(5));
            s.spawn(move || mx.read_at(&mut [0u8; 1], 0).unwrap());
            // Time for X's fault to reach the service (the write takes a second or more).
            std::thread::sleep(Duration::from_millis(20));
            let mut b = [0u8; 1];
            for p in 0..YPAGES {
                my.read_at(&mut b, p * PAGE).unwrap();
                y_done.fetch_add(1, Ordering::AcqRel);
            }
            writer.join().unwrap()
        })
    });
    let (took, y_faults_during) = x_took;
    assert_eq!(
        y_faults_during, YPAGES,
        "only {y_faults_during} of {YPAGES} faults on Y were served during a {took:?} write to X"
    );
}

/// A write held the inode lock while it copied, so every fault on the file waited for the whole
/// write (a 64 MiB write stalled loads of the file's other pages for its length). The copy runs
/// without it now: load faults on the file are served while a long write to it is in flight.
#[test]
fn faults_on_a_file_are_served_during_a_long_write_to_it() {
    const PAGES: u64 = 1024;
    const BIG: usize = 128 << 20;
    let fs = fs_with(4096, 400 << 20);
    let x = rw(&fs, "/x");
    // Hole pages past the range the write fills, mapped.
    x.set_len(BIG as u64 + PAGES * PAGE).unwrap();
    let m = x.mmap(BIG as u64, PAGES * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    let big = vec![5u8; BIG];
    let done = AtomicBool::new(false);
    let during = watchdog("faults beside a long write to the same file", 120, move || {
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                x.write_at(&big, 0).unwrap();
                done.store(true, Ordering::Release);
            });
            // The write commits in chunks of at most 8 MiB: once one has, the write is under way
            // and more than a hundred milliseconds of copying remain.
            while x.metadata().unwrap().blocks == 0 {
                std::hint::spin_loop();
            }
            let mut during = 0;
            let mut b = [0u8; 1];
            for p in 0..PAGES {
                m.read_at(&mut b, p * PAGE).unwrap();
                assert_eq!(b, [0]);
                during += u64::from(!done.load(Ordering::Acquire));
            }
            writer.join().unwrap();
            let mut back = [0u8; 4];
            x.read_at(&mut back, BIG as u64 - 4).unwrap();
            assert_eq!(back, [5; 4]);
            during
        })
    });
    assert!(during >= 8, "only {during} of {PAGES} load faults on the file were served during the write");
}

/// While a reset's REMAP event waited to be read, the kernel refused to install pages through
/// the same userfaultfd (EAGAIN), and the service took that for a failure: SIGBUS inside EOF on
/// another file's mapping (found by `udax stress`).
#[test]
fn faults_served_while_another_file_is_reset() {
    const PAGES: u64 = 32;
    let fs = fs_with(4096, 64 << 20);
    let (f1, f2) = (rw(&fs, "/reset"), rw(&fs, "/load"));
    for f in [&f1, &f2] {
        f.write_at(&[9; (PAGES * PAGE) as usize], 0).unwrap();
    }
    let m1 = f1.mmap(0, PAGES * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    // Mappings are spread over the service's userfaultfds in turn: some share m1's.
    let loads: Vec<_> = (0..8)
        .map(|i| {
            f2.mmap(0, PAGES * PAGE, if i % 2 == 0 { Prot::Read } else { Prot::ReadWrite }, Share::Shared).unwrap()
        })
        .collect();
    let stop = AtomicBool::new(false);
    watchdog("faults beside resets", 60, move || {
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut b = [0u8; 1];
                for _ in 0..3000 {
                    f1.fallocate(0, PAGES * PAGE, FallocMode::PunchHole).unwrap();
                    m1.write_at(&[1], 0).unwrap();
                    m1.read_at(&mut b, 5 * PAGE).unwrap();
                }
                stop.store(true, Ordering::Relaxed);
            });
            for t in 0..2 {
                let (loads, stop, f2) = (&loads, &stop, &f2);
                s.spawn(move || {
                    let mut b = [0u8; 1];
                    while !stop.load(Ordering::Relaxed) {
                        for m in loads {
                            for p in (t..PAGES).step_by(2) {
                                m.read_at(&mut b, p * PAGE).unwrap();
                            }
                        }
                        // Zero range keeps the pages inside EOF and makes them fault again.
                        f2.fallocate(0, PAGES * PAGE, FallocMode::ZeroRange { keep_size: true }).unwrap();
                    }
                });
            }
        });
        drop((m1, loads));
        fsck_clean(&fs);
    });
}

/// The mapped bytes `[off, off+len)` as a slice, for handing mapped memory to code that takes
/// one (a read(2) into the mapping, an argument that lives there). The library lends no such
/// slice: other threads, mappings and processes may change the bytes while it lives.
#[allow(clippy::mut_from_ref)]
fn mapped(m: &udax::Mapping, off: u64, len: u64) -> &mut [u8] {
    assert!(off + len <= m.len(), "inside the mapping");
    // SAFETY: the range lies inside the mapping (checked above), which stays mapped while `m`
    // is borrowed; the test forms no other reference to those bytes while the slice lives, and
    // the stores other mappings make meanwhile are what it means to race.
    unsafe { std::slice::from_raw_parts_mut(m.as_ptr().add(off as usize), len as usize) }
}
