//! A failed call left memory unlike the medium: `make_node` and `rename` changed indexes and
//! counts before their last fallible steps, so an ENOSPC or a full journal window left a phantom
//! entry, a raised nlink and leaked blocks until remount; a panic under a lock went unnoticed.
//!
//! Every fallible step (allocation, transaction content, commit) of every operation fails in
//! turn: the call must return the error with the file system as it was before the call (seen
//! through the API), memory equal to the medium and nothing leaked (fsck compares both), the
//! same call must then succeed, and a remount must show the same. A panic at any step must stop
//! all changes with EROFS, keep reads working, and leave an image that remounts clean.
//! Built with `--features faults` (CI runs it).
#![cfg(feature = "faults")]

use std::panic::{catch_unwind, AssertUnwindSafe};

use udax::faults::{self, Step};
use udax::{Creds, Device, Error, FallocMode, Fs, MkfsOptions, OpenOptions, SetAttr, XattrFlags};

/// One call of an operation: the `i`-th, for operations made of many calls.
type Op = fn(&Fs, u64) -> udax::Result<()>;

/// The starting tree: directories, a file with a second link and an attribute, a sparse file
/// with a hole and preallocated blocks, a symlink, a file with one link.
fn setup() -> Fs {
    let fs = Fs::mkfs(Device::anonymous(64 << 20).unwrap(), &MkfsOptions::default()).unwrap();
    fs.mkdir_all("/d/sub", 0o755).unwrap();
    fs.mkdir_all("/e/full", 0o755).unwrap();
    fs.mkdir_all("/grow", 0o755).unwrap();
    fs.write_file("/d/a", &pattern(8192, 1)).unwrap();
    fs.write_file("/d/b", &pattern(5000, 2)).unwrap();
    fs.write_file("/e/full/x", b"x").unwrap();
    fs.write_file("/e/only", &pattern(3000, 3)).unwrap();
    fs.link_path("/d/a", "/d/a2").unwrap();
    let a = fs.resolve("/d/a", true).unwrap();
    fs.setxattr(a, b"user.k", b"v", XattrFlags::default()).unwrap();
    let s = fs.open("/d/sparse", OpenOptions::create()).unwrap();
    s.write_at(&pattern(4096, 4), 0).unwrap();
    s.write_at(&pattern(4096, 5), 64 << 10).unwrap();
    s.fallocate(16 << 10, 16 << 10, FallocMode::Allocate { keep_size: true }).unwrap();
    drop(s);
    fs.symlink_path("/d/a", "/d/ln").unwrap();
    fs
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn ino(fs: &Fs, path: &str) -> u64 {
    fs.resolve(path, false).unwrap()
}

fn file(fs: &Fs, path: &str) -> udax::File {
    fs.open(path, OpenOptions::read_write()).unwrap()
}

/// Each operation with its number of calls (each call is checked on its own, after the calls
/// before it).
fn ops() -> Vec<(&'static str, u64, Op)> {
    vec![
        ("create", 1, |fs, _| fs.create(ino(fs, "/d"), b"new", 0o644, Creds::ROOT).map(drop)),
        ("mkdir", 1, |fs, _| fs.mkdir(ino(fs, "/d"), b"newdir", 0o755, Creds::ROOT).map(drop)),
        ("mknod fifo", 1, |fs, _| fs.mknod(ino(fs, "/d"), b"fifo", 0o010644, 0, Creds::ROOT).map(drop)),
        ("symlink", 1, |fs, _| fs.symlink(ino(fs, "/e"), b"sl", &[b'z'; 3000], Creds::ROOT).map(drop)),
        ("link", 1, |fs, _| fs.link(ino(fs, "/d/b"), ino(fs, "/e"), b"b2").map(drop)),
        ("unlink of one of two links", 1, |fs, _| fs.unlink(ino(fs, "/d"), b"a")),
        ("unlink of the last link", 1, |fs, _| fs.unlink(ino(fs, "/e"), b"only")),
        ("rmdir", 1, |fs, _| fs.rmdir(ino(fs, "/d"), b"sub")),
        ("rename across directories", 1, |fs, _| fs.rename_path("/d/b", "/e/moved")),
        ("rename over the last link of a file", 1, |fs, _| fs.rename_path("/d/b", "/e/only")),
        ("rename of a directory", 1, |fs, _| fs.rename_path("/d/sub", "/e/sub2")),
        ("rename over an empty directory", 1, |fs, _| fs.rename_path("/d/sub", "/grow")),
        ("exchange", 1, |fs, _| {
            let (d, e) = (ino(fs, "/d"), ino(fs, "/e"));
            fs.rename(d, b"sub", e, b"full", udax::RenameMode::Exchange)
        }),
        ("extending write", 1, |fs, _| file(fs, "/d/a").write_at(&pattern(10_000, 6), 8000).map(drop)),
        ("write into a hole", 1, |fs, _| file(fs, "/d/sparse").write_at(&pattern(6000, 7), 40 << 10).map(drop)),
        ("write into unwritten blocks", 1, |fs, _| {
            file(fs, "/d/sparse").write_at(&pattern(5000, 8), 17 << 10).map(drop)
        }),
        ("overwrite", 1, |fs, _| file(fs, "/d/a").write_at(&pattern(4096, 9), 1000).map(drop)),
        ("truncate down", 1, |fs, _| file(fs, "/d/a").set_len(100)),
        ("truncate up", 1, |fs, _| file(fs, "/d/b").set_len(1 << 20)),
        ("setattr with size", 1, |fs, _| {
            let set = SetAttr { mode: Some(0o600), size: Some(3), ..SetAttr::default() };
            fs.setattr(ino(fs, "/d/b"), &set).map(drop)
        }),
        ("chmod", 1, |fs, _| {
            fs.setattr(ino(fs, "/d/b"), &SetAttr { mode: Some(0o600), ..SetAttr::default() }).map(drop)
        }),
        ("fallocate", 1, |fs, _| file(fs, "/d/b").fallocate(0, 100 << 10, FallocMode::Allocate { keep_size: false })),
        ("punch hole", 1, |fs, _| file(fs, "/d/a").fallocate(100, 6000, FallocMode::PunchHole)),
        ("zero range", 1, |fs, _| {
            file(fs, "/d/sparse").fallocate(1000, 20 << 10, FallocMode::ZeroRange { keep_size: false })
        }),
        ("setxattr", 1, |fs, _| fs.setxattr(ino(fs, "/d/b"), b"user.new", &[7; 300], XattrFlags::default())),
        ("removexattr", 1, |fs, _| fs.removexattr(ino(fs, "/d/a"), b"user.k")),
        ("scattered writes (extent overflow blocks)", 24, |fs, i| {
            file(fs, "/d/b").write_at(b"s", (16 + 2 * i) << 12).map(drop)
        }),
        ("directory growth", 40, |fs, i| {
            fs.create(ino(fs, "/grow"), format!("{i:0>200}").as_bytes(), 0o644, Creds::ROOT).map(drop)
        }),
    ]
}

/// Everything a program can see: every path's attributes (atime aside; mtime and ctime with
/// `times`), content or target, attributes, extents and directory order, and the free counts.
fn snapshot(fs: &Fs, times: bool) -> String {
    let mut out = String::new();
    let st = fs.statfs();
    out += &format!("free blocks {} inodes {}\n", st.blocks_free, st.inodes_free);
    let mut stack = vec![(b"".to_vec(), udax::layout::ROOT_INO)];
    while let Some((path, dir)) = stack.pop() {
        let entries = match fs.readdir(dir, 0) {
            Ok(v) => v,
            Err(e) => {
                out += &format!("{}: readdir: {e}\n", String::from_utf8_lossy(&path));
                continue;
            }
        };
        for e in entries {
            let p = [&path[..], b"/", &e.name].concat();
            out += &format!("{} -> {}: ", String::from_utf8_lossy(&p), e.ino);
            match describe(fs, e.ino, times) {
                Ok((line, is_dir)) => {
                    out += &line;
                    if is_dir {
                        stack.push((p, e.ino));
                    }
                }
                Err(err) => out += &format!("{err}\n"),
            }
        }
    }
    out
}

/// One inode as a program sees it, and whether it is a directory.
fn describe(fs: &Fs, ino: u64, times: bool) -> udax::Result<(String, bool)> {
    let s = fs.getattr(ino)?;
    let mut out = format!(
        "gen {} mode {:o} nlink {} size {} blocks {} times {:?}\n",
        s.generation,
        s.mode,
        s.nlink,
        s.size,
        s.blocks,
        times.then_some((s.mtime, s.ctime))
    );
    let names = fs.listxattr(ino)?;
    for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        out += &format!("  xattr {:?} = {:?}\n", n, fs.getxattr(ino, n)?);
    }
    match s.mode & 0o170000 {
        0o120000 => out += &format!("  -> {:?}\n", fs.readlink(ino)?),
        0o100000 => {
            let mut data = vec![0; s.size as usize];
            fs.read(ino, &mut data, 0)?;
            out += &format!("  crc {:08x} extents {:?}\n", crc(&data), fs.extents(ino)?);
        }
        _ => {}
    }
    Ok((out, s.mode & 0o170000 == 0o040000))
}

