//! DAX mappings, measured beside tmpfs and the raw device in the same run:
//! `cargo bench --bench mmap` (`-- --gib N` for the size of the written file, default 1).
//!
//! - setup: mmap of a fully written file (every extent mapped from the device at mmap time) and
//!   the faults a full read of it then takes (the goal is none);
//! - sequential read bandwidth through the mapping, against a memcpy from the device's own
//!   mapping (the floor) and from a mapping of a tmpfs file of the same size;
//! - cost per first store into a hole page, with 2 MiB first-store allocation and without,
//!   against the first store into a page of a sparse tmpfs file (and the 2 MiB path again on a
//!   sparse image);
//! - msync of the whole mapping after storing to one page, tracked (only the pages stored to
//!   are written back) and untracked (every mapped block);
//! - fault throughput: loads of hole pages per second with 1, 2 and 4 faulting threads, each on
//!   a mapping of its own file;
//! - fault latency on a file Y, idle and while another thread writes 64 MiB at a time to file X
//!   and a third faults on X (faults on Y must not wait for X's lock).
//!
//! The udax image and the tmpfs files live in /dev/shm (or /tmp when it is missing); the image is
//! populated first (`Device::populate`), as the memory of a pmem or CXL device is present. tmpfs is
//! reached through `Device`, which maps a file shared: the same kind of mapping a program gets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use udax::{Device, Fs, Mapping, MkfsOptions, OpenOptions, Prot, Share, PAGE};

const CHUNK: usize = 8 << 20;

