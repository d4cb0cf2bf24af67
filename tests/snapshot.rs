//! A snapshot of an image in use (what `udax ls`, `info` and `fsck -n` read while a mount holds
//! it) is a whole file system: taken while threads create, write, rename and unlink, every copy
//! mounts, fsck finds nothing in it, and each file shows whole writes only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use udax::{Device, Fs, MkfsOptions, OpenOptions};

const LEN: usize = 3000;

/// Thread `t` makes files of LEN bytes of one tag byte each, renames and removes them.
fn churn(fs: &Fs, t: u64, stop: &AtomicBool) {
    let dir = format!("/d{t}");
    fs.mkdir_all(&dir, 0o755).unwrap();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let tag = (t * 31 + i) % 250 + 1;
        let f = fs.open(format!("{dir}/new{i}"), OpenOptions::create()).unwrap();
        f.write_at(&[tag as u8; LEN], 0).unwrap();
        drop(f);
        fs.rename_path(format!("{dir}/new{i}"), format!("{dir}/f{i}")).unwrap();
        if i >= 4 {
            fs.unlink_path(format!("{dir}/f{}", i - 4)).unwrap();
        }
        i += 1;
    }
}

#[test]
fn snapshots_taken_under_load_are_whole_file_systems() {
    // A file-backed image, as a mount serves; snapshots go to files opened by /proc/self/fd
    // paths, as the CLI opens the memfd it gets.
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let dev = Device::create(dir.path().join("img"), 32 << 20).unwrap();
    let fs = Fs::mkfs(dev, &MkfsOptions { block_size: 1024, ..Default::default() }).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let (fs, stop) = (fs.clone(), stop.clone());
            std::thread::spawn(move || churn(&fs, t, &stop))
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    let snapper = {
        let fs = fs.clone();
        std::thread::spawn(move || {
            for round in 0..12 {
                let copy = tempfile::tempfile_in("/dev/shm").or_else(|_| tempfile::tempfile()).unwrap();
                fs.snapshot(&copy).unwrap();
                let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&copy));
                let snap = Fs::open_image_read_only(&path).unwrap();
                let report = udax::check::check(&snap, &mut |_, _| {});
                assert!(report.is_clean(), "snapshot {round}: {:?}", report.findings);
                for t in 0..3 {
                    let Ok(entries) = snap.read_dir_path(format!("/d{t}")) else { continue };
                    for e in entries.iter().filter(|e| e.name != b"." && e.name != b"..") {
                        let name = String::from_utf8_lossy(&e.name);
                        let data = snap.read_file(format!("/d{t}/{name}")).unwrap();
                        let whole =
                            data.is_empty() || (data.len() == LEN && data.iter().all(|&b| b == data[0] && b != 0));
                        assert!(whole, "snapshot {round}: /d{t}/{name} holds a partial write ({} bytes)", data.len());
                    }
                }
                snap.unmount().unwrap();
            }
            tx.send(()).unwrap();
        })
    };
    // A watchdog: a snapshot that deadlocks with the writers fails here instead of hanging; a
    // failed check shows as the snapper's own panic.
    let done = rx.recv_timeout(Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    assert!(!matches!(done, Err(mpsc::RecvTimeoutError::Timeout)), "snapshots did not finish within 120 s (deadlock?)");
    snapper.join().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    assert!(udax::check::check(&fs, &mut |_, _| {}).is_clean());
}
