//! `udax mount` end to end: the mount serves real programs (cp -a, tar, git), refuses bad input
//! with clear errors, unmounts cleanly on SIGTERM or umount with everything durable, and a
//! SIGKILLed server leaves an image that recovers with every returned write present.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn a_real_tree_round_trips_through_the_mount_and_back() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("256M");
    let src = Path::new("/usr/share/doc");
    sh(&format!("cp -a {} {}/doc", src.display(), m.mnt.display()), Path::new("/"));
    sh(&format!("diff -r --no-dereference {} {}/doc", src.display(), m.mnt.display()), Path::new("/"));
    m.unmount();
    assert_eq!(ok(&[OsStr::new("fsck"), m.img.as_os_str()]).trim_end().lines().last(), Some("clean"));
    // Read back with the library, not the mount.
    let out = m._dir.path().join("out");
    ok(&[OsStr::new("get"), m.img.as_os_str(), OsStr::new("/doc"), out.as_os_str()]);
    sh(&format!("diff -r --no-dereference {} {}", src.display(), out.display()), Path::new("/"));
    // The reverse: a tree put in with the library reads back through the mount.
    ok(&[OsStr::new("put"), m.img.as_os_str(), OsStr::new("/usr/share/doc/bash"), OsStr::new("/bash")]);
    ok(&[OsStr::new("mount"), m.img.as_os_str(), m.mnt.as_os_str()]);
    sh(&format!("diff -r /usr/share/doc/bash {}/bash", m.mnt.display()), Path::new("/"));
    m.unmount();
}

#[test]
fn extended_attributes_are_stored_in_the_image_with_ext4_errors() {
    if !can_mount() {
        return;
    }
    use rustix::fs::{getxattr, listxattr, removexattr, setxattr, XattrFlags};
    use rustix::io::Errno;
    use std::os::unix::fs::MetadataExt;
    let m = Mounted::new("64M");
    let f = m.mnt.join("f");
    std::fs::write(&f, b"data").unwrap();
    let before = std::fs::metadata(&f).unwrap();
    setxattr(&f, "user.small", b"1", XattrFlags::empty()).unwrap();
    setxattr(&f, "user.empty", b"", XattrFlags::empty()).unwrap();
    setxattr(&f, "trusted.t", b"root only", XattrFlags::CREATE).unwrap();
    setxattr(&f, "user.small", b"22", XattrFlags::REPLACE).unwrap();
    let after = std::fs::metadata(&f).unwrap();
    let ctime = |m: &std::fs::Metadata| (m.ctime(), m.ctime_nsec());
    assert!(ctime(&after) > ctime(&before), "setxattr left ctime alone");
    assert_eq!(after.modified().unwrap(), before.modified().unwrap(), "setxattr moved mtime");

    let err = |r: rustix::io::Result<()>| r.unwrap_err();
    assert_eq!(err(setxattr(&f, "user.small", b"x", XattrFlags::CREATE)), Errno::EXIST);
    assert_eq!(err(setxattr(&f, "user.none", b"x", XattrFlags::REPLACE)), Errno::NODATA);
    assert_eq!(err(setxattr(&f, "system.other", b"x", XattrFlags::empty())), Errno::OPNOTSUPP);
    assert_eq!(err(setxattr(&f, "nonamespace", b"x", XattrFlags::empty())), Errno::OPNOTSUPP);
    assert_eq!(err(setxattr(&f, "user.".to_string() + &"n".repeat(251), b"x", XattrFlags::empty())), Errno::RANGE);
    assert_eq!(err(setxattr(&f, "user.huge", &[1; 70_000], XattrFlags::empty())), Errno::TOOBIG);
    // Everything an inode holds fits in one 4 KiB block, as ext4 without large attributes.
    assert_eq!(err(setxattr(&f, "user.big", &[1; 5000], XattrFlags::empty())), Errno::NOSPC);
    setxattr(&f, "user.big", &[7; 3000], XattrFlags::empty()).unwrap();
    assert_eq!(err(setxattr(&f, "user.big2", &[7; 1500], XattrFlags::empty())), Errno::NOSPC);
    let fifo = m.mnt.join("p");
    sh(&format!("mkfifo {}", fifo.display()), Path::new("/"));
    assert_eq!(err(setxattr(&fifo, "user.x", b"x", XattrFlags::empty())), Errno::PERM);
    setxattr(&fifo, "trusted.x", b"x", XattrFlags::empty()).unwrap();

    let mut small = [0u8; 1];
    assert_eq!(getxattr(&f, "user.small", &mut small[..]).unwrap_err(), Errno::RANGE);
    assert_eq!(getxattr(&f, "user.gone", &mut small[..]).unwrap_err(), Errno::NODATA);
    removexattr(&f, "user.empty").unwrap();
    assert_eq!(removexattr(&f, "user.empty").unwrap_err(), Errno::NODATA);

    // cp -a carries them, and they outlive the mount.
    sh(&format!("cp -a {0}/f {0}/g", m.mnt.display()), Path::new("/"));
    m.unmount();
    assert_eq!(ok(&[OsStr::new("fsck"), m.img.as_os_str()]).trim_end().lines().last(), Some("clean"));
    ok(&[OsStr::new("mount"), m.img.as_os_str(), m.mnt.as_os_str()]);
    for name in ["f", "g"] {
        let p = m.mnt.join(name);
        let mut list = vec![0u8; 256];
        let n = listxattr(&p, &mut list[..]).unwrap();
        assert_eq!(&list[..n], b"trusted.t\0user.big\0user.small\0", "{name}");
        let mut v = vec![0u8; 4096];
        let n = getxattr(&p, "user.big", &mut v[..]).unwrap();
        assert_eq!(&v[..n], &[7; 3000][..]);
        let n = getxattr(&p, "user.small", &mut v[..]).unwrap();
        assert_eq!(&v[..n], b"22");
    }
    // Removing the last one gives the block back; unlinking frees one too.
    let used = |m: &Mounted| rustix::fs::statfs(&m.mnt).unwrap().f_bfree;
    let free_before = used(&m);
    for name in ["trusted.t", "user.big", "user.small"] {
        removexattr(m.mnt.join("f"), name).unwrap();
    }
    std::fs::remove_file(m.mnt.join("g")).unwrap();
    m.unmount();
    assert_eq!(ok(&[OsStr::new("fsck"), m.img.as_os_str()]).trim_end().lines().last(), Some("clean"));
    ok(&[OsStr::new("mount"), m.img.as_os_str(), m.mnt.as_os_str()]);
    assert!(used(&m) >= free_before + 2, "{} free blocks, {free_before} before", used(&m));
    m.unmount();
}

