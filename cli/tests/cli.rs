//! End-to-end tests of the `udax` binary on scratch images.

use std::ffi::OsStr;
use std::fs::{File, FileTimes};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, UNIX_EPOCH};

use tempfile::TempDir;

mod common;

fn tmp() -> TempDir {
    if Path::new("/dev/shm").is_dir() {
        if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn udax<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_udax")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "udax panicked: {err}");
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs udax and expects success; returns stdout.
#[track_caller]
fn ok<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = udax(args);
    assert!(out.status.success(), "udax {args:?} failed ({}): {}", out.status, text(&out.stderr));
    text(&out.stdout)
}

/// Runs udax and expects failure; returns (exit code, stderr).
#[track_caller]
fn fails<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> (i32, String) {
    let out = udax(args);
    assert!(!out.status.success(), "udax {args:?} succeeded: {}", text(&out.stdout));
    (out.status.code().unwrap_or(-1), text(&out.stderr))
}

fn mkfs(dir: &Path, size: &str) -> PathBuf {
    let img = dir.join("img");
    ok(&[OsStr::new("mkfs"), img.as_os_str(), OsStr::new("--size"), OsStr::new(size)]);
    img
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn mkfs_info_ls() {
    let d = tmp();
    let img = d.path().join("img");
    let out = ok(&["mkfs", s(&img), "--size", "16M", "--label", "scratch"]);
    assert!(out.contains("block size:  4096"), "{out}");
    assert!(out.contains("data blocks:"), "{out}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);

    let info = ok(&["info", s(&img)]);
    for key in ["block size:", "map_sync:", "flush:", "nt copy:", "uuid:", "durability:", "recovery:"] {
        assert!(info.contains(key), "{key} missing from {info}");
    }
    assert!(info.contains("label:       scratch"), "{info}");
    let j: serde_json::Value = serde_json::from_str(&ok(&["info", s(&img), "--json"])).unwrap();
    assert_eq!(j["geometry"]["block_size"], 4096);
    assert_eq!(j["geometry"]["size_bytes"], 16 << 20);
    assert_eq!(j["label"], "scratch");
    assert!(j["device"]["map_sync"].is_boolean());

    assert_eq!(ok(&["ls", s(&img)]), "");
    assert_eq!(ok(&["ls", s(&img), "/", "-a"]), ".\n..\n");
    let long = ok(&["ls", s(&img), "-la"]);
    assert!(long.starts_with("drwxr-xr-x 2 "), "{long}");

    // Hex sizes, other block sizes; refusing to overwrite without --force.
    let (_, err) = fails(&["mkfs", s(&img), "--size", "0x1000000", "--block-size", "1024"]);
    assert!(err.contains("--force"), "{err}");
    let out = ok(&["mkfs", s(&img), "--size", "0x1000000", "--block-size", "1k", "--force"]);
    assert!(out.contains("block size:  1024"), "{out}");
    let (_, err) = fails(&["mkfs", s(&d.path().join("new")), "--size", "16M", "--block-size", "512"]);
    assert!(err.contains("block size"), "{err}");
    let (_, err) = fails(&["mkfs", s(&d.path().join("tiny")), "--size", "8k"]);
    assert!(err.contains("too small") && err.contains("needs at least 344.0 KiB (352256 bytes)"), "{err}");
    ok(&["mkfs", s(&d.path().join("smallest")), "--size", "352256"]);
    // A file that is not an image is not overwritten without --force.
    let text = d.path().join("notes.txt");
    std::fs::write(&text, b"keep me").unwrap();
    let (_, err) = fails(&["mkfs", s(&text), "--size", "16M"]);
    assert!(err.contains("not a udax image; use --force"), "{err}");
    assert_eq!(std::fs::read(&text).unwrap(), b"keep me");
    assert!(!d.path().join("tiny").exists(), "a refused mkfs left a file behind");
    let (_, err) = fails(&["mkfs", s(&d.path().join("nosize"))]);
    assert!(err.contains("--size"), "{err}");
}

/// xorshift bytes: incompressible enough, reproducible.
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn set_mtime(p: &Path, sec: u64, nsec: u32) {
    let t = UNIX_EPOCH + Duration::new(sec, nsec);
    File::open(p).unwrap().set_times(FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// A host path's extended attributes, sorted (of a symlink itself).
fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut list = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut list[..]).unwrap();
    let mut out: Vec<_> = list[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let mut v = vec![0u8; 65536];
            let k = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut v[..]).unwrap();
            (name.to_vec(), v[..k].to_vec())
        })
        .collect();
    out.sort();
    out
}

/// Builds a host tree with varied modes, times, a symlink, an empty file, a hard link, a
/// non-UTF-8 name, a 3 MiB file and extended attributes.
fn host_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir(root.join("sticky")).unwrap();
    std::fs::write(root.join("plain.txt"), b"hello\n").unwrap();
    std::fs::write(root.join("secret"), b"s3cret").unwrap();
    std::fs::write(root.join("tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(root.join("suid"), b"x").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("sub/deeper/big.bin"), noise(3 << 20, 0x9e37_79b9_7f4a_7c15)).unwrap();
    let mut sparse = noise(1 << 20, 7);
    sparse.extend(vec![0u8; 2 << 20]);
    sparse.extend(noise(1000, 8));
    std::fs::write(root.join("sub/holes.bin"), &sparse).unwrap();
    std::fs::write(root.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name").unwrap();
    std::os::unix::fs::symlink("sub/deeper/big.bin", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("plain.txt"), root.join("sub/plain-again")).unwrap();
    let setx = |p: &str, name: &str, value: &[u8]| {
        rustix::fs::lsetxattr(root.join(p), name, value, rustix::fs::XattrFlags::empty()).unwrap_or_else(|e| {
            panic!("setxattr {name} on the host's {p}: {e} (the test needs a tmpfs or ext4 /dev/shm)")
        });
    };
    setx("plain.txt", "user.mime_type", b"text/plain");
    setx("plain.txt", "user.empty", b"");
    setx("sub/deeper", "user.dir", &[0xff; 2000]);
    // trusted.* needs CAP_SYS_ADMIN on the host; without it the tree has user.* attributes only.
    if rustix::process::geteuid().is_root() {
        setx("secret", "trusted.hidden", b"root sees this");
    } else {
        println!("not root: the tree carries no trusted.* attribute");
    }
    chmod(&root.join("secret"), 0o600);
    chmod(&root.join("tool"), 0o755);
    chmod(&root.join("suid"), 0o4751);
    chmod(&root.join("sticky"), 0o1777);
    chmod(&root.join("sub/deeper"), 0o750);
    for (i, p) in
        ["plain.txt", "secret", "tool", "suid", "empty", "sub/deeper/big.bin", "sub/holes.bin"].iter().enumerate()
    {
        set_mtime(&root.join(p), 1_000_000_000 + i as u64 * 1000, 123_456_789 + i as u32);
    }
    // A symlink's own times (get lost them: cp -a keeps them).
    let t = rustix::fs::Timespec { tv_sec: 1_200_000_000, tv_nsec: 77 };
    let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
    rustix::fs::utimensat(rustix::fs::CWD, root.join("link"), &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
    // Directories last: their contents are done.
    for (i, p) in ["sub/deeper", "sub", "sticky", ""].iter().enumerate() {
        set_mtime(&root.join(p), 1_500_000_000 + i as u64, 42 + i as u32);
    }
}

/// Compares two host trees: names, types, bytes, permission bits, symlink targets, mtimes,
/// extended attributes.
fn same_tree(a: &Path, b: &Path) {
    let ma = std::fs::symlink_metadata(a).unwrap();
    let mb = std::fs::symlink_metadata(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    assert_eq!(ma.file_type(), mb.file_type(), "type of {}", b.display());
    assert_eq!(xattrs(a), xattrs(b), "extended attributes of {}", b.display());
    if ma.file_type().is_symlink() {
        assert_eq!(std::fs::read_link(a).unwrap(), std::fs::read_link(b).unwrap(), "target of {}", b.display());
        assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()), "mtime of {}", b.display());
        return;
    }
    assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "mode of {}", b.display());
    assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()), "mtime of {}", b.display());
    if ma.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name()).collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "entries of {}", b.display());
        for n in na {
            same_tree(&a.join(&n), &b.join(&n));
        }
    } else {
        assert_eq!(ma.len(), mb.len(), "size of {}", b.display());
        assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "bytes of {}", b.display());
    }
}

