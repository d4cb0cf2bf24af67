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

/// `udax run` on `m`'s mount of `program` (the preload library built first), in the mount.
fn under_run(m: &Mounted, program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_udax"));
    cmd.arg("run").arg(&m.mnt).args(["--", program]).current_dir(&m.mnt).env("UDAX_PRELOAD_LIB", preload_lib());
    cmd
}

/// Asserts that fsck finds the (unmounted) image clean.
#[track_caller]
fn fsck_clean(img: &std::path::Path) {
    let fsck = ok(&[std::ffi::OsStr::new("fsck"), img.as_os_str()]);
    assert_eq!(fsck.trim_end().lines().last(), Some("clean"), "{fsck}");
}

/// Asserts two byte strings are equal, naming the first difference (not printing them).
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && first.is_none(),
        "{what}: {} bytes, want {}; first difference at {first:?}",
        got.len(),
        want.len()
    );
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
    let out = under_run(&m, "python3").args(["-c", &script]).env("UDAX_DIRECT_TRACE", "1").output().unwrap();
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
    let cat = under_run(&m, "cat").arg(&path).output().unwrap();
    assert!(cat.status.success() && cat.stdout == data, "cat under udax run gives the file's bytes");
    let refused =
        std::process::Command::new(env!("CARGO_BIN_EXE_udax")).args(["run", "/proc", "--", "true"]).output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("not a udax mount"));
}

#[test]
fn direct_writes_are_durable_and_seen_by_readers_through_the_mount() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("64M");
    let path = m.mnt.join("w");
    std::fs::write(&path, vec![1u8; 100_000]).unwrap();
    // A reader through the mount, without the library, whose pages may be cached.
    let reader = std::fs::File::open(&path).unwrap();
    assert_eq!(mount_read(&reader, 5000, 10), vec![1u8; 10]);
    let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let ino = f.metadata().unwrap().ino();
    let client = Mount::attach(f.as_fd()).unwrap().expect("direct access");
    let mut cache = CachedMap::default();
    let before = f.metadata().unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(client.write_at(f.as_fd(), ino, &mut cache, &[2u8; 6000], 4000).unwrap(), Served::Bytes(6000));
    let mut expected = vec![1u8; 100_000];
    expected[4000..10_000].fill(2);
    same(&mount_read(&reader, 0, 100_000), &expected, "a reader through the mount after the direct write");
    same(&direct_read(&client, &f, &mut cache, 0, 100_000), &expected, "a direct reader");
    assert!(f.metadata().unwrap().modified().unwrap() > before, "the write moved mtime");
    // At EOF: under a lease, direct too, and the mount's size and bytes follow at once.
    assert_eq!(client.write_at(f.as_fd(), ino, &mut cache, b"x", 100_000).unwrap(), Served::Bytes(1));
    expected.push(b'x');
    assert_eq!(reader.metadata().unwrap().len(), 100_001, "the size through the mount");
    same(&mount_read(&reader, 0, 100_001), &expected, "a reader through the mount after the append");
    // Into a hole: the mount's (the caller then writes through it).
    f.set_len(1 << 20).unwrap();
    assert_eq!(client.write_at(f.as_fd(), ino, &mut cache, b"x", 500_000).unwrap(), Served::PassThrough);
    drop((f, reader, client));
    // Durable: in the image after unmount.
    m.unmount();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_udax")).arg("cat").arg(&m.img).arg("/w").output().unwrap();
    assert!(out.status.success());
    same(&out.stdout[..100_001], &expected, "the image after unmount");
}

#[test]
fn udax_run_stores_overwrites_and_appends_directly_and_passes_o_append_on() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("64M");
    let path = m.mnt.join("o");
    std::fs::write(&path, vec![b'.'; 20_000]).unwrap();
    let script = format!(
        "import os\n\
         fd = os.open('{p}', os.O_RDWR)\n\
         os.pwrite(fd, b'HELLO' * 1000, 1000)\n\
         os.lseek(fd, 100, 0)\n\
         os.write(fd, b'abc')\n\
         os.writev(fd, [b'de', b'f'])\n\
         os.pwrite(fd, b'grow', 20_000)\n\
         os.close(fd)\n\
         fd = os.open('{p}', os.O_WRONLY | os.O_APPEND)\n\
         os.write(fd, b'tail')\n",
        p = path.display()
    );
    let out = under_run(&m, "python3").args(["-c", &script]).env("UDAX_DIRECT_TRACE", "1").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python3 under udax run failed: {stderr}");
    for served in
        ["pwrite64(fd 3, 5000 at 1000): direct", "write(fd 3, 3 at 100): direct", "writev(fd 3, 3 at 103): direct"]
    {
        assert!(stderr.contains(served), "{served}: {stderr}");
    }
    assert!(stderr.contains("pwrite64(fd 3, 4 at 20000): direct"), "growth under a lease: {stderr}");
    assert!(!stderr.contains("write(fd 3, 4 at"), "an O_APPEND write is the mount's: {stderr}");
    // A reader without the library, through the mount, sees all of it.
    let mut want = vec![b'.'; 20_000];
    want[1000..6000].copy_from_slice(&b"HELLO".repeat(1000));
    want[100..106].copy_from_slice(b"abcdef");
    want.extend_from_slice(b"growtail");
    same(&std::fs::read(&path).unwrap(), &want, "the file through the mount");
}

