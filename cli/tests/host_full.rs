//! A full host file system. Images used to be sparse files, and the first store into a page the
//! host could not back killed `mkfs`, `put`, `io` or the mount server with SIGBUS and no message
//! (`mkfs --size 1T` on a 32 MiB tmpfs left a 1 TiB file behind and died). Now mkfs reserves the
//! image's space or fails saying so, and a `--sparse` image reserves each allocation's space
//! first, so a full host fails the operation with ENOSPC. Each test mounts a small tmpfs of its
//! own (root only: elsewhere the test says it skips).

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

fn udax<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_udax")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "udax panicked: {err}");
    // A signal (SIGBUS above all) leaves no exit code.
    assert!(
        out.status.code().is_some(),
        "udax {:?} died: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        out.status
    );
    out
}

/// Says why a test does not run here; a failure where `UDAX_REQUIRE_MOUNT` is set (`.ci/run`).
fn skip(why: &str) {
    assert!(std::env::var_os("UDAX_REQUIRE_MOUNT").is_none(), "{why}, and UDAX_REQUIRE_MOUNT is set");
    eprintln!("skipping: {why}");
}

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop.
struct SmallHost {
    dir: TempDir,
}

impl SmallHost {
    fn mount(size: &str) -> Option<SmallHost> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "udax-small-host"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(o) if o.status.success() => Some(SmallHost { dir }),
            Ok(o) => {
                skip(&format!("cannot mount a tmpfs here: {}", String::from_utf8_lossy(&o.stderr).trim()));
                None
            }
            Err(e) => {
                skip(&format!("cannot run mount: {e}"));
                None
            }
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for SmallHost {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

const ENOSPC: i32 = 28;
const EROFS: i32 = 30;
const ENOTCONN: i32 = 107;

/// A foreground mount server; on drop (a failing test) unmounted lazily and stopped, so the
/// small host can be unmounted too.
struct Server {
    child: std::process::Child,
    mnt: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap();
    std::fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == dir.to_str())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn mkfs_larger_than_the_host_fails_cleanly_and_leaves_nothing() {
    let Some(host) = SmallHost::mount("32m") else { return };
    let img = host.path("img");
    for size in ["1G", "1T"] {
        let out = udax(&["mkfs", s(&img), "--size", size]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("no room") && err.contains("--sparse"), "{err}");
        assert!(!img.exists(), "mkfs left the image behind");
    }
}

#[test]
fn a_sparse_image_on_a_full_host_fails_operations_with_enospc() {
    let Some(host) = SmallHost::mount("32m") else { return };
    let img = host.path("img");
    let out = udax(&["mkfs", s(&img), "--size", "256M", "--sparse"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("taken as the image fills"));
    // A small file first, then more data than the host holds (both from outside it).
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), vec![0x33; 1 << 20]).unwrap();
    let out = udax(&["put", s(&img), s(src.path()), "/small"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(src.path(), vec![0x5a; 48 << 20]).unwrap();
    let out = udax(&["put", s(&img), s(src.path()), "/big"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no room"), "{err}");
    assert!(udax(&["fsck", s(&img)]).status.success());
    let out = udax(&["cat", s(&img), "/small"]);
    assert_eq!(out.stdout, vec![0x33; 1 << 20]);
    assert!(udax(&["fsck", s(&img)]).status.success());
}

#[test]
fn a_full_host_turns_the_mount_read_only_and_the_server_unmounts_cleanly() {
    let Some(host) = SmallHost::mount("32m") else { return };
    let img = host.path("img");
    let mnt = tempfile::tempdir().unwrap();
    assert!(udax(&["mkfs", s(&img), "--size", "256M", "--sparse"]).status.success());
    // A foreground server, its messages to a file the test reads afterwards; it says "ready"
    // on stdout once mounted (the protocol `udax mount` itself uses with its server).
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_udax"))
        .args(["mount", "-f", s(&img), s(mnt.path())])
        .env("UDAX_MOUNT_REPORT", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut server = Server { child, mnt: mnt.path().to_path_buf() };
    let mut line = String::new();
    let stdout = server.child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the mount never came up");
    assert!(mounted(mnt.path()));
    std::fs::write(mnt.path().join("small"), vec![9u8; 1 << 20]).unwrap();
    let big = mnt.path().join("big");
    let err = std::fs::write(&big, vec![7u8; 48 << 20]).expect_err("48 MiB fit on a 32 MiB host");
    assert!([ENOSPC, EROFS, ENOTCONN].contains(&err.raw_os_error().unwrap_or(0)), "{err}");
    // The server says why, unmounts and exits cleanly; what it held is intact.
    let status = server.child.wait().unwrap();
    let said = std::fs::read_to_string(log.path()).unwrap();
    assert!(status.success(), "the server exited with {status}, saying {said:?}");
    assert!(!mounted(mnt.path()), "the server left its mount behind");
    assert!(said.contains("no room") && said.contains("unmounting"), "the server did not say why: {said:?}");
    assert!(udax(&["fsck", s(&img)]).status.success());
    assert_eq!(udax(&["cat", s(&img), "/small"]).stdout, vec![9u8; 1 << 20]);
}

/// The library's side: the operation that meets the full host fails with ENOSPC, and every
/// change after it with EROFS saying why, while reads go on.
#[test]
fn a_full_host_stops_changes_in_the_library() {
    let Some(host) = SmallHost::mount("32m") else { return };
    let img = host.path("img");
    let fs = udax::Fs::mkfs(udax::Device::create_sparse(&img, 256 << 20).unwrap(), &Default::default()).unwrap();
    fs.write_file("/small", b"kept").unwrap();
    let f = fs.open("/big", udax::OpenOptions::create()).unwrap();
    let chunk = vec![1u8; 1 << 20];
    let err = (0..64u64).find_map(|i| f.write_at(&chunk, i << 20).err()).expect("the host filled up");
    assert_eq!(err.errno(), ENOSPC, "{err}");
    let after = fs.mkdir_path("/d", 0o755).unwrap_err();
    assert_eq!(after.errno(), EROFS, "{after}");
    assert!(after.to_string().contains("host file system holding the image filled up"), "{after}");
    assert_eq!(fs.read_file("/small").unwrap(), b"kept");
    drop(f);
    fs.unmount().unwrap();
    let fs = udax::Fs::open_image(&img).unwrap();
    assert!(udax::check::check(&fs, &mut |_, _| {}).is_clean());
}