#[test]
fn put_get_round_trip() {
    let d = tmp();
    let img = mkfs(d.path(), "64M");
    let src = d.path().join("src");
    host_tree(&src);

    // Destination missing: it becomes the copy.
    ok(&["put", s(&img), s(&src), "/copy"]);
    // Destination an existing directory: the copy goes inside under the source's name.
    ok(&["mkdir", s(&img), "/into"]);
    ok(&["put", s(&img), s(&src), "/into"]);
    let ls = ok(&["ls", s(&img), "/into"]);
    assert_eq!(ls, "src\n");
    let ls = ok(&["ls", s(&img), "/copy", "-l"]);
    assert!(ls.contains("-rwsr-x--x "), "{ls}");
    assert!(ls.contains("drwxrwxrwt "), "{ls}");
    assert!(ls.contains("link -> sub/deeper/big.bin"), "{ls}");
    assert!(ls.contains(" 2001-09-09 01:46 plain.txt"), "{ls}");

    // The hard link is one inode in the image; holes stay holes.
    let a: serde_json::Value = serde_json::from_str(&ok(&["stat", s(&img), "/copy/plain.txt", "--json"])).unwrap();
    let b: serde_json::Value =
        serde_json::from_str(&ok(&["stat", s(&img), "/copy/sub/plain-again", "--json"])).unwrap();
    assert_eq!(a["ino"], b["ino"]);
    assert_eq!(a["nlink"], 2);
    let h: serde_json::Value = serde_json::from_str(&ok(&["stat", s(&img), "/copy/sub/holes.bin", "--json"])).unwrap();
    assert!(h["allocated_bytes"].as_u64().unwrap() < 2 << 20, "holes were filled: {h}");
    assert_eq!(h["size"], (3 << 20) + 1000);

    // Back out: into a missing path, then into an existing directory.
    let out = d.path().join("out");
    ok(&["get", s(&img), "/copy", s(&out)]);
    same_tree(&src, &out);
    let out2 = d.path().join("out2");
    std::fs::create_dir(&out2).unwrap();
    ok(&["get", s(&img), "/into/src", s(&out2)]);
    same_tree(&src, &out2.join("src"));
    let m1 = std::fs::metadata(out.join("plain.txt")).unwrap();
    let m2 = std::fs::metadata(out.join("sub/plain-again")).unwrap();
    assert_eq!(m1.ino(), m2.ino(), "the hard link came back as two files");

    // Single files both ways, and cat.
    ok(&["put", s(&img), s(&src.join("plain.txt")), "/one.txt"]);
    assert_eq!(ok(&["cat", s(&img), "/one.txt", "/copy/secret"]), "hello\ns3cret");
    ok(&["get", s(&img), "/one.txt", s(d.path())]);
    assert_eq!(std::fs::read(d.path().join("one.txt")).unwrap(), b"hello\n");
    // Overwriting an existing file on either side.
    ok(&["put", s(&img), s(&src.join("secret")), "/one.txt"]);
    assert_eq!(ok(&["cat", s(&img), "/one.txt"]), "s3cret");
    ok(&["get", s(&img), "/one.txt", s(&d.path().join("one.txt"))]);
    assert_eq!(std::fs::read(d.path().join("one.txt")).unwrap(), b"s3cret");

    let out = udax(&["fsck", s(&img)]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));

    let (_, err) = fails(&["get", s(&img), "/one.txt", s(&img)]);
    assert!(err.contains("image itself"), "{err}");
    assert!(ok(&["fsck", s(&img)]).contains("clean"));
    let (_, err) = fails(&["put", s(&img), s(&d.path().join("missing")), "/x"]);
    assert!(err.contains("No such file or directory"), "{err}");
    let (_, err) = fails(&["get", s(&img), "/missing", s(&d.path().join("x"))]);
    assert!(err.contains("udax get: /missing: No such file or directory"), "{err}");
}

/// `udax put` and `get` recursed once per level and named host files by whole paths, so the
/// host's PATH_MAX (4096 bytes) ended them long before the stack did. A 100,000-level chain (a
/// path of 200,000 bytes; 10,000 levels in a quick run) goes in and comes back out whole.
#[test]
fn put_and_get_a_chain_far_deeper_than_path_max() {
    use rustix::fs::{mkdirat, openat, unlinkat, AtFlags, Mode, OFlags};
    let depth: usize = if common::long() { 100_000 } else { 10_000 };
    let d = tmp();
    let img = d.path().join("img");
    ok(&["mkfs", s(&img), "--size", "256M", "--block-size", "1024", "--inodes", "110000"]);
    fn dir(at: impl std::os::fd::AsFd, name: impl rustix::path::Arg) -> std::os::fd::OwnedFd {
        openat(at, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap()
    }
    // The host chain, built (and later removed) one level at a time through descriptors.
    let top = d.path().join("chain");
    std::fs::create_dir(&top).unwrap();
    let mut at = dir(rustix::fs::CWD, &top);
    for _ in 0..depth {
        mkdirat(&at, "d", Mode::from_raw_mode(0o750)).unwrap();
        at = dir(&at, "d");
    }
    let leaf =
        openat(&at, "leaf", OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC, Mode::from_raw_mode(0o640)).unwrap();
    rustix::io::write(&leaf, b"at the bottom").unwrap();
    drop((leaf, at));

    ok(&["put", s(&img), s(&top), "/chain"]);
    assert!(ok(&["fsck", s(&img)]).contains("clean"));
    let out = d.path().join("out");
    ok(&["get", s(&img), "/chain", s(&out)]);

    // Walk each chain to its leaf, then take it down from the top: each level is moved up
    // beside the tree before its parent goes (rmdir deep down walks the cached levels below
    // it, time squared in the depth).
    let check_and_remove = |root: &Path| {
        let mut at = dir(rustix::fs::CWD, root);
        for level in 0..depth {
            let st = rustix::fs::statat(&at, "d", AtFlags::SYMLINK_NOFOLLOW)
                .unwrap_or_else(|e| panic!("level {level}: {e}"));
            assert_eq!(st.st_mode & 0o7777, 0o750, "level {level}");
            at = dir(&at, "d");
        }
        let mut leaf = vec![0u8; 64];
        let f = openat(&at, "leaf", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
        let n = rustix::io::read(&f, &mut leaf).unwrap();
        assert_eq!(&leaf[..n], b"at the bottom");
        drop((f, at));
        let base = dir(rustix::fs::CWD, root.parent().unwrap());
        let mut cur = root.file_name().unwrap().to_os_string();
        for level in 0..depth {
            let next = format!("level{}", level % 2);
            rustix::fs::renameat(&base, Path::new(&cur).join("d"), &base, next.as_str()).unwrap();
            unlinkat(&base, cur.as_os_str(), AtFlags::REMOVEDIR).unwrap();
            cur = next.into();
        }
        unlinkat(&base, Path::new(&cur).join("leaf"), AtFlags::empty()).unwrap();
        unlinkat(&base, cur.as_os_str(), AtFlags::REMOVEDIR).unwrap();
    };
    check_and_remove(&out);
    check_and_remove(&top);
    ok(&["rm", s(&img), "-r", "/chain"]);
    assert!(ok(&["fsck", s(&img)]).contains("clean"));
}

#[test]
fn fsck_clean_and_json() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    ok(&["mkdir", s(&img), "-p", "/a/b/c"]);
    let out = ok(&["fsck", s(&img)]);
    assert!(out.contains("4 inodes (4 directories"), "{out}");
    assert!(out.contains("clean"), "{out}");
    let j: serde_json::Value = serde_json::from_str(&ok(&["fsck", s(&img), "--json"])).unwrap();
    assert_eq!(j["clean"], true);
    assert_eq!(j["report"]["inodes_used"], 4);
    assert_eq!(j["report"]["directories"], 4);
    assert_eq!(j["report"]["inodes_total"], 1024);
    let r = &j["report"];
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} missing from {r}"));
    assert_eq!(n("inodes_used") + n("inodes_free"), n("inodes_total"), "{r}");
    assert_eq!(n("blocks_used") + n("blocks_free"), n("blocks_total"), "{r}");
    assert!(j["report"]["findings"].as_array().unwrap().is_empty());
}

/// fsck found damage but could not mend it (and rejected e2fsck's -n/-f/-y/-p). `--repair`
/// (-p, -y) mends a wrong link count and exits 1, then the image checks clean (0); -n changes
/// nothing and exits 4 while damage is left; -n with --repair is a usage error (16).
#[test]
fn fsck_repair_mends_and_n_only_reports() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    ok(&["mkdir", s(&img), "-p", "/a"]);
    let fs = udax::Fs::open_image(&img).unwrap();
    let a = fs.resolve("/a", false).unwrap();
    let at = fs.geometry().inode_at(a) + 4;
    fs.unmount().unwrap();
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[at as usize..at as usize + 4].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&img, &bytes).unwrap();

    let (code, out) = fails(&["fsck", "-n", "-f", s(&img)]);
    assert_eq!(code, 4, "{out}");
    assert_eq!(std::fs::read(&img).unwrap(), bytes, "-n writes nothing");
    let (code, err) = fails(&["fsck", "-n", "--repair", s(&img)]);
    assert!(err.contains("cannot be used with"), "{err}");
    assert_eq!(code, 16, "{err}");

    let out = udax(&["fsck", "-y", s(&img)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("repaired link count: ino 2: nlink 7 set to 2"), "{said}");
    assert!(said.contains("1 repair(s) made"), "{said}");
    assert!(said.trim_end().ends_with("clean"), "{said}");
    let j: serde_json::Value = serde_json::from_str(&ok(&["fsck", "--repair", "--json", s(&img)])).unwrap();
    assert_eq!(j["clean"], true, "nothing left to repair: exit 0");
    assert!(j.get("repairs").is_none(), "{j}");
    assert!(ok(&["fsck", s(&img)]).contains("clean"));
}