/// Median of `runs` timings of `f`, in seconds.
fn median(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..runs).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[runs / 2]
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Reads `len` bytes in `CHUNK` pieces with `read(off, buf)`; returns GB/s.
fn bandwidth(len: u64, mut read: impl FnMut(u64, &mut [u8])) -> f64 {
    let mut buf = vec![0u8; CHUNK];
    let t = Instant::now();
    let mut off = 0;
    while off < len {
        read(off, &mut buf);
        off += CHUNK as u64;
    }
    std::hint::black_box(&buf);
    len as f64 / secs(t) / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gib = args.iter().position(|a| a == "--gib").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    let len: u64 = gib.unwrap_or(1) << 30;
    let holes: u64 = 256 << 20;
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::tempdir_in(base).unwrap();
    // Populated, as the memory of a pmem or CXL device is present: first stores pay for zeroing
    // and mapping the device, not for tmpfs allocating and clearing its pages.
    let dev = Device::create(dir.path().join("bench.img"), len + 3 * holes + (256 << 20)).unwrap();
    dev.populate().unwrap();
    let fs = Fs::mkfs(dev, &MkfsOptions::default()).unwrap();
    println!("udax image on {base} (populated), 4 KiB blocks; written file {} MiB", len >> 20);

    // A fully written file.
    let f = fs.open("/written", OpenOptions::create()).unwrap();
    let chunk = vec![0x5au8; CHUNK];
    let mut off = 0;
    while off < len {
        f.write_at(&chunk, off).unwrap();
        off += CHUNK as u64;
    }
    let extents = f.extents().unwrap().len();
    let setup_of = |prot: Prot| {
        median(11, || {
            let t = Instant::now();
            let m = f.mmap(0, len, prot, Share::Shared).unwrap();
            let s = secs(t);
            drop(m);
            s
        })
    };
    // A read-write shared mapping also marks its pages clean for dirty tracking.
    let (setup, setup_rw) = (setup_of(Prot::Read), setup_of(Prot::ReadWrite));
    let m = f.mmap(0, len, Prot::ReadWrite, Share::Shared).unwrap();
    let before = fs.mmap_stats();
    let first = bandwidth(len, |o, b| m.read_at(b, o).unwrap());
    let after = fs.mmap_stats();
    let faults = (after.faults_zero_page + after.faults_first_store + after.faults_mapped + after.faults_copied)
        - (before.faults_zero_page + before.faults_first_store + before.faults_mapped + before.faults_copied);
    println!(
        "setup    mmap of the {} MiB file ({extents} extents): {:.1} µs median of 11, read-write {:.1} µs; faults during a full read: {faults}",
        len >> 20,
        setup * 1e6,
        setup_rw * 1e6
    );
    let udax_bw = median(5, || bandwidth(len, |o, b| m.read_at(b, o).unwrap()));
    // The floor: the same bytes copied straight from the device's own mapping.
    let dev = fs.device();
    let ext = f.extents().unwrap();
    let phys = |o: u64| {
        let e = ext.iter().find(|e| e.logical <= o && o < e.logical + e.length).unwrap();
        assert!(o + CHUNK as u64 <= e.logical + e.length, "chunks lie inside extents");
        e.physical + (o - e.logical)
    };
    let floor_bw = median(5, || bandwidth(len, |o, b| dev.read(phys(o), b).unwrap()));
    let tpath = dir.path().join("tmpfs-written");
    let tdev = Device::create(&tpath, len).unwrap();
    let mut off = 0;
    while off < len {
        tdev.write(off, &chunk).unwrap();
        off += CHUNK as u64;
    }
    let tmpfs_bw = median(5, || bandwidth(len, |o, b| tdev.read(o, b).unwrap()));
    println!(
        "read     mapping {udax_bw:.2} GB/s (first pass {first:.2}) | device memcpy floor {floor_bw:.2} GB/s | tmpfs mapping {tmpfs_bw:.2} GB/s | udax/floor {:.2}  udax/tmpfs {:.2}",
        udax_bw / floor_bw,
        udax_bw / tmpfs_bw
    );
    // msync after one store (to a different page each time): the first after the mapping was
    // made and read, then the median of 11; then on a mapping that does not track its stores,
    // which writes back every mapped block (and whose first read pass keeps fault-around).
    let pages = len / PAGE;
    let store_and_sync = |m: &Mapping, i: u64| {
        m.write_at(&[1], (i * 7919 % pages) * PAGE + 5).unwrap();
        let t = Instant::now();
        m.flush().unwrap();
        secs(t)
    };
    let tracked = m.tracks_stores();
    let first_sync = store_and_sync(&m, 0);
    let mut i = 0;
    let sync = median(11, || {
        i += 1;
        store_and_sync(&m, i)
    });
    drop(m);
    fs.set_mmap_dirty_tracking(false);
    let u = f.mmap(0, len, Prot::ReadWrite, Share::Shared).unwrap();
    let untracked_first = bandwidth(len, |o, b| u.read_at(b, o).unwrap());
    let untracked_sync = median(3, || store_and_sync(&u, 1));
    drop(u);
    fs.set_mmap_dirty_tracking(true);
    println!(
        "msync    of the {} MiB mapping after one store: {:.3} ms median of 11, {:.3} ms the first after mmap{} | untracked {:.2} ms (every mapped block; its first read pass {:.2} GB/s)",
        len >> 20,
        sync * 1e3,
        first_sync * 1e3,
        if tracked { "" } else { " (this kernel tracks no stores: every mapped block)" },
        untracked_sync * 1e3,
        untracked_first
    );
    drop(tdev);
    std::fs::remove_file(&tpath).unwrap();

    // First stores into holes. The 4 KiB run stays below the mapping budget's pressure mark
    // (past it, first stores allocate clusters: counted, and expected to be 0 here).
    let mut per_page = Vec::new();
    for huge in [true, false] {
        fs.set_mmap_huge(huge);
        let (name, len) = if huge { ("/holes-2m", holes) } else { ("/holes-4k", holes / 8) };
        let h = fs.open(name, OpenOptions::create()).unwrap();
        h.set_len(len).unwrap();
        let hm = h.mmap(0, len, Prot::ReadWrite, Share::Shared).unwrap();
        let s0 = fs.mmap_stats();
        let t = Instant::now();
        for p in 0..len / PAGE {
            hm.write_at(&[1], p * PAGE).unwrap();
        }
        let per = secs(t) / (len / PAGE) as f64;
        let s1 = fs.mmap_stats();
        println!(
            "store    first store per page into holes, 2 MiB allocation {}: {:.2} µs ({} first-store faults, {} 2 MiB faults, {} clustered)",
            if huge { "on " } else { "off" },
            per * 1e6,
            s1.faults_first_store - s0.faults_first_store,
            s1.faults_huge - s0.faults_huge,
            s1.faults_clustered - s0.faults_clustered
        );
        per_page.push(per);
    }
    // The same 2 MiB path on a sparse image, where tmpfs allocates and clears each device page
    // at its first touch (the emulation's cost, which device memory does not have).
    let sparse =
        Fs::mkfs(Device::create(dir.path().join("sparse.img"), holes + (64 << 20)).unwrap(), &MkfsOptions::default())
            .unwrap();
    let h = sparse.open("/holes", OpenOptions::create()).unwrap();
    h.set_len(holes).unwrap();
    let hm = h.mmap(0, holes, Prot::ReadWrite, Share::Shared).unwrap();
    let t = Instant::now();
    for p in 0..holes / PAGE {
        hm.write_at(&[1], p * PAGE).unwrap();
    }
    let sparse_per = secs(t) / (holes / PAGE) as f64;
    drop((hm, h, sparse));
    std::fs::remove_file(dir.path().join("sparse.img")).unwrap();
    let tpath = dir.path().join("tmpfs-holes");
    let tdev = Device::create(&tpath, holes).unwrap();
    let t = Instant::now();
    for p in 0..holes / PAGE {
        tdev.store_u64(p * PAGE, 1).unwrap();
    }
    let tmpfs_store = secs(t) / (holes / PAGE) as f64;
    println!(
        "store    tmpfs first store per page (store + line write-back): {:.2} µs | udax/tmpfs: 2 MiB {:.2}, 4 KiB {:.2} | 2 MiB on a sparse image {:.2} µs ({:.2})",
        tmpfs_store * 1e6,
        per_page[0] / tmpfs_store,
        per_page[1] / tmpfs_store,
        sparse_per * 1e6,
        sparse_per / tmpfs_store
    );
    drop(tdev);
    std::fs::remove_file(&tpath).unwrap();

    fault_throughput(&fs);
    fault_latency_beside_writes(&fs);
}

