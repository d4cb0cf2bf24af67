//! Mount used to build every file's node and every directory's name index before returning,
//! seconds for a million files. Now mount decodes and checks everything but builds a file's node
//! on first use and a directory's index on first use. These hold the lazy parts to what the eager
//! mount gave: every file found, one node per inode and one index per directory however many
//! threads reach them first at once, and damage refused or reported as before.

mod common;

use std::sync::Barrier;

use common::watchdog;
use udax::layout::{Geometry, RawDirent, RawInode};
use udax::{Creds, Device, Error, Fs, MkfsOptions, OpenOptions, ROOT_INO};
use zerocopy::IntoBytes;

fn mkfs(inodes: u64) -> Fs {
    let opts = MkfsOptions { inodes, ..Default::default() };
    Fs::mkfs(Device::anonymous(256 << 20).unwrap(), &opts).unwrap()
}

fn remount(fs: Fs) -> Fs {
    Fs::mount(fs.unmount().unwrap().expect("last handle")).unwrap()
}

fn geometry(dev: &Device) -> Geometry {
    Geometry::from_superblock(&dev.read_obj(0).unwrap(), dev.len()).unwrap()
}

fn findings(fs: &Fs) -> Vec<&'static str> {
    udax::check::check(fs, &mut |_, _| {}).findings.iter().map(|f| f.kind).collect()
}

fn content(i: usize) -> Vec<u8> {
    (0..3000 + i % 5000).map(|b| (b * 7 + i) as u8).collect()
}

#[test]
fn every_file_of_a_many_file_image_is_there_after_a_remount() {
    let (dirs, files) = (8, 1500);
    let fs = mkfs(20_000);
    let mut want = Vec::new();
    for d in 0..dirs {
        let dir = fs.mkdir(ROOT_INO, format!("d{d}").as_bytes(), 0o755, Creds::ROOT).unwrap().ino;
        for f in 0..files {
            let name = format!("file-{f:05}");
            let ino = fs.create(dir, name.as_bytes(), 0o644, Creds::ROOT).unwrap().ino;
            if f % 100 == 0 {
                fs.write(ino, &content(f), 0).unwrap();
            }
            want.push((d, name, ino, f));
        }
    }
    fs.mkdir_all("/d0/sub/deeper", 0o755).unwrap();
    fs.link(want[1].2, fs.resolve("/d0/sub", true).unwrap(), b"hard").unwrap();
    fs.symlink_path("/d1/file-00000", "/d0/sub/deeper/link").unwrap();
    let fs = remount(fs);

    let report = fs.mount_report();
    // Files, the directories, the root, sub, deeper and the symlink.
    let inodes = (dirs * files + dirs + 4) as u64;
    assert_eq!(report.inodes_used, inodes, "{report}");
    assert_eq!(report.directories_used, dirs as u64 + 3, "{report}");
    assert_eq!(report.entries, (dirs * files + dirs + 4) as u64, "{report}");
    assert_eq!(fs.inode_numbers().len() as u64, inodes);
    for d in 0..dirs {
        let dir = fs.resolve(format!("/d{d}"), true).unwrap();
        let listed = fs.readdir(dir, 0).unwrap().len();
        assert_eq!(listed, files + usize::from(d == 0));
    }
    for (d, name, ino, f) in &want {
        let path = format!("/d{d}/{name}");
        assert_eq!(fs.resolve(&path, true).unwrap(), *ino, "{path}");
        let expect = if f % 100 == 0 { content(*f) } else { Vec::new() };
        assert!(fs.read_file(&path).unwrap() == expect, "{path} reads back otherwise");
    }
    assert_eq!(fs.stat("/d0/sub/hard").unwrap().nlink, 2);
    assert!(fs.read_file("/d0/sub/deeper/link").unwrap() == content(0), "the link leads to /d1/file-00000");
    assert_eq!(findings(&fs), Vec::<&str>::new());
    let fs = remount(fs);
    assert_eq!(fs.inode_numbers().len() as u64, inodes);
    assert_eq!(findings(&fs), Vec::<&str>::new());
}

/// Threads that reach a directory and a file first at the same moment — lookups in both orders,
/// creates in the same directory, writes through both names of one file — must meet in one
/// index and one node: a second index would lose entries, and a second node of the file would
/// keep an extent map of its own, so writes through the two names would overwrite each other's
/// extent slots.
#[test]
fn first_uses_racing_meet_in_one_index_and_one_node() {
    let names = 2000;
    let fs = mkfs(8192);
    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, Creds::ROOT).unwrap().ino;
    for i in 0..names {
        fs.create(dir, format!("n{i}").as_bytes(), 0o644, Creds::ROOT).unwrap();
    }
    let shared = fs.create(dir, b"shared", 0o644, Creds::ROOT).unwrap().ino;
    fs.link(shared, dir, b"alias").unwrap();
    let mut fs = fs;
    for round in 0..4 {
        fs = remount(fs);
        let f = fs.clone();
        watchdog("racing first uses", 120, move || race(&f, round, names));
        let dir = fs.resolve("/d", true).unwrap();
        let got = fs.readdir(dir, 0).unwrap().len();
        assert_eq!(got, names + 2 + 300 * (round + 1), "round {round}");
        assert_eq!(findings(&fs), Vec::<&str>::new(), "round {round}");
        let fs2 = remount(fs);
        assert!(fs2.read_file("/d/alias").unwrap() == pages(round), "round {round}: a write was lost");
        fs = fs2;
    }
}

/// The 16 pages the racing writers leave in the file in round `round`.
fn pages(round: usize) -> Vec<u8> {
    (0..16).flat_map(|i| vec![(i + round) as u8; 4096]).collect()
}

