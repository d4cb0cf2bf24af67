//! Direct clients of `udax mount`: a process that may open the image reads a file's bytes
//! straight from it, sees every change made through the mount (writes into holes, appends,
//! truncates, punches) on its next read, and stops reading directly once the server is gone.

mod common;

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use common::*;
use udax_direct::{CachedMap, Mount, Served};

/// Reads `len` bytes at `off` directly; the test fails if the client passes the read on.
#[track_caller]
fn direct_read(m: &Mount, f: &std::fs::File, cache: &mut CachedMap, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xeeu8; len];
    let ino = f.metadata().unwrap().ino();
    match m.read_at(f.as_fd(), ino, cache, &mut buf, off).unwrap() {
        Served::Bytes(n) => buf.truncate(n),
        Served::PassThrough => panic!("a read at {off} was passed on to the mount"),
    }
    buf
}

/// What the mount itself returns for the same read.
fn mount_read(f: &std::fs::File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], off + got as u64).unwrap() {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    buf
}

#[test]
fn a_direct_client_reads_what_the_mount_holds_and_follows_its_changes() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("64M");
    let path = m.mnt.join("f");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let client = Mount::attach(f.as_fd()).unwrap().expect("root may open the image: direct access");
    assert!(client.live());
    let mut cache = CachedMap::default();
    for (off, len) in [(0, 300_000), (4095, 2), (123_457, 70_000), (299_990, 100), (300_000, 10), (1 << 30, 1)] {
        assert_eq!(direct_read(&client, &f, &mut cache, off, len), mount_read(&f, off, len), "read {len} at {off}");
    }
    // Changes through the mount, each seen by the next direct read.
    let other = OpenOptions::new().write(true).open(&path).unwrap();
    other.write_all_at(b"appended", 300_000).unwrap();
    other.write_all_at(&[9u8; 5000], 1 << 20).unwrap(); // into a hole past EOF
    assert_eq!(direct_read(&client, &f, &mut cache, 299_996, 20), mount_read(&f, 299_996, 20));
    assert_eq!(direct_read(&client, &f, &mut cache, 1 << 20, 6000), vec![9u8; 5000]);
    assert_eq!(direct_read(&client, &f, &mut cache, 600_000, 10), vec![0u8; 10], "the hole between reads zeros");
    other.set_len(10_000).unwrap();
    assert_eq!(direct_read(&client, &f, &mut cache, 9_000, 5000), data[9_000..10_000].to_vec());
    let punch = std::process::Command::new("fallocate").args(["-p", "-o", "0", "-l", "8192"]).arg(&path).status();
    if punch.is_ok_and(|s| s.success()) {
        assert_eq!(direct_read(&client, &f, &mut cache, 0, 10_000), mount_read(&f, 0, 10_000));
        assert_eq!(direct_read(&client, &f, &mut cache, 0, 8192), vec![0u8; 8192]);
    }
    drop((f, other));
    m.unmount();
    assert!(!client.live(), "an unmounted server's table is closed");
}

#[test]
fn a_mount_without_direct_access_says_so() {
    if !can_mount() {
        return;
    }
    let m = Mounted::with_options("16M", "nodirect");
    let path = m.mnt.join("f");
    std::fs::write(&path, b"plain").unwrap();
    let f = std::fs::File::open(&path).unwrap();
    assert!(Mount::attach(f.as_fd()).unwrap().is_none());
    let tmpfs = std::fs::File::open("/proc/self/status").unwrap();
    assert!(Mount::attach(tmpfs.as_fd()).unwrap().is_none(), "not a udax file at all");
}

#[test]
fn udax_run_serves_unmodified_programs_reads_directly() {
    if !can_mount() {
        return;
    }
    let lib = preload_lib();
    let m = Mounted::new("64M");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8 ^ (i >> 12) as u8).collect();
    let path = m.mnt.join("data");
    std::fs::write(&path, &data).unwrap();
    let script = format!(
        "import os, hashlib\n\
         d = open('{p}', 'rb').read()\n\
         fd = os.open('{p}', os.O_RDONLY)\n\
         tail = os.pread(fd, 4096, {tail})\n\
         print(len(d), hashlib.sha256(d).hexdigest(), tail.hex())\n",
        p = path.display(),
        tail = data.len() - 100
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_udax"))
        .arg("run")
        .arg(&m.mnt)
        .args(["--", "python3", "-c", &script])
        .env("UDAX_DIRECT_TRACE", "1")
        .env("UDAX_PRELOAD_LIB", &lib)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python3 under udax run failed: {stderr}");
    let expected = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
    assert_eq!(stdout, String::from_utf8_lossy(&expected.stdout), "the same bytes with and without the library");
    assert!(
        stderr.contains("pread64(fd ") && stderr.contains("): direct, 100"),
        "the pread was served directly: {stderr}"
    );
    assert!(stderr.lines().filter(|l| l.contains("read(fd ") && l.contains("direct")).count() >= 2, "{stderr}");
    assert!(!stderr.contains("passed on"), "nothing passed on: {stderr}");
    let cat = std::process::Command::new(env!("CARGO_BIN_EXE_udax"))
        .arg("run")
        .arg(&m.mnt)
        .args(["--", "cat"])
        .arg(&path)
        .env("UDAX_PRELOAD_LIB", &lib)
        .output()
        .unwrap();
    assert!(cat.status.success() && cat.stdout == data, "cat under udax run gives the file's bytes");
    let refused =
        std::process::Command::new(env!("CARGO_BIN_EXE_udax")).args(["run", "/proc", "--", "true"]).output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("not a udax mount"));
}