/// Set-ID bits after writes, truncates and chowns, through the mount and on tmpfs (a kernel file
/// system) side by side: the server drops them itself (FUSE_HANDLE_KILLPRIV_V2), so it must drop
/// exactly what the kernel would.
#[test]
fn writes_truncates_and_chowns_drop_set_id_bits_as_a_kernel_file_system_does() {
    if !can_mount() {
        return;
    }
    let m = Mounted::with_options("64M", "allow_other");
    let kernel = tmp();
    for d in [kernel.path(), m._dir.path(), m.mnt.as_path()] {
        sh(&format!("chmod 755 {}", d.display()), Path::new("/"));
    }
    // (mode, command; `$f` is the file, `nobody` runs it as an unprivileged user)
    let cases: &[(u32, &str)] = &[
        (0o6777, "nobody dd if=/dev/zero of=$f bs=100 count=1 conv=notrunc"),
        (0o6755, "dd if=/dev/zero of=$f bs=100 count=1 conv=notrunc"),
        (0o2776, "nobody dd if=/dev/zero of=$f bs=100 count=1 conv=notrunc"),
        (0o4777, "nobody truncate -s 10 $f"),
        (0o6777, "nobody sh -c ': > $f'"),
        (0o6755, "truncate -s 10 $f"),
        (0o6755, "chown 0:0 $f"),
        (0o2744, "chown 0:0 $f"),
        (0o4744, "chown -h 0 $f"),
    ];
    let mut modes = Vec::new();
    for dir in [kernel.path(), m.mnt.as_path()] {
        let mut got = Vec::new();
        for (i, (mode, cmd)) in cases.iter().enumerate() {
            let f = dir.join(format!("f{i}"));
            std::fs::write(&f, b"0123456789abcdef").unwrap();
            sh(&format!("chmod {mode:o} {}", f.display()), dir);
            let cmd = cmd
                .replace("nobody ", "setpriv --reuid=65534 --regid=65534 --clear-groups ")
                .replace("$f", &f.display().to_string());
            sh(&cmd, dir);
            let st = std::fs::metadata(&f).unwrap();
            let mode = std::os::unix::fs::PermissionsExt::mode(&st.permissions()) & 0o7777;
            got.push(format!("{:o} after `{}`", mode, cmd.replace(&dir.display().to_string(), "DIR")));
        }
        modes.push(got);
    }
    assert!(modes[0][0].starts_with("777 "), "the kernel file system should drop both bits here");
    assert_eq!(modes[1], modes[0], "through the mount (right) against tmpfs (left)");
    m.unmount();
}