fn race(fs: &Fs, round: usize, names: usize) {
    let start = Barrier::new(5);
    let opened = Barrier::new(2);
    let want = pages(round);
    let files = std::thread::scope(|s| {
        for t in 0..3 {
            let start = &start;
            s.spawn(move || {
                start.wait();
                if t < 2 {
                    for k in 0..names {
                        let i = if t == 0 { k } else { names - 1 - k };
                        assert_eq!(fs.stat(format!("/d/n{i}")).unwrap().size, 0);
                    }
                } else {
                    let dir = fs.resolve("/d", true).unwrap();
                    for i in 0..300 {
                        fs.create(dir, format!("r{round}-{i}").as_bytes(), 0o644, Creds::ROOT).unwrap();
                    }
                }
            });
        }
        // Both names opened at once (racing to load the file), then even pages written
        // through one and odd pages through the other.
        let writers: Vec<_> = ["/d/shared", "/d/alias"]
            .into_iter()
            .enumerate()
            .map(|(t, path)| {
                let (start, opened, want) = (&start, &opened, &want);
                s.spawn(move || {
                    start.wait();
                    let f = fs.open(path, OpenOptions::read_write()).unwrap();
                    opened.wait();
                    for i in (t..16).step_by(2) {
                        f.write_at(&want[i * 4096..(i + 1) * 4096], i as u64 * 4096).unwrap();
                    }
                    f
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect::<Vec<_>>()
    });
    // Each handle sees both writers' pages: they share one node.
    for f in &files {
        assert_eq!(f.metadata().unwrap().size, 16 * 4096, "a handle has a node of its own");
        let mut back = vec![0; 16 * 4096];
        assert_eq!(f.read_at(&mut back, 0).unwrap(), back.len());
        assert!(back == want, "a handle does not see the other name's writes");
    }
}

/// The directory pass checks every directory at mount, used or not: an entry whose type
/// disagrees with its inode is refused as before, though nothing has looked into the directory.
#[test]
fn a_wrong_entry_type_in_a_directory_nobody_used_is_refused_at_mount() {
    let fs = mkfs(1024);
    fs.mkdir_all("/a/b/c", 0o755).unwrap();
    fs.write_file("/a/b/c/f", b"x").unwrap();
    let c = fs.resolve("/a/b/c", true).unwrap();
    let dev = fs.unmount().unwrap().unwrap();
    let geo = geometry(&dev);
    let raw: RawInode = dev.read_obj(geo.inode_at(c)).unwrap();
    let at = geo.block_at(raw.extents[0].physical.get());
    let mut e: RawDirent = dev.read_obj(at).unwrap();
    assert_eq!(e.file_type, 8, "the entry of /a/b/c/f");
    e.file_type = 4;
    dev.write(at, e.as_bytes()).unwrap();
    match Fs::mount(dev) {
        Err(Error::Corrupt { what, at }) => {
            assert_eq!(what, "directory entry type");
            assert_eq!(at, geo.inode_at(c));
        }
        other => panic!("mounted: {:?}", other.map(|_| ())),
    }
}

/// Damaged units in a directory are found by mount's pass; the index built later holds them
/// aside the same way: the names around them resolve, fsck reports them, and new entries never
/// land on them.
#[test]
fn damaged_units_in_a_directory_indexed_later_are_reported_and_kept_aside() {
    let fs = mkfs(1024);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, Creds::ROOT).unwrap().ino;
    for name in ["a", "b", "c"] {
        fs.create(d, name.as_bytes(), 0o644, Creds::ROOT).unwrap();
    }
    let dev = fs.unmount().unwrap().unwrap();
    let geo = geometry(&dev);
    let raw: RawInode = dev.read_obj(geo.inode_at(d)).unwrap();
    let block = geo.block_at(raw.extents[0].physical.get());
    // The second entry's name becomes "/", which no entry may hold.
    dev.write(block + 32 + 16, b"/").unwrap();
    let fs = Fs::mount(dev).unwrap();
    assert_eq!(findings(&fs), vec!["damaged directory entry", "link count", "disconnected"]);
    assert!(fs.stat("/d/a").is_ok() && fs.stat("/d/c").is_ok());
    assert!(matches!(fs.stat("/d/b"), Err(Error::NotFound)));
    fs.create(d, b"e", 0o644, Creds::ROOT).unwrap();
    let names: Vec<_> = fs.readdir(d, 0).unwrap().into_iter().map(|e| (e.name, e.cookie - 1)).collect();
    assert!(names.iter().all(|(_, pos)| *pos != 32), "an entry landed on the damaged unit: {names:?}");
    assert!(matches!(fs.rmdir(ROOT_INO, b"d"), Err(Error::NotEmpty)));
}

/// A file not yet loaded whose slot changes behind the mount (no store of udax's can do that)
/// is damage found at its first use: a clear `Corrupt` naming the field, never a panic.
#[test]
fn a_slot_spoilt_behind_the_mount_is_corrupt_at_first_use() {
    let fs = mkfs(1024);
    fs.write_file("/f", b"data").unwrap();
    let f = fs.resolve("/f", true).unwrap();
    let fs = remount(fs);
    let geo = *fs.geometry();
    fs.device().write(geo.inode_at(f), &0xffff_ffffu32.to_le_bytes()).unwrap();
    match fs.stat("/f") {
        Err(e @ Error::Corrupt { what: "inode mode", .. }) => assert_eq!(e.errno(), libc::EUCLEAN),
        other => panic!("{other:?}"),
    }
}
