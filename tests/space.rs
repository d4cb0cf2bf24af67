//! Space management: fallocate modes, unwritten extents, punch and zero range, SEEK_DATA /
//! SEEK_HOLE, and the seed scenarios S2 and S6 (without mmap), for every block size.

use udax::{Creds, Device, ExtentInfo, FallocMode, Fs, MkfsOptions, OpenOptions};

const BLOCK_SIZES: [u32; 3] = [1024, 2048, 4096];
/// One way of growing a file, for S6.
type Step = Box<dyn Fn(&Fs) -> udax::Result<()>>;
const KEEP: FallocMode = FallocMode::Allocate { keep_size: true };
const GROW: FallocMode = FallocMode::Allocate { keep_size: false };

fn fresh(size: u64, block_size: u32) -> Fs {
    Fs::mkfs(Device::anonymous(size).unwrap(), &MkfsOptions { block_size, ..Default::default() }).unwrap()
}

fn clean(fs: &Fs) {
    let r = udax::check::check(fs, &mut |_, _| {});
    assert!(r.is_clean(), "{:?}", r.findings);
}

fn remount(fs: Fs) -> Fs {
    let fs = Fs::mount(fs.unmount().unwrap().expect("last handle")).unwrap();
    clean(&fs);
    fs
}

fn file(fs: &Fs, name: &str) -> u64 {
    fs.create(1, name.as_bytes(), 0o644, Creds::ROOT).unwrap().ino
}

fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let mut b = vec![0xee; fs.getattr(ino).unwrap().size as usize];
    assert_eq!(fs.read(ino, &mut b, 0).unwrap(), b.len());
    b
}

fn shape(ext: &[ExtentInfo]) -> Vec<(u64, u64, &'static str)> {
    ext.iter().map(|e| (e.logical, e.length, e.state)).collect()
}

/// S2 (seed 002): fallocate 1 MiB, pwrite 4 KiB at 512 KiB: three extents, unwritten parts read
/// zero, fsck clean.
#[test]
fn s2_fallocate_then_write_in_the_middle_splits_in_three() {
    for bs in BLOCK_SIZES {
        let fs = fresh(32 << 20, bs);
        let f = file(&fs, "s2");
        fs.fallocate(f, 0, 1 << 20, GROW).unwrap();
        assert_eq!(fs.getattr(f).unwrap().size, 1 << 20);
        assert_eq!(shape(&fs.extents(f).unwrap()), vec![(0, 1 << 20, "unwritten")], "bs {bs}");
        assert_eq!(fs.write(f, &[0x5a; 4096], 512 << 10).unwrap(), 4096);
        let want = vec![(0, 512 << 10, "unwritten"), (512 << 10, 4096, "written"), (516 << 10, 508 << 10, "unwritten")];
        assert_eq!(shape(&fs.extents(f).unwrap()), want, "bs {bs}");
        let data = read_all(&fs, f);
        assert!(data[..512 << 10].iter().all(|&b| b == 0));
        assert!(data[512 << 10..516 << 10].iter().all(|&b| b == 0x5a));
        assert!(data[516 << 10..].iter().all(|&b| b == 0));
        let fs = remount(fs);
        assert_eq!(shape(&fs.extents(f).unwrap()), want, "bs {bs} after remount");
    }
}

/// A write into an unwritten extent at unaligned offsets converts only the blocks it touches and
/// zeroes the rest of those blocks (never the device's old bytes).
#[test]
fn unaligned_write_into_unwritten_zeroes_the_rest_of_its_blocks() {
    for bs in BLOCK_SIZES {
        let fs = fresh(16 << 20, bs);
        let f = file(&fs, "u");
        fs.fallocate(f, 0, 64 << 10, GROW).unwrap();
        let off = u64::from(bs) * 3 + 100;
        fs.write(f, &[7; 50], off).unwrap();
        let ext = fs.extents(f).unwrap();
        let written: Vec<_> = ext.iter().filter(|e| e.state == "written").collect();
        assert_eq!(written.len(), 1);
        assert_eq!((written[0].logical, written[0].length), (u64::from(bs) * 3, u64::from(bs)));
        let data = read_all(&fs, f);
        assert!(data.iter().enumerate().all(|(i, &b)| b == if (off..off + 50).contains(&(i as u64)) { 7 } else { 0 }));
        remount(fs);
    }
}