/// name_to_handle_at and open_by_handle_at through python3's ctypes (the calls an NFS server
/// makes; no tool here reaches them without unsafe code). `get PATH` prints a handle in hex,
/// `open MOUNT HEX` prints the file's first bytes or `error ERRNO`.
const HANDLES_PY: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Handle(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int), ("data", ctypes.c_ubyte * 128)]
if sys.argv[1] == "get":
    h, mount_id = Handle(128), ctypes.c_int()
    if libc.name_to_handle_at(-100, sys.argv[2].encode(), ctypes.byref(h), ctypes.byref(mount_id), 0):
        sys.exit("name_to_handle_at: " + os.strerror(ctypes.get_errno()))
    print(bytes(h)[:8 + h.bytes].hex())
else:
    h = Handle.from_buffer_copy(bytes.fromhex(sys.argv[3]).ljust(ctypes.sizeof(Handle), b"\0"))
    mount_fd = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
    fd = libc.open_by_handle_at(mount_fd, ctypes.byref(h), os.O_RDONLY)
    print("error %d" % ctypes.get_errno() if fd < 0 else os.read(fd, 100).decode())
"#;

/// File handles carry the inode number and generation (FUSE export support): they open the same
/// file after a remount, and a removed file, or its number reused by a new file, gives ESTALE.
#[test]
fn file_handles_survive_remounts_and_go_stale_with_their_inode() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("64M");
    let script = m._dir.path().join("handles.py");
    std::fs::write(&script, HANDLES_PY).unwrap();
    let py = |args: &str| sh(&format!("python3 {} {args}", script.display()), Path::new("/")).trim().to_string();
    std::fs::create_dir(m.mnt.join("d")).unwrap();
    std::fs::write(m.mnt.join("d/kept"), "kept\n").unwrap();
    std::fs::write(m.mnt.join("gone"), "gone\n").unwrap();
    let kept = py(&format!("get {}/d/kept", m.mnt.display()));
    let gone = py(&format!("get {}/gone", m.mnt.display()));
    m.unmount();
    ok(&[OsStr::new("mount"), m.img.as_os_str(), m.mnt.as_os_str()]);
    let open = |h: &str| py(&format!("open {} {h}", m.mnt.display()));
    assert_eq!(open(&kept), "kept", "a handle from before the remount");
    assert_eq!(open(&gone), "gone");
    let ino = |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m.mnt.join(p)).unwrap());
    let gone_ino = ino("gone");
    std::fs::remove_file(m.mnt.join("gone")).unwrap();
    assert_eq!(open(&gone), format!("error {}", libc::ESTALE), "a removed file");
    std::fs::write(m.mnt.join("new"), "new\n").unwrap();
    assert_eq!(ino("new"), gone_ino, "the test expects the new file to reuse the removed one's number");
    assert_eq!(open(&gone), format!("error {}", libc::ESTALE), "a reused inode number");
    m.unmount();
}

#[test]
fn tar_and_git_work_on_the_mount() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("256M");
    let work = m.mnt.join("w");
    std::fs::create_dir(&work).unwrap();
    sh("tar -C /usr/share/doc -cf - bash | tar -xf -", &work);
    sh("diff -r /usr/share/doc/bash bash", &work);
    sh(
        "git init -q repo && cd repo && cp -a ../bash . && git add -A && \
         git -c user.name=t -c user.email=t@e commit -qm one && git fsck --strict && git log --oneline | wc -l",
        &work,
    );
    m.unmount();
    assert_eq!(ok(&[OsStr::new("fsck"), m.img.as_os_str()]).trim_end().lines().last(), Some("clean"));
}

