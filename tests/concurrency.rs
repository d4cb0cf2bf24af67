//! `Fs` is shared by threads: creates, writes, renames (across directories too, in both
//! directions), links, unlinks and rmdirs race on a small shared namespace. Nothing may deadlock
//! (a watchdog fails the test instead of hanging), and the image must fsck clean afterwards and
//! after a remount.

use std::sync::mpsc;
use std::time::Duration;

use udax::{Device, Fs, MkfsOptions, OpenOptions};

const DIRS: &[&str] = &["/a", "/b", "/a/c", "/b/d", "/a/c/e"];
const NAMES: &[&str] = &["x", "y", "z"];

fn worker(fs: Fs, seed: u64, ops: usize) {
    let mut s = seed;
    let mut next = move |n: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n as u64) as usize
    };
    for _ in 0..ops {
        let d1 = DIRS[next(DIRS.len())];
        let d2 = DIRS[next(DIRS.len())];
        let p1 = format!("{d1}/{}", NAMES[next(NAMES.len())]);
        let p2 = format!("{d2}/{}", NAMES[next(NAMES.len())]);
        // Errors (ENOENT, EEXIST, ENOTEMPTY, …) are expected: the namespace is contended.
        let _ = match next(9) {
            0 => fs.mkdir_all(d1, 0o755).map(drop),
            1 => fs
                .open(&p1, OpenOptions::create())
                .and_then(|f| f.write_at(&[seed as u8; 5000], next(9000) as u64))
                .map(drop),
            2 => fs.rename_path(&p1, &p2),
            3 => fs.rename_path(d1, &p2),
            4 => fs.link_path(&p1, &p2).map(drop),
            5 => fs.unlink_path(&p1),
            6 => fs.rmdir_path(d1),
            7 => fs.open(&p1, OpenOptions::read_write()).and_then(|f| f.set_len(next(20000) as u64)),
            _ => fs.read_dir_path(d1).map(drop),
        };
    }
}

#[test]
fn racing_namespace_operations_stay_consistent() {
    let fs = Fs::mkfs(Device::anonymous(64 << 20).unwrap(), &MkfsOptions { block_size: 1024, ..Default::default() })
        .unwrap();
    for d in DIRS {
        fs.mkdir_all(d, 0o755).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let base = seed();
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let fs = fs.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                worker(fs, base ^ ((t + 1) * 0x1234_5678), ops());
                tx.send(()).unwrap();
            })
        })
        .collect();
    for _ in 0..threads.len() {
        rx.recv_timeout(Duration::from_secs(120)).expect("a worker made no progress for 2 minutes: deadlock");
    }
    for t in threads {
        t.join().unwrap();
    }
    let report = udax::check::check(&fs, &mut |_, _| {});
    assert!(report.is_clean(), "{:?}", report.findings);
    let dev = fs.unmount().unwrap().expect("last handle");
    let fs = Fs::mount(dev).unwrap();
    let report = udax::check::check(&fs, &mut |_, _| {});
    assert!(report.is_clean(), "after remount: {:?}", report.findings);
}

/// One thread's repeated operation.
type Job = Box<dyn Fn(&Fs) + Send>;

/// `UDAX_STRESS_OPS` scales the run (default 4,000 operations per thread).
fn ops() -> usize {
    std::env::var("UDAX_STRESS_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(4000)
}

/// A different interleaving each run; the seed is printed so a failure can be replayed with
/// `UDAX_STRESS_SEED`.
fn seed() -> u64 {
    let s = std::env::var("UDAX_STRESS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("UDAX_STRESS_SEED={s}");
    s
}

/// A same-directory exchange of two sibling directories, an unlink inside one of them, and a
/// cross-directory rename between two others used to deadlock three ways: the exchange held one
/// directory child while waiting for the other, which the unlink held as a parent while waiting
/// for its child, whose lock the cross rename held while waiting for the first.
#[test]
fn sibling_directory_renames_do_not_deadlock() {
    let fs = Fs::mkfs(Device::anonymous(16 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    let who = udax::Creds::ROOT;
    let x = fs.mkdir(1, b"tmpx", 0o755, who).unwrap().ino;
    let d = fs.mkdir(1, b"d", 0o755, who).unwrap().ino;
    let s = fs.mkdir(1, b"s", 0o755, who).unwrap().ino;
    fs.rename(1, b"tmpx", s, b"x", udax::RenameMode::Replace).unwrap();
    fs.create(x, b"a", 0o644, who).unwrap();
    let (tx, rx) = mpsc::channel();
    let jobs: Vec<Job> = vec![
        Box::new(|fs| drop(fs.rename(1, b"d", 1, b"s", udax::RenameMode::Exchange))),
        Box::new(move |fs| drop(fs.unlink(s, b"x"))),
        Box::new(move |fs| {
            let _ = fs.rename(x, b"a", d, b"b", udax::RenameMode::Replace);
            let _ = fs.rename(d, b"b", x, b"a", udax::RenameMode::Replace);
        }),
    ];
    let threads: Vec<_> = jobs
        .into_iter()
        .map(|job| {
            let (fs, tx) = (fs.clone(), tx.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    job(&fs);
                }
                tx.send(()).unwrap();
            })
        })
        .collect();
    for _ in 0..threads.len() {
        rx.recv_timeout(Duration::from_secs(60)).expect("no progress for a minute: deadlock");
    }
    threads.into_iter().for_each(|t| t.join().unwrap());
    let report = udax::check::check(&fs, &mut |_, _| {});
    assert!(report.is_clean(), "{:?}", report.findings);
}