/// Garbage over one inode slot made every command fail: fsck said "corrupt image: bad inode
/// mode at byte …" and exited 8 with no findings, and ls, get and cat of the undamaged files
/// failed the same way. Now fsck -n lists the damage (4) without writing, -y and -p mend it (1,
/// then a second fsck says 0), -n with -y is a usage error (16, as e2fsck), and ls, get and cat
/// work around the damaged inode.
#[test]
fn a_damaged_inode_is_listed_worked_around_and_mended() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let host = d.path().join("keep");
    let keep: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&host, &keep).unwrap();
    ok(&["put", s(&img), s(&host), "/keep"]);
    ok(&["put", s(&img), s(&host), "/bad"]);
    let fs = udax::Fs::open_image(&img).unwrap();
    let bad = fs.resolve("/bad", false).unwrap();
    let at = fs.geometry().inode_at(bad) as usize;
    fs.unmount().unwrap();
    let mut bytes = std::fs::read(&img).unwrap();
    for (i, b) in bytes[at..at + 256].iter_mut().enumerate() {
        *b = 0xa5 ^ (i as u8).wrapping_mul(13);
    }
    std::fs::write(&img, &bytes).unwrap();

    let out = udax(&["fsck", "-n", "-f", s(&img)]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{said}{}", text(&out.stderr));
    assert!(said.contains(&format!("damaged inode: ino {bad} at {at:#x}: corrupt image: bad inode mode")), "{said}");
    assert!(said.contains("dangling entry: ino 1"), "{said}");
    assert!(said.contains("2 problem(s) found"), "{said}");
    assert_eq!(std::fs::read(&img).unwrap(), bytes, "-n writes nothing");
    let (code, err) = fails(&["fsck", "-n", "-y", s(&img)]);
    assert_eq!(code, 16, "{err}");
    assert_eq!(std::fs::read(&img).unwrap(), bytes);

    let out = udax(&["ls", s(&img), "/"]);
    assert_eq!(text(&out.stdout), "keep\n");
    assert!(text(&out.stderr).contains("/bad"), "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(1));
    let got = d.path().join("got");
    ok(&["get", s(&img), "/keep", s(&got)]);
    assert_eq!(std::fs::read(&got).unwrap(), keep);
    assert_eq!(udax(&["cat", s(&img), "/keep"]).stdout, keep);
    let (_, err) = fails(&["cat", s(&img), "/bad"]);
    assert!(err.contains("bad inode mode"), "{err}");

    for flag in ["-y", "-p"] {
        let copy = d.path().join(format!("img{flag}"));
        std::fs::write(&copy, &bytes).unwrap();
        let out = udax(&["fsck", flag, s(&copy)]);
        let said = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{said}{}", text(&out.stderr));
        assert!(said.contains(&format!("repaired damaged inode: ino {bad}: cleared")), "{said}");
        assert!(said.trim_end().ends_with("clean"), "{said}");
        assert!(ok(&["fsck", s(&copy)]).contains("clean"));
        assert_eq!(udax(&["cat", s(&copy), "/keep"]).stdout, keep);
    }
}

#[test]
fn io_pwrite_then_pread() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let out = ok(&["io", "-f", s(&img), "/f", "-c", "pwrite -S 0x41 0 4k", "-c", "pread -v 4064 0x40", "-c", "stat"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "wrote 4096/4096 bytes at offset 0");
    assert!(lines[1].starts_with("4 KiB, 1 ops; "), "{out}");
    assert_eq!(lines[2], "00000fe0:  41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA");
    assert_eq!(lines[3], "00000ff0:  41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA");
    assert_eq!(lines[4], "read 32/64 bytes at offset 4064");
    assert!(out.contains("fd.path = \"/f\"\n"), "{out}");
    assert!(out.contains("stat.type = regular file\nstat.size = 4096\nstat.blocks = 8\n"), "{out}");

    // Default fill byte, truncate, reading a hole.
    let out =
        ok(&["io", s(&img), "/f", "-c", "pwrite 8k 16", "-c", "pread -v 8k 16", "-c", "truncate 1M", "-c", "stat"]);
    assert!(out.contains("00002000:  cd cd cd cd cd cd cd cd cd cd cd cd cd cd cd cd  ................\n"), "{out}");
    assert!(out.contains("stat.size = 1048576"), "{out}");
    let out = ok(&["io", s(&img), "/f", "-c", "pread -v 0x10000 16", "-c", "fsync"]);
    assert!(out.starts_with("00010000:  00 00 00"), "{out}");

    // Without -f a missing file is an error; an unknown verb or bad argument runs nothing.
    let (_, err) = fails(&["io", s(&img), "/nope", "-c", "stat"]);
    assert!(err.contains("/nope: No such file or directory"), "{err}");
    let (_, err) = fails(&["io", s(&img), "/f", "-c", "truncate 0", "-c", "frob 1 2"]);
    assert!(err.contains("\"frob\""), "{err}");
    let (_, err) = fails(&["io", s(&img), "/f", "-c", "pwrite -S 300 0 1"]);
    assert!(err.contains("pwrite"), "{err}");
    let (_, err) = fails(&["io", s(&img), "/f", "-c", "pread 0"]);
    assert!(err.contains("usage: pread"), "{err}");
    assert!(ok(&["io", s(&img), "/f", "-c", "stat"]).contains("stat.size = 1048576"));

    // A file-system error prints like xfs_io and the next command still runs.
    let out = udax(&["io", s(&img), "/f", "-c", "pwrite 0 64M", "-c", "stat"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("pwrite: No space left on device"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("stat.ino"), "{}", text(&out.stdout));
    assert!(ok(&["io", s(&img), "/f", "-c", "help"]).contains("pwrite"));
}

/// The value of `name: value` in `udax io`'s `stats` output.
#[track_caller]
fn counter(out: &str, name: &str) -> u64 {
    let prefix = format!("{name}: ");
    let line = out.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {name} in {out}"));
    line[prefix.len()..].parse().unwrap()
}

#[test]
fn io_mmap_verbs() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let out = ok(&[
        "io",
        "-f",
        s(&img),
        "/f",
        "-c",
        "truncate 16384",
        "-c",
        "mmap -w 0 16384",
        "-c",
        "mread 0 4096",
        "-c",
        "mwrite -S 0x61 4096 10",
        "-c",
        "mread -v 4096 16",
        "-c",
        "msync",
        "-c",
        "stats",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "read 4096/4096 bytes at offset 0");
    assert_eq!(lines[2], "wrote 10/10 bytes at offset 4096");
    assert_eq!(lines[4], "00001000:  61 61 61 61 61 61 61 61 61 61 00 00 00 00 00 00  aaaaaaaaaa......");
    assert_eq!(lines[5], "read 16/16 bytes at offset 4096");
    // The load from the hole got the zero page; the store into the next hole page allocated it.
    assert!(counter(&out, "faults_zero_page") >= 1, "{out}");
    assert_eq!(counter(&out, "faults_first_store"), 1, "{out}");
    assert_eq!(counter(&out, "faults_sigbus"), 0, "{out}");
    let names: Vec<&str> = lines[7..].iter().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "faults_zero_page",
            "faults_first_store",
            "faults_huge",
            "faults_clustered",
            "faults_sigbus",
            "faults_mapped",
            "faults_copied",
            "pages_mapped_eagerly",
            "pages_invalidated",
            "user_mode_only"
        ]
    );
    let mut want = vec![0u8; 16384];
    want[4096..4106].fill(b'a');
    let got = udax(&["cat", s(&img), "/f"]);
    assert!(got.status.success());
    assert!(got.stdout == want, "cat /f differs from the stores through the mapping");

    // A private mapping: the stores stay in memory, the file keeps its bytes.
    let out = ok(&[
        "io",
        s(&img),
        "/f",
        "-c",
        "mmap -p 0 16k",
        "-c",
        "mwrite -S 0x62 4096 4",
        "-c",
        "mread -v 4096 16",
        "-c",
        "msync",
        "-c",
        "munmap",
        "-c",
        "pread -v 4096 16",
    ]);
    assert!(out.contains("00001000:  62 62 62 62 61 61 61 61 61 61 00 00 00 00 00 00  bbbbaaaaaa......\n"), "{out}");
    assert!(out.contains("00001000:  61 61 61 61 61 61 61 61 61 61 00 00 00 00 00 00  aaaaaaaaaa......\n"), "{out}");
    assert_eq!(udax(&["cat", s(&img), "/f"]).stdout, want);

    // The page holding EOF reads zeros past EOF; the next page kills the process with SIGBUS.
    ok(&["io", "-f", s(&img), "/g", "-c", "pwrite 0 100"]);
    let out = ok(&["io", s(&img), "/g", "-c", "mmap -r 0 8192", "-c", "mread -v 96 8"]);
    assert!(out.starts_with("00000060:  cd cd cd cd 00 00 00 00  ........\n"), "{out}");
    let out = udax(&["io", s(&img), "/g", "-c", "mmap -r 0 8192", "-c", "mread 4096 1", "-c", "stat"]);
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{:?}: {}", out.status, text(&out.stderr));
    }
    assert!(!text(&out.stdout).contains("stat.ino"), "{}", text(&out.stdout));
    assert!(ok(&["fsck", s(&img)]).contains("clean"));

    // Errors: no mapping, outside the mapping, a writable shared mapping of a read-only open,
    // a misaligned offset, a store through a read-only mapping.
    let (code, err) = fails(&["io", s(&img), "/f", "-c", "mread 0 16"]);
    assert_eq!(code, 1);
    assert!(err.contains("mread: no mapping; use mmap first"), "{err}");
    let out = udax(&["io", s(&img), "/f", "-c", "mmap 4k 4k", "-c", "mread 0 1", "-c", "munmap", "-c", "msync"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("mread: range 0:1 is outside the mapping 4096:4096: Invalid argument\n"), "{err}");
    assert!(err.contains("msync: no mapping; use mmap first\n"), "{err}");
    let out = udax(&[
        "io",
        "-r",
        s(&img),
        "/f",
        "-c",
        "mmap -w 0 4k",
        "-c",
        "mmap 1 4k",
        "-c",
        "mmap 0 4k",
        "-c",
        "mwrite 0 1",
    ]);
    assert!(!out.status.success());
    assert_eq!(text(&out.stderr), "mmap: Permission denied\nmmap: Invalid argument\nmwrite: Permission denied\n");
    let (_, err) = fails(&["io", s(&img), "/f", "-c", "mwrite -S 0x100 0 1"]);
    assert!(err.contains("usage: mwrite"), "{err}");
    let help = ok(&["io", s(&img), "/f", "-c", "help"]);
    for verb in ["mmap", "mread", "mwrite", "msync", "munmap", "stats"] {
        assert!(help.contains(&format!("\n{verb} ")), "{verb} missing from {help}");
    }
    assert!(ok(&["io", "--help"]).contains("-c \"mmap 0 16k\""));
    assert_eq!(udax(&["cat", s(&img), "/f"]).stdout, want);
    assert!(ok(&["fsck", s(&img)]).contains("clean"));
}

/// `udax extents IMG PATH --json` as (logical, length, state) triples, checking each object has
/// exactly the keys logical, physical, length and state and a block-aligned physical offset.
#[track_caller]
fn extent_list(img: &Path, path: &str, bs: u64) -> Vec<(u64, u64, String)> {
    let j: serde_json::Value = serde_json::from_str(&ok(&["extents", s(img), path, "--json"])).unwrap();
    assert_eq!(j["path"], path, "{j}");
    assert!(j["size"].is_u64(), "{j}");
    j["extents"]
        .as_array()
        .unwrap_or_else(|| panic!("no list of extents: {j}"))
        .iter()
        .map(|e| {
            let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["length", "logical", "physical", "state"], "{e}");
            assert_eq!(e["physical"].as_u64().unwrap() % bs, 0, "{e}");
            (e["logical"].as_u64().unwrap(), e["length"].as_u64().unwrap(), e["state"].as_str().unwrap().to_string())
        })
        .collect()
}