#[test]
fn bad_mount_points_and_busy_images_get_clear_errors() {
    if !can_mount() {
        return;
    }
    let dir = tmp();
    let img = dir.path().join("img");
    ok(&[OsStr::new("mkfs"), img.as_os_str(), OsStr::new("--size"), OsStr::new("16M")]);
    let missing = dir.path().join("missing");
    let out = udax(&[OsStr::new("mount"), img.as_os_str(), missing.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mount point does not exist"), "{out:?}");
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let out = udax(&[OsStr::new("mount"), img.as_os_str(), full.as_os_str()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"), "{out:?}");
    let out = udax(&[OsStr::new("mount"), img.as_os_str(), full.as_os_str(), OsStr::new("-o"), OsStr::new("bogus")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option"), "{out:?}");
    // The image in use by another process.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    ok(&[OsStr::new("mount"), img.as_os_str(), mnt.as_os_str()]);
    let mnt2 = dir.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let out = udax(&[OsStr::new("mount"), img.as_os_str(), mnt2.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // Named: the server's pid and command line.
    assert!(
        err.contains(&format!("is mounted on {} by process", mnt.canonicalize().unwrap().display()))
            && err.contains(" mount "),
        "{out:?}"
    );
    assert!(!is_mounted(&mnt2));
    // udax umount: busy while a process works inside, then unmounts; a second time, not mounted.
    let mut inside = Command::new("sleep").arg("30").current_dir(&mnt).spawn().unwrap();
    let out = udax(&[OsStr::new("umount"), mnt.as_os_str()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("target is busy"), "{out:?}");
    assert!(is_mounted(&mnt));
    let _ = inside.kill();
    let _ = inside.wait();
    ok(&[OsStr::new("umount"), mnt.as_os_str()]);
    assert!(!is_mounted(&mnt));
    let out = udax(&[OsStr::new("umount"), mnt.as_os_str()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not mounted"), "{out:?}");
    wait_released(&img);
    // A corrupt image.
    std::fs::write(&img, vec![0x5a; 1 << 20]).unwrap();
    let out = udax(&[OsStr::new("mount"), img.as_os_str(), mnt.as_os_str()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn sigterm_unmounts_with_everything_durable() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("64M");
    std::fs::write(m.mnt.join("f"), b"kept").unwrap();
    // The server is the process holding the image lock.
    let server = server_pid(&m.img).expect("a server holds the image");
    sh(&format!("kill -TERM {server}"), Path::new("/"));
    wait_released(&m.img);
    assert!(!is_mounted(&m.mnt));
    assert_eq!(ok(&[OsStr::new("cat"), m.img.as_os_str(), OsStr::new("/f")]), "kept");
}

/// A signal to a busy mount was taken and then nothing more was listened to: the mount and
/// the server stayed until umount.
#[test]
fn a_signal_on_a_busy_mount_says_so_and_the_next_one_unmounts() {
    use std::io::BufRead;
    if !can_mount() {
        return;
    }
    let dir = tmp();
    let (img, mnt) = (dir.path().join("img"), dir.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    ok(&[OsStr::new("mkfs"), img.as_os_str(), OsStr::new("--size"), OsStr::new("16M")]);
    // Whatever fails, nothing stays mounted.
    let _detach = Detach(&mnt);
    for lazy in [false, true] {
        let mut server = Command::new(env!("CARGO_BIN_EXE_udax"))
            .args([OsStr::new("mount"), img.as_os_str(), mnt.as_os_str(), OsStr::new("-f")])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = std::io::BufReader::new(server.stderr.take().unwrap()).lines();
        let mut next = || said.next().unwrap().unwrap();
        assert!(next().contains("mounted on"));
        // mount(8) and df name the image as the source.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts.lines().find(|l| l.split(' ').nth(1) == mnt.canonicalize().unwrap().to_str()).unwrap();
        assert!(line.starts_with(&format!("{} ", img.canonicalize().unwrap().display())), "{line}");
        assert_eq!(line.split(' ').nth(2), Some("fuse.udax"), "{line}");
        let mut inside = Command::new("sleep").arg("60").current_dir(&mnt).spawn().unwrap();
        let term = || sh(&format!("kill -TERM {}", server.id()), Path::new("/"));
        term();
        assert!(next().contains("busy, not unmounted"));
        assert!(is_mounted(&mnt), "a busy mount stays");
        if lazy {
            term();
            assert!(next().contains("detached lazily"));
            assert!(!is_mounted(&mnt));
            let _ = inside.kill();
            let _ = inside.wait();
        } else {
            let _ = inside.kill();
            let _ = inside.wait();
            term();
        }
        assert!(next().contains("unmounted"));
        assert!(server.wait().unwrap().success());
        assert!(!is_mounted(&mnt));
    }
}

#[test]
fn a_killed_server_leaves_every_returned_write_in_the_image() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("64M");
    let server = server_pid(&m.img).expect("a server holds the image");
    // A writer appends numbered records, printing each one's number after write(2) returns;
    // the server is killed in the middle.
    let f = m.mnt.join("log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while [ $i -lt 100000 ]; do printf 'record %06d\\n' $i >> {f} || exit 1; echo $i; i=$((i+1)); done",
            f = f.display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once 200 appends have returned, with the writer still going.
    let mut returned: Vec<u64> = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        returned.push(line.unwrap().parse().unwrap());
        if returned.len() == 200 {
            sh(&format!("kill -KILL {server}"), Path::new("/"));
            break;
        }
    }
    returned.extend(lines.map_while(Result::ok).filter_map(|l| l.parse::<u64>().ok()));
    child.wait().unwrap();
    let _ = Command::new("umount").arg("-l").arg(&m.mnt).status();
    wait_released(&m.img);
    assert!(returned.len() < 100_000, "the writer finished before the kill");
    let fsck = ok(&[OsStr::new("fsck"), m.img.as_os_str()]);
    assert_eq!(fsck.trim_end().lines().last(), Some("clean"), "{fsck}");
    let log = ok(&[OsStr::new("cat"), m.img.as_os_str(), OsStr::new("/log")]);
    for (i, line) in log.lines().enumerate() {
        assert_eq!(line, format!("record {i:06}"), "record {i} is damaged");
    }
    let last = *returned.last().unwrap() as usize;
    assert!(log.lines().count() > last, "record {last} returned but the image has {} records", log.lines().count());
}

/// The mount options the kernel shows for `dir`.
fn mount_options(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == dir.to_str()).expect("mounted");
    line.split(' ').nth(3).unwrap().split(',').map(str::to_string).collect()
}

/// The mount honoured set-user-ID bits and device nodes by default (the kernel's default for a
/// mount made by root), although the image may come from anyone: nosuid,nodev unless asked.
#[test]
fn set_id_bits_and_device_nodes_are_inert_unless_asked_for() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("32M");
    let o = mount_options(&m.mnt);
    assert!(o.iter().any(|x| x == "nosuid") && o.iter().any(|x| x == "nodev"), "{o:?}");
    m.unmount();
    let m = Mounted::with_options("32M", "suid,dev");
    let o = mount_options(&m.mnt);
    assert!(!o.iter().any(|x| x == "nosuid" || x == "nodev"), "{o:?}");
    m.unmount();
}

/// `-o poll` has the request thread poll /dev/fuse (O_NONBLOCK) after each request: it serves,
/// and once idle no descriptor of /dev/fuse is left non-blocking and the server uses no CPU.
#[test]
fn a_polling_mount_serves_then_sleeps_when_idle() {
    if !can_mount() {
        return;
    }
    let m = Mounted::with_options("32M", "poll=200");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.mnt.join("f"), &data).unwrap();
    assert_eq!(std::fs::read(m.mnt.join("f")).unwrap(), data);
    let pid = server_pid(&m.img).expect("a server holds the image");
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit(')').next().unwrap().split(' ').skip(12).take(2).map(|x| x.parse::<u64>().unwrap()).sum()
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if std::fs::read_link(fd.path()).is_ok_and(|p| p == Path::new("/dev/fuse")) {
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()));
            let flags = info.unwrap().lines().find_map(|l| l.strip_prefix("flags:").map(|f| f.trim().to_string()));
            let flags = u32::from_str_radix(&flags.unwrap(), 8).unwrap();
            assert_eq!(flags & libc::O_NONBLOCK as u32, 0, "/dev/fuse still polled when idle");
        }
    }
    let before = cpu_ticks();
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(cpu_ticks() - before <= 2, "an idle polling mount used {} ticks in 1 s", cpu_ticks() - before);
    m.unmount();
}

/// After `umount` returned, the server could still hold the image's lock for a moment
/// (checkpoint, sync, exit): an immediate `udax fsck` said "image is in use" 2 times in 20. A
/// command now waits for a server whose mount is gone.
#[test]
fn a_command_right_after_umount_finds_the_image_free() {
    if !can_mount() {
        return;
    }
    // A large image takes the server longest to sync on its way out.
    let m = Mounted::new("1G");
    for i in 0..if long() { 200 } else { 50 } {
        if i > 0 {
            ok(&[OsStr::new("mount"), m.img.as_os_str(), m.mnt.as_os_str()]);
        }
        std::fs::write(m.mnt.join(format!("f{}", i % 4)), vec![i as u8; 1 << 20]).unwrap();
        umount(&m.mnt);
        let out = udax(&[OsStr::new("fsck"), m.img.as_os_str()]);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            // Who held the lock, as far as /proc still tells (state, parent, stacks).
            let holder = err.split("in use by process ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok());
            let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            panic!("round {i}: {err}\n/proc/locks:\n{locks}{}", stacks(&Vec::from_iter(holder)));
        }
    }
}

/// A background server logged nothing anywhere (its standard error went to /dev/null) and had no
/// debug switch: `-o log=FILE` now gets its start, unmount and, with `debug`, every request.
#[test]
fn the_server_logs_its_start_requests_and_unmount() {
    if !can_mount() {
        return;
    }
    let m = Mounted::with_options("16M", "debug");
    m.unmount();
    let log = m.img.with_file_name("server.log");
    let opts = format!("debug,log={}", log.display());
    ok(&[OsStr::new("mount"), m.img.as_os_str(), m.mnt.as_os_str(), OsStr::new("-o"), OsStr::new(&opts)]);
    std::fs::write(m.mnt.join("f"), b"logged").unwrap();
    m.unmount();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("mounted on {}", m.mnt.display())), "{text}");
    assert!(text.contains("CREATE") && text.contains("WRITE"), "requests logged: {text}");
    assert!(text.contains(&format!("{} unmounted", m.mnt.display())), "{text}");
    // Without debug, no request lines.
    std::fs::remove_file(&log).unwrap();
    let opts = format!("log={}", log.display());
    ok(&[OsStr::new("mount"), m.img.as_os_str(), m.mnt.as_os_str(), OsStr::new("-o"), OsStr::new(&opts)]);
    assert_eq!(std::fs::read(m.mnt.join("f")).unwrap(), b"logged");
    m.unmount();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("mounted on") && !text.contains("debug:"), "{text}");
}

/// A user who is not root could not mount ("/dev/fuse: Permission denied"): fusermount3 now
/// mounts for them, and `udax umount` unmounts through it.
#[test]
fn a_user_who_is_not_root_mounts_through_fusermount3() {
    if !can_mount() {
        return;
    }
    let mut missing = Vec::new();
    for tool in ["fusermount3", "setpriv"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            missing.push(tool);
        }
    }
    let fuse_mode =
        std::fs::metadata("/dev/fuse").map_or(0, |m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    if fuse_mode & 0o006 != 0o006 {
        missing.push("/dev/fuse open to every user (mode 0666, as the fuse3 package's udev rule sets it)");
    }
    if !missing.is_empty() {
        let msg = format!("skipping: a mount by a user needs {}", missing.join(", "));
        assert!(std::env::var_os("UDAX_REQUIRE_MOUNT").is_none(), "{msg}, and UDAX_REQUIRE_MOUNT is set");
        eprintln!("{msg}");
        return;
    }
    // nobody (65534) owns the image, its root directory and the mount point, and runs a copy of
    // the binary it can reach.
    let dir = tmp();
    let d = dir.path();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (img, mnt, bin) = (d.join("img"), d.join("mnt"), d.join("udax"));
    std::fs::copy(env!("CARGO_BIN_EXE_udax"), &bin).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    ok(&[OsStr::new("mkfs"), img.as_os_str(), OsStr::new("--size"), OsStr::new("16M")]);
    ok(&[OsStr::new("chown"), img.as_os_str(), OsStr::new("65534:65534"), OsStr::new("/")]);
    std::os::unix::fs::chown(&img, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(&mnt, Some(65534), Some(65534)).unwrap();
    let as_nobody = |cmd: &str| {
        let out = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", cmd])
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "`{cmd}` as nobody failed ({}): {err}", out.status);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    as_nobody("./udax mount img mnt");
    let _detach = Detach(&mnt);
    let line = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == mnt.canonicalize().unwrap().to_str())
        .map(str::to_string)
        .expect("mounted");
    assert_eq!(line.split(' ').nth(2), Some("fuse.udax"), "{line}");
    assert!(
        line.contains("user_id=65534") && line.starts_with(img.canonicalize().unwrap().to_str().unwrap()),
        "{line}"
    );
    assert_eq!(as_nobody("echo made by nobody > mnt/f && cat mnt/f && stat -c %u mnt/f"), "made by nobody\n65534\n");
    // Busy: said as such through fusermount3 too.
    // (Root may not enter a FUSE mount of another user's without allow_other: nobody does.)
    let mut inside = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "sh",
            "-c",
            "cd mnt && echo in && exec sleep 30",
        ])
        .current_dir(d)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It says so once its working directory is on the mount.
    let mut said = String::new();
    BufReader::new(inside.stdout.take().unwrap()).read_line(&mut said).unwrap();
    assert_eq!(said, "in\n");
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "./udax", "umount", "mnt"])
        .current_dir(d)
        .output()
        .unwrap();
    let _ = inside.kill();
    let _ = inside.wait();
    assert!(String::from_utf8_lossy(&out.stderr).contains("target is busy"), "{out:?}");
    assert!(is_mounted(&mnt));
    as_nobody("./udax umount mnt");
    assert!(!is_mounted(&mnt));
    wait_released(&img);
    ok(&[OsStr::new("fsck"), img.as_os_str()]);
    assert_eq!(ok(&[OsStr::new("cat"), img.as_os_str(), OsStr::new("/f")]), "made by nobody\n");
}