/// Loads of hole pages per second with 1, 2 and 4 threads, each on its own sparse file.
fn fault_throughput(fs: &Fs) {
    const PAGES: u64 = 16384;
    let mut rates = Vec::new();
    for threads in [1u64, 2, 4] {
        let rate = median(3, || {
            let maps: Vec<_> = (0..threads)
                .map(|i| {
                    let f = fs.open(format!("/tput-{threads}-{i}"), OpenOptions::create()).unwrap();
                    f.set_len(PAGES * PAGE).unwrap();
                    f.mmap(0, PAGES * PAGE, Prot::ReadWrite, Share::Shared).unwrap()
                })
                .collect();
            let t = Instant::now();
            std::thread::scope(|s| {
                for m in &maps {
                    s.spawn(move || {
                        let mut b = [0u8; 1];
                        for p in 0..PAGES {
                            m.read_at(&mut b, p * PAGE).unwrap();
                        }
                    });
                }
            });
            (threads * PAGES) as f64 / secs(t)
        });
        rates.push(rate);
    }
    println!(
        "faults   hole loads/s: 1 thread {:.0}k | 2 threads {:.0}k ({:.2}x) | 4 threads {:.0}k ({:.2}x)",
        rates[0] / 1e3,
        rates[1] / 1e3,
        rates[1] / rates[0],
        rates[2] / 1e3,
        rates[2] / rates[0]
    );
}

/// Median and 99th percentile of single load faults on file Y, in µs.
fn y_latency(fs: &Fs, name: &str) -> (f64, f64) {
    const PAGES: u64 = 4096;
    let f = fs.open(name, OpenOptions::create()).unwrap();
    f.set_len(PAGES * PAGE).unwrap();
    let m = f.mmap(0, PAGES * PAGE, Prot::ReadWrite, Share::Shared).unwrap();
    let mut b = [0u8; 1];
    let mut lat: Vec<f64> = (0..PAGES)
        .map(|p| {
            let t = Instant::now();
            m.read_at(&mut b, p * PAGE).unwrap();
            secs(t) * 1e6
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

/// Fault latency on Y idle, then while 64 MiB writes to X hold X's lock and a thread faults on X.
fn fault_latency_beside_writes(fs: &Fs) {
    let idle = y_latency(fs, "/y-idle");
    let x = fs.open("/x", OpenOptions::create()).unwrap();
    x.set_len(1 << 30).unwrap();
    let mx = x.mmap(512 << 20, 64 << 20, Prot::ReadWrite, Share::Shared).unwrap();
    let stop = AtomicBool::new(false);
    let busy = std::thread::scope(|s| {
        s.spawn(|| {
            let data = vec![7u8; 64 << 20];
            while !stop.load(Ordering::Relaxed) {
                x.write_at(&data, 0).unwrap();
            }
        });
        s.spawn(|| {
            let mut b = [0u8; 1];
            let mut p = 0;
            while !stop.load(Ordering::Relaxed) && p < (64 << 20) / PAGE {
                mx.read_at(&mut b, p * PAGE).unwrap();
                p += 1;
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        let busy = y_latency(fs, "/y-busy");
        stop.store(true, Ordering::Relaxed);
        busy
    });
    println!(
        "latency  load fault on Y, median / p99: idle {:.1} / {:.1} µs | beside 64 MiB writes to X and faults on X {:.1} / {:.1} µs | busy/idle median {:.2}",
        idle.0,
        idle.1,
        busy.0,
        busy.1,
        busy.0 / idle.0
    );
}