fn ext(logical: u64, length: u64, state: &str) -> (u64, u64, String) {
    (logical, length, state.to_string())
}

const K: u64 = 1024;

/// fallocate, punch, zero range, SEEK_DATA/SEEK_HOLE and the extent map through the CLI, on
/// 4 KiB and 1 KiB block images.
#[test]
fn io_fallocate_seek_and_extents() {
    for bs in [4096u64, 1024] {
        let d = tmp();
        let img = d.path().join("img");
        ok(&["mkfs", s(&img), "--size", "16M", "--block-size", &bs.to_string()]);

        // Preallocate 1 MiB, write 4 KiB in the middle: unwritten, written, unwritten.
        let out = ok(&["io", "-f", s(&img), "/f", "-c", "falloc 0 1m", "-c", "pwrite 512k 4k"]);
        assert!(out.starts_with("wrote 4096/4096 bytes at offset 524288\n"), "{out}");
        assert_eq!(
            extent_list(&img, "/f", bs),
            [ext(0, 512 * K, "unwritten"), ext(512 * K, 4 * K, "written"), ext(516 * K, 508 * K, "unwritten")]
        );
        let out = ok(&["io", s(&img), "/f", "-c", "pread -v 4k 16", "-c", "pread -v 512k 16", "-c", "stat"]);
        assert!(
            out.contains("00001000:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................\n"),
            "{out}"
        );
        assert!(out.contains("00080000:  cd cd cd cd"), "{out}");
        assert!(out.contains("stat.size = 1048576\n"), "{out}");
        let table = ok(&["extents", s(&img), "/f"]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert_eq!(lines[0], "/f:");
        assert!(lines[1].starts_with(" EXT: FILE-OFFSET"), "{table}");
        assert!(lines[2].starts_with("   0: [0..1023]:") && lines[2].ends_with(" 1024 524288 unwritten"), "{table}");
        assert!(lines[3].starts_with("   1: [1024..1031]:") && lines[3].ends_with(" 8   4096 written"), "{table}");
        assert!(lines[4].starts_with("   2: [1032..2047]:") && lines[4].ends_with(" unwritten"), "{table}");
        // io bmap -v is the same table; plain bmap is xfs_bmap's short form.
        assert_eq!(ok(&["io", s(&img), "/f", "-c", "bmap -v"]), table);
        let short = ok(&["io", s(&img), "/f", "-c", "bmap"]);
        assert!(short.starts_with("/f:\n\t0: [0..1023]: "), "{short}");
        assert_eq!(short.lines().count(), 4, "{short}");
        // Unwritten extents are holes to SEEK_DATA/SEEK_HOLE.
        assert_eq!(
            ok(&["io", s(&img), "/f", "-c", "seek -a -r 0"]),
            "Whence\tResult\nHOLE\t0\nDATA\t524288\nHOLE\t528384\n"
        );

        // -k keeps the size: the blocks are allocated past EOF, and there is no data.
        let out = ok(&["io", "-f", s(&img), "/k", "-c", "falloc -k 0 64k", "-c", "stat", "-c", "seek -d 0"]);
        assert!(out.contains("stat.size = 0\n"), "{out}");
        assert!(out.contains("stat.blocks = 128\n"), "{out}");
        assert!(out.ends_with("Whence\tResult\nDATA\tEOF\n"), "{out}");
        assert_eq!(extent_list(&img, "/k", bs), [ext(0, 64 * K, "unwritten")]);
        assert!(ok(&["stat", s(&img), "/k"]).contains("Size: 0 "));

        // Punching a hole frees the blocks; SEEK_HOLE finds it and the map shows the gap.
        let out = ok(&[
            "io",
            "-f",
            s(&img),
            "/p",
            "-c",
            "pwrite -q -S 0x61 0 16k",
            "-c",
            "fpunch 4k 4k",
            "-c",
            "seek -h 0",
            "-c",
            "seek -d 4k",
            "-c",
            "pread -v 4k 16",
            "-c",
            "pread -v 8k 16",
            "-c",
            "stat",
        ]);
        assert!(out.contains("Whence\tResult\nHOLE\t4096\nWhence\tResult\nDATA\t8192\n"), "{out}");
        assert!(
            out.contains("00001000:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................\n"),
            "{out}"
        );
        assert!(
            out.contains("00002000:  61 61 61 61 61 61 61 61 61 61 61 61 61 61 61 61  aaaaaaaaaaaaaaaa\n"),
            "{out}"
        );
        assert!(out.contains("stat.size = 16384\nstat.blocks = 24\n"), "{out}");
        let exts = extent_list(&img, "/p", bs);
        assert_eq!(exts.first(), Some(&ext(0, 4 * K, "written")), "{exts:?}");
        assert!(exts.iter().all(|e| e.0 >= 8 * K || e.0 + e.1 <= 4 * K), "{exts:?}");
        assert_eq!(exts.iter().map(|e| e.1).sum::<u64>(), 12 * K, "{exts:?}");
        let table = ok(&["extents", s(&img), "/p"]);
        assert!(table.lines().any(|l| l.starts_with("   1: [8..15]:") && l.contains(" hole ")), "{table}");
        // A punch inside one block only zeroes bytes.
        let out = ok(&["io", s(&img), "/p", "-c", "fpunch 9000 100", "-c", "pread -v 8992 16"]);
        assert!(
            out.starts_with("00002320:  61 61 61 61 61 61 61 61 00 00 00 00 00 00 00 00  aaaaaaaa........\n"),
            "{out}"
        );

        // Zero range: partial blocks zeroed in place, whole blocks turned unwritten; the size
        // grows unless -k.
        let out = ok(&[
            "io",
            s(&img),
            "/p",
            "-c",
            "fzero 1000 100",
            "-c",
            "fzero 12k 4k",
            "-c",
            "pread -v 992 16",
            "-c",
            "pread -v 12k 16",
            "-c",
            "fzero -k 64k 4k",
            "-c",
            "stat",
            "-c",
            "fzero 16k 100",
            "-c",
            "stat",
        ]);
        assert!(
            out.contains("000003e0:  61 61 61 61 61 61 61 61 00 00 00 00 00 00 00 00  aaaaaaaa........\n"),
            "{out}"
        );
        assert!(
            out.contains("00003000:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................\n"),
            "{out}"
        );
        assert!(out.contains("stat.size = 16384\n"), "{out}");
        assert!(out.contains("stat.size = 16484\n"), "{out}");
        let exts = extent_list(&img, "/p", bs);
        assert!(exts.contains(&ext(12 * K, 4 * K, "unwritten")), "{exts:?}");
        assert!(exts.contains(&ext(64 * K, 4 * K, "unwritten")), "{exts:?}");
        assert_eq!(
            ok(&["io", s(&img), "/p", "-c", "seek -a -r 0"]),
            "Whence\tResult\nDATA\t0\nHOLE\t4096\nDATA\t8192\nHOLE\t12288\n"
        );

        // SEEK_DATA / SEEK_HOLE on a sparse file; past EOF, or with no data after, is EOF.
        let out = ok(&[
            "io",
            "-f",
            s(&img),
            "/s",
            "-c",
            "truncate 1m",
            "-c",
            "pwrite -q 256k 4k",
            "-c",
            "seek -d 0",
            "-c",
            "seek -h 256k",
            "-c",
            "seek -d 300k",
            "-c",
            "seek -h 1m",
            "-c",
            "seek -a 2m",
            "-c",
            "seek -s -a -r 0",
        ]);
        assert_eq!(
            out,
            "Whence\tResult\nDATA\t262144\n\
             Whence\tResult\nHOLE\t266240\n\
             Whence\tResult\nDATA\tEOF\n\
             Whence\tResult\nHOLE\tEOF\n\
             Whence\tResult\nDATA\tEOF\n\
             Whence\tStart\tResult\nHOLE\t0\t0\nDATA\t0\t262144\nHOLE\t262144\t266240\n"
        );
        let table = ok(&["extents", s(&img), "/s"]);
        assert!(table.contains("   0: [0..511]:"), "{table}");
        assert!(table.lines().last().unwrap().starts_with("   2: [520..2047]:"), "{table}");
        assert!(ok(&["fsck", s(&img)]).contains("clean"));
    }
}

/// Errors of the new commands, worded like xfs_io's and the other subcommands'.
#[test]
fn fallocate_and_extents_errors() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    ok(&["mkdir", s(&img), "/dir"]);
    let (code, err) = fails(&["extents", s(&img), "/dir"]);
    assert_eq!(code, 1);
    assert!(err.contains("udax extents: /dir: Is a directory"), "{err}");
    let (_, err) = fails(&["extents", s(&img), "/missing", "--json"]);
    assert!(err.contains("udax extents: /missing: No such file or directory"), "{err}");
    ok(&["io", "-f", s(&img), "/e", "-c", "stat"]);
    assert_eq!(ok(&["extents", s(&img), "/e"]), "/e: no extents\n");
    let j: serde_json::Value = serde_json::from_str(&ok(&["extents", s(&img), "/e", "--json"])).unwrap();
    assert_eq!(j, serde_json::json!({ "path": "/e", "size": 0, "extents": [] }));

    // No space: nothing allocated (all or nothing), and the next command still runs.
    let out = udax(&["io", s(&img), "/e", "-c", "falloc 0 64m", "-c", "falloc 0 0", "-c", "stat"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("falloc: No space left on device\n"), "{err}");
    assert!(err.contains("falloc: Invalid argument\n"), "{err}");
    assert!(text(&out.stdout).contains("stat.size = 0\nstat.blocks = 0\n"), "{}", text(&out.stdout));
    // Read-only: EBADF, as fallocate(2) on an O_RDONLY descriptor.
    let out = udax(&["io", "-r", s(&img), "/e", "-c", "fzero 0 4k", "-c", "fpunch 0 4k"]);
    assert!(!out.status.success());
    assert_eq!(text(&out.stderr), "fzero: Bad file descriptor\nfpunch: Bad file descriptor\n");
    // Bad arguments run nothing.
    let (_, err) = fails(&["io", s(&img), "/e", "-c", "falloc 0 4k", "-c", "fpunch -k 0 4k"]);
    assert!(err.contains("invalid option -k") && err.contains("usage: fpunch off len"), "{err}");
    let (_, err) = fails(&["io", s(&img), "/e", "-c", "seek 0"]);
    assert!(err.contains("usage: seek -a | -d | -h"), "{err}");
    assert!(ok(&["extents", s(&img), "/e"]).contains("no extents"));
    let help = ok(&["io", s(&img), "/e", "-c", "help"]);
    for verb in ["falloc", "fpunch", "fzero", "seek", "bmap"] {
        assert!(help.contains(&format!("\n{verb} ")), "{verb} missing from {help}");
    }
    assert!(ok(&["fsck", s(&img)]).contains("clean"));
}

#[test]
fn stat_json_and_text() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    ok(&["io", "-f", s(&img), "/f", "-c", "pwrite 0 5000"]);
    ok(&["ln", s(&img), "-s", "f", "/l"]);
    let j: serde_json::Value = serde_json::from_str(&ok(&["stat", s(&img), "/f", "--json"])).unwrap();
    for k in ["ino", "mode", "nlink", "uid", "gid", "size", "allocated_bytes", "atime", "mtime", "ctime", "type"] {
        assert!(j.get(k).is_some(), "{k} missing from {j}");
    }
    for t in ["atime", "mtime", "ctime", "crtime"] {
        let (text, ns) = (j[t].as_str().unwrap(), j[format!("{t}_ns")].as_i64().unwrap());
        assert!(text.ends_with('Z') && text.len() == "2025-11-29T15:14:03.123456789Z".len(), "{t}: {j}");
        assert!(text.ends_with(&format!(".{:09}Z", ns.rem_euclid(1_000_000_000))), "{t}: {j}");
    }
    assert_eq!(j["size"], 5000);
    assert_eq!(j["allocated_bytes"], 16 * 512);
    assert_eq!(j["type"], "regular");
    assert_eq!(j["mode"], "0644");

    let l: serde_json::Value = serde_json::from_str(&ok(&["stat", s(&img), "/l", "--json"])).unwrap();
    assert_eq!(l["type"], "symlink");
    assert_eq!(l["target"], "f");
    let l: serde_json::Value = serde_json::from_str(&ok(&["stat", s(&img), "/l", "--json", "-L"])).unwrap();
    assert_eq!(l["type"], "regular");
    assert_eq!(l["ino"], j["ino"]);

    let t = ok(&["stat", s(&img), "/f"]);
    assert!(t.contains("  File: /f\n"), "{t}");
    assert!(t.contains("Size: 5000"), "{t}");
    assert!(t.contains("Blocks: 16"), "{t}");
    assert!(t.contains("IO Block: 4096"), "{t}");
    assert!(t.contains("regular file"), "{t}");
    assert!(t.contains("Access: (0644/-rw-r--r--)"), "{t}");
    assert!(t.contains("Modify: ") && t.contains(" Birth: "), "{t}");
    let t = ok(&["stat", s(&img), "/l"]);
    assert!(t.contains("  File: /l -> f\n") && t.contains("symbolic link"), "{t}");
}

