//! msync used to write back every block under a mapping (43–73 ms for 1 GiB after one store); it
//! now writes back the pages stored to since the last sync (DESIGN.md "msync / fsync"). A wrong
//! dirty set loses stores silently, so these tests watch what reaches the medium: the device's
//! crash recorder sees every line a sync writes back and fences, and each check asks that every
//! stored byte be among them, with the value stored.
//!
//! - Random stores over rounds, into written pages and holes, with a write and a truncate that
//!   take stored pages out of the mapping between stores. A planted bug (msync leaves out one
//!   page, `Sabotage::MsyncDropsPage`) must make it fail.
//! - Two threads store while a third syncs in a loop: every store that completed before a sync
//!   began is durable when that sync returns; none is lost to a race with the scan.
//! - Without tracking (`Fs::set_mmap_dirty_tracking(false)`, or a kernel without it), msync
//!   writes back every mapped block, as before.
//! - Stores through a mapping dropped before any sync, and through another mapping of the file.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{watchdog, Rng};
use udax::crashtest::Sabotage;
use udax::{Device, File, Fs, InFlight, MkfsOptions, OpenOptions, Prot, Share, PAGE};

const LINE: u64 = 64;

fn fs_with(bs: u32, bytes: u64) -> Fs {
    Fs::mkfs(Device::anonymous(bytes).unwrap(), &MkfsOptions { block_size: bs, ..Default::default() }).unwrap()
}

/// Every cache line made persistent since the last `take`, with the bytes it persisted.
#[derive(Clone, Default)]
struct Persisted(Arc<Mutex<HashMap<u64, [u8; 64]>>>);

impl Persisted {
    /// Starts recording `fs`'s device.
    fn record(fs: &Fs) -> Persisted {
        let p = Persisted::default();
        let seen = p.0.clone();
        fs.device().record(Box::new(move |lines: &[InFlight]| {
            let mut seen = seen.lock().unwrap();
            for l in lines.iter().filter(|l| l.fenced) {
                seen.insert(l.line, *l.versions.last().expect("a line in flight has a version"));
            }
        }));
        p
    }