/// What a numbered writer does with write `i`.
#[derive(Debug, Clone, Copy)]
enum Writes {
    /// Overwrites block `i % blocks` of a file that holds them.
    Over { blocks: u64 },
    /// Appends block `i` with write(2) (under a lease).
    Append,
}

/// A python3 writer under `udax run`: stores the number `i` (8 bytes, repeated over 4 KiB) as
/// `how` says, printing `i` once the call returned; on an error, prints `error ERRNO` and stops.
fn numbered_writer(m: &Mounted, path: &std::path::Path, how: Writes) -> std::process::Child {
    let (open, store) = match how {
        Writes::Over { blocks } => ("os.O_RDWR", format!("os.pwrite(fd, b, (i % {blocks}) * 4096)")),
        Writes::Append => ("os.O_WRONLY | os.O_CREAT", "os.write(fd, b)".to_string()),
    };
    let script = format!(
        "import os, sys\n\
         fd = os.open('{p}', {open})\n\
         i = 0\n\
         while True:\n\
         \x20   b = i.to_bytes(8, 'little') * 512\n\
         \x20   try:\n\
         \x20       {store}\n\
         \x20   except OSError as e:\n\
         \x20       print('error', e.errno, flush=True)\n\
         \x20       break\n\
         \x20   print(i, flush=True)\n\
         \x20   i += 1\n",
        p = path.display()
    );
    let trace = std::fs::File::create(m.img.with_file_name("writer.trace")).unwrap();
    under_run(m, "python3")
        .args(["-c", &script])
        .env("UDAX_DIRECT_TRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(trace)
        .spawn()
        .unwrap()
}

/// Checks that the numbered writer's first writes were served directly.
#[track_caller]
fn wrote_directly(m: &Mounted, how: Writes) {
    let trace = std::fs::read_to_string(m.img.with_file_name("writer.trace")).unwrap();
    let first = match how {
        Writes::Over { .. } => "pwrite64(fd 3, 4096 at 0): direct",
        Writes::Append => "write(fd 3, 4096 at 4096): direct",
    };
    assert!(trace.contains(first), "{how:?}: not direct: {}", &trace[..trace.len().min(2000)]);
}

/// Checks that each block of `data` holds writes at least as new as the last one reported for
/// it, word by word: a write that had not returned when the writer died may have landed in part
/// (an overwrite is not atomic), but nothing older than a returned write may show.
#[track_caller]
fn holds_returned_writes(data: &[u8], reported: &[u64], how: Writes) {
    let Writes::Over { blocks } = how else { return holds_returned_appends(data, reported) };
    let mut last = vec![None; blocks as usize];
    for &i in reported {
        last[(i % blocks) as usize] = Some(i);
    }
    for (b, want) in last.iter().enumerate() {
        let Some(want) = want else { continue };
        for word in data[b * 4096..(b + 1) * 4096].chunks(8) {
            let got = u64::from_le_bytes(word.try_into().unwrap());
            assert!(
                got >= *want && got % blocks == b as u64,
                "block {b} holds write {got}, older than returned write {want}"
            );
        }
    }
}

/// Checks that `data` holds every returned append whole, in order, and only appends: block `i`
/// holds `i`. An append that had not returned may be there too (then whole: the size moves
/// only after the bytes are stored).
#[track_caller]
fn holds_returned_appends(data: &[u8], reported: &[u64]) {
    assert_eq!(data.len() % 4096, 0, "the size is a whole number of appends");
    assert!(data.len() / 4096 >= reported.len(), "{} blocks, {} appends returned", data.len() / 4096, reported.len());
    for (b, block) in data.chunks(4096).enumerate() {
        assert!(
            block.chunks(8).all(|w| u64::from_le_bytes(w.try_into().unwrap()) == b as u64),
            "block {b} does not hold append {b}: words {:?} (of {} blocks, {} returned)",
            block
                .chunks(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
                .collect::<std::collections::BTreeSet<_>>(),
            data.len() / 4096,
            reported.len()
        );
    }
}

/// The file a numbered writer works on, made for `how`.
fn numbered_file(m: &Mounted, name: &str, how: Writes) -> std::path::PathBuf {
    let path = m.mnt.join(name);
    let blocks = match how {
        Writes::Over { blocks } => blocks,
        Writes::Append => 0,
    };
    std::fs::write(&path, vec![0u8; blocks as usize * 4096]).unwrap();
    path
}

#[test]
fn a_client_killed_mid_write_loses_only_what_had_not_returned() {
    if !can_mount() {
        return;
    }
    for how in [Writes::Over { blocks: 256 }, Writes::Append] {
        killed_mid_write(how);
    }
}

fn killed_mid_write(how: Writes) {
    use std::io::BufRead;
    let m = Mounted::new("64M");
    let path = numbered_file(&m, "k", how);
    let mut child = numbered_writer(&m, &path, how);
    let mut reported = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        reported.push(line.unwrap().parse::<u64>().expect("a write failed"));
        if reported.len() == 3000 {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    wrote_directly(&m, how);
    holds_returned_writes(&std::fs::read(&path).unwrap(), &reported, how);
    // The dead writer's slot holds nothing back: a truncate's blocks come back for a new file.
    std::fs::File::options().write(true).open(&path).unwrap().set_len(0).unwrap();
    std::fs::write(m.mnt.join("after"), vec![7u8; 1 << 20]).unwrap();
    m.unmount();
    fsck_clean(&m.img);
}

/// Appends under a lease race readers through the mount, whose every request ends the lease:
/// each read and stat must show every append that returned before it began, whole and in
/// order, and the appender must go on appending directly between them. A watchdog fails the
/// test when the appender stops reporting for 30 s.
#[test]
fn appends_race_readers_through_the_mount_and_each_sees_every_returned_append() {
    if !can_mount() {
        return;
    }
    use std::io::BufRead;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let m = Mounted::new("256M");
    let path = numbered_file(&m, "race", Writes::Append);
    let mut child = numbered_writer(&m, &path, Writes::Append);
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let returned = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let reads = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0u64;
            while !stop.load(Ordering::Acquire) {
                let before = returned.load(Ordering::Acquire);
                let len = std::fs::metadata(&path).unwrap().len();
                assert!(len / 4096 >= before, "stat: {len} bytes after {before} appends returned");
                let data = std::fs::read(&path).unwrap();
                holds_returned_appends(&data, &vec![0; before as usize]);
                reads += 1;
            }
            reads
        });
        let mut n = 0u64;
        let done = loop {
            match rx.recv_timeout(std::time::Duration::from_secs(30)) {
                Ok(line) => {
                    assert_eq!(line.parse::<u64>().expect("an append failed"), n);
                    n += 1;
                    returned.store(n, Ordering::Release);
                    if n == 20_000 {
                        break true;
                    }
                }
                Err(_) => break false,
            }
        };
        stop.store(true, Ordering::Release);
        let _ = child.kill();
        let _ = child.wait();
        assert!(done, "the appender stopped after {n} appends (30 s)");
        reader.join().unwrap()
    });
    let trace = std::fs::read_to_string(m.img.with_file_name("writer.trace")).unwrap();
    let direct = trace.matches("): direct, 4096").count();
    println!("{reads} reads through the mount, {direct} of 20,000 appends served directly");
    assert!(reads >= 20 && direct >= 1000, "{reads} reads, {direct} appends served directly");
    holds_returned_appends(&std::fs::read(&path).unwrap(), &vec![0; 20_000]);
    m.unmount();
    fsck_clean(&m.img);
}