#[test]
fn namespace_commands() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    ok(&["mkdir", s(&img), "-p", "/a/b/c", "-m", "700"]);
    ok(&["mkdir", s(&img), "-p", "/a/b"]); // exists: fine with -p
    let (_, err) = fails(&["mkdir", s(&img), "/a"]);
    assert!(err.contains("udax mkdir: /a: File exists"), "{err}");
    let (_, err) = fails(&["mkdir", s(&img), "/no/such"]);
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(ok(&["ls", s(&img), "/a", "-l"]).starts_with("drwx------ 3 "));

    ok(&["io", "-f", s(&img), "/a/f", "-c", "pwrite 0 10"]);
    // mv into an existing directory, then rename.
    ok(&["mv", s(&img), "/a/f", "/a/b"]);
    assert_eq!(ok(&["ls", s(&img), "/a/b"]), "c\nf\n");
    ok(&["mv", s(&img), "/a/b/f", "/g"]);
    assert_eq!(ok(&["ls", s(&img)]), "a\ng\n");
    let (_, err) = fails(&["mv", s(&img), "/a", "/a/b/c"]);
    assert!(err.contains("udax mv:"), "{err}");

    // Links.
    ok(&["ln", s(&img), "-s", "../g", "/a/sym"]);
    ok(&["ln", s(&img), "/g", "/a"]);
    let ls = ok(&["ls", s(&img), "/a", "-l"]);
    assert!(ls.contains("sym -> ../g"), "{ls}");
    assert!(ls.contains("-rw-r--r-- 2 "), "{ls}");
    assert_eq!(udax(&["cat", s(&img), "/a/sym"]).stdout, vec![0xcd; 10]);
    let (_, err) = fails(&["ln", s(&img), "/a", "/dirlink"]);
    assert!(err.contains("udax ln:"), "{err}");

    // rm: a directory needs -r; -f ignores missing paths.
    let (_, err) = fails(&["rm", s(&img), "/a"]);
    assert!(err.contains("udax rm: /a: Is a directory"), "{err}");
    let (_, err) = fails(&["rm", s(&img), "/missing", "/g"]);
    assert!(err.contains("/missing: No such file or directory"), "{err}");
    // ... and the other operand was still removed.
    assert_eq!(ok(&["ls", s(&img)]), "a\n");
    ok(&["rm", s(&img), "-f", "/missing"]);
    ok(&["rm", s(&img), "-r", "/a"]);
    assert_eq!(ok(&["ls", s(&img)]), "");
    assert!(ok(&["fsck", s(&img)]).contains("clean"));
}

