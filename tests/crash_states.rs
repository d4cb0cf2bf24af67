//! Power-cut crash states at cache-line granularity. The device records which lines each
//! operation stores; at every fence the test builds the images a power cut could leave — the
//! state after the previous fence plus any subset of the lines stored since (none, all, only the
//! journal's, all but the journal's, random ones, and torn lines whose 8-byte words persist
//! independently) — then recovers each, requires a clean fsck and
//! readable files, and requires that no file shows the poison byte the free space was filled with
//! (a block linked before its content was persistent). The sabotage switch drops the fence
//! between content and record; the same exploration must then find violations.

use std::sync::{Arc, Mutex};

use udax::layout::{Geometry, JOURNAL_RING_OFF};
use udax::{Device, FallocMode, Fs, MkfsOptions, OpenOptions};

const POISON: u8 = 0xEE;
const SIZE: u64 = 4 << 20;

struct Explorer {
    snapshot: Vec<u8>,
    journal: std::ops::Range<u64>,
    rng: u64,
    images: u64,
    violations: Vec<String>,
}

impl Explorer {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn check(&mut self, img: &[u8], what: &str, lines: usize) {
        self.images += 1;
        if let Err(e) = check_image(img) {
            self.violations.push(format!("{what} of {lines} lines: {e}"));
        }
    }

    fn at_fence(&mut self, dev: &Device, lines: &[u64]) {
        let mut live = vec![0u8; SIZE as usize];
        dev.read(0, &mut live).unwrap();
        if !lines.is_empty() {
            let in_journal = |l: &u64| self.journal.contains(l);
            let mut subsets: Vec<(&str, Vec<u64>)> = vec![
                ("none", vec![]),
                ("all", lines.to_vec()),
                ("journal only", lines.iter().copied().filter(in_journal).collect()),
                ("all but journal", lines.iter().copied().filter(|l| !in_journal(l)).collect()),
            ];
            for _ in 0..3 {
                let pick: Vec<u64> = lines.iter().copied().filter(|_| self.next() % 2 == 0).collect();
                subsets.push(("random", pick));
            }
            for (what, pick) in subsets {
                let mut img = self.snapshot.clone();
                for &l in &pick {
                    let r = l as usize..l as usize + 64;
                    img[r.clone()].copy_from_slice(&live[r]);
                }
                self.check(&img, what, lines.len());
            }
            // Torn lines: each in-flight line reaches the medium as any subset of its eight
            // 8-byte words (the failure-atomic unit).
            for _ in 0..2 {
                let mut img = self.snapshot.clone();
                for &l in lines {
                    let words = self.next();
                    for w in 0..8 {
                        if words >> w & 1 == 1 {
                            let r = l as usize + w * 8..l as usize + w * 8 + 8;
                            img[r.clone()].copy_from_slice(&live[r]);
                        }
                    }
                }
                self.check(&img, "torn", lines.len());
            }
        }
        self.snapshot = live;
    }
}