#[test]
fn a_killed_server_stops_direct_writers_and_the_next_server_takes_over() {
    if !can_mount() {
        return;
    }
    for how in [Writes::Over { blocks: 64 }, Writes::Append] {
        killed_server(how);
    }
}

/// A server killed while `how` writes directly: the writer stops with ENOTCONN, and the next
/// server (which folds a lane the writer appended through) holds every returned write.
fn killed_server(how: Writes) {
    use std::io::BufRead;
    let m = Mounted::new("64M");
    let server = server_pid(&m.img).expect("a server holds the image");
    let path = numbered_file(&m, "s", how);
    let mut child = numbered_writer(&m, &path, how);
    let (mut reported, mut errno) = (Vec::new(), None);
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.map_while(Result::ok) {
        if let Some(e) = line.strip_prefix("error ") {
            errno = e.parse::<i32>().ok();
            break;
        }
        reported.push(line.parse::<u64>().unwrap());
        if reported.len() == 2000 {
            sh(&format!("kill -KILL {server}"), std::path::Path::new("/"));
        }
        if reported.len() == 300_000 {
            child.kill().unwrap();
            panic!("the writer went on writing directly long after its server was killed");
        }
    }
    child.wait().unwrap();
    wrote_directly(&m, how);
    // ECONNABORTED when its request was in flight as the server died.
    assert!(
        matches!(errno, Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "{how:?}: the writer's next write failed as the mount does, not with {errno:?}"
    );
    let _ = std::process::Command::new("umount").arg("-l").arg(&m.mnt).status();
    wait_released(&m.img);
    // The next server retires the table the killed one left, and serves.
    ok(&[std::ffi::OsStr::new("mount"), m.img.as_os_str(), m.mnt.as_os_str()]);
    holds_returned_writes(&std::fs::read(&path).unwrap(), &reported, how);
    m.unmount();
    fsck_clean(&m.img);
}

#[test]
fn real_programs_work_under_udax_run() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("1G");
    // A tree of the host's with files, directories and links: all of /usr/share/doc in the long
    // run, one package's part of it in a quick one.
    let quick = "/usr/share/doc/git";
    let src = if long() || !std::path::Path::new(quick).is_dir() { "/usr/share/doc" } else { quick };
    let run = |script: &str| {
        let out = under_run(&m, "bash").args(["-euo", "pipefail", "-c", script]).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "`{script}` under udax run failed: {stdout}{stderr}");
        stdout.into_owned()
    };
    run(&format!("cp -a {src} doc && diff -r --no-dereference {src} doc"));
    run("tar cf doc.tar doc && mkdir x && tar xf doc.tar -C x && diff -r --no-dereference doc x/doc");
    run("git init -q g && cp -r doc g/ && cd g && git add -A \
         && git -c user.email=t@t -c user.name=t commit -qm one && git fsck --strict");
    if std::process::Command::new("sh").args(["-c", "command -v sqlite3"]).output().is_ok_and(|o| o.status.success()) {
        let out = run("sqlite3 db 'pragma journal_mode=wal; create table t(a integer primary key, b text); \
             with recursive c(x) as (select 1 union all select x+1 from c where x<20000) \
             insert into t(b) select hex(randomblob(40)) from c; update t set b = lower(b) where a % 3 = 0; \
             delete from t where a % 7 = 0; pragma integrity_check; select count(*) from t;'");
        assert_eq!(out.lines().collect::<Vec<_>>(), ["wal", "ok", "17143"], "{out}");
    } else {
        assert!(std::env::var_os("UDAX_REQUIRE_MOUNT").is_none(), "sqlite3 is missing and UDAX_REQUIRE_MOUNT is set");
    }
    let out = run("python3 -c \"
import hashlib, os, shutil
data = os.urandom(3 << 20)
open('p', 'wb').write(data)
with open('p', 'r+b') as f:
    f.seek(12345); f.write(b'x' * 70000)
    data = data[:12345] + b'x' * 70000 + data[12345 + 70000:]
shutil.copyfile('p', 'q')
print(open('q', 'rb').read() == data and hashlib.sha1(open('p', 'rb').read()).digest() == hashlib.sha1(data).digest())
\"");
    assert_eq!(out.trim(), "True");
    m.unmount();
    fsck_clean(&m.img);
}