/// `udax ls` took one path, always showed dot names, printed help for -h, had no -R, -d or -1,
/// and -l showed numbers where stat showed names.
#[test]
fn ls_follows_coreutils() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let h = d.path().join("h");
    std::fs::create_dir_all(h.join("a/b")).unwrap();
    std::fs::write(h.join("a/b/f"), b"hi").unwrap();
    std::fs::write(h.join(".hidden"), b"x").unwrap();
    std::fs::write(h.join("big"), vec![7u8; 1536 * 1024]).unwrap();
    ok(&["put", s(&img), s(&h), "/h"]);
    assert_eq!(ok(&["ls", s(&img), "/h"]), "a\nbig\n", "dot names hide without -a");
    assert_eq!(ok(&["ls", s(&img), "/h", "-a"]), ".\n..\n.hidden\na\nbig\n");
    assert_eq!(ok(&["ls", s(&img), "-1", "/h"]), "a\nbig\n");
    let long = ok(&["ls", s(&img), "-lh", "/h"]);
    // Owner and group by name, as the host names the user running the test.
    let id = |flag| text(&Command::new("id").arg(flag).output().unwrap().stdout).trim().to_string();
    let owner = format!(" {} {} 1.5M ", id("-un"), id("-gn"));
    assert!(long.contains(&owner) && long.ends_with(" big\n"), "{long}");
    assert_eq!(ok(&["ls", s(&img), "-R", "/h"]), "/h:\na\nbig\n\n/h/a:\nb\n\n/h/a/b:\nf\n");
    assert_eq!(ok(&["ls", s(&img), "-d", "/h/a", "/h"]), "/h\n/h/a\n");
    // Several operands: files first, then each directory under its name.
    assert_eq!(ok(&["ls", s(&img), "/h/a", "/h/big"]), "/h/big\n\n/h/a:\nb\n");
    // A missing operand is reported; the others are still listed, and the status says it.
    let out = udax(&["ls", s(&img), "/nope", "/h/a/b"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "/h/a/b:\nf\n");
    assert!(text(&out.stderr).contains("/nope: No such file or directory"));
    assert!(ok(&["ls", "--help"]).contains("-h, --human-readable"));
}

/// Swapped arguments blamed "/", `rm -r /` spoke of the root's parent, and `--size 1.5G` must
/// keep working.
#[test]
fn mistakes_get_errors_that_say_what_to_do() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let (code, err) = fails(&["ls", "/", s(&img)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the image comes first: udax ls IMAGE PATH"), "{err}");
    ok(&["mkdir", s(&img), "/a"]);
    let (_, err) = fails(&["rm", s(&img), "-r", "/"]);
    assert!(err.contains("refusing to remove the root directory"), "{err}");
    assert_eq!(ok(&["ls", s(&img)]), "a\n", "nothing removed");
    let out = ok(&["mkfs", s(&d.path().join("dec")), "--size", "1.5M"]);
    assert!(out.contains("(1572864 bytes)"), "{out}");
    let (_, err) = fails(&["umount", s(d.path())]);
    assert!(err.contains("not mounted"), "{err}");
}

/// touch, chmod, chown, df, du and `--version` on every command did not exist.
#[test]
fn touch_chmod_chown_df_du() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    ok(&["touch", s(&img), "/t", "/u"]);
    ok(&["touch", s(&img), "-c", "/never"]);
    assert_eq!(ok(&["ls", s(&img)]), "t\nu\n");
    ok(&["chmod", s(&img), "4711", "/t"]);
    ok(&["chown", s(&img), "1234:5678", "/t"]);
    let st = ok(&["stat", s(&img), "/t", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!((j["uid"].as_u64(), j["gid"].as_u64()), (Some(1234), Some(5678)), "{st}");
    // chown(2) of a file drops set-user-ID, as Linux does.
    assert_eq!(j["mode"], "0711", "{st}");
    let (_, err) = fails(&["chown", s(&img), "no-such-user-here", "/t"]);
    assert!(err.contains("invalid user"), "{err}");
    let (_, err) = fails(&["chmod", s(&img), "999", "/t"]);
    assert!(err.contains("invalid mode"), "{err}");
    // 100 KiB in /d/f, 8 KiB linked twice (counted once).
    ok(&["mkdir", s(&img), "/d"]);
    ok(&["io", "-f", s(&img), "/d/f", "-c", "pwrite 0 100k", "-c", "fsync"]);
    ok(&["io", "-f", s(&img), "/d/g", "-c", "pwrite 0 8k"]);
    ok(&["ln", s(&img), "/d/g", "/d/g2"]);
    let du = ok(&["du", s(&img), "-s", "/d"]);
    assert_eq!(du, "112\t/d\n", "100 + 8 KiB of data and the directory's 4 KiB block: {du}");
    let du = ok(&["du", s(&img), "-a", "/d"]);
    assert!(du.contains("100\t/d/f\n") && du.ends_with("112\t/d\n"), "{du}");
    let df = ok(&["df", s(&img)]);
    let row: Vec<&str> = df.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], s(&img));
    let (total, used, free): (u64, u64, u64) =
        (row[1].parse().unwrap(), row[2].parse().unwrap(), row[3].parse().unwrap());
    assert_eq!(total, used + free, "{df}");
    assert!(used >= 112, "{df}");
    assert!(ok(&["df", "-i", s(&img)]).lines().nth(1).unwrap().contains(" 1024 "));
    assert!(ok(&["df", "--version"]).contains("0.1"));
}