/// S6 (seed: stale data) without mmap: fill the device with a secret, delete it, then grow files
/// by every path; the secret appears in no read, ever.
#[test]
fn s6_stale_data_never_shows() {
    const SECRET: &[u8; 8] = b"S3CR3T!!";
    for bs in BLOCK_SIZES {
        let fs = fresh(8 << 20, bs);
        let secret: Vec<u8> = SECRET.iter().copied().cycle().take(256 << 10).collect();
        let mut n = 0;
        loop {
            let f = file(&fs, &format!("secret{n}"));
            n += 1;
            match fs.write(f, &secret, 0) {
                Ok(w) if w == secret.len() => {}
                _ => break,
            }
        }
        for i in 0..n {
            fs.unlink(1, format!("secret{i}").as_bytes()).unwrap();
        }
        let leaks = |fs: &Fs, ino: u64, what: &str| {
            let data = read_all(fs, ino);
            assert!(!data.windows(SECRET.len()).any(|w| w == SECRET), "bs {bs}: secret visible after {what}");
        };
        let mut round = 0;
        // Keep growing until the device is full again, so every secret block gets reused.
        'fill: loop {
            round += 1;
            let f = file(&fs, &format!("grow{round}"));
            let steps: Vec<(&str, Step)> = vec![
                ("extending write", Box::new(move |fs| fs.write(f, &[1; 10], 3000).map(drop))),
                ("fallocate", Box::new(move |fs| fs.fallocate(f, 0, 96 << 10, GROW))),
                ("fallocate keep-size", Box::new(move |fs| fs.fallocate(f, 96 << 10, 64 << 10, KEEP))),
                ("truncate up", Box::new(move |fs| fs.truncate(f, 200 << 10))),
                ("unaligned write into unwritten", Box::new(move |fs| fs.write(f, &[2; 3333], 5000).map(drop))),
                (
                    "unaligned write past the old end",
                    Box::new(move |fs| fs.write(f, &[3; 99], (150 << 10) + 17).map(drop)),
                ),
                ("punch", Box::new(move |fs| fs.fallocate(f, 1000, 20_000, FallocMode::PunchHole))),
                (
                    "zero range",
                    Box::new(move |fs| fs.fallocate(f, 30_001, 40_000, FallocMode::ZeroRange { keep_size: false })),
                ),
                (
                    "zero range past EOF",
                    Box::new(move |fs| {
                        fs.fallocate(f, 199 << 10, 40 << 10, FallocMode::ZeroRange { keep_size: false })
                    }),
                ),
                ("extending write over preallocation", Box::new(move |fs| fs.write(f, &[4; 7], 250 << 10).map(drop))),
            ];
            for (what, step) in steps {
                match step(&fs) {
                    Ok(()) => leaks(&fs, f, what),
                    Err(e) if e.errno() == libc::ENOSPC => break 'fill,
                    Err(e) => panic!("{what}: {e}"),
                }
            }
        }
        assert!(round > 3, "bs {bs}: the device filled too early to reuse the secret blocks");
        let fs = remount(fs);
        for r in 1..=round {
            if let Ok(st) = fs.lookup(1, format!("grow{r}").as_bytes()) {
                leaks(&fs, st.ino, "remount");
            }
        }
    }
}