fn crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Operations that store file bytes in place before their commit (an overwrite of written
/// blocks inside EOF, the partial edge blocks of a punch or zero range): when they fail, those
/// bytes may be new, as after a torn overwrite (SPEC 3.2). A failed write may also keep the
/// extent block it reserved and linked (a committed reservation the next extents use; extent
/// blocks are never given back, as after a punch). So for them the comparison leaves out file
/// contents and block counts: fsck still checks that memory and medium agree and that no block
/// leaked, and extents and sizes must not change.
fn stores_in_place(name: &str) -> bool {
    name.contains("write") || name == "punch hole" || name == "zero range"
}

/// `snapshot` without what `stores_in_place` operations may change when they fail.
fn masked(snap: &str) -> String {
    snap.lines()
        .filter(|l| !l.starts_with("free blocks"))
        .map(|l| {
            let l = match l.split_once("crc ") {
                Some((head, tail)) => format!("{head}{}", tail.split_once(' ').map_or("", |t| t.1)),
                None => l.to_string(),
            };
            match (l.find(" blocks "), l.find(" times ")) {
                (Some(a), Some(b)) => format!("{}{}", &l[..a], &l[b..]),
                _ => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn fsck(fs: &Fs, when: &str) -> Result<(), String> {
    let r = udax::check::check(fs, &mut |_, _| {});
    if r.is_clean() {
        Ok(())
    } else {
        Err(format!("{when}: fsck: {:?}", r.findings))
    }
}

/// Runs call `call` of `op` on a fresh tree (after the calls before it) with its `n`-th
/// fallible step failing. Returns whether the step was reached, or what went wrong.
fn fail_at(name: &str, op: Op, call: u64, n: u64) -> Result<bool, String> {
    let fs = setup();
    for i in 0..call {
        op(&fs, i).unwrap();
    }
    let before = snapshot(&fs, true);
    faults::arm(n, false);
    let r = op(&fs, call);
    let fired = faults::disarm();
    let Some(step) = fired else {
        r.map_err(|e| format!("{name}: fails with no step failing: {e}"))?;
        return Ok(false);
    };
    let ctx = format!("{name}, call {call}, step {n} ({step:?}) failing");
    match r {
        // An allocation with a fallback (a 2 MiB run, say) may fail and the call succeed.
        Ok(()) if step == Step::Alloc => {}
        Ok(()) => return Err(format!("{ctx}: the call succeeded")),
        Err(_) => {
            let after = snapshot(&fs, true);
            let same = if stores_in_place(name) { masked(&after) == masked(&before) } else { after == before };
            if !same {
                return Err(format!("{ctx}: memory changed:\n{}", diff(&before, &after)));
            }
        }
    }
    fsck(&fs, &ctx)?;
    // The same call works now, and a remount shows what memory showed.
    op(&fs, call).map_err(|e| format!("{ctx}: the retry failed: {e}"))?;
    fsck(&fs, &format!("{ctx}, after the retry"))?;
    let live = snapshot(&fs, true);
    let fs = Fs::mount(fs.unmount().unwrap().unwrap()).unwrap();
    fsck(&fs, &format!("{ctx}, remounted"))?;
    let again = snapshot(&fs, true);
    if live != again {
        return Err(format!("{ctx}: the remount differs:\n{}", diff(&live, &again)));
    }
    Ok(true)
}

fn diff(a: &str, b: &str) -> String {
    let (la, lb): (Vec<_>, Vec<_>) = (a.lines().collect(), b.lines().collect());
    let mut out = String::new();
    for l in &la {
        if !lb.contains(l) {
            out += &format!("- {l}\n");
        }
    }
    for l in &lb {
        if !la.contains(l) {
            out += &format!("+ {l}\n");
        }
    }
    out
}

/// Fails each step of each call of `op` in turn; returns the steps that failed.
fn every_step(name: &str, calls: u64, op: Op) -> Result<u64, String> {
    let mut steps = 0;
    for call in 0..calls {
        for n in 0.. {
            if !fail_at(name, op, call, n)? {
                break;
            }
            steps += 1;
        }
    }
    Ok(steps)
}

#[test]
fn every_failing_step_of_every_operation_leaves_memory_as_the_medium() {
    let mut failures = Vec::new();
    let mut steps = 0;
    for (name, calls, op) in ops() {
        match every_step(name, calls, op) {
            Ok(n) => {
                // An overwrite within the clock tick has none (no transaction).
                let none_expected = name == "overwrite";
                assert!(n > 0 || none_expected, "{name}: no fallible step was reached: the injection is not wired");
                steps += n;
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{} of {} operations:\n{}", failures.len(), ops().len(), failures.join("\n\n"));
    eprintln!("{} operations, {steps} failing steps, all clean", ops().len());
}

#[test]
fn the_check_catches_a_failed_call_that_leaves_memory_changed() {
    faults::plant_keep_memory(true);
    let caught: Vec<String> = ops()
        .into_iter()
        .filter(|(name, ..)| ["create", "mkdir", "rename across directories", "extending write"].contains(name))
        .filter_map(|(name, calls, op)| every_step(name, calls, op).err())
        .collect();
    faults::plant_keep_memory(false);
    assert_eq!(caught.len(), 4, "each planted case must be caught: {caught:#?}");
}

#[test]
fn a_panic_during_a_change_stops_changes_and_the_image_remounts_clean() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().downcast_ref::<String>().is_some_and(|m| m.starts_with("injected panic")) {
            report(info);
        }
    }));
    for (name, _, op) in ops() {
        let done = {
            let fs = setup();
            op(&fs, 0).unwrap();
            snapshot(&fs, false)
        };
        for n in 0.. {
            let fs = setup();
            let x = ino(&fs, "/e/full/x");
            let before = snapshot(&fs, false);
            faults::arm(n, true);
            let r = catch_unwind(AssertUnwindSafe(|| op(&fs, 0)));
            let Some(step) = faults::disarm() else { break };
            let ctx = format!("{name}, panic at step {n} ({step:?})");
            assert!(r.is_err(), "{ctx}: no panic");
            match fs.mkdir(udax::layout::ROOT_INO, b"after", 0o755, Creds::ROOT) {
                Err(e @ Error::Stopped(_)) => {
                    assert_eq!(e.errno(), libc::EROFS, "{ctx}");
                    assert!(e.to_string().contains("udax fsck"), "{ctx}: {e}");
                }
                other => panic!("{ctx}: a change after the panic gave {other:?}"),
            }
            let w = fs.write(x, b"w", 0);
            assert!(matches!(w, Err(Error::Stopped(_))), "{ctx}: {w:?}");
            let mut buf = [0u8; 1];
            assert_eq!(fs.read(x, &mut buf, 0).unwrap(), 1, "{ctx}: reads go on");
            assert_eq!(&buf, b"x", "{ctx}");
            let fs = Fs::mount(fs.unmount().unwrap().unwrap()).unwrap();
            fsck(&fs, &ctx).unwrap();
            // The panic came before the commit (the old tree) or after it (the whole change).
            let again = snapshot(&fs, false);
            let same = |a: &str, b: &str| if stores_in_place(name) { masked(a) == masked(b) } else { a == b };
            assert!(same(&again, &before) || same(&again, &done), "{ctx}: remounted:\n{}", diff(&before, &again));
            fs.mkdir(udax::layout::ROOT_INO, b"after", 0o755, Creds::ROOT).unwrap();
        }
    }
}