/// `udax io` without -c read all of stdin before running anything, and one bad line dropped
/// every other: now each line runs as it is read, as xfs_io's do.
#[test]
fn io_runs_each_line_of_stdin_as_it_comes() {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let mut io = Command::new(env!("CARGO_BIN_EXE_udax"))
        .args(["io", s(&img), "/f", "-f"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = io.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(io.stdout.take().unwrap());
    stdin.write_all(b"pwrite 0 4k\n").unwrap();
    stdin.flush().unwrap();
    // Its answer comes while stdin is still open.
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "wrote 4096/4096 bytes at offset 0\n");
    stdin.write_all(b"frob 1 2\nstat\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let done = io.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(1), "a bad line fails the run");
    assert!(text(&done.stderr).contains("\"frob\""), "{}", text(&done.stderr));
    assert!(rest.contains("stat.size = 4096"), "the line after the bad one ran: {rest}");
}

#[test]
fn long_names_are_refused() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let name = format!("/{}", "n".repeat(256));
    let (code, err) = fails(&["mkdir", s(&img), &name]);
    assert_eq!(code, 1);
    assert!(err.contains("File name too long"), "{err}");
    let (_, err) = fails(&["mkdir", s(&img), "-p", &name]);
    assert!(err.contains("File name too long"), "{err}");
    let ok255 = format!("/{}", "n".repeat(255));
    ok(&["mkdir", s(&img), &ok255]);
}

#[test]
fn non_udax_files_are_refused() {
    let d = tmp();
    let zeros = d.path().join("zeros");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let txt = d.path().join("notes.txt");
    std::fs::write(&txt, "just some text\n").unwrap();
    for f in [&zeros, &txt] {
        let (code, err) = fails(&["fsck", s(f)]);
        assert_eq!(code, 8, "{err}");
        assert!(err.starts_with(&format!("udax fsck: {}: ", f.display())), "{err}");
        assert!(err.contains("not a udax image"), "{err}");
        let (code, err) = fails(&["ls", s(f)]);
        assert_eq!(code, 1);
        assert!(err.contains("not a udax image"), "{err}");
        let (_, err) = fails(&["io", s(f), "/x", "-f", "-c", "pwrite 0 1"]);
        assert!(err.contains("not a udax image"), "{err}");
    }
    let out = udax(&["fsck", s(&zeros), "--json"]);
    assert_eq!(out.status.code(), Some(8));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["error"]["errno"], libc::EINVAL, "{j}");
    assert!(j["error"]["message"].as_str().unwrap().contains("not a udax image"), "{j}");
    let (code, err) = fails(&["fsck", s(&d.path().join("absent"))]);
    assert_eq!(code, 8);
    assert!(err.contains("No such file or directory"), "{err}");
    // The zeros were not touched.
    assert!(std::fs::read(&zeros).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn truncated_image_is_refused() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    File::options().write(true).open(&img).unwrap().set_len(8 << 10).unwrap();
    let (code, err) = fails(&["fsck", s(&img)]);
    assert_eq!(code, 8);
    assert!(err.contains("truncated"), "{err}");
    let (_, err) = fails(&["ls", s(&img)]);
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn flipped_superblock_bit_is_refused() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[40] ^= 0x10;
    std::fs::write(&img, &bytes).unwrap();
    let (code, err) = fails(&["fsck", s(&img)]);
    assert_eq!(code, 8);
    assert!(err.contains("superblock"), "{err}");
    let (_, err) = fails(&["info", s(&img)]);
    assert!(err.contains("superblock"), "{err}");
}

#[test]
fn image_in_use_is_refused() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let fs = udax::Fs::open_image(&img).unwrap();
    let (code, err) = fails(&["io", s(&img), "/f", "-f", "-c", "pwrite 0 4k"]);
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");
    let (code, err) = fails(&["fsck", s(&img)]);
    assert_eq!(code, 8);
    assert!(err.contains("in use"), "{err}");
    let (_, err) = fails(&["mkfs", s(&img), "--size", "16M", "--force"]);
    assert!(err.contains("in use"), "{err}");
    drop(fs);
    ok(&["io", s(&img), "/f", "-f", "-c", "pwrite 0 4k"]);
}

#[test]
fn demo_runs_and_cleans_up() {
    let d = tmp();
    let out = ok(&["demo", "--dir", s(d.path())]);
    for word in ["mkfs", "MAP_SYNC", "fence", "sparse", "mmap", "zero page", "SIGBUS", "rename", "clean"] {
        assert!(out.contains(word), "{word} missing from the demo:\n{out}");
    }
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "the demo left its image behind");
    let out = ok(&["demo", "--dir", s(d.path()), "--keep"]);
    let kept: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(kept.len(), 1);
    assert!(out.contains(&kept[0].display().to_string()), "{out}");
    assert!(ok(&["fsck", s(&kept[0])]).contains("clean"));
}

/// Four threads race mapped loads and stores with writes, truncates, punches and renames; every
/// check (no stale bytes, mappings coherent with read_at both ways, SIGBUS exactly past EOF,
/// private files equal to their model, fsck, no leaked block, remount) must pass.
#[test]
fn stress_is_clean() {
    for bs in ["4096", "1024"] {
        let secs = if common::long() { "5" } else { "2" };
        let out = udax(&["stress", "--threads", "4", "--seconds", secs, "--json", "--block-size", bs]);
        let stdout = text(&out.stdout);
        let j: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("bs {bs}: no JSON report ({e}, {}): {stdout}", out.status));
        let why = serde_json::json!({
            "seed": j["seed"], "failures_by_check": j["failures_by_check"], "failures": j["failures"],
            "killed_by_signal": j["killed_by_signal"], "last_doing": j["last_doing"],
        });
        let clean = out.status.success() && j["clean"] == true && j["failure_count"] == 0;
        assert!(clean, "bs {bs}: udax stress failed ({}): {why:#}\n{}", out.status, text(&out.stderr));
        for op in ["mapped_load", "mapped_store", "truncate_down", "truncate_up", "punch_hole", "rename"] {
            assert!(j["ops"][op].as_u64().unwrap_or(0) > 0, "bs {bs}: no {op} ops: {stdout}");
        }
        for check in ["mapping_vs_file", "file_to_mapping", "mapping_to_file", "sigbus_at_eof", "model", "fsck"] {
            assert!(j["checks"][check].as_u64().unwrap_or(0) > 0, "bs {bs}: no {check} checks: {stdout}");
        }
    }
    let (code, _) = fails(&["stress", "--block-size", "512"]);
    assert_eq!(code, 2);
}

#[test]
fn help_teaches() {
    let top = ok(&["--help"]);
    assert!(top.contains("udax demo"), "{top}");
    for cmd in [
        "mkfs", "fsck", "info", "ls", "put", "get", "cat", "stat", "mkdir", "rm", "mv", "ln", "extents", "io", "demo",
        "stress", "umount", "touch", "chmod", "chown", "df", "du",
    ] {
        let h = ok(&[cmd, "--help"]);
        assert!(h.contains("Example"), "udax {cmd} --help has no example:\n{h}");
    }
    let (code, _) = fails(&["mkfs"]);
    assert_eq!(code, 2);
    let (code, _) = fails(&["mkfs", "x", "--size", "12Q"]);
    assert_eq!(code, 2);
}

/// A real tree (/usr/share/doc: thousands of files, symlinks, nested directories) copied in with
/// `put` and out with `get` is identical — bytes, modes, mtimes, symlink targets — and the image
/// fscks clean; every command is its own process, so each step is also a remount.
#[test]
fn real_tree_round_trip() {
    let src = Path::new("/usr/share/doc");
    assert!(src.is_dir(), "this test copies /usr/share/doc, which every Debian machine has");
    let dir = tmp();
    let img = dir.path().join("img");
    ok(&["mkfs", s(&img), "--size", "1G"]);
    ok(&["put", s(&img), s(src), "/doc"]);
    let out = dir.path().join("out");
    ok(&["get", s(&img), "/doc", s(&out)]);
    same_tree(src, &out);
    assert!(ok(&["fsck", s(&img)]).contains("clean"));
    let again = dir.path().join("again");
    ok(&["get", s(&img), "/doc", s(&again)]);
    same_tree(src, &again);
}

/// `udax fsck /dev/null` said "No such file or directory" (it looked for a device-dax size in
/// sysfs) and a directory gave "Is a directory": every non-image is named as one.
#[test]
fn non_images_are_named_as_such() {
    let d = tmp();
    let fifo = d.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let dir = d.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let empty = d.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let tiny = d.path().join("tiny");
    std::fs::write(&tiny, [0u8; 100]).unwrap();
    let zeros = d.path().join("zeros");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let cases: [(&Path, &str); 6] = [
        (Path::new("/dev/null"), "character device that is not device-dax"),
        (&fifo, "neither a regular file nor a device-dax device"),
        (&dir, "is a directory"),
        (&empty, "empty"),
        (&tiny, "too small"),
        (&zeros, "no udax magic"),
    ];
    for (path, what) in cases {
        for cmd in ["fsck", "info", "ls"] {
            let (code, err) = fails(&[cmd, s(path)]);
            assert!(err.contains("not a udax image") && err.contains(what), "udax {cmd} {}: {err}", path.display());
            assert_eq!(code, if cmd == "fsck" { 8 } else { 1 }, "udax {cmd} {}: {err}", path.display());
        }
    }
}