#[test]
fn keep_size_preallocates_past_eof_without_growing() {
    for bs in BLOCK_SIZES {
        let fs = fresh(16 << 20, bs);
        let f = file(&fs, "k");
        fs.write(f, &[9; 100], 0).unwrap();
        fs.fallocate(f, 1 << 20, 64 << 10, KEEP).unwrap();
        let st = fs.getattr(f).unwrap();
        assert_eq!(st.size, 100);
        assert_eq!(st.blocks * 512, u64::from(bs) + (64 << 10), "bs {bs}");
        assert_eq!(fs.seek_hole(f, 0).unwrap(), 100);
        // Truncating up over the preallocation reads zero; down frees it.
        fs.truncate(f, 2 << 20).unwrap();
        assert!(read_all(&fs, f)[100..].iter().all(|&b| b == 0));
        fs.truncate(f, 50).unwrap();
        assert_eq!(fs.getattr(f).unwrap().blocks * 512, u64::from(bs));
        remount(fs);
    }
}

#[test]
fn punch_frees_whole_blocks_and_zeroes_partial_ones() {
    for bs in BLOCK_SIZES {
        let b = u64::from(bs);
        let fs = fresh(16 << 20, bs);
        let f = file(&fs, "p");
        fs.write(f, &vec![0xab; (8 * b) as usize], 0).unwrap();
        let before = fs.getattr(f).unwrap().blocks;
        // Unaligned start and end within one block: nothing freed, those bytes zero.
        fs.fallocate(f, 100, 200, FallocMode::PunchHole).unwrap();
        assert_eq!(fs.getattr(f).unwrap().blocks, before);
        // Across blocks: the whole blocks inside go.
        fs.fallocate(f, b + 10, 3 * b, FallocMode::PunchHole).unwrap();
        assert_eq!(fs.getattr(f).unwrap().blocks, before - 2 * b / 512);
        let data = read_all(&fs, f);
        for (i, &v) in data.iter().enumerate() {
            let i = i as u64;
            let zero = (100..300).contains(&i) || (b + 10..4 * b + 10).contains(&i);
            assert_eq!(v, if zero { 0 } else { 0xab }, "bs {bs} byte {i}");
        }
        assert_eq!(fs.seek_hole(f, 0).unwrap(), 2 * b);
        assert_eq!(fs.seek_data(f, 2 * b).unwrap(), 4 * b);
        assert_eq!(fs.getattr(f).unwrap().size, 8 * b);
        // A punch over the whole file leaves no blocks and the same size.
        fs.fallocate(f, 0, 8 * b, FallocMode::PunchHole).unwrap();
        let st = fs.getattr(f).unwrap();
        assert_eq!((st.blocks, st.size), (0, 8 * b));
        assert!(fs.extents(f).unwrap().is_empty());
        assert!(read_all(&fs, f).iter().all(|&v| v == 0));
        assert_eq!(fs.seek_data(f, 0).unwrap_err().errno(), libc::ENXIO);
        remount(fs);
    }
}

#[test]
fn zero_range_reads_zero_and_keeps_blocks() {
    for bs in BLOCK_SIZES {
        let b = u64::from(bs);
        let fs = fresh(16 << 20, bs);
        let f = file(&fs, "z");
        fs.write(f, &vec![0xcd; (6 * b) as usize], 0).unwrap();
        let blocks = fs.getattr(f).unwrap().blocks;
        fs.fallocate(f, b / 2, 3 * b, FallocMode::ZeroRange { keep_size: true }).unwrap();
        let data = read_all(&fs, f);
        for (i, &v) in data.iter().enumerate() {
            let zero = (b / 2..b / 2 + 3 * b).contains(&(i as u64));
            assert_eq!(v, if zero { 0 } else { 0xcd }, "bs {bs} byte {i}");
        }
        assert_eq!(fs.getattr(f).unwrap().blocks, blocks, "zero range keeps the blocks");
        let unwritten: u64 = fs.extents(f).unwrap().iter().filter(|e| e.state == "unwritten").map(|e| e.length).sum();
        assert_eq!(unwritten, 2 * b, "whole blocks became unwritten");
        // Without keep-size, past EOF, the size grows and the new range reads zero.
        fs.fallocate(f, 6 * b, 2 * b + 7, FallocMode::ZeroRange { keep_size: false }).unwrap();
        assert_eq!(fs.getattr(f).unwrap().size, 8 * b + 7);
        assert!(read_all(&fs, f)[(6 * b) as usize..].iter().all(|&v| v == 0));
        remount(fs);
    }
}