    fn take(&self) -> HashMap<u64, [u8; 64]> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Device offset of file byte `off` (a written block).
fn dev_of(f: &File, off: u64) -> u64 {
    let ext = f.extents().unwrap();
    let e = ext.iter().find(|e| e.logical <= off && off < e.logical + e.length).expect("a written byte");
    e.physical + (off - e.logical)
}

/// The stores of `expect` (file offset → bytes, each inside one line) that `persisted` lacks.
fn missing(f: &File, persisted: &HashMap<u64, [u8; 64]>, expect: &BTreeMap<u64, [u8; 8]>) -> Vec<String> {
    let mut bad = Vec::new();
    for (&off, want) in expect {
        let dev = dev_of(f, off);
        let at = (dev % LINE) as usize;
        match persisted.get(&(dev / LINE * LINE)) {
            Some(line) if &line[at..at + 8] == want => {}
            Some(line) => bad.push(format!("file byte {off}: persisted {:?}, stored {want:?}", &line[at..at + 8])),
            None => bad.push(format!("file byte {off} (page {}): never written back", off / PAGE)),
        }
    }
    bad
}

const FILE: u64 = 32 << 20;
const WRITTEN: u64 = 16 << 20;

/// Stores at random places of a 32 MiB mapping (the first half written, the rest a hole) in
/// rounds, each ended by a sync; every stored byte must have been written back and fenced in
/// its round. Round 3 also writes over a stored page and fills the hole after it (the write
/// resets both pages in the mapping), round 5 truncates into the middle of a stored page.
/// Returns what went missing. `tracked` says whether the mapping tracked its stores.
fn random_rounds(bs: u32, tracking: bool, sabotage: Sabotage, seed: u64) -> (Vec<String>, bool) {
    let fs = fs_with(bs, 256 << 20);
    fs.set_mmap_dirty_tracking(tracking);
    let f = fs.open("/f", OpenOptions::create()).unwrap();
    for off in (0..WRITTEN).step_by(1 << 20) {
        f.write_at(&[0x5a; 1 << 20], off).unwrap();
    }
    f.set_len(FILE).unwrap();
    let m = f.mmap(0, FILE, Prot::ReadWrite, Share::Shared).unwrap();
    let tracked = m.tracks_stores();
    fs.sabotage(sabotage);
    let persisted = Persisted::record(&fs);
    let mut rng = Rng(seed);
    let mut bad = Vec::new();
    for round in 1..=6u8 {
        let mut expect = BTreeMap::new();
        let (stats, lines) = (fs.mmap_stats(), fs.device().counters().flush_lines);
        // Written pages, and hole pages from 24 MiB to the page round 5 cuts (the pages after
        // the written half stay a hole until round 3).
        let pages = WRITTEN / PAGE + (FILE / PAGE - 2) - (24 << 20) / PAGE;
        for i in 0..40u64 {
            let p = rng.below(pages);
            let page = if p < WRITTEN / PAGE { p } else { p + 2048 };
            let off = page * PAGE + rng.below(PAGE / 8) * 8;
            let bytes = [round, i as u8, 0xc3, 0x3c, rng.below(256) as u8, 1, 2, 3];
            m.write_at(&bytes, off).unwrap();
            expect.insert(off, bytes);
        }
        let edge = WRITTEN - PAGE + 64;
        if round == 3 {
            // A store into the last written page, then a write over that page's end and into the
            // hole after it: the write resets both pages in the mapping before it commits.
            m.write_at(&[3; 8], edge).unwrap();
            expect.insert(edge, [3; 8]);
            f.write_at(&[0x77; 100], WRITTEN - 50).unwrap();
            expect.retain(|&o, _| o + 8 <= WRITTEN - 50 || o >= WRITTEN + 50);
        }
        if round == 5 {
            // A store before the new EOF in the page a truncate cuts: its bytes stay file data.
            let cut = FILE - PAGE - 1000;
            m.write_at(&[5; 8], cut - 64).unwrap();
            expect.insert(cut - 64, [5; 8]);
            f.set_len(cut).unwrap();
            expect.retain(|&o, _| o + 8 <= cut);
        }
        if round == 6 {
            f.sync_all().unwrap();
        } else {
            m.flush().unwrap();
        }
        let got = persisted.take();
        bad.extend(missing(&f, &got, &expect).into_iter().map(|s| format!("round {round}: {s}")));
        let after = fs.mmap_stats();
        let quiet = after.faults_first_store == stats.faults_first_store && after.faults_huge == stats.faults_huge;
        let written_back = fs.device().counters().flush_lines - lines;
        if tracked && quiet && round != 3 && round != 5 {
            // Only the pages stored to: at most 40 pages of 64 lines (and a few of the journal).
            assert!(written_back <= 40 * PAGE / LINE + 64, "round {round}: {written_back} lines written back");
        }
    }
    fs.device().stop_recording();
    (bad, tracked)
}

#[test]
fn every_page_stored_between_syncs_is_written_back() {
    for (bs, seed) in [(4096, 7), (1024, 99)] {
        let (bad, tracked) = random_rounds(bs, true, Sabotage::None, seed);
        assert!(bad.is_empty(), "block size {bs}: {bad:#?}");
        if !tracked {
            eprintln!("this kernel offers no dirty tracking: msync wrote back every mapped block");
        }
    }
}

#[test]
fn a_sync_that_leaves_out_one_page_is_caught() {
    let (bad, tracked) = random_rounds(4096, true, Sabotage::MsyncDropsPage, 7);
    if tracked {
        assert!(!bad.is_empty(), "the planted bug went unseen");
        eprintln!("caught: {}", bad[0]);
    }
}

#[test]
fn without_tracking_msync_writes_back_every_mapped_block() {
    let (bad, tracked) = random_rounds(4096, false, Sabotage::None, 3);
    assert!(!tracked);
    assert!(bad.is_empty(), "{bad:#?}");
    let fs = fs_with(4096, 64 << 20);
    fs.set_mmap_dirty_tracking(false);
    let f = fs.open("/f", OpenOptions::create()).unwrap();
    f.write_at(&[1; 8 << 20], 0).unwrap();
    let m = f.mmap(0, 8 << 20, Prot::ReadWrite, Share::Shared).unwrap();
    m.write_at(&[2], 4096).unwrap();
    let before = fs.device().counters().flush_lines;
    m.flush().unwrap();
    assert!(fs.device().counters().flush_lines - before >= (8 << 20) / LINE, "every block");
}

#[test]
fn one_store_costs_one_page_of_write_back() {
    let fs = fs_with(4096, 128 << 20);
    let f = fs.open("/f", OpenOptions::create()).unwrap();
    for off in (0..64u64 << 20).step_by(8 << 20) {
        f.write_at(&[1; 8 << 20], off).unwrap();
    }
    let m = f.mmap(0, 64 << 20, Prot::ReadWrite, Share::Shared).unwrap();
    if !m.tracks_stores() {
        eprintln!("no dirty tracking on this kernel");
        return;
    }
    let mut buf = vec![0u8; 1 << 20];
    for off in (0..64u64 << 20).step_by(1 << 20) {
        m.read_at(&mut buf, off).unwrap(); // loads count for nothing
    }
    for round in 0..3u64 {
        m.write_at(&[9], (round * 1000 + 17) * PAGE + 5).unwrap();
        let before = fs.device().counters().flush_lines;
        m.flush().unwrap();
        assert_eq!(fs.device().counters().flush_lines - before, PAGE / LINE, "round {round}: one page");
    }
    let before = fs.device().counters().flush_lines;
    m.flush().unwrap();
    assert_eq!(fs.device().counters().flush_lines - before, 0, "nothing stored since");
}

#[test]
fn stores_through_a_dropped_mapping_and_another_mapping_are_written_back() {
    let fs = fs_with(4096, 64 << 20);
    let f = fs.open("/f", OpenOptions::create()).unwrap();
    f.write_at(&[1; 4 << 20], 0).unwrap();
    let persisted = Persisted::record(&fs);
    let a = f.mmap(0, 4 << 20, Prot::ReadWrite, Share::Shared).unwrap();
    let b = f.mmap(1 << 20, 2 << 20, Prot::ReadWrite, Share::Shared).unwrap();
    b.write_at(&[7; 8], 4096 + 8).unwrap(); // file byte 1 MiB + 4104
    a.write_at(&[6; 8], 3 * 4096).unwrap();
    a.flush().unwrap();
    let expect = BTreeMap::from([((1 << 20) + 4104, [7; 8]), (3 * 4096, [6; 8])]);
    let bad = missing(&f, &persisted.take(), &expect);
    assert!(bad.is_empty(), "msync of one mapping covers the file's other mappings: {bad:#?}");
    b.write_at(&[8; 8], 16).unwrap();
    drop(b);
    let bad = missing(&f, &persisted.take(), &BTreeMap::from([((1 << 20) + 16, [8; 8])]));
    assert!(bad.is_empty(), "a mapping going away writes back what it stored: {bad:#?}");
    fs.device().stop_recording();
}

/// The mapped bytes `[off, off+len)` as a slice, for a read(2) into the mapping.
#[allow(clippy::mut_from_ref)]
fn mapped(m: &udax::Mapping, off: u64, len: u64) -> &mut [u8] {
    assert!(off + len <= m.len(), "inside the mapping");
    // SAFETY: the range lies inside the mapping (checked above), which stays mapped while `m`
    // is borrowed; the test forms no other reference to those bytes while the slice lives.
    unsafe { std::slice::from_raw_parts_mut(m.as_ptr().add(off as usize), len as usize) }
}

/// Stores the kernel makes into a mapping (read(2) into it) are tracked like the program's own,
/// in pages written back before (protected again) and in pages never touched, with or without
/// kernel-mode faults for the fault service (the written pages are the device's, mapped at
/// mmap time, so the kernel reaches them either way).
#[test]
fn stores_by_the_kernel_are_written_back() {
    use std::io::{Read, Seek, Write};
    let fs = fs_with(4096, 64 << 20);
    let f = fs.open("/f", OpenOptions::create()).unwrap();
    f.write_at(&[1; 1 << 20], 0).unwrap();
    let m = f.mmap(0, 1 << 20, Prot::ReadWrite, Share::Shared).unwrap();
    m.write_at(&[2; 8], 5 * PAGE).unwrap();
    m.flush().unwrap(); // page 5 is written back and protected again; page 9 was never touched
    let persisted = Persisted::record(&fs);
    let mut host = tempfile::tempfile().unwrap();
    host.write_all(b"from the kernel!").unwrap();
    for page in [5, 9] {
        host.rewind().unwrap();
        assert_eq!(host.read(mapped(&m, page * PAGE + 64, 16)).unwrap(), 16);
    }
    m.flush().unwrap();
    let expect = BTreeMap::from([
        (5 * PAGE + 64, *b"from the"),
        (5 * PAGE + 72, *b" kernel!"),
        (9 * PAGE + 64, *b"from the"),
        (9 * PAGE + 72, *b" kernel!"),
    ]);
    let bad = missing(&f, &persisted.take(), &expect);
    assert!(bad.is_empty(), "{bad:#?}");
    fs.device().stop_recording();
}

const SLOTS: u64 = 96;

/// Where thread `t` stores its counter for slot `k`: a line of its own, pages interleaved.
fn slot(t: u64, k: u64) -> u64 {
    (2 * k + t) * PAGE + 128 + 64 * t
}

/// Two threads store increasing counters into random slots of their own, in bursts with pauses
/// (so that some stores stay the last in their page for a while, and a lost one stays lost); a
/// third syncs in a loop and, after each sync, checks that every slot's persisted counter is at
/// least the one stored there before the sync began. Returns the violations, the number of
/// syncs and whether the mapping tracked its stores.
fn stores_against_syncs(sabotage: Sabotage, run: Duration) -> (Vec<String>, u64, bool) {
    let fs = fs_with(4096, 64 << 20);
    let f = fs.open("/f", OpenOptions::create()).unwrap();
    f.write_at(&vec![0u8; (2 * SLOTS * PAGE) as usize], 0).unwrap();
    let m = Arc::new(f.mmap(0, 2 * SLOTS * PAGE, Prot::ReadWrite, Share::Shared).unwrap());
    let tracked = m.tracks_stores();
    let dev: Vec<u64> = (0..2 * SLOTS).map(|i| dev_of(&f, slot(i % 2, i / 2))).collect();
    fs.sabotage(sabotage);
    let persisted = Persisted::record(&fs);
    let stop = Arc::new(AtomicBool::new(false));
    // The last counter each thread stored into each slot (thread t, slot k at 2k + t).
    let stored: Arc<Vec<AtomicU64>> = Arc::new((0..2 * SLOTS).map(|_| AtomicU64::new(0)).collect());
    let storers: Vec<_> = (0..2u64)
        .map(|t| {
            let (m, stop, stored) = (m.clone(), stop.clone(), stored.clone());
            std::thread::spawn(move || {
                let (mut rng, mut n) = (Rng(0x9e37_79b9 + t), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..=rng.below(32) {
                        n += 1;
                        let k = rng.below(SLOTS);
                        m.write_at(&n.to_le_bytes(), slot(t, k)).unwrap();
                        stored[(2 * k + t) as usize].store(n, Ordering::Release);
                    }
                    std::thread::sleep(Duration::from_micros(rng.below(100)));
                }
            })
        })
        .collect();
    let mut bad = Vec::new();
    let mut durable: HashMap<u64, u64> = HashMap::new();
    let (mut syncs, started) = (0u64, Instant::now());
    while started.elapsed() < run && bad.len() < 10 {
        let before: Vec<u64> = stored.iter().map(|s| s.load(Ordering::Acquire)).collect();
        m.flush().unwrap();
        syncs += 1;
        for (line, bytes) in persisted.take() {
            // Every slot starts a line: its counter is the line's first 8 bytes.
            durable.insert(line, u64::from_le_bytes(bytes[..8].try_into().unwrap()));
        }
        for (i, &want) in before.iter().enumerate() {
            let have = durable.get(&dev[i]).copied().unwrap_or(0);
            if have < want {
                let (t, k) = (i % 2, i / 2);
                bad.push(format!("sync {syncs}: thread {t} slot {k} persisted {have}, stored {want} before the sync"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in storers {
        s.join().unwrap();
    }
    fs.device().stop_recording();
    (bad, syncs, tracked)
}

#[test]
fn stores_racing_syncs_are_never_lost() {
    let (bad, syncs, tracked) =
        watchdog("stores against syncs", 120, || stores_against_syncs(Sabotage::None, Duration::from_secs(2)));
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(syncs > 20, "only {syncs} syncs ran");
    eprintln!("{syncs} syncs (tracked: {tracked})");
}

#[test]
fn a_sync_that_leaves_out_one_page_loses_racing_stores() {
    let (bad, _, tracked) = watchdog("stores against syncs, planted", 120, || {
        stores_against_syncs(Sabotage::MsyncDropsPage, Duration::from_secs(2))
    });
    if tracked {
        assert!(!bad.is_empty(), "the planted bug went unseen");
    }
}
