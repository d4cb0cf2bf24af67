//! What the mount tests share: whether this machine can mount, and a mounted scratch image
//! that is unmounted and removed on drop.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// Whether this machine can run the mount tests: root, /dev/fuse, and git, tar and flock. When
/// not, says what is missing and the test passes without running, unless `UDAX_REQUIRE_MOUNT`
/// is set (`.ci/run` sets it), where a missing piece is a failure.
pub fn can_mount() -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root");
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse");
    }
    for tool in ["git", "tar", "flock"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            missing.push(tool);
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("skipping: the mount tests need {}", missing.join(", "));
    assert!(std::env::var_os("UDAX_REQUIRE_MOUNT").is_none(), "{msg}, and UDAX_REQUIRE_MOUNT is set");
    eprintln!("{msg}");
    false
}

/// Whether the long forms of the tests run (`UDAX_LONG=1`, as `.ci/run` sets): more rounds, deeper
/// trees, whole suites; a newcomer's `cargo test` runs the quick ones.
pub fn long() -> bool {
    std::env::var("UDAX_LONG").is_ok_and(|v| v == "1")
}

pub fn tmp() -> TempDir {
    tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap()
}

pub fn udax<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_udax")).args(args).output().unwrap()
}

#[track_caller]
pub fn ok<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = udax(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "udax {args:?} failed ({}): {err}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
pub fn sh(cmd: &str, dir: &Path) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "`{cmd}` failed ({}): {err}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
}

/// Unmounts `dir` lazily on drop if it is still mounted: cleanup only (a test may be failing
/// already), no assertion.
pub struct Detach<'a>(pub &'a Path);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        if is_mounted(self.0) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
}

/// A scratch image mounted on a scratch directory; unmounted (lazily if need be) on drop.
pub struct Mounted {
    pub _dir: TempDir,
    pub img: PathBuf,
    pub mnt: PathBuf,
}

impl Mounted {
    pub fn new(size: &str) -> Mounted {
        Mounted::with_options(size, "rw")
    }

    pub fn with_options(size: &str, opts: &str) -> Mounted {
        let dir = tmp();
        let img = dir.path().join("img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        ok(&[OsStr::new("mkfs"), img.as_os_str(), OsStr::new("--size"), OsStr::new(size)]);
        ok(&[OsStr::new("mount"), img.as_os_str(), mnt.as_os_str(), OsStr::new("-o"), OsStr::new(opts)]);
        assert!(is_mounted(&mnt));
        Mounted { _dir: dir, img, mnt }
    }

    /// Unmounts and waits for the server to let go of the image.
    pub fn unmount(&self) {
        umount(&self.mnt);
        wait_released(&self.img);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            // Cleanup only (a test may be failing already): no assertion here.
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            let _ = Command::new("flock").arg("-w").arg("20").arg(&self.img).arg("true").status();
        }
        // A server killed by a test cannot remove its direct-access table (DESIGN.md).
        if let Ok(meta) = std::fs::metadata(&self.img) {
            use std::os::unix::fs::MetadataExt;
            let _ = std::fs::remove_file(format!("/dev/shm/udax-direct.{:x}.{:x}", meta.dev(), meta.ino()));
        }
    }
}

/// umount(8) on `dir`. Tests run in parallel and spawn programs: a child between fork and exec
/// holds copies of every descriptor the test process had open, files on this mount included,
/// for as long as the exec takes on a loaded machine; a busy mount is retried for up to 2 s.
#[track_caller]
pub fn umount(dir: &Path) {
    for _ in 0..100 {
        let out = Command::new("umount").arg(dir).output().unwrap();
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("busy"), "umount {} failed ({}): {err}", dir.display(), out.status);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{} stayed busy for 2 s", dir.display());
}

/// The server holds the image's lock until it has checkpointed and synced it: taking the lock
/// (flock(1), bounded at 20 s) waits for exactly that.
pub fn wait_released(img: &Path) {
    let got = Command::new("flock").arg("-w").arg("20").arg(img).arg("true").status().unwrap();
    assert!(got.success(), "the server kept {} for 20 s after unmount", img.display());
}

/// The preload library beside the `udax` under test, built (or brought up to date: a stale
/// one would speak an older protocol) once per test process.
pub fn preload_lib() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::path::Path::new(env!("CARGO_BIN_EXE_udax"));
            let release = exe.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "release");
            let mut cargo = std::process::Command::new(env!("CARGO"));
            cargo.args(["build", "-q", "-p", "udax-preload"]).current_dir(env!("CARGO_MANIFEST_DIR"));
            if release {
                cargo.arg("--release");
            }
            assert!(cargo.status().unwrap().success(), "building the preload library failed");
            let lib = exe.with_file_name("libudax_preload.so");
            assert!(lib.is_file(), "no {} after building it", lib.display());
            lib
        })
        .clone()
}

/// The process that holds the image open: its mount server (before any direct client runs,
/// which opens it too).
pub fn server_pid(img: &Path) -> Option<u32> {
    let want = std::fs::canonicalize(img).ok()?;
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).ok().as_deref() == Some(want.as_path()) {
                return Some(pid);
            }
        }
    }
    None
}

/// What the processes `pids` and all their descendants are doing, for a watchdog to print
/// before it kills a hang: each thread's state, wait channel, system call and kernel stack,
/// then the user stacks gdb gives where it is installed.
pub fn stacks(pids: &[u32]) -> String {
    use std::fmt::Write;
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let mut seen: Vec<u32> = pids.to_vec();
    let mut i = 0;
    while i < seen.len() {
        let p = seen[i];
        let children: Vec<u32> =
            all.iter().copied().filter(|&c| parent_of(c) == Some(p) && !seen.contains(&c)).collect();
        seen.extend(children);
        i += 1;
    }
    let read = |p: String| std::fs::read_to_string(p).unwrap_or_default().trim_end().to_string();
    let mut out = String::new();
    for pid in seen {
        let cmd = read(format!("/proc/{pid}/cmdline")).replace('\0', " ");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
        let _ = writeln!(out, "== pid {pid} (parent {:?}, exe {exe}): {cmd}", parent_of(pid));
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>());
        for t in tasks.unwrap_or_default() {
            let dir = t.path().display().to_string();
            let state = read(format!("{dir}/stat"));
            let state = state.rsplit_once(')').map_or("?", |(_, r)| r.split_whitespace().next().unwrap_or("?"));
            let _ = writeln!(
                out,
                "-- task {} state {state} wchan {} syscall {}\n{}",
                t.file_name().to_string_lossy(),
                read(format!("{dir}/wchan")),
                read(format!("{dir}/syscall")),
                read(format!("{dir}/stack"))
            );
        }
        let gdb = Command::new("timeout")
            .args(["20", "gdb", "-batch", "-nx", "-ex", "thread apply all bt 30", "-p", &pid.to_string()])
            .output();
        if let Some(g) = gdb.ok().filter(|g| g.status.code() != Some(127)) {
            let text = String::from_utf8_lossy(&g.stdout);
            out.extend(
                text.lines().filter(|l| l.starts_with('#') || l.starts_with("Thread")).map(|l| format!("{l}\n")),
            );
        }
    }
    out
}