#[test]
fn a_forked_child_writes_under_a_writer_slot_of_its_own() {
    if !can_mount() {
        return;
    }
    // A writer slot names one process: a child storing under its parent's would not be waited
    // for once the parent exits.
    let m = Mounted::new("16M");
    let path = m.mnt.join("f");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let img = std::fs::metadata(&m.img).unwrap();
    let table = format!("/dev/shm/udax-direct.{:x}.{:x}", img.dev(), img.ino());
    let script = format!(
        "import os, struct\n\
         def slots(pid):\n\
         \x20   w = open('{table}', 'rb').read()\n\
         \x20   w = struct.unpack('<%dQ' % (len(w) // 8), w)\n\
         \x20   base = 8 + w[3] + 1\n\
         \x20   return sum(1 for i in range(256) if w[base + 4 * i] == pid)\n\
         fd = os.open('{p}', os.O_RDWR)\n\
         os.pwrite(fd, b'a' * 4096, 0)\n\
         print('parent', slots(os.getpid()), flush=True)\n\
         child = os.fork()\n\
         if child == 0:\n\
         \x20   os.pwrite(fd, b'b' * 4096, 4096)\n\
         \x20   print('child', slots(os.getpid()), flush=True)\n\
         \x20   os._exit(0)\n\
         os.waitpid(child, 0)\n",
        p = path.display()
    );
    let out = under_run(&m, "python3").args(["-c", &script]).env("UDAX_DIRECT_TRACE", "1").output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["parent 1", "child 1"], "{stderr}");
    assert_eq!(stderr.matches("): direct, 4096").count(), 2, "both writes were direct: {stderr}");
}

/// A fork taken while other threads were inside the library (holding its descriptor table or a
/// file's cached map) left the child those locks held by threads it does not have: its first
/// call on the file hung. Threads read and write directly while the main thread forks 300
/// children that each read and write the file; a watchdog fails the test on a hang.
#[test]
fn forks_while_threads_read_and_write_directly_never_hang_the_child() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("16M");
    let path = m.mnt.join("f");
    std::fs::write(&path, vec![0u8; 16384]).unwrap();
    let script = format!(
        "import os, threading\n\
         fd = os.open('{p}', os.O_RDWR)\n\
         stop = False\n\
         def work(i):\n\
         \x20   while not stop:\n\
         \x20       os.pread(fd, 4096, 0)\n\
         \x20       os.pwrite(fd, bytes([i]) * 4096, 4096)\n\
         ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]\n\
         for t in ts: t.start()\n\
         for i in range(300):\n\
         \x20   pid = os.fork()\n\
         \x20   if pid == 0:\n\
         \x20       ok = len(os.pread(fd, 4096, 0)) == 4096 and os.pwrite(fd, b'c' * 4096, 8192) == 4096\n\
         \x20       os._exit(0 if ok else 1)\n\
         \x20   assert os.waitpid(pid, 0)[1] == 0, 'a child failed'\n\
         stop = True\n\
         for t in ts: t.join()\n\
         print('forked', i + 1)\n",
        p = path.display()
    );
    let child = under_run(&m, "python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    let Ok(out) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
        let server = server_pid(&m.img).into_iter();
        let stacks = stacks(&std::iter::once(pid).chain(server).collect::<Vec<_>>());
        // The hung child first, then the parent waiting for it.
        sh(&format!("pkill -KILL -P {pid}; kill -KILL {pid}"), std::path::Path::new("/"));
        let _ = waiter.join();
        panic!("a forked child hung (60 s); the processes then:\n{stacks}");
    };
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "forked 300", "{stderr}");
    assert_eq!(&std::fs::read(&path).unwrap()[8192..12288], &[b'c'; 4096][..]);
}