#[test]
fn zero_length_and_beyond_eof_edges() {
    let fs = fresh(16 << 20, 4096);
    let f = file(&fs, "e");
    assert_eq!(fs.write(f, &[], 1 << 20).unwrap(), 0);
    assert_eq!(fs.getattr(f).unwrap().size, 0, "a zero-length write past EOF does not extend");
    for how in [GROW, KEEP, FallocMode::PunchHole, FallocMode::ZeroRange { keep_size: true }] {
        assert_eq!(fs.fallocate(f, 0, 0, how).unwrap_err().errno(), libc::EINVAL, "{how:?}");
    }
    assert_eq!(fs.fallocate(f, u64::MAX - 10, 100, GROW).unwrap_err().errno(), libc::EFBIG);
    fs.write(f, &[1; 5000], 0).unwrap();
    let mut buf = [9u8; 10];
    assert_eq!(fs.read(f, &mut buf, 5000).unwrap(), 0);
    assert_eq!(fs.read(f, &mut buf, 1 << 30).unwrap(), 0);
    // Punch and zero entirely past EOF change nothing visible.
    fs.fallocate(f, 1 << 20, 1 << 20, FallocMode::PunchHole).unwrap();
    fs.fallocate(f, 1 << 20, 4096, FallocMode::ZeroRange { keep_size: true }).unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, 5000);
    assert_eq!(fs.seek_data(f, 5000).unwrap_err().errno(), libc::ENXIO);
    assert_eq!(fs.seek_hole(f, 5000).unwrap_err().errno(), libc::ENXIO);
    assert_eq!(fs.seek_hole(f, 0).unwrap(), 5000, "EOF is a hole");
    assert_eq!(fs.seek_data(f, 4999).unwrap(), 4999);
    let d = fs.mkdir(1, b"d", 0o755, Creds::ROOT).unwrap().ino;
    assert_eq!(fs.fallocate(d, 0, 10, GROW).unwrap_err().errno(), libc::EISDIR);
    remount(fs);
}

#[test]
fn fallocate_on_a_full_device_is_enospc_with_nothing_done() {
    for bs in BLOCK_SIZES {
        let fs = fresh(4 << 20, bs);
        let f = file(&fs, "full");
        fs.write(f, &[1; 10_000], 0).unwrap();
        let free = fs.statfs().blocks_free;
        let before = (fs.getattr(f).unwrap(), fs.extents(f).unwrap());
        let want = (free + 1) * u64::from(bs);
        for how in [GROW, KEEP, FallocMode::ZeroRange { keep_size: false }] {
            assert_eq!(fs.fallocate(f, 1 << 20, want, how).unwrap_err().errno(), libc::ENOSPC, "{how:?}");
            assert_eq!((fs.getattr(f).unwrap(), fs.extents(f).unwrap()), before, "bs {bs} {how:?} changed the file");
            assert_eq!(fs.statfs().blocks_free, free, "bs {bs} {how:?} leaked blocks");
        }
        // Exactly what is free still works.
        if let Err(e) = fs.fallocate(f, 1 << 20, free * u64::from(bs), KEEP) {
            panic!("bs {bs} free {free} now {} extents {:?}: {e}", fs.statfs().blocks_free, fs.extents(f).unwrap());
        }
        assert_eq!(fs.statfs().blocks_free, 0);
        let fs = remount(fs);
        let g = fs.open("/full", OpenOptions::read_write()).unwrap();
        assert_eq!(g.write_at(&[1], 20_000).unwrap_err().errno(), libc::ENOSPC);
    }
}