/// A mounted image could not be inspected: `info`, `ls`, `fsck` said "image is in use by another
/// process" without naming the mount. Commands that only read now read a snapshot the mount
/// takes, and those that change the image name the mount point.
#[test]
fn commands_that_only_read_work_on_a_mounted_image() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new("32M");
    std::fs::create_dir(m.mnt.join("d")).unwrap();
    std::fs::write(m.mnt.join("d/f"), b"seen while mounted\n").unwrap();
    let img = m.img.as_os_str();
    let mnt = m.mnt.canonicalize().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec![args[0].as_ref(), img];
        all.extend(args[1..].iter().map(OsStr::new));
        let out = udax(&all);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), err)
    };
    for args in [
        &["ls", "/d"][..],
        &["cat", "/d/f"],
        &["info"],
        &["stat", "/d/f"],
        &["extents", "/d/f"],
        &["du", "/d"],
        &["df"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, Some(0), "udax {args:?}: {err}");
        assert!(err.contains(&format!("is mounted on {}: reading a snapshot", mnt.display())), "{args:?}: {err}");
        match args[0] {
            "cat" => assert_eq!(out, "seen while mounted\n"),
            "fsck" => assert!(out.contains("clean"), "{out}"),
            _ => {}
        }
    }
    let out_dir = m.img.with_file_name("got");
    let (code, _, err) = run(&["get", "/d", out_dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::read(out_dir.join("f")).unwrap(), b"seen while mounted\n");
    // A change is refused, naming the holder and the mount point; nothing changed.
    let (code, _, err) = run(&["rm", "/d/f"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("is mounted on {} by process", mnt.display())) && err.contains("unmount it"),
        "{err}"
    );
    let (code, _, err) = run(&["fsck", "-y"]);
    assert_eq!(code, Some(8));
    assert!(
        err.contains(&format!("is mounted on {} by process", mnt.display())) && err.contains("unmount it"),
        "{err}"
    );
    assert!(m.mnt.join("d/f").exists());
    m.unmount();
}
