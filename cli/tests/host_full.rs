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
                eprintln!("skipping: cannot mount a tmpfs here: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipping: cannot run mount: {e}");
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
fn the_mount_server_survives_a_full_host_and_says_why() {
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
    assert_eq!(err.raw_os_error(), Some(ENOSPC), "{err}");
    // The server is alive and the data it holds intact.
    assert_eq!(std::fs::read(mnt.path().join("small")).unwrap(), vec![9u8; 1 << 20]);
    std::fs::remove_file(&big).unwrap();
    assert!(Command::new("umount").arg(mnt.path()).status().unwrap().success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "the server exited with {status}");
    let said = std::fs::read_to_string(log.path()).unwrap();
    assert!(said.contains("no room"), "the server did not say why: {said:?}");
    assert!(udax(&["fsck", s(&img)]).status.success());
}