/// Recovers a copy of `img` and checks it.
fn check_image(img: &[u8]) -> Result<(), String> {
    let dev = Device::anonymous(img.len() as u64).unwrap();
    dev.write(0, img).unwrap();
    let fs = Fs::mount(dev).map_err(|e| format!("mount: {e}"))?;
    let report = udax::check::check(&fs, &mut |_, _| {});
    if !report.is_clean() {
        return Err(format!("fsck: {:?}", report.findings));
    }
    let mut stack = vec![1u64];
    while let Some(dir) = stack.pop() {
        for e in fs.readdir(dir, 0).map_err(|e| format!("readdir: {e}"))? {
            let st = fs.getattr(e.ino).map_err(|e| format!("getattr: {e}"))?;
            match st.mode & 0o170000 {
                0o040000 => stack.push(e.ino),
                0o100000 => {
                    let mut b = vec![0u8; st.size as usize];
                    fs.read(e.ino, 0, &mut b).map_err(|e| format!("read: {e}"))?;
                    if b.contains(&POISON) {
                        return Err(format!("inode {} shows free-space bytes", e.ino));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A deterministic mix of every data and namespace operation on a few names.
fn workload(fs: &Fs, seed: u64, ops: usize) {
    let mut s = seed;
    let mut next = move |n: u64| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s % n
    };
    fs.mkdir_all("/d", 0o755).unwrap();
    for i in 0..ops {
        let p = format!("/{}f{}", if next(3) == 0 { "d/" } else { "" }, next(4));
        let q = format!("/{}f{}", if next(3) == 0 { "d/" } else { "" }, next(4));
        let byte = 1 + next(0x7e) as u8;
        let data = vec![byte; 1 + next(3000) as usize];
        let f = || fs.open(&p, OpenOptions::create());
        // Errors (a name that is not there, ENOSPC) are part of the mix.
        let _ = match next(10) {
            0 | 1 => f().and_then(|f| f.write_at(&data, f.metadata()?.size)).map(drop),
            2 | 3 => f().and_then(|f| f.write_at(&data, next(20_000))).map(drop),
            4 => f().and_then(|f| f.set_len(next(20_000))),
            5 => f().and_then(|f| {
                f.fallocate(next(16_000), 1 + next(8000), FallocMode::Allocate { keep_size: next(2) == 0 })
            }),
            6 => f().and_then(|f| f.fallocate(next(16_000), 1 + next(8000), FallocMode::PunchHole)),
            7 => {
                f().and_then(|f| f.fallocate(next(16_000), 1 + next(8000), FallocMode::ZeroRange { keep_size: false }))
            }
            8 => fs.rename_path(&p, &q),
            _ => fs.unlink_path(&p),
        };
        let _ = i;
    }
}

fn explore(sabotage: bool, seed: u64, ops: usize) -> (u64, Vec<String>) {
    let opts = MkfsOptions { block_size: 1024, ..Default::default() };
    let fs = Fs::mkfs(Device::anonymous(SIZE).unwrap(), &opts).unwrap();
    let geo: Geometry = *fs.geometry();
    // Free space holds the poison; nothing the workload writes contains it.
    fs.device()
        .write(geo.block_at(geo.data_start), &vec![POISON; (geo.data_blocks * geo.block_size) as usize])
        .unwrap();
    fs.device().fence();
    let mut snapshot = vec![0u8; SIZE as usize];
    fs.device().read(0, &mut snapshot).unwrap();
    let state = Arc::new(Mutex::new(Explorer {
        snapshot,
        journal: JOURNAL_RING_OFF..JOURNAL_RING_OFF + geo.journal_len,
        rng: seed | 1,
        images: 0,
        violations: Vec::new(),
    }));
    let hook = state.clone();
    fs.sabotage_content_fence(sabotage);
    fs.device().record(Box::new(move |dev, lines| hook.lock().unwrap().at_fence(dev, lines)));
    workload(&fs, seed, ops);
    fs.device().stop_recording();
    let st = state.lock().unwrap();
    (st.images, st.violations.clone())
}

#[test]
fn every_fence_recovers_to_a_clean_state() {
    // `UDAX_CRASH_SEEDS` and `UDAX_CRASH_OPS` lengthen the run (README: long runs).
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let mut images = 0;
    for seed in 1..=env("UDAX_CRASH_SEEDS", 3) {
        let (n, violations) = explore(false, seed * 0x9e37_79b9, env("UDAX_CRASH_OPS", 120) as usize);
        assert!(violations.is_empty(), "seed {seed}: {} violations, first: {}", violations.len(), violations[0]);
        images += n;
    }
    println!("{images} crash images explored, no violation");
    assert!(images > 2000, "only {images} crash images explored");
}

#[test]
fn the_explorer_catches_a_dropped_content_fence() {
    let (images, violations) = explore(true, 0x9e37_79b9, 120);
    println!(
        "sabotaged: {} violations in {images} crash images; first: {}",
        violations.len(),
        violations.first().map_or("", |v| v)
    );
    assert!(images > 500);
    assert!(!violations.is_empty(), "{images} crash images and no violation with the content fence dropped");
}