/// Every open was O_RDWR and replayed the journal into the image, so commands that only read
/// needed write access to it. On a read-only bind mount they work now; a change says EROFS.
#[test]
fn read_commands_work_on_a_read_only_image() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let host = d.path().join("hello.txt");
    std::fs::write(&host, b"hello\n").unwrap();
    ok(&["put", s(&img), s(&host), "/hello.txt"]);
    let view = tempfile::tempdir().unwrap();
    let bound = Command::new("mount").args(["--bind", s(d.path()), s(view.path())]).output().unwrap();
    if !bound.status.success() {
        let why = format!("cannot bind-mount here: {}", text(&bound.stderr).trim());
        assert!(std::env::var_os("UDAX_REQUIRE_MOUNT").is_none(), "{why}, and UDAX_REQUIRE_MOUNT is set");
        eprintln!("skipping the read-only bind mount: {why}");
        return;
    }
    struct Unbind<'a>(&'a Path);
    impl Drop for Unbind<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unbind = Unbind(view.path());
    assert!(Command::new("mount").args(["-o", "remount,bind,ro", s(view.path())]).status().unwrap().success());
    let rimg = view.path().join("img");
    assert!(ok(&["ls", s(&rimg), "/"]).contains("hello.txt"));
    ok(&["info", s(&rimg)]);
    ok(&["stat", s(&rimg), "/hello.txt"]);
    ok(&["extents", s(&rimg), "/hello.txt"]);
    assert_eq!(ok(&["cat", s(&rimg), "/hello.txt"]), "hello\n");
    ok(&["fsck", s(&rimg)]);
    let out = d.path().join("out.txt");
    ok(&["get", s(&rimg), "/hello.txt", s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), b"hello\n");
    let (_, err) = fails(&["mkdir", s(&rimg), "/x"]);
    assert!(err.contains("Read-only file system"), "{err}");
}

/// A failed `mkfs --force` (`--size 100T` over an existing image) destroyed the old file system:
/// the file was resized before anything could fail. Now nothing of the old image changes until
/// the new one's space is reserved.
#[test]
fn a_failed_mkfs_force_leaves_the_old_image_whole() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    let host = d.path().join("keep.txt");
    std::fs::write(&host, b"keep me\n").unwrap();
    ok(&["put", s(&img), s(&host), "/keep.txt"]);
    let (code, err) = fails(&["mkfs", s(&img), "--force", "--size", "100T"]);
    assert_eq!(code, 1);
    assert!(err.contains("no room"), "{err}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    assert_eq!(ok(&["cat", s(&img), "/keep.txt"]), "keep me\n");
    // Sparse, 100 TiB takes no host space but cannot be mapped: said, and the old image stays.
    let (code, err) = fails(&["mkfs", s(&img), "--force", "--sparse", "--size", "100T"]);
    assert_eq!(code, 1);
    assert!(err.contains("would not map") && err.contains("untouched"), "{err}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    assert_eq!(ok(&["cat", s(&img), "/keep.txt"]), "keep me\n");
    ok(&["fsck", s(&img)]);
}

/// `udax crashtest` (built with the default `crash-test` feature) explores a workload clean,
/// reports a dropped fence as violations with exit status 4, and replays a saved violation.
#[test]
#[cfg(feature = "crash-test")]
fn crashtest_finds_nothing_until_a_fence_is_dropped() {
    let quick =
        ["crashtest", "--workload", "seq1", "--block-size", "1024", "--per-fence", "12", "--per-recovery-fence", "0"];
    let out = ok(&[&quick[..], &["--json"]].concat());
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["violation_count"], 0, "{out}");
    assert!(report["states"].as_u64().unwrap() > 100, "{out}");
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("saved");
    let (code, _) = fails(&[&quick[..], &["--sabotage", "record-fence", "--save", s(&save)]].concat());
    assert_eq!(code, 4, "violations exit with status 4");
    let image = std::fs::read_dir(&save)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "img"))
        .expect("a saved violating image");
    let (code, err) = fails(&["crashtest", "--replay", s(&image)]);
    assert_eq!(code, 4, "the replayed image violates again: {err}");
}

/// Runs udax with `input` on its stdin.
fn udax_with_stdin<S: AsRef<OsStr>>(args: &[S], input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_udax"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Fed from a thread: udax may stop reading (an error) while the pipe is full.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// `put IMG - PATH` reads stdin into PATH as `cat > PATH` would (made, or emptied and
/// rewritten in place); `get IMG PATH -` writes the file to stdout; directories are refused.
#[test]
fn put_and_get_through_stdin_and_stdout() {
    let d = tmp();
    let img = mkfs(d.path(), "16M");
    ok(&["mkdir", s(&img), "/dir"]);
    let data = noise(3 << 20, 5);
    let out = udax_with_stdin(&["put", s(&img), "-", "/dir/f"], &data);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(udax(&["get", s(&img), "/dir/f", "-"]).stdout, data);
    let ino = |p: &str| -> u64 {
        let j: serde_json::Value = serde_json::from_str(&ok(&["stat", s(&img), p, "--json"])).unwrap();
        j["ino"].as_u64().unwrap()
    };
    let first = ino("/dir/f");
    ok(&["chmod", s(&img), "600", "/dir/f"]);

    // Replaced by something shorter: the same file, its mode kept, nothing of the old bytes left.
    let out = udax_with_stdin(&["put", s(&img), "-", "/dir/f", "--json"], b"short\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((j["source"].as_str(), j["bytes"].as_u64()), (Some("-"), Some(6)), "{j}");
    assert_eq!(ok(&["cat", s(&img), "/dir/f"]), "short\n");
    assert_eq!(ino("/dir/f"), first);
    assert!(ok(&["ls", s(&img), "-l", "/dir/f"]).starts_with("-rw------- "));

    // Zeros in whole MiB stay a hole; through a symbolic link; empty stdin makes an empty file.
    let mut sparse = vec![0u8; 2 << 20];
    sparse.extend_from_slice(b"tail");
    ok(&["ln", s(&img), "-s", "/dir/f", "/link"]);
    assert!(udax_with_stdin(&["put", s(&img), "-", "/link"], &sparse).status.success());
    assert_eq!(udax(&["get", s(&img), "/link", "-"]).stdout, sparse);
    let j: serde_json::Value = serde_json::from_str(&ok(&["stat", s(&img), "/dir/f", "--json"])).unwrap();
    assert_eq!(j["allocated_bytes"], 4096, "{j}");
    assert!(udax_with_stdin(&["put", s(&img), "-", "/empty"], b"").status.success());
    assert!(ok(&["stat", s(&img), "/empty"]).contains("regular empty file"));

    // Directories: stdin has no name to copy under, and stdout takes one file.
    let out = udax_with_stdin(&["put", s(&img), "-", "/dir"], b"x");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("udax put: /dir: Is a directory"), "{}", text(&out.stderr));
    let (code, err) = fails(&["get", s(&img), "/dir", "-"]);
    assert_eq!(code, 1);
    assert!(err.contains("udax get: /dir: Is a directory"), "{err}");
    let (_, err) = fails(&["get", s(&img), "/missing", "-"]);
    assert!(err.contains("udax get: /missing: No such file or directory"), "{err}");
    let (_, err) = fails(&["get", s(&img), "/dir/f", "-", "--json"]);
    assert!(err.contains("--json cannot go with -"), "{err}");
    assert!(ok(&["fsck", s(&img)]).contains("clean"));
}

/// Every subcommand clap knows, from the top-level help.
fn subcommands() -> Vec<String> {
    let help = ok(&["--help"]);
    let list = help.split("Commands:\n").nth(1).unwrap();
    list.lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// `udax man` prints udax(8), which names every subcommand; `udax man DIR` writes it and a page
/// per subcommand; `udax completions SHELL` prints a script that knows the subcommands.
#[test]
fn man_pages_and_completions() {
    let subs = subcommands();
    assert!(subs.len() > 20 && subs.contains(&"man".to_string()), "{subs:?}");
    let top = ok(&["man"]);
    assert!(top.contains(".TH udax 8"), "{top}");
    for sub in &subs {
        assert!(top.contains(&format!("udax\\-{sub}(8)")), "udax-{sub}(8) missing from the top page");
    }
    let d = tmp();
    let dir = d.path().join("man8");
    assert_eq!(ok(&["man", s(&dir)]), "");
    let mut pages: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    pages.sort();
    let mut want: Vec<String> = subs.iter().map(|c| format!("udax-{c}.8")).chain(["udax.8".to_string()]).collect();
    want.sort();
    assert_eq!(pages, want);
    let mkfs = std::fs::read_to_string(dir.join("udax-mkfs.8")).unwrap();
    assert!(
        mkfs.contains(".TH udax-mkfs 8 ")
            && mkfs.contains("udax\\-mkfs \\- Create")
            && mkfs.contains("\\-\\-block\\-size"),
        "{mkfs}"
    );
    assert_eq!(std::fs::read_to_string(dir.join("udax.8")).unwrap(), top);

    let bash = ok(&["completions", "bash"]);
    for word in ["mkfs", "fsck", "extents", "completions", "--block-size"] {
        assert!(bash.contains(word), "{word} missing from the bash completions");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(ok(&["completions", shell]).contains("mkfs"), "{shell}");
    }
    let (code, err) = fails(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("possible values"), "{err}");
}