/// Runs the python `script` (made from the paths of a udax file of 8 KiB of `u` and of a file
/// elsewhere holding "host input\n") under `udax run`, traced, standard input from the udax
/// file or the other one: its standard output and error.
fn udax_and_host_input(
    script: impl FnOnce(&std::path::Path, &std::path::Path) -> String,
    stdin_udax: bool,
) -> (String, String) {
    let m = Mounted::new("16M");
    let path = m.mnt.join("f");
    std::fs::write(&path, vec![b'u'; 8192]).unwrap();
    let host = tmp();
    let input = host.path().join("input");
    std::fs::write(&input, "host input\n").unwrap();
    let out = under_run(&m, "python3")
        .args(["-c", &script(&path, &input)])
        .stdin(std::fs::File::open(if stdin_udax { &path } else { &input }).unwrap())
        .env("UDAX_DIRECT_TRACE", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    (stdout.trim().to_string(), stderr.into_owned())
}

/// A child made by vfork (as Python's subprocess makes them) shares its parent's memory until
/// it execs: its dup2 of a udax file onto its standard input went into the parent's descriptor
/// table, and the parent's own later reads of its standard input (a file elsewhere) were served
/// from the udax file. vfork is served as fork, whose handlers keep the tables apart.
#[test]
fn a_vfork_child_redirecting_from_a_udax_file_leaves_its_parent_table_alone() {
    if !can_mount() {
        return;
    }
    let script = |udax: &std::path::Path, _: &std::path::Path| {
        format!(
            "import os, subprocess\n\
             f = open('{p}', 'r+b')\n\
             assert os.pread(f.fileno(), 4, 0) == b'uuuu'\n\
             subprocess.run(['true'], stdin=f)\n\
             print(os.read(0, 11), os.pread(f.fileno(), 4, 0))\n",
            p = udax.display()
        )
    };
    let (stdout, stderr) = udax_and_host_input(script, false);
    assert_eq!(stdout, "b'host input\\n' b'uuuu'", "{stderr}");
    assert_eq!(stderr.matches("(fd 3, 4 at 0): direct, 4").count(), 2, "the udax file is read directly: {stderr}");
}

/// freopen(3) moves a new file onto the stream's descriptor inside libc: standard input, first
/// read directly from a udax file, was still served from it after freopen named a file elsewhere.
#[test]
fn freopen_onto_a_descriptor_of_a_udax_file_is_seen() {
    if !can_mount() {
        return;
    }
    let script = |_: &std::path::Path, host: &std::path::Path| {
        format!(
            "import ctypes, os\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             libc.freopen.restype = ctypes.c_void_p\n\
             libc.freopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]\n\
             assert os.read(0, 4) == b'uuuu'\n\
             assert libc.freopen(b'{i}', b'r', ctypes.c_void_p.in_dll(libc, 'stdin'))\n\
             print(os.read(0, 11))\n",
            i = host.display()
        )
    };
    let (stdout, stderr) = udax_and_host_input(script, true);
    assert!(stderr.contains("read(fd 0, 4 at 0): direct, 4"), "standard input was read directly first: {stderr}");
    assert_eq!(stdout, "b'host input\\n'", "{stderr}");
}

/// A file one process mapped through the kernel was still read and written directly by the
/// others: the mapping kept pages older than their writes, and their reads missed its stores.
/// While a process maps the file, every client goes through the mount, which keeps the kernel's
/// pages coherent; once the mapping process lets go, direct calls serve again.
#[test]
fn a_file_mapped_through_the_kernel_anywhere_is_read_and_written_through_the_mount() {
    use std::io::{BufRead, Write};
    if !can_mount() {
        return;
    }
    let m = Mounted::new("16M");
    let path = m.mnt.join("f");
    std::fs::write(&path, vec![0u8; 16384]).unwrap();
    // One call by another process under `udax run`: what it printed, and how it was served.
    let other = |code: &str| {
        let script = format!("import os\nfd = os.open('{}', os.O_RDWR)\n{code}\n", path.display());
        let out = under_run(&m, "python3").args(["-c", &script]).env("UDAX_DIRECT_TRACE", "1").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).trim().to_string(), stderr.contains("): direct,"))
    };
    assert_eq!(other("os.pwrite(fd, b'z' * 4096, 0)"), (String::new(), true), "unmapped: direct");
    let mapper = format!(
        "import mmap, os, sys\n\
         fd = os.open('{}', os.O_RDWR)\n\
         m = mmap.mmap(fd, 16384)\n\
         print(m[0:4096] == b'z' * 4096, flush=True)\n\
         sys.stdin.readline()\n\
         print(m[0:4096] == b'b' * 4096, flush=True)\n\
         m[4096:8192] = b'a' * 4096\n\
         print('stored', flush=True)\n\
         sys.stdin.readline()\n\
         m.close()\n\
         os.close(fd)\n\
         print('closed', flush=True)\n",
        path.display()
    );
    // Mapped through the kernel (as a mapping the image cannot serve is: past EOF, say).
    let mut a = under_run(&m, "python3")
        .args(["-c", &mapper])
        .env("UDAX_DIRECT_MMAP", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(a.stdout.take().unwrap()).lines();
    let mut next = || said.next().unwrap().unwrap();
    assert_eq!(next(), "True", "the mapping shows the file");
    // Its pages are in the kernel's cache now: a direct write would leave them stale.
    assert_eq!(other("os.pwrite(fd, b'b' * 4096, 0)"), (String::new(), false), "mapped elsewhere: through the mount");
    a.stdin.as_ref().unwrap().write_all(b"\n").unwrap();
    assert_eq!(next(), "True", "the mapping shows the other process's write");
    assert_eq!(next(), "stored");
    let (got, direct) = other("print(os.pread(fd, 4096, 4096) == b'a' * 4096)");
    assert_eq!((got.as_str(), direct), ("True", false), "a read sees the mapping's store, through the mount");
    a.stdin.as_ref().unwrap().write_all(b"\n").unwrap();
    assert_eq!(next(), "closed");
    assert!(a.wait().unwrap().success());
    // The kernel releases the open file once its mapping is gone too; then direct calls serve.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !other("os.pwrite(fd, b'c' * 4096, 8192)").1 {
        assert!(std::time::Instant::now() < deadline, "still through the mount 5 s after the mapping went");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[..4096] == [b'b'; 4096] && bytes[4096..8192] == [b'a'; 4096] && bytes[8192..12288] == [b'c'; 4096]);
}

