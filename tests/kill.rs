//! Process crashes: a child process appends records and churns the namespace on an image in
//! /dev/shm and is killed with SIGKILL at a random point of its progress. After each kill the
//! image recovers, fscks clean, and holds every record the child reported as written (a returned
//! write is durable), in order. Planting the bug where an append stored its bytes past the old EOF
//! before committing the new size makes this fail within a few rounds.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use udax::{Device, Fs, MkfsOptions, OpenOptions};

const RECORD: usize = 100;

fn record(i: u64) -> Vec<u8> {
    let mut r = format!("record {i:08} ").into_bytes();
    r.resize(RECORD, b'.' + (i % 40) as u8);
    r
}

/// The child: runs until killed, printing each finished step's number.
#[test]
#[ignore = "a child-process entry point, run by its test with its environment set"]
fn child_writer() {
    let Some(path) = std::env::var_os("UDAX_KILL_CHILD_IMAGE") else { return };
    let fs = Fs::open_image(&path).unwrap();
    let log = fs.open("/log", OpenOptions { append: true, ..OpenOptions::create() }).unwrap();
    let mut next = fs.stat("/log").unwrap().size / RECORD as u64;
    let mut out = std::io::stdout().lock();
    loop {
        // Mostly small appends (most of the time is spent in them, so most kills land there),
        // with some namespace churn for fsck to check.
        for _ in 0..32 {
            assert_eq!(log.write_at(&record(next), 0).unwrap(), RECORD);
            writeln!(out, "{next}").unwrap();
            next += 1;
        }
        out.flush().unwrap();
        let name = format!("/churn/f{}", next % 7);
        let _ = fs.mkdir_all("/churn", 0o755);
        let _ = fs.write_file(&name, &vec![next as u8; (next % 5000) as usize]);
        let _ = fs.rename_path(&name, format!("/churn/g{}", next % 3));
        if next % 4 == 0 {
            let _ = fs.unlink_path(format!("/churn/g{}", next % 3));
        }
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing_that_returned() {
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let image = dir.path().join("img");
    drop(Fs::mkfs(Device::create(&image, 64 << 20).unwrap(), &MkfsOptions::default()).unwrap());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut written = 0u64;
    for round in 0..40 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let steps = 1 + seed % 60;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--ignored", "--nocapture", "--test-threads=1"])
            .env("UDAX_KILL_CHILD_IMAGE", &image)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..steps {
            match lines.next() {
                Some(Ok(l)) if l.trim().parse::<u64>().is_ok() => written = l.trim().parse::<u64>().unwrap() + 1,
                _ => continue,
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let fs = Fs::open_image(&image).unwrap();
        let report = udax::check::check(&fs, &mut |_, _| {});
        assert!(report.is_clean(), "round {round}: {:?}", report.findings);
        let log = fs.read_file("/log").unwrap();
        assert!(log.len() >= written as usize * RECORD, "round {round}: a returned append is missing");
        assert_eq!(log.len() % RECORD, 0, "round {round}: a torn record");
        let records: Vec<&[u8]> = log.chunks(RECORD).collect();
        for (i, r) in records.iter().enumerate() {
            let want = record(i as u64);
            if i + 1 < records.len() || i < written as usize {
                assert_eq!(*r, &want[..], "round {round}: record {i}");
            } else {
                // The append in flight at the kill: its size may have committed before all its
                // bytes were stored; each byte is then the written one or zero (SPEC §3.2).
                assert!(r.iter().zip(&want).all(|(g, w)| g == w || *g == 0), "round {round}: last record {i}");
                if *r != &want[..] {
                    // Recover the log as an application would: drop the damaged tail record.
                    fs.truncate(fs.resolve("/log", true).unwrap(), (i * RECORD) as u64).unwrap();
                }
            }
        }
        fs.unmount().unwrap();
    }
    assert!(written > 12, "the child made too little progress to test anything");
}