/// Sequential growth stays contiguous: appends continue the last extent on the device, so a file
/// written in many pieces is still one extent (and one slot update per append).
#[test]
fn sequential_appends_stay_one_extent() {
    for bs in BLOCK_SIZES {
        let fs = fresh(64 << 20, bs);
        let a = file(&fs, "a");
        let b = file(&fs, "b");
        for i in 0..200u64 {
            // Two files growing in turn must not interleave each other's blocks into runs of one.
            fs.write(a, &[1; 10_000], i * 10_000).unwrap();
            fs.write(b, &[2; 3_000], i * 3_000).unwrap();
        }
        let ea = fs.extents(a).unwrap();
        let eb = fs.extents(b).unwrap();
        assert!(ea.len() <= 8 && eb.len() <= 8, "bs {bs}: {} and {} extents", ea.len(), eb.len());
        remount(fs);
    }
}

/// Fragmented free space makes one request need thousands of extents: writes and fallocate must
/// still work (split into transactions the journal can hold) and leave a clean image.
#[test]
fn fragmented_free_space_does_not_overflow_a_transaction() {
    let opts = MkfsOptions { block_size: 1024, journal_bytes: 64 << 10, inodes: 30_000, ..Default::default() };
    let fs = Fs::mkfs(Device::anonymous(24 << 20).unwrap(), &opts).unwrap();
    // Fill the device with one-block files, then delete every third (files alternate between
    // allocation groups, so every other would free whole groups).
    let mut names = Vec::new();
    for i in 0.. {
        let name = format!("f{i}");
        match fs.create(1, name.as_bytes(), 0o644, Creds::ROOT) {
            Ok(st) => {
                if fs.write(st.ino, &[1; 1000], 0).is_err() {
                    fs.unlink(1, name.as_bytes()).unwrap();
                    break;
                }
                names.push(name);
            }
            Err(_) => break,
        }
    }
    for name in names.iter().step_by(3) {
        fs.unlink(1, name.as_bytes()).unwrap();
    }
    let free = fs.statfs().blocks_free;
    assert!(free > 4000, "{free} blocks free");
    let w = file(&fs, "w");
    let n = fs.write(w, &vec![7; (free as usize / 2) * 1024], 0).unwrap();
    assert_eq!(n, (free as usize / 2) * 1024);
    assert!(fs.extents(w).unwrap().len() > 1000, "the test did not fragment the write");
    let a = file(&fs, "a");
    // Leave room for the overflow extent blocks thousands of extents need.
    let left = fs.statfs().blocks_free * 9 / 10;
    fs.fallocate(a, 0, left * 1024, GROW).unwrap();
    assert!(fs.extents(a).unwrap().len() > 1000, "the test did not fragment the allocation");
    fs.fallocate(a, 0, left * 1024, FallocMode::PunchHole).unwrap();
    clean(&fs);
    let fs = remount(fs);
    assert!(read_all(&fs, w).iter().all(|&b| b == 7));
}

/// Truncating a file of many extents used to build one transaction larger than the journal
/// holds; the commit refused it after the in-memory map had changed, and the image later failed
/// to mount with overlapping extents.
#[test]
fn truncating_thousands_of_extents_on_a_small_journal() {
    let opts = MkfsOptions { block_size: 1024, journal_bytes: 64 << 10, ..Default::default() };
    let fs = Fs::mkfs(Device::anonymous(16 << 20).unwrap(), &opts).unwrap();
    let f = file(&fs, "holes");
    for i in 0..1000u64 {
        fs.write(f, &[1], i * 2048).unwrap();
    }
    assert_eq!(fs.extents(f).unwrap().len(), 1000);
    fs.truncate(f, 0).unwrap();
    assert!(fs.extents(f).unwrap().is_empty());
    clean(&fs);
    for i in 0..10u64 {
        fs.write(f, &[2; 100], i * 4096).unwrap();
    }
    remount(fs);
}