/// Programs that make the wrapped calls through libc's `syscall()` by number are served as
/// when they call the functions.
#[test]
fn udax_run_serves_calls_made_through_syscall_by_number() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("16M");
    let path = m.mnt.join("f");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let script = format!(
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.syscall.restype = ctypes.c_long\n\
         fd = os.open('{}', os.O_RDWR)\n\
         buf = ctypes.create_string_buffer(4096)\n\
         assert libc.syscall({}, fd, buf, 4096, ctypes.c_long(4096)) == 4096 and buf.raw == b'x' * 4096\n\
         assert libc.syscall({}, fd, b'y' * 4096, 4096, ctypes.c_long(0)) == 4096\n\
         assert libc.syscall({}) == os.getpid()\n",
        path.display(),
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_getpid
    );
    let out = under_run(&m, "python3").args(["-c", &script]).env("UDAX_DIRECT_TRACE", "1").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pread(fd 3, 4096 at 4096): direct") && stderr.contains("pwrite(fd 3, 4096 at 0): direct"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&path).unwrap()[..4096], [b'y'; 4096]);
}

/// Mappings under `udax run` are served from the image: the mapping, direct calls of other
/// processes and reads through the mount without the library all show the same bytes at once,
/// with no page cache between them; holes inside EOF are filled when mapped.
#[test]
fn udax_run_maps_files_from_the_image_and_every_process_sees_the_same_bytes() {
    use std::io::{BufRead, Write};
    if !can_mount() {
        return;
    }
    let m = Mounted::new("16M");
    let path = m.mnt.join("f");
    std::fs::write(&path, vec![b'z'; 16384]).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(24576).unwrap();
    let other = |code: &str| {
        let script = format!("import os\nfd = os.open('{}', os.O_RDWR)\n{code}\n", path.display());
        let out = under_run(&m, "python3").args(["-c", &script]).env("UDAX_DIRECT_TRACE", "1").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("): direct,"), "not served directly: {stderr}");
    };
    let mapper = format!(
        "import mmap, os, sys\n\
         fd = os.open('{}', os.O_RDWR)\n\
         m = mmap.mmap(fd, 24576)\n\
         print(m[0:16384] == b'z' * 16384 and m[16384:] == bytes(8192), flush=True)\n\
         sys.stdin.readline()\n\
         print(m[0:4096] == b'b' * 4096, flush=True)\n\
         m[4096:8192] = b'a' * 4096\n\
         m[20480:20485] = b'hello'\n\
         m.flush()\n\
         print('stored', flush=True)\n\
         sys.stdin.readline()\n\
         m.close()\n\
         os.close(fd)\n\
         print('closed', flush=True)\n",
        path.display()
    );
    let mut a = under_run(&m, "python3")
        .args(["-c", &mapper])
        .env("UDAX_DIRECT_TRACE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(a.stdout.take().unwrap()).lines();
    let mut next = || said.next().unwrap().unwrap();
    assert_eq!(next(), "True", "the mapping shows the file, zeros over its hole");
    other("os.pwrite(fd, b'b' * 4096, 0)");
    a.stdin.as_ref().unwrap().write_all(b"\n").unwrap();
    assert_eq!(next(), "True", "the mapping shows another process's direct write at once");
    assert_eq!(next(), "stored");
    // Through the mount, without the library: the mapping's stores, with no request between.
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[4096..8192] == [b'a'; 4096] && &bytes[20480..20485] == b"hello", "the mount misses the stores");
    other("assert os.pread(fd, 4096, 4096) == b'a' * 4096");
    a.stdin.as_ref().unwrap().write_all(b"\n").unwrap();
    assert_eq!(next(), "closed");
    let out = a.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("from the image"), "{stderr}");
    assert!(!stderr.contains("through the kernel"), "{stderr}");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[..4096] == [b'b'; 4096] && bytes[8192..16384] == [b'z'; 8192] && bytes.len() == 24576);
    // The mapped blocks go back once the mapping's open file is released.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    m.unmount();
    fsck_clean(&m.img);
}

