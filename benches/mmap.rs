//! DAX mappings, measured beside tmpfs and the raw device in the same run:
//! `cargo bench --bench mmap` (`-- --gib N` for the size of the written file, default 1).
//!
//! - setup: mmap of a fully written file (every extent mapped from the device at mmap time) and
//!   the faults a full read of it then takes (the goal is none);
//! - sequential read bandwidth through the mapping, against a memcpy from the device's own
//!   mapping (the floor) and from a mapping of a tmpfs file of the same size;
//! - cost per first store into a hole page, with 2 MiB first-store allocation and without,
//!   against the first store into a page of a sparse tmpfs file;
//! - msync of the whole mapping after storing to one page.
//!
//! The udax image and the tmpfs files live in /dev/shm (or /tmp when it is missing). tmpfs is
//! reached through `Device`, which maps a file shared: the same kind of mapping a program gets.

use std::time::Instant;

use udax::{Device, Fs, MkfsOptions, OpenOptions, Prot, Share, PAGE};

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
    let fs = Fs::mkfs(
        Device::create(&dir.path().join("bench.img"), len + 3 * holes + (256 << 20)).unwrap(),
        &MkfsOptions::default(),
    )
    .unwrap();
    println!("udax image on {base}, 4 KiB blocks; written file {} MiB", len >> 20);

    // A fully written file.
    let f = fs.open("/written", OpenOptions::create()).unwrap();
    let chunk = vec![0x5au8; CHUNK];
    let mut off = 0;
    while off < len {
        f.write_at(&chunk, off).unwrap();
        off += CHUNK as u64;
    }
    let extents = f.extents().unwrap().len();
    let setup = median(11, || {
        let t = Instant::now();
        let m = f.mmap(0, len, Prot::Read, Share::Shared).unwrap();
        let s = secs(t);
        drop(m);
        s
    });
    let m = f.mmap(0, len, Prot::ReadWrite, Share::Shared).unwrap();
    let before = fs.mmap_stats();
    let first = bandwidth(len, |o, b| m.read(o, b).unwrap());
    let after = fs.mmap_stats();
    let faults = (after.faults_zero_page + after.faults_first_store + after.faults_mapped + after.faults_copied)
        - (before.faults_zero_page + before.faults_first_store + before.faults_mapped + before.faults_copied);
    println!(
        "setup    mmap of the {} MiB file ({extents} extents): {:.1} µs median of 11; faults during a full read: {faults}",
        len >> 20,
        setup * 1e6
    );
    let udax_bw = median(5, || bandwidth(len, |o, b| m.read(o, b).unwrap()));
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
    m.write(12345, &[1]).unwrap();
    let t = Instant::now();
    m.flush().unwrap();
    println!(
        "msync    of the {} MiB mapping after one store: {:.2} ms (flushes every mapped block)",
        len >> 20,
        secs(t) * 1e3
    );
    drop(m);
    drop(tdev);
    std::fs::remove_file(&tpath).unwrap();

    // First stores into holes.
    let mut per_page = Vec::new();
    for huge in [true, false] {
        fs.set_mmap_huge(huge);
        let name = if huge { "/holes-2m" } else { "/holes-4k" };
        let h = fs.open(name, OpenOptions::create()).unwrap();
        h.set_len(holes).unwrap();
        let hm = h.mmap(0, holes, Prot::ReadWrite, Share::Shared).unwrap();
        let s0 = fs.mmap_stats();
        let t = Instant::now();
        for p in 0..holes / PAGE {
            hm.write(p * PAGE, &[1]).unwrap();
        }
        let per = secs(t) / (holes / PAGE) as f64;
        let s1 = fs.mmap_stats();
        println!(
            "store    first store per page into holes, 2 MiB allocation {}: {:.2} µs ({} first-store faults, {} 2 MiB faults)",
            if huge { "on " } else { "off" },
            per * 1e6,
            s1.faults_first_store - s0.faults_first_store,
            s1.faults_huge - s0.faults_huge
        );
        per_page.push(per);
    }
    let tpath = dir.path().join("tmpfs-holes");
    let tdev = Device::create(&tpath, holes).unwrap();
    let t = Instant::now();
    for p in 0..holes / PAGE {
        tdev.store_u64(p * PAGE, 1).unwrap();
    }
    let tmpfs_store = secs(t) / (holes / PAGE) as f64;
    println!(
        "store    tmpfs first store per page (store + line write-back): {:.2} µs | udax/tmpfs: 2 MiB {:.2}, 4 KiB {:.2}",
        tmpfs_store * 1e6,
        per_page[0] / tmpfs_store,
        per_page[1] / tmpfs_store
    );
}