/// A private mapping of a sparse file filled its holes: the server allocated (and zeroed) every
/// block of the range, though no store through it can reach the file. Holes are now zero pages
/// of the mapping's own, and nothing is allocated; stores through a private mapping stay in it.
#[test]
fn a_private_mapping_of_a_sparse_file_allocates_nothing() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("16M");
    let path = m.mnt.join("f");
    let f = std::fs::File::create(&path).unwrap();
    f.write_all_at(&[b'z'; 4096], 0).unwrap();
    f.write_all_at(&[b'y'; 4096], 65536).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    let script = format!(
        "import mmap, os\n\
         free = os.statvfs('{mnt}').f_bfree\n\
         fd = os.open('{p}', os.O_RDONLY)\n\
         m = mmap.mmap(fd, 1 << 20, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)\n\
         seen = m[:4096] == b'z' * 4096 and m[65536:69632] == b'y' * 4096\n\
         zeros = m[4096:65536] == bytes(61440) and m[69632:] == bytes((1 << 20) - 69632)\n\
         w = mmap.mmap(fd, 1 << 20, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)\n\
         w[0:2] = b'ab'\n\
         w[8192:8197] = b'hello'\n\
         own = w[:2] == b'ab' and w[8192:8197] == b'hello' and m[:2] == b'zz' and m[8192:8197] == bytes(5)\n\
         print(seen, zeros, own, os.statvfs('{mnt}').f_bfree == free)\n",
        mnt = m.mnt.display(),
        p = path.display()
    );
    let out = under_run(&m, "python3").args(["-c", &script]).env("UDAX_DIRECT_TRACE", "1").output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "True True True True", "data, zeros, private stores, no block allocated: {stderr}");
    assert_eq!(stderr.matches("from the image, 2 pieces, 2 zero").count(), 2, "{stderr}");
    assert!(!stderr.contains("through the kernel"), "{stderr}");
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes[..4096] == [b'z'; 4096] && bytes[4096..65536].iter().all(|&b| b == 0),
        "a private store reached the file"
    );
    m.unmount();
    fsck_clean(&m.img);
    let extents = ok(&[std::ffi::OsStr::new("extents"), m.img.as_os_str(), std::ffi::OsStr::new("/f")]);
    assert_eq!(extents.lines().filter(|l| l.contains("written")).count(), 2, "holes were filled:\n{extents}");
}

/// Mappings served from the image race the freeing of their blocks: two threads of a process
/// under `udax run` map (one shared, one private) and read a file over and over while another
/// process punches its whole range and writes it again, and a third fills the image with other
/// files, so freed blocks are reused at once. A mapping may show the file's old bytes or zeros, never another file's (the
/// pins hold its blocks; with the hold bypassed, mappings show `B`). Watchdog: 60 s.
#[test]
fn mappings_race_punches_and_never_show_another_files_bytes() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("24M");
    let path = m.mnt.join("a");
    std::fs::write(&path, vec![b'A'; 1 << 20]).unwrap();
    let secs = 8;
    let mapper = format!(
        "import mmap, os, threading, time\n\
         bad = []\n\
         def run(flags):\n\
         \x20   end = time.time() + {secs}\n\
         \x20   while time.time() < end and not bad:\n\
         \x20       fd = os.open('{p}', os.O_RDWR)\n\
         \x20       n = os.fstat(fd).st_size\n\
         \x20       if n:\n\
         \x20           m = mmap.mmap(fd, n, flags=flags)\n\
         \x20           d = m[:]\n\
         \x20           m.close()\n\
         \x20           if d.count(b'A') + d.count(0) != len(d): bad.append(d[:64])\n\
         \x20       os.close(fd)\n\
         ts = [threading.Thread(target=run, args=(f,)) for f in (mmap.MAP_SHARED, mmap.MAP_PRIVATE)]\n\
         [t.start() for t in ts]\n\
         [t.join() for t in ts]\n\
         print('bad' if bad else 'ok', bad[:1], flush=True)\n",
        p = path.display()
    );
    let churn = format!(
        "import ctypes, os, time\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         end = time.time() + {secs}\n\
         fd = os.open('{p}', os.O_RDWR)\n\
         while time.time() < end:\n\
         \x20   libc.fallocate(fd, 3, ctypes.c_long(0), ctypes.c_long(1 << 20))\n\
         \x20   try:\n\
         \x20       os.pwrite(fd, b'A' * (1 << 20), 0)\n\
         \x20   except OSError:\n\
         \x20       pass\n",
        p = path.display()
    );
    let fill = format!(
        "import os, time\n\
         end, i = time.time() + {secs}, 0\n\
         while time.time() < end:\n\
         \x20   f = '{d}/b%d' % (i % 8)\n\
         \x20   i += 1\n\
         \x20   try:\n\
         \x20       with open(f, 'wb') as o: o.write(b'B' * (2 << 20))\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   os.unlink(f) if i % 3 == 0 and os.path.exists(f) else None\n",
        d = m.mnt.display()
    );
    let mut kids: Vec<std::process::Child> = [(&mapper, true), (&churn, false), (&fill, false)]
        .into_iter()
        .map(|(code, piped)| {
            let mut c = under_run(&m, "python3");
            c.args(["-c", code]);
            if piped {
                c.stdout(std::process::Stdio::piped());
            }
            c.spawn().unwrap()
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for k in &mut kids {
        while k.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let pids: Vec<u32> = kids.iter().map(|k| k.id()).chain(server_pid(&m.img)).collect();
                let stacks = stacks(&pids);
                kids.iter_mut().for_each(|k| {
                    let _ = k.kill();
                });
                panic!("the race did not finish in 60 s; the processes then:\n{stacks}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let mut said = String::new();
    std::io::Read::read_to_string(&mut kids[0].stdout.take().unwrap(), &mut said).unwrap();
    assert!(kids.iter_mut().all(|k| k.wait().unwrap().success()), "a racer failed: {said}");
    assert!(said.starts_with("ok"), "a mapping showed another file's bytes: {said}");
    m.unmount();
    fsck_clean(&m.img);
}

/// fsx under `udax run`, while a second process reads the same file through the mount without
/// the library: at random moments it stops fsx (SIGSTOP) and checks that the mount and the
/// image, read directly, hold the same size and the same bytes; fsx checks every read of its own
/// against what it wrote. First with every operation (`.ci/fsx.toml`): fsx's mappings are served
/// from the image (DESIGN.md "Mappings served from the image"), so no stop finds the file mapped
/// through the kernel; then with every operation but the mapped ones (`.ci/fsx-direct.toml`).
/// Every stop that finds no request in flight compares. Needs fsx (`cargo install fsx@0.3.2`):
/// `.ci/run` runs 100,000 operations of each, the README's long run 1,000,000 (`UDAX_FSX_OPS`),
/// in runs of 100,000 with seeds 1, 2, … (fsx never unmaps its mapped reads, and one process of a
/// million operations would run out of mappings).
#[test]
#[ignore = "needs fsx; .ci/run runs it"]
fn fsx_under_udax_run_with_a_second_reader_through_the_mount() {
    assert!(can_mount(), "the fsx test needs a mount");
    let ops: u64 = std::env::var("UDAX_FSX_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let m = Mounted::new("1G");
    for conf in ["fsx.toml", "fsx-direct.toml"] {
        let mut total = Stops::default();
        let mut done = 0;
        for seed in 1.. {
            let n = (ops - done).min(100_000);
            if n == 0 {
                break;
            }
            total += fsx_round(&m, conf, n, seed);
            done += n;
        }
        println!("{conf}: {ops} fsx operations; at the reader's stops {total:?}");
        assert_eq!(total.mapped, 0, "{conf}: the file was mapped through the kernel");
        assert!(total.compared >= ops / 10_000, "only {total:?}");
    }
    m.unmount();
    fsck_clean(&m.img);
}

/// What the second reader's stops of fsx found: the file compared, mapped through the kernel (so
/// read through the mount by everyone), or changing under a request still in flight.
#[derive(Debug, Default, Clone, Copy)]
struct Stops {
    compared: u64,
    mapped: u64,
    moving: u64,
}

impl std::ops::AddAssign for Stops {
    fn add_assign(&mut self, o: Stops) {
        self.compared += o.compared;
        self.mapped += o.mapped;
        self.moving += o.moving;
    }
}

/// One fsx process of `ops` operations from `seed` with configuration `conf` (in `.ci/`), with
/// the second reader beside it.
fn fsx_round(m: &Mounted, conf: &str, ops: u64, seed: u64) -> Stops {
    use rustix::process::{kill_process, waitpid, Pid, Signal, WaitOptions};
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci").join(conf);
    let log_path = m.img.with_file_name("fsx.log");
    // A file of its own per configuration: the kernel releases the last round's mapped file (and
    // with it the file's mapped mark) some time after that fsx exits.
    let path = m.mnt.join(conf.file_name().unwrap()).with_extension("data");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut fsx = Fsx {
        reaped: false,
        child: under_run(m, "fsx")
            .arg("-f")
            .arg(&conf)
            .args(["-N", &ops.to_string(), "-S", &seed.to_string(), "-P"])
            .arg(m.img.parent().unwrap())
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    };
    let pid = Pid::from_child(&fsx.child);
    let (mut stops, mut rng) = (Stops::default(), seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // Attached at the first stop that finds the file (fsx creates it), kept for the rest.
    let mut mount: Option<Mount> = None;
    let status = loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(std::time::Duration::from_micros(500 + rng % 20_000));
        if kill_process(pid, Signal::STOP).is_err() {
            break waitpid(Some(pid), WaitOptions::empty()).unwrap().unwrap().1;
        }
        match waitpid(Some(pid), WaitOptions::UNTRACED).unwrap() {
            Some((_, s)) if s.stopped() => {}
            Some((_, s)) => break s,
            None => unreachable!("waitpid without NOHANG returned nothing"),
        }
        // fsx may be stopped inside a request the server is still serving: compare only what
        // the mount shows the same before and after the direct read.
        if let Ok(f) = std::fs::File::open(&path) {
            let through_mount = || (f.metadata().map(|m| m.len()).ok(), std::fs::read(&path).ok());
            let before = through_mount();
            if let (Some(len), Some(bytes)) = before.clone() {
                let mount =
                    mount.get_or_insert_with(|| Mount::attach(f.as_fd()).unwrap().expect("the mount publishes maps"));
                let mut direct = vec![0u8; len as usize + 4096];
                let ino = f.metadata().unwrap().ino();
                match mount.read_at(f.as_fd(), ino, &mut CachedMap::default(), &mut direct, 0).unwrap() {
                    Served::PassThrough => stops.mapped += 1,
                    Served::Bytes(_) if through_mount() != before => stops.moving += 1,
                    Served::Bytes(n) => {
                        assert_eq!(bytes.len() as u64, len, "the mount's size and its bytes disagree");
                        let what =
                            format!("seed {seed}, stop {}: the image read directly, against the mount", stops.compared);
                        same(&direct[..n], &bytes, &what);
                        stops.compared += 1;
                    }
                }
            }
        }
        kill_process(pid, Signal::CONT).unwrap();
    };
    fsx.reaped = true;
    let said = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.exited() && status.exit_status() == Some(0), "fsx -S {seed} failed ({status:?}):\n{said}");
    stops
}

/// An fsx process, killed and reaped if the test fails before it is.
struct Fsx {
    child: std::process::Child,
    reaped: bool,
}

impl Drop for Fsx {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
